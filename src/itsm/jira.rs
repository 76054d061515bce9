//! Jira Cloud and Jira Service Management reads: an issue, its JSM approvals, a user.

use reqwest::header::ACCEPT;
use reqwest::{RequestBuilder, Response};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::domain::{Approval, ApprovalDecision, PersonRef};
use crate::secret::Secret;
use crate::upstream::url::path_segment;
use crate::upstream::{RetryPolicy, UpstreamError, read_json, send_with_retry};

const UPSTREAM: &str = "jira";
const PAGE_LIMIT: u32 = 50;
/// A request has a handful of approval steps; this only stops a server that never says `isLastPage`.
const MAX_PAGES: usize = 100;

#[derive(Debug, Clone)]
pub enum JiraAuth {
    /// An Atlassian account e-mail and API token.
    Basic { email: String, api_token: Secret },
    /// An OAuth 2.0 access token; the base URL is then `https://api.atlassian.com/ex/jira/{cloudId}`.
    Bearer { token: Secret },
}

/// One JSM approval step and what each approver decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsmApproval {
    pub id: String,
    pub name: String,
    pub final_decision: ApprovalDecision,
    pub approvers: Vec<(PersonRef, ApprovalDecision)>,
    /// ISO 8601, when the step was decided.
    pub completed_at: Option<String>,
}

