//! The connection table's lookup and insert (the layout is lb_common::flow's).
use lb_common::flow::{CONN_WAYS, ConnSet, ConnSlot, FlowKey, TAG_USED, recorded, set_of, tag, tag_matches};

use crate::maps::{CONN_SLOTS, CONN_TAGS};

/// The way of `set` whose slot holds `flow`, that slot, and the backend recorded there.
#[inline(always)]
fn find(tags: &ConnSet, set: u32, flow: &FlowKey, hash: u32) -> Option<(usize, *mut ConnSlot, u32)> {
    let mut way = 0;
    while way < CONN_WAYS as usize {
        if tag_matches(tags.tags[way], hash) {
            let slot = CONN_SLOTS.get_ptr_mut(set * CONN_WAYS + way as u32)?;
            // SAFETY: a map value; a writer on another CPU changes it only while its tag is 0,
            // and `recorded` reads it in the order that makes a slot read mid-change not match.
            if let Some(backend) = unsafe { recorded(slot, flow) } {
                return Some((way, slot, backend));
            }
        }
        way += 1;
    }
    None
}

/// The set's tags, from CONN_TAGS.
#[inline(always)]
fn tags_of(set: u32) -> Option<&'static mut ConnSet> {
    // SAFETY: a map value of CONN_TAGS; other CPUs write single bytes of it.
    CONN_TAGS.get_ptr_mut(set).map(|tags| unsafe { &mut *tags })
}

/// The backend id recorded for `flow` (its flow hash is `hash`), marking the flow used.
#[inline(always)]
pub fn lookup(flow: &FlowKey, hash: u32) -> Option<u32> {
    let set = set_of(hash);
    let tags = tags_of(set)?;
    let (way, _, backend) = find(tags, set, flow, hash)?;
    let tag = tags.tags.get_mut(way)?;
    if *tag & TAG_USED == 0 {
        // A race with a writer on another CPU can only lose this slot (its tag then no longer
        // matches its flow), which costs a Maglev lookup, as an eviction would.
        *tag |= TAG_USED;
    }
    Some(backend)
}

/// Records `flow` -> `backend`: in the flow's own slot if it has one, else in a free one, else
/// in one not used since its set's last sweep (lb_common::flow::ConnSet::victim). `absent`:
/// the caller has just looked the flow up and not found it, so its slot is not searched again.
#[inline(always)]
pub fn insert(flow: &FlowKey, hash: u32, backend: u32, absent: bool) {
    let set = set_of(hash);
    let Some(tags) = tags_of(set) else {
        return;
    };
    let found = if absent { None } else { find(tags, set, flow, hash) };
    let (way, slot) = match found {
        Some((way, slot, _)) => (way, slot),
        None => {
            let (way, sweep) = tags.victim(hash);
            if sweep {
                for tag in tags.tags.iter_mut() {
                    *tag &= !TAG_USED;
                }
            }
            let Some(slot) = CONN_SLOTS.get_ptr_mut(set * CONN_WAYS + way as u32) else {
                return;
            };
            if let Some(tag) = tags.tags.get_mut(way) {
                // SAFETY: a byte of a map value; volatile keeps the order readers rely on (no
                // tag, the slot, then the tag naming it).
                unsafe { core::ptr::write_volatile(tag, 0) };
            }
            (way, slot)
        }
    };
    let value = ConnSlot::new(flow, backend);
    let words = value.words();
    // SAFETY: a map value written as aligned words, in order (see above).
    unsafe {
        let to = slot as *mut [u64; 5];
        let mut i = 0;
        while i < 5 {
            core::ptr::write_volatile(&mut (*to)[i], words[i]);
            i += 1;
        }
    }
    if let Some(slot) = tags.tags.get_mut(way) {
        // SAFETY: a byte of a map value, written last.
        unsafe { core::ptr::write_volatile(slot, tag(hash)) };
    }
}
