//! Entra group membership through Microsoft Graph v1.0: add (one, or up to 20 per PATCH), remove, the check
//! that refuses groups whose membership Graph cannot change, and the list of a group's direct members.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use super::call::{Caller, object_id};
use super::{GrantOutcome, ProviderError, has_status, upstream_message};
use crate::entra::{EntraGroup, GRAPH_RESOURCE, TokenProvider};
use crate::upstream::url::path_segment;
use crate::upstream::{RetryPolicy, UpstreamError, read_json};

const UPSTREAM: &str = "graph";

/// What the pre-write check reads of a group.
pub const GROUP_SELECT: &str = "id,displayName,groupTypes,onPremisesSyncEnabled,isAssignableToRole";

/// Graph accepts at most this many `members@odata.bind` references in one PATCH.
pub const MAX_MEMBERS_PER_PATCH: usize = 20;

/// Members per page of `GET /groups/{id}/members`: Graph's maximum page size for directory objects.
pub const MEMBERS_PAGE_SIZE: usize = 999;

/// A group this large (about five million members) is not something a bridge reconciles: stop rather than page on.
const MAX_MEMBER_PAGES: usize = 5_000;

/// How long a group's kind (dynamic, synced, role-assignable) is trusted before it is read again.
pub const DEFAULT_GROUP_CACHE_TTL: Duration = Duration::from_secs(5 * 60);

/// Graph's message when an added member is already there (HTTP 400 `Request_BadRequest`); the full text is
/// "One or more added object references already exist for the following modified properties: 'members'.".
const ALREADY_MEMBER: &str = "added object references already exist";

/// Group membership writes with an app-only Graph token.
#[derive(Debug, Clone)]
pub struct GraphGroups {
    /// Shared limits (calls in flight, Graph's write budget) are set on it by [`super::Providers`].
    pub(super) caller: Caller,
    base_url: String,
    reference_base: String,
    cache: Arc<GroupCache>,
}

#[derive(Debug)]
struct GroupCache {
    ttl: Duration,
    groups: Mutex<HashMap<String, (Instant, EntraGroup)>>,
}

impl GroupCache {
    fn new(ttl: Duration) -> Self {
        GroupCache { ttl, groups: Mutex::new(HashMap::new()) }
    }

    fn get(&self, group_id: &str) -> Option<EntraGroup> {
        // A poisoned map only means another task panicked while holding it; the entries are still sound.
        let groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        groups.get(group_id).filter(|(read_at, _)| read_at.elapsed() < self.ttl).map(|(_, group)| group.clone())
    }

    fn put(&self, group_id: &str, group: EntraGroup) {
        let mut groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        groups.retain(|_, (read_at, _)| read_at.elapsed() < self.ttl);
        groups.insert(group_id.to_owned(), (Instant::now(), group));
    }
}

