//! Writes the L4 part of the config into the data plane's maps: backends, VIPs, Maglev rings
//! (new generation into the spare slot, then one flip; `rings.rs`), deny lists (`deny.rs`) and
//! the data-plane settings.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    path::Path,
    time::Duration,
};

use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray, PerCpuValues};
use ipnet::IpNet;
use lb_common::{
    addr::{Addr, mapped_v4},
    backend::{BACKEND_F_IN_USE, BACKENDS_MAP, Backend, NO_BACKEND},
    config::{CONFIG_F_ANY_PORT_VIPS, CONFIG_F_SYN_LIMIT, DATAPLANE_CONFIG_MAP, DataplaneConfig},
    ring::{RING_CHUNKS, RING_SIZE, RINGS_MAP, SLOTS_PER_VIP},
    stats::{BACKEND_STATS_MAP, TrafficCounter, VIP_STATS_MAP},
    syn::{SYN_LIMIT_MAP, SynLimit},
    vip::{ANY_PORT, VIP_ADDRS_MAP, VIP_F_L7, VipKey, VipMeta},
};

use crate::{
    dataplane::{
        DataplaneError, Doing as _, Result, deny::DenyLists, mapped::MappedArray, rings::Rings,
        vip_table::VipTable,
    },
    maglev::{self, Weighted},
};

