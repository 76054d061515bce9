//! Jira callbacks: a Jira Service Management request comment (internal or public) or a plain issue comment in
//! Atlassian Document Format, then a transition by name.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::{RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::deliver::{Delivered, DeliveryError, with_marker};
use super::templates::{JiraComments, Visibility};
use crate::itsm::JiraClient;
use crate::store::CallbackRecord;
use crate::upstream::url::path_segment;
use crate::upstream::{AttemptError, send_once};

const UPSTREAM: &str = "jira";
/// Comments read per page when looking for an earlier post, newest first.
const COMMENT_PAGE: usize = 100;
/// An access request with more than this many comments is not searched further back.
const MAX_COMMENT_PAGES: usize = 20;
/// The comment property that names the callback, on plain issue comments.
const PROPERTY_KEY: &str = "grantbridge";
const DEFAULT_TRANSITION_TTL: Duration = Duration::from_secs(10 * 60);

/// Transition ids by name, per source and project: ids belong to the project's workflow, so issues of one project
/// share them. A cached id that Jira refuses is looked up again once.
#[derive(Debug)]
pub(crate) struct TransitionCache {
    ttl: Duration,
    entries: Mutex<HashMap<(String, String), Project>>,
}

#[derive(Debug)]
struct Project {
    fetched: Instant,
    /// Lower-cased name -> id.
    ids: HashMap<String, String>,
}

impl Default for TransitionCache {
    fn default() -> Self {
        TransitionCache::new(DEFAULT_TRANSITION_TTL)
    }
}

impl TransitionCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        TransitionCache { ttl, entries: Mutex::new(HashMap::new()) }
    }

    fn get(&self, source: &str, project: &str, name: &str) -> Option<String> {
        let entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let project = entries.get(&(source.to_string(), project.to_string()))?;
        if project.fetched.elapsed() > self.ttl {
            return None;
        }
        project.ids.get(&name.to_lowercase()).cloned()
    }

    fn remember(&self, source: &str, project: &str, transitions: &[(String, String)]) {
        let mut entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = entries
            .entry((source.to_string(), project.to_string()))
            .or_insert_with(|| Project { fetched: Instant::now(), ids: HashMap::new() });
        if entry.fetched.elapsed() > self.ttl {
            entry.ids.clear();
        }
        entry.fetched = Instant::now();
        for (id, name) in transitions {
            entry.ids.insert(name.to_lowercase(), id.clone());
        }
    }

    fn forget(&self, source: &str, project: &str, name: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(entry) = entries.get_mut(&(source.to_string(), project.to_string())) {
            entry.ids.remove(&name.to_lowercase());
        }
    }
}

pub(super) struct JiraPoster<'a> {
    pub client: &'a JiraClient,
    pub cache: &'a TransitionCache,
    pub source: &'a str,
    pub comments: JiraComments,
}