impl GraphGroups {
    /// `base_url` is `https://graph.microsoft.com/v1.0` (a national cloud's Graph, or a fake's URL in tests); the
    /// token is always for the Graph resource.
    pub fn new(http: reqwest::Client, base_url: impl Into<String>, tokens: Arc<TokenProvider>) -> Self {
        let base_url = base_url.into().trim_end_matches('/').to_owned();
        GraphGroups {
            caller: Caller::new(http, tokens, GRAPH_RESOURCE, UPSTREAM, "client-request-id"),
            reference_base: base_url.clone(),
            base_url,
            cache: Arc::new(GroupCache::new(DEFAULT_GROUP_CACHE_TTL)),
        }
    }

    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.caller.policy = policy;
        self
    }

    pub fn with_group_cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache = Arc::new(GroupCache::new(ttl));
        self
    }

    /// Where the `@odata.id` references of added members point. Graph resolves a reference only when it names a
    /// Graph URL (`https://graph.microsoft.com/v1.0/directoryObjects/{id}`, as documented); by default it is the
    /// base URL, which is that URL in production and the right host in a national cloud. Set it when the base URL
    /// is a proxy in front of Graph.
    pub fn with_reference_base(mut self, reference_base: impl Into<String>) -> Self {
        self.reference_base = reference_base.into().trim_end_matches('/').to_owned();
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// How long until the next write could go out under the write budget (zero without one).
    pub fn write_wait(&self) -> Duration {
        self.caller.budget.as_ref().map_or(Duration::ZERO, |b| b.wait_time())
    }

    /// The group, if Graph lets its membership be changed; `Refused` for a dynamic or an on-premises-synced group,
    /// `Permanent` (`not_found`) for an unknown one. Read once per group per cache lifetime.
    pub async fn writable_group(&self, group_id: &str) -> Result<EntraGroup, ProviderError> {
        let group_id = object_id("group id", group_id)?;
        let group = match self.cache.get(&group_id) {
            Some(group) => group,
            None => {
                let group = self.read_group(&group_id).await?;
                self.cache.put(&group_id, group.clone());
                group
            }
        };
        if group.is_dynamic() {
            return Err(ProviderError::Refused {
                reason: format!(
                    "group {} has dynamic membership: its members come from a membership rule and Entra refuses \
                     manual adds and removals; change the rule, or grant an assigned group instead",
                    label(&group)
                ),
            });
        }
        if group.is_synced_from_on_premises() {
            return Err(ProviderError::Refused {
                reason: format!(
                    "group {} is synced from on-premises Active Directory: its membership can only be changed in \
                     on-premises AD, not through Microsoft Graph",
                    label(&group)
                ),
            });
        }
        Ok(group)
    }

    async fn read_group(&self, group_id: &str) -> Result<EntraGroup, ProviderError> {
        let url = format!("{}/groups/{}?$select={GROUP_SELECT}", self.base_url, path_segment(group_id));
        match self.caller.send("read_group", UpstreamError::is_not_found, |http| http.get(&url)).await {
            Ok(response) => Ok(read_json(response, UPSTREAM).await?),
            Err(e) if e.is_not_found() => Err(ProviderError::permanent(
                "not_found",
                format!("group {group_id} does not exist in the directory: {e}"),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Adds `principal_id` to the group (`POST /groups/{id}/members/$ref`). Already a member: `Granted { already }`.
    pub async fn add(&self, group_id: &str, principal_id: &str) -> Result<GrantOutcome, ProviderError> {
        let principal_id = object_id("principal id", principal_id)?;
        let group = self.writable_group(group_id).await?;
        self.add_checked(&group, &principal_id).await
    }

    async fn add_checked(&self, group: &EntraGroup, principal_id: &str) -> Result<GrantOutcome, ProviderError> {
        let url = format!("{}/groups/{}/members/$ref", self.base_url, path_segment(&group.id));
        let body = json!({ "@odata.id": self.reference(principal_id) });
        match self.caller.write("add_member", is_already_member, |http| http.post(&url).json(&body)).await {
            Ok(_) => Ok(GrantOutcome::Granted { upstream_id: None, already: false }),
            Err(e) if is_already_member(&e) => Ok(GrantOutcome::Granted { upstream_id: None, already: true }),
            Err(e) => Err(write_error(e, group, principal_id)),
        }
    }

    /// Removes `principal_id` from the group (`DELETE /groups/{id}/members/{id}/$ref`: only the membership, never
    /// the object). Not a member: `Revoked { already_gone }`.
    pub async fn remove(&self, group_id: &str, principal_id: &str) -> Result<GrantOutcome, ProviderError> {
        let principal_id = object_id("principal id", principal_id)?;
        let group = self.writable_group(group_id).await?;
        let url = format!(
            "{}/groups/{}/members/{}/$ref",
            self.base_url,
            path_segment(&group.id),
            path_segment(&principal_id)
        );
        match self.caller.write("remove_member", UpstreamError::is_not_found, |http| http.delete(&url)).await {
            Ok(_) => Ok(GrantOutcome::Revoked { already_gone: false }),
            Err(e) if e.is_not_found() => Ok(GrantOutcome::Revoked { already_gone: true }),
            Err(e) => Err(write_error(e, &group, &principal_id)),
        }
    }

    /// Adds many principals to one group, 20 per `PATCH /groups/{id}` (`members@odata.bind`). Graph refuses a whole
    /// PATCH when one reference is bad (one already a member, one unknown) and adds nothing; that chunk is then
    /// added one by one so that each principal gets its own answer. One result per input, in input order.
    pub async fn add_many(
        &self,
        group_id: &str,
        principals: &[String],
    ) -> Vec<(String, Result<GrantOutcome, ProviderError>)> {
        let group = match self.writable_group(group_id).await {
            Ok(group) => group,
            Err(e) => return principals.iter().map(|p| (p.clone(), Err(e.clone()))).collect(),
        };
        // Each distinct principal is sent once; a bad id is answered without a call.
        let mut answers: HashMap<String, Result<GrantOutcome, ProviderError>> = HashMap::new();
        let mut unique: Vec<String> = Vec::new();
        let keys: Vec<Result<String, ProviderError>> =
            principals.iter().map(|p| object_id("principal id", p)).collect();
        for id in keys.iter().flatten() {
            if !unique.contains(id) {
                unique.push(id.clone());
            }
        }
        for chunk in unique.chunks(MAX_MEMBERS_PER_PATCH) {
            match self.patch_members(&group, chunk).await {
                Ok(()) => {
                    for id in chunk {
                        answers.insert(id.clone(), Ok(GrantOutcome::Granted { upstream_id: None, already: false }));
                    }
                }
                Err(e) if has_status(&e, &[StatusCode::BAD_REQUEST, StatusCode::NOT_FOUND]) => {
                    tracing::info!(
                        group_id = %group.id,
                        members = chunk.len(),
                        error = %e,
                        "Graph refused the batch; adding its members one by one"
                    );
                    for id in chunk {
                        let answer = self.add_checked(&group, id).await;
                        answers.insert(id.clone(), answer);
                    }
                }
                Err(e) => {
                    let error = write_error(e, &group, "(batch)");
                    for id in chunk {
                        answers.insert(id.clone(), Err(error.clone()));
                    }
                }
            }
        }
        principals
            .iter()
            .zip(keys)
            .map(|(given, key)| {
                let answer = match key {
                    Ok(id) => answers.get(&id).cloned().unwrap_or_else(|| {
                        Err(ProviderError::permanent("internal", format!("no answer was recorded for {id}")))
                    }),
                    Err(e) => Err(e),
                };
                (given.clone(), answer)
            })
            .collect()
    }

    async fn patch_members(&self, group: &EntraGroup, principal_ids: &[String]) -> Result<(), UpstreamError> {
        let url = format!("{}/groups/{}", self.base_url, path_segment(&group.id));
        let references: Vec<String> = principal_ids.iter().map(|id| self.reference(id)).collect();
        let body = json!({ "members@odata.bind": references });
        let expected = |e: &UpstreamError| has_status(e, &[StatusCode::BAD_REQUEST, StatusCode::NOT_FOUND]);
        self.caller.write("add_members", expected, |http| http.patch(&url).json(&body)).await.map(|_| ())
    }

    /// The object ids of the group's direct members (`GET /groups/{id}/members?$select=id&$top=999`: users, groups,
    /// devices and contacts; not transitive), lower-cased, following every `@odata.nextLink`. All or nothing: a page
    /// that cannot be read fails the whole list, so a caller never acts on part of a group.
    ///
    /// A next link is opaque and followed as given, but the token only goes to the configured Graph: a link on
    /// another host is refused. A link on the reference base (the real Graph, when the base URL is a proxy in front
    /// of it) is followed through the base URL.
    pub async fn list_members(&self, group_id: &str) -> Result<Vec<String>, ProviderError> {
        let group_id = object_id("group id", group_id)?;
        let mut url =
            format!("{}/groups/{}/members?$select=id&$top={MEMBERS_PAGE_SIZE}", self.base_url, path_segment(&group_id));
        let mut members = Vec::new();
        let mut seen = HashSet::new();
        for _ in 0..MAX_MEMBER_PAGES {
            let response =
                match self.caller.send("list_members", UpstreamError::is_not_found, |http| http.get(&url)).await {
                    Ok(response) => response,
                    Err(e) if e.is_not_found() => {
                        return Err(ProviderError::permanent(
                            "not_found",
                            format!("group {group_id} does not exist in the directory: {e}"),
                        ));
                    }
                    Err(e) => return Err(e.into()),
                };
            let page: MemberPage = read_json(response, UPSTREAM).await?;
            for member in page.value {
                let id = object_id("member id", &member.id).map_err(|_| {
                    ProviderError::permanent(
                        "invalid_response",
                        format!("Graph listed a member of group {group_id} whose id is not a GUID"),
                    )
                })?;
                if seen.insert(id.clone()) {
                    members.push(id);
                }
            }
            match page.next_link {
                Some(link) => url = self.next_page(&link)?,
                None => return Ok(members),
            }
        }
        Err(ProviderError::permanent(
            "invalid_response",
            format!("group {group_id} has more than {MAX_MEMBER_PAGES} pages of members; stopped reading"),
        ))
    }

    /// The URL to fetch for a page link: on the base URL, or on the reference base and then sent to the base URL.
    fn next_page(&self, link: &str) -> Result<String, ProviderError> {
        let refused = || {
            ProviderError::permanent(
                "invalid_response",
                "Graph returned a next page link outside the configured Graph URL; it was not followed",
            )
        };
        let parsed = reqwest::Url::parse(link).map_err(|_| refused())?;
        for base in [&self.base_url, &self.reference_base] {
            let Ok(base_url) = reqwest::Url::parse(base) else { continue };
            if parsed.origin() != base_url.origin() {
                continue;
            }
            let base_path = base_url.path().trim_end_matches('/');
            let Some(rest) = parsed.path().strip_prefix(base_path).filter(|rest| rest.starts_with('/')) else {
                continue;
            };
            let mut url = format!("{}{rest}", self.base_url);
            if let Some(query) = parsed.query() {
                url.push('?');
                url.push_str(query);
            }
            return Ok(url);
        }
        Err(refused())
    }

    fn reference(&self, principal_id: &str) -> String {
        format!("{}/directoryObjects/{}", self.reference_base, path_segment(principal_id))
    }
}

/// One page of `GET /groups/{id}/members?$select=id`.
#[derive(Deserialize)]
struct MemberPage {
    value: Vec<Member>,
    #[serde(rename = "@odata.nextLink")]
    next_link: Option<String>,
}

#[derive(Deserialize)]
struct Member {
    id: String,
}

fn is_already_member(error: &UpstreamError) -> bool {
    error.status() == Some(StatusCode::BAD_REQUEST)
        && upstream_message(error).to_ascii_lowercase().contains(ALREADY_MEMBER)
}

/// A refused membership write, with what it most likely means.
fn write_error(error: UpstreamError, group: &EntraGroup, principal_id: &str) -> ProviderError {
    match error.status() {
        Some(StatusCode::NOT_FOUND) => ProviderError::permanent(
            "not_found",
            format!("Graph does not know principal {principal_id} (or group {} was deleted): {error}", group.id),
        ),
        Some(StatusCode::FORBIDDEN) => {
            let permission = if group.is_assignable_to_role == Some(true) {
                "GroupMember.ReadWrite.All and, as the group is role-assignable, RoleManagement.ReadWrite.Directory"
            } else {
                "GroupMember.ReadWrite.All"
            };
            ProviderError::permanent(
                "forbidden",
                format!(
                    "Graph refused to change the membership of group {}: the app may be missing {permission}, or \
                     the group's membership is managed by a rule or elsewhere: {error}",
                    label(group)
                ),
            )
        }
        _ => error.into(),
    }
}

fn label(group: &EntraGroup) -> String {
    match group.display_name.as_deref().filter(|n| !n.is_empty()) {
        Some(name) => format!("'{name}' ({})", group.id),
        None => group.id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn permanent(status: StatusCode, code: &str, message: &str) -> UpstreamError {
        UpstreamError::Permanent { status, code: Some(code.into()), message: message.into(), request_id: None }
    }

    #[test]
    fn already_a_member_is_the_documented_400() {
        let documented =
            "One or more added object references already exist for the following modified properties: 'members'.";
        assert!(is_already_member(&permanent(StatusCode::BAD_REQUEST, "Request_BadRequest", documented)));
        assert!(!is_already_member(&permanent(
            StatusCode::BAD_REQUEST,
            "Request_BadRequest",
            "Invalid object identifier"
        )));
        assert!(!is_already_member(&permanent(StatusCode::FORBIDDEN, "Authorization_RequestDenied", documented)));
    }

    fn groups(base: &str) -> GraphGroups {
        let http = reqwest::Client::new();
        let tokens = Arc::new(TokenProvider::new(
            http.clone(),
            "http://127.0.0.1:9",
            "72f988bf-86f1-41af-91ab-2d7cd011db47",
            "11111111-2222-3333-4444-555555555555",
            crate::entra::Credential::Secret(crate::secret::Secret::new("s")),
        ));
        GraphGroups::new(http, base, tokens)
    }

    #[test]
    fn next_page_links_are_followed_only_on_the_configured_graph() {
        let g = groups("http://127.0.0.1:8080/v1.0/");
        let link = "http://127.0.0.1:8080/v1.0/groups/g/members?$select=id&$top=999&$skiptoken=X%27AB%27";
        assert_eq!(g.next_page(link).unwrap(), link);
        for foreign in [
            "http://evil.example/v1.0/groups/g/members?$skiptoken=1",
            "http://127.0.0.1:8081/v1.0/groups/g/members",
            "https://127.0.0.1:8080/v1.0/groups/g/members",
            "http://127.0.0.1:8080/v1.0evil/groups/g/members",
            "http://127.0.0.1:8080/beta/groups/g/members",
            "/v1.0/groups/g/members?$skiptoken=1",
        ] {
            assert_eq!(g.next_page(foreign).unwrap_err().code(), "invalid_response", "{foreign}");
        }
        // Behind a proxy, Graph's links name the real Graph: they are followed through the proxy.
        let g = groups("http://proxy.internal/graph/v1.0").with_reference_base("https://graph.microsoft.com/v1.0");
        assert_eq!(
            g.next_page("https://GRAPH.microsoft.com:443/v1.0/groups/g/members?$skiptoken=2").unwrap(),
            "http://proxy.internal/graph/v1.0/groups/g/members?$skiptoken=2"
        );
    }

    #[test]
    fn a_403_names_the_permissions_the_group_needs() {
        let mut group: EntraGroup = serde_json::from_str(r#"{"id":"g","displayName":"Admins"}"#).unwrap();
        let e = || permanent(StatusCode::FORBIDDEN, "Authorization_RequestDenied", "Insufficient privileges");
        let err = write_error(e(), &group, "p");
        assert_eq!(err.code(), "forbidden");
        assert!(err.to_string().contains("'Admins' (g)") && !err.to_string().contains("RoleManagement"), "{err}");
        group.is_assignable_to_role = Some(true);
        assert!(write_error(e(), &group, "p").to_string().contains("RoleManagement.ReadWrite.Directory"));
    }
}
