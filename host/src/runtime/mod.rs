//! The WebAssembly side of zdr: one wasmtime engine, projector components loaded and checked
//! against the `projector` world, and instances bound to one target each.
//!
//! Every call into a guest runs under an epoch deadline and a memory cap. A guest that traps,
//! times out or runs out of memory poisons its instance (wasmtime refuses to re-enter a trapped
//! component); the owner drops it and instantiates a fresh one. Nothing a guest does can take
//! the host down.

mod bindings;
mod cache;
mod host;
mod output;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::types::{ComponentExtern, ComponentItem};
use wasmtime::component::{Component, ComponentExportIndex, Linker, TypedFunc};
use wasmtime::{Config, Engine, Store};

use crate::backend::{Call, DbError, GuestConnection};
use crate::events::Event;
pub use crate::model::{Description, PartitionKey, TableDecl};
use bindings::{v0_1, v0_2};
pub use cache::ComponentCache;
use host::HostState;

/// How often the epoch advances: the granularity of call deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Bounds applied to every guest instance.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The longest a single call into the guest may run before it is interrupted.
    pub call_timeout: Duration,
    /// The most linear memory an instance may hold, in bytes.
    pub memory_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            // Generous for one event (a Rust guest takes microseconds), short enough that a
            // guest stuck in a loop stalls its projector for seconds, not forever.
            call_timeout: Duration::from_secs(5),
            // Interpreter-based guests (Python, JavaScript) need tens of MiB to start.
            memory_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Why loading a component failed. Each message says what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The bytes are not WebAssembly at all.
    #[error(
        "not a WebAssembly file (it does not start with the \\0asm magic); pass the .wasm file the build produced"
    )]
    NotWasm,
    /// A core module, not a component.
    #[error(
        "this is a core WebAssembly module, not a component; build for wasm32-wasip2 (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule,
    /// wasmtime could not compile it.
    #[error("the component does not compile: {0:#}")]
    Compile(wasmtime::Error),
    /// It imports something the host does not provide, or lacks an export of the world.
    #[error("the component does not implement the zdr:projector world: {0:#}")]
    World(wasmtime::Error),
    /// It targets a version of the contract this host does not run.
    #[error("the component targets a contract this zdr does not run: {0}")]
    Contract(String),
}

/// Why a call into a guest failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum GuestError {
    /// The guest returned an error value (a handled failure).
    #[error("the projector returned an error: {0}")]
    Returned(String),
    /// The guest trapped, panicked, timed out or ran out of memory; the instance is poisoned.
    #[error("the projector trapped: {0}")]
    Trap(String),
    /// `describe` returned something the host cannot use.
    #[error("invalid description: {0}")]
    InvalidDescription(String),
    /// One of the guest's statements failed and aborted the transaction (PostgreSQL), and the
    /// guest carried on as if it had not: the event failed all the same.
    #[error(
        "the projector carried on after a statement that failed and aborted the transaction: {0}"
    )]
    Swallowed(String),
}

/// The SHA-256 of a component's bytes, hex: its identity in the database and the cache.
pub fn content_hash(wasm: &[u8]) -> String {
    hex::encode(Sha256::digest(wasm))
}

/// The engine, the linker with the host's imports, and the compiled-component cache.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    cache: Option<ComponentCache>,
    limits: Limits,
    overrides: HashMap<String, Limits>,
    ticker_stop: Arc<AtomicBool>,
}

