//! Certificate and workload identity credentials, against a fake token endpoint that checks a client assertion the way
//! the identity platform does: thumbprint of a registered certificate, signature, audience, issuer, lifetime.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use grantbridge::entra::{
    AssertionAlgorithm, CertificateCredential, Credential, EntraConfig, GRAPH_RESOURCE, TokenProvider,
};
use grantbridge::upstream::UpstreamError;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::helpers::{ACCESS_TOKEN, CLIENT_ID, TENANT, fast_policy, form, http};

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/entra").join(name)
}

fn read_fixture(name: &str) -> String {
    std::fs::read_to_string(fixture(name)).unwrap()
}

fn token_path() -> String {
    format!("/{TENANT}/oauth2/v2.0/token")
}

/// A file of its own for each test, so tests running at once never share one.
fn scratch(test: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gb-entra-credentials-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// An assertion the fake accepted: its header `alg` and its claims.
#[derive(Debug, Clone)]
struct Accepted {
    alg: Algorithm,
    claims: Value,
}

/// The token endpoint of a tenant whose app has one certificate registered (the fixture `cert.pem`).
struct CertificateCheckingEndpoint {
    token_url: String,
    thumbprint: String,
    public_key: DecodingKey,
    expires_in: u64,
    accepted: Arc<Mutex<Vec<Accepted>>>,
}

/// A refusal as the identity platform words it: the OAuth error, and the AADSTS code and text.
struct Refusal {
    code: u32,
    text: String,
}

fn refuse(code: u32, text: impl Into<String>) -> Refusal {
    Refusal { code, text: text.into() }
}

impl CertificateCheckingEndpoint {
    fn check(&self, request: &Request) -> Result<Accepted, Refusal> {
        let form = form(request);
        let field = |k: &str| form.get(k).map(String::as_str);
        if field("grant_type") != Some("client_credentials") || field("client_id") != Some(CLIENT_ID) {
            return Err(refuse(900144, "The request body must contain the following parameter: 'grant_type'."));
        }
        if field("client_secret").is_some() || field("client_assertion_type") != Some(JWT_BEARER) {
            return Err(refuse(
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            ));
        }
        let assertion = field("client_assertion").ok_or_else(|| refuse(7000218, "no client_assertion"))?;
        let header =
            jsonwebtoken::decode_header(assertion).map_err(|_| refuse(50027, "JWT token is invalid or malformed."))?;
        if header.typ.as_deref() != Some("JWT") || !matches!(header.alg, Algorithm::PS256 | Algorithm::RS256) {
            return Err(refuse(50027, "JWT token is invalid or malformed."));
        }
        if header.x5t_s256.as_deref() != Some(self.thumbprint.as_str()) {
            return Err(refuse(
                700027,
                format!(
                    "The certificate with identifier used to sign the client assertion is not registered on \
                     application. [Reason - The key was not found., Thumbprint of key used by client: '{}']",
                    header.x5t_s256.unwrap_or_default()
                ),
            ));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[&self.token_url]);
        validation.set_issuer(&[CLIENT_ID]);
        validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<Value>(assertion, &self.public_key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::InvalidSignature => refuse(700027, "Client assertion failed signature validation."),
                ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => {
                    refuse(700024, "Client assertion is not within its valid time range.")
                }
                ErrorKind::InvalidIssuer => {
                    refuse(700021, "Client assertion application identifier doesn't match 'client_id' parameter.")
                }
                other => refuse(50027, format!("JWT token is invalid or malformed ({other:?}).")),
            }
        })?;
        let claims = data.claims;
        if claims["sub"] != CLIENT_ID {
            return Err(refuse(700021, "Client assertion subject doesn't match 'client_id' parameter."));
        }
        if claims["jti"].as_str().is_none_or(str::is_empty) {
            return Err(refuse(50027, "JWT token is invalid or malformed (no jti)."));
        }
        let (iat, exp) = (claims["iat"].as_u64().unwrap_or(0), claims["exp"].as_u64().unwrap_or(0));
        // Assertions are meant to live 5 to 10 minutes; allow a few seconds for the test's own clock reads.
        if iat > now() + 5 || exp > now() + 600 + 5 {
            return Err(refuse(700024, "Client assertion is not within its valid time range."));
        }
        Ok(Accepted { alg: header.alg, claims })
    }
}

