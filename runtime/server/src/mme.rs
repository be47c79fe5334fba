//! The multi-model container's `POST /models` `url`: where the platform put a model.
//!
//! SageMaker downloads `s3://.../NAME.tar.gz` and extracts it into a directory (the `url`,
//! e.g. `/opt/ml/models/<hash>/model`); a device may as well name the `.tar.gz` itself. The
//! runtime's cache loads `.tar.gz` artifacts, so:
//! - a file is registered as it is;
//! - a directory holding exactly one `*.tar.gz` registers that file;
//! - a directory holding an extracted artifact (`manifest.json`, `model.safetensors`) is packed
//!   once into `<cache dir>/packed/` (written under a temporary name, then renamed: a crash never
//!   leaves a half-written archive under the real name), and that archive is registered.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::errors::ApiError;

/// What the runtime reads of an artifact, and so what packing takes from a directory; anything
/// else there (SageMaker archives often carry code/) is left out.
const ARTIFACT_FILES: [&str; 2] = [
    edgemm::artifact::MANIFEST_FILE,
    edgemm::artifact::WEIGHTS_FILE,
];

/// Resolves `url` to an artifact file, packing an extracted directory into `packed_dir`.
pub fn artifact_for_url(url: &str, packed_dir: &Path, name: &str) -> Result<PathBuf, ApiError> {
    let path = Path::new(url);
    if url.is_empty() || url.len() > 4096 || !path.is_absolute() {
        return Err(ApiError::BadRequest(
            "\"url\" must be an absolute local path (a model directory or a .tar.gz)".into(),
        ));
    }
    let meta = fs::metadata(path).map_err(|_| {
        ApiError::Runtime(edgemm::Error::ModelNotFound {
            name: format!("{name} (url {url})"),
        })
    })?;
    if meta.is_file() {
        return Ok(path.to_path_buf());
    }
    if path.join("manifest.json").is_file() {
        return pack(path, packed_dir, name);
    }
    let archives: Vec<PathBuf> = fs::read_dir(path)
        .map_err(|e| ApiError::BadRequest(format!("cannot list {url}: {e}")))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.to_string_lossy().ends_with(".tar.gz"))
        .take(2)
        .collect();
    match archives.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(ApiError::BadRequest(format!(
            "{url} holds neither an extracted model (manifest.json) nor exactly one .tar.gz"
        ))),
    }
}

fn pack(dir: &Path, packed_dir: &Path, name: &str) -> Result<PathBuf, ApiError> {
    let io = |what: &str, e: std::io::Error| ApiError::Internal(format!("{what}: {e}"));
    fs::create_dir_all(packed_dir).map_err(|e| io("creating the packed-model directory", e))?;
    let file_name = format!("{}.tar.gz", edgemm::repository::cache_dir_name(name));
    let dest = packed_dir.join(&file_name);
    let temp = packed_dir.join(format!(".partial-{}-{file_name}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let file = fs::File::create(&temp)?;
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        tar.follow_symlinks(false);
        for entry in ARTIFACT_FILES {
            let path = dir.join(entry);
            if path.is_file() {
                tar.append_path_with_name(&path, entry)?;
            }
        }
        let gz = tar.into_inner()?;
        let mut file = gz.finish()?;
        file.flush()?;
        file.sync_all()?;
        fs::rename(&temp, &dest)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&temp);
        return Err(io("packing the model directory", e));
    }
    Ok(dest)
}
