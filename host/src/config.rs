//! Configuration: where the database is and the bounds zdr runs with.
//!
//! Precedence, highest first: command-line flags, environment (`ZDR_DATABASE_URL`), the
//! `zdr.toml` file in the working directory (or `--config FILE`), then the defaults here. The
//! file is strict: an unknown key is an error naming the file and the key, so a typo never
//! silently falls back to a default.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::projection::{DEFAULT_BATCH_SIZE, READ_CHUNK, REBUILD_BATCH_SIZE};
use crate::runtime::Limits;

/// The database used when nothing else is configured: an SQLite file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://zdr.db";

/// The most parts a replay may split history into: each is a connection and a projector
/// instance of its own.
pub const MAX_PARTITIONS: u32 = 64;

/// Parts of a split replay when none are configured: one per core, at most 8.
fn default_partitions() -> u32 {
    std::thread::available_parallelism()
        .map_or(1, |n| u32::try_from(n.get()).unwrap_or(1))
        .clamp(1, 8)
}

/// The configuration file looked for in the working directory.
pub const DEFAULT_CONFIG_FILE: &str = "zdr.toml";

/// Settings as resolved from flags, environment, file and defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The database URL.
    pub database_url: String,
    /// Events per transaction of a live batch (the daemon's).
    pub batch_size: usize,
    /// Events per transaction of a rebuild: deploy, `replay start`, `project`, `rollback`'s
    /// catch-up (each transaction also bounded by
    /// [`REBUILD_TIME_BUDGET`](crate::projection::REBUILD_TIME_BUDGET)). `batch_size` when only
    /// that is set.
    pub rebuild_batch_size: usize,
    /// Into how many parts a replay of a partitioned projector splits history on PostgreSQL
    /// and MySQL (`rebuild_partitions`; `--partitions` of `replay start` and `replay run`):
    /// by default the number of cores, at most [`MAX_PARTITIONS`].
    pub rebuild_partitions: u32,
    /// Whether a rebuild reads its next batch on a connection of its own while it applies one
    /// (`rebuild_read_ahead`, on by default; off saves that connection per replay worker).
    pub rebuild_read_ahead: bool,
    /// The most events a rebuild reads at a time (`rebuild_read_chunk`, default
    /// [`READ_CHUNK`]): a transaction of more takes several chunks, so the events held in
    /// memory stay bounded by this, not by `rebuild_batch_size`.
    pub rebuild_read_chunk: usize,
    /// Guest bounds.
    pub limits: Limits,
    /// Guest bounds of projectors configured apart (`[projectors.NAME]`), over the defaults.
    pub projector_limits: HashMap<String, Limits>,
    /// Where compiled components are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// How often an idle daemon worker looks for new events.
    pub poll_interval: Duration,
    /// What a live projector does when it fails on an event, unless configured apart.
    pub on_failure: FailurePolicy,
    /// The failure policies of projectors configured apart (`[projectors.NAME]`).
    pub projector_policies: HashMap<String, FailurePolicy>,
}

/// What the daemon does when a live projector fails on an event (`on_failure` in `zdr.toml`,
/// globally or per projector). A replay never follows it: a clone must be exact, so it stops
/// at the event whatever the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Stop at the event until an operator resumes or skips it (the default).
    #[default]
    Stop,
    /// Retry the event's batch, with exponential backoff, while it fails because of a database
    /// error that may pass (a serialization failure, a deadlock, a lock timeout), at most
    /// `attempts` times in a row; then stop.
    Retry {
        /// How many attempts in all before stopping.
        attempts: u32,
    },
    /// Record the event in the dead-letter table (`zdr projector parked`) with its error and
    /// go on with the next ones; `zdr projector retry` applies it later.
    Park,
}

/// How many attempts `on_failure = "retry"` makes unless `retry_attempts` says otherwise.
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 5;

impl std::fmt::Display for FailurePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailurePolicy::Stop => f.write_str("stop"),
            FailurePolicy::Retry { attempts } => write!(f, "retry ({attempts} attempts)"),
            FailurePolicy::Park => f.write_str("park"),
        }
    }
}

impl Settings {
    /// The failure policy of live projector `name`.
    pub fn failure_policy(&self, name: &str) -> FailurePolicy {
        self.projector_policies
            .get(name)
            .copied()
            .unwrap_or(self.on_failure)
    }
}

