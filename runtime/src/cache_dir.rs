//! [`CacheDir`]: the directory the model cache owns (issue #22, item 1).
//!
//! edgemm writes only inside a directory it has marked as its own, and deletes only entries it
//! can prove it wrote. The layout:
//!
//! ```text
//! <cache_dir>/CACHEDIR.TAG   the marker: the Cache Directory Tagging signature + an edgemm line
//! <cache_dir>/lock           the file lock processes sharing the directory take
//! <cache_dir>/models/        extracted copies (each holds edgemm-copy.json) and `.partial-*`
//!                            extractions in progress
//! <cache_dir>/scratch/       `inspect`'s scratch copies (`inspect-PID-N`, `.partial-PID-N-*`)
//! ```
//!
//! A directory that is missing or empty is created and marked. A directory that holds anything
//! else without the marker (a model repository, a home directory, the current directory) is
//! refused with [`Error::ForeignCacheDir`], naming one entry edgemm did not create, and nothing
//! in it is touched. A marked directory holding an entry outside the layout is refused the same
//! way; a subdirectory that is itself a marked edgemm cache directory is edgemm's (the CLI's
//! `inspect` works in `<cache_dir>/inspect`). Every directory edgemm creates for work in progress holds [`OWNER_FILE`] (the creating
//! process id) from its first moment, so a leftover can be told from someone else's directory.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};

/// The marker file: a Cache Directory Tagging Specification tag (so backup tools skip it).
pub const MARKER_FILE: &str = "CACHEDIR.TAG";
const SIGNATURE: &str = "Signature: 8a477f597d28d172789f06886806bc55";
/// The line that makes the tag edgemm's own (another tool's CACHEDIR.TAG does not).
const MARKER_LINE: &str = "# edgemm model cache, layout 1";
const MARKER: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
# edgemm model cache, layout 1\n\
# edgemm created everything in this directory and deletes only what it created.\n\
# Put no other files here: edgemm refuses a cache directory holding files it did not write.\n";
pub const LOCK_FILE: &str = "lock";
pub const MODELS_DIR: &str = "models";
pub const SCRATCH_DIR: &str = "scratch";
/// Written first into every work-in-progress directory edgemm creates: the owner's pid.
pub const OWNER_FILE: &str = ".edgemm-owner";
/// Prefix of `inspect`'s scratch copies.
pub const INSPECT_PREFIX: &str = "inspect-";
/// A scratch entry this old is stale even if a process of its pid is alive (pids are reused).
pub const STALE_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// A cache directory edgemm owns (see the module documentation).
#[derive(Clone, Debug)]
pub struct CacheDir {
    root: PathBuf,
}

fn foreign(dir: &Path, entry: &Path) -> Error {
    Error::ForeignCacheDir {
        dir: dir.to_path_buf(),
        entry: entry.to_path_buf(),
    }
}

