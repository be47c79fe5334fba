//! The model repository: a directory of `NAME.tar.gz` artifacts, the device's copy of the
//! SageMaker MME S3 prefix. A model's name (the MME "TargetModel") is its path relative to the
//! repository. Artifacts kept elsewhere can be registered under a name at run time (what a
//! SageMaker multi-model container is told by `POST /models`).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::error::{Error, Result};

pub const MAX_NAME_BYTES: usize = 1024;

/// Checks a model name: relative, no `..`, no `.` or empty components (one spelling per
/// artifact), printable, at most 1024 bytes.
pub fn validate_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidModelName {
            name: name.chars().take(200).collect(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME_BYTES {
        return bad("longer than 1024 bytes");
    }
    if name.chars().any(|c| c.is_control()) {
        return bad("holds control characters");
    }
    if name.contains('\\') {
        return bad("holds a backslash");
    }
    let path = Path::new(name);
    if path.is_absolute() || name.starts_with('/') {
        return bad("absolute path");
    }
    // One spelling per artifact: `sub//x` and `sub/./x` would otherwise name `sub/x` again and
    // be counted against the budgets twice (Path::components hides both).
    for part in name.split('/') {
        if part.is_empty() {
            return bad("has an empty path component ('//' or a trailing '/')");
        }
        if part == "." {
            return bad("contains '.' components");
        }
    }
    for component in path.components() {
        match component {
            Component::Normal(_) => {}
            Component::ParentDir => return bad("contains '..'"),
            Component::CurDir => return bad("contains '.' components"),
            _ => return bad("not a plain relative path"),
        }
    }
    Ok(())
}

/// A directory of artifacts, read-only to the runtime, plus artifacts registered by name.
/// Clones share the registrations.
#[derive(Clone, Debug)]
pub struct ModelRepository {
    root: PathBuf,
    registered: Arc<RwLock<BTreeMap<String, PathBuf>>>,
}

impl ModelRepository {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            registered: Arc::default(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Serves the artifact file at `path` (anywhere on disk) as model `name`, ahead of any
    /// artifact of that name in the directory. Returns `false`, changing nothing, when `name`
    /// is already registered.
    pub fn register(&self, name: &str, path: impl Into<PathBuf>) -> Result<bool> {
        validate_name(name)?;
        let path = path.into();
        if !path.is_file() {
            return Err(Error::ModelNotFound {
                name: name.to_string(),
            });
        }
        let mut registered = self.registered.write().unwrap_or_else(|e| e.into_inner());
        if registered.contains_key(name) {
            return Ok(false);
        }
        registered.insert(name.to_string(), path);
        Ok(true)
    }

    /// Forgets a registration; returns the artifact path it had, if any. The model's loaded
    /// copy and extracted copy are the cache's business ([`crate::ModelCache::unload`]).
    pub fn deregister(&self, name: &str) -> Option<PathBuf> {
        self.registered
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
    }

    /// The artifact path registered as `name`, if any.
    pub fn registered(&self, name: &str) -> Option<PathBuf> {
        self.registered
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// The artifact file for `name`, after validating the name.
    pub fn resolve(&self, name: &str) -> Result<PathBuf> {
        validate_name(name)?;
        if let Some(path) = self.registered(name) {
            return Ok(path);
        }
        let path = self.root.join(name);
        if !path.is_file() {
            return Err(Error::ModelNotFound {
                name: name.to_string(),
            });
        }
        Ok(path)
    }

    /// Every artifact (`*.tar.gz`) in the repository, sub-directories included, and every
    /// registered name, sorted.
    pub fn list(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .registered
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let entries = std::fs::read_dir(&dir).map_err(|e| Error::io("listing", &dir, e))?;
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(file_type) = entry.file_type() else {
                    continue;
                };
                if file_type.is_dir() {
                    stack.push(path);
                } else if path.to_string_lossy().ends_with(".tar.gz") {
                    if let Ok(rel) = path.strip_prefix(&self.root) {
                        names.push(rel.to_string_lossy().replace('\\', "/"));
                    }
                }
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }
}

/// Longest directory name [`cache_dir_name`] gives; file systems allow 255 bytes, and the
/// cache's `.partial-PID-N-` prefix needs room.
pub const MAX_CACHE_DIR_NAME: usize = 150;
/// How much of an encoded long name is kept before its hash, for a reader.
const LONG_NAME_PREFIX: usize = 64;

/// A directory name for a model name: alphanumerics, `.`, `-`, `_` kept, the rest as `%XX`,
/// so `a/b.tar.gz` and `a%2Fb.tar.gz` cannot collide. An encoding longer than
/// [`MAX_CACHE_DIR_NAME`] becomes its first 64 bytes, `~` and the sha256 of the name: one path
/// component of bounded length, and no collision with a short name (which encodes `~` as
/// `%7E`).
pub fn cache_dir_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut cut = 0;
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && !out.is_empty()) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
        if out.len() <= LONG_NAME_PREFIX {
            cut = out.len();
        }
    }
    if out.len() <= MAX_CACHE_DIR_NAME {
        return out;
    }
    use sha2::Digest;
    let hash = sha2::Sha256::digest(name.as_bytes());
    out.truncate(cut);
    out.push('~');
    for b in hash {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        for ok in ["cifar.tar.gz", "team/sign-language.tar.gz"] {
            validate_name(ok).unwrap();
        }
        for bad in [
            "",
            "sub/./x.tar.gz",
            "sub//x.tar.gz",
            "sub/x.tar.gz/",
            "../x.tar.gz",
            "/etc/x",
            "a/../../b",
            "a\nb",
            "./a",
            "a\\b",
        ] {
            assert!(
                matches!(validate_name(bad), Err(Error::InvalidModelName { .. })),
                "{bad:?}"
            );
        }
        assert!(validate_name(&"a".repeat(1025)).is_err());
    }

    #[test]
    fn registered_artifacts_resolve_ahead_of_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let artifact = elsewhere.path().join("m.tar.gz");
        std::fs::write(&artifact, b"x").unwrap();
        let repository = ModelRepository::new(dir.path());
        let shared = repository.clone();
        assert!(matches!(
            repository.resolve("team/m"),
            Err(Error::ModelNotFound { .. })
        ));
        assert!(repository.register("team/m", &artifact).unwrap());
        assert!(!repository.register("team/m", &artifact).unwrap());
        assert_eq!(shared.resolve("team/m").unwrap(), artifact);
        assert_eq!(shared.list().unwrap(), ["team/m"]);
        assert!(repository.register("../m", &artifact).is_err());
        assert!(repository.register("missing", elsewhere.path()).is_err());
        assert_eq!(shared.deregister("team/m"), Some(artifact));
        assert!(repository.resolve("team/m").is_err());
    }

    #[test]
    fn cache_names_are_injective_and_flat() {
        assert_eq!(cache_dir_name("a/b.tar.gz"), "a%2Fb.tar.gz");
        assert_eq!(cache_dir_name("a%2Fb.tar.gz"), "a%252Fb.tar.gz");
        assert!(!cache_dir_name("..x").starts_with('.'));
    }

    /// Issue #22, item 6: a valid name over ~233 bytes failed with "File name too long".
    #[test]
    fn long_names_get_a_bounded_hashed_directory() {
        let long = format!(
            "{}/{}/{}/model.tar.gz",
            "a".repeat(100),
            "b".repeat(100),
            "c".repeat(100)
        );
        validate_name(&long).unwrap();
        let a = cache_dir_name(&long);
        let b = cache_dir_name(&format!("{long}x"));
        assert!(a.len() <= MAX_CACHE_DIR_NAME && a.contains('~'), "{a}");
        assert_ne!(a, b);
        assert!(a.starts_with(&"a".repeat(64)));
        assert!(!cache_dir_name("a~b").contains('~'));
    }
}