impl JiraPoster<'_> {
    pub(super) async fn deliver(&self, callback: &CallbackRecord) -> Result<Delivered, DeliveryError> {
        let key = callback.ticket_key.trim();
        if key.is_empty() {
            return Err(DeliveryError::permanent("the callback names no Jira issue"));
        }
        // The issue id stays the same when an issue moves to another project; the key does not.
        let issue = match callback.ticket_id.trim() {
            id if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) => id,
            _ => key,
        };
        let project = key.rsplit_once('-').map_or(key, |(p, _)| p);
        let earlier = if callback.attempts > 1 { self.find_marker(issue, key, &callback.id).await? } else { None };
        let posted_before = earlier.is_some();
        // The transition is resolved before anything is posted: a name the workflow does not offer is a dead
        // letter with nothing posted, not a comment without its transition.
        let transition = match callback.transition.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
            None => None,
            Some(name) => match self.resolve(issue, key, project, name).await? {
                Ok((id, fresh)) => Some(Planned { name, id, fresh }),
                // Comments are posted before transitions: only a ticket that has our comment can have been
                // moved on by us.
                Err(available) => {
                    unavailable(key, name, posted_before, &available)?;
                    None
                }
            },
        };
        let remote_id = match earlier {
            Some(id) => Some(id),
            None => self.post_comment(issue, key, callback).await?,
        };
        if let Some(planned) = transition {
            self.transition(issue, key, project, planned, posted_before).await?;
        }
        Ok(Delivered { remote_id, already: posted_before })
    }

    async fn send(&self, what: &str, key: &str, request: RequestBuilder) -> Result<Response, DeliveryError> {
        match send_once(UPSTREAM, self.client.authorize(request)).await {
            Ok(response) => Ok(response),
            Err(AttemptError::Refused(e)) if e.status() == Some(StatusCode::NOT_FOUND) => {
                Err(DeliveryError::permanent(format!(
                    "{what}: Jira has no issue {key}, or the integration account cannot see it ({e})"
                )))
            }
            Err(e) => Err(DeliveryError::from_attempt(what, e)),
        }
    }

    /// The id of a comment an earlier attempt posted, found by its marker (newest comments first).
    async fn find_marker(&self, issue: &str, key: &str, callback_id: &str) -> Result<Option<String>, DeliveryError> {
        let url = format!("{}/rest/api/3/issue/{}/comment", self.client.base_url(), path_segment(issue));
        let mut start = 0;
        for _ in 0..MAX_COMMENT_PAGES {
            let query = [
                ("orderBy", "-created".to_string()),
                ("startAt", start.to_string()),
                ("maxResults", COMMENT_PAGE.to_string()),
            ];
            let what = format!("reading the comments of {key}");
            let response = self.send(&what, key, self.client.http().get(&url).query(&query)).await?;
            let page: Value = read_body(response, &what).await?;
            let comments = page.get("comments").and_then(Value::as_array).cloned().unwrap_or_default();
            if let Some(found) = comments.iter().find(|c| has_marker(c, callback_id)) {
                return Ok(Some(found.get("id").map(id_text).unwrap_or_default()).filter(|id| !id.is_empty()));
            }
            start += comments.len();
            let total = page.get("total").and_then(Value::as_u64).and_then(|t| usize::try_from(t).ok());
            if comments.is_empty() || total.is_none_or(|t| start >= t) {
                return Ok(None);
            }
        }
        tracing::warn!(ticket = key, "more comments than are searched for an earlier post; posting again");
        Ok(None)
    }

    async fn post_comment(
        &self,
        issue: &str,
        key: &str,
        callback: &CallbackRecord,
    ) -> Result<Option<String>, DeliveryError> {
        let text = with_marker(&callback.message, &callback.id);
        let base = self.client.base_url();
        let (url, body, what) = match self.comments {
            JiraComments::ServiceDesk => {
                let public = Visibility::parse(&callback.visibility) == Some(Visibility::Public);
                (
                    format!("{base}/rest/servicedeskapi/request/{}/comment", path_segment(issue)),
                    json!({"body": text, "public": public}),
                    format!("adding a request comment to {key}"),
                )
            }
            JiraComments::Issue => (
                format!("{base}/rest/api/3/issue/{}/comment", path_segment(issue)),
                json!({"body": adf(&text), "properties": [{"key": PROPERTY_KEY, "value": {"callback": callback.id}}]}),
                format!("adding a comment to {key}"),
            ),
        };
        let response = match send_once(UPSTREAM, self.client.authorize(self.client.http().post(&url).json(&body))).await
        {
            Ok(response) => response,
            Err(AttemptError::Refused(e)) if self.comments == JiraComments::ServiceDesk && is_not_a_request(&e) => {
                return Err(DeliveryError::permanent(format!(
                    "{what}: {key} is not a Jira Service Management request, or the integration account is not an \
                     agent of its service project ({e}); for plain Jira projects set \
                     callbacks.sources.{}.jira_comments = \"issue\"",
                    self.source
                )));
            }
            Err(AttemptError::Refused(e)) if e.status() == Some(StatusCode::NOT_FOUND) => {
                return Err(DeliveryError::permanent(format!(
                    "{what}: Jira has no issue {key}, or the integration account cannot see it ({e})"
                )));
            }
            Err(e) => return Err(DeliveryError::from_attempt(&what, e)),
        };
        // The comment exists once Jira answered 2xx: an unreadable body must not make us post it again.
        let created: Option<Value> = response.json().await.ok();
        Ok(created.as_ref().and_then(|c| c.get("id")).map(id_text).filter(|id| !id.is_empty()))
    }

    /// The transition's id, from the cache or from Jira (`fresh`), or the names of the transitions offered.
    async fn resolve(
        &self,
        issue: &str,
        key: &str,
        project: &str,
        name: &str,
    ) -> Result<Result<(String, bool), Vec<String>>, DeliveryError> {
        if let Some(id) = self.cache.get(self.source, project, name) {
            return Ok(Ok((id, false)));
        }
        Ok(self.lookup(issue, key, project, name).await?.map(|id| (id, true)))
    }

    /// Makes the transition; a cached id that Jira refuses is looked up once more. `posted_before`: an earlier
    /// attempt posted the comment, and may have made the transition too.
    async fn transition(
        &self,
        issue: &str,
        key: &str,
        project: &str,
        planned: Planned<'_>,
        posted_before: bool,
    ) -> Result<(), DeliveryError> {
        let name = planned.name;
        match self.post_transition(issue, key, &planned.id).await {
            Err(Refusal::Invalid(_)) if !planned.fresh => {
                // The cached id belongs to another status or workflow: ask Jira once more.
                self.cache.forget(self.source, project, name);
                match self.lookup(issue, key, project, name).await? {
                    Ok(id) => match self.post_transition(issue, key, &id).await {
                        Ok(()) => Ok(()),
                        Err(Refusal::Invalid(e)) => Err(invalid(key, name, &e)),
                        Err(Refusal::Other(e)) => Err(e),
                    },
                    Err(available) => unavailable(key, name, posted_before, &available),
                }
            }
            Ok(()) => Ok(()),
            Err(Refusal::Invalid(e)) => Err(invalid(key, name, &e)),
            Err(Refusal::Other(e)) => Err(e),
        }
    }

    /// The id of the transition `name` offered on the issue now, or the names of those offered. Every transition
    /// seen is remembered for the project.
    async fn lookup(
        &self,
        issue: &str,
        key: &str,
        project: &str,
        name: &str,
    ) -> Result<Result<String, Vec<String>>, DeliveryError> {
        let url = format!("{}/rest/api/3/issue/{}/transitions", self.client.base_url(), path_segment(issue));
        let what = format!("reading the transitions of {key}");
        let response = self.send(&what, key, self.client.http().get(&url)).await?;
        let body: Value = read_body(response, &what).await?;
        let transitions: Vec<(String, String)> = body
            .get("transitions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|t| {
                let id = t.get("id").map(id_text)?;
                let name = t.get("name").and_then(Value::as_str)?.to_string();
                Some((id, name))
            })
            .collect();
        self.cache.remember(self.source, project, &transitions);
        let wanted = name.trim();
        let found = transitions
            .iter()
            .find(|(_, n)| n == wanted)
            .or_else(|| transitions.iter().find(|(_, n)| n.eq_ignore_ascii_case(wanted)))
            .map(|(id, _)| id.clone());
        Ok(found.ok_or_else(|| transitions.into_iter().map(|(_, n)| n).collect()))
    }

    async fn post_transition(&self, issue: &str, key: &str, id: &str) -> Result<(), Refusal> {
        let url = format!("{}/rest/api/3/issue/{}/transitions", self.client.base_url(), path_segment(issue));
        let body = json!({"transition": {"id": id}});
        let what = format!("transitioning {key}");
        match send_once(UPSTREAM, self.client.authorize(self.client.http().post(&url).json(&body))).await {
            Ok(_) => Ok(()),
            // Jira answers 400 for a transition that is not valid from the issue's status (and for a transition
            // screen that needs fields we do not send).
            Err(AttemptError::Refused(e)) if e.status() == Some(StatusCode::BAD_REQUEST) => {
                Err(Refusal::Invalid(e.to_string()))
            }
            Err(e) => Err(Refusal::Other(DeliveryError::from_attempt(&what, e))),
        }
    }
}

