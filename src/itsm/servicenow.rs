//! ServiceNow Table API reads: a record, the approvals of a record, a user.

use std::sync::Arc;

use reqwest::header::ACCEPT;
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::domain::{Approval, ApprovalDecision, PersonRef};
use crate::secret::Secret;
use crate::upstream::oauth::{DEFAULT_RENEW_BEFORE, TokenCache, fetch_client_credentials};
use crate::upstream::url::path_segment;
use crate::upstream::{RetryPolicy, UpstreamError, read_json, send_with_retry};

const UPSTREAM: &str = "servicenow";
const TOKEN_UPSTREAM: &str = "servicenow-token";
/// One client has one token; the cache is keyed anyway.
const TOKEN_KEY: &str = "servicenow";

#[derive(Debug, Clone)]
pub enum ServiceNowAuth {
    Basic {
        user: String,
        password: Secret,
    },
    /// Client-credentials grant; `token_url` defaults to `{base_url}/oauth_token.do`.
    OAuth {
        client_id: String,
        client_secret: Secret,
        token_url: Option<String>,
    },
}

#[derive(Deserialize)]
struct Envelope<T> {
    result: T,
}

#[derive(Deserialize)]
struct WireApproval {
    #[serde(default)]
    approver: Option<Reference>,
    #[serde(default)]
    state: Option<String>,
}

/// A reference field: a bare sys_id with `sysparm_exclude_reference_link=true`, else `{link, value}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Reference {
    SysId(String),
    Link { value: String },
}

impl Reference {
    fn sys_id(self) -> Option<String> {
        let id = match self {
            Reference::SysId(id) | Reference::Link { value: id } => id,
        };
        Some(id).filter(|id| !id.trim().is_empty())
    }
}

#[derive(Deserialize)]
struct WireUser {
    #[serde(default)]
    sys_id: Option<String>,
    #[serde(default)]
    user_name: Option<String>,
    #[serde(default)]
    email: Option<String>,
}

/// `sysapproval_approver.state`: only `approved` and `rejected` are decisions; `requested`, `not requested`,
/// `cancelled`, `not_required`, `duplicate` and anything a site adds count as not approved.
fn decision(state: &str) -> ApprovalDecision {
    match state.trim().to_ascii_lowercase().as_str() {
        "approved" => ApprovalDecision::Approved,
        "rejected" => ApprovalDecision::Rejected,
        _ => ApprovalDecision::Pending,
    }
}

#[derive(Debug, Clone)]
pub struct ServiceNowClient {
    http: reqwest::Client,
    base_url: String,
    auth: ServiceNowAuth,
    policy: RetryPolicy,
    tokens: Arc<TokenCache>,
}

impl ServiceNowClient {
    /// `base_url`: `https://{instance}.service-now.com` (or a fake's URL).
    pub fn new(http: reqwest::Client, base_url: impl Into<String>, auth: ServiceNowAuth) -> Self {
        let base_url = base_url.into().trim_end_matches('/').to_owned();
        ServiceNowClient {
            http,
            base_url,
            auth,
            policy: RetryPolicy::default(),
            tokens: Arc::new(TokenCache::new(DEFAULT_RENEW_BEFORE)),
        }
    }

    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Where OAuth tokens come from, when OAuth is configured.
    pub fn token_url(&self) -> Option<String> {
        match &self.auth {
            ServiceNowAuth::Basic { .. } => None,
            ServiceNowAuth::OAuth { token_url, .. } => {
                Some(token_url.clone().unwrap_or_else(|| format!("{}/oauth_token.do", self.base_url)))
            }
        }
    }

