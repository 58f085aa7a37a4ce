//! Every map of the balancer, one line each: key -> value, who writes it.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use lb_common::{
    addr::Addr,
    backend::{Backend, MAX_BACKENDS},
    config::DataplaneConfig,
    deny::{DENY_FILTER_WORDS, MAX_DENY_PREFIXES},
    flow::{CONN_SETS, CONN_SLOT_COUNT, ConnSet, ConnSlot},
    ring::{RingChunk, ring_entries},
    stats::{Counter, STATS_ENTRIES, TrafficCounter},
    syn::{SYN_BUCKETS as SYN_BUCKET_COUNT, SynLimit},
    vip::{MAX_VIPS, VIP_BUCKETS, VipBucket, VipMeta},
};

/// Array flag: userspace can mmap the array and write tables with plain stores.
const BPF_F_MMAPABLE: u32 = 1 << 10;
/// VIPs the object is sized for by default; lbd resizes RINGS for its configured max_vips.
pub const DEFAULT_RING_VIPS: u32 = 16;

/// VIP hash bucket -> its VIPs' tags, meta copies and keys (lb_common::vip); lbd.
#[map(name = "VIP_TABLE")]
pub static VIP_TABLE: Array<VipBucket> = Array::pinned(VIP_BUCKETS, BPF_F_MMAPABLE);
/// VIP index * 2 + copy -> VipMeta; lbd.
#[map(name = "VIP_METAS")]
pub static VIP_METAS: Array<VipMeta> = Array::pinned(2 * MAX_VIPS, BPF_F_MMAPABLE);
/// VIP address -> OR of its VIPs' flags (ICMP and fragments match on address only); lbd.
#[map(name = "VIP_ADDRS")]
pub static VIP_ADDRS: HashMap<Addr, u32> = HashMap::pinned(MAX_VIPS, 0);
/// Ring slot * RING_CHUNKS + bucket / 4 -> four buckets' backend ids; lbd (Maglev).
#[map(name = "RINGS")]
pub static RINGS: Array<RingChunk> = Array::pinned(ring_entries(DEFAULT_RING_VIPS), BPF_F_MMAPABLE);
/// Backend id -> Backend; lbd.
#[map(name = "BACKENDS")]
pub static BACKENDS: Array<Backend> = Array::pinned(MAX_BACKENDS, 0);
/// Connection-table set -> its slots' tags (lb_common::flow); this program (lbd reads it).
#[map(name = "CONN_TAGS")]
pub static CONN_TAGS: Array<ConnSet> = Array::pinned(CONN_SETS, BPF_F_MMAPABLE);
/// Set * CONN_WAYS + way -> the slot's flow and backend; this program (lbd reads it).
#[map(name = "CONN_SLOTS")]
pub static CONN_SLOTS: Array<ConnSlot> = Array::pinned(CONN_SLOT_COUNT, BPF_F_MMAPABLE);
/// IPv4 source prefix -> 1: dropped; lbd.
#[map(name = "DENY_V4")]
pub static DENY_V4: LpmTrie<[u8; 4], u32> = LpmTrie::pinned(MAX_DENY_PREFIXES, 0);
/// IPv6 source prefix -> 1: dropped; lbd.
#[map(name = "DENY_V6")]
pub static DENY_V6: LpmTrie<[u8; 16], u32> = LpmTrie::pinned(MAX_DENY_PREFIXES, 0);
/// Source block / 64 -> bits of the blocks some deny prefix overlaps (lb_common::deny); lbd.
/// Not mmapable, so the kernel can place its 16 KB in huge-page-mapped memory.
#[map(name = "DENY_FILTER")]
pub static DENY_FILTER: Array<u64> = Array::pinned(DENY_FILTER_WORDS, 0);
/// 0 -> DataplaneConfig; lbd.
#[map(name = "DATAPLANE_CONFIG")]
pub static DATAPLANE_CONFIG: Array<DataplaneConfig> = Array::pinned(1, 0);
/// 0 -> SynLimit (per source prefix); lbd.
#[map(name = "SYN_LIMIT")]
pub static SYN_LIMIT: Array<SynLimit> = Array::pinned(1, 0);
/// Source prefix -> GCRA arrival time of its SYNs (lb_common::syn); this program.
#[map(name = "SYN_BUCKETS")]
pub static SYN_BUCKETS: LruHashMap<Addr, u64> = LruHashMap::pinned(SYN_BUCKET_COUNT, 0);
/// Stat -> packets/bytes, per CPU; this program.
#[map(name = "STATS")]
pub static STATS: PerCpuArray<Counter> = PerCpuArray::pinned(STATS_ENTRIES, 0);
/// VIP index -> traffic, per CPU; this program.
#[map(name = "VIP_STATS")]
pub static VIP_STATS: PerCpuArray<TrafficCounter> = PerCpuArray::pinned(MAX_VIPS, 0);
/// Backend id -> traffic, per CPU; this program.
#[map(name = "BACKEND_STATS")]
pub static BACKEND_STATS: PerCpuArray<TrafficCounter> = PerCpuArray::pinned(MAX_BACKENDS, 0);
/// DecapStat -> packets/bytes, per CPU; the decap program.
#[map(name = "DECAP_STATS")]
pub static DECAP_STATS: PerCpuArray<Counter> = PerCpuArray::pinned(lb_common::stats::DECAP_STATS_ENTRIES, 0);

/// Adds one packet of `bytes` to slot `index` of a per-CPU counter array.
#[inline(always)]
pub fn bump(counters: &PerCpuArray<Counter>, index: u32, bytes: u64) {
    if let Some(counter) = counters.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot; nothing else on this CPU runs while the program does.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes;
        }
    }
}