/// `on_failure` as written in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum OnFailure {
    Stop,
    Retry,
    Park,
}

/// The keys `zdr.toml` accepts.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    database_url: Option<String>,
    batch_size: Option<usize>,
    rebuild_batch_size: Option<usize>,
    rebuild_partitions: Option<u32>,
    rebuild_read_ahead: Option<bool>,
    rebuild_read_chunk: Option<usize>,
    call_timeout_ms: Option<u64>,
    memory_mib: Option<usize>,
    cache_dir: Option<PathBuf>,
    poll_interval_ms: Option<u64>,
    on_failure: Option<OnFailure>,
    retry_attempts: Option<u32>,
    #[serde(default)]
    projectors: BTreeMap<String, ProjectorConfig>,
}

/// `[projectors.NAME]`: bounds and failure policy for one projector, over the global ones.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectorConfig {
    call_timeout_ms: Option<u64>,
    memory_mib: Option<usize>,
    on_failure: Option<OnFailure>,
    retry_attempts: Option<u32>,
}

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file exists but cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or has an unknown key or a bad value.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the key.
        message: String,
    },
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
}

impl Settings {
    /// Resolves the settings. `explicit_file` is `--config`; without it `zdr.toml` is read when
    /// present. `database_url` is the flag-or-environment value from clap.
    ///
    /// # Errors
    /// An unreadable or invalid file, or out-of-range values (all problems reported at once).
    pub fn resolve(
        explicit_file: Option<&Path>,
        database_url: Option<String>,
    ) -> Result<Self, ConfigError> {
        let file = match explicit_file {
            Some(path) => Some(read_file(path)?),
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                Some(read_file(Path::new(DEFAULT_CONFIG_FILE))?)
            }
            None => None,
        }
        .unwrap_or_default();
        let mut problems = Vec::new();
        let batch_size = file.batch_size.unwrap_or(DEFAULT_BATCH_SIZE);
        if !(1..=100_000).contains(&batch_size) {
            problems.push(format!("batch_size must be 1 to 100000, got {batch_size}"));
        }
        // A `batch_size` the operator set applies to rebuilds too, unless they set that apart.
        let rebuild_batch_size = file
            .rebuild_batch_size
            .or(file.batch_size)
            .unwrap_or(REBUILD_BATCH_SIZE);
        if !(1..=100_000).contains(&rebuild_batch_size) {
            problems.push(format!(
                "rebuild_batch_size must be 1 to 100000, got {rebuild_batch_size}"
            ));
        }
        let rebuild_read_chunk = file.rebuild_read_chunk.unwrap_or(READ_CHUNK);
        if !(1..=100_000).contains(&rebuild_read_chunk) {
            problems.push(format!(
                "rebuild_read_chunk must be 1 to 100000, got {rebuild_read_chunk}"
            ));
        }
        let rebuild_partitions = file.rebuild_partitions.unwrap_or_else(default_partitions);
        if !(1..=MAX_PARTITIONS).contains(&rebuild_partitions) {
            problems.push(format!(
                "rebuild_partitions must be 1 to {MAX_PARTITIONS}, got {rebuild_partitions}"
            ));
        }
        let limits = limits_of(
            Limits::default(),
            file.call_timeout_ms,
            file.memory_mib,
            "",
            &mut problems,
        );
        let on_failure = policy_of(
            FailurePolicy::Stop,
            file.on_failure,
            file.retry_attempts,
            "",
            &mut problems,
        );
        let mut projector_policies = HashMap::new();
        let mut projector_limits = HashMap::new();
        for (name, p) in &file.projectors {
            if p.on_failure.is_some() || p.retry_attempts.is_some() {
                let scope = format!("projectors.{name}.");
                projector_policies.insert(
                    name.clone(),
                    policy_of(
                        on_failure,
                        p.on_failure,
                        p.retry_attempts,
                        &scope,
                        &mut problems,
                    ),
                );
            }
            let scope = format!("projectors.{name}.");
            projector_limits.insert(
                name.clone(),
                limits_of(
                    limits,
                    p.call_timeout_ms,
                    p.memory_mib,
                    &scope,
                    &mut problems,
                ),
            );
        }
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "invalid configuration: {}",
                problems.join("; ")
            )));
        }
        Ok(Settings {
            database_url: database_url
                .or(file.database_url)
                .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_string()),
            batch_size,
            rebuild_batch_size,
            rebuild_partitions,
            rebuild_read_ahead: file.rebuild_read_ahead.unwrap_or(true),
            rebuild_read_chunk,
            limits,
            projector_limits,
            cache_dir: file.cache_dir.or_else(default_cache_dir),
            poll_interval: Duration::from_millis(file.poll_interval_ms.unwrap_or(100).max(1)),
            on_failure,
            projector_policies,
        })
    }
}

