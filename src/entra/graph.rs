//! Microsoft Graph directory reads for the decision step: users, group membership checks, groups by name.

use std::sync::Arc;

use reqwest::header::ACCEPT;
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::{Deserialize, Deserializer};
use uuid::Uuid;

use super::token::{GRAPH_RESOURCE, TokenProvider};
use crate::domain::Principal;
use crate::upstream::url::{path_segment, query_value};
use crate::upstream::{RetryPolicy, UpstreamError, read_json, send_with_retry};

pub const DEFAULT_GRAPH_URL: &str = "https://graph.microsoft.com/v1.0";

const UPSTREAM: &str = "graph";
const USER_SELECT: &str = "id,userPrincipalName,displayName,mail,accountEnabled";
const GROUP_SELECT: &str = "id,displayName,groupTypes,onPremisesSyncEnabled,isAssignableToRole";
/// `checkMemberGroups` accepts at most this many group ids per call.
const CHECK_MEMBER_GROUPS_MAX: usize = 20;
/// A display-name filter rarely matches more than a few groups; stop following pages long before this.
const MAX_PAGES: usize = 50;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntraUser {
    pub id: String,
    pub user_principal_name: String,
    pub display_name: Option<String>,
    pub mail: Option<String>,
    pub account_enabled: Option<bool>,
}

