//! `zdr replay`: the zero-downtime rebuild lifecycle (create, start, show, lag, project,
//! promote, remove, list), named after the PHP package's createReplay … removeReplay.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use super::output::{self, ProgressReporter};
use super::{blocking, open_ready, read_component, runtime};
use crate::config::Settings;
use crate::lifecycle::{self, ComponentSpec, ReplayStatus};

#[derive(Debug, Subcommand)]
pub enum ReplayCommand {
    /// Create a replay: clone tables for new projector versions beside the live ones.
    Create(Create),
    /// Replay history into the clone (batched, resumable); run again to catch up.
    Start(KeyArgs),
    /// Show a replay's state, checkpoints and tables.
    Show(ReadArgs),
    /// How far behind the event stream the clone is.
    Lag(ReadArgs),
    /// Catch up and turn on dual writes: new events go to live and clone.
    Project(KeyArgs),
    /// Swap the clone in as live, atomically; the daemon hot-swaps to the new version.
    Promote(KeyArgs),
    /// Drop what the replay left (clone tables, or the former live tables after a promote).
    Remove(Remove),
    /// List replays.
    List(ListArgs),
}

/// Create KEY with one or more --projector NAME=FILE.wasm.
#[derive(Debug, Args)]
pub struct Create {
    /// The replay key: lowercase letters, digits and '_'.
    key: String,
    /// A projector to rebuild and the component of its new version: NAME=FILE.wasm. Repeatable.
    #[arg(long = "projector", value_name = "NAME=FILE", required = true)]
    projectors: Vec<String>,
}

/// A command that takes a replay key.
#[derive(Debug, Args)]
pub struct KeyArgs {
    /// The replay key.
    key: String,
}

