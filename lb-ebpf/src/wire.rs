//! Bounds-checked packet access: words of 2, 4 and 8 bytes as single instructions at any
//! alignment (the per-packet path), and byte-wise copies of any type (the rare paths).
//!
//! Rust's unaligned reads compile, on BPF, to one load per byte plus shifts (the target does
//! not assume misaligned access is allowed), and IP headers sit 2 bytes off a word boundary.
//! The verifier accepts misaligned packet access where the kernel's architecture handles it
//! (x86-64 and arm64: CONFIG_HAVE_EFFICIENT_UNALIGNED_ACCESS), so on BPF these are inline
//! assembly; on the host (unit tests) they are plain unaligned reads and writes.

/// A value read or written as one access. Values are in memory order (`from_ne_bytes` of the
/// bytes): `u16::from_be` and friends turn network-order fields into numbers.
pub trait Word: Copy {
    /// Reads the word at `at`.
    ///
    /// # Safety
    /// `[at, at + size)` must be readable (for packets: checked against `data_end`).
    unsafe fn read(at: usize) -> Self;
    /// Writes the word at `at`.
    ///
    /// # Safety
    /// `[at, at + size)` must be writable (for packets: checked against `data_end`).
    unsafe fn write(at: usize, value: Self);
}

macro_rules! word {
    ($ty:ty, $size:literal) => {
        impl Word for $ty {
            #[inline(always)]
            unsafe fn read(at: usize) -> Self {
                #[cfg(target_arch = "bpf")]
                {
                    let value: u64;
                    // SAFETY: the caller vouches for the range; one load, no other effect.
                    unsafe {
                        core::arch::asm!(
                            concat!("{value} = *(", $size, " *)({at} + 0)"),
                            at = in(reg) at,
                            value = lateout(reg) value,
                            options(readonly, nostack, preserves_flags),
                        )
                    };
                    value as $ty
                }
                #[cfg(not(target_arch = "bpf"))]
                // SAFETY: the caller vouches for the range.
                unsafe {
                    core::ptr::read_unaligned(at as *const $ty)
                }
            }

            #[inline(always)]
            unsafe fn write(at: usize, value: Self) {
                #[cfg(target_arch = "bpf")]
                // SAFETY: the caller vouches for the range; one store, no other effect.
                unsafe {
                    core::arch::asm!(
                        concat!("*(", $size, " *)({at} + 0) = {value}"),
                        at = in(reg) at,
                        value = in(reg) value as u64,
                        options(nostack, preserves_flags),
                    )
                };
                #[cfg(not(target_arch = "bpf"))]
                // SAFETY: the caller vouches for the range.
                unsafe {
                    core::ptr::write_unaligned(at as *mut $ty, value)
                }
            }
        }
    };
}

word!(u8, "u8");
word!(u16, "u16");
word!(u32, "u32");
word!(u64, "u64");

/// `value`, hidden from the optimizer: bounds checks made on the result stay in the code, where
/// the verifier needs them (LLVM may fold a check into arithmetic that loses the lower bound,
/// e.g. a TCP header length of at least 20 becomes `(byte >> 2) & 60`).
#[inline(always)]
pub fn opaque(value: usize) -> usize {
    #[cfg(target_arch = "bpf")]
    {
        let out: usize;
        // SAFETY: a register move; no memory access.
        unsafe {
            core::arch::asm!(
                "{out} = {value}",
                value = in(reg) value,
                out = lateout(reg) out,
                options(pure, nomem, nostack, preserves_flags),
            )
        };
        out
    }
    #[cfg(not(target_arch = "bpf"))]
    value
}

/// Swaps the frame's destination and source MACs in place (an answer goes back to the
/// sender), if the frame holds them: four word accesses.
#[inline(always)]
pub fn swap_macs(start: usize, end: usize) -> Option<()> {
    let at = span(start, end, 0, 12)?;
    // SAFETY: the 12 bytes at `at` are inside the frame (checked just above).
    unsafe {
        let (dst_high, dst_low) = (u32::read(at), u16::read(at + 4));
        let (src_high, src_low) = (u32::read(at + 6), u16::read(at + 10));
        u32::write(at, src_high);
        u16::write(at + 4, src_low);
        u32::write(at + 6, dst_high);
        u16::write(at + 10, dst_low);
    }
    Some(())
}

/// The address of `len` bytes at `start + off`, if they end by `end`.
#[inline(always)]
pub fn span(start: usize, end: usize, off: usize, len: usize) -> Option<usize> {
    let at = start + off;
    if at + len > end {
        return None;
    }
    Some(at)
}

/// A copy of the `T` at `start + off`, if it ends by `end`: any size, one access per byte on
/// BPF. For the paths that run rarely (ICMP, decapsulation); [`read`] for words.
#[inline(always)]
pub fn load<T: Copy>(start: usize, end: usize, off: usize) -> Option<T> {
    let at = span(start, end, off, core::mem::size_of::<T>())?;
    // SAFETY: inside [start, end), checked just above.
    Some(unsafe { core::ptr::read_unaligned(at as *const T) })
}

/// Writes `value` at `start + off`, if it ends by `end`: one access per byte on BPF, as
/// [`load`].
#[inline(always)]
pub fn store<T>(start: usize, end: usize, off: usize, value: T) -> Option<()> {
    let at = span(start, end, off, core::mem::size_of::<T>())?;
    // SAFETY: inside [start, end), checked just above.
    unsafe { core::ptr::write_unaligned(at as *mut T, value) };
    Some(())
}

/// The word at `start + off`, if it ends by `end`. Not for one byte: the compiler turns
/// `at + 1 > end` into `at >= end`, a form from which the verifier learns no packet range.
#[inline(always)]
pub fn read<W: Word>(start: usize, end: usize, off: usize) -> Option<W> {
    let at = span(start, end, off, core::mem::size_of::<W>())?;
    // SAFETY: inside [start, end), checked just above.
    Some(unsafe { W::read(at) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_swapped_in_place_and_a_short_frame_is_left_alone() {
        let mut frame: [u8; 14] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0x08, 0x00];
        let (start, end) = (frame.as_mut_ptr() as usize, frame.as_ptr() as usize + frame.len());
        assert_eq!(swap_macs(start, end), Some(()));
        assert_eq!(frame, [7, 8, 9, 10, 11, 12, 1, 2, 3, 4, 5, 6, 0x08, 0x00]);
        let short = [0u8; 11];
        let start = short.as_ptr() as usize;
        assert_eq!(swap_macs(start, start + short.len()), None);
    }
}
