//! Who is calling the admin API, and what they may do: a Microsoft Entra ID access token checked against the
//! tenant's published signing keys, or a static bearer token known by its SHA-256. Tokens are never logged.
//!
//! Handlers declare what they need with one extractor argument: `Authorized<Read>` or `Authorized<Operate>`.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use actix_web::dev::Payload;
use actix_web::http::header::{AUTHORIZATION, HeaderValue};
use actix_web::{FromRequest, HttpRequest, web};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode_header};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::config::{AdminSettings, EntraAdminSettings, Role, StaticToken};
use crate::http::{ApiError, AppState};
use crate::upstream::{RetryPolicy, UpstreamError, read_json, send_with_retry};

/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 60;

/// Someone calling the admin API, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Operator {
    /// Entra: the object id (`oid`) of the user or service principal, else `sub`, else the client app id.
    /// Static tokens: the token's name.
    pub id: String,
    /// For people reading logs: the user name, the client app, or the token's name.
    pub name: String,
    pub role: Role,
    pub via: Via,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    Entra,
    StaticToken,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Entra => "entra",
            Via::StaticToken => "static_token",
        }
    }
}

impl Operator {
    /// Refuses (403) an operator whose role does not include `needed`.
    pub fn require(&self, needed: Role) -> Result<(), ApiError> {
        if self.role.allows(needed) {
            Ok(())
        } else {
            tracing::warn!(operator = %self.id, role = self.role.as_str(), needed = needed.as_str(), "admin request refused: role");
            Err(ApiError::InsufficientRole { needed })
        }
    }
}

/// Why a request was not authenticated. The reason is logged, never told to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization: Bearer ...` at all.
    Missing,
    /// A token was presented and refused.
    Invalid(&'static str),
    /// A valid Entra token carrying none of the configured app roles.
    NoRole { id: String },
    /// The signing keys could not be fetched, and none are known: the token cannot be checked either way.
    KeysUnavailable,
}

impl From<AuthFailure> for ApiError {
    fn from(failure: AuthFailure) -> Self {
        match failure {
            AuthFailure::Missing => ApiError::AdminUnauthenticated { token_presented: false },
            AuthFailure::Invalid(_) => ApiError::AdminUnauthenticated { token_presented: true },
            AuthFailure::NoRole { .. } => ApiError::InsufficientRole { needed: Role::Read },
            AuthFailure::KeysUnavailable => ApiError::AuthUnavailable,
        }
    }
}

/// Checks admin credentials. Built once at start from `[admin]`.
pub struct AdminAuth {
    tokens: Vec<StaticToken>,
    entra: Option<EntraVerifier>,
}

impl AdminAuth {
    /// `client` fetches the tenant's signing keys.
    pub fn new(settings: AdminSettings, client: reqwest::Client) -> AdminAuth {
        AdminAuth { tokens: settings.tokens, entra: settings.entra.map(|e| EntraVerifier::new(e, client)) }
    }

    /// The operator behind an `Authorization` header value, whatever their role.
    pub async fn authenticate(&self, authorization: Option<&HeaderValue>) -> Result<Operator, AuthFailure> {
        let token = bearer_token(authorization).ok_or(AuthFailure::Missing)?;
        if let Some(operator) = self.static_token(token) {
            return Ok(operator);
        }
        match &self.entra {
            Some(entra) if decode_header(token).is_ok() => entra.verify(token).await,
            _ => Err(AuthFailure::Invalid("unknown_token")),
        }
    }

    /// Compares the token's SHA-256 with every configured hash in constant time, without stopping at a match.
    fn static_token(&self, token: &str) -> Option<Operator> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for candidate in &self.tokens {
            if bool::from(candidate.sha256.ct_eq(&digest)) {
                found = Some(candidate);
            }
        }
        found.map(|t| Operator { id: t.name.clone(), name: t.name.clone(), role: t.role, via: Via::StaticToken })
    }
}

