//! The harness of the end-to-end tests: the real `zdr` binary, the real guest components, a
//! temporary directory per test, and a reference fold written in plain Rust to compare the
//! read models with.
//!
//! - [`guests`] builds every guest component once per test process (`plugins/build-all.sh`).
//! - [`Backend`] says which database an [`Env`] runs on; [`both_backends!`] turns one scenario
//!   into a `sqlite`, a `postgres` and a `mariadb` test, so the same body proves the same thing
//!   on every backend (the name is older than the third).
//! - [`Env`] is one test's world: a temporary directory, the working directory of every `zdr`
//!   it runs (so a `zdr.toml` written there applies), and its own database: a SQLite file in
//!   that directory, or a PostgreSQL (MariaDB) database of its own, created on the server named
//!   by `ZDR_TEST_POSTGRES_URL` (`ZDR_TEST_MYSQL_URL`) and dropped with the env, so tests run in
//!   parallel. An unreachable server fails the test, never skips it.
//! - [`Daemon`] is a running `zdr serve`, stopped with SIGTERM when dropped.
//! - [`Generator`] makes deterministic bank events; [`fold_v1`] and [`fold_v2`] compute what
//!   the `balances` table of each projector version must hold after a list of events.
//! - [`Appender`] appends events from a thread, straight into `stored_events`, the way the
//!   application that owns the event store would.
//!
//! Values read back with [`Env::rows`] are rendered as text the same way on both backends
//! (NULL as `NULL`), so the folds compare with either.
//!
//! Tests never assert on durations: they wait for conditions with [`wait_until`].

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, params};
use serde_json::{Value, json};

/// How long a test waits for the daemon or a child process before it gives up: generous,
/// since debug builds on a loaded two-core machine are slow. Never a performance assertion.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// The columns of version 1's `balances`, in the order the folds produce them.
pub const V1_COLUMNS: &str = "account_uuid, name, balance";
/// The columns of version 2's `balances`, in the order the folds produce them.
pub const V2_COLUMNS: &str = "account_uuid, name, balance, transaction_count, last_activity";

/// The repository root (the host crate's parent directory).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the host crate lives inside the repository")
}

/// The shared cache of compiled components: one directory beside the build's own output, so
/// every test (and every run) reuses what an earlier one compiled.
pub fn compile_cache_dir() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_zdr"));
    // <target>/<profile>/zdr → <target>/zdr-test-cache
    bin.parent()
        .and_then(Path::parent)
        .map_or_else(|| repo_root().join("target"), Path::to_path_buf)
        .join("zdr-test-cache")
}

/// The built guest components, as path strings ready to be passed as arguments.
pub struct Guests {
    /// `balance` version 1.
    pub balance_v1: String,
    /// `balance` version 2 (transaction count, last activity).
    pub balance_v2: String,
    /// The hostile-SQL probe (`sql-probe`).
    pub sql_probe: String,
    /// The guest that faults on demand (`faulty`).
    pub faulty: String,
    /// `balance` version 99, whose promote always vetoes.
    pub veto: String,
    /// `balance` version 3: version 2's layout, but the accounts ending in `-00000` open with
    /// a balance of 1 (`balance-off`).
    pub balance_off: String,
    /// `balance` version 1 in JavaScript (`plugins/balance-js`).
    pub balance_js_v1: String,
    /// `balance` version 2 in JavaScript.
    pub balance_js_v2: String,
    /// `balance` version 1 in Python (`plugins/balance-py`).
    pub balance_py_v1: String,
    /// `balance` version 2 in Python.
    pub balance_py_v2: String,
    /// A JavaScript guest that loops forever on a `Loop` event (`tests/hostile/js-loop`).
    pub js_loop: String,
    /// A Python guest that allocates without bound on `Alloc` and raises on `Raise`
    /// (`tests/hostile/py-alloc`).
    /// `balance` version 1 built against the frozen `zdr:projector@0.1.0`
    /// (`tests/guests/balance-wit-0-1`).
    pub balance_wit_0_1: String,
    pub py_alloc: String,
}

/// Builds every guest component (once per test process) and returns their paths.
pub fn guests() -> &'static Guests {
    static GUESTS: OnceLock<Guests> = OnceLock::new();
    GUESTS.get_or_init(|| {
        build_guests_once_per_run();
        let path = built_component;
        Guests {
            balance_v1: path("plugins", "balance_v1.wasm"),
            balance_v2: path("plugins", "balance_v2.wasm"),
            sql_probe: path("tests/guests", "sql_probe.wasm"),
            faulty: path("tests/guests", "faulty.wasm"),
            veto: path("tests/guests", "veto.wasm"),
            balance_off: path("tests/guests", "balance_off.wasm"),
            balance_wit_0_1: path("tests/guests", "balance_wit_0_1.wasm"),
            balance_js_v1: built_file("plugins/target/js/balance_v1.wasm"),
            balance_js_v2: built_file("plugins/target/js/balance_v2.wasm"),
            balance_py_v1: built_file("plugins/target/py/balance_v1.wasm"),
            balance_py_v2: built_file("plugins/target/py/balance_v2.wasm"),
            js_loop: built_file("tests/hostile/target/js/js_loop.wasm"),
            py_alloc: built_file("tests/hostile/target/py/py_alloc.wasm"),
        }
    })
}

/// Runs `plugins/build-all.sh` once per test run. Within one test process the caller's
/// `OnceLock` sees to that; the processes of one `cargo nextest run` (one per test) take turns
/// on a lock file, and a stamp naming the run (`NEXTEST_RUN_ID`) tells the later ones that the
/// first already built everything.
fn build_guests_once_per_run() {
    let target = compile_cache_dir()
        .parent()
        .map_or_else(|| repo_root().join("target"), Path::to_path_buf);
    std::fs::create_dir_all(&target).expect("cannot create the target directory");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(target.join("zdr-guests.lock"))
        .expect("cannot open the guests' lock file");
    lock.lock().expect("cannot lock the guests' lock file");
    let stamp = target.join("zdr-guests.stamp");
    let run = std::env::var("NEXTEST_RUN_ID").ok();
    if run.is_some() && std::fs::read_to_string(&stamp).ok() == run {
        return;
    }
    let output = Command::new("bash")
        .arg("plugins/build-all.sh")
        .current_dir(repo_root())
        .output()
        .expect("cannot run bash plugins/build-all.sh");
    assert!(
        output.status.success(),
        "plugins/build-all.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if let Some(run) = run {
        std::fs::write(&stamp, run).expect("cannot write the guests' stamp");
    }
}

/// The path of `file`, a component that `plugins/build-all.sh` built in the guest workspace
/// `workspace` (relative to the repository root), checked to exist.
pub fn built_component(workspace: &str, file: &str) -> String {
    let path = repo_root()
        .join(workspace)
        .join("target/wasm32-wasip2/release")
        .join(file);
    assert!(
        path.is_file(),
        "build-all.sh did not produce {}",
        path.display()
    );
    path.to_str()
        .expect("the repository path is UTF-8")
        .to_string()
}

/// The path of `file` (relative to the repository root), a JavaScript or Python component
/// that `plugins/build-all.sh` built, checked to exist.
pub fn built_file(file: &str) -> String {
    let path = repo_root().join(file);
    assert!(
        path.is_file(),
        "build-all.sh did not produce {}",
        path.display()
    );
    path.to_str()
        .expect("the repository path is UTF-8")
        .to_string()
}