impl Runtime {
    /// Builds the engine (epoch interruption on), links WASI with nothing granted plus the
    /// zdr imports, and starts the epoch ticker thread.
    ///
    /// # Errors
    /// When wasmtime cannot be configured on this machine.
    pub fn new(
        limits: Limits,
        overrides: HashMap<String, Limits>,
        cache_dir: Option<PathBuf>,
    ) -> wasmtime::Result<Self> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        // Both versions of the contract: a component imports one or the other.
        v0_2::Projector::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)?;
        v0_1::Projector::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)?;
        let cache = cache_dir.map(|dir| ComponentCache::new(dir, &engine));
        let ticker_stop = Arc::new(AtomicBool::new(false));
        spawn_epoch_ticker(engine.clone(), ticker_stop.clone());
        Ok(Self {
            engine,
            linker,
            cache,
            limits,
            overrides,
            ticker_stop,
        })
    }

    /// The limits instances of `projector` get: its own from the configuration, or the
    /// defaults.
    pub fn limits_for(&self, projector: &str) -> Limits {
        self.overrides
            .get(projector)
            .copied()
            .unwrap_or(self.limits)
    }

    /// Compiles (or loads from the cache) and checks a component against the `projector`
    /// world of the contract version it imports (0.2.0 or 0.1.0).
    ///
    /// # Errors
    /// [`LoadError`] says whether the bytes are not Wasm, a core module, do not compile, target
    /// a contract version this host does not run, or do not match the `projector` world.
    pub fn load(&self, wasm: &[u8]) -> Result<Arc<LoadedComponent>, LoadError> {
        let component = self.compile(wasm)?;
        // A component that imports nothing of the contract cannot be bound to a target;
        // checking it against the current world says what it lacks.
        let contract = Contract::of(&self.interface_of(&component))?.unwrap_or(Contract::V0_2);
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(LoadError::World)?;
        let lacks_an_export = |err: wasmtime::Error| {
            LoadError::World(err.context(format!(
                "it targets {} and lacks an export of its `projector` world",
                contract.package()
            )))
        };
        let pre = match contract {
            Contract::V0_1 => {
                Pre::V0_1(v0_1::ProjectorPre::new(instance_pre).map_err(lacks_an_export)?)
            }
            Contract::V0_2 => {
                Pre::V0_2(v0_2::ProjectorPre::new(instance_pre).map_err(lacks_an_export)?)
            }
        };
        let check = component.get_export_index(None, CHECK_EXPORT);
        let partition_by = component.get_export_index(None, PARTITION_BY_EXPORT);
        Ok(Arc::new(LoadedComponent {
            pre,
            check,
            partition_by,
        }))
    }

    /// What a component imports and exports, by name, whether or not it matches the world:
    /// what `zdr plugin inspect` shows beside the world check.
    ///
    /// # Errors
    /// [`LoadError`] when the bytes are not a component or do not compile.
    pub fn interface(&self, wasm: &[u8]) -> Result<ComponentInterface, LoadError> {
        let component = self.compile(wasm)?;
        Ok(self.interface_of(&component))
    }

    fn interface_of(&self, component: &Component) -> ComponentInterface {
        let ty = component.component_type();
        ComponentInterface {
            imports: ty.imports(&self.engine).map(item_name).collect(),
            exports: ty.exports(&self.engine).map(item_name).collect(),
        }
    }

    /// Checks the bytes are a component, then compiles it or loads it from the cache.
    fn compile(&self, wasm: &[u8]) -> Result<Component, LoadError> {
        if wasm.len() < 8 || &wasm[..4] != b"\0asm" {
            return Err(LoadError::NotWasm);
        }
        if wasm[4..8] == [1, 0, 0, 0] {
            return Err(LoadError::CoreModule);
        }
        match &self.cache {
            Some(cache) => cache.load_or_compile(&self.engine, &content_hash(wasm), wasm),
            None => Component::new(&self.engine, wasm),
        }
        .map_err(LoadError::Compile)
    }

    /// A fresh instance of `component` (a version of `projector`, whose limits it gets), tagged
    /// `tag` in the log, not yet bound to a target.
    ///
    /// # Errors
    /// When the guest traps during instantiation (its start-up code failed).
    pub fn instantiate(
        &self,
        component: &LoadedComponent,
        projector: &str,
        tag: &str,
    ) -> Result<Instance, GuestError> {
        let limits = self.limits_for(projector);
        let tag: Arc<str> = Arc::from(tag);
        let mut store = Store::new(
            &self.engine,
            HostState::new(tag.clone(), limits.memory_bytes),
        );
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(deadline_ticks(limits.call_timeout));
        let trap = |err: wasmtime::Error| GuestError::Trap(format!("{err:#}"));
        let instance_pre = match &component.pre {
            Pre::V0_1(pre) => pre.instance_pre(),
            Pre::V0_2(pre) => pre.instance_pre(),
        };
        let instance = instance_pre.instantiate(&mut store).map_err(trap)?;
        let bindings = Arc::new(match &component.pre {
            Pre::V0_1(_) => {
                Bindings::V0_1(v0_1::Projector::new(&mut store, &instance).map_err(trap)?)
            }
            Pre::V0_2(_) => {
                Bindings::V0_2(v0_2::Projector::new(&mut store, &instance).map_err(trap)?)
            }
        });
        // The optional export of the `checked-projector` world; one of the wrong type is kept
        // as the reason, so that `describe` (deploy) refuses the component.
        let check = component.check.map(|index| {
            instance
                .get_typed_func::<(), (Result<(), String>,)>(&mut store, index)
                .map_err(|err| {
                    format!(
                        "the component exports `{CHECK_EXPORT}`, but not as `func() -> \
                         result<_, string>` (the checked-projector world's): {err:#}"
                    )
                })
        });
        // The optional export of the `partitioned-projector` world, kept the same way.
        let partition_by = component.partition_by.map(|index| {
            instance
                .get_typed_func::<(), (Vec<(String, String)>,)>(&mut store, index)
                .map_err(|err| {
                    format!(
                        "the component exports `{PARTITION_BY_EXPORT}`, but not as `func() -> \
                         list<tuple<string, string>>` (the partitioned-projector world's): {err:#}"
                    )
                })
        });
        Ok(Instance {
            store,
            bindings,
            check,
            partition_by,
            poisoned: false,
            timeout: limits.call_timeout,
        })
    }

    /// Loads a component, instantiates it and calls `describe`: what `deploy` and `create`
    /// check before they change anything.
    ///
    /// # Errors
    /// A [`LoadError`] or a [`GuestError`], as text with what to do.
    pub fn describe(&self, wasm: &[u8]) -> anyhow::Result<Description> {
        let component = self.load(wasm)?;
        let mut instance = self.instantiate(&component, "", "describe")?;
        if let Some(Err(wrong)) = &instance.check {
            return Err(GuestError::InvalidDescription(wrong.clone()).into());
        }
        let mut description = instance.describe()?;
        if let Some(keys) = instance.partition_by() {
            description.partition_by = keys?;
            description
                .check_partition_keys()
                .map_err(GuestError::InvalidDescription)?;
        }
        Ok(description)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

fn deadline_ticks(timeout: Duration) -> u64 {
    (timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64 + 1
}

fn spawn_epoch_ticker(engine: Engine, stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new()
        .name("zdr-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        });
    if let Err(err) = spawned {
        // Without the ticker deadlines never fire: guests still run, but a runaway one would
        // not be interrupted. Say so loudly rather than refuse to start.
        tracing::error!("could not start the epoch ticker thread, guest deadlines are off: {err}");
    }
}

/// The names a component imports and exports (interfaces, functions, resources).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ComponentInterface {
    /// What it needs from the host, e.g. `zdr:projector/database@0.1.0`, `wasi:io/error@0.2.x`.
    pub imports: Vec<ComponentItemName>,
    /// What it provides, e.g. `describe`, `handle-events`.
    pub exports: Vec<ComponentItemName>,
}

/// One import or export of a component: its name and what kind of item it is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ComponentItemName {
    /// The import or export name.
    pub name: String,
    /// `func`, `instance`, `resource`, `module`, `component` or `type`.
    pub kind: String,
}

fn item_name((name, item): (&str, ComponentExtern<'_>)) -> ComponentItemName {
    let kind = match item.ty {
        ComponentItem::ComponentFunc(_) => "func",
        ComponentItem::CoreFunc(_) => "core func",
        ComponentItem::Module(_) => "module",
        ComponentItem::Component(_) => "component",
        ComponentItem::ComponentInstance(_) => "instance",
        ComponentItem::Type(_) => "type",
        ComponentItem::Resource(_) => "resource",
    };
    ComponentItemName {
        name: name.to_string(),
        kind: kind.to_string(),
    }
}

/// The most events one `handle-events` call is given: enough that the call's cost is spread
/// thin, few enough that one call stays far inside its deadline in every language.
pub const MAX_EVENTS_PER_CALL: usize = 256;

/// Why `handle-events` failed, and at which event when that is known.
#[derive(Debug, Clone)]
pub struct EventsFailure {
    /// The index, in the events given, of the event the failure names; `None` when a trap or
    /// a failure outside the guest's answer leaves it unknown.
    pub index: Option<usize>,
    /// What failed.
    pub error: GuestError,
}

impl EventsFailure {
    fn at(index: Option<usize>, error: GuestError) -> Self {
        Self { index, error }
    }
}

/// The name of the optional export of the `checked-projector` world.
const CHECK_EXPORT: &str = "check";

/// The `check` export, typed.
type CheckFunc = TypedFunc<(), (Result<(), String>,)>;

/// The name of the optional export of the `partitioned-projector` world.
const PARTITION_BY_EXPORT: &str = "partition-by";

/// The `partition-by` export, typed.
type PartitionByFunc = TypedFunc<(), (Vec<(String, String)>,)>;

/// A version of the WIT contract the host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contract {
    /// `zdr:projector@0.1.0`: one `handle-event` call per event.
    V0_1,
    /// `zdr:projector@0.2.0`: `handle-events` with a batch, and `send`.
    V0_2,
}

impl Contract {
    /// The package name and version, as a component's imports name it.
    pub fn package(self) -> &'static str {
        match self {
            Contract::V0_1 => "zdr:projector@0.1.0",
            Contract::V0_2 => "zdr:projector@0.2.0",
        }
    }

    /// The contract a component targets, read from the `zdr:projector` interfaces it imports;
    /// `None` when it imports none of them.
    ///
    /// # Errors
    /// [`LoadError::Contract`] when it imports another version of the package, or versions
    /// that disagree.
    pub fn of(interface: &ComponentInterface) -> Result<Option<Contract>, LoadError> {
        let mut found: Option<&str> = None;
        for item in &interface.imports {
            let Some(rest) = item.name.strip_prefix("zdr:projector/") else {
                continue;
            };
            let version = rest.split_once('@').map_or("", |(_, version)| version);
            match found {
                Some(seen) if seen != version => {
                    return Err(LoadError::Contract(format!(
                        "it imports zdr:projector at two versions, {seen} and {version}"
                    )));
                }
                _ => found = Some(version),
            }
        }
        match found {
            Some("0.1.0") => Ok(Some(Contract::V0_1)),
            Some("0.2.0") => Ok(Some(Contract::V0_2)),
            None => Ok(None),
            Some(other) => Err(LoadError::Contract(format!(
                "it targets zdr:projector@{other}; this zdr runs 0.1.0 and 0.2.0, so rebuild it \
                 against the wit/ of this release (or upgrade zdr)"
            ))),
        }
    }
}

