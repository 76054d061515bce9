//! The command line: `serve`, `check-config`, `migrate`, `plan`, `send`, `reconcile`, `audit verify`, `audit export`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use crate::audit::Anchor;
use crate::config::{DEFAULT_DATABASE_URL, DatabaseSettings, EnvOverrides, LogFormat, LogSettings, Settings};
use crate::decide::{self, Decider};
use crate::inbound::schemes::Outgoing;
use crate::inbound::{DeliveryIdRule, Source, SourceKind, unix_millis};
use crate::reconcile::{Reconciler, STARTED_BY_CLI};
use crate::startup::Application;
use crate::store::Store;
use crate::telemetry;

#[derive(Parser)]
#[command(
    name = "grantbridge",
    version,
    about = "Approved ServiceNow and Jira access requests, granted in Microsoft Entra."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: webhook intake, decisions, grant execution, health and metrics.
    Serve {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a config file (secrets included) and exit 0, or print the first problem and exit 1.
    CheckConfig {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Apply database migrations and exit (the database from --config, else GRANTBRIDGE_DATABASE_URL).
    Migrate {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Show what a ticket payload would cause. Offline by default (the approval is not confirmed and nobody is
    /// looked up in Entra, so it is a dry run); --confirm decides as the service would.
    Plan {
        #[command(flatten)]
        event: EventArgs,
        /// Print the decision as JSON.
        #[arg(long)]
        json: bool,
        /// Decide as a worker would: confirm the approval with the ticketing system and look people up in Entra.
        #[arg(long)]
        confirm: bool,
    },
    /// Compare the grant ledger with Entra once for every group the policy manages, repair drift as the policy
    /// says, record the run and print it. Exit 0 without drift, 2 when drift was found, 1 on an error.
    Reconcile {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Report drift, change nothing in Entra.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Sign a JSON payload exactly as a configured source would, and POST it: how to test a setup end to end.
    Send {
        #[command(flatten)]
        event: EventArgs,
        /// Defaults to http://LISTEN/webhooks/SOURCE from the config.
        #[arg(long)]
        url: Option<String>,
        /// PEM private key, for sources that verify RS256/ES256 JWTs.
        #[arg(long, value_name = "PEM")]
        signing_key: Option<PathBuf>,
    },
    /// Check or export the audit trail, the hash-chained record of every step (uses only the database).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check every entry's hash and link: exit 0 and print the count and the head (keep it), or exit 1 and
    /// name the first broken entry.
    Verify {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// A head printed by an earlier verify or export, that the chain must still contain. Without it,
        /// entries removed from the end of the chain cannot be noticed.
        #[arg(long, value_name = "SEQ:HASH")]
        expect_head: Option<Anchor>,
    },
    /// Write the entries as JSON lines (every field, both hashes), for a SIEM.
    Export {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Only the entries after this seq: the last seq of the previous export.
        #[arg(long, value_name = "N", default_value_t = 0)]
        after_seq: i64,
        /// Write to this file instead of standard output.
        #[arg(long, value_name = "PATH")]
        output: Option<PathBuf>,
    },
}

/// A ticket payload and the configured source it is read as.
#[derive(clap::Args)]
struct EventArgs {
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    #[arg(long, value_name = "NAME")]
    source: String,
    #[arg(long, value_name = "EVENT.json")]
    file: PathBuf,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve { config } => serve(&config).await.map(|()| ExitCode::SUCCESS),
        Command::CheckConfig { config } => Ok(check_config(&config).await),
        Command::Migrate { config } => migrate(config.as_deref()).await.map(|()| ExitCode::SUCCESS),
        Command::Plan { event, json, confirm } => plan(&event, json, confirm).await,
        Command::Send { event, url, signing_key } => send(&event, url.as_deref(), signing_key.as_deref()).await,
        Command::Reconcile { config, dry_run, json } => reconcile(&config, dry_run, json).await,
        Command::Audit { command: AuditCommand::Verify { config, expect_head } } => {
            audit_verify(&config, expect_head).await
        }
        Command::Audit { command: AuditCommand::Export { config, after_seq, output } } => {
            audit_export(&config, after_seq, output.as_deref()).await.map(|()| ExitCode::SUCCESS)
        }
    }
}

/// Exit status of `reconcile` when drift was found (repaired or not) and nothing failed.
const DRIFT_FOUND: u8 = 2;

async fn reconcile(config: &Path, dry_run: bool, json: bool) -> anyhow::Result<ExitCode> {
    let settings = Settings::load_online(config).await?;
    // Standard output is the report.
    telemetry::init_stderr(&settings.log);
    let Some(entra) = settings.entra.as_ref() else {
        bail!("reconciliation compares the ledger with Entra: {} has no [entra] table", config.display());
    };
    let store = Store::connect(&settings.database)
        .await
        .with_context(|| format!("Failed to open the database {}", settings.database.display_url()))?;
    store.migrate().await.context("Failed to apply database migrations")?;
    let mut providers = crate::providers::Providers::from_entra(entra, entra.arm_url.clone())
        .with_concurrency(settings.workers.graph_concurrency, settings.workers.arm_concurrency);
    if let Some((writes, window)) = settings.workers.graph_write_budget {
        providers = providers.with_graph_write_budget(writes, window);
    }
    let reconciler = Reconciler::new(store.clone(), providers.groups, &settings.policy);
    let dry_run = dry_run || settings.reconcile.dry_run || settings.policy.dry_run();
    let Some(lock) = store.try_lock_reconcile().await.context("Failed to take the reconciliation lock")? else {
        store.close().await;
        bail!("another replica is reconciling now; try again when it has finished");
    };
    let report = reconciler.run(dry_run).await;
    let recorded = reconciler.record(&report, STARTED_BY_CLI).await;
    lock.release().await;
    store.close().await;
    // Printed even when it could not be recorded: the repairs are done either way.
    if json {
        println!("{}", serde_json::to_string_pretty(&report).context("Failed to print the report")?);
    } else {
        print!("{}", report.render());
    }
    recorded.context("Failed to record the reconciliation")?;
    Ok(if report.totals.errors > 0 {
        ExitCode::FAILURE
    } else if report.totals.drift() > 0 {
        ExitCode::from(DRIFT_FOUND)
    } else {
        ExitCode::SUCCESS
    })
}

async fn serve(config: &Path) -> anyhow::Result<()> {
    let settings = Settings::load_online(config).await?;
    telemetry::init(&settings.log);
    let listen = settings.listen;
    let database = settings.database.display_url();
    let sources: Vec<String> = settings.sources.iter().map(|s| s.name().to_string()).collect();
    let app = Application::build(settings).await?;
    tracing::info!(%listen, port = app.port(), %database, ?sources, "grantbridge is listening");
    let handle = app.handle();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested: finishing requests in flight");
        handle.stop(true).await;
    });
    app.run_until_stopped().await?;
    tracing::info!("grantbridge stopped");
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn check_config(config: &Path) -> ExitCode {
    match Settings::load_online(config).await {
        Ok(settings) => {
            println!("{}: OK", config.display());
            println!("  listen:   {}", settings.listen);
            println!("  database: {}", settings.database.display_url());
            println!("  admin:    {}", settings.admin.describe());
            let policy = &settings.policy;
            let dry = if policy.dry_run() { ", dry run" } else { "" };
            println!("  policy:   {} rule(s), {}{dry}", policy.rules().len(), policy.mode().as_str());
            for target in policy.declared_targets() {
                println!("    target {} {}", target.target.kind(), target.label);
            }
            for source in &settings.sources {
                let schemes: Vec<&str> = source.schemes().iter().map(|s| s.name().as_str()).collect();
                println!("  source {} ({}): {}", source.name(), source.kind().as_str(), schemes.join(", "));
                if source.schemes().iter().any(|s| s.name().is_weak()) {
                    println!(
                        "  warning: source {} accepts a static shared secret, which does not sign the body",
                        source.name()
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn migrate(config: Option<&Path>) -> anyhow::Result<()> {
    let (database, log) = match config {
        Some(path) => {
            let s = Settings::load_without_policy(path)?;
            (s.database, s.log)
        }
        None => {
            let env = EnvOverrides::from_process();
            let url = env.database_url.unwrap_or_else(|| DEFAULT_DATABASE_URL.to_string());
            (DatabaseSettings::new(url), LogSettings { format: LogFormat::Auto, level: "info".into() })
        }
    };
    telemetry::init(&log);
    let store = Store::connect(&database)
        .await
        .with_context(|| format!("Failed to open the database {}", database.display_url()))?;
    let applied = store.migrate().await.context("Failed to apply database migrations")?;
    store.close().await;
    if applied.is_empty() {
        println!("{}: schema is up to date", database.display_url());
    } else {
        println!("{}: applied migrations {applied:?}", database.display_url());
    }
    Ok(())
}

/// The database of a config file, for commands that need nothing else. Logging stays off: standard output
/// is the command's own.
async fn open_database(config: &Path) -> anyhow::Result<(Store, String)> {
    let settings = Settings::load_without_policy(config)?;
    let display = settings.database.display_url();
    let store =
        Store::connect(&settings.database).await.with_context(|| format!("Failed to open the database {display}"))?;
    Ok((store, display))
}

const NOT_MIGRATED: &str = "Failed to read the audit trail (has `grantbridge migrate` run on this database?)";

async fn audit_verify(config: &Path, expect_head: Option<Anchor>) -> anyhow::Result<ExitCode> {
    let (store, database) = open_database(config).await?;
    let anchored = expect_head.is_some();
    let result = store.verify_audit(expect_head).await.context(NOT_MIGRATED);
    store.close().await;
    match result? {
        Ok(verified) => {
            println!("{database}: audit trail OK, {} entries checked", verified.checked);
            match verified.head {
                Some(head) => println!("head: {head}"),
                None => println!("head: none (the trail is empty)"),
            }
            if anchored {
                println!("the expected head is in the chain");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(broken) => {
            eprintln!("{database}: audit trail BROKEN at {broken}");
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn audit_export(config: &Path, after_seq: i64, output: Option<&Path>) -> anyhow::Result<()> {
    use std::io::Write;

    let (store, _) = open_database(config).await?;
    let mut out: std::io::BufWriter<Box<dyn Write>> = std::io::BufWriter::new(match output {
        Some(path) => {
            Box::new(std::fs::File::create(path).with_context(|| format!("Failed to create {}", path.display()))?)
        }
        None => Box::new(std::io::stdout()),
    });
    let (mut after, mut count, mut last) = (after_seq, 0u64, None);
    loop {
        let page = store.audit_entries(after, crate::store::AUDIT_PAGE).await.context(NOT_MIGRATED)?;
        let Some(tail) = page.last() else { break };
        after = tail.seq;
        last = Some(tail.head());
        for record in &page {
            writeln!(out, "{}", record.to_json_line()).context("Failed to write the export")?;
        }
        count += page.len() as u64;
    }
    out.flush().context("Failed to write the export")?;
    store.close().await;
    match last {
        Some(head) => eprintln!("exported {count} entries after seq {after_seq}; head: {head}"),
        None => eprintln!("exported 0 entries: none after seq {after_seq}"),
    }
    Ok(())
}

async fn plan(event: &EventArgs, json: bool, confirm: bool) -> anyhow::Result<ExitCode> {
    let settings = Settings::load_online(&event.config).await?;
    let source = find_source(&settings, &event.source, &event.config)?;
    let body =
        std::fs::read_to_string(&event.file).with_context(|| format!("Failed to read {}", event.file.display()))?;
    let now = unix_millis(SystemTime::now());
    let decided = if confirm {
        let decider = Decider {
            policy: std::sync::Arc::new(settings.policy.clone()),
            directory: settings.entra.as_ref().map(|e| e.directory.clone()),
            principals: settings.principals.clone(),
        };
        decider.decide(source, &body, None, now).await.context("An upstream did not answer; try again later")?
    } else {
        decide::decide_offline(&settings.policy, source, &body, now)
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&decided).context("Failed to print the decision")?);
    } else {
        print!("{}", decide::render(decided.ticket.as_ref(), &decided.decision));
    }
    Ok(ExitCode::SUCCESS)
}

fn find_source<'a>(settings: &'a Settings, name: &str, config: &Path) -> anyhow::Result<&'a Source> {
    settings.source(name).ok_or_else(|| {
        let names: Vec<&str> = settings.sources.iter().map(Source::name).collect();
        anyhow::anyhow!("no source named `{name}` in {} (configured: {})", config.display(), names.join(", "))
    })
}

async fn send(event: &EventArgs, url: Option<&str>, signing_key: Option<&Path>) -> anyhow::Result<ExitCode> {
    let (config, source_name, file) = (&event.config, event.source.as_str(), &event.file);
    let settings = Settings::load_without_policy(config)?;
    let source = find_source(&settings, source_name, config)?;
    let body = std::fs::read(file).with_context(|| format!("Failed to read {}", file.display()))?;
    let private_key = signing_key
        .map(|p| std::fs::read(p).with_context(|| format!("Failed to read the signing key {}", p.display())))
        .transpose()?;
    let url = match url {
        Some(u) => u.to_string(),
        None => format!("http://{}/webhooks/{source_name}", settings.listen),
    };
    let parsed = reqwest::Url::parse(&url).with_context(|| format!("`{url}` is not a URL"))?;
    let delivery_id = format!("gb-send-{}", uuid::Uuid::now_v7());
    let outgoing = Outgoing {
        method: "POST",
        path: parsed.path(),
        query: parsed.query().unwrap_or(""),
        body: &body,
        now: SystemTime::now(),
        delivery_id: &delivery_id,
        private_key_pem: private_key.as_deref(),
    };
    let mut headers = None;
    let mut refusals = Vec::new();
    for scheme in source.schemes() {
        match scheme.sign(&outgoing) {
            Ok(h) => {
                headers = Some((scheme.name(), h));
                break;
            }
            Err(e) => refusals.push(format!("{}: {e}", scheme.name().as_str())),
        }
    }
    let Some((scheme, signed)) = headers else {
        bail!("no scheme of source `{source_name}` can sign here: {}", refusals.join("; "));
    };

    let mut request =
        reqwest::Client::new().post(parsed).header(reqwest::header::CONTENT_TYPE, "application/json").body(body);
    let id_header = match source.delivery_id_rule() {
        DeliveryIdRule::Header(name) => Some(name.as_str()),
        _ if source.kind() == SourceKind::Jira => Some("X-Atlassian-Webhook-Identifier"),
        _ => None,
    };
    if let Some(name) = id_header {
        request = request.header(name, &delivery_id);
    }
    for (name, value) in signed {
        request = request.header(name, value);
    }
    let response = request.send().await.with_context(|| format!("Failed to POST to {url}"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    println!("POST {url} signed with {} -> {status}", scheme.as_str());
    println!("{text}");
    Ok(if status.is_success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
