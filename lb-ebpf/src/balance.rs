//! The balancer's flow: parse, filter, find the VIP, pick the backend, hand off to encap.
use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_ktime_get_coarse_ns, maps::lpm_trie::Key, programs::XdpContext,
};
use lb_common::{
    addr::is_v4,
    backend::{BACKEND_F_IN_USE, Backend, NO_BACKEND},
    config::{CONFIG_F_ANY_PORT_VIPS, CONFIG_F_SYN_LIMIT, DataplaneConfig},
    deny::filter_block,
    hash::flow_hash,
    ring::{RING_NONE, RING_SIZE, ring_place},
    stats::Stat,
    syn::{syn_admit, syn_prefix},
    vip::{
        ANY_PORT, VIP_F_DROP_FRAGMENTS, VIP_F_L7, VIP_F_SYN_COOKIES, VIP_WAYS, VipMeta, vip_place, vip_words,
    },
};
use lb_ebpf::{
    parse::{IPPROTO_ICMP, IPPROTO_ICMPV6, Malformed, Packet, parse_frame},
    words::same,
};

use crate::{conn, encap, icmp, maps::*, synproxy};

/// An XDP action and the counter slot that says why.
pub type Outcome = (u32, Stat);

/// Adds one packet of `bytes` to a global counter slot.
#[inline(always)]
pub fn count(stat: Stat, bytes: u64) {
    bump(&STATS, stat as u32, bytes);
}

/// The verdict slot for an XDP action.
#[inline(always)]
pub fn verdict_stat(action: u32) -> Stat {
    match action {
        xdp_action::XDP_PASS => Stat::Pass,
        xdp_action::XDP_TX => Stat::Tx,
        xdp_action::XDP_REDIRECT => Stat::Redirect,
        _ => Stat::Drop,
    }
}

#[inline(always)]
fn malformed(m: Malformed) -> Stat {
    match m {
        Malformed::L2 => Stat::DropMalformedL2,
        Malformed::Ipv4 => Stat::DropMalformedIpv4,
        Malformed::Ipv6 => Stat::DropMalformedIpv6,
        Malformed::L4 => Stat::DropMalformedL4,
    }
}

#[inline(always)]
pub fn try_balance(ctx: &XdpContext) -> Result<Outcome, Stat> {
    let mut slot = core::mem::MaybeUninit::uninit();
    let packet = Packet::zeroed_in(&mut slot);
    if !parse_frame(ctx.data(), ctx.data_end(), packet).map_err(malformed)? {
        return Ok((xdp_action::XDP_PASS, Stat::PassNotIp));
    }
    // One element, always there; the check is for the verifier.
    let config = DATAPLANE_CONFIG.get(0).ok_or(Stat::DropInternal)?;
    let flags = config.flags;
    if denied(packet) {
        return Err(Stat::DropDenied);
    }
    if packet.fragment {
        // SAFETY: the value is a plain u32 read once.
        return match unsafe { VIP_ADDRS.get(&packet.flow.dst) } {
            None => Ok((xdp_action::XDP_PASS, Stat::PassNotVip)),
            Some(flags) if flags & VIP_F_DROP_FRAGMENTS != 0 => Err(Stat::DropFragment),
            Some(_) => Ok((xdp_action::XDP_PASS, Stat::PassFragment)),
        };
    }
    if packet.flow.proto == IPPROTO_ICMP || packet.flow.proto == IPPROTO_ICMPV6 {
        return icmp::handle(ctx, packet, config);
    }
    let words = packet.flow.words();
    let Some(vip) = lookup_vip([words[2], words[3]], packet.flow.dport, packet.flow.proto, flags) else {
        return Ok((xdp_action::XDP_PASS, Stat::PassNotVip));
    };
    if flags & CONFIG_F_SYN_LIMIT != 0 && packet.is_syn() && syn_over_rate(&packet.flow.src) {
        return Err(Stat::DropSynRate);
    }
    if vip.flags & VIP_F_L7 != 0 {
        if vip.flags & VIP_F_SYN_COOKIES != 0 {
            return Ok(synproxy::handle(ctx, packet));
        }
        return Ok((xdp_action::XDP_PASS, Stat::PassL7));
    }
    let outcome = forward(ctx, packet, &vip, config);
    if outcome.1 == Stat::DropTooBig {
        return Ok(icmp::too_big_reply(ctx, packet));
    }
    Ok(outcome)
}