impl JsmApproval {
    /// Each approver's own decision, in the domain's shape.
    pub fn approvals(&self) -> Vec<Approval> {
        self.approvers
            .iter()
            .map(|(approver, decision)| Approval { approver: approver.clone(), decision: *decision })
            .collect()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WirePage<T> {
    values: Vec<T>,
    // A page that does not say is treated as the last: looping on a missing flag would never end.
    #[serde(default = "yes")]
    is_last_page: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireApproval {
    #[serde(deserialize_with = "string_or_number")]
    id: String,
    #[serde(default)]
    name: Option<String>,
    final_decision: String,
    #[serde(default)]
    approvers: Vec<WireApprover>,
    #[serde(default)]
    completed_date: Option<WireDate>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireApprover {
    approver: WireUser,
    approver_decision: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireUser {
    account_id: Option<String>,
    display_name: Option<String>,
    email_address: Option<String>,
}

#[derive(Deserialize)]
struct WireDate {
    iso8601: Option<String>,
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!("expected a string or number id, got {other}"))),
    }
}

impl From<WireUser> for PersonRef {
    fn from(u: WireUser) -> Self {
        let non_empty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        // Atlassian hides e-mail addresses by the user's privacy setting: absent stays absent, never guessed.
        PersonRef { id: non_empty(u.account_id), email: non_empty(u.email_address), name: non_empty(u.display_name) }
    }
}

/// `pending | approved | declined`; anything else counts as not decided.
fn decision(text: &str) -> ApprovalDecision {
    match text.to_ascii_lowercase().as_str() {
        "approved" => ApprovalDecision::Approved,
        "declined" => ApprovalDecision::Rejected,
        "pending" => ApprovalDecision::Pending,
        other => {
            tracing::warn!(decision = other, "unknown JSM approval decision; treated as pending");
            ApprovalDecision::Pending
        }
    }
}

impl From<WireApproval> for JsmApproval {
    fn from(w: WireApproval) -> Self {
        JsmApproval {
            id: w.id,
            name: w.name.unwrap_or_default(),
            final_decision: decision(&w.final_decision),
            approvers: w
                .approvers
                .into_iter()
                .map(|a| (PersonRef::from(a.approver), decision(&a.approver_decision)))
                .collect(),
            completed_at: w.completed_date.and_then(|d| d.iso8601),
        }
    }
}

#[derive(Debug, Clone)]
pub struct JiraClient {
    http: reqwest::Client,
    base_url: String,
    auth: JiraAuth,
    policy: RetryPolicy,
}

impl JiraClient {
    /// `base_url`: `https://{site}.atlassian.net` (basic) or `https://api.atlassian.com/ex/jira/{cloudId}` (bearer).
    pub fn new(http: reqwest::Client, base_url: impl Into<String>, auth: JiraAuth) -> Self {
        let base_url = base_url.into().trim_end_matches('/').to_owned();
        JiraClient { http, base_url, auth, policy: RetryPolicy::default() }
    }

    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The issue as `GET /rest/api/3/issue/{key}` returns it; `None` if it does not exist or is not visible to us
    /// (Jira answers 404 for both).
    pub async fn issue(&self, key: &str) -> Result<Option<Value>, UpstreamError> {
        let url = format!("{}/rest/api/3/issue/{}", self.base_url, path_segment(non_empty(key, "issue key")?));
        match self.send("issue", |http| http.get(&url)).await {
            Ok(response) => Ok(Some(read_json(response, UPSTREAM).await?)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every approval step of a JSM request, all pages.
    pub async fn approvals(&self, key: &str) -> Result<Vec<JsmApproval>, UpstreamError> {
        let url = format!(
            "{}/rest/servicedeskapi/request/{}/approval",
            self.base_url,
            path_segment(non_empty(key, "issue key")?)
        );
        let mut approvals = Vec::new();
        let mut start: usize = 0;
        for _ in 0..MAX_PAGES {
            let query = [("start", start.to_string()), ("limit", PAGE_LIMIT.to_string())];
            let response = self.send("approvals", |http| http.get(&url).query(&query)).await?;
            let page: WirePage<WireApproval> = read_json(response, UPSTREAM).await?;
            let count = page.values.len();
            approvals.extend(page.values.into_iter().map(JsmApproval::from));
            if page.is_last_page || count == 0 {
                return Ok(approvals);
            }
            start += count;
        }
        Err(UpstreamError::InvalidResponse(format!("Jira returned more than {MAX_PAGES} pages of approvals for {key}")))
    }

    /// A user by Atlassian account id; `None` if Jira does not know it.
    pub async fn user(&self, account_id: &str) -> Result<Option<PersonRef>, UpstreamError> {
        let account_id = non_empty(account_id, "account id")?;
        let url = format!("{}/rest/api/3/user", self.base_url);
        match self.send("user", |http| http.get(&url).query(&[("accountId", account_id)])).await {
            Ok(response) => {
                let user: WireUser = read_json(response, UPSTREAM).await?;
                Ok(Some(user.into()))
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The HTTP client, for writers that keep their own retry schedule (ticket callbacks).
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `request` signed in as this client's account, asking for JSON.
    pub(crate) fn authorize(&self, request: RequestBuilder) -> RequestBuilder {
        let request = request.header(ACCEPT, "application/json");
        match &self.auth {
            JiraAuth::Basic { email, api_token } => request.basic_auth(email, Some(api_token.expose())),
            JiraAuth::Bearer { token } => request.bearer_auth(token.expose()),
        }
    }

    async fn send(
        &self,
        operation: &'static str,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Response, UpstreamError> {
        let result = send_with_retry(UPSTREAM, &self.policy, || {
            let request = build(&self.http).header(ACCEPT, "application/json");
            match &self.auth {
                JiraAuth::Basic { email, api_token } => request.basic_auth(email, Some(api_token.expose())),
                JiraAuth::Bearer { token } => request.bearer_auth(token.expose()),
            }
        })
        .await;
        if let Err(error) = &result
            && !error.is_not_found()
        {
            tracing::warn!(operation, error = %error, "Jira call failed");
        }
        result
    }
}

fn non_empty<'a>(value: &'a str, what: &str) -> Result<&'a str, UpstreamError> {
    let value = value.trim();
    if value.is_empty() { Err(UpstreamError::InvalidInput(format!("an empty {what}"))) } else { Ok(value) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jsm_approval_maps_to_domain_decisions() {
        let w: WireApproval = serde_json::from_str(
            r#"{"id":"1","name":"Manager approval","finalDecision":"declined","canAnswerApproval":false,
                "approvers":[{"approver":{"accountId":"a1","displayName":"Ann","emailAddress":"ann@x.com"},"approverDecision":"approved"},
                             {"approver":{"accountId":"b2","displayName":"Bob"},"approverDecision":"declined"},
                             {"approver":{"accountId":"c3","displayName":"Cy","emailAddress":""},"approverDecision":"pending"}],
                "completedDate":{"iso8601":"2024-05-01T10:00:00+0000","epochMillis":1714557600000}}"#,
        )
        .unwrap();
        let a = JsmApproval::from(w);
        assert_eq!(a.final_decision, ApprovalDecision::Rejected);
        assert_eq!(a.completed_at.as_deref(), Some("2024-05-01T10:00:00+0000"));
        let approvals = a.approvals();
        assert_eq!(approvals.len(), 3);
        assert_eq!(approvals[0].approver.email.as_deref(), Some("ann@x.com"));
        assert_eq!(approvals[0].decision, ApprovalDecision::Approved);
        assert_eq!(approvals[1].approver.email, None);
        assert_eq!(approvals[1].decision, ApprovalDecision::Rejected);
        assert_eq!(approvals[2].approver.email, None);
        assert_eq!(approvals[2].decision, ApprovalDecision::Pending);
        assert_eq!(decision("something-new"), ApprovalDecision::Pending);
    }
}
