//! Hostile artifacts: every archive a repository might hold is treated as an attack. Each case
//! must be refused with its own typed error whose message names the problem, and must leave
//! the disk as it found it: nothing written outside the cache directory, and inside it no
//! `.partial-*` scratch directory and no extracted model.
//!
//! Every test lays out `<tmp>/repo`, `<tmp>/cache` and `<tmp>/outside/secret.txt`; the hostile
//! entries aim at `<tmp>/outside`, and a snapshot of the whole of `<tmp>` (paths, kinds and
//! contents) taken before each attempt is compared with one taken after.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use edgemm::artifact::{self, ArtifactLimits, MANIFEST_FILE, WEIGHTS_FILE};
use edgemm::repository::cache_dir_name;
use edgemm::{ArtifactError, Error, Input, Manifest, Runtime, RuntimeOptions};
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------------
// Archives built by hand, so that they can hold what `tar::Builder` refuses to write.

/// A gzip'd tar written header by header.
struct Archive {
    tar: tar::Builder<flate2::write::GzEncoder<Vec<u8>>>,
}

impl Archive {
    fn new() -> Self {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        Self {
            tar: tar::Builder::new(gz),
        }
    }

    /// Appends one entry whose name (and link name) go into the header bytes verbatim, so
    /// `..`, absolute paths and links are written as an attacker would write them.
    fn raw(
        mut self,
        name: &str,
        kind: tar::EntryType,
        link: Option<&str>,
        size: u64,
        data: impl Read,
    ) -> Self {
        let mut header = tar::Header::new_gnu();
        let slot = &mut header.as_old_mut().name;
        assert!(
            name.len() < slot.len(),
            "entry name {name:?} does not fit a tar header; use a shorter temporary directory"
        );
        slot[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(kind);
        if let Some(link) = link {
            header.set_link_name_literal(link).unwrap();
        }
        header.set_size(size);
        header.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        header.set_mtime(0);
        header.set_cksum();
        self.tar.append(&header, data).unwrap();
        self
    }

    fn file(self, name: &str, data: &[u8]) -> Self {
        self.raw(name, tar::EntryType::Regular, None, data.len() as u64, data)
    }

    fn dir(self, name: &str) -> Self {
        self.raw(name, tar::EntryType::Directory, None, 0, io::empty())
    }

    fn symlink(self, name: &str, target: &str) -> Self {
        self.raw(name, tar::EntryType::Symlink, Some(target), 0, io::empty())
    }

    fn hard_link(self, name: &str, target: &str) -> Self {
        self.raw(name, tar::EntryType::Link, Some(target), 0, io::empty())
    }

    fn finish(self) -> Vec<u8> {
        self.tar.into_inner().unwrap().finish().unwrap()
    }
}

/// `size` zero bytes, never held in memory.
fn zeros(size: u64) -> impl Read {
    io::repeat(0).take(size)
}

/// The manifest with `weights.sha256` set to the hash of `weights`.
fn manifest_for(mut manifest: Manifest, weights: &[u8]) -> Manifest {
    manifest.weights.sha256 = sha256_hex(weights);
    manifest
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Seeded alexnet-small tensors for the fixtures' CIFAR manifest.
fn seeded_tensors() -> HashMap<String, Tensor> {
    let manifest = common::alexnet_manifest();
    let arch = edgemm_models::architecture(&manifest.architecture).unwrap();
    let specs = arch.tensor_specs(&manifest.config).unwrap();
    edgemm_models::init::seeded_weights(&specs, 7, &Device::Cpu).unwrap()
}

/// Tensors as the bytes of a safetensors file.
fn safetensors_bytes(tensors: &HashMap<String, Tensor>) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    candle_core::safetensors::save(tensors, &path).unwrap();
    fs::read(path).unwrap()
}

/// Good weights (seeded, f32) and the manifest that matches them, built once.
fn good() -> &'static (Manifest, Vec<u8>) {
    static GOOD: OnceLock<(Manifest, Vec<u8>)> = OnceLock::new();
    GOOD.get_or_init(|| {
        let weights = safetensors_bytes(&seeded_tensors());
        (manifest_for(common::alexnet_manifest(), &weights), weights)
    })
}

/// A well-formed artifact built with the same hand-written headers as the hostile ones.
fn good_archive() -> Vec<u8> {
    good_archive_with(|a| a)
}

