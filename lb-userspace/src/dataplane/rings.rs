//! The Maglev rings as lbd writes them: the RINGS array mapped into its memory.
use lb_common::{
    backend::NO_BACKEND,
    ring::{RING_LANES, RING_NONE, RING_SIZE, RingChunk, ring_place},
};

use crate::dataplane::mapped::MappedArray;

/// The RINGS array mapped into lbd's memory: a table is written with plain stores instead of
/// 65537 syscalls. Readers see it only after the VIP's flip, a later store through the VIP
/// table's mapping (vip_table.rs fences before it). Bucket `b` of slot `s` is lane `b % RING_LANES` of element
/// `s * RING_CHUNKS + b / RING_LANES`.
pub(super) struct Rings(pub(super) MappedArray<RingChunk>);

impl Rings {
    /// Array elements (chunks of RING_LANES buckets).
    pub(super) fn entries(&self) -> usize {
        self.0.len()
    }

    /// The element of bucket `bucket` of ring `slot`, and its lane.
    pub(super) fn place(slot: u32, bucket: usize) -> (usize, usize) {
        let (element, lane) = ring_place(slot, bucket as u32);
        (element as usize, lane as usize)
    }

    /// Ring `slot` as backend ids (NO_BACKEND for none).
    pub(super) fn read(&self, slot: u32) -> Vec<u32> {
        (0..RING_SIZE as usize)
            .map(|bucket| {
                let (element, lane) = Rings::place(slot, bucket);
                let id = self.0.get(element)[lane];
                if id == RING_NONE { NO_BACKEND } else { id as u32 }
            })
            .collect()
    }

    /// Writes backend ids (below MAX_BACKENDS, or NO_BACKEND) into ring `slot`.
    pub(super) fn write(&mut self, slot: u32, table: &[u32]) {
        assert_eq!(table.len(), RING_SIZE as usize);
        for (chunk, ids) in table.chunks(RING_LANES as usize).enumerate() {
            let mut element: RingChunk = [RING_NONE; RING_LANES as usize];
            for (lane, &id) in ids.iter().enumerate() {
                element[lane] = if id == NO_BACKEND { RING_NONE } else { id as u16 };
            }
            let (index, _) = Rings::place(slot, chunk * RING_LANES as usize);
            self.0.set(index, element);
        }
    }
}
