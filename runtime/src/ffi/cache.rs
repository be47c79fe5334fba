//! SageMaker MME's container verbs (load, unload, list, describe) and pinning.

use std::ffi::{c_char, CString};

use super::boundary::{arg, boundary, guard, out, str_arg};
use super::runtime::edgemm_runtime;
use super::status::edgemm_status;
use crate::cache::ModelState;

/// Runs one cache verb on a model name.
unsafe fn verb(
    runtime: *const edgemm_runtime,
    model: *const c_char,
    f: impl FnOnce(&crate::ModelCache, &str) -> crate::Result<()>,
) -> edgemm_status {
    boundary!({
        // SAFETY: the caller's contract.
        let rt = unsafe { arg(runtime, "runtime") }?;
        // SAFETY: the caller's contract.
        let model = unsafe { str_arg(model, "model") }?;
        f(rt.inner.cache(), model)?;
        Ok(())
    })
}

/// ==================== Model cache ====================
///
/// Loads `model` into memory now (MME LoadModel), unloading least-recently-used idle models if
/// the memory budget requires. Returns once it is loaded.
/// Returns EDGEMM_OK, EDGEMM_ERR_INVALID_ARGUMENT, EDGEMM_ERR_NOT_FOUND,
/// EDGEMM_ERR_BAD_ARTIFACT, EDGEMM_ERR_INSUFFICIENT_MEMORY (too big, or the rest pinned or in
/// use), EDGEMM_ERR_INTERNAL. Thread-safety: any thread.
///
/// # Safety
/// `runtime` is live; `model` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn edgemm_model_load(
    runtime: *const edgemm_runtime,
    model: *const c_char,
) -> edgemm_status {
    // SAFETY: forwarded contract.
    unsafe { verb(runtime, model, |c, m| c.load(m)) }
}

/// Unloads `model` (MME UnloadModel): new requests for it wait, requests in flight finish, and
/// the memory is released before this returns. Its extracted copy stays on disk. Unloading a
/// model that is not loaded is EDGEMM_OK. Thread-safety: any thread (it blocks while the
/// model's requests finish).
///
/// # Safety
/// As `edgemm_model_load`.
#[no_mangle]
pub unsafe extern "C" fn edgemm_model_unload(
    runtime: *const edgemm_runtime,
    model: *const c_char,
) -> edgemm_status {
    // SAFETY: forwarded contract.
    unsafe { verb(runtime, model, |c, m| c.unload(m)) }
}

/// Loads `model` if needed and keeps it in memory (never evicted) until unpinned or unloaded.
/// Errors as `edgemm_model_load`. Thread-safety: any thread.
///
/// # Safety
/// As `edgemm_model_load`.
#[no_mangle]
pub unsafe extern "C" fn edgemm_model_pin(
    runtime: *const edgemm_runtime,
    model: *const c_char,
) -> edgemm_status {
    // SAFETY: forwarded contract.
    unsafe { verb(runtime, model, |c, m| c.pin(m)) }
}

/// Lets `model` be evicted again. Unpinning a model that is not pinned is EDGEMM_OK.
/// Thread-safety: any thread.
///
/// # Safety
/// As `edgemm_model_load`.
#[no_mangle]
pub unsafe extern "C" fn edgemm_model_unpin(
    runtime: *const edgemm_runtime,
    model: *const c_char,
) -> edgemm_status {
    // SAFETY: forwarded contract.
    unsafe { verb(runtime, model, |c, m| c.unpin(m)) }
}

/// Where a model is.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum edgemm_model_state {
    EDGEMM_MODEL_UNLOADED = 0,
    EDGEMM_MODEL_LOADING = 1,
    EDGEMM_MODEL_LOADED = 2,
    /// Waiting for its requests in flight before leaving memory.
    EDGEMM_MODEL_UNLOADING = 3,
}

/// What `edgemm_model_describe` reports (MME DescribeModel, plus counters).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct edgemm_model_info {
    pub state: edgemm_model_state,
    /// 1 if pinned.
    pub pinned: u8,
    /// Bytes in memory (0 when not loaded).
    pub memory_bytes: u64,
    /// Bytes of the extracted copy on disk (0 when none).
    pub disk_bytes: u64,
    pub in_flight: u64,
    pub invocations: u64,
    pub hits: u64,
    pub loads: u64,
    pub evictions: u64,
    /// Milliseconds since the Unix epoch of the last request; 0 = never.
    pub last_used_unix_ms: u64,
    /// Request latency percentiles over the recent window, microseconds; 0 = no request yet.
    pub latency_p50_us: u64,
    pub latency_p95_us: u64,
}

