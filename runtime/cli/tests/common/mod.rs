//! The runtime's test fixtures (`runtime/tests/common`), and the `edgemm` binary these tests
//! run.

#![allow(dead_code)]

#[path = "../../../tests/common/mod.rs"]
mod runtime;

use std::path::Path;
use std::process::Command;

pub use runtime::*;

/// A command running the `edgemm` CLI built with these tests. When the tests themselves run
/// under an emulator (cross/test.sh sets `EDGEMM_TEST_RUNNER`, e.g. `qemu-aarch64 -L ...`),
/// the CLI is started through it too: without binfmt_misc the kernel cannot exec an ARM binary.
pub fn cli() -> Command {
    let bin = env!("CARGO_BIN_EXE_edgemm");
    match std::env::var("EDGEMM_TEST_RUNNER") {
        Ok(runner) if !runner.trim().is_empty() => {
            let mut parts = runner.split_whitespace();
            let mut cmd = Command::new(parts.next().expect("non-empty"));
            cmd.args(parts).arg(bin);
            cmd
        }
        _ => Command::new(bin),
    }
}

/// `edgemm --cache-dir CACHE inspect ARTIFACT`'s standard output; the command must succeed.
pub fn inspect(cache: &Path, artifact: &Path) -> String {
    let out = cli()
        .arg("--cache-dir")
        .arg(cache)
        .arg("inspect")
        .arg(artifact)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