    /// Fields of one record (all of them when `fields` is empty), references as bare sys_ids; `None` if the record
    /// does not exist or an ACL hides it (ServiceNow answers 404 for both).
    pub async fn record(
        &self,
        table: &str,
        sys_id: &str,
        fields: &[&str],
    ) -> Result<Option<Map<String, Value>>, UpstreamError> {
        check_name(table, "table name")?;
        for field in fields {
            check_name(field, "field name")?;
        }
        let sys_id = sys_id.trim();
        if sys_id.is_empty() {
            return Err(UpstreamError::InvalidInput("an empty sys_id".into()));
        }
        let url = format!("{}/api/now/table/{}/{}", self.base_url, table, path_segment(sys_id));
        let mut query = vec![("sysparm_exclude_reference_link", "true".to_owned())];
        if !fields.is_empty() {
            query.push(("sysparm_fields", fields.join(",")));
        }
        match self.send("record", |http| http.get(&url).query(&query)).await {
            Ok(response) => {
                let envelope: Envelope<Map<String, Value>> = read_json(response, UPSTREAM).await?;
                Ok(Some(envelope.result))
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every approver of the record `sys_id` (`sysapproval_approver` rows) and their decision.
    pub async fn approvals_for(&self, sys_id: &str) -> Result<Vec<Approval>, UpstreamError> {
        // The id goes into an encoded query, where `^` would add conditions: accept only a real sys_id.
        let sys_id = sys_id.trim();
        if sys_id.len() != 32 || !sys_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(UpstreamError::InvalidInput(format!("`{sys_id}` is not a sys_id (32 hexadecimal digits)")));
        }
        let url = format!("{}/api/now/table/sysapproval_approver", self.base_url);
        let query = [
            ("sysparm_query", format!("sysapproval={sys_id}")),
            ("sysparm_fields", "approver,state".to_owned()),
            ("sysparm_exclude_reference_link", "true".to_owned()),
        ];
        let response = self.send("approvals_for", |http| http.get(&url).query(&query)).await?;
        let envelope: Envelope<Vec<WireApproval>> = read_json(response, UPSTREAM).await?;
        let mut approvals = Vec::with_capacity(envelope.result.len());
        for row in envelope.result {
            let Some(approver) = row.approver.and_then(Reference::sys_id) else {
                // An approval nobody can be named for must not count towards a quorum or pass a self-approval check.
                tracing::warn!(record = sys_id, "ServiceNow approval row without an approver; ignored");
                continue;
            };
            approvals.push(Approval {
                approver: PersonRef { id: Some(approver), email: None, name: None },
                decision: decision(row.state.as_deref().unwrap_or("")),
            });
        }
        Ok(approvals)
    }

    /// A `sys_user` by sys_id: id, `user_name` as the name, e-mail; `None` if there is no such user.
    pub async fn user(&self, sys_id: &str) -> Result<Option<PersonRef>, UpstreamError> {
        let Some(record) = self.record("sys_user", sys_id, &["sys_id", "user_name", "email"]).await? else {
            return Ok(None);
        };
        let user: WireUser = serde_json::from_value(Value::Object(record))
            .map_err(|e| UpstreamError::InvalidResponse(format!("ServiceNow sys_user: {e}")))?;
        let non_empty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        Ok(Some(PersonRef {
            id: non_empty(user.sys_id).or_else(|| Some(sys_id.trim().to_owned())),
            email: non_empty(user.email),
            name: non_empty(user.user_name),
        }))
    }

    /// The HTTP client, for writers that keep their own retry schedule (ticket callbacks).
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `request` signed in as this client's account (with a cached OAuth token when OAuth is configured),
    /// asking for JSON.
    pub(crate) async fn authorize(&self, request: RequestBuilder) -> Result<RequestBuilder, UpstreamError> {
        let request = request.header(ACCEPT, "application/json");
        Ok(match &self.auth {
            ServiceNowAuth::Basic { user, password } => request.basic_auth(user, Some(password.expose())),
            ServiceNowAuth::OAuth { .. } => {
                let token = self.tokens.get(TOKEN_KEY, || self.fetch_token()).await?;
                request.bearer_auth(token.expose())
            }
        })
    }

    /// After a 401: forgets the cached OAuth token, so the next request fetches a new one. Returns whether there was
    /// a token to forget (basic auth has none, and a 401 is then final).
    pub(crate) async fn forget_token(&self) -> bool {
        match &self.auth {
            ServiceNowAuth::Basic { .. } => false,
            ServiceNowAuth::OAuth { .. } => {
                self.tokens.invalidate(TOKEN_KEY).await;
                true
            }
        }
    }

    async fn send(
        &self,
        operation: &'static str,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Response, UpstreamError> {
        let token = match &self.auth {
            ServiceNowAuth::Basic { .. } => None,
            ServiceNowAuth::OAuth { .. } => Some(self.tokens.get(TOKEN_KEY, || self.fetch_token()).await?),
        };
        let result = send_with_retry(UPSTREAM, &self.policy, || {
            let request = build(&self.http).header(ACCEPT, "application/json");
            match (&self.auth, &token) {
                (ServiceNowAuth::Basic { user, password }, _) => request.basic_auth(user, Some(password.expose())),
                (ServiceNowAuth::OAuth { .. }, Some(token)) => request.bearer_auth(token.expose()),
                (ServiceNowAuth::OAuth { .. }, None) => request,
            }
        })
        .await;
        if let Err(error) = &result {
            if token.is_some() && error.status() == Some(StatusCode::UNAUTHORIZED) {
                self.tokens.invalidate(TOKEN_KEY).await;
            }
            if !error.is_not_found() {
                tracing::warn!(operation, error = %error, "ServiceNow call failed");
            }
        }
        result
    }

    async fn fetch_token(&self) -> Result<crate::upstream::oauth::FetchedToken, UpstreamError> {
        let (ServiceNowAuth::OAuth { client_id, client_secret, .. }, Some(token_url)) = (&self.auth, self.token_url())
        else {
            return Err(UpstreamError::InvalidInput("no OAuth client is configured for ServiceNow".into()));
        };
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", client_id.as_str()),
            ("client_secret", client_secret.expose()),
        ];
        let fetched = fetch_client_credentials(&self.http, &self.policy, TOKEN_UPSTREAM, &token_url, &form).await;
        if let Err(e) = &fetched {
            tracing::warn!(error = %e, "ServiceNow refused or failed the token request");
        }
        fetched
    }
}

/// Table and field names: letters, digits, `_`, and `.` for dot-walked fields.
fn check_name(name: &str, what: &str) -> Result<(), UpstreamError> {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.') {
        Ok(())
    } else {
        Err(UpstreamError::InvalidInput(format!("`{name}` is not a ServiceNow {what}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_map_to_decisions() {
        for (state, want) in [
            ("approved", ApprovalDecision::Approved),
            ("rejected", ApprovalDecision::Rejected),
            ("requested", ApprovalDecision::Pending),
            ("not requested", ApprovalDecision::Pending),
            ("cancelled", ApprovalDecision::Pending),
            ("not_required", ApprovalDecision::Pending),
            ("", ApprovalDecision::Pending),
        ] {
            assert_eq!(decision(state), want, "{state}");
        }
    }

    #[test]
    fn references_come_bare_or_as_links() {
        let rows: Vec<WireApproval> = serde_json::from_str(
            r#"[{"approver":"abc","state":"approved"},{"approver":{"link":"https://x/api","value":"def"}},{"approver":""}]"#,
        )
        .unwrap();
        let ids: Vec<Option<String>> = rows.into_iter().map(|r| r.approver.and_then(Reference::sys_id)).collect();
        assert_eq!(ids, vec![Some("abc".into()), Some("def".into()), None]);
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("sc_req_item", "table name").is_ok());
        assert!(check_name("requested_for.email", "field name").is_ok());
        assert!(check_name("sys_user/../x", "table name").is_err());
        assert!(check_name("", "table name").is_err());
    }
}