/// Describes `model`. Returns EDGEMM_OK, EDGEMM_ERR_INVALID_ARGUMENT, EDGEMM_ERR_NOT_FOUND (not
/// in the repository). Thread-safety: any thread.
///
/// # Safety
/// As `edgemm_model_load`; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn edgemm_model_describe(
    runtime: *const edgemm_runtime,
    model: *const c_char,
    out_info: *mut edgemm_model_info,
) -> edgemm_status {
    boundary!({
        // SAFETY: the caller's contract.
        let rt = unsafe { arg(runtime, "runtime") }?;
        // SAFETY: the caller's contract.
        let model = unsafe { str_arg(model, "model") }?;
        let out_info = out(out_info, "out")?;
        let d = rt.inner.cache().describe(model)?;
        let info = edgemm_model_info {
            state: match d.state {
                ModelState::Unloaded => edgemm_model_state::EDGEMM_MODEL_UNLOADED,
                ModelState::Loading => edgemm_model_state::EDGEMM_MODEL_LOADING,
                ModelState::Loaded => edgemm_model_state::EDGEMM_MODEL_LOADED,
                ModelState::Unloading => edgemm_model_state::EDGEMM_MODEL_UNLOADING,
            },
            pinned: u8::from(d.pinned),
            memory_bytes: d.memory_bytes,
            disk_bytes: d.disk_bytes,
            in_flight: d.in_flight as u64,
            invocations: d.invocations,
            hits: d.hits,
            loads: d.loads,
            evictions: d.evictions,
            last_used_unix_ms: d.last_used_unix_ms.unwrap_or(0),
            latency_p50_us: d.latency_p50_us.unwrap_or(0),
            latency_p95_us: d.latency_p95_us.unwrap_or(0),
        };
        // SAFETY: checked non-NULL.
        unsafe { *out_info = info };
        Ok(())
    })
}

/// Names of every model in the repository or known to the cache, sorted.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct edgemm_model_list {
    /// `len` NUL-terminated names. Owned by the list.
    pub names: *const *const c_char,
    pub len: usize,
}

#[repr(C)]
struct OwnedList {
    c: edgemm_model_list,
    pointers: Vec<*const c_char>,
    strings: Vec<CString>,
}

/// Lists the models (MME ListModels). On success writes a new list to `*out`; free it with
/// `edgemm_model_list_free`. Returns EDGEMM_OK, EDGEMM_ERR_INVALID_ARGUMENT,
/// EDGEMM_ERR_INTERNAL (repository unreadable). Thread-safety: any thread.
///
/// # Safety
/// `runtime` is live; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn edgemm_model_list_new(
    runtime: *const edgemm_runtime,
    out_list: *mut *mut edgemm_model_list,
) -> edgemm_status {
    boundary!({
        // SAFETY: the caller's contract.
        let rt = unsafe { arg(runtime, "runtime") }?;
        let out_list = out(out_list, "out")?;
        let strings: Vec<CString> = rt
            .inner
            .cache()
            .list()?
            .into_iter()
            .map(|d| CString::new(d.name).expect("model names hold no NUL"))
            .collect();
        let pointers: Vec<*const c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        let mut owned = Box::new(OwnedList {
            c: edgemm_model_list {
                names: std::ptr::null(),
                len: strings.len(),
            },
            pointers,
            strings,
        });
        owned.c.names = owned.pointers.as_ptr();
        // SAFETY: checked non-NULL; `c` is the first field of the repr(C) box.
        unsafe { *out_list = Box::into_raw(owned).cast() };
        Ok(())
    })
}

/// Frees a model list. NULL is a no-op.
///
/// # Safety
/// `list` is NULL or was returned by `edgemm_model_list_new` and not yet freed.
#[no_mangle]
pub unsafe extern "C" fn edgemm_model_list_free(list: *mut edgemm_model_list) {
    let _ = guard(|| {
        if !list.is_null() {
            // SAFETY: the first field of a boxed repr(C) OwnedList.
            drop(unsafe { Box::from_raw(list.cast::<OwnedList>()) });
        }
        Ok(())
    });
}
