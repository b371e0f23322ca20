//! `zdr plugin build`: runs the manifest's build command in the plugin's folder, then checks
//! that the output exists, is a component of the `projector` world and describes itself with
//! the manifest's name.

use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{Manifest, PluginError};
use crate::model::Description;
use crate::runtime::Runtime;

/// A plugin built and checked.
#[derive(Debug, Clone)]
pub struct Built {
    /// The plugin's manifest.
    pub manifest: Manifest,
    /// The component file, as the manifest names it (joined to the plugin's folder).
    pub output: PathBuf,
    /// What the component's `describe` returned.
    pub description: Description,
}

/// Builds the plugin in `dir` and checks its output with `runtime`. The build tool's own
/// output (compiler messages, progress) goes to stderr, so stdout stays for zdr's answer.
///
/// # Errors
/// A missing or bad manifest, a build command that cannot start or fails, a missing output,
/// or an output that is not a projector of the host's world (with the runtime's reason).
pub fn build(runtime: &Runtime, dir: &Path) -> Result<Built, PluginError> {
    let manifest = Manifest::load(dir)?;
    let spawn_error = |source| PluginError::Spawn {
        command: manifest.build.clone(),
        dir: dir.to_path_buf(),
        source,
    };
    let stderr = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(spawn_error)?;
    let status = Command::new("sh")
        .arg("-c")
        .arg(&manifest.build)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stderr))
        .status()
        .map_err(spawn_error)?;
    if !status.success() {
        return Err(PluginError::BuildFailed {
            command: manifest.build.clone(),
            status,
        });
    }
    let output = dir.join(&manifest.output);
    if !output.is_file() {
        return Err(PluginError::NoOutput { output });
    }
    let description = check(runtime, &output)?;
    if description.name != manifest.name {
        return Err(PluginError::NotAProjector {
            path: output,
            message: format!(
                "its describe() names the projector {:?} but {} says {:?}; make them agree",
                description.name,
                super::MANIFEST_FILE,
                manifest.name
            ),
        });
    }
    Ok(Built {
        manifest,
        output,
        description,
    })
}

/// Loads `path` as a projector and returns its description.
fn check(runtime: &Runtime, path: &Path) -> Result<Description, PluginError> {
    let wasm = std::fs::read(path).map_err(|source| PluginError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    runtime
        .describe(&wasm)
        .map_err(|err| PluginError::NotAProjector {
            path: path.to_path_buf(),
            message: format!("{err:#}"),
        })
}
