//! The connection table from userspace (the layout is lb_common::flow's): which backend a flow
//! is recorded on, the recorded flows, and removal (tests and the bench also insert).
use std::path::Path;

use lb_common::{
    flow::{
        CONN_SLOTS_MAP, CONN_TAGS_MAP, CONN_WAYS, ConnSet, ConnSlot, FlowKey, TAG_HASH, TAG_USED, recorded,
        set_of, tag, tag_matches,
    },
    hash::flow_hash,
};

use crate::dataplane::{Result, mapped::MappedArray};

/// The pinned CONN_TAGS and CONN_SLOTS arrays, mapped.
pub struct ConnTable {
    tags: MappedArray<ConnSet>,
    slots: MappedArray<ConnSlot>,
}

impl ConnTable {
    /// Maps the table pinned under `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<ConnTable> {
        Ok(ConnTable {
            tags: MappedArray::open(pin_dir, CONN_TAGS_MAP)?,
            slots: MappedArray::open(pin_dir, CONN_SLOTS_MAP)?,
        })
    }

    /// The tag byte of `way` in `set`.
    fn tag_at(&self, set: u32, way: usize) -> *mut u8 {
        // SAFETY: way < CONN_WAYS: inside the set element.
        unsafe { (self.tags.at(set as usize) as *mut u8).add(way) }
    }

    /// Index of `way` of `set` in CONN_SLOTS.
    fn slot_index(set: u32, way: usize) -> usize {
        (set * CONN_WAYS) as usize + way
    }

    /// The flow's hash, its set (the index, and the tags read once), and the way that holds it
    /// with the backend recorded there.
    fn find(&self, flow: &FlowKey) -> (u32, u32, ConnSet, Option<(usize, u32)>) {
        let hash = flow_hash(flow);
        let set = set_of(hash);
        let tags = self.tags.get(set as usize);
        let found =
            (0..CONN_WAYS as usize).filter(|&way| tag_matches(tags.tags[way], hash)).find_map(|way| {
                // SAFETY: an in-bounds element of the mapping, read as the program reads it.
                unsafe { recorded(self.slots.at(Self::slot_index(set, way)), flow) }
                    .map(|backend| (way, backend))
            });
        (hash, set, tags, found)
    }

    /// The backend id recorded for `flow`.
    pub fn get(&self, flow: &FlowKey) -> Option<u32> {
        self.find(flow).3.map(|(_, backend)| backend)
    }

    /// Forgets `flow` (as an eviction would); whether it was recorded.
    pub fn remove(&mut self, flow: &FlowKey) -> bool {
        let (_, set, _, found) = self.find(flow);
        if let Some((way, _)) = found {
            // SAFETY: a tag byte; one store, as the program's own.
            unsafe { self.tag_at(set, way).write_volatile(0) };
        }
        found.is_some()
    }

    /// Records `flow` -> `backend` as the program does for a new flow: every tag written alone,
    /// the tag cleared before its slot changes and written last.
    pub fn insert(&mut self, flow: &FlowKey, backend: u32) {
        let (hash, set, tags, found) = self.find(flow);
        let way = match found {
            Some((way, _)) => way,
            None => {
                let (way, sweep) = tags.victim(hash);
                // SAFETY: tag bytes inside the set element (way < CONN_WAYS).
                unsafe {
                    if sweep {
                        for (w, &t) in tags.tags.iter().enumerate() {
                            self.tag_at(set, w).write_volatile(t & !TAG_USED);
                        }
                    }
                    self.tag_at(set, way).write_volatile(0);
                }
                way
            }
        };
        self.slots.set(Self::slot_index(set, way), ConnSlot::new(flow, backend));
        // SAFETY: a tag byte, written last.
        unsafe { self.tag_at(set, way).write_volatile(tag(hash)) };
    }

    /// Slots holding a flow, and all slots: how full the table is. Reads only the tags.
    pub fn occupancy(&self) -> (usize, usize) {
        let used = (0..self.tags.len())
            .map(|set| self.tags.get(set).tags.iter().filter(|&&t| t & TAG_HASH != 0).count())
            .sum();
        (used, self.slots.len())
    }

    /// Every recorded flow and its backend id.
    pub fn flows(&self) -> Vec<(FlowKey, u32)> {
        let mut out = Vec::new();
        for set in 0..self.tags.len() {
            for (way, &t) in self.tags.get(set).tags.iter().enumerate() {
                if t & TAG_HASH != 0 {
                    let slot = self.slots.get(Self::slot_index(set as u32, way));
                    let flow = slot.flow();
                    // A slot caught mid-rewrite has a tag not matching its flow: skip it.
                    if tag_matches(t, flow_hash(&flow)) {
                        out.push((flow, slot.backend as u32));
                    }
                }
            }
        }
        out
    }
}
