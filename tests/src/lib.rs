//! Helpers for Sluice's root tests and demo: network namespaces, real servers, lbd processes.
pub mod bench_l7;
pub mod bench_traffic;
pub mod forward_floor;
pub mod harness;
pub mod l7_config;
pub mod l7_targets;
pub mod many_hosts;
pub mod mixed_bed;
pub mod netns;
pub mod packets;
pub mod pki;
pub mod servers;

/// The directory holding the workspace's built binaries (lbd, lbctl).
pub fn bin_dir() -> std::path::PathBuf {
    match std::env::var_os("SLUICE_BIN_DIR") {
        Some(dir) => dir.into(),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug"),
    }
}

/// Fails with a clear message unless running as root (namespaces, XDP and bpffs need it).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "these tests need root (network namespaces, XDP, bpffs): run them as root");
}

/// Resident memory of process `pid`, in bytes (0 if it cannot be read).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}
