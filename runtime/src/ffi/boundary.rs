//! The panic boundary and pointer checks every export goes through.

use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::status::{edgemm_status, set_last_error};
use crate::error::Error;

/// Why an export failed before or outside the library proper.
pub(crate) enum FfiError {
    Null(&'static str),
    Invalid(String),
    Edgemm(Error),
}

impl From<Error> for FfiError {
    fn from(e: Error) -> Self {
        FfiError::Edgemm(e)
    }
}

pub(crate) type FfiResult = Result<(), FfiError>;

/// Runs an export's body: catches panics, maps errors to a status and records their message
/// as the thread's last error. A success leaves the last error as it was (as errno).
pub(crate) fn guard(body: impl FnOnce() -> FfiResult) -> edgemm_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => edgemm_status::EDGEMM_OK,
        Ok(Err(FfiError::Null(what))) => {
            set_last_error(&format!("{what} is NULL"));
            edgemm_status::EDGEMM_ERR_INVALID_ARGUMENT
        }
        Ok(Err(FfiError::Invalid(message))) => {
            set_last_error(&message);
            edgemm_status::EDGEMM_ERR_INVALID_ARGUMENT
        }
        Ok(Err(FfiError::Edgemm(e))) => {
            set_last_error(&e.to_string());
            edgemm_status::from(&e)
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!("internal panic (a bug in edgemm): {what}"));
            edgemm_status::EDGEMM_ERR_PANIC
        }
    }
}

/// Wraps an export's body in [`guard`]: `boundary!({ ...; Ok(()) })`.
macro_rules! boundary {
    ($body:block) => {
        $crate::ffi::boundary::guard(|| $body)
    };
}
pub(crate) use boundary;

/// A shared reference from a pointer the caller promises is valid, or a NULL error.
///
/// # Safety
/// `ptr` is NULL or points to a live `T` for the duration of the call.
pub(crate) unsafe fn arg<'a, T>(ptr: *const T, what: &'static str) -> Result<&'a T, FfiError> {
    // SAFETY: the caller guarantees validity when non-NULL.
    unsafe { ptr.as_ref() }.ok_or(FfiError::Null(what))
}

/// Checks an output pointer.
pub(crate) fn out<T>(ptr: *mut T, what: &'static str) -> Result<*mut T, FfiError> {
    if ptr.is_null() {
        Err(FfiError::Null(what))
    } else {
        Ok(ptr)
    }
}

/// A UTF-8 string from a NUL-terminated C string.
///
/// # Safety
/// `ptr` is NULL or a valid NUL-terminated string for the duration of the call.
pub(crate) unsafe fn str_arg<'a>(
    ptr: *const c_char,
    what: &'static str,
) -> Result<&'a str, FfiError> {
    if ptr.is_null() {
        return Err(FfiError::Null(what));
    }
    // SAFETY: non-NULL and NUL-terminated per the caller's contract.
    unsafe { CStr::from_ptr(ptr) }
        .to_str()
        .map_err(|_| FfiError::Invalid(format!("{what} is not valid UTF-8")))
}

/// A byte slice from pointer and length; a NULL pointer is allowed only with length 0.
///
/// # Safety
/// `ptr` points to `len` readable bytes (or `len` is 0).
pub(crate) unsafe fn slice_arg<'a, T>(
    ptr: *const T,
    len: usize,
    what: &'static str,
) -> Result<&'a [T], FfiError> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(FfiError::Null(what));
    }
    // SAFETY: non-NULL, `len` elements readable per the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// `value` within `min..=max`, or an invalid-argument error naming the field and its bounds.
pub(crate) fn check_range(field: &str, value: u32, min: u32, max: u32) -> Result<(), FfiError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(FfiError::Invalid(format!(
            "{field} is {value}, outside its range {min}..={max}"
        )))
    }
}