impl Respond for CertificateCheckingEndpoint {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        match self.check(request) {
            Ok(accepted) => {
                self.accepted.lock().unwrap().push(accepted);
                ResponseTemplate::new(200).set_body_json(json!({"token_type": "Bearer", "expires_in": self.expires_in,
                    "ext_expires_in": self.expires_in, "access_token": ACCESS_TOKEN}))
            }
            Err(Refusal { code, text }) => {
                let trace = "0d4d2a1b-61c9-4e38-9b4a-0c3ad1f1c200";
                ResponseTemplate::new(401).set_body_json(json!({
                    "error": "invalid_client",
                    "error_description": format!("AADSTS{code}: {text} Trace ID: {trace} Correlation ID: 3f1d2a47-0fb5-4e0e-9a37-1c7d1b4b3d2e Timestamp: 2025-01-01 00:00:00Z"),
                    "error_codes": [code],
                    "timestamp": "2025-01-01 00:00:00Z",
                    "trace_id": trace,
                    "correlation_id": "3f1d2a47-0fb5-4e0e-9a37-1c7d1b4b3d2e",
                    "error_uri": format!("https://login.microsoftonline.com/error?code={code}")
                }))
            }
        }
    }
}

struct CertificateFake {
    login: MockServer,
    accepted: Arc<Mutex<Vec<Accepted>>>,
}

impl CertificateFake {
    async fn start(expires_in: u64) -> Self {
        let login = MockServer::start().await;
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let endpoint = CertificateCheckingEndpoint {
            token_url: format!("{}{}", login.uri(), token_path()),
            thumbprint: read_fixture("cert.x5t-s256.txt").trim().to_owned(),
            public_key: DecodingKey::from_rsa_pem(read_fixture("cert.pub.pem").as_bytes()).unwrap(),
            expires_in,
            accepted: accepted.clone(),
        };
        Mock::given(method("POST")).and(path(token_path())).respond_with(endpoint).mount(&login).await;
        CertificateFake { login, accepted }
    }

    fn provider(&self, certificate: &str, key: &str, algorithm: AssertionAlgorithm) -> TokenProvider {
        let credential =
            CertificateCredential::from_pem(&read_fixture(certificate), &read_fixture(key), algorithm).unwrap();
        TokenProvider::new(http(), &self.login.uri(), TENANT, CLIENT_ID, Credential::Certificate(credential))
            .with_retry_policy(fast_policy())
    }

    fn accepted(&self) -> Vec<Accepted> {
        self.accepted.lock().unwrap().clone()
    }

    async fn requests(&self) -> Vec<Request> {
        self.login.received_requests().await.unwrap()
    }
}

fn config(extra: &str) -> EntraConfig {
    toml::from_str(&format!("tenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT_ID}\"\n{extra}")).unwrap()
}

#[tokio::test]
async fn a_certificate_in_the_config_signs_a_ps256_assertion_the_endpoint_accepts() {
    let fake = CertificateFake::start(3599).await;
    let entra = config(&format!(
        "certificate = {{ file = \"{}\" }}\nprivate_key = {{ file = \"{}\" }}\nauthority = \"{}\"",
        fixture("cert.pem").display(),
        fixture("key.pem").display(),
        fake.login.uri()
    ))
    .build("entra")
    .unwrap();

    let token = entra.tokens.token(GRAPH_RESOURCE).await.unwrap();

    assert_eq!(token.expose(), ACCESS_TOKEN);
    let accepted = fake.accepted();
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].alg, Algorithm::PS256);
    let requests = fake.requests().await;
    let form = form(&requests[0]);
    let mut fields: Vec<&str> = form.keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(fields, ["client_assertion", "client_assertion_type", "client_id", "grant_type", "scope"]);
    assert_eq!(form["scope"], "https://graph.microsoft.com/.default");
    assert!(!format!("{entra:?}").contains(read_fixture("key.pem").lines().nth(1).unwrap()));
}

#[tokio::test]
async fn an_rs256_assertion_signed_with_a_pkcs1_key_is_accepted() {
    let fake = CertificateFake::start(3599).await;
    let tokens = fake.provider("cert.pem", "key-pkcs1.pem", AssertionAlgorithm::Rs256);

    assert_eq!(tokens.token(GRAPH_RESOURCE).await.unwrap().expose(), ACCESS_TOKEN);

    let accepted = fake.accepted();
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].alg, Algorithm::RS256);
    assert_eq!(accepted[0].claims["aud"], format!("{}{}", fake.login.uri(), token_path()));
}

