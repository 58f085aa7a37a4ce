//! The connection table from userspace (the layout is lb_common::flow's): which backend a flow
//! is recorded on, the recorded flows, and removal (tests and the bench also insert).
use std::path::Path;

use anyhow::Result;
use lb_common::{
    flow::{
        CONN_KEYS_MAP, CONN_TAGS_MAP, CONN_WAYS, ConnSet, FlowKey, TAG_USED, TAG_VALID, set_of, tag,
        tag_backend, tag_matches, victim,
    },
    hash::flow_hash,
};

use crate::mapped::MappedArray;

/// The pinned CONN_TAGS and CONN_KEYS arrays, mapped.
pub struct ConnTable {
    tags: MappedArray<ConnSet>,
    keys: MappedArray<FlowKey>,
}

impl ConnTable {
    /// Maps the table pinned under `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<ConnTable> {
        Ok(ConnTable {
            tags: MappedArray::open(pin_dir, CONN_TAGS_MAP)?,
            keys: MappedArray::open(pin_dir, CONN_KEYS_MAP)?,
        })
    }

    /// The tag word of `way` in `set`.
    fn tag_at(&self, set: u32, way: usize) -> *mut u64 {
        // SAFETY: way < CONN_WAYS: inside the set element.
        unsafe { (self.tags.at(set as usize) as *mut u64).add(way) }
    }

    /// The flow's hash, its set (the index, and the tags read once) and the way that holds it.
    fn find(&self, flow: &FlowKey) -> (u32, u32, ConnSet, Option<usize>) {
        let hash = flow_hash(flow);
        let set = set_of(hash);
        let tags = self.tags.get(set as usize);
        let way = (0..CONN_WAYS as usize).find(|&way| {
            tag_matches(tags[way], hash) && self.keys.get((set * CONN_WAYS) as usize + way) == *flow
        });
        (hash, set, tags, way)
    }

    /// The backend id recorded for `flow`.
    pub fn get(&self, flow: &FlowKey) -> Option<u32> {
        let (_, _, tags, way) = self.find(flow);
        way.map(|way| tag_backend(tags[way]))
    }

    /// Forgets `flow` (as an eviction would); whether it was recorded.
    pub fn remove(&mut self, flow: &FlowKey) -> bool {
        let (_, set, _, way) = self.find(flow);
        if let Some(way) = way {
            // SAFETY: an aligned tag word; one 8-byte store, as the program's own.
            unsafe { self.tag_at(set, way).write_volatile(0) };
        }
        way.is_some()
    }

    /// Records `flow` -> `backend` as the program does for a new flow: every tag written alone,
    /// the tag cleared before its key changes and written last.
    pub fn insert(&mut self, flow: &FlowKey, backend: u32) {
        let (hash, set, tags, way) = self.find(flow);
        let way = way.unwrap_or_else(|| {
            let (way, sweep) = victim(&tags, hash);
            // SAFETY: aligned tag words inside the set element (way < CONN_WAYS).
            unsafe {
                if sweep {
                    for (w, &t) in tags.iter().enumerate() {
                        self.tag_at(set, w).write_volatile(t & !TAG_USED);
                    }
                }
                self.tag_at(set, way).write_volatile(0);
            }
            self.keys.set((set * CONN_WAYS) as usize + way, *flow);
            way
        });
        // SAFETY: aligned tag word, written last.
        unsafe { self.tag_at(set, way).write_volatile(tag(hash, backend)) };
    }

    /// Every recorded flow and its backend id.
    pub fn flows(&self) -> Vec<(FlowKey, u32)> {
        let mut out = Vec::new();
        for set in 0..self.tags.len() {
            for (way, &t) in self.tags.get(set).iter().enumerate() {
                if t & TAG_VALID != 0 {
                    let key = self.keys.get(set * CONN_WAYS as usize + way);
                    // A slot caught mid-rewrite has a tag not matching its key: skip it.
                    if tag_matches(t, flow_hash(&key)) {
                        out.push((key, tag_backend(t)));
                    }
                }
            }
        }
        out
    }
}