/// A transition resolved before posting.
struct Planned<'a> {
    name: &'a str,
    id: String,
    /// Just read from Jira, not from the cache.
    fresh: bool,
}

/// A transition that is not offered: made by an earlier attempt when that attempt posted our comment, else a
/// configuration the workflow does not match.
fn unavailable(key: &str, name: &str, posted_before: bool, available: &[String]) -> Result<(), DeliveryError> {
    if posted_before {
        tracing::warn!(
            ticket = key,
            transition = name,
            "the transition is not offered on the issue; an earlier attempt probably made it"
        );
        return Ok(());
    }
    let list = if available.is_empty() { "none".to_string() } else { available.join(", ") };
    Err(DeliveryError::permanent(format!(
        "Jira offers no transition named `{name}` on {key} in its current status (available: {list}); check the \
         transition names in [callbacks]"
    )))
}

enum Refusal {
    Invalid(String),
    Other(DeliveryError),
}

fn invalid(key: &str, name: &str, error: &str) -> DeliveryError {
    DeliveryError::permanent(format!(
        "Jira refused the transition `{name}` on {key} ({error}); it may need fields on its screen, or a workflow \
         condition blocks the integration account"
    ))
}

/// The servicedesk API answers 404 for an issue that is not a request, and 400/403 when the account is no agent.
fn is_not_a_request(e: &crate::upstream::UpstreamError) -> bool {
    matches!(e.status(), Some(StatusCode::BAD_REQUEST) | Some(StatusCode::NOT_FOUND))
}