/// A well-formed artifact followed by the entries `extra` appends: the good files are written
/// to the scratch directory first, so a refusal must also clean them up.
fn good_archive_with(extra: impl FnOnce(Archive) -> Archive) -> Vec<u8> {
    let (manifest, weights) = good();
    let archive = Archive::new()
        .file(MANIFEST_FILE, manifest.to_json().as_bytes())
        .file(WEIGHTS_FILE, weights);
    extra(archive).finish()
}

/// An otherwise well-formed artifact whose weights are `tensors` (the manifest's checksum
/// matches them, so only the tensor checks can refuse it).
fn archive_with_tensors(manifest: Manifest, tensors: &HashMap<String, Tensor>) -> Vec<u8> {
    let weights = safetensors_bytes(tensors);
    let manifest = manifest_for(manifest, &weights);
    Archive::new()
        .file(MANIFEST_FILE, manifest.to_json().as_bytes())
        .file(WEIGHTS_FILE, &weights)
        .finish()
}

// ---------------------------------------------------------------------------------------------
// The scene: a temporary directory and snapshots of everything in it.

#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File { sha256: String },
    Symlink { target: PathBuf },
}

/// Every path under a root (relative to it) with its kind and contents; links are recorded,
/// not followed.
type Snapshot = BTreeMap<PathBuf, Node>;

fn snapshot(root: &Path) -> Snapshot {
    fn walk(root: &Path, dir: &Path, out: &mut Snapshot) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).unwrap();
                out.insert(rel, Node::Symlink { target });
            } else if meta.is_dir() {
                out.insert(rel, Node::Dir);
                walk(root, &path, out);
            } else {
                let sha256 = sha256_hex(&fs::read(&path).unwrap());
                out.insert(rel, Node::File { sha256 });
            }
        }
    }
    let mut out = Snapshot::new();
    walk(root, root, &mut out);
    out
}

/// `<tmp>/repo`, `<tmp>/cache`, `<tmp>/outside/secret.txt`.
struct Scene {
    dir: tempfile::TempDir,
}

/// The name the hostile archive is stored under in the repository.
const NAME: &str = "hostile.tar.gz";

