//! The command line: one file per subcommand, one enum that dispatches to them.
//!
//! Output: command results go to stdout (tables, or JSON with `--json`); logs and progress go
//! to stderr, so `--json` output stays clean for scripts. Heavy work (SQLite, wasmtime) runs on
//! blocking threads, never on the async runtime.

/// `println!` for what a command prints as its result, on stdout: a reader that went away
/// (`zdr … | head`) ends zdr quietly instead of panicking.
macro_rules! outln {
    () => {
        $crate::cli::output::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprintln!` for progress and notes on stderr: a closed stderr is ignored (a daemon or a
/// long command must not die because its log reader went away).
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::output::write_stderr(format_args!("{}\n", format_args!($($arg)*)))
    };
}

mod demo;
mod events;
mod init;
mod output;
mod plugin;
mod projector;
mod replay;
mod serve;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::backend::{Db, StoreError};
use crate::config::Settings;
use crate::runtime::Runtime;

/// zdr runs event-sourcing projectors compiled to WebAssembly components and rebuilds their
/// read models with zero downtime.
#[derive(Debug, Parser)]
#[command(name = "zdr", version, about, long_about = None)]
pub struct Cli {
    /// Database URL: sqlite://PATH or postgres://USER@HOST:PORT/DB[?schema=NAME]. Also ZDR_DATABASE_URL or zdr.toml; default sqlite://zdr.db.
    #[arg(long, global = true, env = "ZDR_DATABASE_URL")]
    database_url: Option<String>,

    /// Configuration file (default: zdr.toml in the working directory, when present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,

    /// More log output on stderr (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create zdr's tables and the event store (idempotent; uses an existing stored_events).
    Init(init::Init),
    /// Append, import and count events.
    #[command(subcommand)]
    Events(events::EventsCommand),
    /// Deploy and list projectors.
    #[command(subcommand)]
    Projector(projector::ProjectorCommand),
    /// Write projectors: scaffold one, build it, inspect a component.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Rebuild projectors with zero downtime: create, start, lag, project, promote, remove.
    #[command(subcommand)]
    Replay(replay::ReplayCommand),
    /// Run the daemon: project new events to every live projector and projecting replay.
    Serve(serve::Serve),
    /// A self-contained walkthrough of the whole story on a fresh SQLite file.
    Demo(demo::Demo),
}

impl Cli {
    /// Runs the parsed command.
    ///
    /// # Errors
    /// Whatever the command failed with, with context for the user.
    pub async fn run(self) -> anyhow::Result<()> {
        let settings = Settings::resolve(self.config.as_deref(), self.database_url.clone())?;
        let url = crate::backend::redact(&settings.database_url);
        let outcome = match self.command {
            Command::Init(cmd) => cmd.run(settings).await,
            Command::Events(cmd) => cmd.run(settings).await,
            Command::Projector(cmd) => cmd.run(settings).await,
            Command::Plugin(cmd) => cmd.run(settings).await,
            Command::Replay(cmd) => cmd.run(settings).await,
            Command::Serve(cmd) => cmd.run(settings).await,
            Command::Demo(cmd) => cmd.run(settings).await,
        };
        // A damaged file is named, so the advice that follows can be acted on.
        outcome.map_err(|err| {
            let damaged = err
                .chain()
                .any(|cause| matches!(cause.downcast_ref(), Some(StoreError::Damaged { .. })));
            if damaged {
                err.context(format!("database {url}"))
            } else {
                err
            }
        })
    }
}

/// Sets up logging to stderr.
pub fn init_tracing(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "info,wasmtime=warn,cranelift=warn,sqlx=warn",
        (false, 1) => "debug,wasmtime=info,cranelift=info,sqlx=info",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        // A daemon whose log reader went away must keep running and still stop on SIGTERM;
        // reporting a failed log write would itself fail (and panic) on the broken pipe.
        .log_internal_errors(false)
        .try_init();
}

/// Opens the database and checks it is initialised.
fn open_ready(settings: &Settings) -> anyhow::Result<Db> {
    let db = Db::open(&settings.database_url)?;
    db.set_reading(settings.rebuild_read_ahead, settings.rebuild_read_chunk);
    db.ensure_ready()?;
    Ok(db)
}

/// Builds the wasmtime runtime with the configured limits and cache.
fn runtime(settings: &Settings) -> anyhow::Result<Arc<Runtime>> {
    Ok(Arc::new(
        Runtime::new(
            settings.limits,
            settings.projector_limits.clone(),
            settings.cache_dir.clone(),
        )
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .context("cannot start the WebAssembly runtime")?,
    ))
}

/// Runs blocking work (SQLite, wasmtime) on a blocking thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("a worker thread panicked")?
}

/// Reads a component file with a message that names it.
fn read_component(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read component {}", path.display()))
}
