//! `zdr projector`: deploy, list, resume and skip past a poison event, and the dead-letter
//! table of projectors that park (`parked`, `retry`).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::output::{self, ProgressReporter};
use super::{blocking, open_ready, read_component, runtime};
use crate::config::Settings;
use crate::lifecycle::{self, ComponentSpec, DeployOptions, Deployed, ServingStatus, short_hash};

#[derive(Debug, Subcommand)]
pub enum ProjectorCommand {
    /// Deploy a projector: a new one is built from history before it serves; a new version of
    /// a live one is rebuilt with a zero-downtime replay and promoted.
    Deploy(Deploy),
    /// List live projectors with their version, checkpoint, lag and status.
    List(List),
    /// Resume a projector stopped at a failure (after deploying a fix, if needed).
    Resume(Resume),
    /// Let a live projector stopped at an event, or one it parked, pass it (recorded with who
    /// and why); a replay still fails at it.
    Skip(Skip),
    /// List the events a live projector parked (`on_failure = "park"`), with their errors.
    Parked(Parked),
    /// Apply the events a live projector parked, now that their cause is fixed; those that
    /// fail again stay parked.
    Retry(Retry),
}

impl ProjectorCommand {
    pub async fn run(self, settings: Settings) -> anyhow::Result<()> {
        match self {
            ProjectorCommand::Deploy(cmd) => cmd.run(settings).await,
            ProjectorCommand::List(cmd) => cmd.run(settings).await,
            ProjectorCommand::Resume(cmd) => cmd.run(settings).await,
            ProjectorCommand::Skip(cmd) => cmd.run(settings).await,
            ProjectorCommand::Parked(cmd) => cmd.run(settings).await,
            ProjectorCommand::Retry(cmd) => cmd.run(settings).await,
        }
    }
}

/// Deploy NAME from FILE.wasm.
#[derive(Debug, Args)]
pub struct Deploy {
    /// The projector's name (must match what the component's describe() returns).
    name: String,
    /// The component file.
    file: PathBuf,
    /// Replace a live version with other code of the same version string (through a
    /// zero-downtime replay, as any upgrade).
    #[arg(long)]
    allow_same_version: bool,
    #[command(flatten)]
    split: super::replay::SplitArgs,
}

impl Deploy {
    async fn run(self, settings: Settings) -> anyhow::Result<()> {
        let wasm = read_component(&self.file)?;
        let spec = ComponentSpec {
            name: self.name.clone(),
            source: self.file.display().to_string(),
            wasm,
        };
        let runtime = runtime(&settings)?;
        let allow_same_version = self.allow_same_version;
        let partitions = self.split.partitions(&settings);
        let outcome = blocking(move || {
            let db = open_ready(&settings)?;
            let mut progress = ProgressReporter::new(false);
            let options = DeployOptions {
                batch_size: settings.rebuild_batch_size,
                allow_same_version,
                partitions,
            };
            let outcome = lifecycle::deploy(&runtime, &db, &spec, &options, &mut |t, p| {
                progress.update(t, p)
            });
            progress.finish();
            Ok(outcome?)
        })
        .await?;
        match outcome {
            Deployed::New { version, events } => {
                outln!(
                    "deployed {} version {version}: built from {events} event(s), now live",
                    self.name
                )
            }
            Deployed::Unchanged { version } => outln!(
                "{} version {version} is already live; nothing to do",
                self.name
            ),
            Deployed::Upgraded {
                from,
                to,
                from_hash,
                to_hash,
                key,
            } => {
                if from == to {
                    outln!(
                        "replaced the code of {} version {to} ({} with {}) with zero downtime (replay {key})",
                        self.name,
                        short_hash(&from_hash),
                        short_hash(&to_hash)
                    )
                } else {
                    outln!(
                        "upgraded {} from version {from} to {to} with zero downtime (replay {key})",
                        self.name
                    )
                }
            }
        }
        Ok(())
    }
}

