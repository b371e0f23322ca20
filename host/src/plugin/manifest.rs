//! The `zdr-plugin.toml` manifest: a projector's name, language, build command, the path of
//! the component the build produces (relative to the manifest's folder) and, optionally, the
//! command that runs the plugin's own tests.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::PluginError;

/// The manifest's file name, looked up in a plugin's folder.
pub const MANIFEST_FILE: &str = "zdr-plugin.toml";

/// The language a plugin is written in; it chooses the template of `zdr plugin new`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// Rust, built with cargo and wit-bindgen for wasm32-wasip2.
    Rust,
    /// JavaScript, built with componentize-js.
    #[serde(alias = "javascript")]
    #[value(alias = "javascript")]
    Js,
    /// Python, built with componentize-py.
    Python,
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Language::Rust => "rust",
            Language::Js => "js",
            Language::Python => "python",
        })
    }
}

/// A parsed `zdr-plugin.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The projector's name (what its `describe` returns).
    pub name: String,
    /// The language it is written in.
    pub language: Language,
    /// The shell command that builds it, run in the manifest's folder.
    pub build: String,
    /// The component the build produces, relative to the manifest's folder.
    pub output: PathBuf,
    /// The shell command that runs the plugin's own tests (`zdr plugin test`), run in the
    /// manifest's folder; none when the plugin has no tests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<String>,
}

impl Manifest {
    /// Reads the manifest of the plugin in `dir`.
    ///
    /// # Errors
    /// [`PluginError::NoManifest`] when there is none, [`PluginError::BadManifest`] when it
    /// cannot be read or does not parse (unknown keys are refused).
    pub fn load(dir: &Path) -> Result<Self, PluginError> {
        let path = dir.join(MANIFEST_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(PluginError::NoManifest {
                    dir: dir.to_path_buf(),
                });
            }
            Err(err) => return Err(PluginError::Io { path, source: err }),
        };
        Self::parse(&text).map_err(|message| PluginError::BadManifest { path, message })
    }

    /// Parses a manifest's text.
    ///
    /// # Errors
    /// The parser's message, naming the key and the line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| e.to_string())?;
        if manifest.build.trim().is_empty() {
            return Err("`build` is empty; give the command that builds the component".into());
        }
        if manifest.output.as_os_str().is_empty() {
            return Err("`output` is empty; give the path of the built .wasm file".into());
        }
        if manifest
            .test
            .as_deref()
            .is_some_and(|test| test.trim().is_empty())
        {
            return Err(
                "`test` is empty; give the command that runs the tests, or leave the key out"
                    .into(),
            );
        }
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_bundled_manifest_shape() {
        let m = Manifest::parse(
            "name = \"balance\"\nlanguage = \"javascript\"\nbuild = \"node ../build.mjs v1\"\noutput = \"out.wasm\"\n",
        )
        .unwrap();
        assert_eq!(m.language, Language::Js);
        assert_eq!(m.output, PathBuf::from("out.wasm"));
        assert_eq!(m.test, None);
        let m = Manifest::parse(
            "name = \"c\"\nlanguage = \"python\"\nbuild = \"bash build.sh\"\noutput = \"o.wasm\"\ntest = \"bash test.sh\"\n",
        )
        .unwrap();
        assert_eq!(m.test.as_deref(), Some("bash test.sh"));
    }

    #[test]
    fn refuses_unknown_keys_missing_keys_and_empty_commands() {
        let cases = [
            (
                "name = \"a\"\nlanguage = \"rust\"\nbuild = \"b\"\noutput = \"o\"\nextra = 1\n",
                "unknown field `extra`",
            ),
            (
                "name = \"a\"\nlanguage = \"rust\"\nbuild = \"b\"\n",
                "missing field `output`",
            ),
            (
                "name = \"a\"\nlanguage = \"cobol\"\nbuild = \"b\"\noutput = \"o\"\n",
                "unknown variant `cobol`",
            ),
            (
                "name = \"a\"\nlanguage = \"rust\"\nbuild = \" \"\noutput = \"o\"\n",
                "`build` is empty",
            ),
            (
                "name = \"a\"\nlanguage = \"rust\"\nbuild = \"b\"\noutput = \"o\"\ntest = \"\"\n",
                "`test` is empty",
            ),
        ];
        for (text, expected) in cases {
            let err = Manifest::parse(text).unwrap_err();
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
            );
        }
    }

    #[test]
    fn every_bundled_plugin_has_a_valid_manifest() {
        let plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
        let dirs = [
            "balance-v1",
            "balance-v2",
            "balance-js/v1",
            "balance-js/v2",
            "balance-py/v1",
            "balance-py/v2",
        ];
        for dir in dirs {
            let manifest = Manifest::load(&plugins.join(dir)).unwrap();
            assert_eq!(manifest.name, "balance", "{dir}");
        }
    }
}
