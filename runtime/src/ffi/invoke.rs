//! Classifying an encoded image, an NHWC float tensor, or a TF Serving JSON request.

use std::ffi::{c_char, CString};

use super::boundary::{arg, boundary, guard, out, slice_arg, str_arg, FfiError};
use super::runtime::edgemm_runtime;
use super::status::edgemm_status;
use crate::{Input, Response};

/// One of the most probable classes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct edgemm_label {
    /// Class index into the model's outputs.
    pub index: u32,
    pub probability: f32,
    /// The class label, NUL-terminated UTF-8. Owned by the result.
    pub label: *const c_char,
}

/// The answer for one image of a batch.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct edgemm_prediction {
    /// `num_classes` probabilities in label order, summing to 1. Owned by the result.
    pub probabilities: *const f32,
    pub num_classes: u32,
    /// `top_k_len` labels, most probable first. Owned by the result.
    pub top_k: *const edgemm_label,
    pub top_k_len: u32,
}

/// The answer to one call. Returned by the `edgemm_invoke_*` functions; free it with
/// `edgemm_result_free`. Every pointer inside stays valid until then.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct edgemm_result {
    /// `batch_size` predictions, in input order.
    pub predictions: *const edgemm_prediction,
    pub batch_size: u32,
    /// Microseconds spent loading the model (0 on a cache hit), preprocessing, inferring, and
    /// in all.
    pub load_us: u64,
    pub preprocess_us: u64,
    pub inference_us: u64,
    pub total_us: u64,
}

/// The C-visible result first, then the storage it points into.
#[repr(C)]
struct OwnedResult {
    c: edgemm_result,
    predictions: Vec<edgemm_prediction>,
    labels: Vec<Vec<edgemm_label>>,
    probabilities: Vec<Vec<f32>>,
    strings: Vec<CString>,
}

fn to_c(response: Response) -> *mut edgemm_result {
    let mut owned = Box::new(OwnedResult {
        c: edgemm_result {
            predictions: std::ptr::null(),
            batch_size: response.predictions.len() as u32,
            load_us: response.timing.load_us,
            preprocess_us: response.timing.preprocess_us,
            inference_us: response.timing.inference_us,
            total_us: response.timing.total_us,
        },
        predictions: Vec::new(),
        labels: Vec::new(),
        probabilities: Vec::new(),
        strings: Vec::new(),
    });
    for p in response.predictions {
        let mut labels = Vec::with_capacity(p.top_k.len());
        for s in &p.top_k {
            let label = CString::new(s.label.replace('\0', " ")).expect("NULs replaced");
            // The CString's heap buffer does not move when the CString itself is moved.
            labels.push(edgemm_label {
                index: s.index as u32,
                probability: s.probability,
                label: label.as_ptr(),
            });
            owned.strings.push(label);
        }
        owned.labels.push(labels);
        owned.probabilities.push(p.probabilities);
    }
    owned.predictions = owned
        .labels
        .iter()
        .zip(&owned.probabilities)
        .map(|(labels, probs)| edgemm_prediction {
            probabilities: probs.as_ptr(),
            num_classes: probs.len() as u32,
            top_k: labels.as_ptr(),
            top_k_len: labels.len() as u32,
        })
        .collect();
    owned.c.predictions = owned.predictions.as_ptr();
    Box::into_raw(owned).cast()
}

unsafe fn invoke(
    runtime: *const edgemm_runtime,
    model: *const c_char,
    out_result: *mut *mut edgemm_result,
    input: impl FnOnce() -> Result<Input<'static>, FfiError>,
) -> edgemm_status {
    boundary!({
        // SAFETY: the caller's contract.
        let rt = unsafe { arg(runtime, "runtime") }?;
        // SAFETY: the caller's contract.
        let model = unsafe { str_arg(model, "model") }?;
        let out_result = out(out_result, "out")?;
        let response = rt.inner.invoke(model, input()?)?;
        // SAFETY: checked non-NULL; written only on success.
        unsafe { *out_result = to_c(response) };
        Ok(())
    })
}