/// Applies optional overrides to `base`, reporting out-of-range values under `scope`.
fn limits_of(
    base: Limits,
    call_timeout_ms: Option<u64>,
    memory_mib: Option<usize>,
    scope: &str,
    problems: &mut Vec<String>,
) -> Limits {
    let call_timeout = call_timeout_ms.map_or(base.call_timeout, Duration::from_millis);
    if call_timeout < Duration::from_millis(10) {
        problems.push(format!("{scope}call_timeout_ms must be at least 10"));
    }
    let memory_bytes = memory_mib.map_or(base.memory_bytes, |m| m.saturating_mul(1024 * 1024));
    if memory_bytes < 1024 * 1024 {
        problems.push(format!("{scope}memory_mib must be at least 1"));
    }
    Limits {
        call_timeout,
        memory_bytes,
    }
}

/// The failure policy `on_failure` and `retry_attempts` make over `base`, reporting a bad
/// combination under `scope`.
fn policy_of(
    base: FailurePolicy,
    on_failure: Option<OnFailure>,
    retry_attempts: Option<u32>,
    scope: &str,
    problems: &mut Vec<String>,
) -> FailurePolicy {
    let base_attempts = match base {
        FailurePolicy::Retry { attempts } => Some(attempts),
        _ => None,
    };
    let policy = match on_failure {
        None => base,
        Some(OnFailure::Stop) => FailurePolicy::Stop,
        Some(OnFailure::Park) => FailurePolicy::Park,
        Some(OnFailure::Retry) => FailurePolicy::Retry {
            attempts: base_attempts.unwrap_or(DEFAULT_RETRY_ATTEMPTS),
        },
    };
    match (policy, retry_attempts) {
        (_, None) => policy,
        (FailurePolicy::Retry { .. }, Some(attempts)) if (1..=100).contains(&attempts) => {
            FailurePolicy::Retry { attempts }
        }
        (FailurePolicy::Retry { .. }, Some(attempts)) => {
            problems.push(format!(
                "{scope}retry_attempts must be 1 to 100, got {attempts}"
            ));
            policy
        }
        (_, Some(_)) => {
            problems.push(format!(
                "{scope}retry_attempts needs {scope}on_failure = \"retry\""
            ));
            policy
        }
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|err| ConfigError::Parse {
        path: path.to_path_buf(),
        message: err.to_string(),
    })
}