/// A read command on one replay.
#[derive(Debug, Args)]
pub struct ReadArgs {
    /// The replay key.
    key: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Remove KEY.
#[derive(Debug, Args)]
pub struct Remove {
    /// The replay key.
    key: String,
    /// Remove even a projecting replay (its dual writes stop).
    #[arg(long)]
    force: bool,
}

/// List replays.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

impl ReplayCommand {
    pub async fn run(self, settings: Settings) -> anyhow::Result<()> {
        match self {
            ReplayCommand::Create(cmd) => {
                let mut specs = Vec::new();
                for arg in &cmd.projectors {
                    let (name, file) = arg.split_once('=').with_context(|| {
                        format!("--projector takes NAME=FILE.wasm, got {arg:?}")
                    })?;
                    let file = PathBuf::from(file);
                    specs.push(ComponentSpec {
                        name: name.to_string(),
                        source: file.display().to_string(),
                        wasm: read_component(&file)?,
                    });
                }
                let runtime = runtime(&settings)?;
                let key = cmd.key.clone();
                let targets = blocking(move || {
                    Ok(lifecycle::create(
                        &runtime,
                        &open_ready(&settings)?,
                        &key,
                        &specs,
                    )?)
                })
                .await?;
                for t in &targets {
                    outln!(
                        "created replay {} for {} version {}",
                        cmd.key,
                        t.projector,
                        t.version
                    );
                }
                outln!("next: zdr replay start {}", cmd.key);
                Ok(())
            }
            ReplayCommand::Start(cmd) => {
                let runtime = runtime(&settings)?;
                let key = cmd.key.clone();
                let applied = blocking(move || {
                    let db = open_ready(&settings)?;
                    let mut progress = ProgressReporter::new(false);
                    let result =
                        lifecycle::start(&runtime, &db, &key, settings.batch_size, &mut |t, p| {
                            progress.update(t, p)
                        });
                    progress.finish();
                    Ok(result?)
                })
                .await?;
                outln!(
                    "replay {}: applied {applied} event(s); caught up. next: zdr replay project {}",
                    cmd.key,
                    cmd.key
                );
                Ok(())
            }
            ReplayCommand::Show(cmd) => {
                let key = cmd.key.clone();
                let status =
                    blocking(move || Ok(lifecycle::status(&open_ready(&settings)?, &key)?)).await?;
                if cmd.json {
                    return output::print_json(&status);
                }
                print_status(&status);
                Ok(())
            }
            ReplayCommand::Lag(cmd) => {
                let key = cmd.key.clone();
                let status =
                    blocking(move || Ok(lifecycle::status(&open_ready(&settings)?, &key)?)).await?;
                if cmd.json {
                    let parts: Vec<_> = status
                        .projectors
                        .iter()
                        .map(|p| serde_json::json!({"projector": p.projector, "checkpoint": p.checkpoint, "lag": p.lag}))
                        .collect();
                    return output::print_json(&serde_json::json!({
                        "key": status.key, "state": status.state, "head": status.head, "lag": status.lag, "projectors": parts
                    }));
                }
                for p in &status.projectors {
                    outln!(
                        "{}: checkpoint {} of {}, {} event(s) behind",
                        p.projector,
                        p.checkpoint,
                        status.head,
                        p.lag
                    );
                }
                Ok(())
            }
            ReplayCommand::Project(cmd) => {
                let runtime = runtime(&settings)?;
                let key = cmd.key.clone();
                blocking(move || {
                    let db = open_ready(&settings)?;
                    let mut progress = ProgressReporter::new(false);
                    let result = lifecycle::project(
                        &runtime,
                        &db,
                        &key,
                        settings.batch_size,
                        &mut |t, p| progress.update(t, p),
                    );
                    progress.finish();
                    Ok(result?)
                })
                .await?;
                outln!(
                    "replay {} is projecting: new events go to live and clone. next: zdr replay promote {}",
                    cmd.key,
                    cmd.key
                );
                Ok(())
            }
            ReplayCommand::Promote(cmd) => {
                let runtime = runtime(&settings)?;
                let key = cmd.key.clone();
                let promoted = blocking(move || {
                    Ok(lifecycle::promote(&runtime, &open_ready(&settings)?, &key)?)
                })
                .await?;
                for t in &promoted {
                    outln!(
                        "promoted {} version {}: now live (previous tables kept until `zdr replay remove {}`)",
                        t.projector,
                        t.version,
                        cmd.key
                    );
                }
                Ok(())
            }
            ReplayCommand::Remove(cmd) => {
                let runtime = runtime(&settings)?;
                let key = cmd.key.clone();
                let force = cmd.force;
                let dropped = blocking(move || {
                    Ok(lifecycle::remove(
                        &runtime,
                        &open_ready(&settings)?,
                        &key,
                        force,
                    )?)
                })
                .await?;
                outln!("removed replay {} ({dropped} target(s) dropped)", cmd.key);
                Ok(())
            }
            ReplayCommand::List(cmd) => {
                let replays =
                    blocking(move || Ok(lifecycle::list(&open_ready(&settings)?)?)).await?;
                if cmd.json {
                    return output::print_json(&replays);
                }
                let rows: Vec<Vec<String>> = replays
                    .iter()
                    .map(|r| {
                        vec![
                            r.key.clone(),
                            r.state.to_string(),
                            r.projectors
                                .iter()
                                .map(|p| format!("{}@{}", p.projector, p.version))
                                .collect::<Vec<_>>()
                                .join(","),
                            r.lag.to_string(),
                            r.created_at.clone(),
                        ]
                    })
                    .collect();
                output::print_table(&["KEY", "STATE", "PROJECTORS", "LAG", "CREATED"], &rows);
                Ok(())
            }
        }
    }
}

fn print_status(status: &ReplayStatus) {
    outln!("replay {}: {}", status.key, status.state);
    if let Some(error) = &status.error {
        outln!("  error: {error}");
    }
    outln!("  event store head: {}", status.head);
    for p in &status.projectors {
        outln!(
            "  {} version {} ({}): checkpoint {}, lag {}; live is version {} at {}",
            p.projector,
            p.version,
            p.role.as_str(),
            p.checkpoint,
            p.lag,
            p.live_version.as_deref().unwrap_or("-"),
            p.live_checkpoint.map_or("-".to_string(), |c| c.to_string()),
        );
        outln!("    tables: {}", p.tables.join(", "));
        if let (Some(live), Some(reason)) = (p.live_status, &p.live_status_reason) {
            outln!("    live is {live}: {reason}");
        }
        if let Some(f) = &p.failure {
            outln!("    failed at event {}: {}", f.event_id, f.message);
        }
    }
}