/// The pre-instantiated component of one contract version.
enum Pre {
    V0_1(v0_1::ProjectorPre<HostState>),
    V0_2(v0_2::ProjectorPre<HostState>),
}

/// The typed exports of an instance of one contract version.
enum Bindings {
    V0_1(v0_1::Projector),
    V0_2(v0_2::Projector),
}

/// A component compiled, checked against the world and ready to instantiate cheaply.
pub struct LoadedComponent {
    pre: Pre,
    /// Where its `check` export is, when it has one (the `checked-projector` world).
    check: Option<ComponentExportIndex>,
    /// Where its `partition-by` export is, when it has one (the `partitioned-projector`
    /// world).
    partition_by: Option<ComponentExportIndex>,
}

impl LoadedComponent {
    /// The contract version the component targets.
    pub fn contract(&self) -> Contract {
        match self.pre {
            Pre::V0_1(_) => Contract::V0_1,
            Pre::V0_2(_) => Contract::V0_2,
        }
    }
}

/// One instance of a projector, bound to at most one target.
pub struct Instance {
    store: Store<HostState>,
    /// Shared, so a call can hold them while it borrows the instance's store and state.
    bindings: Arc<Bindings>,
    /// The `check` export when the component has one, or why it cannot be called.
    check: Option<Result<CheckFunc, String>>,
    /// The `partition-by` export when the component has one, or why it cannot be called.
    partition_by: Option<Result<PartitionByFunc, String>>,
    poisoned: bool,
    timeout: Duration,
}

