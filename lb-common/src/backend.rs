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

impl Backend {
    /// The address as four words in memory order. Backend is 4-aligned, so on BPF these are
    /// four loads, where the byte array read alone is a load, shift and or per byte.
    #[inline(always)]
    pub fn addr_words(&self) -> [u32; 4] {
        // SAFETY: `addr` is the first field of this 4-aligned repr(C) struct: 16 bytes at a
        // 4-aligned address.
        unsafe { *(self.addr.as_ptr() as *const [u32; 4]) }
    }

    /// Whether the address is IPv4-mapped (crate::addr::is_v4, from the words).
    #[inline(always)]
    pub fn is_v4(&self) -> bool {
        let words = self.addr_words();
        words[0] == 0 && words[1] == 0 && words[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff])
    }
}
const _: () = assert!(core::mem::align_of::<Backend>() == 4 && core::mem::offset_of!(Backend, addr) == 0);

/// The slot is in use (an unused slot is all zeroes).
pub const BACKEND_F_IN_USE: u32 = 1 << 0;

crate::pod!(Backend);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::{is_v4, mapped_v4};

    #[test]
    fn word_reads_agree_with_the_address_bytes() {
        let mut near_miss = mapped_v4([198, 18, 12, 2]);
        near_miss[9] = 1;
        let v6 = [0xfd, 0, 0, 0x5e, 0, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        for addr in [mapped_v4([198, 18, 12, 2]), mapped_v4([0; 4]), near_miss, v6, [0; 16]] {
            let backend = Backend { addr, flags: BACKEND_F_IN_USE };
            assert_eq!(backend.is_v4(), is_v4(&addr), "{addr:?}");
            assert_eq!(
                u32::from_be(backend.addr_words()[3]),
                u32::from_be_bytes([addr[12], addr[13], addr[14], addr[15]])
            );
        }
    }
}
