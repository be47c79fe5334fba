//! Creating and freeing a runtime, its options, its metrics.

use std::ffi::c_char;
use std::path::PathBuf;
use std::sync::Arc;

use super::boundary::{arg, boundary, check_range, guard, out, str_arg, FfiError};
use super::status::edgemm_status;
use crate::{Runtime, RuntimeOptions};

/// A runtime: a model repository, its cache, and the loaded models. Opaque.
/// Thread-safety: every function taking a `const edgemm_runtime*` may be called from any
/// number of threads at once.
pub struct edgemm_runtime {
    /// Shared with the pipelines made from this runtime, which keep it alive until they are
    /// freed.
    pub(crate) inner: Arc<Runtime>,
}

/// Options for `edgemm_runtime_new`. Get defaults from `edgemm_runtime_default_options()`
/// and change fields; a zero numeric field means "the default".
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct edgemm_runtime_options {
    /// Directory of NAME.tar.gz artifacts. Required (NULL is EDGEMM_ERR_INVALID_ARGUMENT).
    /// Only read during `edgemm_runtime_new`.
    pub repository: *const c_char,
    /// Where artifacts are extracted: a directory edgemm owns. NULL = the default
    /// ($EDGEMM_CACHE_DIR, else $XDG_CACHE_HOME/edgemm, else ~/.cache/edgemm). "" is
    /// EDGEMM_ERR_INVALID_ARGUMENT (it is never taken to mean the current directory). A missing
    /// or empty directory is created and marked with a CACHEDIR.TAG; a directory holding
    /// anything edgemm did not create is refused with EDGEMM_ERR_INVALID_ARGUMENT (the message
    /// names it and one foreign entry), and nothing in it is deleted or changed.
    pub cache_dir: *const c_char,
    /// Bytes loaded models may hold (weights as held plus one item's activations each).
    /// 0 = 1 GiB.
    pub memory_budget_bytes: u64,
    /// Bytes of extracted copies on disk. 0 = 4 GiB.
    pub disk_budget_bytes: u64,
    /// Milliseconds a load waits for memory held by requests in flight before it fails with
    /// EDGEMM_ERR_INSUFFICIENT_MEMORY. 0 = 10000.
    pub memory_wait_ms: u32,
    /// Labels per prediction in results, at most 65536. 0 = 5.
    pub top_k: u32,
    /// Largest encoded image, bytes, at most 67108864 (64 MiB). 0 = 4194304 (4 MB).
    pub max_image_bytes: u32,
    /// Largest image side, pixels, at most 16384. 0 = 4096.
    pub max_image_side: u32,
    /// Largest aspect ratio (long side / short side), at most 16384. 0 = 20.
    pub max_aspect_ratio: u32,
    /// 1 = unload each model after its request (SageMaker's ModelCacheSetting=Disabled).
    /// 0 = keep models loaded (default).
    pub disable_model_cache: u8,
    /// 1 = run one zero input through each model right after it loads. 0 = no (default).
    pub warm_up: u8,
}

/// ==================== Runtime ====================
///
/// The default options: every numeric field 0 (its default), repository and cache_dir NULL.
/// Thread-safety: any thread.
#[no_mangle]
pub extern "C" fn edgemm_runtime_default_options() -> edgemm_runtime_options {
    edgemm_runtime_options {
        repository: std::ptr::null(),
        cache_dir: std::ptr::null(),
        memory_budget_bytes: 0,
        disk_budget_bytes: 0,
        memory_wait_ms: 0,
        top_k: 0,
        max_image_bytes: 0,
        max_image_side: 0,
        max_aspect_ratio: 0,
        disable_model_cache: 0,
        warm_up: 0,
    }
}

const MAX_TOP_K: u32 = 65536;
/// The JSON request cap: an image larger than a whole request cannot arrive anyway.
const MAX_IMAGE_BYTES: u32 = crate::json::MAX_REQUEST_BYTES as u32;
/// A 16384 x 16384 RGB image decodes to 768 MiB; larger sides only let a small file claim
/// more memory than a board has.
const MAX_IMAGE_SIDE: u32 = 16384;

fn or<T: PartialEq + Default>(value: T, default: T) -> T {
    if value == T::default() {
        default
    } else {
        value
    }
}