impl Scene {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["repo", "cache", "outside"] {
            fs::create_dir(dir.path().join(sub)).unwrap();
        }
        fs::write(dir.path().join("outside/secret.txt"), b"do not touch").unwrap();
        Self { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The absolute path of `rel` under the temporary directory, as text for a tar header.
    fn abs(&self, rel: &str) -> String {
        self.root().join(rel).to_str().unwrap().to_string()
    }

    fn cache(&self) -> PathBuf {
        self.root().join("cache")
    }

    /// Where [`Scene::extract_err`] extracts to.
    fn dest(&self) -> PathBuf {
        self.cache().join("models").join("x")
    }

    /// Stores `archive` as `repo/hostile.tar.gz` and returns its path.
    fn store(&self, archive: &[u8]) -> PathBuf {
        let path = self.root().join("repo").join(NAME);
        fs::write(&path, archive).unwrap();
        path
    }

    fn runtime(&self) -> Runtime {
        let mut options = RuntimeOptions::new(self.root().join("repo"));
        options.cache_dir = self.cache();
        Runtime::new(options).unwrap()
    }

    /// Extracts `archive` with `artifact::extract` under `limits`, expecting a refusal, and
    /// checks that the attempt left the disk as it found it.
    fn extract_err(&self, archive: &[u8], limits: ArtifactLimits) -> Error {
        let path = self.store(archive);
        let before = snapshot(self.root());
        let result = artifact::extract(NAME, &path, &self.dest(), limits);
        let after = snapshot(self.root());
        let err = match result {
            Ok(extracted) => panic!("hostile archive was accepted: {:?}", extracted.dir),
            Err(e) => e,
        };
        // `extract` may create the parent of its destination, inside the cache; nothing else.
        assert_untouched(&before, &after, |rel| rel == Path::new("cache/models"));
        assert!(
            !self.dest().exists(),
            "a refused archive left {:?}",
            self.dest()
        );
        err
    }

    /// Loads `archive` through a `Runtime` (as a device serving requests would), expecting a
    /// refusal, and checks that nothing was written outside the cache and no scratch
    /// directory is left behind.
    fn load_err(&self, archive: &[u8]) -> Error {
        self.store(archive);
        let runtime = self.runtime();
        let before = snapshot(self.root());
        let result = runtime.model(NAME);
        let after = snapshot(self.root());
        let err = match result {
            Ok(_) => panic!("an artifact with bad weights was loaded"),
            Err(e) => e,
        };
        // The runtime extracts before it checks the tensors; what it extracted may stay in
        // the cache (see `refused_weights_leave_no_extracted_copy`), but only there.
        let extracted = Path::new("cache/models").join(cache_dir_name(NAME));
        assert_untouched(&before, &after, |rel| {
            rel == Path::new("cache/models") || rel.starts_with(&extracted)
        });
        err
    }
}

/// Checks that every path in `before` is still there unchanged, that every new path is one
/// `allowed_new` accepts, and that no `.partial-*` scratch directory survived.
fn untouched(
    before: &Snapshot,
    after: &Snapshot,
    allowed_new: impl Fn(&Path) -> bool,
) -> Result<(), String> {
    for (path, node) in before {
        if after.get(path) != Some(node) {
            return Err(format!("{path:?} was changed or removed"));
        }
    }
    let new: Vec<&PathBuf> = after.keys().filter(|p| !before.contains_key(*p)).collect();
    let partial: Vec<&&PathBuf> = new
        .iter()
        .filter(|p| {
            p.components()
                .any(|c| c.as_os_str().to_string_lossy().starts_with(".partial-"))
        })
        .collect();
    if !partial.is_empty() {
        return Err(format!("scratch left behind: {partial:?}"));
    }
    let stray: Vec<&&PathBuf> = new.iter().filter(|p| !allowed_new(p)).collect();
    if !stray.is_empty() {
        return Err(format!("written by a refused artifact: {stray:?}"));
    }
    Ok(())
}

fn assert_untouched(before: &Snapshot, after: &Snapshot, allowed_new: impl Fn(&Path) -> bool) {
    if let Err(problem) = untouched(before, after, allowed_new) {
        panic!("{problem}");
    }
}

fn assert_mentions(message: &str, needles: &[&str]) {
    for needle in needles {
        assert!(
            message.contains(needle),
            "message {message:?} does not mention {needle:?}"
        );
    }
}

/// The `ArtifactError` inside a `BadArtifact`, or a panic naming what came instead.
fn artifact_error(err: &Error) -> &ArtifactError {
    match err {
        Error::BadArtifact { source, .. } => source,
        other => panic!("expected Error::BadArtifact, got {other:?}"),
    }
}

fn small_limits() -> ArtifactLimits {
    ArtifactLimits {
        max_unpacked_bytes: 1 << 20,
        ..ArtifactLimits::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Positive control: the same builders and checks accept a good artifact.

/// A well-formed artifact extracts, verifies and serves; without this, the refusals below
/// could pass only because everything fails.
#[test]
fn good_artifact_extracts_and_loads() {
    let scene = Scene::new();
    let path = scene.store(&good_archive());
    let before = snapshot(scene.root());
    let extracted =
        artifact::extract(NAME, &path, &scene.dest(), ArtifactLimits::default()).unwrap();
    assert_eq!(extracted.dir, scene.dest());
    assert_eq!(&extracted.manifest, &good().0);
    assert_eq!(fs::read(extracted.weights_path()).unwrap(), good().1);
    edgemm::weights::check_file(NAME, &extracted.weights_path(), &extracted.manifest).unwrap();
    let after = snapshot(scene.root());
    assert_untouched(&before, &after, |rel| {
        rel.starts_with("cache/models/x") || rel == Path::new("cache/models")
    });
    let mut names: Vec<_> = fs::read_dir(scene.dest())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    // `.edgemm-owner`: the proof that edgemm created the directory (issue #22, item 1).
    assert_eq!(names, [".edgemm-owner", MANIFEST_FILE, WEIGHTS_FILE]);

    // And through a runtime, to an answer. The cache refuses a directory holding what it did
    // not put there itself (issue #22), so the plain extraction above goes first.
    fs::remove_dir_all(scene.dest()).unwrap();
    let runtime = scene.runtime();
    let data = vec![0.5f32; 32 * 32 * 3];
    let response = runtime
        .invoke(
            NAME,
            Input::Tensor {
                data: &data,
                shape: &[1, 32, 32, 3],
            },
        )
        .unwrap();
    let sum: f32 = response.predictions[0].probabilities.iter().sum();
    assert!((sum - 1.0).abs() < 1e-5, "{sum}");
}

/// Under the small cap the bomb tests use, a good artifact of the same size still extracts:
/// the cap refuses the bomb, not everything.
#[test]
fn small_cap_accepts_a_small_artifact() {
    let scene = Scene::new();
    // A miniature alexnet-small, so that real weights fit under the 1 MiB cap.
    let mut manifest = common::alexnet_manifest();
    manifest.config = serde_json::json!({ "input_size": 8, "channels": [2, 2, 2], "hidden": 4 });
    manifest.input.height = 8;
    manifest.input.width = 8;
    let file = scene.root().join("tiny.safetensors");
    common::write_seeded_weights(&manifest, 1, &file);
    let weights = std::fs::read(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    let manifest = manifest_for(manifest, &weights);
    let archive = Archive::new()
        .file(MANIFEST_FILE, manifest.to_json().as_bytes())
        .file(WEIGHTS_FILE, &weights)
        .file("padding.bin", &[0u8; 512 << 10])
        .finish();
    let path = scene.store(&archive);
    artifact::extract(NAME, &path, &scene.dest(), small_limits()).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Entries that would write outside the extraction directory.

/// An entry path with `..` (zip-slip) is refused before anything is written.
#[test]
fn parent_dir_entry_is_refused() {
    for evil in [
        "../../../outside/evil.txt",
        "a/../../../../outside/evil.txt",
        "./../evil.txt",
    ] {
        let scene = Scene::new();
        let archive = good_archive_with(|a| a.file(evil, b"pwned"));
        let err = scene.extract_err(&archive, ArtifactLimits::default());
        match artifact_error(&err) {
            ArtifactError::UnsafeEntry { path, reason } => {
                assert_eq!(path, evil);
                assert!(reason.contains(".."), "{reason}");
            }
            other => panic!("{evil}: expected UnsafeEntry, got {other:?}"),
        }
        assert_mentions(&err.to_string(), &[NAME, evil, "'..'"]);
        assert!(!scene.root().join("outside/evil.txt").exists());
        assert!(!scene.root().join("evil.txt").exists());
    }
}

/// An absolute entry path is refused (it is aimed at a path inside the test's own temporary
/// directory, so nothing real could be hit even if it were not).
#[test]
fn absolute_entry_is_refused() {
    let scene = Scene::new();
    let evil = scene.abs("outside/evil.txt");
    let archive = good_archive_with(|a| a.file(&evil, b"pwned"));
    let err = scene.extract_err(&archive, ArtifactLimits::default());
    assert!(
        matches!(
            artifact_error(&err),
            ArtifactError::UnsafeEntry { path, reason } if *path == evil && reason.contains("absolute")
        ),
        "{err:?}"
    );
    assert_mentions(&err.to_string(), &[&evil, "absolute path"]);
    assert!(!scene.root().join("outside/evil.txt").exists());
}

/// A symbolic link entry is refused, so no later entry can write through it.
#[test]
fn symlink_entry_is_refused() {
    let scene = Scene::new();
    let outside = scene.abs("outside");
    // The classic two-step: a link out, then a file through the link.
    let archive = Archive::new()
        .symlink("escape", &outside)
        .file("escape/evil.txt", b"pwned")
        .finish();
    let err = scene.extract_err(&archive, ArtifactLimits::default());
    assert!(
        matches!(
            artifact_error(&err),
            ArtifactError::UnsafeEntry { path, reason } if path == "escape" && *reason == "symbolic link"
        ),
        "{err:?}"
    );
    assert_mentions(&err.to_string(), &["\"escape\"", "symbolic link"]);
    assert!(!scene.root().join("outside/evil.txt").exists());

    // A link in place of the weights, relative this time.
    let scene = Scene::new();
    let archive = Archive::new()
        .file(MANIFEST_FILE, good().0.to_json().as_bytes())
        .symlink(WEIGHTS_FILE, "../../../outside/secret.txt")
        .finish();
    let err = scene.extract_err(&archive, ArtifactLimits::default());
    assert!(
        matches!(
            artifact_error(&err),
            ArtifactError::UnsafeEntry { path, reason } if path == WEIGHTS_FILE && *reason == "symbolic link"
        ),
        "{err:?}"
    );
}

/// A hard link entry is refused, so no later entry can overwrite the file it names.
#[test]
fn hard_link_entry_is_refused() {
    let scene = Scene::new();
    let secret = scene.abs("outside/secret.txt");
    // A link to a file outside, then a "weights" entry that would write into that file.
    let archive = Archive::new()
        .file(MANIFEST_FILE, good().0.to_json().as_bytes())
        .hard_link(WEIGHTS_FILE, &secret)
        .file(WEIGHTS_FILE, b"overwritten")
        .finish();
    let err = scene.extract_err(&archive, ArtifactLimits::default());
    assert!(
        matches!(
            artifact_error(&err),
            ArtifactError::UnsafeEntry { path, reason } if path == WEIGHTS_FILE && *reason == "hard link"
        ),
        "{err:?}"
    );
    assert_mentions(&err.to_string(), &[WEIGHTS_FILE, "hard link"]);
    assert_eq!(
        fs::read(scene.root().join("outside/secret.txt")).unwrap(),
        b"do not touch"
    );
}

/// Devices, fifos and other special entries are refused, not created.
#[test]
fn special_file_entry_is_refused() {
    for kind in [
        tar::EntryType::Fifo,
        tar::EntryType::Char,
        tar::EntryType::Block,
    ] {
        let scene = Scene::new();
        let archive = good_archive_with(|a| a.raw("dev", kind, None, 0, io::empty()));
        let err = scene.extract_err(&archive, ArtifactLimits::default());
        assert!(
            matches!(
                artifact_error(&err),
                ArtifactError::UnsafeEntry { path, .. } if path == "dev"
            ),
            "{kind:?}: {err:?}"
        );
        assert_mentions(&err.to_string(), &["not a regular file"]);
    }
}

// ---------------------------------------------------------------------------------------------
// Archives that would exhaust the device.

/// A gzip bomb (tiny on disk, huge once inflated) is stopped at the decompressed-size cap.
#[test]
fn gzip_bomb_is_stopped_at_the_cap() {
    let scene = Scene::new();
    let bomb = 8u64 << 20;
    let archive = Archive::new()
        .file(MANIFEST_FILE, good().0.to_json().as_bytes())
        .raw(
            WEIGHTS_FILE,
            tar::EntryType::Regular,
            None,
            bomb,
            zeros(bomb),
        )
        .finish();
    assert!(archive.len() < 64 << 10, "bomb is {} bytes", archive.len());
    let err = scene.extract_err(&archive, small_limits());
    assert!(
        matches!(
            artifact_error(&err),
            ArtifactError::TooLarge { limit } if *limit == 1 << 20
        ),
        "{err:?}"
    );
    assert_mentions(&err.to_string(), &["1048576 bytes", "gzip bomb"]);
}

/// A bomb whose header sizes do not add up to much (the data hides behind a directory entry,
/// which the size checks never see) is still stopped, by the cap on the decompressed stream.
/// One hidden in a GNU long-name record is refused before its data is read at all.
#[test]
fn gzip_bomb_hidden_from_the_size_checks_is_stopped() {
    let bomb = 8u64 << 20;
    let hidden = [
        (tar::EntryType::Directory, "stuffed/"),
        (tar::EntryType::GNULongName, "././@LongLink"),
    ];
    for (kind, name) in hidden {
        let scene = Scene::new();
        let archive = Archive::new()
            .raw(name, kind, None, bomb, zeros(bomb))
            .file(MANIFEST_FILE, good().0.to_json().as_bytes())
            .finish();
        assert!(archive.len() < 64 << 10, "bomb is {} bytes", archive.len());
        let err = scene.extract_err(&archive, small_limits());
        match artifact_error(&err) {
            ArtifactError::TooLarge { limit } if kind == tar::EntryType::Directory => {
                assert_eq!(*limit, 1 << 20);
                assert_mentions(&err.to_string(), &["1048576 bytes"]);
            }
            ArtifactError::UnsafeEntry { .. } if kind == tar::EntryType::GNULongName => {
                assert_mentions(&err.to_string(), &["extension header", "64 KiB"]);
            }
            other => panic!("{kind:?}: {other:?}"),
        }
    }
}

/// A small GNU long-name record (a legitimate archive with a long path somewhere) is skipped,
/// not refused: the artifact still extracts.
#[test]
fn small_long_name_record_is_skipped() {
    let scene = Scene::new();
    let long = format!("{}/notes.txt", "d".repeat(300));
    let archive = good_archive_with(|a| {
        a.raw(
            "././@LongLink",
            tar::EntryType::GNULongName,
            None,
            long.len() as u64 + 1,
            io::Cursor::new(format!("{long}\0").into_bytes()),
        )
        .file("notes.txt", b"hello")
    });
    let path = scene.store(&archive);
    artifact::extract(NAME, &path, &scene.dest(), ArtifactLimits::default()).unwrap();
}

/// An archive of very many (tiny) entries is refused at the entry cap.
#[test]
fn too_many_entries_are_refused() {
    let scene = Scene::new();
    let limits = ArtifactLimits::default();
    let mut archive = Archive::new()
        .file(MANIFEST_FILE, good().0.to_json().as_bytes())
        .file(WEIGHTS_FILE, &good().1);
    for i in 0..limits.max_entries {
        archive = archive.dir(&format!("junk{i}/"));
    }
    let err = scene.extract_err(&archive.finish(), limits);
    assert!(
        matches!(
            artifact_error(&err),
            ArtifactError::TooManyEntries { limit } if *limit == 64
        ),
        "{err:?}"
    );
    assert_mentions(&err.to_string(), &["more than 64 entries"]);
}

// ---------------------------------------------------------------------------------------------
// Archives that are not what they claim to be.

/// A download cut short (a real artifact truncated in the middle) is refused as corrupt.
#[test]
fn truncated_gzip_is_refused() {
    let scene = Scene::new();
    let whole = good_archive();
    let err = scene.extract_err(&whole[..whole.len() / 2], ArtifactLimits::default());
    assert!(
        matches!(artifact_error(&err), ArtifactError::Corrupt(_)),
        "{err:?}"
    );
    assert_mentions(&err.to_string(), &["not a readable gzip'd tar"]);
}

/// Bytes that are not gzip at all are refused as corrupt.
#[test]
fn garbage_is_refused() {
    let scene = Scene::new();
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    let err = scene.extract_err(&garbage, ArtifactLimits::default());
    assert!(
        matches!(artifact_error(&err), ArtifactError::Corrupt(_)),
        "{err:?}"
    );
    assert_mentions(&err.to_string(), &["not a readable gzip'd tar"]);

    // A plain (not gzip'd) tar is garbage too.
    let scene = Scene::new();
    let mut plain = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(2);
    header.set_cksum();
    plain
        .append_data(&mut header, MANIFEST_FILE, &b"{}"[..])
        .unwrap();
    let err = scene.extract_err(&plain.into_inner().unwrap(), ArtifactLimits::default());
    assert!(
        matches!(artifact_error(&err), ArtifactError::Corrupt(_)),
        "{err:?}"
    );
}

/// An archive without `manifest.json` is refused, naming the missing file.
#[test]
fn missing_manifest_is_refused() {
    let scene = Scene::new();
    let archive = Archive::new().file(WEIGHTS_FILE, &good().1).finish();
    let err = scene.extract_err(&archive, ArtifactLimits::default());
    assert!(
        matches!(
            artifact_error(&err),
            ArtifactError::MissingFile { file } if *file == MANIFEST_FILE
        ),
        "{err:?}"
    );
    assert_mentions(&err.to_string(), &["no manifest.json"]);
}

/// An archive without `model.safetensors` is refused, naming the missing file.
#[test]
fn missing_weights_are_refused() {
    let scene = Scene::new();
    let archive = Archive::new()
        .file(MANIFEST_FILE, good().0.to_json().as_bytes())
        .finish();
    let err = scene.extract_err(&archive, ArtifactLimits::default());
    assert!(
        matches!(
            artifact_error(&err),
            ArtifactError::MissingFile { file } if *file == WEIGHTS_FILE
        ),
        "{err:?}"
    );
    assert_mentions(&err.to_string(), &["no model.safetensors"]);
}

/// An archive holding a file twice (two readers could disagree on which one counts) is
/// refused.
#[test]
fn duplicate_file_is_refused() {
    let scene = Scene::new();
    let json = good().0.to_json();
    let archive = Archive::new()
        .file(MANIFEST_FILE, json.as_bytes())
        .file(WEIGHTS_FILE, &good().1)
        .file(&format!("./{MANIFEST_FILE}"), json.as_bytes())
        .finish();
    let err = scene.extract_err(&archive, ArtifactLimits::default());
    assert!(
        matches!(
            artifact_error(&err),
            ArtifactError::DuplicateFile { file } if file == MANIFEST_FILE
        ),
        "{err:?}"
    );
    assert_mentions(&err.to_string(), &["manifest.json twice"]);
}

/// A manifest that is not valid JSON is refused, naming manifest.json.
#[test]
fn unreadable_manifest_is_refused() {
    let scene = Scene::new();
    let archive = Archive::new()
        .file(MANIFEST_FILE, b"{ this is not json")
        .file(WEIGHTS_FILE, &good().1)
        .finish();
    let err = scene.extract_err(&archive, ArtifactLimits::default());
    assert!(
        matches!(artifact_error(&err), ArtifactError::Manifest(_)),
        "{err:?}"
    );
    assert_mentions(
        &err.to_string(),
        &["manifest.json is invalid", "format_version"],
    );
}

/// A manifest from a newer format is refused by version number, before its unknown fields
/// are read.
#[test]
fn unknown_format_version_is_refused() {
    let scene = Scene::new();
    let mut json: serde_json::Value = serde_json::from_str(&good().0.to_json()).unwrap();
    json["format_version"] = 99.into();
    json["a_field_from_the_future"] = true.into();
    let archive = Archive::new()
        .file(MANIFEST_FILE, json.to_string().as_bytes())
        .file(WEIGHTS_FILE, &good().1)
        .finish();
    let err = scene.extract_err(&archive, ArtifactLimits::default());
    assert!(
        matches!(
            artifact_error(&err),
            ArtifactError::UnsupportedFormatVersion {
                found: 99,
                supported: 1
            }
        ),
        "{err:?}"
    );
    assert_mentions(&err.to_string(), &["format_version 99", "version 1"]);
}

/// Weights that do not hash to the manifest's sha256 are refused, showing both hashes.
#[test]
fn checksum_mismatch_is_refused() {
    let scene = Scene::new();
    let (manifest, weights) = good();
    let manifest = manifest_for(manifest.clone(), b"other bytes");
    let archive = Archive::new()
        .file(MANIFEST_FILE, manifest.to_json().as_bytes())
        .file(WEIGHTS_FILE, weights)
        .finish();
    let err = scene.extract_err(&archive, ArtifactLimits::default());
    let (expected, actual) = (sha256_hex(b"other bytes"), sha256_hex(weights));
    assert!(
        matches!(
            artifact_error(&err),
            ArtifactError::ChecksumMismatch { expected: e, actual: a } if *e == expected && *a == actual
        ),
        "{err:?}"
    );
    assert_mentions(&err.to_string(), &["sha256", &expected, &actual]);
}

// ---------------------------------------------------------------------------------------------
// Archives that are well-formed but whose weights do not fit the manifest: refused when the
// runtime loads them, and refused by `pack` before they are ever shipped.

/// Writes `tensors` to a scratch file and checks `artifact::pack` refuses to pack them with
/// `manifest`, leaving no output; returns pack's error.
fn pack_err(manifest: &Manifest, tensors: &HashMap<String, Tensor>) -> Error {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("w.safetensors");
    candle_core::safetensors::save(tensors, &weights).unwrap();
    let out = dir.path().join("out.tar.gz");
    let err = match artifact::pack(manifest, &weights, &out) {
        Ok(_) => panic!("pack accepted weights that do not fit the manifest"),
        Err(e) => e,
    };
    let left: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["w.safetensors"], "pack left output behind");
    err
}

/// A tensor of the wrong shape is refused, naming the tensor and both shapes.
#[test]
fn tensor_with_wrong_shape_is_refused() {
    let manifest = common::alexnet_manifest();
    let mut tensors = seeded_tensors();
    let right = tensors["fc2.weight"].dims().to_vec();
    let wrong = vec![right[0] + 1, right[1]];
    tensors.insert(
        "fc2.weight".into(),
        Tensor::zeros(wrong.as_slice(), DType::F32, &Device::Cpu).unwrap(),
    );
    let check = |err: &Error, label: &str| {
        assert!(
            matches!(
                artifact_error(err),
                ArtifactError::TensorShape { name, expected, actual, .. }
                    if name == "fc2.weight" && expected[..] == right[..] && actual[..] == wrong[..]
            ),
            "{err:?}"
        );
        assert_mentions(
            &err.to_string(),
            &[
                label,
                "\"fc2.weight\"",
                &format!("{wrong:?}"),
                &format!("{right:?}"),
                "alexnet-small",
            ],
        );
    };

    let scene = Scene::new();
    let archive = archive_with_tensors(manifest.clone(), &tensors);
    let err = scene.load_err(&archive);
    check(&err, NAME);
    // The refusal sticks: a second request does not load what the first extracted.
    let err = match scene.runtime().model(NAME) {
        Ok(_) => panic!("second load accepted the bad weights"),
        Err(e) => e,
    };
    check(&err, NAME);

    let err = pack_err(&manifest, &tensors);
    check(&err, "out.tar.gz");
}

/// Weights stored as f16 under a manifest that says f32 (and the reverse) are refused,
/// naming both dtypes.
#[test]
fn tensor_with_wrong_dtype_is_refused() {
    let f32_tensors = seeded_tensors();
    let f16_tensors: HashMap<String, Tensor> = f32_tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.to_dtype(DType::F16).unwrap()))
        .collect();
    let mut says_f16 = common::alexnet_manifest();
    says_f16.weights.dtype = "f16".into();
    let cases = [
        (common::alexnet_manifest(), &f16_tensors, "f32", "f16"),
        (says_f16, &f32_tensors, "f16", "f32"),
    ];
    for (manifest, tensors, declared, stored) in cases {
        let check = |err: &Error| {
            assert!(
                matches!(
                    artifact_error(err),
                    ArtifactError::TensorDtype { expected, actual, .. }
                        if expected == declared && actual == stored
                ),
                "{err:?}"
            );
            assert_mentions(
                &err.to_string(),
                &[
                    &format!("is {stored}, the manifest declares weights as {declared}"),
                    "tensor \"",
                ],
            );
        };
        let scene = Scene::new();
        check(&scene.load_err(&archive_with_tensors(manifest.clone(), tensors)));
        check(&pack_err(&manifest, tensors));
    }
}

/// Weights missing a tensor the architecture needs are refused, naming it and its shape.
#[test]
fn missing_tensor_is_refused() {
    let manifest = common::alexnet_manifest();
    let mut tensors = seeded_tensors();
    let shape = tensors.remove("conv2.bias").unwrap().dims().to_vec();
    let check = |err: &Error| {
        assert!(
            matches!(
                artifact_error(err),
                ArtifactError::MissingTensor { name, shape: s, .. }
                    if name == "conv2.bias" && s[..] == shape[..]
            ),
            "{err:?}"
        );
        assert_mentions(
            &err.to_string(),
            &["lack tensor \"conv2.bias\"", &format!("{shape:?}")],
        );
    };
    let scene = Scene::new();
    check(&scene.load_err(&archive_with_tensors(manifest.clone(), &tensors)));
    check(&pack_err(&manifest, &tensors));
}

/// Weights holding a tensor the architecture does not use are refused, naming it.
#[test]
fn unexpected_tensor_is_refused() {
    let manifest = common::alexnet_manifest();
    let mut tensors = seeded_tensors();
    tensors.insert(
        "backdoor.weight".into(),
        Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap(),
    );
    let check = |err: &Error| {
        assert!(
            matches!(
                artifact_error(err),
                ArtifactError::UnexpectedTensor { name, .. } if name == "backdoor.weight"
            ),
            "{err:?}"
        );
        assert_mentions(&err.to_string(), &["\"backdoor.weight\"", "does not use"]);
    };
    let scene = Scene::new();
    check(&scene.load_err(&archive_with_tensors(manifest.clone(), &tensors)));
    check(&pack_err(&manifest, &tensors));
}

/// A model whose weights are refused is not kept in the cache: the extracted copy of a
/// refused artifact (with a source stamp that makes it look current) wastes the device's disk
/// and looks like a model that passed.
#[test]
fn refused_weights_leave_no_extracted_copy() {
    let mut tensors = seeded_tensors();
    tensors.remove("conv2.bias");
    let scene = Scene::new();
    scene.load_err(&archive_with_tensors(common::alexnet_manifest(), &tensors));
    let extracted = scene.cache().join("models").join(cache_dir_name(NAME));
    let left: Vec<_> = fs::read_dir(&extracted)
        .map(|dir| dir.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{extracted:?} holds {left:?}");
}

/// The snapshot comparison itself notices a stray file, a changed file and scratch left in
/// the cache (so the refusals above cannot pass because it sees nothing).
#[test]
fn snapshot_check_notices_stray_writes() {
    let scene = Scene::new();
    let root = scene.root();
    let before = snapshot(root);
    let only_models_dir = |rel: &Path| rel == Path::new("cache/models");
    let check = || untouched(&before, &snapshot(root), only_models_dir);

    fs::create_dir_all(root.join("cache/models")).unwrap();
    assert_eq!(check(), Ok(()));

    fs::write(root.join("evil.txt"), b"x").unwrap();
    assert!(check().unwrap_err().contains("evil.txt"));
    fs::remove_file(root.join("evil.txt")).unwrap();

    fs::write(root.join("outside/secret.txt"), b"changed").unwrap();
    assert!(check().unwrap_err().contains("secret.txt"));
    fs::write(root.join("outside/secret.txt"), b"do not touch").unwrap();

    fs::create_dir(root.join("cache/models/.partial-1-2-x")).unwrap();
    assert!(check().unwrap_err().contains(".partial-1-2-x"));
    fs::remove_dir(root.join("cache/models/.partial-1-2-x")).unwrap();

    fs::create_dir(root.join("cache/models/x")).unwrap();
    assert!(check().unwrap_err().contains("cache/models/x"));
}