impl Instance {
    /// Whether a trap made this instance unusable; the owner must drop it.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Sets the deadline of the next call into the guest. Only a call that may use the
    /// database (`with_database`) gets one for its statements too; in any other, statements
    /// are denied.
    fn arm(&mut self, with_database: bool) -> Result<(), GuestError> {
        if self.poisoned {
            return Err(GuestError::Trap(
                "instance was poisoned by an earlier trap".into(),
            ));
        }
        self.store.set_epoch_deadline(deadline_ticks(self.timeout));
        let state = self.store.data_mut();
        state.call = with_database.then(|| Call {
            deadline: Instant::now() + self.timeout,
        });
        state.read_only = false;
        Ok(())
    }

    /// Ends a call: the writes it sent and the backend queued run now (a failure is kept for
    /// [`Instance::take_aborted`]), and statements are denied again until the next call.
    fn disarm(&mut self) {
        let state = self.store.data_mut();
        if let (Some(call), Some(connection)) = (state.call.take(), state.connection.as_mut()) {
            connection.end_call(call);
        }
        state.read_only = false;
    }

    /// Ends `promote` or `remove-target`: a statement of the call that failed (one it sent
    /// and never saw fail, say) fails the call, whatever the guest answered.
    fn outcome_of(
        &mut self,
        outcome: wasmtime::Result<Result<(), String>>,
    ) -> Result<(), GuestError> {
        let aborted = self.take_aborted();
        match outcome {
            Ok(Ok(())) => match aborted {
                None => Ok(()),
                Some(database) => Err(GuestError::Swallowed(database.to_string())),
            },
            Ok(Err(message)) => Err(GuestError::Returned(message)),
            Err(err) => Err(self.trapped(err)),
        }
    }