async fn read_body(response: Response, what: &str) -> Result<Value, DeliveryError> {
    let body = response.bytes().await.map_err(|e| DeliveryError::Retry {
        after: None,
        reason: format!("{what}: reading the answer: {}", e.without_url()),
    })?;
    serde_json::from_slice(&body).map_err(|e| DeliveryError::Retry {
        after: None,
        reason: format!("{what}: Jira answered unexpected JSON: {e}"),
    })
}

/// Ids come as strings, some older endpoints send numbers.
fn id_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

/// Whether a comment (as `GET .../comment` lists it) carries the callback's marker: in its text (ADF or plain),
/// or in its `grantbridge` property.
fn has_marker(comment: &Value, callback_id: &str) -> bool {
    let in_body = comment.get("body").is_some_and(|b| match b {
        Value::String(text) => text.contains(callback_id),
        other => other.to_string().contains(callback_id),
    });
    let in_property = comment.get("properties").and_then(Value::as_array).is_some_and(|props| {
        props.iter().any(|p| {
            p.get("key").and_then(Value::as_str) == Some(PROPERTY_KEY)
                && p.pointer("/value/callback").and_then(Value::as_str) == Some(callback_id)
        })
    });
    in_body || in_property
}

/// Plain text as an Atlassian Document Format document: a paragraph per block of lines, lines joined by hard
/// breaks (ADF has no empty text nodes).
pub(crate) fn adf(text: &str) -> Value {
    let mut paragraphs = Vec::new();
    for block in text.split("\n\n").map(str::trim).filter(|b| !b.is_empty()) {
        let mut content = Vec::new();
        for (i, line) in block.lines().map(str::trim_end).enumerate() {
            if i > 0 {
                content.push(json!({"type": "hardBreak"}));
            }
            if !line.is_empty() {
                content.push(json!({"type": "text", "text": line}));
            }
        }
        paragraphs.push(json!({"type": "paragraph", "content": content}));
    }
    json!({"type": "doc", "version": 1, "content": paragraphs})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adf_has_a_paragraph_per_block_and_hard_breaks_between_lines() {
        let doc = adf("Access granted.\n- a\n- b\n\n(grantbridge ref: x)");
        assert_eq!(
            doc,
            json!({"type": "doc", "version": 1, "content": [
                {"type": "paragraph", "content": [
                    {"type": "text", "text": "Access granted."}, {"type": "hardBreak"},
                    {"type": "text", "text": "- a"}, {"type": "hardBreak"}, {"type": "text", "text": "- b"}]},
                {"type": "paragraph", "content": [{"type": "text", "text": "(grantbridge ref: x)"}]}]})
        );
    }

    #[test]
    fn markers_are_found_in_text_adf_and_properties() {
        assert!(has_marker(&json!({"body": "ok (grantbridge ref: abc)"}), "abc"));
        assert!(has_marker(&json!({"body": adf("x\n\n(grantbridge ref: abc)")}), "abc"));
        assert!(has_marker(
            &json!({"body": "x", "properties": [{"key": "grantbridge", "value": {"callback": "abc"}}]}),
            "abc"
        ));
        assert!(!has_marker(
            &json!({"body": "x", "properties": [{"key": "other", "value": {"callback": "abc"}}]}),
            "abc"
        ));
        assert!(!has_marker(&json!({"body": adf("(grantbridge ref: abd)")}), "abc"));
    }

    #[test]
    fn the_cache_forgets_after_its_ttl() {
        let cache = TransitionCache::new(Duration::from_millis(0));
        cache.remember("s", "ACC", &[("31".into(), "Resolve".into())]);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(cache.get("s", "ACC", "resolve"), None);
        let cache = TransitionCache::default();
        cache.remember("s", "ACC", &[("31".into(), "Resolve".into())]);
        assert_eq!(cache.get("s", "ACC", "RESOLVE").as_deref(), Some("31"));
        assert_eq!(cache.get("s", "OTHER", "Resolve"), None);
        cache.forget("s", "ACC", "Resolve");
        assert_eq!(cache.get("s", "ACC", "Resolve"), None);
    }
}
