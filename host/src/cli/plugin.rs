//! `zdr plugin`: author projectors. `new` scaffolds one from a template, `build` runs its
//! manifest's build command and checks the result, `test` runs its manifest's test command,
//! `inspect` shows what a component is.
//! A hidden `bench-cache` measures cold compiles against warm loads from the compiled cache.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde::Serialize;

use super::output;
use super::{blocking, read_component, runtime};
use crate::config::Settings;
use crate::plugin::{self, Language};
use crate::runtime::Runtime;

/// The `zdr plugin` subcommands.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Scaffold a working projector in a new folder NAME (or --dir).
    New(New),
    /// Build the plugin in DIR (default: the current folder) as its zdr-plugin.toml says,
    /// and check the component it produced.
    Build(Build),
    /// Run the tests of the plugin in DIR (default: the current folder) with the `test`
    /// command of its zdr-plugin.toml.
    Test(Test),
    /// Show a component's name, version, tables, handled events, imports and exports, and
    /// whether it matches the host's world.
    Inspect(Inspect),
    /// Measure cold compiles against warm loads from the compiled-component cache.
    #[command(hide = true)]
    BenchCache(BenchCache),
}

impl PluginCommand {
    /// Runs the subcommand.
    ///
    /// # Errors
    /// What the plugin library or the runtime failed with, with the file or folder named.
    pub async fn run(self, settings: Settings) -> anyhow::Result<()> {
        match self {
            PluginCommand::New(cmd) => cmd.run(),
            PluginCommand::Build(cmd) => cmd.run(settings).await,
            PluginCommand::Test(cmd) => cmd.run().await,
            PluginCommand::Inspect(cmd) => cmd.run(settings).await,
            PluginCommand::BenchCache(cmd) => cmd.run(settings).await,
        }
    }
}

/// `zdr plugin new NAME --lang rust|js|python`.
#[derive(Debug, Args)]
pub struct New {
    /// The projector's name: lowercase letters, digits, '_' or '-', starting with a letter.
    name: String,
    /// The language of the template.
    #[arg(long, value_enum)]
    lang: Language,
    /// The folder to create (default: ./NAME).
    #[arg(long)]
    dir: Option<PathBuf>,
}

impl New {
    fn run(self) -> anyhow::Result<()> {
        let dir = self.dir.unwrap_or_else(|| PathBuf::from(&self.name));
        let done = plugin::scaffold(&self.name, self.lang, &dir)?;
        outln!(
            "created {} projector {} in {}",
            self.lang,
            self.name,
            done.dir.display()
        );
        for file in &done.files {
            outln!("  {file}");
        }
        outln!(
            "next: zdr plugin test {0}, zdr plugin build {0}, then zdr projector deploy {1} <the output it prints>",
            done.dir.display(),
            self.name
        );
        Ok(())
    }
}

/// `zdr plugin build [DIR]`.
#[derive(Debug, Args)]
pub struct Build {
    /// The plugin's folder, holding zdr-plugin.toml.
    #[arg(default_value = ".")]
    dir: PathBuf,
}

impl Build {
    async fn run(self, settings: Settings) -> anyhow::Result<()> {
        let runtime = runtime(&settings)?;
        let dir = self.dir;
        let built = blocking(move || Ok(plugin::build(&runtime, &dir)?)).await?;
        outln!(
            "built {} version {} ({}): {}",
            built.description.name,
            built.description.version,
            built.manifest.language,
            built.output.display()
        );
        Ok(())
    }
}

/// `zdr plugin test [DIR]`.
#[derive(Debug, Args)]
pub struct Test {
    /// The plugin's folder, holding zdr-plugin.toml.
    #[arg(default_value = ".")]
    dir: PathBuf,
}

impl Test {
    async fn run(self) -> anyhow::Result<()> {
        let dir = self.dir;
        let (manifest, command) = blocking(move || Ok(plugin::test(&dir)?)).await?;
        outln!("tested {}: `{command}` passed", manifest.name);
        Ok(())
    }
}

