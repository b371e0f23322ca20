//! `zdr plugin build` and `zdr plugin test`: run the manifest's build or test command in the
//! plugin's folder. A build's output is then checked: it must exist, be a component of the
//! `projector` world and describe itself with the manifest's name.

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
    run(dir, "build", &manifest.build)?;
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

/// Runs the tests of the plugin in `dir` with its manifest's `test` command; their output
/// goes to stderr. Returns the manifest and the command that passed.
///
/// # Errors
/// A missing or bad manifest, a manifest without a `test` command, or a test command that
/// cannot start or fails.
pub fn test(dir: &Path) -> Result<(Manifest, String), PluginError> {
    let manifest = Manifest::load(dir)?;
    let Some(command) = manifest.test.clone() else {
        return Err(PluginError::NoTestCommand {
            path: dir.join(super::MANIFEST_FILE),
        });
    };
    run(dir, "test", &command)?;
    Ok((manifest, command))
}

/// Runs the shell command `command` (the manifest's `what` command) in `dir`, its output
/// going to stderr so that stdout stays for zdr's answer.
fn run(dir: &Path, what: &'static str, command: &str) -> Result<(), PluginError> {
    let spawn_error = |source| PluginError::Spawn {
        what,
        command: command.to_owned(),
        dir: dir.to_path_buf(),
        source,
    };
    let stderr = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(spawn_error)?;
    let status = Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stderr))
        .status()
        .map_err(spawn_error)?;
    if status.success() {
        Ok(())
    } else {
        Err(PluginError::CommandFailed {
            what,
            command: command.to_owned(),
            status,
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A plugin folder whose manifest has the given `test` line (or none).
    fn plugin(test: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mut manifest =
            "name = \"p\"\nlanguage = \"rust\"\nbuild = \"true\"\noutput = \"p.wasm\"\n".to_owned();
        if let Some(test) = test {
            manifest.push_str(&format!("test = {test:?}\n"));
        }
        std::fs::write(dir.path().join(super::super::MANIFEST_FILE), manifest).unwrap();
        dir
    }

    #[test]
    fn a_passing_test_command_runs_in_the_plugin_folder() {
        let dir = plugin(Some("test -f zdr-plugin.toml"));
        let (manifest, command) = test(dir.path()).unwrap();
        assert_eq!(manifest.name, "p");
        assert_eq!(command, "test -f zdr-plugin.toml");
    }

    #[test]
    fn a_failing_or_missing_test_command_says_what_to_do() {
        let err = test(plugin(Some("exit 3")).path()).unwrap_err();
        assert!(
            matches!(&err, PluginError::CommandFailed { what: "test", status, .. } if status.code() == Some(3)),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("the test command `exit 3` failed"),
            "{err}"
        );

        let err = test(plugin(None).path()).unwrap_err();
        assert!(matches!(err, PluginError::NoTestCommand { .. }), "{err:?}");
        assert!(
            err.to_string().contains("has no `test` command; add one"),
            "{err}"
        );
    }
}