/// `$ZDR_CACHE_DIR`, else `$XDG_CACHE_HOME/zdr`, else `$HOME/.cache/zdr`.
fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("ZDR_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(dir).join("zdr"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache").join("zdr"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_refused_with_the_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zdr.toml");
        std::fs::write(&path, "databse_url = \"sqlite://x.db\"\n").unwrap();
        let err = Settings::resolve(Some(&path), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("zdr.toml") && err.contains("databse_url"),
            "{err}"
        );
    }

    #[test]
    fn rebuilds_read_ahead_unless_told_not_to() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zdr.toml");
        let resolve = |text: &str| {
            std::fs::write(&path, text).unwrap();
            Settings::resolve(Some(&path), None)
        };
        assert!(resolve("").unwrap().rebuild_read_ahead);
        assert!(
            !resolve("rebuild_read_ahead = false\n")
                .unwrap()
                .rebuild_read_ahead
        );
        let err = resolve("rebuild_read_ahead = 1\n").unwrap_err().to_string();
        assert!(err.contains("rebuild_read_ahead"), "{err}");
    }

    #[test]
    fn rebuilds_take_larger_batches_unless_told_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zdr.toml");
        let resolve = |text: &str| {
            std::fs::write(&path, text).unwrap();
            Settings::resolve(Some(&path), None)
        };
        let s = resolve("").unwrap();
        assert_eq!(
            (s.batch_size, s.rebuild_batch_size),
            (DEFAULT_BATCH_SIZE, REBUILD_BATCH_SIZE)
        );
        let s = resolve("batch_size = 10\n").unwrap();
        assert_eq!((s.batch_size, s.rebuild_batch_size), (10, 10));
        let s = resolve("batch_size = 10\nrebuild_batch_size = 50000\n").unwrap();
        assert_eq!((s.batch_size, s.rebuild_batch_size), (10, 50_000));
        let err = resolve("rebuild_batch_size = 0\n").unwrap_err().to_string();
        assert!(
            err.contains("rebuild_batch_size must be 1 to 100000"),
            "{err}"
        );
    }

    #[test]
    fn rebuilds_read_a_bounded_chunk_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zdr.toml");
        let resolve = |text: &str| {
            std::fs::write(&path, text).unwrap();
            Settings::resolve(Some(&path), None)
        };
        assert_eq!(resolve("").unwrap().rebuild_read_chunk, READ_CHUNK);
        assert_eq!(
            resolve("rebuild_read_chunk = 500\n")
                .unwrap()
                .rebuild_read_chunk,
            500
        );
        for bad in ["0", "100001"] {
            let err = resolve(&format!("rebuild_read_chunk = {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("rebuild_read_chunk must be 1 to 100000"),
                "{err}"
            );
        }
    }

    #[test]
    fn flags_beat_the_file_and_every_problem_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zdr.toml");
        std::fs::write(
            &path,
            "database_url = \"sqlite://file.db\"\nbatch_size = 50\n",
        )
        .unwrap();
        let s = Settings::resolve(Some(&path), Some("sqlite://flag.db".into())).unwrap();
        assert_eq!(s.database_url, "sqlite://flag.db");
        assert_eq!(s.batch_size, 50);
        std::fs::write(
            &path,
            "batch_size = 0\ncall_timeout_ms = 1\n[projectors.x]\nmemory_mib = 0\n",
        )
        .unwrap();
        let err = Settings::resolve(Some(&path), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("batch_size") && err.contains("call_timeout_ms"),
            "{err}"
        );
        assert!(err.contains("projectors.x.memory_mib"), "{err}");
    }

    #[test]
    fn failure_policies_default_to_stop_and_are_set_globally_or_per_projector() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zdr.toml");
        std::fs::write(&path, "").unwrap();
        let s = Settings::resolve(Some(&path), None).unwrap();
        assert_eq!(s.failure_policy("balance"), FailurePolicy::Stop);
        std::fs::write(
            &path,
            "on_failure = \"retry\"\n[projectors.balance]\non_failure = \"park\"\n\
             [projectors.audit]\nretry_attempts = 9\n[projectors.other]\nmemory_mib = 5\n",
        )
        .unwrap();
        let s = Settings::resolve(Some(&path), None).unwrap();
        assert_eq!(s.failure_policy("balance"), FailurePolicy::Park);
        assert_eq!(
            s.failure_policy("audit"),
            FailurePolicy::Retry { attempts: 9 }
        );
        assert_eq!(
            s.failure_policy("other"),
            FailurePolicy::Retry {
                attempts: DEFAULT_RETRY_ATTEMPTS
            }
        );
        std::fs::write(&path, "on_failure = \"skip\"\n").unwrap();
        let err = Settings::resolve(Some(&path), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("on_failure") && err.contains("park"), "{err}");
        std::fs::write(&path, "[projectors.balance]\nretry_attempts = 3\n").unwrap();
        let err = Settings::resolve(Some(&path), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "projectors.balance.retry_attempts needs projectors.balance.on_failure = \"retry\""
            ),
            "{err}"
        );
    }

    #[test]
    fn projectors_get_their_own_limits_over_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zdr.toml");
        std::fs::write(
            &path,
            "memory_mib = 100\n[projectors.faulty]\ncall_timeout_ms = 300\n",
        )
        .unwrap();
        let s = Settings::resolve(Some(&path), None).unwrap();
        let faulty = s.projector_limits["faulty"];
        assert_eq!(faulty.call_timeout, Duration::from_millis(300));
        assert_eq!(faulty.memory_bytes, 100 * 1024 * 1024);
        assert_eq!(s.limits.call_timeout, Limits::default().call_timeout);
        std::fs::write(&path, "[projectors.faulty]\ntimeout = 3\n").unwrap();
        let err = Settings::resolve(Some(&path), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("timeout"), "{err}");
    }
}
