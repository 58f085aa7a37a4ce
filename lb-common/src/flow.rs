//! The connection table: 5-tuple -> backend, so established flows stay put when pools change.
//!
//! A set-associative cache shared by all CPUs, in two arrays. The flow hash picks a set of
//! [`CONN_WAYS`] slots. [`CONN_TAGS_MAP`] holds one tag byte per slot (7 bits of the flow hash,
//! 0 for a free slot, and a recently-used bit), a set's tags in one 8-byte word, so the tags of
//! 1M slots take 1 MB and stay in cache; [`CONN_SLOTS_MAP`] holds each slot's [`ConnSlot`] (the
//! flow and its backend), compared whenever a tag matches, so a match is exact. A new flow takes
//! a free slot of its set, else one not used since the set's last sweep (CLOCK), else the slot
//! its hash names, and the set's used bits start over.
//!
//! Writers clear a slot's tag, write the slot's words in order, then write the new tag, each tag
//! one byte store; readers read the slot's last word (ports, protocol, backend) before its
//! addresses ([`recorded`]). A reader on another CPU sees the old flow, no flow, or the new flow
//! whole, and never one flow with another's backend.

use crate::addr::Addr;

/// Array of [`ConnSet`]: the tags of set `s` are element `s`.
pub const CONN_TAGS_MAP: &str = "CONN_TAGS";
/// Array of [`ConnSlot`]: slot `w` of set `s` is element `s * CONN_WAYS + w`.
pub const CONN_SLOTS_MAP: &str = "CONN_SLOTS";
/// Slots per set: one 8-byte word of tags.
pub const CONN_WAYS: u32 = 8;
/// Sets in the table (a power of two: the set is the flow hash's low bits).
pub const CONN_SETS: u32 = 1 << 17;
/// Flows the table holds (1,048,576).
pub const CONN_SLOT_COUNT: u32 = CONN_SETS * CONN_WAYS;

/// One set's tags, way `w`'s in byte `w`; 0 is a free slot.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnSet {
    pub tags: [u8; CONN_WAYS as usize],
}
const _: () = assert!(CONN_WAYS == 8, "a set is one 8-byte word");

/// Tag bits of the flow hash (never 0 in a slot that holds a flow).
pub const TAG_HASH: u8 = 0x7f;
/// Tag bit: the flow was seen since the set's last sweep.
pub const TAG_USED: u8 = 0x80;

/// A flow as the client sent it: addresses IPv4-mapped for IPv4, ports in network order.
/// 8-byte aligned so it compares as five words.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

impl FlowKey {
    /// The key as five words: source halves, destination halves, ports and protocol.
    #[inline(always)]
    pub fn words(&self) -> &[u64; 5] {
        // SAFETY: 40 bytes, 8-aligned, every bit pattern a valid u64.
        unsafe { &*(self as *const FlowKey as *const [u64; 5]) }
    }
}

/// A slot of the table: a flow, in [`FlowKey`]'s layout, and the backend id it is recorded on,
/// where a FlowKey has padding (backend ids are below 2^16, as in the Maglev rings).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnSlot {
    pub src: Addr,
    pub dst: Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: u8,
    pub backend: u16,
}
const _: () = assert!(core::mem::size_of::<ConnSlot>() == 40);
const _: () = assert!(core::mem::offset_of!(ConnSlot, backend) == 38, "the last 2 bytes of word 4");
const _: () = assert!(crate::backend::MAX_BACKENDS <= 1 << 16);

/// The bytes of a slot's last word that are the flow's (ports, protocol, zero padding).
const FLOW_TAIL: u64 = u64::from_ne_bytes([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0]);

impl ConnSlot {
    /// `flow` recorded on `backend`.
    #[inline(always)]
    pub fn new(flow: &FlowKey, backend: u32) -> ConnSlot {
        ConnSlot {
            src: flow.src,
            dst: flow.dst,
            sport: flow.sport,
            dport: flow.dport,
            proto: flow.proto,
            _pad: 0,
            backend: backend as u16,
        }
    }

