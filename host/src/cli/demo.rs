//! `zdr demo`: the whole story on screen, on a fresh SQLite file.
//!
//! Events are appended, the `balance` projector v1 is deployed and served by an in-process
//! daemon, v2 (which adds a transaction count and the last activity time) is replayed into a
//! clone while v1 keeps serving and new events keep arriving, the clone catches up, projects,
//! is promoted, and the daemon hot-swaps to v2. Finally a verification replay rebuilds v2 from
//! scratch and the demo checks that the live table equals it row for row.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;

use super::{blocking, output, read_component, runtime};
use crate::backend::{Backend, Db};
use crate::config::Settings;
use crate::events::NewEvent;
use crate::lifecycle::{self, ComponentSpec, DeployOptions, Deployed};
use crate::runtime::Runtime;

/// Run the walkthrough on a fresh SQLite file, or on an empty PostgreSQL or MySQL/MariaDB
/// database given with `--database-url postgres://…` or `mysql://…`.
#[derive(Debug, Args)]
pub struct Demo {
    /// The SQLite file to create (replaced if it exists); unused with a server's URL.
    #[arg(long, default_value = "zdr-demo.db")]
    file: PathBuf,
    /// The balance v1 component (built from plugins/ when absent).
    #[arg(
        long,
        default_value = "plugins/target/wasm32-wasip2/release/balance_v1.wasm"
    )]
    v1: PathBuf,
    /// The balance v2 component (built from plugins/ when absent).
    #[arg(
        long,
        default_value = "plugins/target/wasm32-wasip2/release/balance_v2.wasm"
    )]
    v2: PathBuf,
    /// Events in the history before the story starts.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
}

/// A small deterministic generator, so every run of the demo tells the same story.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below.max(1)
    }
}

const ACCOUNTS: u64 = 50;

fn account_events(rng: &mut Lcg, count: usize, open_accounts: bool) -> Vec<NewEvent> {
    let mut out = Vec::with_capacity(count + ACCOUNTS as usize);
    let names = [
        "Ada", "Grace", "Alan", "Barbara", "Edsger", "Frances", "Ken", "Radia", "Tim", "Margaret",
    ];
    if open_accounts {
        for a in 0..ACCOUNTS {
            let name = format!("{} #{a}", names[(a % names.len() as u64) as usize]);
            out.push(event(
                "AccountOpened",
                a,
                serde_json::json!({ "name": name }),
            ));
        }
    }
    for _ in 0..count {
        let account = rng.next(ACCOUNTS);
        let amount = 1 + rng.next(100);
        if rng.next(3) == 0 {
            out.push(event(
                "MoneySubtracted",
                account,
                serde_json::json!({ "amount": amount }),
            ));
        } else {
            out.push(event(
                "MoneyAdded",
                account,
                serde_json::json!({ "amount": amount }),
            ));
        }
    }
    out
}

fn event(class: &str, account: u64, properties: serde_json::Value) -> NewEvent {
    NewEvent {
        aggregate_uuid: Some(format!("acct-{account:03}")),
        aggregate_version: None,
        event_version: 1,
        event_class: class.to_string(),
        event_properties: properties.to_string(),
        meta_data: "{}".to_string(),
        created_at: None,
    }
}

fn step(title: &str) {
    outln!();
    outln!("== {title}");
}

fn show_balances(db: &Db, table: &str) -> anyhow::Result<()> {
    let rows = db.read_rows(&format!(
        "SELECT * FROM {table} ORDER BY account_uuid LIMIT 5"
    ))?;
    let header: Vec<&str> = rows.columns.iter().map(String::as_str).collect();
    let cells: Vec<Vec<String>> = rows
        .rows
        .iter()
        .map(|r| r.iter().map(|v| format!("{v}")).collect())
        .collect();
    output::print_table(&header, &cells);
    Ok(())
}

/// Finds the component, building the example projectors (plugins/build-all.sh) when it is
/// missing and the command runs from a checkout of the repository.
fn component(path: &Path) -> anyhow::Result<Vec<u8>> {
    let script = Path::new("plugins/build-all.sh");
    if !path.exists() && script.exists() {
        errln!(
            "building the example projectors with {} ...",
            script.display()
        );
        let status = std::process::Command::new("bash")
            .arg(script)
            .arg("--demo")
            .stdout(std::process::Stdio::null())
            .status()
            .context("cannot run bash to build the example projectors")?;
        if !status.success() {
            bail!("building the example projectors failed (see the messages above)");
        }
    }
    if !path.exists() {
        bail!(
            "component {} not found: run the demo from the repository root, or pass --v1/--v2 with built components",
            path.display()
        );
    }
    read_component(path)
}

