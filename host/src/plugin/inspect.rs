//! `zdr plugin inspect`: what a component is (name, version, tables, handled events), what it
//! imports and exports, and whether it matches the host's `projector` world.

use serde::Serialize;

use crate::model::{PartitionKey, TableDecl};
use crate::runtime::{ComponentInterface, ComponentItemName, Contract, Runtime};

/// What `zdr plugin inspect` reports about one component.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// The projector's name, when `describe` could be called.
    pub name: Option<String>,
    /// Its version, when `describe` could be called.
    pub version: Option<String>,
    /// Its tables with their DDL.
    pub tables: Vec<TableDecl>,
    /// The event classes it handles (empty: every event).
    pub handles: Vec<String>,
    /// Each table's aggregate column, when it declares `partition-by` (a replay may then split
    /// history by aggregate); empty when it does not.
    pub partition_by: Vec<PartitionKey>,
    /// What it imports.
    pub imports: Vec<ComponentItemName>,
    /// What it exports.
    pub exports: Vec<ComponentItemName>,
    /// The contract version it targets (`zdr:projector@0.2.0` or `@0.1.0`), read from what it
    /// imports; `None` when it imports none, or a version this zdr does not run.
    pub contract: Option<String>,
    /// Whether it implements the host's world and its `describe` answers.
    pub matches_world: bool,
    /// Why not, when it does not.
    pub problem: Option<String>,
    /// The size of the file, in bytes.
    pub bytes: usize,
}

/// Inspects a component's bytes.
///
/// # Errors
/// Only when the bytes are not a component at all (not Wasm, a core module, do not compile):
/// a component for another world is reported, not refused.
pub fn inspect(runtime: &Runtime, wasm: &[u8]) -> Result<Inspection, crate::runtime::LoadError> {
    let interface = runtime.interface(wasm)?;
    let contract = Contract::of(&interface)
        .ok()
        .flatten()
        .map(|c| c.package().to_string());
    let ComponentInterface { imports, exports } = interface;
    let mut inspection = Inspection {
        contract,
        name: None,
        version: None,
        tables: Vec::new(),
        handles: Vec::new(),
        partition_by: Vec::new(),
        imports,
        exports,
        matches_world: false,
        problem: None,
        bytes: wasm.len(),
    };
    match runtime.describe(wasm) {
        Ok(description) => {
            inspection.name = Some(description.name);
            inspection.version = Some(description.version);
            inspection.tables = description.tables;
            inspection.handles = description.handles;
            inspection.partition_by = description.partition_by;
            inspection.matches_world = true;
        }
        Err(err) => inspection.problem = Some(format!("{err:#}")),
    }
    Ok(inspection)
}