#[tokio::test]
async fn a_certificate_the_app_does_not_know_is_refused_with_aadsts700027_and_nothing_secret_in_the_error() {
    let fake = CertificateFake::start(3599).await;
    let tokens = fake.provider("other-cert.pem", "other-key.pem", AssertionAlgorithm::Ps256);

    let err = tokens.token(GRAPH_RESOURCE).await.unwrap_err();

    let UpstreamError::Permanent { status, code, message, .. } = &err else { panic!("{err:?}") };
    assert_eq!(status.as_u16(), 401);
    assert_eq!(code.as_deref(), Some("AADSTS700027"));
    assert!(message.starts_with("invalid_client: AADSTS700027: The certificate with identifier"), "{message}");
    let requests = fake.requests().await;
    assert_eq!(requests.len(), 1, "a refusal is not retried");
    let assertion = form(&requests[0])["client_assertion"].clone();
    let signature = assertion.rsplit('.').next().unwrap().to_owned();
    let key_line = read_fixture("other-key.pem").lines().nth(1).unwrap().to_owned();
    for text in [err.to_string(), format!("{err:?}"), format!("{tokens:?}")] {
        assert!(!text.contains(&signature) && !text.contains(&key_line), "{text}");
    }
    assert!(err.to_string().contains("AADSTS700027"));
}

#[tokio::test]
async fn every_token_fetch_signs_a_new_assertion_with_a_fresh_jti() {
    // Two seconds of life: the cache renews after one.
    let fake = CertificateFake::start(2).await;
    let tokens = fake.provider("cert.pem", "key.pem", AssertionAlgorithm::Ps256);

    tokens.token(GRAPH_RESOURCE).await.unwrap();
    tokens.token(GRAPH_RESOURCE).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    tokens.token(GRAPH_RESOURCE).await.unwrap();

    let accepted = fake.accepted();
    assert_eq!(accepted.len(), 2);
    assert_ne!(accepted[0].claims["jti"], accepted[1].claims["jti"]);
    let requests = fake.requests().await;
    assert_ne!(form(&requests[0])["client_assertion"], form(&requests[1])["client_assertion"]);
}

#[tokio::test]
async fn the_federated_token_file_is_read_again_for_every_fetch() {
    let login = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(token_path()))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"token_type": "Bearer", "expires_in": 2, "ext_expires_in": 2, "access_token": ACCESS_TOKEN}),
        ))
        .mount(&login)
        .await;
    let token_file = scratch("federated", "azure-identity-token");
    std::fs::write(&token_file, "kubelet.token.A\n").unwrap();
    let entra =
        config(&format!("federated_token_file = \"{}\"\nauthority = \"{}\"", token_file.display(), login.uri()))
            .build("entra")
            .unwrap();

    entra.tokens.token(GRAPH_RESOURCE).await.unwrap();
    // The kubelet rotates the projected token in place.
    std::fs::write(&token_file, "kubelet.token.B\n").unwrap();
    entra.tokens.token(GRAPH_RESOURCE).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    entra.tokens.token(GRAPH_RESOURCE).await.unwrap();

    let seen: Vec<(String, String)> = login
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let form = form(r);
            (form["client_assertion_type"].clone(), form["client_assertion"].clone())
        })
        .collect();
    assert_eq!(
        seen,
        [(JWT_BEARER.to_owned(), "kubelet.token.A".to_owned()), (JWT_BEARER.to_owned(), "kubelet.token.B".to_owned())]
    );
}

/// The fake's checks are what make the tests above mean something: it must refuse what the identity platform refuses.
#[tokio::test]
async fn the_fake_endpoint_refuses_forged_misaddressed_and_stale_assertions() {
    let fake = CertificateFake::start(3599).await;
    let token_url = format!("{}{}", fake.login.uri(), token_path());
    let thumbprint = read_fixture("cert.x5t-s256.txt").trim().to_owned();
    let sign = |key: &str, claims: Value| {
        let mut header = jsonwebtoken::Header::new(Algorithm::PS256);
        header.x5t_s256 = Some(thumbprint.clone());
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(read_fixture(key).as_bytes()).unwrap();
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    };
    let claims = |aud: &str, iss: &str, nbf: u64, exp: u64| json!({"aud": aud, "iss": iss, "sub": iss, "jti": "j", "nbf": nbf, "iat": nbf, "exp": exp});
    let t = now();
    let cases = [
        ("valid", sign("key.pem", claims(&token_url, CLIENT_ID, t, t + 600)), 200, ""),
        ("forged", sign("other-key.pem", claims(&token_url, CLIENT_ID, t, t + 600)), 401, "AADSTS700027"),
        (
            "other audience",
            sign("key.pem", claims("https://elsewhere/token", CLIENT_ID, t, t + 600)),
            401,
            "AADSTS50027",
        ),
        ("other issuer", sign("key.pem", claims(&token_url, "someone-else", t, t + 600)), 401, "AADSTS700021"),
        ("expired", sign("key.pem", claims(&token_url, CLIENT_ID, t - 900, t - 300)), 401, "AADSTS700024"),
        ("too long-lived", sign("key.pem", claims(&token_url, CLIENT_ID, t, t + 86_400)), 401, "AADSTS700024"),
    ];
    for (name, assertion, status, code) in cases {
        let response = http()
            .post(&token_url)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", CLIENT_ID),
                ("scope", "https://graph.microsoft.com/.default"),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", &assertion),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{name}");
        assert!(response.text().await.unwrap().contains(code), "{name}");
    }
}