    /// Whether the component exports `check` (the `checked-projector` world).
    pub fn has_check(&self) -> bool {
        self.check.is_some()
    }

    /// Calls the projector's own `check` of its target's read model, where queries may run
    /// and writes are denied. `None` when the component exports no `check`.
    ///
    /// # Errors
    /// What the check found wrong ([`GuestError::Returned`]), a trap, or an export of the
    /// wrong type.
    pub fn check(&mut self) -> Option<Result<(), GuestError>> {
        let func = match self.check.clone()? {
            Ok(func) => func,
            Err(wrong) => return Some(Err(GuestError::InvalidDescription(wrong))),
        };
        if let Err(err) = self.arm(true) {
            return Some(Err(err));
        }
        self.store.data_mut().read_only = true;
        let outcome = func.call(&mut self.store, ());
        self.disarm();
        Some(match outcome {
            Ok((Ok(()),)) => Ok(()),
            Ok((Err(message),)) => Err(GuestError::Returned(message)),
            Err(err) => Err(self.trapped(err)),
        })
    }

    /// Calls the projector's `partition-by` (the `partitioned-projector` world): every
    /// declared table with its aggregate column. `None` when the component does not export
    /// it.
    ///
    /// # Errors
    /// A trap, or an export of the wrong type.
    pub fn partition_by(&mut self) -> Option<Result<Vec<PartitionKey>, GuestError>> {
        let func = match self.partition_by.clone()? {
            Ok(func) => func,
            Err(wrong) => return Some(Err(GuestError::InvalidDescription(wrong))),
        };
        if let Err(err) = self.arm(false) {
            return Some(Err(err));
        }
        let outcome = func.call(&mut self.store, ());
        self.disarm();
        Some(match outcome {
            Ok((keys,)) => Ok(keys
                .into_iter()
                .map(|(table, column)| PartitionKey { table, column })
                .collect()),
            Err(err) => Err(self.trapped(err)),
        })
    }