/// The 16-byte map form of an address (IPv4-mapped for IPv4).
pub fn addr_of(ip: IpAddr) -> Addr {
    match ip {
        IpAddr::V4(v4) => mapped_v4(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address a 16-byte map address stands for.
pub fn ip_of(addr: &Addr) -> IpAddr {
    std::net::Ipv6Addr::from(*addr).to_canonical()
}

/// CLOCK_MONOTONIC in ns: the clock of bpf_ktime_get_ns (and, at tick resolution, of
/// bpf_ktime_get_coarse_ns, which the balancer reads).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub(crate) fn open(pin_dir: &Path, name: &str) -> Result<MapData> {
    let path = pin_dir.join(name);
    MapData::from_pin(&path).doing(format_args!("opening pinned map {}", path.display()))
}

/// The pinned maps lbd programs, and what it last wrote to each VIP's ring.
pub struct Tables {
    vips: VipTable,
    vip_addrs: BpfHashMap<MapData, Addr, u32>,
    rings: Rings,
    backends: Array<MapData, Backend>,
    deny: DenyLists,
    dataplane: Array<MapData, DataplaneConfig>,
    syn_limit: Array<MapData, SynLimit>,
    vip_stats: PerCpuArray<MapData, TrafficCounter>,
    backend_stats: PerCpuArray<MapData, TrafficCounter>,
    /// The current generation's table per VIP, as backend ids.
    written: HashMap<VipKey, Vec<u32>>,
}

/// What the data plane should hold for the L4 path.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub vips: Vec<DesiredVip>,
    pub deny: Vec<IpNet>,
    pub next_hop_mac: Option<[u8; 6]>,
    pub encap_source_v4: [u8; 4],
    pub encap_source_v6: [u8; 16],
    pub max_encap_ip_len: u32,
    pub flow_grace: Duration,
    /// ifindex to redirect encapsulated packets to; 0: XDP_TX.
    pub redirect_ifindex: u32,
    /// SYNs per source prefix (lb_common::syn; default: no limit).
    pub syn_limit: SynLimit,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DesiredVip {
    pub key: VipKey,
    pub flags: u32,
    /// Empty for L7 VIPs (no ring).
    pub backends: Vec<Weighted>,
}

/// Which of the balancer's lookups have anything to find (`CONFIG_F_*`).
fn lookup_flags(desired: &Desired) -> u32 {
    let mut flags = 0;
    if desired.vips.iter().any(|v| v.key.port == ANY_PORT) {
        flags |= CONFIG_F_ANY_PORT_VIPS;
    }
    if desired.syn_limit.interval_ns != 0 {
        flags |= CONFIG_F_SYN_LIMIT;
    }
    flags
}

fn zero_counters(map: &mut PerCpuArray<MapData, TrafficCounter>, index: u32) -> Result<()> {
    let cpus =
        aya::util::nr_cpus().map_err(|(doing, error)| DataplaneError::Io { doing: doing.into(), error })?;
    let zeros = PerCpuValues::try_from(vec![TrafficCounter::default(); cpus.get() as usize])
        .map_err(|error| DataplaneError::Io { doing: "per-CPU values".into(), error })?;
    map.set(index, zeros, 0)?;
    Ok(())
}

/// The backends array's slots in use: address -> id.
pub fn backends_in_use(backends: &Array<MapData, Backend>) -> Result<BTreeMap<Addr, u32>> {
    let mut ids = BTreeMap::new();
    for (id, backend) in backends.iter().enumerate() {
        let backend = backend?;
        if backend.flags & BACKEND_F_IN_USE != 0 {
            ids.insert(backend.addr, id as u32);
        }
    }
    Ok(ids)
}

impl Tables {
    /// Opens the maps pinned under `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<Tables> {
        Ok(Tables {
            vips: VipTable::open(pin_dir)?,
            vip_addrs: BpfHashMap::try_from(Map::HashMap(open(pin_dir, VIP_ADDRS_MAP)?))?,
            rings: Rings(MappedArray::open(pin_dir, RINGS_MAP)?),
            backends: Array::try_from(Map::Array(open(pin_dir, BACKENDS_MAP)?))?,
            deny: DenyLists::open(pin_dir)?,
            dataplane: Array::try_from(Map::Array(open(pin_dir, DATAPLANE_CONFIG_MAP)?))?,
            syn_limit: Array::try_from(Map::Array(open(pin_dir, SYN_LIMIT_MAP)?))?,
            vip_stats: PerCpuArray::try_from(Map::PerCpuArray(open(pin_dir, VIP_STATS_MAP)?))?,
            backend_stats: PerCpuArray::try_from(Map::PerCpuArray(open(pin_dir, BACKEND_STATS_MAP)?))?,
            written: HashMap::new(),
        })
    }

    /// VIPs the RINGS map has room for.
    pub fn max_vips(&self) -> u32 {
        (self.rings.entries() / (SLOTS_PER_VIP * RING_CHUNKS) as usize) as u32
    }

    /// Backends in use: address -> id.
    pub fn backend_ids(&self) -> Result<BTreeMap<Addr, u32>> {
        backends_in_use(&self.backends)
    }

    /// VIPs present: key -> meta.
    pub fn vips(&self) -> Result<BTreeMap<VipKey, VipMeta>> {
        Ok(self.vips.all())
    }

    /// Makes the maps hold `desired`, returning one line per change. Order keeps every packet
    /// consistent: backends are written before rings name them, rings before VIPs flip to
    /// them, and backends are cleared only once no current ring names them.
    pub fn apply(&mut self, desired: &Desired) -> Result<Vec<String>> {
        if desired.vips.len() > self.max_vips() as usize {
            return Err(DataplaneError::Unexpected(format!(
                "{} VIPs configured but the pinned rings hold {}: `lbd stop --detach` and start again to resize",
                desired.vips.len(),
                self.max_vips()
            )));
        }
        let mut changes = Vec::new();
        let wanted: BTreeSet<Addr> =
            desired.vips.iter().flat_map(|v| v.backends.iter().map(|b| b.addr)).collect();
        let ids = self.add_backends(&wanted, &mut changes)?;
        self.write_vips(desired, &ids, &mut changes)?;
        self.write_vip_addrs(desired)?;
        self.clear_backends(&ids, &wanted, &mut changes)?;
        changes.extend(self.deny.apply(&desired.deny)?);
        self.write_settings(desired, &mut changes)?;
        Ok(changes)
    }

    /// Backends first: ids of known addresses kept, new ones given the lowest free ids (their
    /// counters zeroed). Gives every backend's id, the ones about to go included.
    fn add_backends(
        &mut self,
        wanted: &BTreeSet<Addr>,
        changes: &mut Vec<String>,
    ) -> Result<BTreeMap<Addr, u32>> {
        let mut ids = self.backend_ids()?;
        let taken: BTreeSet<u32> = ids.values().copied().collect();
        let mut free = (0..self.backends.len()).filter(|id| !taken.contains(id));
        for addr in wanted {
            if ids.contains_key(addr) {
                continue;
            }
            let id = free.next().ok_or_else(|| DataplaneError::Unexpected("no free backend slot".into()))?;
            self.backends.set(id, &Backend { addr: *addr, flags: BACKEND_F_IN_USE }, 0)?;
            zero_counters(&mut self.backend_stats, id)?;
            ids.insert(*addr, id);
            changes.push(format!("backend {} added as id {id}", ip_of(addr)));
        }
        Ok(ids)
    }

    /// VIPs and their rings: a new VIP takes the lowest free index; an L4 VIP's ring is
    /// written before its meta flips to it; VIPs no longer wanted are removed.
    fn write_vips(
        &mut self,
        desired: &Desired,
        ids: &BTreeMap<Addr, u32>,
        changes: &mut Vec<String>,
    ) -> Result<()> {
        let existing = self.vips()?;
        let mut used_indexes: BTreeSet<u32> = existing.values().map(|m| m.index).collect();
        for vip in &desired.vips {
            let name = format!("{}:{}/{}", ip_of(&vip.key.addr), u16::from_be(vip.key.port), vip.key.proto);
            let mut meta = match existing.get(&vip.key) {
                Some(meta) => *meta,
                None => {
                    let index = (0..self.max_vips())
                        .find(|i| !used_indexes.contains(i))
                        .ok_or_else(|| DataplaneError::Unexpected("no free VIP index".into()))?;
                    used_indexes.insert(index);
                    zero_counters(&mut self.vip_stats, index)?;
                    let slot = index * SLOTS_PER_VIP;
                    changes.push(format!("VIP {name} added as index {index}"));
                    VipMeta { index, flags: 0, ring_current: slot, ring_previous: slot, previous_until_ns: 0 }
                }
            };
            meta.flags = vip.flags;
            if vip.flags & VIP_F_L7 == 0 {
                let known = existing.contains_key(&vip.key);
                if let Some(moved) = self.write_ring(vip, &mut meta, known, ids, desired.flow_grace) {
                    changes.push(format!("VIP {name}: new Maglev table, {moved:.2}% of buckets moved"));
                }
            }
            if existing.get(&vip.key) != Some(&meta) {
                self.vips.set(&vip.key, &meta)?;
            }
        }
        for key in existing.keys() {
            if !desired.vips.iter().any(|v| v.key == *key) {
                self.vips.remove(key);
                self.written.remove(key);
                changes.push(format!("VIP {}:{} removed", ip_of(&key.addr), u16::from_be(key.port)));
            }
        }
        Ok(())
    }

    /// Writes an L4 VIP's Maglev ring. A changed ring goes to the VIP's spare slot and `meta`
    /// flips to it, the old ring kept as `previous` for `flow_grace` (flows in flight keep their
    /// backend); gives the share of buckets moved, in percent. A new VIP's ring is written in
    /// place; an unchanged one is left alone.
    fn write_ring(
        &mut self,
        vip: &DesiredVip,
        meta: &mut VipMeta,
        known: bool,
        ids: &BTreeMap<Addr, u32>,
        flow_grace: Duration,
    ) -> Option<f64> {
        let table: Vec<u32> = maglev::table(&vip.backends, RING_SIZE)
            .into_iter()
            .map(|e| if e == NO_BACKEND { NO_BACKEND } else { ids[&vip.backends[e as usize].addr] })
            .collect();
        let current = match self.written.remove(&vip.key) {
            Some(ring) => Some(ring),
            None if known => Some(self.rings.read(meta.ring_current)),
            None => None,
        };
        let moved = match current {
            Some(current) if current == table => None,
            Some(current) => {
                let base = meta.index * SLOTS_PER_VIP;
                let spare = base + (1 - (meta.ring_current - base));
                self.rings.write(spare, &table);
                let moved = current.iter().zip(&table).filter(|(a, b)| a != b).count();
                meta.ring_previous = meta.ring_current;
                meta.ring_current = spare;
                meta.previous_until_ns = monotonic_ns() + flow_grace.as_nanos() as u64;
                Some(100.0 * moved as f64 / RING_SIZE as f64)
            }
            None => {
                self.rings.write(meta.ring_current, &table);
                None
            }
        };
        self.written.insert(vip.key, table);
        moved
    }

    /// Addresses with a VIP (for ICMP and fragments), with the union of their VIPs' flags.
    fn write_vip_addrs(&mut self, desired: &Desired) -> Result<()> {
        let mut addr_flags: BTreeMap<Addr, u32> = BTreeMap::new();
        for vip in &desired.vips {
            *addr_flags.entry(vip.key.addr).or_default() |= vip.flags;
        }
        let stale: Vec<Addr> =
            self.vip_addrs.keys().filter_map(|k| k.ok()).filter(|k| !addr_flags.contains_key(k)).collect();
        for addr in stale {
            self.vip_addrs.remove(&addr)?;
        }
        for (addr, flags) in &addr_flags {
            self.vip_addrs.insert(addr, flags, 0)?;
        }
        Ok(())
    }

    /// Backends no ring names any more, cleared last.
    fn clear_backends(
        &mut self,
        ids: &BTreeMap<Addr, u32>,
        wanted: &BTreeSet<Addr>,
        changes: &mut Vec<String>,
    ) -> Result<()> {
        for (addr, id) in ids {
            if !wanted.contains(addr) {
                self.backends.set(*id, &Backend::default(), 0)?;
                changes.push(format!("backend {} removed (id {id})", ip_of(addr)));
            }
        }
        Ok(())
    }

    /// The data plane's settings and SYN limit, written after the maps they describe, so a
    /// lookup is skipped only once it would miss.
    fn write_settings(&mut self, desired: &Desired, changes: &mut Vec<String>) -> Result<()> {
        let mut v4 = desired.encap_source_v4;
        v4[2..].fill(0);
        let mut v6 = desired.encap_source_v6;
        v6[12..].fill(0);
        let settings = DataplaneConfig {
            next_hop_mac: desired.next_hop_mac.unwrap_or([0; 6]),
            _pad: [0; 2],
            redirect_ifindex: desired.redirect_ifindex,
            encap_source_v4: v4,
            encap_source_v6: v6,
            max_encap_ip_len: desired.max_encap_ip_len,
            flags: lookup_flags(desired),
        };
        if self.dataplane.get(&0, 0)? != settings {
            self.dataplane.set(0, &settings, 0)?;
        }
        if self.syn_limit.get(&0, 0)? != desired.syn_limit {
            self.syn_limit.set(0, &desired.syn_limit, 0)?;
            changes.push(match desired.syn_limit.interval_ns {
                0 => "SYN limit off".to_owned(),
                ns => format!(
                    "SYN limit: one per {ns} ns per source prefix, {} ns of burst",
                    desired.syn_limit.burst_ns
                ),
            });
        }
        Ok(())
    }
}