/// Whether a SYN from `src` is over its prefix's rate (lb_common::syn). The read-modify-write
/// of the arrival time is not atomic: two CPUs may both admit a SYN at the edge of the burst,
/// which costs a SYN, not correctness.
#[inline(always)]
fn syn_over_rate(src: &lb_common::addr::Addr) -> bool {
    let Some(limit) = SYN_LIMIT.get(0) else { return false };
    if limit.interval_ns == 0 {
        return false;
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let prefix = syn_prefix(src);
    match SYN_BUCKETS.get_ptr_mut(&prefix) {
        Some(tat) => {
            // SAFETY: a value of this map, valid for this program run.
            match syn_admit(unsafe { *tat }, now, limit) {
                None => true,
                Some(next) => {
                    // SAFETY: as above.
                    unsafe { *tat = next };
                    false
                }
            }
        }
        None => {
            let _ = SYN_BUCKETS.insert(&prefix, &(now + limit.interval_ns), 0);
            false
        }
    }
}

/// Whether the source is in a deny list. The trie is looked up only when the filter says a
/// prefix overlaps the source's block (lb_common::deny).
#[inline(always)]
fn denied(packet: &Packet) -> bool {
    let src = &packet.flow.src;
    let block = filter_block(src);
    if DENY_FILTER.get(block / 64).is_none_or(|word| word >> (block % 64) & 1 == 0) {
        return false;
    }
    if is_v4(src) {
        DENY_V4.get(&Key::new(32, [src[12], src[13], src[14], src[15]])).is_some()
    } else {
        DENY_V6.get(&Key::new(128, *src)).is_some()
    }
}

/// The VIP for (address words, port, protocol): the exact port first, then the any-port VIP
/// (only looked up when one exists).
#[inline(always)]
pub fn lookup_vip(addr: [u64; 2], port: u16, proto: u8, flags: u32) -> Option<VipMeta> {
    if let Some(meta) = find_vip(&vip_words(addr, port, proto)) {
        return Some(meta);
    }
    if flags & CONFIG_F_ANY_PORT_VIPS == 0 {
        return None;
    }
    find_vip(&vip_words(addr, ANY_PORT, proto))
}

/// The meta of the VIP with key `words`, from its bucket of the VIP table.
#[inline(always)]
fn find_vip(words: &[u64; 3]) -> Option<VipMeta> {
    let (index, tag) = vip_place(words);
    let bucket = VIP_TABLE.get(index)?;
    let mut way = 0;
    while way < VIP_WAYS {
        if bucket.tags[way] == tag && same(&bucket.keys[way], words) {
            return VIP_METAS.get(bucket.metas[way]).copied();
        }
        way += 1;
    }
    None
}

/// Picks the backend of `packet.flow` and sends the packet to it. A TCP SYN always takes the
/// current Maglev table; others use the connection table first (a flow quoted in an ICMP error
/// has no TCP flags parsed, so it is never a SYN).
/// Not inlined: its stack frame is separate from the parser's. (It returns a plain tuple, with
/// drops as XDP_DROP: a Result in a BPF function's signature makes BTF the kernel refuses.)
#[inline(never)]
pub fn forward(ctx: &XdpContext, packet: &Packet, vip: &VipMeta, config: &DataplaneConfig) -> Outcome {
    match try_forward(ctx, packet, vip, config) {
        Ok(outcome) => outcome,
        Err(reason) => (xdp_action::XDP_DROP, reason),
    }
}

#[inline(always)]
fn try_forward(
    ctx: &XdpContext,
    packet: &Packet,
    vip: &VipMeta,
    config: &DataplaneConfig,
) -> Result<Outcome, Stat> {
    let flow = &packet.flow;
    let new_flow = packet.is_syn();
    if config.next_hop_mac == [0; 6] {
        return Ok((xdp_action::XDP_PASS, Stat::PassNoNextHop));
    }
    let hash = flow_hash(flow);
    let known = if new_flow { None } else { conn::lookup(flow, hash) };
    let hit = known.is_some();
    let mut backend_id = known.unwrap_or(NO_BACKEND);
    if !hit {
        // A non-SYN miss shortly after a pool change most likely belongs to a flow placed by
        // the previous table (evicted from the LRU since): keep it there while that backend
        // is still in use.
        backend_id = NO_BACKEND;
        // SAFETY: a helper without arguments.
        if !new_flow && unsafe { bpf_ktime_get_coarse_ns() } < vip.previous_until_ns {
            backend_id = ring_entry(vip.ring_previous, hash)?;
            if live_backend(backend_id).is_none() {
                backend_id = NO_BACKEND;
            }
        }
        if backend_id == NO_BACKEND {
            backend_id = ring_entry(vip.ring_current, hash)?;
        }
        if backend_id == NO_BACKEND {
            return Err(Stat::DropNoBackend);
        }
        // A SYN may repeat one whose slot is there; any other flow was just looked up.
        conn::insert(flow, hash, backend_id, !new_flow);
    }
    let Some(backend) = live_backend(backend_id) else {
        return Err(Stat::DropNoBackend);
    };
    // Counted once the packet is really on its way (not when it is too big).
    let bytes = packet.ip_len as u64;
    let outcome = encap::encapsulate(ctx, packet, backend, config, hash)?;
    if matches!(outcome.1, Stat::Tx | Stat::Redirect) {
        add_traffic(VIP_STATS.get_ptr_mut(vip.index), bytes, hit, new_flow);
        add_traffic(BACKEND_STATS.get_ptr_mut(backend_id), bytes, hit, new_flow);
    }
    Ok(outcome)
}

/// The backend id in the bucket of `hash` in ring `slot` (NO_BACKEND for none).
#[inline(always)]
fn ring_entry(slot: u32, hash: u32) -> Result<u32, Stat> {
    let bucket = hash % RING_SIZE;
    let (index, lane) = ring_place(slot, bucket);
    let chunk = RINGS.get(index).ok_or(Stat::DropInternal)?;
    let id = chunk[lane as usize];
    Ok(if id == RING_NONE { NO_BACKEND } else { id as u32 })
}

/// The backend with id `id` if its slot is in use.
#[inline(always)]
fn live_backend(id: u32) -> Option<&'static Backend> {
    BACKENDS.get(id).filter(|b| b.flags & BACKEND_F_IN_USE != 0)
}

#[inline(always)]
fn add_traffic(counter: Option<*mut lb_common::stats::TrafficCounter>, bytes: u64, hit: bool, syn: bool) {
    if let Some(c) = counter {
        // SAFETY: a per-CPU slot; nothing else on this CPU runs while the program does.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
            if hit {
                (*c).lru_hits += 1;
            } else {
                (*c).new_flows += 1;
                if !syn {
                    (*c).lru_misses += 1;
                }
            }
        }
    }
}
