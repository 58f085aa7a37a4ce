//! Reads the per-CPU counters from pinned maps and sums them over CPUs.
use std::path::Path;

use anyhow::{Context as _, Result};
use aya::maps::{Map, MapData, PerCpuArray};
use lb_common::stats::{Counter, STATS_MAP, Stat};

/// Opens a pinned per-CPU array of counters.
fn open_counters(pin_dir: &Path, name: &str) -> Result<PerCpuArray<MapData, Counter>> {
    let path = pin_dir.join(name);
    let data =
        MapData::from_pin(&path).with_context(|| format!("opening {} (is lbd running?)", path.display()))?;
    Ok(PerCpuArray::try_from(Map::PerCpuArray(data))?)
}

/// Sums one slot of a per-CPU counter array over every CPU.
pub fn sum_slot(map: &PerCpuArray<MapData, Counter>, index: u32) -> Result<Counter> {
    let per_cpu = map.get(&index, 0)?;
    Ok(per_cpu.iter().fold(Counter::default(), |acc, c| Counter {
        packets: acc.packets + c.packets,
        bytes: acc.bytes + c.bytes,
    }))
}

/// Packets and bytes per XDP verdict.
pub fn verdicts(pin_dir: &Path) -> Result<Vec<(Stat, Counter)>> {
    let map = open_counters(pin_dir, STATS_MAP)?;
    Stat::ALL
        .iter()
        .map(|&stat| Ok((stat, sum_slot(&map, stat as u32)?)))
        .collect()
}
