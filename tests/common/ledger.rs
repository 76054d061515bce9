//! Seeds the grant ledger through the store's own API, as workers and executors write it: a verified event, a
//! decision whose plan asks for the grant, and the grant's job finished with the outcome wanted.

use std::time::{Duration, SystemTime};

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use grantbridge::config::{EnvOverrides, Settings};
use grantbridge::domain::GrantTarget;
use grantbridge::inbound::schemes::RawRequest;
use grantbridge::store::{JobResult, NewGrant, Store, StoredDecision, batch_key};

use super::TempDir;

/// How a seeded grant ends up.
#[derive(Debug, Clone, Copy)]
pub enum Seeded {
    /// Its job succeeded; `expires_at_ms` as the executor records it.
    Active { expires_at_ms: Option<i64> },
    /// Granted, then revoked.
    Revoked,
    /// Its job gave up.
    Failed,
    /// Its job is still queued. Seed these last: the next seed would claim their job.
    Pending,
}

pub struct Ledger {
    store: Store,
    settings: Settings,
    seeded: usize,
    _dir: TempDir,
}

impl Ledger {
    pub fn new(store: Store) -> Ledger {
        let dir = TempDir::new();
        let secret = dir.write("token", "ledger-seed-token");
        let text = format!(
            "[sources.seed]\nkind = \"jira\"\n[[sources.seed.verify]]\nscheme = \"shared_secret_header\"\nheader = \"X-Token\"\nsecrets = [{{ file = \"{}\" }}]\n",
            secret.display()
        );
        let settings = Settings::parse(&text, "ledger.toml", &EnvOverrides::none()).unwrap();
        Ledger { store, settings, seeded: 0, _dir: dir }
    }

    /// Records a grant of `target` to `principal` under `rule`, for a ticket of its own, ending as `seeded`;
    /// returns the grant id.
    pub async fn grant(&mut self, rule: &str, target: &GrantTarget, principal: &str, seeded: Seeded) -> String {
        self.seeded += 1;
        let n = self.seeded;
        let ticket = format!("ACC-{n}");
        let mut headers = HeaderMap::new();
        headers.insert(HeaderName::from_static("x-token"), HeaderValue::from_static("ledger-seed-token"));
        let delivery = format!("seed-{n}-{}", uuid::Uuid::now_v7().simple());
        headers.insert(
            HeaderName::from_static("x-atlassian-webhook-identifier"),
            HeaderValue::from_str(&delivery).unwrap(),
        );
        let body = format!(r#"{{"seed": {n}}}"#);
        let request =
            RawRequest { method: "POST", path: "/webhooks/seed", query: "", headers: &headers, body: body.as_bytes() };
        let source = self.settings.source("seed").unwrap();
        let event = source.verify(request, SystemTime::now()).unwrap().parse(SystemTime::now()).unwrap();
        self.store.insert_events(&[&event]).await.unwrap();

        let lease = Duration::from_secs(30);
        let claimed = self.store.claim_event("seed", 1_000, lease).await.unwrap().expect("the seeded event");
        assert_eq!(claimed.id, event.id(), "the ledger seeder owns the store's events");
        let id = uuid::Uuid::now_v7().to_string();
        let grant = NewGrant {
            id: id.clone(),
            source: "seed".into(),
            ticket_key: ticket.clone(),
            rule: rule.into(),
            kind: target.kind().into(),
            target: serde_json::to_string(target).unwrap(),
            label: "seeded".into(),
            principal_id: principal.into(),
            requested_duration_secs: None,
            notify_before_secs: None,
            batch_key: batch_key(target.kind(), target),
        };
        let decision = StoredDecision {
            outcome: "plan".into(),
            code: None,
            ticket_key: Some(ticket),
            detail: "{}".into(),
            decided_at_ms: 1,
        };
        assert!(self.store.record_decision(claimed.id, "seed", "decided", &decision, &[grant]).await.unwrap());

        let result = match seeded {
            Seeded::Pending => return id,
            Seeded::Active { expires_at_ms } => {
                JobResult::Done { grant_state: "active", upstream_id: None, expires_at_ms }
            }
            Seeded::Revoked => JobResult::Done { grant_state: "revoked", upstream_id: None, expires_at_ms: None },
            Seeded::Failed => JobResult::Dead { error: "seeded failure".into() },
        };
        let job = self.store.claim_job("seed", 2_000, lease).await.unwrap().expect("the seeded grant's job");
        assert_eq!(job.grant.id, id, "seed pending grants last: their jobs stay queued");
        assert!(self.store.finish_job(&job, "seed", &result, 3_000).await.unwrap());
        id
    }
}
