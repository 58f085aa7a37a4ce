//! Reads the per-CPU counters from pinned maps and sums them over CPUs.
use std::{net::IpAddr, path::Path};

use anyhow::{Context as _, Result};
use aya::{
    Pod,
    maps::{Map, MapData, PerCpuArray},
};
use lb_common::{
    stats::{
        BACKEND_STATS_MAP, Counter, DECAP_STATS_MAP, DecapStat, STATS_MAP, Stat, TrafficCounter,
        VIP_STATS_MAP,
    },
    vip::VipKey,
};

use crate::tables::{Tables, ip_of};

/// Opens a pinned per-CPU array.
fn open<V: Pod>(pin_dir: &Path, name: &str) -> Result<PerCpuArray<MapData, V>> {
    let path = pin_dir.join(name);
    let data =
        MapData::from_pin(&path).with_context(|| format!("opening {} (is lbd running?)", path.display()))?;
    Ok(PerCpuArray::try_from(Map::PerCpuArray(data))?)
}

/// Values that add up over CPUs.
pub trait Summable: Pod + Default {
    fn add(&mut self, other: &Self);
}

impl Summable for Counter {
    fn add(&mut self, o: &Self) {
        self.packets += o.packets;
        self.bytes += o.bytes;
    }
}

impl Summable for TrafficCounter {
    fn add(&mut self, o: &Self) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.new_flows += o.new_flows;
        self.lru_hits += o.lru_hits;
        self.lru_misses += o.lru_misses;
    }
}

/// One slot summed over every CPU.
pub fn sum_slot<V: Summable>(map: &PerCpuArray<MapData, V>, index: u32) -> Result<V> {
    let mut total = V::default();
    for value in map.get(&index, 0)?.iter() {
        total.add(value);
    }
    Ok(total)
}

/// Global counters: verdicts, pass reasons, drop reasons.
pub fn verdicts(pin_dir: &Path) -> Result<Vec<(Stat, Counter)>> {
    let map = open(pin_dir, STATS_MAP)?;
    Stat::ALL.iter().map(|&stat| Ok((stat, sum_slot(&map, stat as u32)?))).collect()
}

/// The decap program's counters.
pub fn decap(pin_dir: &Path) -> Result<Vec<(DecapStat, Counter)>> {
    let map = open(pin_dir, DECAP_STATS_MAP)?;
    DecapStat::ALL.iter().map(|&stat| Ok((stat, sum_slot(&map, stat as u32)?))).collect()
}

/// Traffic per backend in use, by address.
pub fn backends(pin_dir: &Path) -> Result<Vec<(IpAddr, TrafficCounter)>> {
    let tables = Tables::open(pin_dir)?;
    let map = open(pin_dir, BACKEND_STATS_MAP)?;
    tables.backend_ids()?.iter().map(|(addr, id)| Ok((ip_of(addr), sum_slot(&map, *id)?))).collect()
}

/// Traffic per VIP.
pub fn vips(pin_dir: &Path) -> Result<Vec<(VipKey, TrafficCounter)>> {
    let tables = Tables::open(pin_dir)?;
    let map = open(pin_dir, VIP_STATS_MAP)?;
    tables.vips()?.iter().map(|(key, meta)| Ok((*key, sum_slot(&map, meta.index)?))).collect()
}

/// An IP protocol number as lbctl, the admin API and the metrics name it.
pub fn protocol_name(proto: u8) -> String {
    match proto {
        6 => "tcp".to_owned(),
        17 => "udp".to_owned(),
        other => other.to_string(),
    }
}
