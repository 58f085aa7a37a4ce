//! Map names, capacities, keys and values shared by Sluice's XDP programs and userspace.
#![no_std]

pub mod stats;

/// Where `lbd` pins the program link and every map (bpffs).
pub const PIN_DIR: &str = "/sys/fs/bpf/sluice";