    /// The slot as five words, as [`FlowKey::words`].
    #[inline(always)]
    pub fn words(&self) -> &[u64; 5] {
        // SAFETY: 40 bytes, 8-aligned, every bit pattern a valid u64.
        unsafe { &*(self as *const ConnSlot as *const [u64; 5]) }
    }

    /// The recorded flow.
    pub fn flow(&self) -> FlowKey {
        FlowKey {
            src: self.src,
            dst: self.dst,
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            _pad: [0; 3],
        }
    }
}

/// The backend recorded for `flow` if the slot at `slot` holds it (a FlowKey's padding is zero).
/// The last word (ports, protocol, backend) is read first, and once: writers write it after the
/// addresses (lb_common::flow's order), so on x86 the addresses read after it belong to the same
/// flow or differ from `flow`'s, and a match never comes with another flow's backend. Volatile
/// keeps that order; an OR of XORs rather than a chain of comparisons, which the BPF compiler
/// turns into a byte-wise bcmp call.
///
/// # Safety
/// `slot` points to a readable, 8-aligned ConnSlot (a map value, or its mmap'd image).
#[inline(always)]
pub unsafe fn recorded(slot: *const ConnSlot, flow: &FlowKey) -> Option<u32> {
    let (at, f) = (slot as *const u64, flow.words());
    // SAFETY: five aligned words inside the slot (the caller's promise). Read in this order.
    let (tail, a) = unsafe {
        let tail = at.add(4).read_volatile();
        (tail, [0, 1, 2, 3].map(|i| at.add(i).read_volatile()))
    };
    let diff = ((tail ^ f[4]) & FLOW_TAIL) | (a[0] ^ f[0]) | (a[1] ^ f[1]) | (a[2] ^ f[2]) | (a[3] ^ f[3]);
    let [.., b0, b1] = tail.to_ne_bytes();
    (diff == 0).then_some(u16::from_ne_bytes([b0, b1]) as u32)
}

crate::pod!(FlowKey, ConnSlot);

/// The set of a flow hash.
#[inline(always)]
pub const fn set_of(hash: u32) -> u32 {
    hash & (CONN_SETS - 1)
}

/// The tag of a flow with `hash`, used bit set (it was just seen): the hash's top 7 bits, 0
/// taken as 1 so that the tag of a flow is never a free slot's.
#[inline(always)]
pub const fn tag(hash: u32) -> u8 {
    let bits = (hash >> 25) as u8;
    (if bits == 0 { 1 } else { bits }) | TAG_USED
}

/// Whether `tag` may hold a flow with `hash` (the slot still has to be compared).
#[inline(always)]
pub const fn tag_matches(tag: u8, hash: u32) -> bool {
    (tag ^ self::tag(hash)) & TAG_HASH == 0
}

