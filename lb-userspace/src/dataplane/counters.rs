//! Reads the per-CPU counters from pinned maps and sums them over CPUs: the balancer's through
//! handles lbd opens once (`Counters`), the decap helper's by its pin directory.
use std::{net::IpAddr, path::Path};

use aya::{
    Pod,
    maps::{Array, Map, MapData, PerCpuArray},
};
use lb_common::{
    backend::{BACKENDS_MAP, Backend},
    stats::{
        BACKEND_STATS_MAP, Counter, DECAP_STATS_MAP, DecapStat, STATS_MAP, Stat, TrafficCounter,
        VIP_STATS_MAP,
    },
    vip::VipKey,
};

use crate::dataplane::{
    Doing as _, Result,
    conn_table::ConnTable,
    tables::{backends_in_use, ip_of},
    vip_table::VipTable,
};

/// Opens a pinned map.
fn pinned(pin_dir: &Path, name: &str) -> Result<MapData> {
    let path = pin_dir.join(name);
    MapData::from_pin(&path).doing(format_args!("opening {} (is lbd running?)", path.display()))
}

/// Opens a pinned per-CPU array.
fn open<V: Pod>(pin_dir: &Path, name: &str) -> Result<PerCpuArray<MapData, V>> {
    Ok(PerCpuArray::try_from(Map::PerCpuArray(pinned(pin_dir, name)?))?)
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

/// The balancer's counters and the maps that say which of their slots are in use, opened once:
/// lbd keeps one for its lifetime, so a scrape or `lbctl stats` reads slots and opens nothing.
pub struct Counters {
    verdicts: PerCpuArray<MapData, Counter>,
    vip_stats: PerCpuArray<MapData, TrafficCounter>,
    backend_stats: PerCpuArray<MapData, TrafficCounter>,
    vips: VipTable,
    backends: Array<MapData, Backend>,
    flows: ConnTable,
}

impl Counters {
    /// Opens the balancer's maps pinned under `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<Counters> {
        Ok(Counters {
            verdicts: open(pin_dir, STATS_MAP)?,
            vip_stats: open(pin_dir, VIP_STATS_MAP)?,
            backend_stats: open(pin_dir, BACKEND_STATS_MAP)?,
            vips: VipTable::open(pin_dir)?,
            backends: Array::try_from(Map::Array(pinned(pin_dir, BACKENDS_MAP)?))?,
            flows: ConnTable::open(pin_dir)?,
        })
    }

    /// Global counters: verdicts, pass reasons, drop reasons. Slots a STATS map pinned by an
    /// older lbd does not have (it was made with fewer) read as zero.
    pub fn verdicts(&self) -> Result<Vec<(Stat, Counter)>> {
        let slots = self.verdicts.len();
        Stat::ALL
            .iter()
            .map(|&stat| match stat as u32 {
                index if index >= slots => Ok((stat, Counter::default())),
                index => Ok((stat, sum_slot(&self.verdicts, index)?)),
            })
            .collect()
    }

    /// Traffic per backend in use, by address.
    pub fn backends(&self) -> Result<Vec<(IpAddr, TrafficCounter)>> {
        backends_in_use(&self.backends)?
            .iter()
            .map(|(addr, id)| Ok((ip_of(addr), sum_slot(&self.backend_stats, *id)?)))
            .collect()
    }

    /// Flows in the connection table, and its slots.
    pub fn flows(&self) -> (usize, usize) {
        self.flows.occupancy()
    }

    /// Traffic per VIP.
    pub fn vips(&self) -> Result<Vec<(VipKey, TrafficCounter)>> {
        self.vips.all().iter().map(|(key, meta)| Ok((*key, sum_slot(&self.vip_stats, meta.index)?))).collect()
    }
}

/// The decap program's counters.
pub fn decap(pin_dir: &Path) -> Result<Vec<(DecapStat, Counter)>> {
    let map = open(pin_dir, DECAP_STATS_MAP)?;
    DecapStat::ALL.iter().map(|&stat| Ok((stat, sum_slot(&map, stat as u32)?))).collect()
}

/// An IP protocol number as lbctl, the admin API and the metrics name it.
pub fn protocol_name(proto: u8) -> String {
    match proto {
        6 => "tcp".to_owned(),
        17 => "udp".to_owned(),
        other => other.to_string(),
    }
}
