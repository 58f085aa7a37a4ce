//! Backends: id -> address. Written by lbd, read after the Maglev lookup.
use crate::addr::Addr;

/// Array `u32` id -> [`Backend`].
pub const BACKENDS_MAP: &str = "BACKENDS";
/// Capacity of [`BACKENDS_MAP`] and of the per-backend counters.
pub const MAX_BACKENDS: u32 = 16384;
/// Ring entry meaning "no backend" (empty pool): the packet is dropped and counted.
pub const NO_BACKEND: u32 = u32::MAX;

/// Where to send a flow: the backend's address (IPv4-mapped for IPv4).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: Addr,
    /// `BACKEND_F_*` bits.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<Backend>() == 20);

/// The slot is in use (an unused slot is all zeroes).
pub const BACKEND_F_IN_USE: u32 = 1 << 0;

crate::pod!(Backend);
