//! Authoring projectors: the `zdr-plugin.toml` manifest, building and testing a plugin with
//! the commands it names, scaffolding a new projector in Rust, JavaScript or Python from templates embedded in
//! the binary, and inspecting a built component.
//!
//! This module runs build tools and reads files; it uses [`crate::runtime`] only to compile a
//! component and call its `describe`, and knows nothing of databases.

mod build;
mod inspect;
mod manifest;
mod scaffold;

use std::path::PathBuf;

pub use build::{Built, build, test};
pub use inspect::{Inspection, inspect};
pub use manifest::{Language, MANIFEST_FILE, Manifest};
pub use scaffold::{Scaffolded, scaffold};

/// Why a plugin command failed. Each message names the file or command and says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// The plugin folder has no manifest.
    #[error(
        "no {MANIFEST_FILE} in {dir}; run `zdr plugin new NAME --lang rust|js|python` to start a plugin, or pass the plugin's folder"
    )]
    NoManifest {
        /// The folder searched.
        dir: PathBuf,
    },
    /// The manifest could not be read or parsed.
    #[error("{path}: {message}")]
    BadManifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong, with the key where there is one.
        message: String,
    },
    /// The build or test command could not be started.
    #[error("cannot run the {what} command `{command}` in {dir}: {source}")]
    Spawn {
        /// Which of the manifest's commands: `build` or `test`.
        what: &'static str,
        /// The manifest's command.
        command: String,
        /// Where it was run.
        dir: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The build or test command ran and failed.
    #[error("the {what} command `{command}` failed ({status}); its output is above")]
    CommandFailed {
        /// Which of the manifest's commands: `build` or `test`.
        what: &'static str,
        /// The manifest's command.
        command: String,
        /// How it exited.
        status: std::process::ExitStatus,
    },
    /// `plugin test` on a plugin whose manifest names no test command.
    #[error(
        "{path} has no `test` command; add one, e.g. test = \"cargo test\", to run the plugin's tests"
    )]
    NoTestCommand {
        /// The manifest file.
        path: PathBuf,
    },
    /// The build succeeded but left no file where the manifest says.
    #[error(
        "the build command succeeded but {output} does not exist; fix `output` in {MANIFEST_FILE} or the build command"
    )]
    NoOutput {
        /// The expected output path.
        output: PathBuf,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The component is not a usable projector.
    #[error("{path} is not a usable projector: {message}")]
    NotAProjector {
        /// The component file.
        path: PathBuf,
        /// What the runtime said.
        message: String,
    },
    /// `plugin new` was given a bad name.
    #[error("{0}")]
    BadName(String),
    /// `plugin new` would overwrite something.
    #[error("{0} already exists; choose another name or remove it first")]
    Exists(PathBuf),
}
