//! `spawn_app`: the real application on a random port, on a fresh database, with one source per scheme.

use actix_web::dev::ServerHandle;
use grantbridge::startup::Application;
use grantbridge::store::Store;
use sha2::{Digest, Sha256};

use crate::common::{Backend, TempDir, TestDb, fixture, settings_from};

pub const JIRA_SECRET: &str = "jira-secret-current";
pub const JIRA_SECRET_NEXT: &str = "jira-secret-next";
pub const JIRA_SECRET_RETIRED: &str = "jira-secret-retired";
pub const SN_SECRET: &str = "servicenow-secret";
pub const STD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const JWT_SECRET: &str = "jwt-hs256-shared-secret-of-decent-length";
pub const JWT_ISSUER: &str = "https://acme.service-now.com";
pub const JWT_AUDIENCE: &str = "grantbridge";
pub const CONNECT_KEY: &str = "jira:1c2d3e4f";
pub const CONNECT_SECRET: &str = "connect-shared-secret";
pub const AUTOMATION_TOKEN: &str = "automation-static-token";
/// Static admin tokens of the test config, configured by their SHA-256 only.
pub const READ_TOKEN: &str = "gb-admin-read-0f6c2d9e7a1b4c3d";
pub const OPERATE_TOKEN: &str = "gb-admin-operate-8e2a5c7d1f3b9a64";
pub const READ_TOKEN_NAME: &str = "ci-reader";
pub const OPERATE_TOKEN_NAME: &str = "on-call";

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub store: Store,
    pub db: TestDb,
    handle: ServerHandle,
    _secrets: TempDir,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn post(
        &self,
        source: &str,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        let mut request = self.client.post(self.url(&format!("/webhooks/{source}"))).body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("request reaches the test server")
    }

    pub async fn event_count(&self) -> i64 {
        self.store.count_events().await.unwrap()
    }

    pub async fn stop(&self) {
        self.handle.stop(true).await;
    }
}

/// The test configuration: every signature scheme, each on its own source. `extra` is appended verbatim.
pub fn test_config(secrets: &TempDir, extra: &str) -> String {
    let file = |name: &str, value: &str| secrets.write(name, value).display().to_string();
    let jira = file("jira", JIRA_SECRET);
    let jira_next = file("jira-next", JIRA_SECRET_NEXT);
    let sn = file("sn", SN_SECRET);
    let sample = file("sample", "sample_key");
    let std = file("std", STD_SECRET);
    let jwt = file("jwt", JWT_SECRET);
    let rsa = fixture("keys/rsa.pub.pem").display().to_string();
    let ec = fixture("keys/ec.pub.pem").display().to_string();
    let connect = file("connect", CONNECT_SECRET);
    let automation = file("automation", AUTOMATION_TOKEN);
    format!(
        r#"
[server]
workers = 1

[intake]
store_timeout_ms = 3000

[sources.jira]
kind = "jira"
max_body_bytes = 4096
[[sources.jira.verify]]
scheme = "jira_hub_signature"
secrets = [{{ file = "{jira}" }}, {{ file = "{jira_next}" }}]

[sources.servicenow]
kind = "servicenow"
[[sources.servicenow.verify]]
scheme = "hmac_sha256"
header = "X-Signature"
encoding = "base64"
timestamp_header = "X-Timestamp"
tolerance_secs = 300
secrets = [{{ file = "{sn}" }}]

[sources.sn-plain]
kind = "servicenow"
[[sources.sn-plain.verify]]
scheme = "hmac_sha256"
header = "X-Signature"
secrets = [{{ file = "{sample}" }}]

[sources.stdwh]
kind = "servicenow"
[[sources.stdwh.verify]]
scheme = "standard_webhooks"
secrets = [{{ file = "{std}" }}]

[sources.stdwh-vector]
kind = "servicenow"
[[sources.stdwh-vector.verify]]
scheme = "standard_webhooks"
tolerance_secs = 4000000000
secrets = [{{ file = "{std}" }}]

[sources.jwt]
kind = "servicenow"
delivery_id = {{ field = "/sys_id" }}
[[sources.jwt.verify]]
scheme = "jwt_bearer"
issuer = "{JWT_ISSUER}"
audience = "{JWT_AUDIENCE}"
keys = [
  {{ alg = "HS256", secret = {{ file = "{jwt}" }} }},
  {{ alg = "RS256", public_key = {{ file = "{rsa}" }} }},
  {{ alg = "ES256", public_key = {{ file = "{ec}" }} }},
]

[sources.connect]
kind = "jira"
[[sources.connect.verify]]
scheme = "jira_connect_jwt"
client_key = "{CONNECT_KEY}"
secrets = [{{ file = "{connect}" }}]

[sources.automation]
kind = "jira"
delivery_id = {{ header = "X-Delivery" }}
[[sources.automation.verify]]
scheme = "shared_secret_header"
header = "X-Automation-Token"
secrets = [{{ file = "{automation}" }}]
{extra}
"#
    )
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, "").await
}

/// `[[admin.tokens]]` for the read and operate test tokens.
pub fn admin_tokens() -> String {
    let hash = |token: &str| hex::encode(Sha256::digest(token.as_bytes()));
    format!(
        r#"
[[admin.tokens]]
name = "{READ_TOKEN_NAME}"
sha256 = "{}"
role = "read"

[[admin.tokens]]
name = "{OPERATE_TOKEN_NAME}"
sha256 = "{}"
role = "operate"
"#,
        hash(READ_TOKEN),
        hash(OPERATE_TOKEN)
    )
}

/// The test app with the static admin tokens; `extra` may add `[admin.entra]`.
pub async fn spawn_app_with(backend: Backend, extra: &str) -> TestApp {
    spawn_app_configured(backend, &format!("{}{extra}", admin_tokens())).await
}

/// The test app with `extra` and nothing else: no `[admin]` unless `extra` has one.
pub async fn spawn_app_configured(backend: Backend, extra: &str) -> TestApp {
    let db = TestDb::new(backend).await;
    let secrets = TempDir::new();
    let settings = settings_from(&test_config(&secrets, extra), &db);
    let app = Application::build(settings).await.expect("the application starts");
    let address = format!("http://127.0.0.1:{}", app.port());
    let handle = app.handle();
    tokio::spawn(app.run_until_stopped());
    let store = db.store().await;
    TestApp { address, client: reqwest::Client::new(), store, db, handle, _secrets: secrets }
}
