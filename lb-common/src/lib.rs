//! Map names, capacities, keys and values shared by Sluice's XDP programs and userspace.
#![no_std]

pub mod addr;
pub mod backend;
pub mod config;
pub mod deny;
pub mod flow;
pub mod hash;
pub mod ring;
pub mod stats;
pub mod syn;
pub mod vip;

/// Where `lbd` pins the program link and every map (bpffs).
pub const PIN_DIR: &str = "/sys/fs/bpf/sluice";

/// Implements `aya::Pod` for map key/value types when built for userspace.
macro_rules! pod {
    ($($t:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: #[repr(C)], Copy, every field an integer or byte array, padding explicit.
            unsafe impl aya::Pod for $t {}
        )*
    };
}
pub(crate) use pod;
