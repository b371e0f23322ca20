//! The on-disk cache of compiled components.
//!
//! Compiling a component is the slow part of loading it (seconds for an interpreter-based
//! Python or JavaScript guest), so each compiled artifact is stored under a key made of the
//! component's content hash and the engine's compatibility hash (wasmtime version, target and
//! settings). Each entry ends with a SHA-256 of its body: an entry that was truncated or
//! corrupted fails the check and is recompiled, never handed to wasmtime's `deserialize`, which
//! trusts its input. Processes that miss the same entry at once (the daemon and a CLI, tests
//! run in parallel) take turns on a lock file beside it, so the component is compiled once and
//! the others load what the first stored.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where compiled components are cached, and what identifies the engine that made them.
pub struct ComponentCache {
    dir: PathBuf,
    engine_key: String,
}

impl ComponentCache {
    /// A cache in `dir` for artifacts compiled by `engine`. The directory is created lazily.
    pub fn new(dir: PathBuf, engine: &Engine) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Self {
            dir,
            engine_key: format!("{:016x}", hasher.finish()),
        }
    }

    fn entry_path(&self, content_hash: &str) -> PathBuf {
        self.dir
            .join(format!("{content_hash}-{}.cwasm", self.engine_key))
    }

    /// Loads the compiled form of the component whose content hash is `content_hash`, or
    /// compiles `wasm` and stores the result. Cache problems (unwritable directory, corrupt
    /// entry) only cost a recompile; they are logged, never fatal.
    ///
    /// # Errors
    /// Only when `wasm` itself does not compile.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        content_hash: &str,
        wasm: &[u8],
    ) -> wasmtime::Result<Component> {
        let path = self.entry_path(content_hash);
        if let Some(component) = self.try_load(engine, &path) {
            return Ok(component);
        }
        // One compile per entry: whoever holds the lock compiles, the others wait and load.
        let _turn = self.lock(&path);
        if let Some(component) = self.try_load(engine, &path) {
            return Ok(component);
        }
        let component = Component::new(engine, wasm)?;
        if let Err(err) = self.store(&path, &component) {
            tracing::warn!(path = %path.display(), "could not write the compiled-component cache: {err}");
        }
        Ok(component)
    }

    /// Takes the lock file of an entry, waiting for whoever holds it; `None` (compile anyway)
    /// when the directory cannot hold one.
    fn lock(&self, path: &Path) -> Option<std::fs::File> {
        std::fs::create_dir_all(&self.dir).ok()?;
        let file = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path.with_extension("lock"))
            .ok()?;
        file.lock().ok()?;
        Some(file)
    }

    fn try_load(&self, engine: &Engine, path: &Path) -> Option<Component> {
        let bytes = std::fs::read(path).ok()?;
        let Some(body) = verified_body(&bytes) else {
            tracing::warn!(path = %path.display(), "corrupt compiled-component cache entry; recompiling");
            let _ = std::fs::remove_file(path);
            return None;
        };
        // SAFETY: `body` was written by `store` below from `Component::serialize` of an engine
        // with the same compatibility hash (it is part of the file name), and its SHA-256 was
        // just verified, so these are exactly the bytes wasmtime produced.
        match unsafe { Component::deserialize(engine, body) } {
            Ok(component) => Some(component),
            Err(err) => {
                tracing::warn!(path = %path.display(), "unusable compiled-component cache entry ({err}); recompiling");
                let _ = std::fs::remove_file(path);
                None
            }
        }
    }

    fn store(&self, path: &Path, component: &Component) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let mut bytes = component.serialize()?;
        let digest = Sha256::digest(&bytes);
        bytes.extend_from_slice(&digest);
        // Write then rename, so a reader never sees a half-written entry.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, &bytes)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}

/// The body of a cache entry if its trailing SHA-256 matches.
fn verified_body(bytes: &[u8]) -> Option<&[u8]> {
    let split = bytes.len().checked_sub(32)?;
    let (body, digest) = bytes.split_at(split);
    (Sha256::digest(body).as_slice() == digest).then_some(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verified_body_rejects_corruption() {
        let mut entry = b"compiled".to_vec();
        entry.extend_from_slice(&Sha256::digest(b"compiled"));
        assert_eq!(verified_body(&entry), Some(&b"compiled"[..]));
        entry[0] ^= 1;
        assert_eq!(verified_body(&entry), None);
        assert_eq!(verified_body(b"short"), None);
    }

    /// The smallest component there is: the binary header alone (magic, version 0x0d, layer 1).
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\x00\x01\x00";

    #[test]
    fn a_corrupt_or_deleted_entry_only_costs_a_recompile() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::default();
        let cache = ComponentCache::new(dir.path().to_path_buf(), &engine);
        let path = cache.entry_path("abc");

        cache
            .load_or_compile(&engine, "abc", EMPTY_COMPONENT)
            .unwrap();
        let first = std::fs::read(&path).expect("the first load stores an entry");
        assert!(verified_body(&first).is_some());

        // Corrupt one byte of the body: detected, deleted, recompiled, stored again.
        let mut corrupt = first.clone();
        corrupt[first.len() / 2] ^= 0xff;
        std::fs::write(&path, &corrupt).unwrap();
        assert!(
            cache.try_load(&engine, &path).is_none(),
            "corruption is detected"
        );
        assert!(!path.exists(), "the corrupt entry is removed");
        cache
            .load_or_compile(&engine, "abc", EMPTY_COMPONENT)
            .unwrap();
        let rebuilt = std::fs::read(&path).expect("the recompile stores an entry again");
        assert!(verified_body(&rebuilt).is_some(), "the new entry is valid");

        // Truncated, then deleted: each only recompiles.
        std::fs::write(&path, &first[..10]).unwrap();
        cache
            .load_or_compile(&engine, "abc", EMPTY_COMPONENT)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        cache
            .load_or_compile(&engine, "abc", EMPTY_COMPONENT)
            .unwrap();
        assert!(
            cache.try_load(&engine, &path).is_some(),
            "a valid entry again"
        );
    }
}
