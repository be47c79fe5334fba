//! Model artifacts: a gzip'd tar holding `manifest.json` and `model.safetensors`, the same
//! `NAME.tar.gz` a SageMaker multi-model endpoint serves. A tar holding a Triton model
//! directory instead (`<model>/config.pbtxt`, `<model>/<version>/model.onnx`) is converted
//! into those two files as it is extracted ([`crate::triton`]).
//!
//! Extraction treats every archive as hostile: only regular files are written (the two the
//! format defines, or a Triton directory's version files under names of our own until they
//! are converted), paths must be relative without `..`, the entry count and the
//! decompressed size are capped (gzip bombs), the weights' sha256 must match the manifest, and
//! the files land in a temporary directory that is renamed into place only once all of that
//! held, so a crash never leaves a half model that looks whole.

use std::cell::Cell;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use crate::error::{ArtifactError, Error, Result};
use crate::manifest::Manifest;

pub const MANIFEST_FILE: &str = "manifest.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
const MAX_MANIFEST_BYTES: u64 = 4 << 20;
const MAX_EXTENSION_BYTES: u64 = 64 << 10;

/// Caps applied while extracting an archive.
#[derive(Clone, Copy, Debug)]
pub struct ArtifactLimits {
    /// Tar entries of any kind, including ignored ones.
    pub max_entries: usize,
    /// Bytes after decompression, tar headers included.
    pub max_unpacked_bytes: u64,
}

impl Default for ArtifactLimits {
    fn default() -> Self {
        Self {
            max_entries: 64,
            // VGG16 in f32 is 528 MB; leave room for it and for a model twice that size.
            max_unpacked_bytes: 2 << 30,
        }
    }
}

/// An artifact extracted and verified on disk.
#[derive(Clone, Debug)]
pub struct ExtractedArtifact {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl ExtractedArtifact {
    pub fn weights_path(&self) -> PathBuf {
        self.dir.join(WEIGHTS_FILE)
    }

