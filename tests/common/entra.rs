//! Microsoft Entra on loopback, shared by the binaries that run the service against it: the tenant's token
//! endpoint, Graph's group resource, and the `[entra]` and policy tables that point the service at the fake.

use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

pub const TENANT: &str = "8f2d4b61-9c3a-4e7f-b1d5-0a6c2e9f4b73";
pub const CLIENT: &str = "3c9e1f7a-2b4d-4c6e-8a0f-5d7b9e1c3a24";
/// The assigned group the portal rule grants membership of.
pub const PORTAL_GROUP: &str = "6f3c1a52-0d3e-4b8c-9f0a-2b7d4e5c1a90";
pub const PORTAL_LABEL: &str = "EPM - User Portal Access";

/// The tenant's token endpoint, answering the client-credentials grant with a Graph token.
pub async fn token_endpoint(entra: &MockServer) {
    Mock::given(method("POST"))
        .and(path(format!("/{TENANT}/oauth2/v2.0/token")))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"token_type": "Bearer", "expires_in": 3599, "access_token": "graph-token"})),
        )
        .mount(entra)
        .await;
}

/// A fake Entra: a new server with the token endpoint mounted.
pub async fn entra() -> MockServer {
    let entra = MockServer::start().await;
    token_endpoint(&entra).await;
    entra
}

/// Graph's group resource as the service selects it: cloud-only, not role-assignable, `group_types` as given.
pub fn group_resource(id: &str, name: &str, group_types: Value) -> Value {
    json!({
        "id": id, "displayName": name, "groupTypes": group_types, "onPremisesSyncEnabled": null,
        "isAssignableToRole": false
    })
}

/// `GET /v1.0/groups/{id}`: an assigned (not dynamic) group named `name`.
pub async fn assigned_group(entra: &MockServer, id: &str, name: &str) {
    Mock::given(method("GET"))
        .and(path(format!("/v1.0/groups/{id}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(group_resource(id, name, json!([]))))
        .mount(entra)
        .await;
}

/// The `[entra]` table for a tenant at `uri`: authority, Graph and ARM all on the fake, the client secret in the
/// file `client_secret`.
pub fn entra_table(uri: &str, client_secret: &str) -> String {
    format!(
        r#"
[entra]
tenant_id = "{TENANT}"
client_id = "{CLIENT}"
client_secret = {{ file = "{client_secret}" }}
authority = "{uri}"
graph_url = "{uri}/v1.0"
arm_url = "{uri}"
"#
    )
}

/// The rule granting membership of the portal group for "Permissions portal access": `rule_extra` goes into the
/// rule, `grant_extra` into its grant.
pub fn portal_rule(rule_extra: &str, grant_extra: &str) -> String {
    format!(
        r#"
[[policy.rules]]
name = "portal-access"
request_types = ["Permissions portal access"]
{rule_extra}
[[policy.rules.grants]]
kind = "group_member"
group_id = "{PORTAL_GROUP}"
label = "{PORTAL_LABEL}"
{grant_extra}
"#
    )
}