    /// The database error that aborted the current transaction since this was last asked
    /// (PostgreSQL): the event that caused it failed even if the guest swallowed the error.
    pub fn take_aborted(&mut self) -> Option<DbError> {
        self.store
            .data_mut()
            .connection
            .as_mut()
            .and_then(|connection| connection.take_aborted())
    }

    fn trapped(&mut self, err: wasmtime::Error) -> GuestError {
        self.poisoned = true;
        let message = if let Some(trap) = err.downcast_ref::<wasmtime::Trap>() {
            match trap {
                wasmtime::Trap::Interrupt => {
                    format!(
                        "deadline of {:?} exceeded (the call was interrupted)",
                        self.timeout
                    )
                }
                other => format!("{other}"),
            }
        } else {
            format!("{err:#}")
        };
        let message = if message.contains("memory") || message.contains("grow") {
            format!(
                "{message} (memory cap is {} MiB)",
                self.store.data().limits_mib()
            )
        } else {
            message
        };
        GuestError::Trap(message)
    }

    /// Calls `describe` and checks the answer's shape.
    ///
    /// # Errors
    /// A trap, or a description with no name, no version or no tables.
    pub fn describe(&mut self) -> Result<Description, GuestError> {
        self.arm(false)?;
        // The two versions' descriptions are the same record, generated twice.
        macro_rules! description {
            ($d:expr) => {{
                let d = $d;
                Description {
                    name: d.name,
                    version: d.version,
                    tables: d
                        .tables
                        .into_iter()
                        .map(|t| TableDecl {
                            name: t.name,
                            ddl: t.ddl,
                        })
                        .collect(),
                    handles: d.handles,
                    // Filled in from `partition-by`, a separate export.
                    partition_by: Vec::new(),
                }
            }};
        }
        let described = match &*self.bindings {
            Bindings::V0_1(b) => b.call_describe(&mut self.store).map(|d| description!(d)),
            Bindings::V0_2(b) => b.call_describe(&mut self.store).map(|d| description!(d)),
        };
        let description = match described {
            Ok(description) => description,
            Err(err) => return Err(self.trapped(err)),
        };
        if description.name.is_empty() || description.version.is_empty() {
            return Err(GuestError::InvalidDescription(
                "describe() returned an empty name or version".into(),
            ));
        }
        if description.tables.is_empty() {
            return Err(GuestError::InvalidDescription(
                "describe() declares no tables".into(),
            ));
        }
        Ok(description)
    }

    /// Binds the instance to a target: stores the connection and hands the guest its handle.
    ///
    /// # Errors
    /// A trap in `use-connection`.
    pub fn bind(
        &mut self,
        connection: Box<dyn GuestConnection>,
        for_replay: bool,
    ) -> Result<(), GuestError> {
        self.store.data_mut().connection = Some(connection);
        let handle = self
            .store
            .data_mut()
            .new_connection_handle()
            .map_err(|err| GuestError::Trap(format!("{err:#}")))?;
        self.arm(false)?;
        let outcome = match &*self.bindings {
            Bindings::V0_1(b) => b.call_use_connection(&mut self.store, handle),
            Bindings::V0_2(b) => b.call_use_connection(&mut self.store, handle),
        };
        if let Err(err) = outcome {
            return Err(self.trapped(err));
        }
        if for_replay {
            self.arm(false)?;
            let outcome = match &*self.bindings {
                Bindings::V0_1(b) => b.call_for_replay(&mut self.store),
                Bindings::V0_2(b) => b.call_for_replay(&mut self.store),
            };
            if let Err(err) = outcome {
                return Err(self.trapped(err));
            }
        }
        Ok(())
    }

    /// The contract version of this instance's component.
    pub fn contract(&self) -> Contract {
        match *self.bindings {
            Bindings::V0_1(_) => Contract::V0_1,
            Bindings::V0_2(_) => Contract::V0_2,
        }
    }

