//! The connection table's lookup and insert (the layout is lb_common::flow's).
use lb_common::flow::{CONN_WAYS, ConnSet, FlowKey, TAG_USED, set_of, tag, tag_backend, tag_matches, victim};

use lb_ebpf::words::same;

use crate::maps::{CONN_KEYS, CONN_TAGS};

/// Whether slot `slot` holds `flow`.
#[inline(always)]
fn holds(slot: u32, flow: &FlowKey) -> bool {
    CONN_KEYS.get(slot).is_some_and(|key| same(key.words(), flow.words()))
}

/// The way of `set` that holds `flow`.
#[inline(always)]
fn find(tags: &ConnSet, set: u32, flow: &FlowKey, hash: u32) -> Option<usize> {
    let mut way = 0;
    while way < CONN_WAYS as usize {
        if tag_matches(tags[way], hash) && holds(set * CONN_WAYS + way as u32, flow) {
            return Some(way);
        }
        way += 1;
    }
    None
}

/// The backend id recorded for `flow` (its flow hash is `hash`), marking the flow used.
#[inline(always)]
pub fn lookup(flow: &FlowKey, hash: u32) -> Option<u32> {
    let set = set_of(hash);
    let tags = CONN_TAGS.get_ptr_mut(set)?;
    // SAFETY: a map value of CONN_TAGS; other CPUs write single aligned words of it.
    let tags = unsafe { &mut *tags };
    let way = find(tags, set, flow, hash)?;
    let slot = tags.get_mut(way)?;
    let found = *slot;
    if found & TAG_USED == 0 {
        // A race with a writer on another CPU can only lose this slot (its tag then no longer
        // matches its key), which costs a Maglev lookup, as an eviction would.
        *slot = found | TAG_USED;
    }
    Some(tag_backend(found))
}

/// Records `flow` -> `backend`: in the flow's own slot if it has one, else in a free one, else
/// in one not used since its set's last sweep (lb_common::flow::victim).
#[inline(always)]
pub fn insert(flow: &FlowKey, hash: u32, backend: u32) {
    let set = set_of(hash);
    let Some(tags) = CONN_TAGS.get_ptr_mut(set) else {
        return;
    };
    // SAFETY: a map value of CONN_TAGS; other CPUs write single aligned words of it.
    let tags = unsafe { &mut *tags };
    let way = match find(tags, set, flow, hash) {
        Some(way) => way,
        None => {
            let (way, sweep) = victim(tags, hash);
            if sweep {
                for tag in tags.iter_mut() {
                    *tag &= !TAG_USED;
                }
            }
            let Some(key) = CONN_KEYS.get_ptr_mut(set * CONN_WAYS + way as u32) else {
                return;
            };
            let Some(slot) = tags.get_mut(way) else {
                return;
            };
            // SAFETY: the slot's tag and key are map values; volatile keeps the order that
            // readers rely on (no tag, the key, then the tag naming it).
            unsafe {
                core::ptr::write_volatile(slot, 0);
                let (to, from) = (key as *mut [u64; 5], flow.words());
                let mut i = 0;
                while i < 5 {
                    core::ptr::write_volatile(&mut (*to)[i], from[i]);
                    i += 1;
                }
            }
            way
        }
    };
    if let Some(slot) = tags.get_mut(way) {
        // SAFETY: an aligned word of a map value.
        unsafe { core::ptr::write_volatile(slot, tag(hash, backend)) };
    }
}
