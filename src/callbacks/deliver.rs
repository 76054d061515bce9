//! Posting one callback to its ticket, exactly once in effect.
//!
//! Every message ends with a marker line naming the callback id. An attempt after the first (the previous one
//! may have posted before a crash or a timeout) first looks for that marker on the ticket and does not post again
//! when it is there. Each HTTP call is made once: a retryable failure ends the attempt, and the callbacker
//! schedules the next one durably, honouring `Retry-After` and `X-RateLimit-Reset`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::jira::{JiraPoster, TransitionCache};
use super::servicenow::ServiceNowPoster;
use super::templates::CallbackSettings;
use crate::inbound::Source;
use crate::itsm::{ItsmApi, JiraClient, ServiceNowClient};
use crate::store::CallbackRecord;
use crate::upstream::{AttemptError, UpstreamError};

/// How an attempt ended well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The Jira comment id, or the ServiceNow sys_id that was updated.
    pub remote_id: Option<String>,
    /// An earlier attempt had posted it: nothing was posted this time.
    pub already: bool,
}

/// Why an attempt did not deliver. Reasons are for operators (logs, dead letters); they are never posted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Worth another attempt later (throttling, an outage, a timeout); `after` is what the server asked for.
    #[error("{reason}")]
    Retry { after: Option<Duration>, reason: String },
    /// Another attempt would fail the same way (refused credentials, no such ticket or transition...).
    #[error("{reason}")]
    Permanent { reason: String },
}

impl DeliveryError {
    pub(crate) fn permanent(reason: impl Into<String>) -> Self {
        DeliveryError::Permanent { reason: reason.into() }
    }

    /// One HTTP exchange's failure, `what` saying which.
    pub(crate) fn from_attempt(what: &str, error: AttemptError) -> Self {
        match error {
            AttemptError::Retry { after, detail, .. } => {
                DeliveryError::Retry { after, reason: format!("{what}: {detail}") }
            }
            AttemptError::Refused(e) => DeliveryError::Permanent { reason: format!("{what}: {e}") },
        }
    }

    /// A failure before any exchange (e.g. fetching an OAuth token, which retries by itself).
    pub(crate) fn from_upstream(what: &str, error: &UpstreamError) -> Self {
        if error.is_transient() {
            DeliveryError::Retry { after: None, reason: format!("{what}: {error}") }
        } else {
            DeliveryError::Permanent { reason: format!("{what}: {error}") }
        }
    }
}

/// The line that makes a posted message findable: the callback id, in a form that no markup (Jira wiki markup,
/// Markdown, ADF, ServiceNow journal) changes.
pub fn marker_line(callback_id: &str) -> String {
    format!("(grantbridge ref: {callback_id})")
}

/// The message as posted: the rendered text, then the marker line.
pub(crate) fn with_marker(message: &str, callback_id: &str) -> String {
    format!("{}\n\n{}", message.trim_end(), marker_line(callback_id))
}

#[derive(Clone)]
enum Target {
    Jira(JiraClient),
    ServiceNow(ServiceNowClient),
}

/// Posts callbacks to the ticketing systems of the configured sources.
pub struct Deliverer {
    targets: HashMap<String, Target>,
    settings: Arc<CallbackSettings>,
    transitions: TransitionCache,
}

impl Deliverer {
    /// A deliverer with no ticketing system yet; add them with `with_jira` and `with_servicenow`.
    pub fn new(settings: Arc<CallbackSettings>) -> Deliverer {
        Deliverer { targets: HashMap::new(), settings, transitions: TransitionCache::default() }
    }

    /// A deliverer for every source that has ticketing API credentials (`[sources.NAME.api]`).
    pub fn from_sources(sources: &HashMap<String, Arc<Source>>, settings: Arc<CallbackSettings>) -> Deliverer {
        let mut deliverer = Deliverer::new(settings);
        for (name, source) in sources {
            match source.api() {
                Some(ItsmApi::Jira(client)) => deliverer = deliverer.with_jira(name, client.clone()),
                Some(ItsmApi::ServiceNow(client)) => deliverer = deliverer.with_servicenow(name, client.clone()),
                None => {}
            }
        }
        deliverer
    }

    pub fn with_jira(mut self, source: &str, client: JiraClient) -> Deliverer {
        self.targets.insert(source.to_string(), Target::Jira(client));
        self
    }

    pub fn with_servicenow(mut self, source: &str, client: ServiceNowClient) -> Deliverer {
        self.targets.insert(source.to_string(), Target::ServiceNow(client));
        self
    }

    /// How long a transition name stays resolved to an id without asking Jira again.
    pub fn with_transition_ttl(mut self, ttl: Duration) -> Deliverer {
        self.transitions = TransitionCache::new(ttl);
        self
    }

    /// Posts `callback` (its `attempts` counts this attempt): looks for an earlier post first when this is not
    /// the first attempt, posts the message if there is none, then makes the transition or sets the state.
    pub async fn deliver(&self, callback: &CallbackRecord) -> Result<Delivered, DeliveryError> {
        let Some(target) = self.targets.get(&callback.source) else {
            return Err(DeliveryError::permanent(format!(
                "source `{}` has no ticketing API configured ([sources.{}.api]), so nothing can be posted to {}",
                callback.source, callback.source, callback.ticket_key
            )));
        };
        match (target, callback.system.as_str()) {
            (Target::Jira(client), "jira") => {
                let comments = self.settings.jira_comments(&callback.source);
                JiraPoster { client, cache: &self.transitions, source: &callback.source, comments }
                    .deliver(callback)
                    .await
            }
            (Target::ServiceNow(client), "servicenow") => ServiceNowPoster { client }.deliver(callback).await,
            (_, system) => Err(DeliveryError::permanent(format!(
                "the callback is for a {system} ticket, but source `{}` is configured for another system",
                callback.source
            ))),
        }
    }
}