/// `Bearer <token>`; the scheme word is case-insensitive. Anything else counts as no credentials.
fn bearer_token(value: Option<&HeaderValue>) -> Option<&str> {
    let value = value?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The claims of an Entra access token that grantbridge reads. `iss` as a plain string: an array is refused.
#[derive(Debug, Deserialize)]
struct EntraClaims {
    iss: String,
    tid: Option<String>,
    oid: Option<String>,
    sub: Option<String>,
    /// v2.0 tokens: the client application's id.
    azp: Option<String>,
    /// v1.0 tokens: the client application's id.
    appid: Option<String>,
    preferred_username: Option<String>,
    upn: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
}

struct EntraVerifier {
    settings: EntraAdminSettings,
    validation: Validation,
    keys: JwksCache,
}

impl EntraVerifier {
    fn new(settings: EntraAdminSettings, client: reqwest::Client) -> EntraVerifier {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.set_issuer(&settings.issuers);
        validation.set_audience(&settings.audiences);
        let keys = JwksCache::new(settings.jwks_url.clone(), client, settings.jwks_max_age, settings.jwks_min_refresh);
        EntraVerifier { settings, validation, keys }
    }

    async fn verify(&self, token: &str) -> Result<Operator, AuthFailure> {
        let header = decode_header(token).map_err(|_| AuthFailure::Invalid("malformed"))?;
        // RS256 only: Entra signs with RSA keys, and a token must not choose a weaker or symmetric algorithm.
        if header.alg != Algorithm::RS256 {
            return Err(AuthFailure::Invalid("algorithm_not_allowed"));
        }
        let kid = header.kid.ok_or(AuthFailure::Invalid("no_key_id"))?;
        let key = self.keys.key(&kid).await?.ok_or(AuthFailure::Invalid("unknown_key"))?;
        let claims = jsonwebtoken::decode::<EntraClaims>(token, &key, &self.validation)
            .map_err(|e| AuthFailure::Invalid(jwt_reason(e.kind())))?
            .claims;
        if !self.settings.issuers.contains(&claims.iss) {
            return Err(AuthFailure::Invalid("wrong_issuer"));
        }
        if claims.tid.as_deref().is_some_and(|tid| !tid.eq_ignore_ascii_case(&self.settings.tenant_id)) {
            return Err(AuthFailure::Invalid("wrong_tenant"));
        }
        let client = claims.azp.or(claims.appid);
        let id = claims.oid.or(claims.sub).or_else(|| client.clone()).ok_or(AuthFailure::Invalid("no_subject"))?;
        let name = claims
            .preferred_username
            .or(claims.upn)
            .or_else(|| client.map(|app| format!("app {app}")))
            .unwrap_or_else(|| id.clone());
        let has = |wanted: &[String]| claims.roles.iter().any(|r| wanted.contains(r));
        let role = if has(&self.settings.operate_roles) {
            Role::Operate
        } else if has(&self.settings.read_roles) {
            Role::Read
        } else {
            return Err(AuthFailure::NoRole { id });
        };
        Ok(Operator { id, name, role, via: Via::Entra })
    }
}

fn jwt_reason(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "expired",
        ErrorKind::ImmatureSignature => "not_yet_valid",
        ErrorKind::InvalidIssuer => "wrong_issuer",
        ErrorKind::InvalidAudience => "wrong_audience",
        ErrorKind::InvalidSignature => "bad_signature",
        ErrorKind::MissingRequiredClaim(_) => "missing_claim",
        _ => "malformed",
    }
}

/// The tenant's signing keys by `kid`, fetched when first needed, kept for `max_age`, and fetched again early
/// when a token names a key we do not know (Entra rotates keys), but at most once per `min_refresh`: a flood
/// of tokens with invented key ids costs one fetch. One fetch runs at a time; concurrent callers wait for it.
struct JwksCache {
    url: String,
    client: reqwest::Client,
    max_age: Duration,
    min_refresh: Duration,
    keys: RwLock<Arc<KeySet>>,
    /// When the last fetch started; held while a fetch runs.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
}

#[derive(Default)]
struct KeySet {
    keys: HashMap<String, Arc<DecodingKey>>,
    /// When these keys were fetched; `None` until a fetch succeeded.
    fetched_at: Option<Instant>,
}

impl KeySet {
    fn is_fresh(&self, now: Instant, max_age: Duration) -> bool {
        self.fetched_at.is_some_and(|at| now.saturating_duration_since(at) < max_age)
    }

