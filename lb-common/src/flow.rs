//! The connection table: 5-tuple -> backend, so established flows stay put when pools change.
//!
//! A set-associative cache shared by all CPUs, in two arrays. The flow hash picks a set of
//! [`CONN_WAYS`] slots. [`CONN_TAGS_MAP`] holds one 8-byte tag per slot (flow hash, backend,
//! recently-used bit), a set's tags in one cache line; [`CONN_KEYS_MAP`] holds each slot's
//! [`FlowKey`], compared whenever a tag's hash matches, so a match is exact. A new flow takes a
//! free slot of its set, else one not used since the set's last sweep (CLOCK), else the slot
//! its hash names, and the set's used bits start over.
//!
//! Writers clear a slot's tag, write the key, then write the new tag, each tag one aligned
//! 8-byte store: a reader on another CPU sees the old flow, no flow, or the new flow whole.

use crate::addr::Addr;

/// Array of [`ConnSet`]: the tags of set `s` are element `s`.
pub const CONN_TAGS_MAP: &str = "CONN_TAGS";
/// Array of [`FlowKey`]: slot `w` of set `s` is element `s * CONN_WAYS + w`.
pub const CONN_KEYS_MAP: &str = "CONN_KEYS";
/// Slots per set: one cache line of tags.
pub const CONN_WAYS: u32 = 8;
/// Sets in the table (a power of two: the set is the flow hash's low bits).
pub const CONN_SETS: u32 = 1 << 17;
/// Flows the table holds (1,048,576).
pub const CONN_SLOTS: u32 = CONN_SETS * CONN_WAYS;

/// One set's tags; 0 is a free slot.
pub type ConnSet = [u64; CONN_WAYS as usize];

/// Tag bit: the slot holds a flow.
pub const TAG_VALID: u64 = 1 << 17;
/// Tag bit: the flow was seen since the set's last sweep.
pub const TAG_USED: u64 = 1 << 16;
/// Tag bits of the backend id (backend ids are below 2^16, as in the Maglev rings).
pub const TAG_BACKEND: u64 = 0xffff;
const _: () = assert!(crate::backend::MAX_BACKENDS <= TAG_BACKEND as u32);

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

crate::pod!(FlowKey);

/// The set of a flow hash.
#[inline(always)]
pub const fn set_of(hash: u32) -> u32 {
    hash & (CONN_SETS - 1)
}

/// The tag of a flow with `hash` placed on `backend` (used bit set: it was just seen).
#[inline(always)]
pub const fn tag(hash: u32, backend: u32) -> u64 {
    ((hash as u64) << 32) | TAG_VALID | TAG_USED | (backend as u64 & TAG_BACKEND)
}

/// Whether `tag` holds a flow with `hash` (the key still has to be compared).
#[inline(always)]
pub const fn tag_matches(tag: u64, hash: u32) -> bool {
    tag & TAG_VALID != 0 && (tag >> 32) as u32 == hash
}

/// The backend id in a tag.
#[inline(always)]
pub const fn tag_backend(tag: u64) -> u32 {
    (tag & TAG_BACKEND) as u32
}

/// The slot a new flow with `hash` takes in `set`, and whether the set's used bits are to be
/// cleared first (every slot was used since the last sweep).
#[inline(always)]
pub fn victim(set: &ConnSet, hash: u32) -> (usize, bool) {
    let mut unused = CONN_WAYS as usize;
    let mut way = 0;
    while way < CONN_WAYS as usize {
        let tag = set[way];
        if tag & TAG_VALID == 0 {
            return (way, false);
        }
        if tag & TAG_USED == 0 && unused == CONN_WAYS as usize {
            unused = way;
        }
        way += 1;
    }
    if unused < CONN_WAYS as usize {
        (unused, false)
    } else {
        // Bits above the set index, so flows of one set do not all evict the same slot.
        (((hash >> 17) % CONN_WAYS) as usize, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_carry_hash_and_backend() {
        let t = tag(0xdead_beef, 513);
        assert!(tag_matches(t, 0xdead_beef));
        assert!(!tag_matches(t, 0xdead_beee));
        assert!(!tag_matches(0, 0));
        assert_eq!(tag_backend(t), 513);
        assert_ne!(tag(0, 0), 0, "a flow with hash 0 on backend 0 is not a free slot");
    }

    #[test]
    fn new_flows_take_free_then_unused_then_named_slots() {
        let mut set: ConnSet = [0; 8];
        assert_eq!(victim(&set, 0), (0, false));
        set[0] = tag(1, 1);
        set[1] = tag(2, 1);
        assert_eq!(victim(&set, 0), (2, false));
        for (way, slot) in set.iter_mut().enumerate() {
            *slot = tag(way as u32, 1);
        }
        set[5] &= !TAG_USED;
        set[6] &= !TAG_USED;
        assert_eq!(victim(&set, 0), (5, false), "the first slot not used since the sweep");
        set[5] |= TAG_USED;
        set[6] |= TAG_USED;
        assert_eq!(victim(&set, 3 << 17), (3, true), "all used: the hash names the slot");
        assert_eq!(victim(&set, (8 + 6) << 17), (6, true));
    }

    #[test]
    fn sets_come_from_the_low_hash_bits() {
        assert_eq!(set_of(0xffff_ffff), CONN_SETS - 1);
        assert_eq!(set_of(CONN_SETS + 5), 5);
    }
}
