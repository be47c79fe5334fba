//! The model repository: a directory of `NAME.tar.gz` artifacts, the device's copy of the
//! SageMaker MME S3 prefix. A model's name (the MME "TargetModel") is its path relative to the
//! repository.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

pub const MAX_NAME_BYTES: usize = 1024;

/// Checks a model name: relative, no `..`, printable, at most 1024 bytes.
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

/// A directory of artifacts. Read-only to the runtime.
#[derive(Clone, Debug)]
pub struct ModelRepository {
    root: PathBuf,
}

impl ModelRepository {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The artifact file for `name`, after validating the name.
    pub fn resolve(&self, name: &str) -> Result<PathBuf> {
        validate_name(name)?;
        let path = self.root.join(name);
        if !path.is_file() {
            return Err(Error::ModelNotFound {
                name: name.to_string(),
            });
        }
        Ok(path)
    }

    /// Every artifact (`*.tar.gz`) in the repository, sub-directories included, sorted.
    pub fn list(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
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
        Ok(names)
    }
}

/// A directory name for a model name: alphanumerics, `.`, `-`, `_` kept, the rest as `%XX`,
/// so `a/b.tar.gz` and `a%2Fb.tar.gz` cannot collide.
pub fn cache_dir_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && !out.is_empty()) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
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
    fn cache_names_are_injective_and_flat() {
        assert_eq!(cache_dir_name("a/b.tar.gz"), "a%2Fb.tar.gz");
        assert_eq!(cache_dir_name("a%2Fb.tar.gz"), "a%252Fb.tar.gz");
        assert!(!cache_dir_name("..x").starts_with('.'));
    }
}