impl Demo {
    /// Runs the walkthrough.
    ///
    /// # Errors
    /// Any step that fails, with what it was doing.
    pub async fn run(self, settings: Settings) -> anyhow::Result<()> {
        // A URL the demo cannot use is refused before anything is built or written.
        let backend = Backend::of(&settings.database_url)?;
        let server = backend != Backend::Sqlite;
        let v1 = component(&self.v1)?;
        let v2 = component(&self.v2)?;
        let url = if server {
            let url = settings.database_url.clone();
            let check = url.clone();
            blocking(move || ensure_empty(&check)).await?;
            url
        } else {
            for suffix in ["", "-wal", "-shm"] {
                let mut name = self.file.clone().into_os_string();
                name.push(suffix);
                let _ = std::fs::remove_file(&name);
            }
            format!("sqlite://{}", self.file.display())
        };
        let settings = Settings {
            database_url: url.clone(),
            poll_interval: Duration::from_millis(20),
            ..settings
        };
        let runtime = runtime(&settings)?;
        let history = self.events;
        outln!("zdr demo on {url}");

        step(&format!(
            "1. An event store with {history} events for {ACCOUNTS} bank accounts"
        ));
        let db_url = url.clone();
        blocking(move || {
            let db = Db::create(&db_url)?;
            db.init()?;
            let mut rng = Lcg(42);
            db.append_events(&account_events(&mut rng, history, true))?;
            outln!("appended {} events", db.count_events()?);
            Ok(())
        })
        .await?;

        step("2. Deploy the balance projector v1: built from history, then live");
        let (rt, s) = (runtime.clone(), settings.clone());
        blocking(move || {
            let db = Db::open(&s.database_url)?;
            let spec = ComponentSpec {
                name: "balance".into(),
                source: "balance v1".into(),
                wasm: v1,
            };
            let options = DeployOptions {
                batch_size: s.rebuild_batch_size,
                allow_same_version: false,
                partitions: s.rebuild_partitions,
            };
            match lifecycle::deploy(&rt, &db, &spec, &options, &mut |_, _| {})? {
                Deployed::New { version, events } => {
                    outln!(
                        "deployed balance version {version}: built from {events} event(s), now live"
                    )
                }
                _ => bail!(
                    "balance was already deployed in the demo's fresh database; run the demo again"
                ),
            }
            show_balances(&db, "balances")
        })
        .await?;

        step(
            "3. zdr serve: the daemon projects new events live (in this process); traffic keeps flowing",
        );
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let daemon = tokio::spawn(crate::daemon::run(
            settings.clone(),
            runtime.clone(),
            async {
                let _ = stop_rx.await;
            },
        ));
        let traffic_stop = Arc::new(AtomicBool::new(false));
        let traffic = spawn_traffic(url.clone(), traffic_stop.clone());
        tokio::time::sleep(Duration::from_millis(500)).await;

        step(
            "4. replay create v2 --projector balance=balance_v2.wasm: clone tables beside the live ones",
        );
        let (rt, s) = (runtime.clone(), settings.clone());
        blocking(move || {
            let db = Db::open(&s.database_url)?;
            let spec = ComponentSpec {
                name: "balance".into(),
                source: "balance v2".into(),
                wasm: v2,
            };
            for t in lifecycle::create(&rt, &db, "v2", &[spec])? {
                outln!(
                    "clone for {} version {} created: {}",
                    t.projector,
                    t.version,
                    db.physical_names(
                        &t,
                        &db.description(t.version_id)?,
                        t.role,
                        t.replay_key.as_deref()
                    )
                    .join(", ")
                );
            }
            Ok(())
        })
        .await?;

        step("5. replay start v2: history replays into the clone while v1 keeps serving");
        let (rt, s) = (runtime.clone(), settings.clone());
        blocking(move || {
            let db = Db::open(&s.database_url)?;
            let mut progress = output::ProgressReporter::new(false);
            let applied = lifecycle::start(
                &rt,
                &db,
                "v2",
                s.rebuild_batch_size,
                s.rebuild_partitions,
                &mut |t, p| progress.update(t, p),
            )?;
            progress.finish();
            outln!("replayed {applied} events into the clone");
            let live = db.live_target("balance")?.context("balance is not live")?;
            outln!(
                "meanwhile v1 kept serving: live checkpoint {} of {}",
                live.checkpoint,
                db.head()?
            );
            Ok(())
        })
        .await?;

        step("6. replay lag v2, then start again to catch up with what arrived meanwhile");
        let (rt, s) = (runtime.clone(), settings.clone());
        blocking(move || {
            let db = Db::open(&s.database_url)?;
            let status = lifecycle::status(&db, "v2")?;
            outln!(
                "lag: {} event(s) behind the head ({})",
                status.lag,
                status.head
            );
            let applied = lifecycle::start(
                &rt,
                &db,
                "v2",
                s.rebuild_batch_size,
                s.rebuild_partitions,
                &mut |_, _| {},
            )?;
            outln!(
                "caught up {applied} more event(s); lag now {}",
                lifecycle::status(&db, "v2")?.lag
            );
            Ok(())
        })
        .await?;

        step(
            "7. replay project v2: the last gap closes under the lock; new events now go to live and clone",
        );
        let (rt, s) = (runtime.clone(), settings.clone());
        blocking(move || {
            let db = Db::open(&s.database_url)?;
            lifecycle::project(&rt, &db, "v2", s.rebuild_batch_size, &mut |_, _| {})?;
            Ok(())
        })
        .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s = settings.clone();
        blocking(move || {
            let db = Db::open(&s.database_url)?;
            let status = lifecycle::status(&db, "v2")?;
            for p in &status.projectors {
                outln!(
                    "clone at {}, live at {}: in step",
                    p.checkpoint,
                    p.live_checkpoint.unwrap_or(0)
                );
            }
            Ok(())
        })
        .await?;

        step("8. replay promote v2: one transaction swaps the tables; the daemon hot-swaps to v2");
        let (rt, s) = (runtime.clone(), settings.clone());
        blocking(move || {
            let db = Db::open(&s.database_url)?;
            let promoted =
                lifecycle::promote(&rt, &db, "v2", &lifecycle::PromoteOptions::default())?;
            for t in &promoted.targets {
                outln!("promoted {} version {}", t.projector, t.version);
            }
            Ok(())
        })
        .await?;
        tokio::time::sleep(Duration::from_millis(700)).await;
        traffic_stop.store(true, Ordering::Relaxed);
        traffic.await.context("the traffic task failed")??;
        let s = settings.clone();
        blocking(move || {
            let db = Db::open(&s.database_url)?;
            for _ in 0..250 {
                let live = db.live_target("balance")?.context("balance is not live")?;
                if live.checkpoint == db.head()? {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let live = db.live_target("balance")?.context("balance is not live")?;
            outln!(
                "v{} serving, caught up at event {}: the new columns are filled",
                live.version,
                live.checkpoint
            );
            show_balances(&db, "balances")
        })
        .await?;
        let _ = stop_tx.send(());
        daemon.await.context("the daemon task failed")??;

        step("9. replay remove v2: the former v1 tables are dropped");
        let (rt, s) = (runtime.clone(), settings.clone());
        blocking(move || {
            let db = Db::open(&s.database_url)?;
            lifecycle::remove(&rt, &db, "v2", false)?;
            Ok(())
        })
        .await?;

        step("10. Check: a fresh rebuild of v2 from all events equals the live table, row for row");
        let (rt, s) = (runtime.clone(), settings.clone());
        let v2_again = component(&self.v2)?;
        blocking(move || verify(&rt, &s, v2_again)).await?;
        outln!();
        let inspect = if backend == Backend::MySql {
            "with mariadb (or mysql)".to_string()
        } else if server {
            "with psql".to_string()
        } else {
            format!("{} with sqlite3", self.file.display())
        };
        outln!(
            "done. Inspect {inspect}, or run the same steps with the CLI (examples/walkthrough.sh)."
        );
        Ok(())
    }
}

fn spawn_traffic(
    url: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::task::spawn_blocking(move || {
        let db = Db::open(&url)?;
        let mut rng = Lcg(7);
        let mut appended = 0;
        while !stop.load(Ordering::Relaxed) {
            db.append_events(&account_events(&mut rng, 5, false))?;
            appended += 5;
            std::thread::sleep(Duration::from_millis(10));
        }
        outln!("(traffic: {appended} events appended while the story ran)");
        Ok(())
    })
}

/// Refuses to run the demo on a PostgreSQL database that already holds an event store or
/// zdr's tables: the demo creates its own and would mix with them.
fn ensure_empty(url: &str) -> anyhow::Result<()> {
    let db = Db::open(url)?;
    if db.ensure_ready().is_ok() || db.object_exists("stored_events")? {
        bail!(
            "{url} already holds an event store or zdr tables; the demo needs an empty database \
             (for example: createdb zdr_demo, then --database-url postgres://…/zdr_demo; or \
             CREATE DATABASE zdr_demo, then --database-url mysql://…/zdr_demo)"
        );
    }
    Ok(())
}

fn verify(runtime: &Runtime, settings: &Settings, v2: Vec<u8>) -> anyhow::Result<()> {
    let db = Db::open(&settings.database_url)?;
    let spec = ComponentSpec {
        name: "balance".into(),
        source: "balance v2".into(),
        wasm: v2,
    };
    let _ = lifecycle::create(runtime, &db, "verify", &[spec])?;
    lifecycle::start(
        runtime,
        &db,
        "verify",
        settings.rebuild_batch_size,
        settings.rebuild_partitions,
        &mut |_, _| {},
    )?;
    // The same comparison `zdr replay diff verify` makes: live against the fresh rebuild.
    let diffs = lifecycle::diff(&db, "verify", &[], crate::diff::DEFAULT_SAMPLE)?;
    lifecycle::remove(runtime, &db, "verify", false)?;
    let tables: Vec<_> = diffs.iter().flat_map(|d| &d.tables).collect();
    for table in &tables {
        for line in table.lines("fresh rebuild") {
            outln!("{line}");
        }
    }
    let differing: i64 = tables
        .iter()
        .map(|t| t.only_in_live + t.only_in_replay + t.differing)
        .sum();
    let rows: i64 = tables.iter().map(|t| t.live_rows).sum();
    outln!("{rows} live rows, {differing} differing from the fresh fold");
    if !diffs.iter().all(|d| d.is_same()) {
        bail!("the live read model differs from a fresh rebuild");
    }
    Ok(())
}