impl From<EntraUser> for Principal {
    fn from(user: EntraUser) -> Self {
        Principal {
            object_id: user.id,
            user_principal_name: Some(user.user_principal_name),
            display_name: user.display_name,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntraGroup {
    pub id: String,
    pub display_name: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub group_types: Vec<String>,
    pub on_premises_sync_enabled: Option<bool>,
    pub is_assignable_to_role: Option<bool>,
}

impl EntraGroup {
    /// Members come from a rule; Graph refuses manual adds.
    pub fn is_dynamic(&self) -> bool {
        self.group_types.iter().any(|t| t.eq_ignore_ascii_case("DynamicMembership"))
    }

    /// Mastered in on-premises AD; membership cannot be changed through Graph.
    pub fn is_synced_from_on_premises(&self) -> bool {
        self.on_premises_sync_enabled == Some(true)
    }
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("Microsoft Graph: {0}")]
    Upstream(#[from] UpstreamError),
    #[error("the mail address {mail} is ambiguous: {count} or more users have it")]
    AmbiguousMail { mail: String, count: usize },
}

#[derive(Deserialize)]
struct Page<T> {
    value: Vec<T>,
    #[serde(rename = "@odata.nextLink")]
    next_link: Option<String>,
}

/// Reads the directory with an app-only token for Graph.
#[derive(Debug, Clone)]
pub struct GraphDirectory {
    http: reqwest::Client,
    base_url: String,
    tokens: Arc<TokenProvider>,
    policy: RetryPolicy,
}

impl GraphDirectory {
    /// `base_url` is [`DEFAULT_GRAPH_URL`] or a fake's URL; the token is always for the real Graph resource.
    pub fn new(http: reqwest::Client, base_url: impl Into<String>, tokens: Arc<TokenProvider>) -> Self {
        let base_url = base_url.into().trim_end_matches('/').to_owned();
        GraphDirectory { http, base_url, tokens, policy: RetryPolicy::default() }
    }

    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// A user by object id or user principal name; `None` if Graph does not know it.
    pub async fn user(&self, id_or_upn: &str) -> Result<Option<EntraUser>, GraphError> {
        let id_or_upn = id_or_upn.trim();
        if id_or_upn.is_empty() {
            return Err(UpstreamError::InvalidInput("an empty user id or UPN".into()).into());
        }
        let url = format!("{}{}?$select={USER_SELECT}", self.base_url, user_path(id_or_upn));
        match self.send("user", |http| http.get(&url)).await {
            Ok(response) => Ok(Some(read_json(response, UPSTREAM).await?)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The one user whose `mail` is `mail`; `None` if there is none, an error if there are several.
    pub async fn user_by_mail(&self, mail: &str) -> Result<Option<EntraUser>, GraphError> {
        let mail = mail.trim();
        if mail.is_empty() {
            return Err(UpstreamError::InvalidInput("an empty mail address".into()).into());
        }
        let filter = query_value(&format!("mail eq {}", odata_string(mail)));
        // Two are enough to know the address is ambiguous.
        let url = format!("{}/users?$filter={filter}&$select={USER_SELECT}&$top=2", self.base_url);
        let page: Page<EntraUser> =
            read_json(self.send("user_by_mail", |http| http.get(&url)).await?, UPSTREAM).await?;
        let count = page.value.len() + usize::from(page.next_link.is_some());
        let mut users = page.value.into_iter();
        match (users.next(), count) {
            (None, _) => Ok(None),
            (Some(user), 1) => Ok(Some(user)),
            (Some(_), count) => Err(GraphError::AmbiguousMail { mail: mail.to_owned(), count }),
        }
    }

    /// Which of `group_ids` the user is a member of, directly or through nested groups (`checkMemberGroups`,
    /// called in chunks of 20).
    pub async fn member_of_groups(&self, user_id: &str, group_ids: &[String]) -> Result<Vec<String>, GraphError> {
        let user_id = user_id.trim();
        if user_id.is_empty() {
            return Err(UpstreamError::InvalidInput("an empty user id".into()).into());
        }
        let url = format!("{}/users/{}/checkMemberGroups", self.base_url, path_segment(user_id));
        let mut member_of = Vec::new();
        for chunk in group_ids.chunks(CHECK_MEMBER_GROUPS_MAX) {
            let body = serde_json::json!({ "groupIds": chunk });
            let response = self.send("member_of_groups", |http| http.post(&url).json(&body)).await?;
            let page: Page<String> = read_json(response, UPSTREAM).await?;
            member_of.extend(page.value);
        }
        Ok(member_of)
    }

    /// Groups whose display name is exactly `display_name` (display names are not unique in Entra).
    pub async fn group_by_name(&self, display_name: &str) -> Result<Vec<EntraGroup>, GraphError> {
        let filter = query_value(&format!("displayName eq {}", odata_string(display_name)));
        let mut url = format!("{}/groups?$filter={filter}&$select={GROUP_SELECT}", self.base_url);
        let mut groups = Vec::new();
        for _ in 0..MAX_PAGES {
            let page: Page<EntraGroup> =
                read_json(self.send("group_by_name", |http| http.get(&url)).await?, UPSTREAM).await?;
            groups.extend(page.value);
            match page.next_link {
                // The token goes only where the base URL points, whatever link a response carries.
                Some(next) if next.starts_with(&format!("{}/", self.base_url)) => url = next,
                Some(_) => {
                    return Err(UpstreamError::InvalidResponse(
                        "Graph returned a next page link outside the configured Graph URL".into(),
                    )
                    .into());
                }
                None => return Ok(groups),
            }
        }
        Err(UpstreamError::InvalidResponse(format!("more than {MAX_PAGES} pages of groups named {display_name}"))
            .into())
    }

    /// One Graph call: a token, a fresh `client-request-id`, retries; on failure, Graph's ids in the log.
    async fn send(
        &self,
        operation: &'static str,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Response, UpstreamError> {
        let token = self.tokens.token(GRAPH_RESOURCE).await?;
        let client_request_id = Uuid::now_v7().to_string();
        let result = send_with_retry(UPSTREAM, &self.policy, || {
            build(&self.http)
                .bearer_auth(token.expose())
                .header(ACCEPT, "application/json")
                .header("client-request-id", &client_request_id)
        })
        .await;
        if let Err(error) = &result {
            let request_id = match error {
                UpstreamError::Permanent { request_id, .. } => request_id.as_deref(),
                _ => None,
            };
            if error.status() == Some(StatusCode::UNAUTHORIZED) {
                // The token may have been revoked or issued before a permission change: fetch anew next time.
                self.tokens.invalidate(GRAPH_RESOURCE).await;
            }
            if error.is_not_found() {
                tracing::debug!(operation, request_id, client_request_id, "Graph: not found");
            } else {
                tracing::warn!(operation, request_id, client_request_id, error = %error, "Graph call failed");
            }
        }
        result
    }
}

/// `/users/{id | upn}`, or `/users('{upn}')` for a UPN starting with `$`, which Graph would otherwise read as a
/// system query segment.
fn user_path(id_or_upn: &str) -> String {
    if id_or_upn.starts_with('$') {
        format!("/users({})", path_segment(&odata_string(id_or_upn)))
    } else {
        format!("/users/{}", path_segment(id_or_upn))
    }
}

/// An OData string literal: single quotes around, inner single quotes doubled.
fn odata_string(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_paths() {
        assert_eq!(user_path("4c3c7e1d-0000-0000-0000-000000000001"), "/users/4c3c7e1d-0000-0000-0000-000000000001");
        assert_eq!(user_path("a_b.com#EXT#@t.onmicrosoft.com"), "/users/a_b.com%23EXT%23@t.onmicrosoft.com");
        assert_eq!(user_path("$adm@x.com"), "/users('$adm@x.com')");
        assert_eq!(user_path("$o'k@x.com"), "/users('$o''k@x.com')");
    }

    #[test]
    fn groups_know_what_graph_cannot_change() {
        let g: EntraGroup = serde_json::from_str(
            r#"{"id":"g","displayName":"x","groupTypes":["Unified","DynamicMembership"],"onPremisesSyncEnabled":null}"#,
        )
        .unwrap();
        assert!(g.is_dynamic());
        assert!(!g.is_synced_from_on_premises());
        let g: EntraGroup =
            serde_json::from_str(r#"{"id":"g","groupTypes":null,"onPremisesSyncEnabled":true}"#).unwrap();
        assert!(!g.is_dynamic());
        assert!(g.is_synced_from_on_premises());
    }

    #[test]
    fn a_user_becomes_a_principal() {
        let u = EntraUser {
            id: "oid".into(),
            user_principal_name: "a@x.com".into(),
            display_name: Some("A".into()),
            mail: None,
            account_enabled: Some(true),
        };
        let p = Principal::from(u);
        assert_eq!(p.object_id, "oid");
        assert_eq!(p.user_principal_name.as_deref(), Some("a@x.com"));
        assert_eq!(p.display_name.as_deref(), Some("A"));
    }
}
