//! `zdr plugin new`: writes a working projector in Rust, JavaScript or Python from templates
//! embedded in the binary (`host/templates/`), with a copy of the host's WIT contract.

use std::path::{Path, PathBuf};

use super::{Language, PluginError};
use crate::model::validate_projector_name;

/// The contract, copied into every scaffold so it builds on its own.
const WIT: &str = include_str!("../../../wit/projector.wit");

/// The files of one language's template: (path in the new folder, text with placeholders).
fn template(language: Language) -> &'static [(&'static str, &'static str)] {
    match language {
        Language::Rust => &[
            (
                "Cargo.toml",
                include_str!("../../templates/rust/Cargo.toml"),
            ),
            (
                "src/lib.rs",
                include_str!("../../templates/rust/src/lib.rs"),
            ),
            (
                "zdr-plugin.toml",
                include_str!("../../templates/rust/zdr-plugin.toml"),
            ),
            (".gitignore", include_str!("../../templates/rust/gitignore")),
        ],
        Language::Js => &[
            (
                "package.json",
                include_str!("../../templates/js/package.json"),
            ),
            (
                "package-lock.json",
                include_str!("../../templates/js/package-lock.json"),
            ),
            ("build.mjs", include_str!("../../templates/js/build.mjs")),
            (
                "test/projector.test.mjs",
                include_str!("../../templates/js/test/projector.test.mjs"),
            ),
            (
                "test/json.test.mjs",
                include_str!("../../templates/js/test/json.test.mjs"),
            ),
            (
                "test/wit-hooks.mjs",
                include_str!("../../templates/js/test/wit-hooks.mjs"),
            ),
            (
                "test/fake-host.mjs",
                include_str!("../../templates/js/test/fake-host.mjs"),
            ),
            (
                "projector.js",
                include_str!("../../templates/js/projector.js"),
            ),
            ("json.js", include_str!("../../templates/js/json.js")),
            (
                "zdr-plugin.toml",
                include_str!("../../templates/js/zdr-plugin.toml"),
            ),
            (".gitignore", include_str!("../../templates/js/gitignore")),
        ],
        Language::Python => &[
            (
                "requirements.txt",
                include_str!("../../templates/python/requirements.txt"),
            ),
            ("venv.sh", include_str!("../../templates/python/venv.sh")),
            ("build.sh", include_str!("../../templates/python/build.sh")),
            ("test.sh", include_str!("../../templates/python/test.sh")),
            (
                "test_app.py",
                include_str!("../../templates/python/test_app.py"),
            ),
            ("app.py", include_str!("../../templates/python/app.py")),
            (
                "zdr-plugin.toml",
                include_str!("../../templates/python/zdr-plugin.toml"),
            ),
            (
                ".gitignore",
                include_str!("../../templates/python/gitignore"),
            ),
        ],
    }
}

/// A projector folder written by [`scaffold`].
#[derive(Debug, Clone)]
pub struct Scaffolded {
    /// The new folder.
    pub dir: PathBuf,
    /// The files written, relative to it.
    pub files: Vec<String>,
}

/// Writes a new projector named `name` in `language` into `dir` (which must not exist yet).
///
/// # Errors
/// [`PluginError::BadName`] for a name the host would refuse at deploy,
/// [`PluginError::Exists`] when `dir` exists, [`PluginError::Io`] when a file cannot be written.
pub fn scaffold(name: &str, language: Language, dir: &Path) -> Result<Scaffolded, PluginError> {
    validate_projector_name(name).map_err(PluginError::BadName)?;
    if dir.exists() {
        return Err(PluginError::Exists(dir.to_path_buf()));
    }
    let ident = name.replace('-', "_");
    let mut files = Vec::new();
    let files_to_write = template(language)
        .iter()
        .map(|(path, text)| (*path, render(text, name, &ident)))
        .chain(std::iter::once(("wit/projector.wit", WIT.to_string())));
    for (relative, text) in files_to_write {
        let path = dir.join(relative);
        let io = |source| PluginError::Io {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(&path, text).map_err(io)?;
        files.push(relative.to_string());
    }
    Ok(Scaffolded {
        dir: dir.to_path_buf(),
        files,
    })
}

/// Fills a template's placeholders.
fn render(text: &str, name: &str, ident: &str) -> String {
    text.replace("{{name}}", name).replace("{{ident}}", ident)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_is_rendered_without_leftover_placeholders() {
        for language in [Language::Rust, Language::Js, Language::Python] {
            let dir = tempfile::tempdir().unwrap();
            let target = dir.path().join("my-counter");
            let done = scaffold("my-counter", language, &target).unwrap();
            assert!(done.files.contains(&"zdr-plugin.toml".to_string()));
            for file in &done.files {
                let text = std::fs::read_to_string(target.join(file)).unwrap();
                assert!(
                    !text.contains("{{"),
                    "{language}: {file} has a placeholder left"
                );
            }
            let manifest = super::super::Manifest::load(&target).unwrap();
            assert_eq!(manifest.name, "my-counter");
            assert_eq!(manifest.language, language);
            assert!(manifest.test.is_some(), "{language}: no test command");
            let wit = std::fs::read_to_string(target.join("wit/projector.wit")).unwrap();
            assert!(wit.contains("world projector"));
        }
    }

    #[test]
    fn refuses_bad_names_and_existing_folders() {
        let dir = tempfile::tempdir().unwrap();
        let err = scaffold("Bad Name", Language::Rust, &dir.path().join("x")).unwrap_err();
        assert!(err.to_string().contains("invalid projector name"), "{err}");
        let err = scaffold("fine", Language::Rust, dir.path()).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
    }
}