    /// Reads back an extracted directory written by [`extract`] (its checksum was verified
    /// when it was written).
    pub fn open(name: &str, dir: &Path) -> Result<Self> {
        let bytes = fs::read(dir.join(MANIFEST_FILE))
            .map_err(|e| Error::io("reading", dir.join(MANIFEST_FILE), e))?;
        let manifest = Manifest::from_json(&bytes).map_err(|e| Error::artifact(name, e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
        })
    }
}

/// Counts decompressed bytes and fails the stream once the cap is passed; the flag tells the
/// caller that this, and not corruption, ended the read.
struct CappedReader<R> {
    inner: R,
    remaining: u64,
    exceeded: Rc<Cell<bool>>,
}

impl<R: Read> Read for CappedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.remaining {
            self.exceeded.set(true);
            return Err(io::Error::other("decompressed size cap exceeded"));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Checks one entry's path: relative, no `..`, no empty or odd components.
/// Returns the path with any leading `./` removed.
fn safe_entry_path(raw: &[u8]) -> std::result::Result<String, ArtifactError> {
    let shown = String::from_utf8_lossy(raw).into_owned();
    let unsafe_entry = |reason| ArtifactError::UnsafeEntry {
        path: shown.clone(),
        reason,
    };
    let text = std::str::from_utf8(raw).map_err(|_| unsafe_entry("path is not UTF-8"))?;
    if text.starts_with('/') || text.starts_with('\\') || text.contains(':') {
        return Err(unsafe_entry("absolute path"));
    }
    if text.contains('\0') || text.contains('\\') {
        return Err(unsafe_entry("path holds a NUL or a backslash"));
    }
    let parts: Vec<&str> = text
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(unsafe_entry("path contains '..'"));
    }
    Ok(parts.join("/"))
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Prefix of directories being extracted; a directory so named is never a finished model.
pub const PARTIAL_PREFIX: &str = ".partial-";

/// A fresh directory beside `dest`, named so that it can never be mistaken for a finished one
/// ([`PARTIAL_PREFIX`]) and removed again on drop unless it was renamed.
pub(crate) struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    fn beside(dest: &Path) -> Result<Self> {
        let parent = dest.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(|e| Error::io("creating", parent, e))?;
        let stem = dest
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = parent.join(format!(
            "{PARTIAL_PREFIX}{}-{}-{stem}",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&path).map_err(|e| Error::io("creating", &path, e))?;
        let dir = Self { path, keep: false };
        // From here on the directory is provably ours (see `cache_dir`), even if we crash.
        crate::cache_dir::write_owner(&dir.path)?;
        Ok(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Extracts and verifies `archive` into `dest`, which must not exist yet: paths, entry types,
/// caps, checksum, and every tensor against the manifest's architecture. `name` only labels
/// errors. Nothing that was there before is ever deleted or overwritten.
pub fn extract(
    name: &str,
    archive: &Path,
    dest: &Path,
    limits: ArtifactLimits,
) -> Result<ExtractedArtifact> {
    extract_with(name, archive, dest, limits, &[])
}

/// [`extract`], also writing `extra` files (name, contents) into the directory before it is
/// renamed into place, so they appear atomically with the model (the cache's bookkeeping).
pub fn extract_with(
    name: &str,
    archive: &Path,
    dest: &Path,
    limits: ArtifactLimits,
    extra: &[(&str, &[u8])],
) -> Result<ExtractedArtifact> {
    let file = File::open(archive).map_err(|e| Error::io("opening", archive, e))?;
    if fs::symlink_metadata(dest).is_ok() {
        return Err(Error::io(
            "extracting into",
            dest,
            io::Error::new(io::ErrorKind::AlreadyExists, "it already exists"),
        ));
    }
    let tmp = TempDir::beside(dest)?;
    let manifest = unpack(file, &tmp.path, limits).map_err(|e| Error::artifact(name, e))?;
    for (file_name, contents) in extra {
        let path = tmp.path.join(file_name);
        fs::write(&path, contents).map_err(|e| Error::io("writing", &path, e))?;
    }
    // Only a copy whose every tensor fits the architecture is renamed into place, so a
    // directory under its final name is always a usable model.
    crate::weights::check_file(name, &tmp.path.join(WEIGHTS_FILE), &manifest)?;
    fs::rename(&tmp.path, dest).map_err(|e| Error::io("renaming into", dest, e))?;
    let mut tmp = tmp;
    tmp.keep = true;
    Ok(ExtractedArtifact {
        dir: dest.to_path_buf(),
        manifest,
    })
}

fn unpack(
    file: File,
    dir: &Path,
    limits: ArtifactLimits,
) -> std::result::Result<Manifest, ArtifactError> {
    let exceeded = Rc::new(Cell::new(false));
    let reader = CappedReader {
        inner: flate2::read::GzDecoder::new(io::BufReader::new(file)),
        remaining: limits.max_unpacked_bytes,
        exceeded: exceeded.clone(),
    };
    let mut tar = tar::Archive::new(reader);
    let read_error = |e: io::Error| {
        if exceeded.get() {
            ArtifactError::TooLarge {
                limit: limits.max_unpacked_bytes,
            }
        } else {
            ArtifactError::Corrupt(e)
        }
    };
    let mut triton = crate::triton::Collector::new(dir.join(crate::triton::SOURCE_DIR));
    let mut manifest_bytes: Option<Vec<u8>> = None;
    let mut weights_sha: Option<String> = None;
    let mut count = 0usize;
    let mut declared = 0u64;
    // Raw mode: the tar crate would otherwise read GNU long-name and pax records into memory
    // whole, before any check of ours. Here they are ordinary entries, capped and skipped; a
    // long name then shows as its truncated header name, which is checked like any other.
    for entry in tar.entries().map_err(read_error)?.raw(true) {
        let mut entry = entry.map_err(read_error)?;
        count += 1;
        if count > limits.max_entries {
            return Err(ArtifactError::TooManyEntries {
                limit: limits.max_entries,
            });
        }
        let raw_path = entry.path_bytes().into_owned();
        let path = safe_entry_path(&raw_path)?;
        let kind = entry.header().entry_type();
        let shown = || String::from_utf8_lossy(&raw_path).into_owned();
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {}
            tar::EntryType::Directory => continue,
            tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink
            | tar::EntryType::XHeader
            | tar::EntryType::XGlobalHeader => {
                if entry.size() > MAX_EXTENSION_BYTES {
                    return Err(ArtifactError::UnsafeEntry {
                        path: shown(),
                        reason: "extension header (long name or pax) over 64 KiB",
                    });
                }
                continue;
            }
            tar::EntryType::Symlink => {
                return Err(ArtifactError::UnsafeEntry {
                    path: shown(),
                    reason: "symbolic link",
                })
            }
            tar::EntryType::Link => {
                return Err(ArtifactError::UnsafeEntry {
                    path: shown(),
                    reason: "hard link",
                })
            }
            _ => {
                return Err(ArtifactError::UnsafeEntry {
                    path: shown(),
                    reason: "not a regular file (device, fifo or unknown type)",
                })
            }
        }
        let size = entry.size();
        declared = declared.saturating_add(size);
        if declared > limits.max_unpacked_bytes {
            return Err(ArtifactError::TooLarge {
                limit: limits.max_unpacked_bytes,
            });
        }
        match path.as_str() {
            MANIFEST_FILE => {
                if manifest_bytes.is_some() {
                    return Err(ArtifactError::DuplicateFile { file: path });
                }
                if size > MAX_MANIFEST_BYTES {
                    return Err(ArtifactError::Manifest(format!(
                        "{size} bytes, over the {MAX_MANIFEST_BYTES}-byte cap"
                    )));
                }
                let mut bytes = Vec::with_capacity(size as usize);
                entry.read_to_end(&mut bytes).map_err(read_error)?;
                fs::write(dir.join(MANIFEST_FILE), &bytes).map_err(ArtifactError::Corrupt)?;
                manifest_bytes = Some(bytes);
            }
            WEIGHTS_FILE => {
                if weights_sha.is_some() {
                    return Err(ArtifactError::DuplicateFile { file: path });
                }
                weights_sha = Some(copy_hashed(
                    &mut entry,
                    &dir.join(WEIGHTS_FILE),
                    &read_error,
                )?);
            }
            // Other files (SageMaker archives often carry code/ or a README) are not ours,
            // unless they make a Triton model directory.
            _ => triton.offer(&path, size, &mut entry, &read_error)?,
        }
    }
    if manifest_bytes.is_none() && weights_sha.is_none() && triton.found() {
        return triton.convert(dir);
    }
    drop(triton);
    let manifest_bytes = manifest_bytes.ok_or(ArtifactError::MissingFile {
        file: MANIFEST_FILE,
    })?;
    let manifest = Manifest::from_json(&manifest_bytes)?;
    let actual = weights_sha.ok_or(ArtifactError::MissingFile { file: WEIGHTS_FILE })?;
    if actual != manifest.weights.sha256 {
        return Err(ArtifactError::ChecksumMismatch {
            expected: manifest.weights.sha256.clone(),
            actual,
        });
    }
    Ok(manifest)
}

/// Copies `reader` to a new file at `path`, returning the sha256 of what was written.
pub(crate) fn copy_hashed(
    reader: &mut (impl Read + ?Sized),
    path: &Path,
    read_error: &dyn Fn(io::Error) -> ArtifactError,
) -> std::result::Result<String, ArtifactError> {
    let mut out = BufWriter::new(File::create(path).map_err(ArtifactError::Corrupt)?);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).map_err(read_error)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(ArtifactError::Corrupt)?;
    }
    out.into_inner()
        .map_err(|e| ArtifactError::Corrupt(e.into_error()))?
        .sync_all()
        .map_err(ArtifactError::Corrupt)?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of a file, lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|e| Error::io("opening", path, e))?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).map_err(|e| Error::io("reading", path, e))?;
    Ok(hex(&hasher.finalize()))
}