/// Where the text of a failed process goes in a panic message.
pub fn describe(args: &[&str], output: &Output) -> String {
    format!(
        "zdr {}\nexit: {}\n--- stdout\n{}\n--- stderr\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Which database a test's [`Env`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in the test's temporary directory.
    Sqlite,
    /// A database of its own on the PostgreSQL server named by `ZDR_TEST_POSTGRES_URL`.
    Postgres,
    /// A database of its own on the MariaDB (or MySQL) server named by `ZDR_TEST_MYSQL_URL`.
    Mariadb,
}

/// Turns scenarios into tests on every backend: for each `fn NAME(backend: Backend)` named,
/// a module `NAME` with the tests `NAME::sqlite`, `NAME::postgres` and `NAME::mariadb`, so the
/// same body proves the same thing on each (and `cargo test mariadb` runs one of them).
///
/// ```ignore
/// both_backends!(the_scenario);
///
/// /// What the scenario proves.
/// fn the_scenario(backend: Backend) {
///     let env = Env::new(backend);
///     // …
/// }
/// ```
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[test]
                fn sqlite() {
                    super::$name($crate::support::Backend::Sqlite);
                }

                #[test]
                fn postgres() {
                    super::$name($crate::support::Backend::Postgres);
                }

                #[test]
                fn mariadb() {
                    super::$name($crate::support::Backend::Mariadb);
                }
            }
        )+
    };
}
pub(crate) use both_backends;

/// The PostgreSQL server of the tests when `ZDR_TEST_POSTGRES_URL` is not set: the local one.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The URL of the PostgreSQL server the tests create their databases on (the database in
/// it is only used to connect).
pub fn postgres_server_url() -> String {
    std::env::var("ZDR_TEST_POSTGRES_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| DEFAULT_POSTGRES_URL.to_string())
}

/// Connects to `url`; panics with a message saying how to point the tests at a server.
pub fn postgres_connect(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls).unwrap_or_else(|e| {
        panic!(
            "cannot connect to PostgreSQL at {url}: {}\n\
             The PostgreSQL end-to-end tests need a server: start one, or set \
             ZDR_TEST_POSTGRES_URL (default {DEFAULT_POSTGRES_URL}). They fail, never skip.",
            pg_error(&e)
        )
    })
}

/// A PostgreSQL error with the server's message and SQLSTATE, not just "db error".
pub fn pg_error(e: &postgres::Error) -> String {
    match (e.as_db_error(), std::error::Error::source(e)) {
        (Some(db), _) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        (None, Some(source)) => format!("{e}: {source}"),
        (None, None) => e.to_string(),
    }
}

/// `url` with its database replaced by `name` (query parameters kept).
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority = base.find("://").map_or(0, |i| i + 3);
    let path = base[authority..]
        .find('/')
        .map_or(base.len(), |i| authority + i);
    let mut out = format!("{}/{name}", &base[..path]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// One env's database on the PostgreSQL server, dropped (its connections with it) when the
/// env is.
struct PgDatabase {
    server: String,
    name: String,
}

impl PgDatabase {
    /// Creates `zdr_e2e_<pid>_<n>` on the test server.
    fn create() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        static SWEPT: OnceLock<()> = OnceLock::new();
        let server = postgres_server_url();
        let mut admin = postgres_connect(&server);
        SWEPT.get_or_init(|| drop_abandoned_databases(&mut admin));
        let name = format!(
            "zdr_e2e_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        // template0: nobody is ever connected to it, so parallel creates do not collide; the
        // encoding is UTF-8 whatever the server's default, as the holder names need.
        admin
            .batch_execute(&format!(
                "CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8'"
            ))
            .unwrap_or_else(|e| panic!("cannot create database {name}: {}", pg_error(&e)));
        Self { server, name }
    }

    /// A URL of this database.
    fn url(&self) -> String {
        with_database(&self.server, &self.name)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // Best effort: failing here must not hide the test's own failure; a database left
        // behind is dropped by the next run's sweep.
        if let Ok(mut admin) = postgres::Client::connect(&self.server, postgres::NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// Drops the test databases of test processes that no longer run (killed before their
/// envs were dropped).
fn drop_abandoned_databases(admin: &mut postgres::Client) {
    let Ok(rows) = admin.query(
        "SELECT datname FROM pg_database WHERE datname LIKE 'zdr\\_e2e\\_%'",
        &[],
    ) else {
        return;
    };
    for row in rows {
        let name: String = row.get(0);
        let pid = name.split('_').nth(2).unwrap_or_default();
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            let _ =
                admin.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"));
        }
    }
}

/// The MariaDB server of the tests when `ZDR_TEST_MYSQL_URL` is not set: the local one.
pub const DEFAULT_MYSQL_URL: &str = "mysql://root@127.0.0.1:3306/test";

/// The URL of the MariaDB server the tests create their databases on.
pub fn mysql_server_url() -> String {
    std::env::var("ZDR_TEST_MYSQL_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| DEFAULT_MYSQL_URL.to_string())
}

/// A blocking MariaDB connection for the tests, in the session mode zdr uses (so `"x"` names
/// a column and `||` concatenates in the tests' SQL as in zdr's).
pub struct MyClient {
    rt: tokio::runtime::Runtime,
    conn: sqlx::MySqlConnection,
}

impl MyClient {
    /// Connects to `url`; panics with a message saying how to point the tests at a server.
    pub fn connect(url: &str) -> Self {
        Self::try_connect(url).unwrap_or_else(|e| {
            panic!(
                "cannot connect to MariaDB at {url}: {e}\n\
                 The MariaDB end-to-end tests need a server: start one, or set \
                 ZDR_TEST_MYSQL_URL (default {DEFAULT_MYSQL_URL}). They fail, never skip."
            )
        })
    }

    /// Connects to `url`, or says why not.
    pub fn try_connect(url: &str) -> Result<Self, String> {
        use sqlx::Connection;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let conn = rt
            .block_on(sqlx::MySqlConnection::connect(url))
            .map_err(|e| e.to_string())?;
        let mut client = Self { rt, conn };
        client.execute(&format!(
            "SET SESSION sql_mode = '{}', time_zone = '+00:00'",
            zdr::sandbox::SESSION_SQL_MODE
        ))?;
        Ok(client)
    }

    /// Runs statements (several may be separated by `;`).
    pub fn execute(&mut self, sql: &str) -> Result<(), String> {
        self.rt
            .block_on(sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string())).execute(&mut self.conn))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// The rows of a query, every value in MariaDB's text form, NULL as `NULL`.
    pub fn rows(&mut self, sql: &str) -> Result<Vec<Vec<String>>, String> {
        use sqlx::{Decode, Row, ValueRef};
        let rows = self
            .rt
            .block_on(sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string())).fetch_all(&mut self.conn))
            .map_err(|e| e.to_string())?;
        Ok(rows
            .iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| match row.try_get_raw(i) {
                        Ok(raw) if raw.is_null() => "NULL".to_string(),
                        // The text protocol sends every value as its text.
                        Ok(raw) => <Vec<u8> as Decode<sqlx::MySql>>::decode(raw)
                            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                            .unwrap_or_else(|e| format!("<{e}>")),
                        Err(e) => format!("<{e}>"),
                    })
                    .collect()
            })
            .collect())
    }
}

/// The suffix zdr gives the databases of a MariaDB env's replays and builds.
pub fn mariadb_owner(database: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(database.as_bytes())[..4])
}

