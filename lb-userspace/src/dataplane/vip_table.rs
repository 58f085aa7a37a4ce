//! The VIP table from lbd's side (the layout is lb_common::vip's): every VIP, and adding,
//! updating and removing one, each step ordered so that a packet sees a whole state.
use std::{collections::BTreeMap, path::Path};

use lb_common::vip::{VIP_METAS_MAP, VIP_TABLE_MAP, VIP_WAYS, VipBucket, VipKey, VipMeta, vip_place};

use crate::dataplane::{DataplaneError, Result, mapped::MappedArray};

/// A 4-byte word of a bucket's way that a single store changes.
#[derive(Clone, Copy)]
enum Word {
    Tag(usize),
    Meta(usize),
}

/// The pinned VIP_TABLE and VIP_METAS arrays, mapped.
pub struct VipTable {
    buckets: MappedArray<VipBucket>,
    metas: MappedArray<VipMeta>,
}

impl VipTable {
    /// Maps the table pinned under `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<VipTable> {
        Ok(VipTable {
            buckets: MappedArray::open(pin_dir, VIP_TABLE_MAP)?,
            metas: MappedArray::open(pin_dir, VIP_METAS_MAP)?,
        })
    }

    /// The bucket of `key` (its index, and its contents read once), its tag, and the way that
    /// holds it.
    fn find(&self, key: &VipKey) -> (u32, VipBucket, u32, Option<usize>) {
        let words = key.words();
        let (index, tag) = vip_place(&words);
        let bucket = self.buckets.get(index as usize);
        let way = (0..VIP_WAYS).find(|&w| bucket.tags[w] == tag && bucket.keys[w] == words);
        (index, bucket, tag, way)
    }

    /// Writes one 4-byte word of a bucket (a way's tag or meta copy) with a single aligned
    /// store, after every store before it (the key, a meta copy, a ring) is visible.
    fn store(&mut self, index: u32, word: Word, value: u32) {
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        let bucket = self.buckets.at(index as usize);
        // SAFETY: `bucket` points at an in-bounds element of the mapping, and `way` is below
        // VIP_WAYS, so the field is inside it; a volatile store, since XDP reads it concurrently.
        unsafe {
            match word {
                Word::Tag(way) => std::ptr::addr_of_mut!((*bucket).tags[way]).write_volatile(value),
                Word::Meta(way) => std::ptr::addr_of_mut!((*bucket).metas[way]).write_volatile(value),
            }
        }
    }

    /// Every VIP and its current meta.
    pub fn all(&self) -> BTreeMap<VipKey, VipMeta> {
        let mut out = BTreeMap::new();
        for index in 0..self.buckets.len() {
            let bucket = self.buckets.get(index);
            for way in (0..VIP_WAYS).filter(|&w| bucket.tags[w] != 0) {
                out.insert(VipKey::from_words(&bucket.keys[way]), self.metas.get(bucket.metas[way] as usize));
            }
        }
        out
    }

    /// Adds the VIP `key` or replaces its meta. A new VIP's key and meta are written before
    /// its tag; a known VIP's new meta goes into its spare copy, then the slot points at it.
    pub fn set(&mut self, key: &VipKey, meta: &VipMeta) -> Result<()> {
        let (index, bucket, tag, way) = self.find(key);
        if let Some(way) = way {
            let spare = bucket.metas[way] ^ 1;
            self.metas.set(spare as usize, *meta);
            self.store(index, Word::Meta(way), spare);
            return Ok(());
        }
        let Some(way) = (0..VIP_WAYS).find(|&w| bucket.tags[w] == 0) else {
            return Err(DataplaneError::Unexpected(format!(
                "VIP table bucket {index} already holds {VIP_WAYS} VIPs (a hash collision; change a VIP address)"
            )));
        };
        let copy = meta.index * 2;
        self.metas.set(copy as usize, *meta);
        // SAFETY: the key words of a free slot (no tag: no packet reads them).
        unsafe {
            std::ptr::addr_of_mut!((*self.buckets.at(index as usize)).keys[way]).write_volatile(key.words())
        };
        self.store(index, Word::Meta(way), copy);
        self.store(index, Word::Tag(way), tag);
        Ok(())
    }

    /// Removes the VIP `key` (its tag first: packets stop matching it at once).
    pub fn remove(&mut self, key: &VipKey) {
        if let (index, _, _, Some(way)) = self.find(key) {
            self.store(index, Word::Tag(way), 0);
        }
    }
}
