//! Version of the library, as macros in the header and at run time.

use std::ffi::c_char;

use super::boundary::boundary;
use super::status::edgemm_status;

/// `EDGEMM_VERSION_MAJOR.MINOR.PATCH` of the header; compare with `edgemm_version()` to detect
/// a header/library mismatch. Kept equal to Cargo.toml's version by a test.
pub const EDGEMM_VERSION_MAJOR: u32 = 0;
pub const EDGEMM_VERSION_MINOR: u32 = 1;
pub const EDGEMM_VERSION_PATCH: u32 = 0;

/// ==================== Version and process settings ====================
///
/// The library's version, "MAJOR.MINOR.PATCH". Static storage: never freed, never NULL.
/// Thread-safety: any thread.
#[no_mangle]
pub extern "C" fn edgemm_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// Sets how many threads the CPU kernels use (process-global; `0` restores the default: the
/// number of cores). It sets `RAYON_NUM_THREADS`, which candle reads on every operation.
///
/// Thread-safety: NOT thread-safe. Call it once, before creating any runtime and before other
/// threads run, as it changes the process environment.
/// Returns `EDGEMM_OK`.
#[no_mangle]
pub extern "C" fn edgemm_set_num_threads(threads: u32) -> edgemm_status {
    boundary!({
        if threads == 0 {
            std::env::remove_var("RAYON_NUM_THREADS");
        } else {
            std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
        }
        Ok(())
    })
}

/// Test hook for the panic boundary: panics inside an export and so always returns
/// `EDGEMM_ERR_PANIC` with a message. Firmware has no reason to call it.
#[no_mangle]
pub extern "C" fn edgemm_debug_force_panic() -> edgemm_status {
    boundary!({
        if std::hint::black_box(true) {
            panic!("edgemm_debug_force_panic was called");
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_constants_match_cargo_toml() {
        let v: Vec<u32> = env!("CARGO_PKG_VERSION")
            .split('.')
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(
            v,
            [
                super::EDGEMM_VERSION_MAJOR,
                super::EDGEMM_VERSION_MINOR,
                super::EDGEMM_VERSION_PATCH
            ]
        );
    }
}