#[test]
fn config_errors_name_the_key_and_never_the_material() {
    let bad_cert = scratch("config", "bad-cert.pem");
    std::fs::write(&bad_cert, "-----BEGIN CERTIFICATE-----\ncanary*not*base64\n-----END CERTIFICATE-----\n").unwrap();
    let bad_key = scratch("config", "bad-key.pem");
    std::fs::write(&bad_key, "-----BEGIN PRIVATE KEY-----\nY2FuYXJ5LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n")
        .unwrap();
    let secret = scratch("config", "secret");
    std::fs::write(&secret, "canary-secret").unwrap();
    let file = |p: &Path| format!("{{ file = \"{}\" }}", p.display());
    let cert = file(&fixture("cert.pem"));
    let key = file(&fixture("key.pem"));
    let missing = Path::new("/surely/not/here/cert.pem");

    let cases: Vec<(&str, String, &str)> = vec![
        ("none", String::new(), "entra: no credential: give one of client_secret, certificate"),
        (
            "secret and certificate",
            format!("client_secret = {}\ncertificate = {cert}\nprivate_key = {key}", file(&secret)),
            "entra: give exactly one credential, not client_secret and certificate",
        ),
        (
            "certificate and federated",
            format!("certificate = {cert}\nprivate_key = {key}\nfederated_token_file = \"/var/run/t\""),
            "entra: give exactly one credential, not certificate and federated_token_file",
        ),
        (
            "bad certificate PEM",
            format!("certificate = {}\nprivate_key = {key}", file(&bad_cert)),
            "entra.certificate: the CERTIFICATE block is not valid base64",
        ),
        (
            "a key where the certificate should be",
            format!("certificate = {key}\nprivate_key = {key}"),
            "entra.certificate: no -----BEGIN CERTIFICATE----- block",
        ),
        (
            "a key that does not parse",
            format!("certificate = {cert}\nprivate_key = {}", file(&bad_key)),
            "entra.private_key: the PRIVATE KEY block does not hold a DER PKCS#8 key",
        ),
        (
            "the key of another certificate",
            format!("certificate = {cert}\nprivate_key = {}", file(&fixture("other-key.pem"))),
            "entra.private_key: the private key does not belong to the certificate",
        ),
        (
            "missing certificate file",
            format!("certificate = {}\nprivate_key = {key}", file(missing)),
            "entra.certificate: cannot read secret file /surely/not/here/cert.pem",
        ),
        (
            "missing federated token file",
            "federated_token_file = \"/surely/not/here/token\"".to_owned(),
            "entra.federated_token_file: cannot read the federated token file /surely/not/here/token",
        ),
        (
            "certificate without key",
            format!("certificate = {cert}"),
            "entra.private_key: is required with `certificate`",
        ),
        (
            "key without certificate",
            format!("client_secret = {}\nprivate_key = {key}", file(&secret)),
            "entra.private_key: belongs to `certificate`, which is not given",
        ),
        (
            "algorithm without certificate",
            format!("client_secret = {}\nassertion_alg = \"RS256\"", file(&secret)),
            "entra.assertion_alg: belongs to `certificate`, which is not given",
        ),
    ];
    let key_line = read_fixture("key.pem").lines().nth(1).unwrap().to_owned();
    for (name, settings, expected) in cases {
        let err = config(&settings).build("entra").unwrap_err().to_string();
        assert!(err.starts_with(expected), "{name}: {err}");
        for material in ["canary", "Y2FuYXJ5", key_line.as_str()] {
            assert!(!err.contains(material), "{name}: {err}");
        }
    }

    let err = toml::from_str::<EntraConfig>(&format!(
        "tenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT_ID}\"\ncertificate = {cert}\nprivate_key = {key}\nassertion_alg = \"ES256\""
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("unknown variant `ES256`, expected `PS256` or `RS256`"), "{err}");
}