/// Writes an artifact: `manifest` (its `weights.sha256` filled in from `weights`) and the
/// weights file, gzip'd, to `out` (through a temporary file, renamed at the end).
///
/// The weights are checked against the manifest's architecture first, so a wrong pair is
/// refused here rather than on the device.
pub fn pack(manifest: &Manifest, weights: &Path, out: &Path) -> Result<Manifest> {
    let mut manifest = manifest.clone();
    manifest.weights.sha256 = sha256_file(weights)?;
    let label = out.display().to_string();
    manifest
        .validate()
        .map_err(|e| Error::artifact(&label, e))?;
    crate::weights::check_file(&label, weights, &manifest)?;

    let tmp = out.with_extension("partial");
    // `create_new`: a file already there is someone's, not ours to overwrite or delete.
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| Error::io("creating", &tmp, e))?;
    let result = (|| -> io::Result<()> {
        let gz = flate2::write::GzEncoder::new(BufWriter::new(file), flate2::Compression::best());
        let mut tar = tar::Builder::new(gz);
        let json = manifest.to_json();
        let mut header = tar::Header::new_gnu();
        header.set_size(json.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, MANIFEST_FILE, json.as_bytes())?;
        let mut weights_file = File::open(weights)?;
        let mut header = tar::Header::new_gnu();
        header.set_size(weights_file.metadata()?.len());
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, WEIGHTS_FILE, &mut weights_file)?;
        tar.into_inner()?.finish()?.into_inner()?.sync_all()?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io("writing", out, e));
    }
    fs::rename(&tmp, out).map_err(|e| Error::io("renaming into", out, e))?;
    Ok(manifest)
}

