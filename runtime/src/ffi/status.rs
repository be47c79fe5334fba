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

/// ==================== Errors ====================
///
/// The message of the last failed edgemm call on this thread, or "" if none has failed yet.
///
/// Kept as errno is: only the next failing call on this thread replaces it; successful calls
/// (an invoke, `edgemm_runtime_free(NULL)`, this function) leave it as it is, so check the
/// status first and read the message only after a failure. The string belongs to edgemm and
/// stays valid until the next failing edgemm call on this thread.
/// Thread-safety: per thread; never NULL.
#[no_mangle]
pub extern "C" fn edgemm_last_error_message() -> *const c_char {
    LAST_ERROR.with(|e| match &*e.borrow() {
        Some(message) => message.as_ptr(),
        None => c"".as_ptr(),
    })
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    use super::*;
    use crate::ffi::invoke::edgemm_result_free;
    use crate::ffi::runtime::{edgemm_runtime_free, edgemm_runtime_new};

    fn last() -> String {
        // SAFETY: edgemm_last_error_message never returns NULL and the string lives until the
        // next failing call on this thread.
        unsafe { CStr::from_ptr(edgemm_last_error_message()) }
            .to_string_lossy()
            .into_owned()
    }

    /// Issue #22, item 9: a later successful call (even `edgemm_runtime_free(NULL)`) used to
    /// clear the message of the failure before it.
    #[test]
    fn last_error_survives_successful_calls_and_is_replaced_by_the_next_failure() {
        assert_eq!(last(), "");
        let mut rt = std::ptr::null_mut();
        // SAFETY: NULL options are a documented error.
        let s = unsafe { edgemm_runtime_new(std::ptr::null(), &mut rt) };
        assert_eq!(s, edgemm_status::EDGEMM_ERR_INVALID_ARGUMENT);
        assert_eq!(last(), "options is NULL");
        let pointer = edgemm_last_error_message();
        // SAFETY: NULL is a no-op for both.
        unsafe {
            edgemm_runtime_free(std::ptr::null_mut());
            edgemm_result_free(std::ptr::null_mut());
        }
        assert_eq!(last(), "options is NULL");
        assert_eq!(edgemm_last_error_message(), pointer, "the string moved");
        let options = crate::ffi::runtime::edgemm_runtime_default_options();
        // SAFETY: valid options; a NULL out pointer is a documented error.
        let s = unsafe { edgemm_runtime_new(&options, std::ptr::null_mut()) };
        assert_eq!(s, edgemm_status::EDGEMM_ERR_INVALID_ARGUMENT);
        assert_eq!(last(), "out is NULL");
    }
}
