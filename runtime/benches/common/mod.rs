//! What the benches read of their own process (Linux `/proc/self`; zeros elsewhere) and of
//! their command line, shared by `cache.rs`, `models.rs`, `memory.rs` and `soak.rs`.

#![allow(dead_code)] // each bench uses some of these

/// A field of `/proc/self/status` in kB (`VmRSS`, `VmHWM`) or as a count (`Threads`).
fn status_field(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// The resident set size now, in bytes.
pub fn rss_bytes() -> u64 {
    status_field("VmRSS") * 1024
}

/// The peak resident set size since the last [`reset_peak_rss`], in bytes.
pub fn peak_rss_bytes() -> u64 {
    status_field("VmHWM") * 1024
}

/// Resets the peak resident set size (`VmHWM`) to the current one.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Threads of this process.
pub fn threads() -> u64 {
    status_field("Threads")
}

/// Open file descriptors of this process.
pub fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

/// The value after `flag` on the bench's command line (`--runs 20`), if given.
pub fn flag(flag: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// Bytes as MiB, for printing.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}