/// Creates a runtime over `options->repository`. On success writes a new runtime to `*out`;
/// the caller owns it and frees it with `edgemm_runtime_free`. No model is loaded yet: the
/// first request for a name loads it.
///
/// Returns EDGEMM_OK; EDGEMM_ERR_INVALID_ARGUMENT (NULL `options`, `options->repository` or
/// `out`, non-UTF-8 paths, an empty `cache_dir`, a `cache_dir` holding files edgemm did not
/// create, a count out of its range); EDGEMM_ERR_INTERNAL (the cache directory cannot be
/// created).
/// Thread-safety: any thread.
///
/// # Safety
/// `options` points to a valid options struct whose strings are NUL-terminated; `out` is
/// writable.
#[no_mangle]
pub unsafe extern "C" fn edgemm_runtime_new(
    options: *const edgemm_runtime_options,
    out_runtime: *mut *mut edgemm_runtime,
) -> edgemm_status {
    boundary!({
        // SAFETY: the caller's contract.
        let o = unsafe { arg(options, "options") }?;
        let out_runtime = out(out_runtime, "out")?;
        // SAFETY: the caller's contract.
        let repository = unsafe { str_arg(o.repository, "options->repository") }?;
        let mut opts = RuntimeOptions::new(repository);
        if !o.cache_dir.is_null() {
            // SAFETY: the caller's contract.
            opts.cache_dir = PathBuf::from(unsafe { str_arg(o.cache_dir, "options->cache_dir") }?);
        }
        // Every count is bounded before anything is sized by it (issue #22, item 4).
        check_range("options->top_k", o.top_k, 0, MAX_TOP_K)?;
        check_range(
            "options->max_image_bytes",
            o.max_image_bytes,
            0,
            MAX_IMAGE_BYTES,
        )?;
        check_range(
            "options->max_image_side",
            o.max_image_side,
            0,
            MAX_IMAGE_SIDE,
        )?;
        check_range(
            "options->max_aspect_ratio",
            o.max_aspect_ratio,
            0,
            MAX_IMAGE_SIDE,
        )?;
        let defaults = RuntimeOptions::new(repository);
        opts.cache.memory_budget = or(o.memory_budget_bytes, defaults.cache.memory_budget);
        opts.cache.disk_budget = or(o.disk_budget_bytes, defaults.cache.disk_budget);
        if o.memory_wait_ms != 0 {
            opts.cache.memory_wait = std::time::Duration::from_millis(u64::from(o.memory_wait_ms));
        }
        opts.top_k = or(o.top_k as usize, defaults.top_k);
        opts.image_limits.max_bytes =
            or(o.max_image_bytes as usize, defaults.image_limits.max_bytes);
        opts.image_limits.max_side = or(o.max_image_side, defaults.image_limits.max_side);
        opts.image_limits.max_aspect_ratio =
            or(o.max_aspect_ratio, defaults.image_limits.max_aspect_ratio);
        opts.cache.caching = o.disable_model_cache == 0;
        opts.cache.warm_up = o.warm_up != 0;
        let runtime = Box::new(edgemm_runtime {
            inner: Arc::new(Runtime::new(opts)?),
        });
        // SAFETY: checked non-NULL above; written only on success.
        unsafe { *out_runtime = Box::into_raw(runtime) };
        Ok(())
    })
}

/// Frees a runtime and every model it holds (pipelines made from it keep it alive until they
/// are freed). NULL is a no-op. No other call on this runtime
/// may be running or made afterwards; results it returned stay valid (they own their data).
///
/// # Safety
/// `runtime` is NULL or was returned by `edgemm_runtime_new` and not yet freed.
#[no_mangle]
pub unsafe extern "C" fn edgemm_runtime_free(runtime: *mut edgemm_runtime) {
    let _ = guard(|| {
        if !runtime.is_null() {
            // SAFETY: created by Box::into_raw in edgemm_runtime_new, freed once.
            drop(unsafe { Box::from_raw(runtime) });
        }
        Ok(())
    });
}

/// Sum, count and maximum of one time metric, microseconds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct edgemm_time_metric {
    pub count: u64,
    pub sum_us: u64,
    pub max_us: u64,
}

/// A snapshot of the cache's metrics, under SageMaker MME's CloudWatch names.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct edgemm_metrics {
    /// Time requests waited for a model to be extracted and loaded.
    pub model_loading_wait_time: edgemm_time_metric,
    /// Time spent extracting artifacts (MME: downloading).
    pub model_downloading_time: edgemm_time_metric,
    pub model_loading_time: edgemm_time_metric,
    pub model_unloading_time: edgemm_time_metric,
    /// Requests answered by an already loaded model.
    pub model_cache_hit: u64,
    /// Requests in all.
    pub requests: u64,
    pub loaded_model_count: u64,
    /// Bytes of weights in memory, and the budget.
    pub memory_used_bytes: u64,
    pub memory_budget_bytes: u64,
    /// Bytes of extracted copies on disk, and the budget.
    pub disk_used_bytes: u64,
    pub disk_budget_bytes: u64,
}

fn time_metric(t: crate::cache::TimeSummary) -> edgemm_time_metric {
    edgemm_time_metric {
        count: t.count,
        sum_us: t.sum_us,
        max_us: t.max_us,
    }
}

/// Writes a snapshot of the metrics to `*out`.
/// Returns EDGEMM_OK or EDGEMM_ERR_INVALID_ARGUMENT (NULL argument). Thread-safety: any thread.
///
/// # Safety
/// `runtime` is a live runtime; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn edgemm_runtime_metrics(
    runtime: *const edgemm_runtime,
    out_metrics: *mut edgemm_metrics,
) -> edgemm_status {
    boundary!({
        // SAFETY: the caller's contract.
        let rt = unsafe { arg(runtime, "runtime") }?;
        let out_metrics = out(out_metrics, "out")?;
        let m = rt.inner.cache().metrics();
        let snapshot = edgemm_metrics {
            model_loading_wait_time: time_metric(m.model_loading_wait_time),
            model_downloading_time: time_metric(m.model_downloading_time),
            model_loading_time: time_metric(m.model_loading_time),
            model_unloading_time: time_metric(m.model_unloading_time),
            model_cache_hit: m.model_cache_hit,
            requests: m.requests,
            loaded_model_count: m.loaded_model_count as u64,
            memory_used_bytes: m.memory_used_bytes,
            memory_budget_bytes: m.memory_budget_bytes,
            disk_used_bytes: m.disk_used_bytes,
            disk_budget_bytes: m.disk_budget_bytes,
        };
        // SAFETY: checked non-NULL.
        unsafe { *out_metrics = snapshot };
        Ok::<(), FfiError>(())
    })
}