/// One env's database on the MariaDB server, dropped with the databases of its targets when
/// the env is.
struct MyDatabase {
    server: String,
    name: String,
}

impl MyDatabase {
    /// Creates `zdr_e2e_<pid>_<n>` on the test server.
    fn create() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        static SWEPT: OnceLock<()> = OnceLock::new();
        let server = mysql_server_url();
        let mut admin = MyClient::connect(&server);
        SWEPT.get_or_init(|| drop_abandoned_mariadb_databases(&mut admin));
        let name = format!(
            "zdr_e2e_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        admin
            .execute(&format!(
                "CREATE DATABASE \"{name}\" CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
            ))
            .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
        Self { server, name }
    }

    fn url(&self) -> String {
        with_database(&self.server, &self.name)
    }
}

/// Drops database `name` and those of its targets (`zdr_r_…_<owner>` and the like).
fn drop_mariadb_database(admin: &mut MyClient, name: &str) {
    let owner = mariadb_owner(name);
    let derived = admin
        .rows(&format!(
            "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 'zdr%\\_{owner}'"
        ))
        .unwrap_or_default();
    for row in derived
        .iter()
        .chain(std::iter::once(&vec![name.to_string()]))
    {
        let _ = admin.execute(&format!("DROP DATABASE IF EXISTS \"{}\"", row[0]));
    }
}

impl Drop for MyDatabase {
    fn drop(&mut self) {
        if let Ok(mut admin) = MyClient::try_connect(&self.server) {
            drop_mariadb_database(&mut admin, &self.name);
        }
    }
}

/// Drops the MariaDB test databases of test processes that no longer run.
fn drop_abandoned_mariadb_databases(admin: &mut MyClient) {
    let Ok(rows) = admin.rows(
        "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 'zdr\\_e2e\\_%'",
    ) else {
        return;
    };
    for row in rows {
        let name = &row[0];
        let pid = name.split('_').nth(2).unwrap_or_default();
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            drop_mariadb_database(admin, name);
        }
    }
}

/// A test's database, kept for its `Drop`.
enum ServerDatabase {
    Postgres(#[allow(dead_code)] PgDatabase),
    Mariadb(#[allow(dead_code)] MyDatabase),
}

/// One test's world: a temporary directory, the working directory of every `zdr` the test
/// runs, and a database of its own on the test's backend.
pub struct Env {
    dir: tempfile::TempDir,
    backend: Backend,
    url: String,
    files: AtomicUsize,
    /// Kept for its `Drop`: a server env's database lives as long as the env.
    _database: Option<ServerDatabase>,
}

impl Env {
    /// A fresh directory and an initialised database on `backend`.
    pub fn new(backend: Backend) -> Self {
        let env = Self::uninitialised(backend);
        let out = env.ok(&["init"]);
        assert!(
            out.contains("initialised"),
            "unexpected `zdr init` output: {out}"
        );
        env
    }

    /// A fresh directory and an empty database on `backend`, without running `zdr init`.
    pub fn uninitialised(backend: Backend) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("zdr-e2e-")
            .tempdir()
            .expect("cannot create a temporary directory");
        let (url, database) = match backend {
            Backend::Sqlite => (
                format!("sqlite://{}", dir.path().join("zdr.db").display()),
                None,
            ),
            Backend::Postgres => {
                let db = PgDatabase::create();
                (db.url(), Some(ServerDatabase::Postgres(db)))
            }
            Backend::Mariadb => {
                let db = MyDatabase::create();
                (db.url(), Some(ServerDatabase::Mariadb(db)))
            }
        };
        Self {
            dir,
            backend,
            url,
            files: AtomicUsize::new(0),
            _database: database,
        }
    }

    /// The backend this env runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The database URL every `zdr` of this env gets.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The SQLite file (SQLite envs only).
    pub fn db_path(&self) -> PathBuf {
        assert_eq!(
            self.backend,
            Backend::Sqlite,
            "test bug: db_path() is for SQLite envs"
        );
        self.dir.path().join("zdr.db")
    }

    /// The physical name of table `table` of replay `key`'s clone, as SQL can name it.
    pub fn clone_table(&self, key: &str, table: &str) -> String {
        match self.backend {
            Backend::Sqlite => format!("zdr_r_{key}__{table}"),
            Backend::Postgres => format!("zdr_r_{key}.{table}"),
            Backend::Mariadb => format!("zdr_r_{key}_{}.{table}", self.owner()),
        }
    }

    /// The suffix of the databases of this MariaDB env's replays.
    fn owner(&self) -> String {
        mariadb_owner(self.url.rsplit('/').next().unwrap_or_default())
    }

    /// The database of this MariaDB env (MariaDB envs only).
    pub fn database_name(&self) -> String {
        self.url.rsplit('/').next().unwrap_or_default().to_string()
    }

    /// The physical name of table `table` kept for rollback by replay `key`'s promote.
    pub fn retired_table(&self, key: &str, table: &str) -> String {
        match self.backend {
            Backend::Sqlite => format!("zdr_p_{key}__{table}"),
            Backend::Postgres => format!("zdr_p_{key}.{table}"),
            Backend::Mariadb => format!("zdr_p_{key}_{}.{table}", self.owner()),
        }
    }

    /// Writes `zdr.toml` in the working directory of every `zdr` this env runs.
    pub fn write_config(&self, text: &str) {
        std::fs::write(self.dir().join("zdr.toml"), text).expect("cannot write zdr.toml");
    }

    /// A `zdr` command with this env's database, working directory and cache.
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_as(&self.url, args)
    }

    /// A `zdr` command with this env's working directory and cache on the database `url`
    /// (this env's database reached another way, e.g. as another PostgreSQL role).
    pub fn command_as(&self, url: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_zdr"));
        cmd.arg("--database-url")
            .arg(url)
            .args(args)
            .current_dir(self.dir())
            .env("ZDR_CACHE_DIR", compile_cache_dir())
            .env("NO_COLOR", "1")
            .env_remove("ZDR_DATABASE_URL")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `zdr ARGS` to completion.
    pub fn zdr(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .expect("cannot run the zdr binary")
    }

    /// Runs `zdr ARGS`, asserts it succeeded and returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.zdr(args);
        assert!(
            output.status.success(),
            "expected success:\n{}",
            describe(args, &output)
        );
        String::from_utf8(output.stdout).expect("stdout is UTF-8")
    }

    /// Runs `zdr ARGS`, asserts it failed cleanly (an exit code, not a panic) and returns
    /// its stderr.
    pub fn fail(&self, args: &[&str]) -> String {
        let output = self.zdr(args);
        assert!(
            !output.status.success(),
            "expected failure:\n{}",
            describe(args, &output)
        );
        assert!(
            output.status.code().is_some(),
            "killed by a signal:\n{}",
            describe(args, &output)
        );
        let stderr = String::from_utf8(output.stderr.clone()).expect("stderr is UTF-8");
        // A guest's own panic message is relayed to the log tagged with its stream; only an
        // untagged one is the host's.
        let host_panic = stderr
            .lines()
            .any(|l| l.contains("panicked") && !l.contains("stream="));
        assert!(!host_panic, "zdr panicked:\n{}", describe(args, &output));
        assert!(
            stderr.contains("error"),
            "no error message:\n{}",
            describe(args, &output)
        );
        stderr
    }

