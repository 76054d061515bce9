//! Logging: JSON lines in production, readable text in a terminal. Secrets never reach a log line because
//! they are only ever held as `Secret`, whose `Debug` is redacted.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{LogFormat, LogSettings};

pub fn init(settings: &LogSettings) {
    init_on(settings, std::io::stdout, std::io::stdout().is_terminal());
}

/// For commands whose standard output is their result (`reconcile`): the log goes to standard error.
pub fn init_stderr(settings: &LogSettings) {
    init_on(settings, std::io::stderr, std::io::stderr().is_terminal());
}

fn init_on<W>(settings: &LogSettings, writer: W, terminal: bool)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(&settings.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match settings.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !terminal,
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    // A second init (tests) keeps the first subscriber; that is fine.
    let _ = if json {
        builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init()
    } else {
        builder.with_ansi(terminal).try_init()
    };
}