    /// Applies `events`, in order: one `handle-events` call (0.2.0), or one `handle-event`
    /// call per event (0.1.0), each call under its own deadline. Give at most
    /// [`MAX_EVENTS_PER_CALL`] at once.
    ///
    /// # Errors
    /// The guest's own error or a trap (after which the instance is poisoned), with the index
    /// in `events` of the event it names; `None` when a trap leaves it unknown.
    pub fn handle_events(&mut self, events: &[&Event]) -> Result<(), EventsFailure> {
        fn lend<'a, T>(
            event: &'a Event,
            make: impl FnOnce(Option<&'a str>, &'a str, &'a str, &'a str, &'a str) -> T,
        ) -> T {
            make(
                event.aggregate_uuid.as_deref(),
                &event.event_class,
                &event.event_properties,
                &event.meta_data,
                &event.created_at,
            )
        }
        let shared = self.bindings.clone();
        match &*shared {
            Bindings::V0_1(bindings) => {
                for (index, event) in events.iter().enumerate() {
                    self.arm(true)
                        .map_err(|error| EventsFailure::at(None, error))?;
                    let guest_event = lend(event, |uuid, class, properties, meta, created| {
                        v0_1::zdr::projector::types::Event {
                            id: event.id,
                            aggregate_uuid: uuid,
                            aggregate_version: event.aggregate_version,
                            event_version: event.event_version,
                            event_class: class,
                            event_properties: properties,
                            meta_data: meta,
                            created_at: created,
                        }
                    });
                    let outcome = bindings.call_handle_event(&mut self.store, guest_event);
                    self.disarm();
                    match outcome {
                        Ok(Ok(())) => {}
                        Ok(Err(message)) => {
                            return Err(EventsFailure::at(
                                Some(index),
                                GuestError::Returned(message),
                            ));
                        }
                        Err(err) => return Err(EventsFailure::at(Some(index), self.trapped(err))),
                    }
                }
                Ok(())
            }
            Bindings::V0_2(bindings) => {
                let guest_events: Vec<_> = events
                    .iter()
                    .map(|event| {
                        lend(event, |uuid, class, properties, meta, created| {
                            v0_2::zdr::projector::types::Event {
                                id: event.id,
                                aggregate_uuid: uuid,
                                aggregate_version: event.aggregate_version,
                                event_version: event.event_version,
                                event_class: class,
                                event_properties: properties,
                                meta_data: meta,
                                created_at: created,
                            }
                        })
                    })
                    .collect();
                self.arm(true)
                    .map_err(|error| EventsFailure::at(None, error))?;
                let outcome = bindings.call_handle_events(&mut self.store, &guest_events);
                self.disarm();
                match outcome {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(failure)) => {
                        // An index past the list is the guest's mistake; the host re-runs the
                        // events one by one anyway, so it only loses the hint.
                        let index = usize::try_from(failure.index)
                            .ok()
                            .filter(|index| *index < events.len());
                        Err(EventsFailure::at(
                            index,
                            GuestError::Returned(failure.message),
                        ))
                    }
                    Err(err) => Err(EventsFailure::at(None, self.trapped(err))),
                }
            }
        }
    }

    /// Tells the guest its target is about to become live; an error vetoes the promote.
    ///
    /// # Errors
    /// The guest's veto, or a trap.
    pub fn promote(&mut self) -> Result<(), GuestError> {
        self.arm(true)?;
        let outcome = match &*self.bindings {
            Bindings::V0_1(b) => b.call_promote(&mut self.store),
            Bindings::V0_2(b) => b.call_promote(&mut self.store),
        };
        self.disarm();
        self.outcome_of(outcome)
    }

    /// Tells the guest its target is being dropped.
    ///
    /// # Errors
    /// The guest's error, or a trap; the caller logs it and drops the target anyway.
    pub fn remove(&mut self) -> Result<(), GuestError> {
        self.arm(true)?;
        let outcome = match &*self.bindings {
            Bindings::V0_1(b) => b.call_remove_target(&mut self.store),
            Bindings::V0_2(b) => b.call_remove_target(&mut self.store),
        };
        self.disarm();
        self.outcome_of(outcome)
    }
}

impl HostState {
    fn limits_mib(&self) -> usize {
        self.memory_bytes / (1024 * 1024)
    }
}