    /// The key, `Ok(None)` when unknown, or an error when no key set was ever fetched.
    fn lookup(&self, kid: &str) -> Result<Option<Arc<DecodingKey>>, AuthFailure> {
        if self.fetched_at.is_none() {
            return Err(AuthFailure::KeysUnavailable);
        }
        Ok(self.keys.get(kid).cloned())
    }
}

/// Fetching the keys is on the request path: a short retry, so that a caller never waits long.
fn jwks_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 2,
        base: Duration::from_millis(200),
        cap: Duration::from_secs(1),
        max_server_delay: Duration::from_secs(2),
    }
}

impl JwksCache {
    fn new(url: String, client: reqwest::Client, max_age: Duration, min_refresh: Duration) -> JwksCache {
        JwksCache {
            url,
            client,
            max_age,
            min_refresh,
            keys: RwLock::new(Arc::new(KeySet::default())),
            last_fetch: tokio::sync::Mutex::new(None),
        }
    }

    fn current(&self) -> Arc<KeySet> {
        match self.keys.read() {
            Ok(keys) => keys.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn replace(&self, set: KeySet) {
        let set = Arc::new(set);
        match self.keys.write() {
            Ok(mut keys) => *keys = set,
            Err(poisoned) => *poisoned.into_inner() = set,
        }
    }

    async fn key(&self, kid: &str) -> Result<Option<Arc<DecodingKey>>, AuthFailure> {
        let current = self.current();
        if current.is_fresh(Instant::now(), self.max_age)
            && let Some(key) = current.keys.get(kid)
        {
            return Ok(Some(key.clone()));
        }
        let mut last_fetch = self.last_fetch.lock().await;
        // Whoever held the lock before us may just have fetched: then its keys are the newest there are.
        let now = Instant::now();
        if last_fetch.is_some_and(|at| now.saturating_duration_since(at) < self.min_refresh) {
            return self.current().lookup(kid);
        }
        *last_fetch = Some(now);
        match self.fetch().await {
            Ok(keys) => {
                tracing::info!(url = %self.url, keys = keys.len(), "admin token signing keys fetched");
                let set = KeySet { keys, fetched_at: Some(now) };
                let found = set.keys.get(kid).cloned();
                self.replace(set);
                Ok(found)
            }
            Err(e) => {
                // Keys fetched before stay in use: Entra publishes new keys well before it signs with them.
                tracing::warn!(url = %self.url, error = %e, "cannot fetch the admin token signing keys");
                self.current().lookup(kid)
            }
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, Arc<DecodingKey>>, UpstreamError> {
        let response = send_with_retry("entra-jwks", &jwks_retry(), || self.client.get(&self.url)).await?;
        let document: JwksDocument = read_json(response, "the signing keys endpoint").await?;
        let keys = usable_keys(document);
        if keys.is_empty() {
            return Err(UpstreamError::InvalidResponse("the key set holds no RSA signing key with a kid".into()));
        }
        Ok(keys)
    }
}

#[derive(Deserialize)]
struct JwksDocument {
    keys: Vec<serde_json::Value>,
}

/// RSA signing keys with a `kid`; keys of other kinds or uses, or that do not parse, are skipped.
fn usable_keys(document: JwksDocument) -> HashMap<String, Arc<DecodingKey>> {
    let mut usable = HashMap::new();
    for value in document.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else { continue };
        let signing = matches!(jwk.common.public_key_use, None | Some(PublicKeyUse::Signature));
        let (Some(kid), AlgorithmParameters::RSA(_), true) = (&jwk.common.key_id, &jwk.algorithm, signing) else {
            continue;
        };
        if let Ok(key) = DecodingKey::from_jwk(&jwk) {
            usable.insert(kid.clone(), Arc::new(key));
        }
    }
    usable
}

/// What a route needs: `Authorized<Read>` or `Authorized<Operate>` as a handler argument.
pub trait Requirement {
    const ROLE: Role;
}

pub struct Read;
pub struct Operate;

impl Requirement for Read {
    const ROLE: Role = Role::Read;
}

impl Requirement for Operate {
    const ROLE: Role = Role::Operate;
}

/// An operator whose role includes `R`'s. Extracting it answers 401 or 403 before the handler runs.
pub struct Authorized<R: Requirement> {
    pub operator: Operator,
    _needs: PhantomData<R>,
}

impl<R: Requirement> FromRequest for Authorized<R> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let auth = request.app_data::<web::Data<AppState>>().map(|state| state.admin.clone());
        let authorization = request.headers().get(AUTHORIZATION).cloned();
        let method = request.method().clone();
        let path = request.path().to_owned();
        let peer = request.peer_addr();
        Box::pin(async move {
            let Some(auth) = auth else {
                tracing::error!("the admin API has no authenticator: refusing");
                return Err(ApiError::AdminUnauthenticated { token_presented: authorization.is_some() });
            };
            let operator = auth.authenticate(authorization.as_ref()).await.map_err(|failure| {
                match &failure {
                    AuthFailure::Missing => tracing::info!(%method, path, ?peer, "admin request without a token"),
                    AuthFailure::Invalid(reason) => {
                        tracing::warn!(%method, path, ?peer, reason, "admin request refused: token")
                    }
                    AuthFailure::NoRole { id } => {
                        tracing::warn!(%method, path, operator = %id, "admin request refused: no grantbridge app role")
                    }
                    AuthFailure::KeysUnavailable => {
                        tracing::warn!(%method, path, "admin request refused: signing keys unavailable")
                    }
                }
                ApiError::from(failure)
            })?;
            operator.require(R::ROLE)?;
            tracing::info!(
                %method,
                path,
                operator = %operator.id,
                name = %operator.name,
                via = operator.via.as_str(),
                role = operator.role.as_str(),
                "admin request"
            );
            Ok(Authorized { operator, _needs: PhantomData })
        })
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::{Value, json};

    use super::*;
    use crate::http::admin::config::AdminConfig;

    const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    const RSA_PRIVATE: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys/rsa.pem"));

    /// `[admin.entra]` whose keys live at a port where nothing listens.
    fn settings(extra: &str) -> AdminSettings {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let text = format!(
            "[entra]\ntenant_id = \"{TENANT}\"\naudiences = [\"api://grantbridge\"]\njwks_url = \"http://127.0.0.1:{closed}/keys\"\n{extra}"
        );
        toml::from_str::<AdminConfig>(&text).unwrap().build("admin").unwrap()
    }

    fn hex_sha256(token: &str) -> String {
        hex::encode(Sha256::digest(token.as_bytes()))
    }

    /// An authenticator whose key cache already holds the test key under `kid-a`, so no network is needed.
    fn with_key(extra: &str) -> AdminAuth {
        let auth = AdminAuth::new(settings(extra), reqwest::Client::new());
        let jwk = Jwk::from_encoding_key(&EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(), Algorithm::RS256).unwrap();
        let keys = HashMap::from([("kid-a".to_string(), Arc::new(DecodingKey::from_jwk(&jwk).unwrap()))]);
        auth.entra.as_ref().unwrap().keys.replace(KeySet { keys, fetched_at: Some(Instant::now()) });
        auth
    }

    fn now() -> i64 {
        i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap()
    }

    fn claims(roles: &[&str]) -> Value {
        json!({
            "iss": format!("https://login.microsoftonline.com/{TENANT}/v2.0"),
            "aud": "api://grantbridge",
            "tid": TENANT,
            "oid": "11111111-2222-3333-4444-555555555555",
            "preferred_username": "avery@example.com",
            "iat": now(), "nbf": now(), "exp": now() + 600,
            "roles": roles,
        })
    }

    fn token(claims: &Value) -> String {
        let header = Header { kid: Some("kid-a".into()), ..Header::new(Algorithm::RS256) };
        encode(&header, claims, &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap()).unwrap()
    }

    async fn check(auth: &AdminAuth, token: &str) -> Result<Operator, AuthFailure> {
        auth.authenticate(Some(&HeaderValue::from_str(&format!("Bearer {token}")).unwrap())).await
    }

    #[tokio::test]
    async fn app_roles_decide_read_or_operate() {
        let auth = with_key("");
        let read = check(&auth, &token(&claims(&["Grantbridge.Read"]))).await.unwrap();
        assert_eq!(
            read,
            Operator {
                id: "11111111-2222-3333-4444-555555555555".into(),
                name: "avery@example.com".into(),
                role: Role::Read,
                via: Via::Entra
            }
        );
        assert!(read.require(Role::Read).is_ok());
        assert!(matches!(read.require(Role::Operate), Err(ApiError::InsufficientRole { needed: Role::Operate })));
        let both = check(&auth, &token(&claims(&["Grantbridge.Read", "Grantbridge.Operate"]))).await.unwrap();
        assert_eq!(both.role, Role::Operate);
        assert!(both.require(Role::Operate).is_ok() && both.require(Role::Read).is_ok(), "operate includes read");
        assert!(matches!(check(&auth, &token(&claims(&["Other.Role"]))).await, Err(AuthFailure::NoRole { .. })));
        assert!(matches!(check(&auth, &token(&claims(&[]))).await, Err(AuthFailure::NoRole { .. })));

        let custom = with_key("read_roles = [\"Auditor\"]\noperate_roles = [\"Admin\"]");
        assert_eq!(check(&custom, &token(&claims(&["Auditor"]))).await.unwrap().role, Role::Read);
        assert!(matches!(
            check(&custom, &token(&claims(&["Grantbridge.Read"]))).await,
            Err(AuthFailure::NoRole { .. })
        ));
    }

    #[tokio::test]
    async fn app_only_tokens_are_named_by_their_client() {
        let auth = with_key("");
        let mut app = claims(&["Grantbridge.Operate"]);
        let object = app.as_object_mut().unwrap();
        object.remove("preferred_username");
        object.insert("azp".into(), json!("99999999-8888-7777-6666-555555555555"));
        let operator = check(&auth, &token(&app)).await.unwrap();
        assert_eq!(operator.name, "app 99999999-8888-7777-6666-555555555555");
        // v1.0: `appid`, the sts.windows.net issuer.
        let mut v1 = claims(&["Grantbridge.Read"]);
        let object = v1.as_object_mut().unwrap();
        object.insert("iss".into(), json!(format!("https://sts.windows.net/{TENANT}/")));
        object.remove("oid");
        object.remove("preferred_username");
        object.insert("appid".into(), json!("99999999-8888-7777-6666-555555555555"));
        let operator = check(&auth, &token(&v1)).await.unwrap();
        assert_eq!(operator.id, "99999999-8888-7777-6666-555555555555");
    }

    #[tokio::test]
    async fn claims_that_do_not_fit_are_refused() {
        let auth = with_key("");
        let with = |name: &str, value: Value| {
            let mut c = claims(&["Grantbridge.Read"]);
            c[name] = value;
            token(&c)
        };
        let cases = [
            (with("exp", json!(now() - 120)), "expired"),
            (with("nbf", json!(now() + 120)), "not_yet_valid"),
            (with("aud", json!("api://someone-else")), "wrong_audience"),
            (with("iss", json!("https://login.microsoftonline.com/common/v2.0")), "wrong_issuer"),
            (with("iss", json!([format!("https://login.microsoftonline.com/{TENANT}/v2.0")])), "malformed"),
            (with("tid", json!("00000000-0000-0000-0000-000000000000")), "wrong_tenant"),
            (with("roles", json!("Grantbridge.Read")), "malformed"),
        ];
        for (token, reason) in cases {
            assert_eq!(check(&auth, &token).await, Err(AuthFailure::Invalid(reason)), "{reason}");
        }
        assert!(check(&auth, &with("exp", json!(now() - 30))).await.is_ok(), "within the leeway");
        let mut no_exp = claims(&["Grantbridge.Read"]);
        no_exp.as_object_mut().unwrap().remove("exp");
        assert_eq!(check(&auth, &token(&no_exp)).await, Err(AuthFailure::Invalid("missing_claim")));

        // The claims of one token under the signature of another: the read role raised to operate.
        let signed = token(&claims(&["Grantbridge.Read"]));
        let wanted = token(&claims(&["Grantbridge.Operate"]));
        let (signed_part, signature) = signed.rsplit_once('.').unwrap();
        let (wanted_part, _) = wanted.rsplit_once('.').unwrap();
        assert_ne!(signed_part, wanted_part);
        let tampered = format!("{wanted_part}.{signature}");
        assert_eq!(check(&auth, &tampered).await, Err(AuthFailure::Invalid("bad_signature")));
        let hs = encode(
            &Header { kid: Some("kid-a".into()), ..Header::new(Algorithm::HS256) },
            &claims(&["Grantbridge.Read"]),
            &EncodingKey::from_secret(b"public-key-as-secret"),
        )
        .unwrap();
        assert_eq!(check(&auth, &hs).await, Err(AuthFailure::Invalid("algorithm_not_allowed")));
        let no_kid =
            encode(&Header::new(Algorithm::RS256), &claims(&[]), &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap())
                .unwrap();
        assert_eq!(check(&auth, &no_kid).await, Err(AuthFailure::Invalid("no_key_id")));
    }

    #[tokio::test]
    async fn static_tokens_by_hash_and_missing_credentials() {
        let auth = AdminAuth::new(
            toml::from_str::<AdminConfig>(&format!(
                "[[tokens]]\nname = \"ci\"\nsha256 = \"{}\"\nrole = \"read\"\n[[tokens]]\nname = \"oncall\"\nsha256 = \"{}\"\nrole = \"operate\"\n",
                hex_sha256("read-token"),
                hex_sha256("operate-token")
            ))
            .unwrap()
            .build("admin")
            .unwrap(),
            reqwest::Client::new(),
        );
        let ci = check(&auth, "read-token").await.unwrap();
        assert_eq!((ci.id.as_str(), ci.role, ci.via), ("ci", Role::Read, Via::StaticToken));
        assert!(ci.require(Role::Operate).is_err(), "a read token cannot operate");
        assert_eq!(check(&auth, "operate-token").await.unwrap().role, Role::Operate);
        assert_eq!(check(&auth, "read-token-but-longer").await, Err(AuthFailure::Invalid("unknown_token")));
        let lower = HeaderValue::from_static("bearer read-token");
        assert!(auth.authenticate(Some(&lower)).await.is_ok(), "the scheme word is case-insensitive");
        for value in ["Basic cmVhZC10b2tlbg==", "Bearer", "Bearer   ", "read-token"] {
            let value = HeaderValue::from_str(value).unwrap();
            assert_eq!(auth.authenticate(Some(&value)).await, Err(AuthFailure::Missing), "{value:?}");
        }
        assert_eq!(auth.authenticate(None).await, Err(AuthFailure::Missing));
        // Without [admin.entra], a JWT is just an unknown token.
        assert_eq!(
            check(&auth, &token(&claims(&["Grantbridge.Operate"]))).await,
            Err(AuthFailure::Invalid("unknown_token"))
        );
    }

    #[tokio::test]
    async fn nobody_gets_in_without_an_admin_section() {
        let auth = AdminAuth::new(AdminSettings::default(), reqwest::Client::new());
        assert_eq!(check(&auth, "anything").await, Err(AuthFailure::Invalid("unknown_token")));
        assert_eq!(auth.authenticate(None).await, Err(AuthFailure::Missing));
    }

    #[tokio::test]
    async fn keys_fetched_before_stay_in_use_when_the_endpoint_fails() {
        use wiremock::matchers::method;
        use wiremock::{Mock, MockServer, ResponseTemplate};

        let server = MockServer::start().await;
        let jwk = Jwk::from_encoding_key(&EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(), Algorithm::RS256).unwrap();
        let mut published = serde_json::to_value(jwk).unwrap();
        published["kid"] = json!("kid-a");
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"keys": [published]})))
            .up_to_n_times(1)
            .mount(&server)
            .await;
        Mock::given(method("GET")).respond_with(ResponseTemplate::new(500)).mount(&server).await;
        // Never fresh, so that every lookup wants to fetch again, at most every 50 ms.
        let cache = JwksCache::new(server.uri(), reqwest::Client::new(), Duration::ZERO, Duration::from_millis(50));
        assert!(cache.key("kid-a").await.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(cache.key("kid-a").await.unwrap().is_some(), "the endpoint failed: the known key is still used");
        assert!(cache.key("kid-b").await.unwrap().is_none());
        let calls = server.received_requests().await.unwrap().len();
        assert!(calls >= 2, "the stale set was fetched again ({calls} calls)");
    }

    #[tokio::test]
    async fn unreachable_keys_with_nothing_cached_mean_unavailable() {
        let auth = AdminAuth::new(settings(""), reqwest::Client::new());
        let result = check(&auth, &token(&claims(&["Grantbridge.Read"]))).await;
        assert_eq!(result, Err(AuthFailure::KeysUnavailable));
        assert!(matches!(ApiError::from(result.unwrap_err()), ApiError::AuthUnavailable));
    }
}
