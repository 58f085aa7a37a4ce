//! Head buffers reused within a worker thread: a request or response head is encoded into one,
//! written, and the buffer goes back for the next head (two allocations a request fewer). A
//! connection holds one only while it writes a head; each thread keeps a few spares.
use std::{
    cell::RefCell,
    ops::{Deref, DerefMut},
};

/// Spare buffers a thread keeps at most.
const KEPT: usize = 16;
/// A buffer grown past this (a huge head) is freed, not kept.
const MAX_KEPT_CAPACITY: usize = 16 * 1024;
/// A new buffer's room: most heads fit.
const FIRST_CAPACITY: usize = 512;

thread_local! {
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer, given back to its thread's spares when dropped.
pub struct Scratch(Vec<u8>);

/// A spare buffer of this thread, or a new one.
pub fn take() -> Scratch {
    let spare = SPARE.try_with(|spare| spare.borrow_mut().pop()).ok().flatten();
    Scratch(spare.unwrap_or_else(|| Vec::with_capacity(FIRST_CAPACITY)))
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.0.capacity() > MAX_KEPT_CAPACITY {
            return;
        }
        let mut buf = std::mem::take(&mut self.0);
        buf.clear();
        // A thread that is exiting has no spares left to keep it in.
        let _ = SPARE.try_with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.len() < KEPT {
                spare.push(buf);
            }
        });
    }
}

impl Deref for Scratch {
    type Target = Vec<u8>;

    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_empty_and_a_huge_one_does_not_come_back() {
        let mut first = take();
        first.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        let address = first.as_ptr();
        drop(first);
        let again = take();
        assert!(again.is_empty() && again.as_ptr() == address, "the spare was not reused");
        let mut huge = take();
        huge.reserve(MAX_KEPT_CAPACITY * 2);
        drop(again);
        drop(huge);
        let kept = SPARE.with_borrow(|s| s.iter().map(Vec::capacity).collect::<Vec<_>>());
        assert!(kept.iter().all(|c| *c <= MAX_KEPT_CAPACITY), "kept {kept:?}");
    }
}
