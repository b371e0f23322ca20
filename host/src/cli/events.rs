//! `zdr events`: append, import and count events in the event store.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use super::{blocking, open_ready, output};
use crate::config::Settings;
use crate::events::NewEvent;

/// How many events `import` writes per transaction.
const IMPORT_CHUNK: usize = 5_000;

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Append one event.
    Append(Append),
    /// Import events from a JSONL file (one Spatie-shaped event per line).
    Import(Import),
    /// Count stored events.
    Count(Count),
}

impl EventsCommand {
    pub async fn run(self, settings: Settings) -> anyhow::Result<()> {
        match self {
            EventsCommand::Append(cmd) => cmd.run(settings).await,
            EventsCommand::Import(cmd) => cmd.run(settings).await,
            EventsCommand::Count(cmd) => cmd.run(settings).await,
        }
    }
}

/// Append one event and print its id.
#[derive(Debug, Args)]
pub struct Append {
    /// The event class, e.g. MoneyAdded or 'App\Events\MoneyAdded'.
    #[arg(long = "class")]
    event_class: String,
    /// The aggregate (e.g. account) uuid.
    #[arg(long = "aggregate")]
    aggregate_uuid: Option<String>,
    /// The payload, a JSON object.
    #[arg(long, default_value = "{}")]
    properties: String,
    /// Metadata, a JSON object.
    #[arg(long, default_value = "{}")]
    meta: String,
}

impl Append {
    async fn run(self, settings: Settings) -> anyhow::Result<()> {
        let event = NewEvent::new(
            &self.event_class,
            self.aggregate_uuid,
            &self.properties,
            &self.meta,
        )?;
        let range = blocking(move || {
            let db = open_ready(&settings)?;
            Ok(db.append_events(&[event])?)
        })
        .await?;
        if let Some((id, _)) = range {
            outln!("{id}");
        }
        Ok(())
    }
}

/// Import events from a JSONL file. Every line is checked first: by default one bad line
/// imports nothing (the line is reported); with --skip-invalid the good lines are imported
/// and each bad one reported.
#[derive(Debug, Args)]
pub struct Import {
    /// The JSONL file ('-' for standard input). Each line: {"event_class": ..., "aggregate_uuid": ...,
    /// "event_properties": {...}, "meta_data": {...}, "created_at": ...}.
    file: PathBuf,
    /// Import the valid lines and report the invalid ones instead of importing nothing.
    #[arg(long)]
    skip_invalid: bool,
}

impl Import {
    async fn run(self, settings: Settings) -> anyhow::Result<()> {
        let file = self.file.clone();
        let skip_invalid = self.skip_invalid;
        let (count, invalid) = blocking(move || {
            let reader: Box<dyn BufRead> = if file.as_os_str() == "-" {
                Box::new(std::io::stdin().lock())
            } else {
                let f = std::fs::File::open(&file).with_context(|| format!("cannot open {}", file.display()))?;
                Box::new(std::io::BufReader::new(f))
            };
            let mut events = Vec::new();
            // The line each event came from, to say where an import cut short stopped.
            let mut lines = Vec::new();
            let mut invalid = Vec::new();
            for (i, line) in reader.lines().enumerate() {
                let line = line.with_context(|| format!("cannot read line {} of {}", i + 1, file.display()))?;
                if line.trim().is_empty() {
                    continue;
                }
                match NewEvent::parse_line(&line, i + 1) {
                    Ok(event) => {
                        events.push(event);
                        lines.push(i + 1);
                    }
                    Err(err) => invalid.push(err.to_string()),
                }
            }
            if !invalid.is_empty() && !skip_invalid {
                anyhow::bail!(
                    "{} invalid line(s) in {}; nothing was imported (pass --skip-invalid to import the valid lines):\n  {}",
                    invalid.len(),
                    file.display(),
                    invalid.iter().take(20).cloned().collect::<Vec<_>>().join("\n  ")
                );
            }
            let db = open_ready(&settings)?;
            let mut imported = 0;
            for chunk in events.chunks(IMPORT_CHUNK) {
                let appended = db.append_events(chunk);
                if imported > 0 {
                    // Earlier transactions committed: the whole file again would import them twice.
                    appended.with_context(|| cut_short(&file, imported, events.len(), &lines))?;
                } else {
                    appended?;
                }
                imported += chunk.len();
            }
            Ok((events.len(), invalid))
        })
        .await?;
        for problem in &invalid {
            errln!("skipped {problem}");
        }
        outln!("imported {count} event(s)");
        Ok(())
    }
}

/// What an import that failed after `imported` of `total` events committed says: where it
/// stopped, and how to import the rest without importing the first ones twice.
fn cut_short(file: &std::path::Path, imported: usize, total: usize, lines: &[usize]) -> String {
    // `imported` is below `total`, so both lines exist; 0 only if that did not hold.
    let last = lines.get(imported - 1).copied().unwrap_or(0);
    let next = lines.get(imported).copied().unwrap_or(0);
    let rest = if file.as_os_str() == "-" {
        format!("import the input from line {next} on")
    } else {
        format!(
            "import the rest with `tail -n +{next} {} | zdr events import -`",
            file.display()
        )
    };
    format!(
        "the import stopped after {imported} of {total} events (through line {last}), which are \
         stored; the rest are not. Once the cause below is fixed, {rest} (the whole file again \
         would store the first {imported} twice)"
    )
}

/// Count stored events.
#[derive(Debug, Args)]
pub struct Count {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

impl Count {
    async fn run(self, settings: Settings) -> anyhow::Result<()> {
        let (count, head) = blocking(move || {
            let db = open_ready(&settings)?;
            Ok((db.count_events()?, db.head()?))
        })
        .await?;
        if self.json {
            output::print_json(&serde_json::json!({ "count": count, "last_id": head }))
        } else {
            outln!("{count}");
            Ok(())
        }
    }
}