/// The entries of `dir`, sorted by name (so a refusal names the same entry every time).
fn sorted_entries(dir: &Path) -> Result<Vec<fs::DirEntry>> {
    let mut entries: Vec<fs::DirEntry> = fs::read_dir(dir)
        .map_err(|e| Error::io("listing", dir, e))?
        .collect::<std::io::Result<_>>()
        .map_err(|e| Error::io("listing", dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    Ok(entries)
}

fn is_marker(path: &Path) -> bool {
    fs::read_to_string(path)
        .map(|text| text.starts_with(SIGNATURE) && text.lines().any(|l| l == MARKER_LINE))
        .unwrap_or(false)
}

/// Whether `marker` is edgemm's, allowing for another process that has created it and not yet
/// written it: a marker is one write of a few hundred bytes, so one shorter than edgemm's is
/// read again for up to half a second before it counts as another tool's.
fn marker_written(marker: &Path) -> bool {
    for _ in 0..50 {
        if is_marker(marker) {
            return true;
        }
        if fs::metadata(marker).map_or(true, |m| m.len() >= MARKER.len() as u64) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Whether `path` is itself a cache directory edgemm marked: a nested one (the CLI's
/// `inspect` works in `<cache_dir>/inspect`) is edgemm's too.
fn is_marked_cache(path: &Path) -> bool {
    path.is_dir() && is_marker(&path.join(MARKER_FILE))
}

/// Writes `pid` into a new `OWNER_FILE` in `dir` (which the caller just created).
pub(crate) fn write_owner(dir: &Path) -> Result<()> {
    let path = dir.join(OWNER_FILE);
    fs::write(&path, format!("{}\n", std::process::id()))
        .map_err(|e| Error::io("writing", &path, e))
}

/// Whether `dir` is a work-in-progress directory edgemm created: it holds [`OWNER_FILE`], or
/// it is empty (a crash between creating it and writing the owner file).
pub(crate) fn is_owned_work_dir(dir: &Path) -> bool {
    if dir.join(OWNER_FILE).is_file() {
        return true;
    }
    fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
}

/// The process id in a work directory's name: `.partial-PID-N-...` or `inspect-PID-N`.
pub(crate) fn owner_pid(name: &str) -> Option<u32> {
    let rest = name
        .strip_prefix(crate::artifact::PARTIAL_PREFIX)
        .or_else(|| name.strip_prefix(INSPECT_PREFIX))?;
    rest.split('-').next()?.parse().ok()
}

/// Whether a process with this id is running. Where `/proc` is not there to ask, `None`.
fn process_alive(pid: u32) -> Option<bool> {
    if pid == std::process::id() {
        return Some(true);
    }
    let proc = Path::new("/proc");
    proc.join("self")
        .exists()
        .then(|| proc.join(pid.to_string()).exists())
}

/// The first entry of an unmarked directory that is not provably edgemm's, as a path relative
/// to it. A legacy cache (edgemm before layout 1: `lock` and `models/` directly in the
/// directory, no marker) has none: an empty `lock` and extracted copies that carry their record.
fn first_foreign(entries: &[fs::DirEntry]) -> Result<Option<PathBuf>> {
    for e in entries {
        let path = e.path();
        match e.file_name().to_str() {
            Some(LOCK_FILE) if fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() == 0) => {}
            _ if is_marked_cache(&path) => {}
            Some(MODELS_DIR) if path.is_dir() => {
                if let Some(inner) = sorted_entries(&path)?
                    .into_iter()
                    .find(|c| !crate::cache::is_complete_copy(&c.path()))
                {
                    return Ok(Some(Path::new(MODELS_DIR).join(inner.file_name())));
                }
            }
            _ => return Ok(Some(PathBuf::from(e.file_name()))),
        }
    }
    Ok(None)
}

impl CacheDir {
    /// Opens (creating and marking it when missing or empty) the cache directory `root`.
    /// Refuses the empty path, a directory holding anything edgemm did not create, and a marked
    /// directory holding entries outside the layout; in every refusal nothing is touched.
    pub fn open(root: &Path) -> Result<Self> {
        if root.as_os_str().is_empty() {
            return Err(Error::InvalidOption(
                "the cache directory is the empty path; edgemm does not take it to mean the \
                 current directory: give a directory of edgemm's own"
                    .into(),
            ));
        }
        fs::create_dir_all(root).map_err(|e| Error::io("creating", root, e))?;
        let marker = root.join(MARKER_FILE);
        if !marker.exists() {
            match first_foreign(&sorted_entries(root)?)? {
                // Another process may have marked and laid out the directory while this one
                // listed it; then the marked layout is checked below.
                Some(entry) if !marker.exists() => return Err(foreign(root, &entry)),
                Some(_) => {}
                None => match OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&marker)
                {
                    Ok(mut file) => file
                        .write_all(MARKER.as_bytes())
                        .map_err(|e| Error::io("writing", &marker, e))?,
                    // Another process marked it first.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(Error::io("creating", &marker, e)),
                },
            }
        }
        if !marker_written(&marker) {
            return Err(foreign(root, Path::new(MARKER_FILE)));
        }
        let dir = Self {
            root: root.to_path_buf(),
        };
        for entry in sorted_entries(root)? {
            let name = entry.file_name();
            let kind = entry
                .file_type()
                .map_err(|e| Error::io("reading", root, e))?;
            let ours = match name.to_str() {
                Some(MARKER_FILE) | Some(LOCK_FILE) => kind.is_file(),
                Some(MODELS_DIR) | Some(SCRATCH_DIR) => kind.is_dir(),
                _ => kind.is_dir() && is_marked_cache(&entry.path()),
            };
            if !ours {
                return Err(foreign(root, Path::new(&name)));
            }
        }
        for sub in [dir.models(), dir.scratch()] {
            fs::create_dir_all(&sub).map_err(|e| Error::io("creating", &sub, e))?;
        }
        dir.check_scratch()?;
        Ok(dir)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn models(&self) -> PathBuf {
        self.root.join(MODELS_DIR)
    }

    pub fn scratch(&self) -> PathBuf {
        self.root.join(SCRATCH_DIR)
    }

    pub fn lock_path(&self) -> PathBuf {
        self.root.join(LOCK_FILE)
    }

    /// Opens the lock file, creating it if needed; never truncates it.
    pub(crate) fn lock_file(&self) -> Result<fs::File> {
        let path = self.lock_path();
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io("opening", &path, e))
    }

    /// Every entry of `scratch/` must be a work directory edgemm created.
    fn check_scratch(&self) -> Result<()> {
        let scratch = self.scratch();
        for entry in sorted_entries(&scratch)? {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if owner_pid(&name).is_none() || !path.is_dir() || !is_owned_work_dir(&path) {
                return Err(foreign(
                    &self.root,
                    &Path::new(SCRATCH_DIR).join(entry.file_name()),
                ));
            }
        }
        Ok(())
    }

    /// Removes the scratch copies of `inspect` runs that died (their process is gone, or they
    /// are older than [`STALE_AFTER`]). Returns the paths removed.
    pub fn clean_stale_scratch(&self) -> Result<Vec<PathBuf>> {
        self.check_scratch()?;
        let mut removed = Vec::new();
        for entry in sorted_entries(&self.scratch())? {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = owner_pid(&name) else {
                continue;
            };
            let age = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .unwrap_or_default();
            let stale = match process_alive(pid) {
                Some(alive) => !alive || age > STALE_AFTER,
                None => age > STALE_AFTER,
            };
            if stale && pid != std::process::id() {
                let path = entry.path();
                fs::remove_dir_all(&path).map_err(|e| Error::io("removing", &path, e))?;
                removed.push(path);
            }
        }
        Ok(removed)
    }
}