/// What `edgemm inspect` prints.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Inspection {
    pub archive_bytes: u64,
    pub weights_bytes: u64,
    pub sha256: String,
    pub manifest: Manifest,
    pub tensors: Vec<crate::weights::TensorInfo>,
    /// The network's graph: its nodes, shapes, parameters and FLOPs.
    pub graph: Vec<edgemm_models::graph::NodeSummary>,
    /// How the CPU runs it: the fast plan's steps (which kernel runs which nodes, and which
    /// fall back to candle), or `None` where it runs as candle ops.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<Vec<edgemm_models::StepInfo>>,
}

/// Extracts `archive` into a scratch directory of the cache directory `cache_dir` (its
/// `scratch/`, see [`crate::cache_dir`]), verifies it fully (checksum, every tensor against the
/// architecture) and describes it. Scratch copies left by `inspect` runs that died are removed
/// first.
pub fn inspect(archive: &Path, cache_dir: &Path, limits: ArtifactLimits) -> Result<Inspection> {
    let label = archive.display().to_string();
    let dir = crate::cache_dir::CacheDir::open(cache_dir)?;
    dir.clean_stale_scratch()?;
    let dest = dir.scratch().join(format!(
        "{}{}-{}",
        crate::cache_dir::INSPECT_PREFIX,
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let extracted = extract(&label, archive, &dest, limits)?;
        let weights = extracted.weights_path();
        let tensors = crate::weights::check_file(&label, &weights, &extracted.manifest)?;
        let manifest = &extracted.manifest;
        let graph = edgemm_models::architecture(&manifest.architecture)
            .and_then(|arch| arch.graph(&manifest.config)?.summary())
            .map_err(|e| Error::artifact(&label, ArtifactError::from(e)))?;
        let loaded = crate::weights::load(&label, &weights, manifest, &candle_core::Device::Cpu)?;
        let plan = loaded.network.steps();
        Ok(Inspection {
            archive_bytes: fs::metadata(archive)
                .map_err(|e| Error::io("reading", archive, e))?
                .len(),
            weights_bytes: fs::metadata(&weights)
                .map_err(|e| Error::io("reading", &weights, e))?
                .len(),
            sha256: extracted.manifest.weights.sha256.clone(),
            manifest: extracted.manifest,
            tensors,
            graph,
            plan,
        })
    })();
    let _ = fs::remove_dir_all(&dest);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths_are_checked() {
        assert_eq!(
            safe_entry_path(b"./manifest.json").unwrap(),
            "manifest.json"
        );
        assert_eq!(safe_entry_path(b"code/x.py").unwrap(), "code/x.py");
        for bad in [
            &b"../x"[..],
            b"a/../../x",
            b"/etc/passwd",
            b"C:/x",
            b"a\\..\\x",
        ] {
            assert!(
                matches!(safe_entry_path(bad), Err(ArtifactError::UnsafeEntry { .. })),
                "{bad:?}"
            );
        }
    }
}