/// Every byte's low 7 bits.
const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
/// Every byte's top bit: a way mask has way `w` as bit `8w + 7`.
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The lowest way of a non-empty way mask. Its lowest bit alone, shifted (way `w` becomes
/// `1 << 8w`); the multiply then puts `w` in the top byte. BPF has no count-trailing-zeros.
#[inline(always)]
pub const fn first_way(mask: u64) -> usize {
    (((mask.isolate_lowest_one() >> 7).wrapping_mul(0x0001_0203_0405_0607) >> 56) & 7) as usize
}

impl ConnSet {
    /// The slot a new flow with `hash` takes, and whether the set's used bits are to be cleared
    /// first (every slot was used since the last sweep): the first free slot, else the first
    /// not used since the last sweep, else the slot the hash names.
    ///
    /// The set is tested as one word, without a branch per slot: in a full table which slot is
    /// free or unused is random, and a mispredicted branch makes the rest of the packet's work
    /// wait for the tags (often a cache miss) instead of overlapping it. Way 0 is tested first
    /// on its own: slots are taken in order, so while the table has room that one predictable
    /// branch names the slot.
    #[inline(always)]
    pub fn victim(&self, hash: u32) -> (usize, bool) {
        if self.tags[0] & TAG_HASH == 0 {
            return (0, false);
        }
        let word = u64::from_le_bytes(self.tags);
        // A byte whose low 7 bits are 0 keeps its top bit in 0x80 - b (no borrow crosses bytes).
        let free = (HIGH - (word & LOW7)) & HIGH;
        if free != 0 {
            return (first_way(free), false);
        }
        let unused = !word & HIGH;
        if unused != 0 {
            return (first_way(unused), false);
        }
        // Bits above the set index, so flows of one set do not all evict the same slot.
        (((hash >> 17) % CONN_WAYS) as usize, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_carry_the_top_hash_bits() {
        let t = tag(0xdead_beef);
        assert!(tag_matches(t, 0xdead_beef));
        assert!(tag_matches(t & !TAG_USED, 0xdead_beef), "the used bit is not compared");
        assert!(!tag_matches(t, 0x5ead_beef));
        assert!(tag_matches(t, 0xdfff_ffff), "bits below the top 7 are not compared");
        assert_ne!(tag(0x01ff_ffff) & TAG_HASH, 0, "a flow whose top bits are 0 is not a free slot");
        for hash in [0, 1 << 25, u32::MAX] {
            assert!(!tag_matches(0, hash) && !tag_matches(TAG_USED, hash), "free slots match no flow");
        }
    }

    #[test]
    fn slots_hold_a_flow_and_its_backend() {
        let flow = FlowKey { src: [1; 16], dst: [2; 16], sport: 3, dport: 4, proto: 6, _pad: [0; 3] };
        let slot = ConnSlot::new(&flow, 0xbeef);
        // SAFETY: a ConnSlot on the stack.
        let recorded = |other: &FlowKey| unsafe { recorded(&slot, other) };
        assert_eq!(recorded(&flow), Some(0xbeef));
        assert_eq!(slot.flow(), flow);
        for other in [
            FlowKey { sport: 5, ..flow },
            FlowKey { dport: 5, ..flow },
            FlowKey { proto: 17, ..flow },
            FlowKey { src: [9; 16], ..flow },
            FlowKey { dst: [9; 16], ..flow },
        ] {
            assert_eq!(recorded(&other), None, "{other:?}");
        }
    }

    #[test]
    fn new_flows_take_free_then_unused_then_named_slots() {
        let mut set = ConnSet::default();
        assert_eq!(set.victim(0), (0, false));
        set.tags[0] = tag(1);
        set.tags[1] = tag(2);
        set.tags[3] = tag(3);
        assert_eq!(set.victim(0), (2, false));
        for (way, slot) in set.tags.iter_mut().enumerate() {
            *slot = tag((way as u32 + 1) << 25);
        }
        set.tags[7] = TAG_USED;
        assert_eq!(set.victim(0), (7, false), "a used bit alone is a free slot");
        set.tags[7] = tag(1);
        set.tags[5] &= !TAG_USED;
        set.tags[6] &= !TAG_USED;
        assert_eq!(set.victim(0), (5, false), "the first slot not used since the sweep");
        set.tags[5] |= TAG_USED;
        set.tags[6] |= TAG_USED;
        assert_eq!(set.victim(3 << 17), (3, true), "all used: the hash names the slot");
        assert_eq!(set.victim((8 + 6) << 17), (6, true));
    }

    #[test]
    fn first_way_is_the_lowest_way_of_a_mask() {
        for ways in 1..=255u64 {
            let mask: u64 = (0..8).filter(|w| ways >> w & 1 != 0).map(|w| 0x80 << (8 * w)).sum();
            assert_eq!(first_way(mask), ways.trailing_zeros() as usize, "{ways:08b}");
        }
    }

    #[test]
    fn sets_come_from_the_low_hash_bits() {
        assert_eq!(set_of(0xffff_ffff), CONN_SETS - 1);
        assert_eq!(set_of(CONN_SETS + 5), 5);
    }
}
