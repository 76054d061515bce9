//! Shared by the test binaries: databases on both backends, the app spawned on a random port, test signers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use grantbridge::config::{EnvOverrides, Settings};
use grantbridge::store::Store;

pub mod entra;
pub mod ledger;
pub mod sign;

pub const POSTGRES_URL_VAR: &str = "GRANTBRIDGE_TEST_POSTGRES_URL";

/// Generates `NAME_sqlite` and `NAME_postgres` tests from one async body taking a `Backend`.
#[macro_export]
macro_rules! both_backends {
    ($(#[$attr:meta])* async fn $name:ident($backend:ident: Backend) $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn run($backend: $crate::common::Backend) $body

            #[tokio::test]
            async fn sqlite() {
                run($crate::common::Backend::Sqlite).await
            }

            #[tokio::test]
            #[cfg_attr(not(postgres_tests), ignore = "PostgreSQL test: set GRANTBRIDGE_TEST_POSTGRES_URL to run it")]
            async fn postgres() {
                run($crate::common::Backend::Postgres).await
            }
        }
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A private scratch directory per test, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("grantbridge-test-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh, empty database: a SQLite file in a temp dir, or a new PostgreSQL database.
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    _dir: Option<TempDir>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = TempDir::new();
                let url = format!("sqlite://{}", dir.path().join("grantbridge.db").display());
                TestDb { url, backend, _dir: Some(dir) }
            }
            Backend::Postgres => {
                let base = std::env::var(POSTGRES_URL_VAR)
                    .unwrap_or_else(|_| panic!("{POSTGRES_URL_VAR} must be set for PostgreSQL tests"));
                let name = format!("gb_test_{}", uuid::Uuid::now_v7().simple());
                let admin = sqlx::PgPool::connect(&base).await.expect("connect to the PostgreSQL test server");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&admin)
                    .await
                    .expect("create a test database");
                admin.close().await;
                let mut url = reqwest::Url::parse(&base).expect("a PostgreSQL URL");
                url.set_path(&name);
                TestDb { url: url.to_string(), backend, _dir: None }
            }
        }
    }

    pub fn db_name(&self) -> String {
        reqwest::Url::parse(&self.url).map(|u| u.path().trim_start_matches('/').to_string()).unwrap_or_default()
    }

    pub async fn store(&self) -> Store {
        let settings = grantbridge::config::DatabaseSettings::new(self.url.clone());
        let store = Store::connect(&settings).await.expect("connect to the test database");
        store.migrate().await.expect("migrate the test database");
        store
    }
}

pub fn settings_from(text: &str, db: &TestDb) -> Settings {
    let env = EnvOverrides {
        listen: Some("127.0.0.1:0".into()),
        database_url: Some(db.url.clone()),
        log_format: None,
        log_level: None,
    };
    Settings::parse(text, "test.toml", &env).unwrap_or_else(|e| panic!("test config is invalid: {e}"))
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// Makes the store refuse (with an error, as a constraint would) every insert into `table` whose new row matches
/// `condition` (SQL over `NEW`), on either backend: what a test uses to make one write of a batch fail.
pub async fn refuse_inserts(store: &Store, table: &str, condition: &str) {
    match store {
        Store::Sqlite(sqlite) => {
            let sql = format!(
                "CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} WHEN {condition}
                 BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;"
            );
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&sqlite.pool).await.unwrap();
        }
        Store::Postgres(pool) => {
            let sql = format!(
                "CREATE FUNCTION refuse_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN IF {condition} THEN RAISE EXCEPTION 'refused by the test'; END IF; RETURN NEW; END $$;
                 CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION refuse_{table}();"
            );
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(pool).await.unwrap();
        }
    }
}
