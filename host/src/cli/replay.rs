//! `zdr replay`: the zero-downtime rebuild lifecycle (create, start, show, lag, project,
//! promote, remove, list), named after the PHP package's createReplay … removeReplay.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use super::output::{self, ProgressReporter};
use super::{blocking, open_ready, read_component, runtime};
use crate::config::Settings;
use crate::diff::TableFilter;
use crate::lifecycle::{
    self, Check, ComponentSpec, PromoteOptions, ReplayStatus, RunOptions, RunStep,
};

#[derive(Debug, Subcommand)]
pub enum ReplayCommand {
    /// Create a replay: clone tables for new projector versions beside the live ones.
    Create(Create),
    /// Replay history into the clone (batched, resumable); run again to catch up.
    Start(StartArgs),
    /// Show a replay's state, checkpoints and tables.
    Show(ReadArgs),
    /// How far behind the event stream the clone is.
    Lag(ReadArgs),
    /// Catch up and turn on dual writes: new events go to live and clone.
    Project(KeyArgs),
    /// Compare the replay's tables with live, in the database: counts, rows only on one side,
    /// rows that differ (by primary key), with a sample.
    Diff(Diff),
    /// Swap the clone in as live, atomically; the daemon hot-swaps to the new version.
    Promote(Promote),
    /// The whole rebuild in one command: create, start, project and, with --promote, promote.
    /// Run it again after a stop to carry on where it stopped.
    Run(Run),
    /// After a promote: bring the former live tables up to date and swap them back in.
    Rollback(KeyArgs),
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

/// Start KEY.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// The replay key.
    key: String,
    #[command(flatten)]
    split: SplitArgs,
}

/// How a rebuild may split history (`replay start`, `replay run`, `projector deploy`).
#[derive(Debug, Args)]
pub struct SplitArgs {
    /// Replay a partitioned projector (its `partition-by` export) split by aggregate into N
    /// parts, each on a worker and a connection of its own (PostgreSQL and MySQL; SQLite
    /// replays whole). Default: `rebuild_partitions` in zdr.toml, else the number of cores.
    /// A replay that stopped half-way resumes with the parts it began with.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::config::MAX_PARTITIONS)))]
    partitions: Option<u32>,
}

impl SplitArgs {
    /// The parts asked for: the flag, or the setting.
    pub fn partitions(&self, settings: &Settings) -> u32 {
        self.partitions.unwrap_or(settings.rebuild_partitions)
    }
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

/// Diff KEY.
#[derive(Debug, Args)]
pub struct Diff {
    /// The replay key.
    key: String,
    /// Compare only this table, or these columns of it: TABLE or TABLE:COL[,COL…]. Repeatable.
    #[arg(long = "table", value_name = "TABLE[:COLS]")]
    tables: Vec<String>,
    /// How many rows of each kind to show per table.
    #[arg(long, default_value_t = crate::diff::DEFAULT_SAMPLE)]
    sample: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Promote KEY.
#[derive(Debug, Args)]
pub struct Promote {
    /// The replay key.
    key: String,
    #[command(flatten)]
    flags: PromoteFlags,
}

/// How to promote: the checks first, and the wait for the clone to be close to live.
#[derive(Debug, Args)]
pub struct PromoteFlags {
    /// Check the clone against live first and refuse to promote when a check fails. Without
    /// --expect-same or --check: every table both versions have, on their common columns.
    #[arg(long)]
    verify: bool,
    /// A check (implies --verify): the clone holds the same rows as live on TABLE (or on these
    /// columns of it). Repeatable.
    #[arg(long = "expect-same", value_name = "TABLE[:COLS]")]
    expect_same: Vec<String>,
    /// A check (implies --verify): this query returns the same rows on live and on the clone;
    /// it runs through the projector's SQL guard. Repeatable.
    #[arg(long = "check", value_name = "SQL")]
    checks: Vec<String>,
    /// Promote even when a check fails, or while the replaced version has parked events.
    #[arg(long)]
    force: bool,
    /// First wait until every clone is within N events of the head (`zdr serve` catches it up).
    #[arg(long, value_name = "N")]
    max_lag: Option<i64>,
    /// How long --max-lag waits, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    timeout: u64,
}

impl PromoteFlags {
    /// The lifecycle's options for these flags.
    fn options(&self) -> anyhow::Result<PromoteOptions> {
        let mut checks = Vec::new();
        for table in &self.expect_same {
            checks.push(Check::Same(
                TableFilter::parse(table).map_err(anyhow::Error::msg)?,
            ));
        }
        checks.extend(self.checks.iter().cloned().map(Check::Query));
        Ok(PromoteOptions {
            verify: (self.verify || !checks.is_empty()).then_some(checks),
            force: self.force,
            max_lag: self.max_lag,
            timeout: std::time::Duration::from_secs(self.timeout),
        })
    }