/// `zdr plugin inspect FILE.wasm`.
#[derive(Debug, Args)]
pub struct Inspect {
    /// The component file.
    file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

impl Inspect {
    async fn run(self, settings: Settings) -> anyhow::Result<()> {
        let wasm = read_component(&self.file)?;
        let runtime = runtime(&settings)?;
        let file = self.file.clone();
        let inspection = blocking(move || {
            plugin::inspect(&runtime, &wasm)
                .with_context(|| format!("cannot inspect {}", file.display()))
        })
        .await?;
        if self.json {
            return output::print_json(&inspection);
        }
        let or_unknown = |v: &Option<String>| v.clone().unwrap_or_else(|| "?".into());
        outln!(
            "file:     {} ({} bytes)",
            self.file.display(),
            inspection.bytes
        );
        outln!("name:     {}", or_unknown(&inspection.name));
        outln!("version:  {}", or_unknown(&inspection.version));
        let contract = inspection
            .contract
            .as_deref()
            .unwrap_or("a version this zdr does not run");
        outln!("contract: {contract}");
        match &inspection.problem {
            None => outln!("world:    matches the projector world of {contract}"),
            Some(problem) => outln!("world:    does NOT match: {problem}"),
        }
        let handles = if inspection.handles.is_empty() && inspection.matches_world {
            "(every event)".to_string()
        } else {
            inspection.handles.join(", ")
        };
        outln!("handles:  {handles}");
        let split = if inspection.partition_by.is_empty() {
            "no (no partition-by: a replay runs whole)".to_string()
        } else {
            let keys: Vec<String> = inspection
                .partition_by
                .iter()
                .map(|key| format!("{}.{}", key.table, key.column))
                .collect();
            format!(
                "by aggregate ({}): replays may split history on PostgreSQL and MySQL",
                keys.join(", ")
            )
        };
        outln!("split:    {split}");
        outln!("tables:");
        for table in &inspection.tables {
            outln!("  {}", table.name);
            for ddl in &table.ddl {
                outln!("    {ddl}");
            }
        }
        outln!("imports:");
        for item in &inspection.imports {
            outln!("  {} ({})", item.name, item.kind);
        }
        outln!("exports:");
        for item in &inspection.exports {
            outln!("  {} ({})", item.name, item.kind);
        }
        Ok(())
    }
}

/// `zdr plugin bench-cache FILE...`: for each component, a cold compile into an empty cache,
/// then warm loads from it by fresh runtimes (as a new `zdr` process would do).
#[derive(Debug, Args)]
pub struct BenchCache {
    /// Component files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Warm loads per file; the median is reported.
    #[arg(long, default_value_t = 5)]
    warm_runs: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// One line of the cache benchmark.
#[derive(Debug, Serialize)]
struct CacheTiming {
    file: String,
    bytes: usize,
    cold_ms: f64,
    warm_ms: f64,
    speedup: f64,
}

impl BenchCache {
    async fn run(self, settings: Settings) -> anyhow::Result<()> {
        let warm_runs = self.warm_runs.max(1);
        let mut timings = Vec::new();
        for file in self.files {
            let wasm = read_component(&file)?;
            let settings = settings.clone();
            let timing = blocking(move || {
                // An empty cache of our own, so the first load is a real cold compile.
                let cache =
                    std::env::temp_dir().join(format!("zdr-bench-cache-{}", std::process::id()));
                let _ = std::fs::remove_dir_all(&cache);
                let fresh = || -> anyhow::Result<Runtime> {
                    Runtime::new(
                        settings.limits,
                        settings.projector_limits.clone(),
                        Some(cache.clone()),
                    )
                    .map_err(|e| anyhow::anyhow!("{e:#}"))
                };
                let measured = (|| {
                    let runtime = fresh()?;
                    let cold = time(|| runtime.load(&wasm).map(drop).map_err(Into::into))?;
                    let mut warm = (0..warm_runs)
                        .map(|_| {
                            // A fresh runtime, as a new zdr process would load it.
                            let runtime = fresh()?;
                            time(|| runtime.load(&wasm).map(drop).map_err(Into::into))
                        })
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    warm.sort();
                    anyhow::Ok((cold, warm[warm.len() / 2]))
                })();
                let _ = std::fs::remove_dir_all(&cache);
                let (cold, warm) = measured?;
                Ok(CacheTiming {
                    file: file.display().to_string(),
                    bytes: wasm.len(),
                    cold_ms: cold.as_secs_f64() * 1e3,
                    warm_ms: warm.as_secs_f64() * 1e3,
                    speedup: cold.as_secs_f64() / warm.as_secs_f64().max(1e-9),
                })
            })
            .await?;
            timings.push(timing);
        }
        if self.json {
            return output::print_json(&timings);
        }
        let rows: Vec<Vec<String>> = timings
            .iter()
            .map(|t| {
                vec![
                    t.file.clone(),
                    format!("{:.1} MB", t.bytes as f64 / 1e6),
                    format!("{:.0} ms", t.cold_ms),
                    format!("{:.1} ms", t.warm_ms),
                    format!("{:.0}x", t.speedup),
                ]
            })
            .collect();
        output::print_table(
            &["component", "size", "cold compile", "warm load", "speedup"],
            &rows,
        );
        Ok(())
    }
}

/// How long `f` took.
fn time(f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<Duration> {
    let started = Instant::now();
    f()?;
    Ok(started.elapsed())
}
