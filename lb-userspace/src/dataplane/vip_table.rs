//! The VIP table from lbd's side (the layout is lb_common::vip's): every VIP, and adding,
//! updating and removing one, each step ordered so that a packet sees a whole state.
use std::{collections::BTreeMap, path::Path};

use anyhow::{Result, bail};
use lb_common::vip::{VIP_METAS_MAP, VIP_TABLE_MAP, VIP_WAYS, VipBucket, VipKey, VipMeta, vip_place};

use crate::dataplane::mapped::MappedArray;

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

    /// Writes one 4-byte word of a bucket (tag or meta copy) with a single aligned store, after
    /// every store before it (the key, a meta copy, a ring) is visible.
    fn store(&mut self, index: u32, word: impl FnOnce(*mut VipBucket) -> *mut u32, value: u32) {
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        // SAFETY: `word` names a u32 field inside the in-bounds bucket element.
        unsafe { word(self.buckets.at(index as usize)).write_volatile(value) };
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
            self.store(index, |b| unsafe { std::ptr::addr_of_mut!((*b).metas[way]) }, spare);
            return Ok(());
        }
        let Some(way) = (0..VIP_WAYS).find(|&w| bucket.tags[w] == 0) else {
            bail!(
                "VIP table bucket {index} already holds {VIP_WAYS} VIPs (a hash collision; change a VIP address)"
            );
        };
        let copy = meta.index * 2;
        self.metas.set(copy as usize, *meta);
        // SAFETY: the key words of a free slot (no tag: no packet reads them).
        unsafe {
            std::ptr::addr_of_mut!((*self.buckets.at(index as usize)).keys[way]).write_volatile(key.words())
        };
        self.store(index, |b| unsafe { std::ptr::addr_of_mut!((*b).metas[way]) }, copy);
        self.store(index, |b| unsafe { std::ptr::addr_of_mut!((*b).tags[way]) }, tag);
        Ok(())
    }

    /// Removes the VIP `key` (its tag first: packets stop matching it at once).
    pub fn remove(&mut self, key: &VipKey) {
        if let (index, _, _, Some(way)) = self.find(key) {
            self.store(index, |b| unsafe { std::ptr::addr_of_mut!((*b).tags[way]) }, 0);
        }
    }
}
