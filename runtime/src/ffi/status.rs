//! Status codes and the per-thread last error.

use std::cell::RefCell;
use std::ffi::{c_char, CString};

use crate::error::{Error, ErrorKind};

/// The outcome of every fallible call. On anything but `EDGEMM_OK` the call wrote no output
/// and `edgemm_last_error_message()` describes what went wrong.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum edgemm_status {
    EDGEMM_OK = 0,
    /// A NULL pointer, a bad option value, an invalid model name, invalid UTF-8.
    EDGEMM_ERR_INVALID_ARGUMENT = 1,
    /// No such model in the repository.
    EDGEMM_ERR_NOT_FOUND = 2,
    /// The model does not fit the memory (or disk) budget (SageMaker's 507).
    EDGEMM_ERR_INSUFFICIENT_MEMORY = 3,
    /// The artifact is corrupt, hostile, or does not match its architecture.
    EDGEMM_ERR_BAD_ARTIFACT = 4,
    /// The image, tensor or JSON request breaks a rule (format, size, shape).
    EDGEMM_ERR_BAD_INPUT = 5,
    /// I/O failure, or a failure inside the inference engine.
    EDGEMM_ERR_INTERNAL = 6,
    /// A bug: edgemm panicked. The runtime object is still usable.
    EDGEMM_ERR_PANIC = 7,
}

impl From<&Error> for edgemm_status {
    fn from(e: &Error) -> Self {
        match e.kind() {
            ErrorKind::InvalidArgument => edgemm_status::EDGEMM_ERR_INVALID_ARGUMENT,
            ErrorKind::NotFound => edgemm_status::EDGEMM_ERR_NOT_FOUND,
            ErrorKind::BadArtifact => edgemm_status::EDGEMM_ERR_BAD_ARTIFACT,
            ErrorKind::BadInput => edgemm_status::EDGEMM_ERR_BAD_INPUT,
            ErrorKind::InsufficientMemory => edgemm_status::EDGEMM_ERR_INSUFFICIENT_MEMORY,
            ErrorKind::Internal => edgemm_status::EDGEMM_ERR_INTERNAL,
        }
    }
}

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

pub(crate) fn set_last_error(message: &str) {
    // Interior NULs cannot be represented in a C string; replace them.
    let message = CString::new(message.replace('\0', "\\0")).expect("NULs replaced");
    LAST_ERROR.with(|e| *e.borrow_mut() = Some(message));
}

pub(crate) fn clear_last_error() {
    LAST_ERROR.with(|e| *e.borrow_mut() = None);
}

/// ==================== Errors ====================
///
/// The message of the last failed call on this thread, or "" if the last call succeeded.
///
/// The string belongs to edgemm and stays valid until the next edgemm call on this thread.
/// Thread-safety: per thread; never NULL.
#[no_mangle]
pub extern "C" fn edgemm_last_error_message() -> *const c_char {
    LAST_ERROR.with(|e| match &*e.borrow() {
        Some(message) => message.as_ptr(),
        None => c"".as_ptr(),
    })
}