/// List live projectors.
#[derive(Debug, Args)]
pub struct List {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

impl List {
    async fn run(self, settings: Settings) -> anyhow::Result<()> {
        let projectors =
            blocking(move || Ok(lifecycle::projectors(&open_ready(&settings)?)?)).await?;
        if self.json {
            return output::print_json(&projectors);
        }
        let rows: Vec<Vec<String>> = projectors
            .iter()
            .map(|p| {
                let mut status = p.status.to_string();
                if let Some(since) = &p.status_since
                    && p.status == ServingStatus::Stuck
                {
                    status.push_str(&format!(" since {since}"));
                }
                if let Some(reason) = &p.status_reason {
                    status.push_str(&format!(": {reason}"));
                }
                if p.parked > 0 {
                    status.push_str(&format!("; {} parked", p.parked));
                }
                if !p.skipped.is_empty() {
                    let ids: Vec<String> =
                        p.skipped.iter().map(|s| s.event_id.to_string()).collect();
                    status.push_str(&format!("; skipped {}", ids.join(", ")));
                }
                vec![
                    p.name.clone(),
                    p.version.clone(),
                    short_hash(&p.content_hash).to_string(),
                    p.checkpoint.to_string(),
                    p.lag.to_string(),
                    status,
                    p.tables.join(","),
                ]
            })
            .collect();
        output::print_table(
            &[
                "NAME",
                "VERSION",
                "CODE",
                "CHECKPOINT",
                "LAG",
                "STATUS",
                "TABLES",
            ],
            &rows,
        );
        Ok(())
    }
}

/// Resume a stopped projector from its checkpoint.
#[derive(Debug, Args)]
pub struct Resume {
    /// The projector's name.
    name: String,
}

impl Resume {
    async fn run(self, settings: Settings) -> anyhow::Result<()> {
        let name = self.name.clone();
        let checkpoint =
            blocking(move || Ok(lifecycle::resume_projector(&open_ready(&settings)?, &name)?))
                .await?;
        outln!(
            "resumed {}: the daemon retries from event {}",
            self.name,
            checkpoint + 1
        );
        Ok(())
    }
}

/// Skip the event a live projector is stopped at.
#[derive(Debug, Args)]
pub struct Skip {
    /// The projector's name.
    name: String,
    /// The event it is stopped at (see `zdr projector list`).
    #[arg(long)]
    event: i64,
    /// Why it may pass this event; recorded with the skip and shown in `zdr projector list`.
    #[arg(long)]
    reason: String,
    /// Who decided (default: the login name).
    #[arg(long)]
    by: Option<String>,
}

impl Skip {
    async fn run(self, settings: Settings) -> anyhow::Result<()> {
        let by = self
            .by
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .or_else(|| std::env::var("LOGNAME").ok())
            .unwrap_or_else(|| "unknown".into());
        let (name, event, reason) = (self.name.clone(), self.event, self.reason.clone());
        let skipped = blocking(move || {
            Ok(lifecycle::skip_event(
                &open_ready(&settings)?,
                &name,
                event,
                &reason,
                &by,
            )?)
        })
        .await?;
        if skipped.was_parked {
            outln!(
                "skipped parked event {} of {}: it leaves the dead-letter table for good",
                self.event,
                self.name
            );
        } else {
            outln!(
                "skipped event {} of {}: the daemon goes on from event {}",
                self.event,
                self.name,
                skipped.live.checkpoint + 1
            );
        }
        Ok(())
    }
}

/// List the events NAME parked.
#[derive(Debug, Args)]
pub struct Parked {
    /// The projector's name.
    name: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

impl Parked {
    async fn run(self, settings: Settings) -> anyhow::Result<()> {
        let name = self.name.clone();
        let parked =
            blocking(move || Ok(lifecycle::parked(&open_ready(&settings)?, &name)?)).await?;
        if self.json {
            return output::print_json(&parked);
        }
        if parked.is_empty() {
            outln!("{} has no parked events", self.name);
            return Ok(());
        }
        let rows: Vec<Vec<String>> = parked
            .iter()
            .map(|p| {
                vec![
                    p.event_id.to_string(),
                    p.attempts.to_string(),
                    p.parked_at.clone(),
                    p.last_attempt_at.clone(),
                    p.error.clone(),
                ]
            })
            .collect();
        output::print_table(
            &["EVENT", "ATTEMPTS", "PARKED", "LAST ATTEMPT", "ERROR"],
            &rows,
        );
        outln!(
            "next: fix the cause, then `zdr projector retry {}` (or let one go with `zdr projector skip {} --event ID --reason …`)",
            self.name,
            self.name
        );
        Ok(())
    }
}

/// Retry the events NAME parked.
#[derive(Debug, Args)]
pub struct Retry {
    /// The projector's name.
    name: String,
    /// Only this event (default: every parked event, in id order).
    #[arg(long)]
    event: Option<i64>,
}

impl Retry {
    async fn run(self, settings: Settings) -> anyhow::Result<()> {
        let runtime = runtime(&settings)?;
        let (name, event) = (self.name.clone(), self.event);
        let retried = blocking(move || {
            Ok(lifecycle::retry_parked(
                &runtime,
                &open_ready(&settings)?,
                &name,
                event,
            )?)
        })
        .await?;
        for id in &retried.applied {
            outln!("applied parked event {id} of {}", self.name);
        }
        for (id, error) in &retried.failed {
            outln!(
                "event {id} of {} failed again and stays parked: {error}",
                self.name
            );
        }
        if !retried.failed.is_empty() {
            anyhow::bail!(
                "{} of {} parked event(s) failed again; see `zdr projector parked {}`",
                retried.failed.len(),
                retried.failed.len() + retried.applied.len(),
                self.name
            );
        }
        Ok(())
    }
}