    /// Runs `zdr ARGS` (which must include `--json`) and parses its stdout.
    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("zdr {} printed invalid JSON ({e}):\n{out}", args.join(" ")))
    }

    /// `replay show KEY --json`.
    pub fn show(&self, key: &str) -> Value {
        self.json(&["replay", "show", key, "--json"])
    }

    /// The entry of `projector list --json` for `name`.
    pub fn projector(&self, name: &str) -> Value {
        let list = self.json(&["projector", "list", "--json"]);
        list.as_array()
            .expect("projector list --json prints an array")
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("projector {name} is not in `projector list`: {list:#}"))
    }

    /// Deploys a projector and checks the CLI said so.
    pub fn deploy(&self, name: &str, file: &str) {
        let out = self.ok(&["projector", "deploy", name, file]);
        assert!(
            out.contains(&format!("deployed {name}")),
            "unexpected deploy output: {out}"
        );
    }

    /// `replay create KEY --projector balance=FILE`; returns its stdout.
    pub fn create_balance_replay(&self, key: &str, file: &str) -> String {
        self.ok(&[
            "replay",
            "create",
            key,
            "--projector",
            &format!("balance={file}"),
        ])
    }

    /// Writes `events` to a JSONL file and imports it with `zdr events import`.
    pub fn import(&self, events: &[NewEvent]) {
        let n = self.files.fetch_add(1, Ordering::Relaxed);
        let path = self.dir().join(format!("events-{n}.jsonl"));
        let mut text = String::new();
        for event in events {
            text.push_str(&event.jsonl());
            text.push('\n');
        }
        std::fs::write(&path, text).expect("cannot write the JSONL file");
        let out = self.ok(&["events", "import", path.to_str().expect("UTF-8 path")]);
        assert_eq!(
            out.trim(),
            format!("imported {} event(s)", events.len()),
            "unexpected import output"
        );
    }

    /// Appends one event with `zdr events append` and returns the id it printed.
    pub fn append(&self, event: &NewEvent) -> i64 {
        let properties = event.properties.to_string();
        let mut args = vec![
            "events",
            "append",
            "--class",
            &event.class,
            "--properties",
            &properties,
        ];
        if let Some(aggregate) = &event.aggregate {
            args.extend(["--aggregate", aggregate]);
        }
        let out = self.ok(&args);
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("`events append` printed {out:?}, not an id"))
    }

    /// Starts `zdr serve --poll-interval-ms 20`, its log in the temporary directory.
    pub fn serve(&self) -> Daemon {
        self.serve_with_log("serve.log")
    }

    /// Starts `zdr serve --poll-interval-ms 20`, its log in `log` in the temporary directory.
    pub fn serve_with_log(&self, log: &str) -> Daemon {
        self.serve_as(&self.url, log)
    }

    /// Starts `zdr serve --poll-interval-ms 20` on the database `url`, its log in `log` in the
    /// temporary directory.
    pub fn serve_as(&self, url: &str, log: &str) -> Daemon {
        let log = self.dir().join(log);
        let file = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .expect("cannot create the serve log");
        let child = self
            .command_as(url, &["serve", "--poll-interval-ms", "20"])
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("cannot spawn zdr serve");
        Daemon {
            child: Some(child),
            log,
        }
    }

    /// A read-only connection to the SQLite database, the way a reader of the read models
    /// has one (SQLite envs only).
    pub fn read(&self) -> Connection {
        let conn = Connection::open_with_flags(self.db_path(), OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("cannot open the database read-only");
        conn.busy_timeout(Duration::from_secs(30))
            .expect("busy_timeout");
        conn
    }

    /// A new connection to the PostgreSQL database (PostgreSQL envs only).
    pub fn postgres(&self) -> postgres::Client {
        assert_eq!(
            self.backend,
            Backend::Postgres,
            "test bug: postgres() is for PostgreSQL envs"
        );
        postgres_connect(&self.url)
    }

    /// A new connection to the MariaDB database (MariaDB envs only).
    pub fn mariadb(&self) -> MyClient {
        assert_eq!(
            self.backend,
            Backend::Mariadb,
            "test bug: mariadb() is for MariaDB envs"
        );
        MyClient::connect(&self.url)
    }

    /// Rows of a query, every value rendered as text (NULL as `NULL`).
    pub fn rows(&self, sql: &str) -> Vec<Vec<String>> {
        self.try_rows(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Rows of a query, or the database's error message.
    pub fn try_rows(&self, sql: &str) -> Result<Vec<Vec<String>>, String> {
        match self.backend {
            Backend::Sqlite => query_rows(&self.read(), sql).map_err(|e| e.to_string()),
            Backend::Postgres => pg_rows(&mut self.postgres(), sql),
            Backend::Mariadb => self.mariadb().rows(sql),
        }
    }

    /// Runs statements that change the database, the way an operator with a SQL shell would.
    pub fn execute(&self, sql: &str) {
        match self.backend {
            Backend::Sqlite => Connection::open(self.db_path())
                .and_then(|conn| conn.execute_batch(sql))
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
            Backend::Postgres => self
                .postgres()
                .batch_execute(sql)
                .unwrap_or_else(|e| panic!("{sql}: {}", pg_error(&e))),
            Backend::Mariadb => self
                .mariadb()
                .execute(sql)
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
        }
    }

    /// Runs `read` in one read transaction: every query it makes sees the same snapshot.
    pub fn read_consistently<T>(&self, read: impl FnOnce(&mut dyn Query) -> T) -> T {
        match self.backend {
            Backend::Sqlite => {
                let mut conn = self.read();
                let mut tx = conn.transaction().expect("a read transaction");
                let out = read(&mut tx);
                tx.commit().expect("ending the read transaction");
                out
            }
            Backend::Postgres => {
                let mut client = self.postgres();
                let mut tx = client
                    .build_transaction()
                    .isolation_level(postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .expect("a read transaction");
                let out = read(&mut tx);
                tx.commit().expect("ending the read transaction");
                out
            }
            Backend::Mariadb => {
                let mut client = self.mariadb();
                client
                    .execute(
                        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ; \
                         START TRANSACTION WITH CONSISTENT SNAPSHOT",
                    )
                    .expect("a read transaction");
                let out = read(&mut client);
                client
                    .execute("COMMIT")
                    .expect("ending the read transaction");
                out
            }
        }
    }

    /// The first column of a query's rows, as integers (event ids).
    pub fn ids(&self, sql: &str) -> Vec<i64> {
        self.rows(sql)
            .iter()
            .map(|r| r[0].parse().expect("an integer id"))
            .collect()
    }

    /// The single integer a query returns.
    pub fn scalar(&self, sql: &str) -> i64 {
        let rows = self.rows(sql);
        let cell = rows
            .first()
            .and_then(|r| r.first())
            .unwrap_or_else(|| panic!("{sql}: no value"));
        cell.parse()
            .unwrap_or_else(|_| panic!("{sql}: {cell:?} is not an integer"))
    }

    /// Whether a table of this name exists: `name` or, on PostgreSQL, `schema.name` (an
    /// unqualified name is looked for in `public`).
    pub fn table_exists(&self, name: &str) -> bool {
        match self.backend {
            Backend::Sqlite => {
                self.read()
                    .query_row(
                        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
                        [name],
                        |r| r.get::<_, i64>(0),
                    )
                    .expect("reading sqlite_master")
                    > 0
            }
            Backend::Postgres => {
                let (schema, table) = name.split_once('.').unwrap_or(("public", name));
                let count: i64 = self
                    .postgres()
                    .query_one(
                        "SELECT COUNT(*) FROM pg_tables WHERE schemaname = $1 AND tablename = $2",
                        &[&schema, &table],
                    )
                    .map(|r| r.get(0))
                    .unwrap_or_else(|e| panic!("reading pg_tables: {}", pg_error(&e)));
                count > 0
            }
            Backend::Mariadb => {
                let database = self.database_name();
                let (schema, table) = name.split_once('.').unwrap_or((&database, name));
                self.scalar(&format!(
                    "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = '{schema}' \
                     AND table_name = '{table}'"
                )) > 0
            }
        }
    }

    /// Every schema object outside the system catalogs, as `type name`: on SQLite every
    /// table, index, view and trigger; on PostgreSQL also schemas, sequences and functions,
    /// named `schema.name`.
    pub fn schema_objects(&self) -> Vec<String> {
        let sql = match self.backend {
            Backend::Sqlite => "SELECT type || ' ' || name FROM sqlite_master ORDER BY type, name",
            Backend::Postgres => PG_SCHEMA_OBJECTS,
            Backend::Mariadb => {
                let sql = MY_SCHEMA_OBJECTS
                    .replace("{db}", &self.database_name())
                    .replace("{owner}", &self.owner());
                return self
                    .rows(&sql)
                    .into_iter()
                    .map(|mut r| r.remove(0))
                    .collect();
            }
        };
        self.rows(sql)
            .into_iter()
            .map(|mut r| r.remove(0))
            .collect()
    }

    /// The id of the last stored event (0 when empty).
    pub fn head(&self) -> i64 {
        self.scalar("SELECT COALESCE(MAX(id), 0) FROM stored_events")
    }

    /// Every stored event, in id order, as the projectors see them.
    pub fn stored_events(&self) -> Vec<StoredEvent> {
        self.stored_events_where("TRUE")
    }

    /// The stored events that match the SQL condition `condition`, in id order.
    pub fn stored_events_where(&self, condition: &str) -> Vec<StoredEvent> {
        match self.backend {
            Backend::Sqlite => {
                let conn = self.read();
                let mut stmt = conn
                    .prepare(
                        &format!("SELECT id, aggregate_uuid, event_class, event_properties, CAST(created_at AS TEXT) \
                         FROM stored_events WHERE {condition} ORDER BY id"),
                    )
                    .expect("preparing the event read");
                stmt.query_map([], |r| {
                    Ok(StoredEvent {
                        id: r.get(0)?,
                        aggregate_uuid: r.get(1)?,
                        event_class: r.get(2)?,
                        properties: r.get(3)?,
                        created_at: r.get(4)?,
                    })
                })
                .expect("reading stored_events")
                .collect::<Result<_, _>>()
                .expect("reading stored_events")
            }
            Backend::Postgres => self
                .postgres()
                .query(
                    &format!(
                        "SELECT id, aggregate_uuid::text, event_class, event_properties::text, {PG_CREATED_AT} \
                         FROM stored_events WHERE {condition} ORDER BY id"
                    ),
                    &[],
                )
                .unwrap_or_else(|e| panic!("reading stored_events: {}", pg_error(&e)))
                .into_iter()
                .map(|r| StoredEvent {
                    id: r.get(0),
                    aggregate_uuid: r.get(1),
                    event_class: r.get(2),
                    properties: r.get(3),
                    created_at: r.get(4),
                })
                .collect(),
            Backend::Mariadb => self
                .rows(&format!(
                    "SELECT id, aggregate_uuid, event_class, event_properties, CAST(created_at AS CHAR) \
                     FROM stored_events WHERE {condition} ORDER BY id"
                ))
                .into_iter()
                .map(|r| StoredEvent {
                    id: r[0].parse().expect("an integer id"),
                    aggregate_uuid: (r[1] != "NULL").then(|| r[1].clone()),
                    event_class: r[2].clone(),
                    properties: r[3].clone(),
                    created_at: r[4].clone(),
                })
                .collect(),
        }
    }

    /// A `balances`-shaped table with version 1's columns, sorted like the folds.
    pub fn balances_v1(&self, table: &str) -> Vec<Vec<String>> {
        sorted(self.rows(&format!("SELECT {V1_COLUMNS} FROM {table}")))
    }

    /// A `balances`-shaped table with version 2's columns, sorted like the folds.
    pub fn balances_v2(&self, table: &str) -> Vec<Vec<String>> {
        sorted(self.rows(&format!("SELECT {V2_COLUMNS} FROM {table}")))
    }

    /// Waits until live projector `name` runs `version` and has applied every stored event,
    /// neither stopped nor stuck (`running` under a daemon, `unserved` without one).
    pub fn wait_live(&self, name: &str, version: &str) {
        wait_for(
            PATIENCE,
            &format!("{name} live at version {version} and caught up"),
            || {
                let head = self.head();
                let live = self.projector(name);
                let done = live["version"] == version
                    && live["checkpoint"] == head
                    && (live["status"] == "running" || live["status"] == "unserved");
                if done {
                    Ok(())
                } else {
                    Err(format!("head {head}, projector list: {live}"))
                }
            },
        );
    }

    /// Waits until every target of replay `key` has applied every stored event.
    pub fn wait_replay_caught_up(&self, key: &str) {
        wait_for(PATIENCE, &format!("replay {key} caught up"), || {
            let head = self.head();
            let show = self.show(key);
            let done = show["projectors"]
                .as_array()
                .is_some_and(|parts| parts.iter().all(|p| p["checkpoint"] == head));
            if done {
                Ok(())
            } else {
                Err(format!("head {head}, replay show: {show}"))
            }
        });
    }
}

/// Renders one SQLite value as text.
pub fn text(value: ValueRef<'_>) -> String {
    match value {
        ValueRef::Null => "NULL".to_string(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => f.to_string(),
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
        ValueRef::Blob(b) => format!(
            "x'{}'",
            b.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
    }
}

/// Runs a query on `conn`, every value rendered with [`text`].
pub fn query_rows(conn: &Connection, sql: &str) -> rusqlite::Result<Vec<Vec<String>>> {
    let mut stmt = conn.prepare(sql)?;
    let columns = stmt.column_count();
    let rows = stmt.query_map([], |r| {
        (0..columns).map(|i| r.get_ref(i).map(text)).collect()
    })?;
    rows.collect()
}

/// Runs a query on a PostgreSQL connection, every value in PostgreSQL's text form (which for
/// integers and text is the form [`text`] gives SQLite's), NULL as `NULL`.
///
/// # Errors
///
/// The server's message.
pub fn pg_rows(
    client: &mut impl postgres::GenericClient,
    sql: &str,
) -> Result<Vec<Vec<String>>, String> {
    let messages = client.simple_query(sql).map_err(|e| pg_error(&e))?;
    Ok(messages
        .into_iter()
        .filter_map(|m| match m {
            postgres::SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| {
                        row.get(i)
                            .map_or_else(|| "NULL".to_string(), str::to_string)
                    })
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

/// A read transaction on either backend ([`Env::read_consistently`]).
pub trait Query {
    /// The rows of `sql`, rendered like [`Env::rows`].
    ///
    /// # Errors
    ///
    /// The database's message.
    fn rows(&mut self, sql: &str) -> Result<Vec<Vec<String>>, String>;
}

impl Query for rusqlite::Transaction<'_> {
    fn rows(&mut self, sql: &str) -> Result<Vec<Vec<String>>, String> {
        query_rows(self, sql).map_err(|e| e.to_string())
    }
}

impl Query for MyClient {
    fn rows(&mut self, sql: &str) -> Result<Vec<Vec<String>>, String> {
        MyClient::rows(self, sql)
    }
}

impl Query for postgres::Transaction<'_> {
    fn rows(&mut self, sql: &str) -> Result<Vec<Vec<String>>, String> {
        pg_rows(self, sql)
    }
}

/// `rows` sorted (by their first column first): the order of the folds, whatever collation
/// the database sorts text with.
fn sorted(mut rows: Vec<Vec<String>>) -> Vec<Vec<String>> {
    rows.sort();
    rows
}

/// How `created_at` of a PostgreSQL `stored_events` row is read: the text a projector is
/// handed for it.
const PG_CREATED_AT: &str = "created_at::text";

/// Every object in the non-system schemas of a PostgreSQL database, as `type schema.name`
/// (schemas as `schema name`, triggers as `trigger schema.table.name`).
const PG_SCHEMA_OBJECTS: &str = "\
SELECT kind || ' ' || name FROM (
    SELECT 'schema' AS kind, n.nspname::text AS name FROM pg_namespace n
    UNION ALL
    SELECT CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'table' WHEN 'i' THEN 'index'
               WHEN 'I' THEN 'index' WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized-view'
               WHEN 'S' THEN 'sequence' WHEN 'f' THEN 'foreign-table' ELSE 'relation' END,
           n.nspname || '.' || c.relname
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'i', 'I', 'v', 'm', 'S', 'f')
    UNION ALL
    SELECT 'trigger', n.nspname || '.' || c.relname || '.' || t.tgname
    FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE NOT t.tgisinternal
    UNION ALL
    SELECT 'function', n.nspname || '.' || p.proname
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
) o
WHERE split_part(name, '.', 1) NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
  AND split_part(name, '.', 1) NOT LIKE 'pg\\_temp\\_%'
  AND split_part(name, '.', 1) NOT LIKE 'pg\\_toast\\_temp\\_%'
ORDER BY 1";

/// Every object of a MariaDB env (its database and the databases of its targets, named by
/// the `{owner}` suffix), as `type database.name`: databases, tables, views, indexes,
/// triggers and routines.
const MY_SCHEMA_OBJECTS: &str = "\
SELECT CONCAT(kind, ' ', name) FROM (
    SELECT 'schema' AS kind, schema_name AS name FROM information_schema.schemata
      WHERE schema_name = '{db}' OR schema_name LIKE 'zdr%\\_{owner}'
    UNION ALL
    SELECT CASE table_type WHEN 'VIEW' THEN 'view' ELSE 'table' END, CONCAT(table_schema, '.', table_name)
      FROM information_schema.tables WHERE table_schema = '{db}' OR table_schema LIKE 'zdr%\\_{owner}'
    UNION ALL
    SELECT DISTINCT 'index', CONCAT(table_schema, '.', table_name, '.', index_name)
      FROM information_schema.statistics WHERE table_schema = '{db}' OR table_schema LIKE 'zdr%\\_{owner}'
    UNION ALL
    SELECT 'trigger', CONCAT(trigger_schema, '.', trigger_name) FROM information_schema.triggers
      WHERE trigger_schema = '{db}' OR trigger_schema LIKE 'zdr%\\_{owner}'
    UNION ALL
    SELECT 'function', CONCAT(routine_schema, '.', routine_name) FROM information_schema.routines
      WHERE routine_schema = '{db}' OR routine_schema LIKE 'zdr%\\_{owner}'
) o ORDER BY 1";

/// Polls `condition` until it holds; panics with `what` when `timeout` passes first.
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    wait_for(timeout, what, || {
        if condition() {
            Ok(())
        } else {
            Err("not yet".to_string())
        }
    });
}

/// Polls `check` until it returns `Ok`; when `timeout` passes first, panics with `what` and
/// the last `Err`, which says what was seen instead.
pub fn wait_for(timeout: Duration, what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let started = Instant::now();
    loop {
        let seen = match check() {
            Ok(()) => return,
            Err(seen) => seen,
        };
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for: {what}; last seen: {seen}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `signal` (e.g. `TERM`, `KILL`) to a process.
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("cannot run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// Waits for a child with a deadline; kills it and panics when it does not exit in time.
pub fn wait_child(child: &mut Child, timeout: Duration, what: &str) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `zdr serve`. Dropping it sends SIGTERM and waits.
pub struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the daemon is running").id()
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics (with the log) if the daemon has exited.
    pub fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("the daemon was stopped");
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("zdr serve exited ({status}); its log:\n{}", self.log());
        }
    }

    /// Stops the daemon with SIGTERM, asserts it shut down cleanly and returns its log.
    pub fn stop(mut self) -> String {
        self.assert_running();
        let mut child = self.child.take().expect("the daemon is running");
        signal(child.id(), "TERM");
        let status = wait_child(&mut child, PATIENCE, "zdr serve after SIGTERM");
        let log = self.log();
        assert!(
            status.success(),
            "zdr serve did not exit cleanly on SIGTERM ({status}); its log:\n{log}"
        );
        assert!(
            log.contains("zdr serve stopped"),
            "no clean shutdown in the log:\n{log}"
        );
        log
    }

    /// Waits for the daemon to exit by itself and returns its exit status and log; panics
    /// (after killing it) when it is still running after `timeout`.
    pub fn wait_exit(mut self, timeout: Duration) -> (std::process::ExitStatus, String) {
        let started = Instant::now();
        loop {
            let child = self.child.as_mut().expect("the daemon is running");
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return (status, self.log());
            }
            assert!(
                started.elapsed() < timeout,
                "zdr serve was still running after {timeout:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the daemon with SIGKILL (a crash) and returns its log.
    pub fn crash(mut self) -> String {
        self.assert_running();
        let mut child = self.child.take().expect("the daemon is running");
        signal(child.id(), "KILL");
        let _ = wait_child(&mut child, PATIENCE, "zdr serve after SIGKILL");
        self.log()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if child.try_wait().ok().flatten().is_none() {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
                let started = Instant::now();
                while child.try_wait().ok().flatten().is_none()
                    && started.elapsed() < Duration::from_secs(10)
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ----- events and the reference fold -----------------------------------------------------------

/// An event to append.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The aggregate (account) uuid.
    pub aggregate: Option<String>,
    /// The event class.
    pub class: String,
    /// The payload.
    pub properties: Value,
}

impl NewEvent {
    /// An event of `class` for `aggregate`.
    pub fn new(class: &str, aggregate: Option<&str>, properties: Value) -> Self {
        Self {
            aggregate: aggregate.map(str::to_string),
            class: class.to_string(),
            properties,
        }
    }

    /// One line of `zdr events import`.
    pub fn jsonl(&self) -> String {
        json!({
            "aggregate_uuid": self.aggregate,
            "event_class": self.class,
            "event_properties": self.properties,
        })
        .to_string()
    }
}

/// A deterministic generator of bank events (splitmix64).
pub struct Generator {
    state: u64,
    seed: u64,
    accounts: Vec<String>,
}

/// Holder names, with quotes and non-ASCII letters so that text round-trips are tested too.
const NAMES: [&str; 8] = [
    "Ada",
    "Grace",
    "Zoë",
    "O'Brien",
    "Edsger \"E\"",
    "Радия",
    "Ken",
    "李",
];

impl Generator {
    /// A generator with no accounts yet.
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed,
            seed,
            accounts: Vec::new(),
        }
    }

    /// A generator of money events for accounts opened elsewhere.
    pub fn with_accounts(seed: u64, accounts: Vec<String>) -> Self {
        Self {
            state: seed,
            seed,
            accounts,
        }
    }

    /// A pseudo-random number below `below`.
    pub fn below(&mut self, below: u64) -> u64 {
        self.next(below)
    }

    fn next(&mut self, below: u64) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % below.max(1)
    }

    /// The accounts opened so far.
    pub fn accounts(&self) -> &[String] {
        &self.accounts
    }

    /// `AccountOpened` events for `n` new accounts.
    pub fn open_accounts(&mut self, n: usize) -> Vec<NewEvent> {
        (0..n)
            .map(|_| {
                let account = format!("acct-{:04}-{:05}", self.seed, self.accounts.len());
                let name = format!(
                    "{} #{}",
                    NAMES[self.next(NAMES.len() as u64) as usize],
                    self.accounts.len()
                );
                self.accounts.push(account.clone());
                NewEvent::new("AccountOpened", Some(&account), json!({ "name": name }))
            })
            .collect()
    }

    /// `n` money events on the opened accounts; some use the PHP class name with a namespace.
    pub fn money(&mut self, n: usize) -> Vec<NewEvent> {
        assert!(
            !self.accounts.is_empty(),
            "open accounts before moving money"
        );
        (0..n)
            .map(|_| {
                let index = self.next(self.accounts.len() as u64) as usize;
                let account = self.accounts[index].clone();
                let amount = 1 + self.next(500);
                let class = match self.next(6) {
                    0 | 1 => "MoneySubtracted",
                    2 => "App\\Events\\MoneyAdded",
                    _ => "MoneyAdded",
                };
                NewEvent::new(class, Some(&account), json!({ "amount": amount }))
            })
            .collect()
    }
}

/// A stored event as read back from `stored_events`.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// Position in the store.
    pub id: i64,
    /// The account.
    pub aggregate_uuid: Option<String>,
    /// The class.
    pub event_class: String,
    /// The payload, as stored.
    pub properties: String,
    /// The recording time, as stored.
    pub created_at: String,
}

impl StoredEvent {
    fn short_class(&self) -> &str {
        self.event_class
            .rsplit('\\')
            .next()
            .unwrap_or(&self.event_class)
    }

    /// Whether this is a `MoneyAdded` or `MoneySubtracted` event.
    pub fn is_money(&self) -> bool {
        matches!(self.short_class(), "MoneyAdded" | "MoneySubtracted")
    }
}

#[derive(Default)]
struct Account {
    name: String,
    balance: i64,
    transactions: i64,
    last_activity: String,
}

/// The balance projectors' semantics, folded over `events` in id order.
fn fold(events: &[StoredEvent]) -> BTreeMap<String, Account> {
    let mut accounts: BTreeMap<String, Account> = BTreeMap::new();
    for event in events {
        let class = event.short_class();
        if !matches!(class, "AccountOpened" | "MoneyAdded" | "MoneySubtracted") {
            continue;
        }
        let account = event
            .aggregate_uuid
            .clone()
            .expect("balance events carry an account");
        let properties: Value =
            serde_json::from_str(&event.properties).expect("stored properties are JSON");
        if class == "AccountOpened" {
            let name = properties["name"]
                .as_str()
                .expect("AccountOpened has a name")
                .to_string();
            let previous = accounts.insert(
                account.clone(),
                Account {
                    name,
                    last_activity: event.created_at.clone(),
                    ..Account::default()
                },
            );
            assert!(
                previous.is_none(),
                "test bug: account {account} opened twice"
            );
            continue;
        }
        let amount = properties["amount"]
            .as_i64()
            .expect("money events have an integer amount");
        let entry = accounts.get_mut(&account).unwrap_or_else(|| {
            panic!(
                "test bug: event {} moves money of unopened account {account}",
                event.id
            )
        });
        entry.balance += if class == "MoneyAdded" {
            amount
        } else {
            -amount
        };
        entry.transactions += 1;
        entry.last_activity = event.created_at.clone();
    }
    accounts
}

/// The `balances` rows version 1 must hold after `events` ([`V1_COLUMNS`], by account).
pub fn fold_v1(events: &[StoredEvent]) -> Vec<Vec<String>> {
    fold(events)
        .into_iter()
        .map(|(account, a)| vec![account, a.name, a.balance.to_string()])
        .collect()
}

/// The `balances` rows version 2 must hold after `events` ([`V2_COLUMNS`], by account).
pub fn fold_v2(events: &[StoredEvent]) -> Vec<Vec<String>> {
    fold(events)
        .into_iter()
        .map(|(account, a)| {
            vec![
                account,
                a.name,
                a.balance.to_string(),
                a.transactions.to_string(),
                a.last_activity,
            ]
        })
        .collect()
}

/// The events with ids up to and including `checkpoint`.
pub fn through(events: &[StoredEvent], checkpoint: i64) -> &[StoredEvent] {
    let end = events.partition_point(|e| e.id <= checkpoint);
    &events[..end]
}

/// Asserts two tables are equal, reporting the first differing rows rather than both tables.
#[track_caller]
pub fn assert_same_rows(actual: &[Vec<String>], expected: &[Vec<String>], what: &str) {
    if actual == expected {
        return;
    }
    let missing: Vec<_> = expected
        .iter()
        .filter(|r| !actual.contains(r))
        .take(5)
        .collect();
    let unexpected: Vec<_> = actual
        .iter()
        .filter(|r| !expected.contains(r))
        .take(5)
        .collect();
    panic!(
        "{what}: {} rows, expected {}\n  expected but missing (first 5): {missing:?}\n  present but not expected (first 5): {unexpected:?}",
        actual.len(),
        expected.len()
    );
}

// ----- a concurrent appender ---------------------------------------------------------------------

/// A thread appending money events straight into `stored_events`, three per transaction every
/// 10 ms (about 300 a second: enough to land in every step of a lifecycle, little enough that
/// a daemon on a loaded machine keeps up), until stopped.
pub struct Appender {
    stop: Arc<AtomicBool>,
    appended: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl Appender {
    /// Starts appending money events on `accounts` to the database of `env`.
    pub fn start(env: &Env, seed: u64, accounts: Vec<String>) -> Self {
        Self::spawn(env, seed, accounts, Duration::ZERO, None)
    }

    /// Starts appending one money event per transaction, each transaction held open for `hold`
    /// after its insert (its id drawn, not yet visible: a gap under the events others commit),
    /// the next begun at once, until stopped or `for_at_most` has passed.
    pub fn holding(
        env: &Env,
        seed: u64,
        accounts: Vec<String>,
        hold: Duration,
        for_at_most: Duration,
    ) -> Self {
        Self::spawn(env, seed, accounts, hold, Some(for_at_most))
    }

    /// Whether the thread stopped of itself (its time was up, or it died).
    pub fn finished(&self) -> bool {
        self.handle.as_ref().is_none_or(JoinHandle::is_finished)
    }

    fn spawn(
        env: &Env,
        seed: u64,
        accounts: Vec<String>,
        hold: Duration,
        for_at_most: Option<Duration>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let appended = Arc::new(AtomicU64::new(0));
        let store = match env.backend() {
            Backend::Sqlite => Store::Sqlite(env.db_path()),
            Backend::Postgres => Store::Postgres(env.url().to_string()),
            Backend::Mariadb => Store::Mariadb(env.url().to_string()),
        };
        let (thread_stop, thread_appended) = (stop.clone(), appended.clone());
        let until = for_at_most.map(|d| Instant::now() + d);
        let handle = std::thread::spawn(move || {
            let mut writer = store.open();
            let mut generator = Generator::with_accounts(seed, accounts);
            while !thread_stop.load(Ordering::Relaxed) && until.is_none_or(|u| Instant::now() < u) {
                if hold.is_zero() {
                    let events = generator.money(3);
                    writer.append(&events);
                    thread_appended.fetch_add(events.len() as u64, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(10));
                } else {
                    let events = generator.money(1);
                    writer.append_holding(&events, hold);
                    thread_appended.fetch_add(events.len() as u64, Ordering::SeqCst);
                }
            }
        });
        Self {
            stop,
            appended,
            handle: Some(handle),
        }
    }

    /// Events committed so far.
    pub fn appended(&self) -> u64 {
        self.appended.load(Ordering::SeqCst)
    }

    /// Waits until at least `more` further events are committed.
    pub fn wait_for(&self, more: u64) {
        let target = self.appended() + more;
        wait_until(
            PATIENCE,
            &format!("the appender to reach {target} events"),
            || {
                assert!(
                    !self.handle.as_ref().is_some_and(JoinHandle::is_finished),
                    "the appender thread died"
                );
                self.appended() >= target
            },
        );
    }

    /// Stops appending and returns how many events were committed.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take()
            && let Err(panic) = handle.join()
        {
            std::panic::resume_unwind(panic);
        }
        self.appended()
    }
}

impl Drop for Appender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// Where an appender writes: the event store of an env, on its backend.
enum Store {
    Sqlite(PathBuf),
    Postgres(String),
    Mariadb(String),
}

impl Store {
    /// A connection to the store.
    fn open(&self) -> Writer {
        match self {
            Self::Sqlite(path) => {
                let conn = Connection::open(path).expect("the appender cannot open the database");
                conn.busy_timeout(Duration::from_secs(60))
                    .expect("busy_timeout");
                Writer::Sqlite(conn)
            }
            Self::Postgres(url) => Writer::Postgres(postgres_connect(url)),
            Self::Mariadb(url) => Writer::Mariadb(MyClient::connect(url)),
        }
    }
}

/// A connection that appends events the way the application owning the store would.
pub enum Writer {
    /// A SQLite connection.
    Sqlite(Connection),
    /// A PostgreSQL connection.
    Postgres(postgres::Client),
    /// A MariaDB connection.
    Mariadb(MyClient),
}

/// Appends one event on MariaDB, its values spliced in by [`my_append`].
fn my_append(e: &NewEvent) -> String {
    let quote = |text: &str| format!("'{}'", text.replace('\'', "''"));
    format!(
        "INSERT INTO stored_events (aggregate_uuid, event_version, event_class, event_properties, \
         meta_data, created_at) VALUES ({}, 1, {}, {}, '{{}}', UTC_TIMESTAMP(6))",
        e.aggregate
            .as_deref()
            .map_or_else(|| "NULL".to_string(), quote),
        quote(&e.class),
        quote(&e.properties.to_string())
    )
}

/// Appends one event on PostgreSQL: `$1` aggregate, `$2` class, `$3` properties as JSON text.
pub const PG_APPEND: &str = "INSERT INTO stored_events (aggregate_uuid, event_version, event_class, \
     event_properties, meta_data, created_at) VALUES ($1, 1, $2, $3::text::jsonb, '{}', clock_timestamp())";

impl Writer {
    /// Appends `events` in one transaction.
    pub fn append(&mut self, events: &[NewEvent]) {
        self.append_holding(events, Duration::ZERO);
    }

    /// Appends `events` in one transaction, held open for `hold` after the inserts.
    pub fn append_holding(&mut self, events: &[NewEvent], hold: Duration) {
        let held = || {
            if !hold.is_zero() {
                std::thread::sleep(hold);
            }
        };
        match self {
            Self::Sqlite(conn) => {
                let tx = conn
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .expect("the appender cannot begin");
                for e in events {
                    tx.execute(
                        "INSERT INTO stored_events (aggregate_uuid, event_version, event_class, event_properties, meta_data, created_at) \
                         VALUES (?1, 1, ?2, ?3, '{}', strftime('%Y-%m-%d %H:%M:%f', 'now'))",
                        params![e.aggregate, e.class, e.properties.to_string()],
                    )
                    .expect("the appender cannot insert");
                }
                held();
                tx.commit().expect("the appender cannot commit");
            }
            Self::Postgres(client) => {
                let mut tx = client
                    .transaction()
                    .unwrap_or_else(|e| panic!("the appender cannot begin: {}", pg_error(&e)));
                for e in events {
                    tx.execute(
                        PG_APPEND,
                        &[&e.aggregate, &e.class, &e.properties.to_string()],
                    )
                    .unwrap_or_else(|e| panic!("the appender cannot insert: {}", pg_error(&e)));
                }
                held();
                tx.commit()
                    .unwrap_or_else(|e| panic!("the appender cannot commit: {}", pg_error(&e)));
            }
            Self::Mariadb(client) => {
                let inserts: Vec<String> = events.iter().map(my_append).collect();
                if hold.is_zero() {
                    client
                        .execute(&format!(
                            "START TRANSACTION; {}; COMMIT",
                            inserts.join("; ")
                        ))
                        .unwrap_or_else(|e| panic!("the appender cannot append: {e}"));
                } else {
                    client
                        .execute(&format!("START TRANSACTION; {}", inserts.join("; ")))
                        .unwrap_or_else(|e| panic!("the appender cannot append: {e}"));
                    held();
                    client
                        .execute("COMMIT")
                        .unwrap_or_else(|e| panic!("the appender cannot commit: {e}"));
                }
            }
        }
    }
}

/// What a [`Reader`] got from each of its queries: the rows, or the database's error.
pub type Reads = Vec<Result<Vec<Vec<String>>, String>>;

/// A reader of a read model: runs one query again and again on a connection of its own, as an
/// application would, until stopped, and keeps every answer.
pub struct Reader {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Reads>>,
}

impl Reader {
    /// Starts querying `sql` against the database of `env`.
    pub fn start(env: &Env, sql: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let backend = env.backend();
        let path = match backend {
            Backend::Sqlite => env.db_path(),
            Backend::Postgres | Backend::Mariadb => PathBuf::new(),
        };
        let (url, sql) = (env.url().to_string(), sql.to_string());
        let thread_stop = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut reads = Vec::new();
            match backend {
                Backend::Sqlite => {
                    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
                        .expect("cannot open the database read-only");
                    conn.busy_timeout(Duration::from_secs(30))
                        .expect("busy_timeout");
                    while !thread_stop.load(Ordering::Relaxed) {
                        reads.push(query_rows(&conn, &sql).map_err(|e| e.to_string()));
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
                Backend::Postgres => {
                    let mut client = postgres_connect(&url);
                    while !thread_stop.load(Ordering::Relaxed) {
                        reads.push(pg_rows(&mut client, &sql));
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
                Backend::Mariadb => {
                    let mut client = MyClient::connect(&url);
                    while !thread_stop.load(Ordering::Relaxed) {
                        reads.push(client.rows(&sql));
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
            }
            reads
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops querying and returns every answer, in order.
    pub fn stop(mut self) -> Reads {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(reads)) => reads,
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => Vec::new(),
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}