    /// Whether any flag asks for more than a plain promote.
    fn any(&self) -> bool {
        self.verify
            || !self.expect_same.is_empty()
            || !self.checks.is_empty()
            || self.force
            || self.max_lag.is_some()
    }
}

/// Run KEY with one or more --projector NAME=FILE.wasm.
#[derive(Debug, Args)]
pub struct Run {
    /// The replay key: lowercase letters, digits and '_'.
    key: String,
    /// A projector to rebuild and the component of its new version: NAME=FILE.wasm. Repeatable.
    #[arg(long = "projector", value_name = "NAME=FILE", required = true)]
    projectors: Vec<String>,
    /// Promote at the end (with the checks and the wait the flags below ask for).
    #[arg(long)]
    promote: bool,
    #[command(flatten)]
    flags: PromoteFlags,
    #[command(flatten)]
    split: SplitArgs,
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
                let specs = component_specs(&cmd.projectors)?;
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
                let partitions = cmd.split.partitions(&settings);
                let start = move |runtime: &crate::runtime::Runtime,
                                  db: &crate::backend::Db,
                                  key: &str,
                                  batch_size: usize,
                                  progress: &mut dyn FnMut(
                    &crate::model::Target,
                    crate::projection::Progress,
                )| {
                    lifecycle::start(runtime, db, key, batch_size, partitions, progress)
                };
                let applied = rebuild_with_progress(settings, &cmd.key, start).await?;
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
                rebuild_with_progress(settings, &cmd.key, lifecycle::project).await?;
                outln!(
                    "replay {} is projecting: new events go to live and clone. next: zdr replay promote {}",
                    cmd.key,
                    cmd.key
                );
                Ok(())
            }
            ReplayCommand::Diff(cmd) => {
                let filters = cmd
                    .tables
                    .iter()
                    .map(|t| TableFilter::parse(t).map_err(anyhow::Error::msg))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let key = cmd.key.clone();
                let sample = cmd.sample;
                let diffs = blocking(move || {
                    Ok(lifecycle::diff(
                        &open_ready(&settings)?,
                        &key,
                        &filters,
                        sample,
                    )?)
                })
                .await?;
                if cmd.json {
                    return output::print_json(&diffs);
                }
                for d in &diffs {
                    let side = if d.replay_role == crate::model::Role::Clone {
                        "clone"
                    } else {
                        "former live tables"
                    };
                    outln!(
                        "{}: live version {} at event {}, {side} version {} at event {}",
                        d.projector,
                        d.live_version,
                        d.live_checkpoint,
                        d.replay_version,
                        d.replay_checkpoint
                    );
                    for table in &d.tables {
                        for line in table.lines(side) {
                            outln!("  {line}");
                        }
                    }
                }
                let same = diffs.iter().all(|d| d.is_same());
                outln!(
                    "{}",
                    if same {
                        "same rows on every compared column"
                    } else {
                        "the tables differ"
                    }
                );
                Ok(())
            }
            ReplayCommand::Rollback(cmd) => {
                let restored =
                    rebuild_with_progress(settings, &cmd.key, lifecycle::rollback).await?;
                for t in &restored {
                    outln!(
                        "rolled back {}: version {} is live again, up to event {} (the rolled-back tables are kept until `zdr replay remove {}`)",
                        t.projector,
                        t.version,
                        t.checkpoint,
                        cmd.key
                    );
                }
                Ok(())
            }
            ReplayCommand::Promote(cmd) => {
                let runtime = runtime(&settings)?;
                let key = cmd.key.clone();
                let options = cmd.flags.options()?;
                let promoted = blocking(move || {
                    Ok(lifecycle::promote(
                        &runtime,
                        &open_ready(&settings)?,
                        &key,
                        &options,
                    )?)
                })
                .await?;
                if let Some(verification) = &promoted.verification {
                    for line in verification.to_string().lines() {
                        outln!("{line}");
                    }
                }
                for t in &promoted.targets {
                    outln!(
                        "promoted {} version {}: now live (previous tables kept until `zdr replay remove {}`)",
                        t.projector,
                        t.version,
                        cmd.key
                    );
                }
                Ok(())
            }
            ReplayCommand::Run(cmd) => {
                let specs = component_specs(&cmd.projectors)?;
                if cmd.flags.any() && !cmd.promote {
                    anyhow::bail!(
                        "--verify, --expect-same, --check, --force and --max-lag apply to the promote: add --promote"
                    );
                }
                let options = RunOptions {
                    batch_size: settings.rebuild_batch_size,
                    partitions: cmd.split.partitions(&settings),
                    promote: cmd.promote.then(|| cmd.flags.options()).transpose()?,
                };
                let runtime = runtime(&settings)?;
                let key = cmd.key.clone();
                let outcome = blocking(move || {
                    let db = open_ready(&settings)?;
                    let mut progress = ProgressReporter::new(false);
                    let result = lifecycle::run(
                        &runtime,
                        &db,
                        &key,
                        &specs,
                        &options,
                        &mut |t, p| progress.update(t, p),
                        &mut |step| report_step(&key, &step),
                    );
                    progress.finish();
                    let state = db.replay(&key).ok().flatten().map(|row| row.state);
                    Ok((result, state))
                })
                .await?;
                match outcome {
                    (Ok(()), _) if cmd.promote => {
                        outln!(
                            "replay {}: done; `zdr replay rollback {}` undoes the promote until `zdr replay remove {}`",
                            cmd.key,
                            cmd.key,
                            cmd.key
                        );
                        Ok(())
                    }
                    (Ok(()), _) => {
                        outln!(
                            "replay {}: projecting. next: zdr replay promote {} (or run this command again with --promote)",
                            cmd.key,
                            cmd.key
                        );
                        Ok(())
                    }
                    (Err(err), state) => {
                        let left = state.map_or_else(
                            || "the replay was not created".to_string(),
                            |state| format!("the replay is left {state}"),
                        );
                        Err(anyhow::Error::new(err.source).context(format!(
                            "replay run {} stopped while {}; {left}: fix the cause, then run the same command again to carry on (or `zdr replay remove {}` to give up)",
                            cmd.key, err.stage, cmd.key
                        )))
                    }
                }
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

/// Runs one rebuild command on replay `key` off the async runtime, with a progress line on
/// the terminal.
async fn rebuild_with_progress<T: Send + 'static>(
    settings: Settings,
    key: &str,
    // What the rebuild commands share: `start`, `project` and `rollback` each apply events in
    // batches of the rebuild size and report progress.
    step: impl FnOnce(
        &crate::runtime::Runtime,
        &crate::backend::Db,
        &str,
        usize,
        &mut dyn FnMut(&crate::model::Target, crate::projection::Progress),
    ) -> Result<T, crate::lifecycle::LifecycleError>
    + Send
    + 'static,
) -> anyhow::Result<T> {
    let runtime = runtime(&settings)?;
    let key = key.to_string();
    blocking(move || {
        let db = open_ready(&settings)?;
        let mut progress = ProgressReporter::new(false);
        let result = step(
            &runtime,
            &db,
            &key,
            settings.rebuild_batch_size,
            &mut |t, p| progress.update(t, p),
        );
        progress.finish();
        Ok(result?)
    })
    .await
}

/// Reads `--projector NAME=FILE.wasm` arguments and their files.
fn component_specs(args: &[String]) -> anyhow::Result<Vec<ComponentSpec>> {
    let mut specs = Vec::new();
    for arg in args {
        let (name, file) = arg
            .split_once('=')
            .with_context(|| format!("--projector takes NAME=FILE.wasm, got {arg:?}"))?;
        let file = PathBuf::from(file);
        specs.push(ComponentSpec {
            name: name.to_string(),
            source: file.display().to_string(),
            wasm: read_component(&file)?,
        });
    }
    Ok(specs)
}

/// Prints one finished step of `replay run`.
fn report_step(key: &str, step: &RunStep) {
    match step {
        RunStep::Created(targets) => {
            for t in targets {
                outln!(
                    "created replay {key} for {} version {}",
                    t.projector,
                    t.version
                );
            }
        }
        RunStep::Resumed(state) => {
            outln!("replay {key} exists ({state}) with these components: carrying on");
        }
        RunStep::Replayed(applied) => {
            outln!("replay {key}: applied {applied} event(s); caught up");
        }
        RunStep::Projecting => {
            outln!("replay {key} is projecting: new events go to live and clone");
        }
        RunStep::Promoted(promoted) => {
            if let Some(verification) = &promoted.verification {
                for line in verification.to_string().lines() {
                    outln!("{line}");
                }
            }
            for t in &promoted.targets {
                outln!("promoted {} version {}: now live", t.projector, t.version);
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
        if !p.split.is_empty() {
            let parts: Vec<String> = p
                .split
                .iter()
                .map(|s| format!("part {} at {}", s.part, s.checkpoint))
                .collect();
            outln!(
                "    split by aggregate into {} parts up to event {}: {} (run `zdr replay start` to finish)",
                p.split.len(),
                p.split[0].head,
                parts.join(", ")
            );
        }
        if let (Some(live), Some(reason)) = (p.live_status, &p.live_status_reason) {
            outln!("    live is {live}: {reason}");
        }
        if let Some(f) = &p.failure {
            outln!("    failed at event {}: {}", f.event_id, f.message);
        }
    }
}