/// ==================== Invoking ====================
///
/// Classifies one encoded image (PNG or JPEG, `len` bytes at `bytes`) with model `model` (its
/// name in the repository, e.g. "sign-language.tar.gz"), loading the model on first use. On
/// success writes a new result to `*out` (free it with `edgemm_result_free`).
///
/// Returns EDGEMM_OK; EDGEMM_ERR_INVALID_ARGUMENT (NULL argument, bad model name);
/// EDGEMM_ERR_NOT_FOUND; EDGEMM_ERR_BAD_INPUT (not PNG/JPEG, over 4 MB, over 4096 px, aspect
/// over 20:1, undecodable); EDGEMM_ERR_BAD_ARTIFACT; EDGEMM_ERR_INSUFFICIENT_MEMORY;
/// EDGEMM_ERR_INTERNAL. The runtime stays usable after any error.
/// Thread-safety: any number of threads at once on one runtime.
///
/// # Safety
/// `runtime` is live, `model` a NUL-terminated string, `bytes` readable for `len` bytes,
/// `out` writable.
#[no_mangle]
pub unsafe extern "C" fn edgemm_invoke_image(
    runtime: *const edgemm_runtime,
    model: *const c_char,
    bytes: *const u8,
    len: usize,
    out_result: *mut *mut edgemm_result,
) -> edgemm_status {
    // SAFETY: the caller's contract, forwarded.
    unsafe {
        invoke(runtime, model, out_result, || {
            Ok(Input::Image(slice_arg(bytes, len, "bytes")?))
        })
    }
}

/// Classifies an f32 tensor laid out as the model's manifest says (NHWC: `[N, H, W, 3]` or
/// `[H, W, 3]`); `shape` holds `rank` dimensions and `data` their product of floats, read as
/// the manifest's `tensor_values` says (e.g. 0..255 pixels for the sign-language model).
/// Results, errors and thread-safety as `edgemm_invoke_image`; a wrong shape is
/// EDGEMM_ERR_BAD_INPUT.
///
/// # Safety
/// `data` readable for the product of `shape`'s `rank` entries, `shape` for `rank` entries.
#[no_mangle]
pub unsafe extern "C" fn edgemm_invoke_tensor(
    runtime: *const edgemm_runtime,
    model: *const c_char,
    data: *const f32,
    shape: *const usize,
    rank: usize,
    out_result: *mut *mut edgemm_result,
) -> edgemm_status {
    // SAFETY: the caller's contract, forwarded.
    unsafe {
        invoke(runtime, model, out_result, || {
            let shape = slice_arg(shape, rank, "shape")?;
            if rank == 0 || rank > 8 {
                return Err(FfiError::Invalid(format!("rank {rank} is not in 1..=8")));
            }
            let len = shape
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| FfiError::Invalid("shape's element count overflows".into()))?;
            Ok(Input::Tensor {
                data: slice_arg(data, len, "data")?,
                shape,
            })
        })
    }
}

/// Answers a TF Serving JSON request (`{"instances": [...]}` or `{"inputs": ...}`, `len`
/// bytes of UTF-8 at `body`) with model `model`. On success writes a new NUL-terminated JSON
/// string (`{"predictions": ...}` or `{"outputs": ...}`) to `*out_json`; free it with
/// `edgemm_string_free`. Errors as `edgemm_invoke_image`; a malformed request is
/// EDGEMM_ERR_BAD_INPUT. Thread-safety: any number of threads at once on one runtime.
///
/// # Safety
/// `body` readable for `len` bytes; `out_json` writable.
#[no_mangle]
pub unsafe extern "C" fn edgemm_invoke_json(
    runtime: *const edgemm_runtime,
    model: *const c_char,
    body: *const c_char,
    len: usize,
    out_json: *mut *mut c_char,
) -> edgemm_status {
    boundary!({
        // SAFETY: the caller's contract.
        let rt = unsafe { arg(runtime, "runtime") }?;
        // SAFETY: the caller's contract.
        let model = unsafe { str_arg(model, "model") }?;
        // SAFETY: the caller's contract.
        let body = unsafe { slice_arg(body.cast::<u8>(), len, "body") }?;
        let out_json = out(out_json, "out_json")?;
        let answer = crate::json::invoke_json(&rt.inner, model, body)?;
        let text = CString::new(answer.to_string()).expect("JSON text has no NUL");
        // SAFETY: checked non-NULL; written only on success.
        unsafe { *out_json = text.into_raw() };
        Ok(())
    })
}

/// Frees a result. NULL is a no-op.
///
/// # Safety
/// `result` is NULL or was returned by an `edgemm_invoke_*` function and not yet freed.
#[no_mangle]
pub unsafe extern "C" fn edgemm_result_free(result: *mut edgemm_result) {
    let _ = guard(|| {
        if !result.is_null() {
            // SAFETY: `result` is the first field of a boxed, repr(C) OwnedResult.
            drop(unsafe { Box::from_raw(result.cast::<OwnedResult>()) });
        }
        Ok(())
    });
}

/// Frees a string returned by edgemm (`edgemm_invoke_json`). NULL is a no-op.
///
/// # Safety
/// `s` is NULL or a string returned by edgemm and not yet freed.
#[no_mangle]
pub unsafe extern "C" fn edgemm_string_free(s: *mut c_char) {
    let _ = guard(|| {
        if !s.is_null() {
            // SAFETY: created by CString::into_raw, freed once.
            drop(unsafe { CString::from_raw(s) });
        }
        Ok(())
    });
}
