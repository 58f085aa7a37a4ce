//! Questions answered without changing what is served: which backend a flow goes to (by
//! running the loaded program on a synthesized packet), and what a change would move.
use std::{collections::BTreeSet, net::IpAddr, net::SocketAddr};

use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions},
};
use etherparse::PacketBuilder;
use lb_common::{flow::FlowKey, hash::flow_hash, ring::RING_SIZE};
use serde::{Deserialize, Serialize};

use crate::{
    config::{Config, Protocol},
    dataplane::{
        self, BALANCER_PROGRAM, DataplaneError, Doing as _,
        conn_table::ConnTable,
        tables::{addr_of, ip_of},
    },
    maglev,
    state::{Command, CommandError, State},
};

/// Why a flow or a plan could not be worked out.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("source and VIP must both be IPv4 or both IPv6")]
    MixedFamilies,
    #[error("building the packet: {0}")]
    Packet(#[from] etherparse::err::packet::BuildWriteError),
    #[error("the program forwarded a {0}-byte packet: too short to be encapsulated")]
    ShortOutput(usize),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Refused(#[from] CommandError),
}

type Result<T, E = InspectError> = std::result::Result<T, E>;

const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

/// The answer to "where does this flow go?".
/// An XDP return code's name.
pub fn xdp_action(code: u32) -> &'static str {
    match code {
        0 => "aborted",
        1 => "drop",
        2 => "pass",
        3 => "tx",
        4 => "redirect",
        _ => "unknown",
    }
}

/// Which backend a flow goes to, and why (`POST /flow`'s answer).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowAnswer {
    /// The backend the loaded program sent the packet to (None: not forwarded).
    pub backend: Option<IpAddr>,
    /// XDP action of the run, by name (`tx`, `pass`, `drop`, …).
    pub action: String,
    /// connection table | previous Maglev generation | current Maglev generation | not forwarded
    pub why: String,
}

/// A non-SYN packet of the flow (SYNs always take the current table; established packets are
/// what an operator asks about).
fn packet(protocol: Protocol, source: SocketAddr, vip: SocketAddr) -> Result<Vec<u8>> {
    let mac = [2, 0, 0, 0, 0, 1];
    let eth = PacketBuilder::ethernet2(mac, mac);
    let ip = match (source.ip(), vip.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => return Err(InspectError::MixedFamilies),
    };
    let mut out = Vec::new();
    match protocol {
        Protocol::Tcp => ip.tcp(source.port(), vip.port(), 1, 65535).ack(1).write(&mut out, &[])?,
        Protocol::Udp => ip.udp(source.port(), vip.port()).write(&mut out, &[])?,
    }
    Ok(out)
}

/// Runs the loaded balancer on a synthesized packet of the flow and explains the result. The
/// run counts as one packet in the counters; a connection-table entry it creates is removed.
pub fn flow(
    ebpf: &mut Ebpf,
    state: &State,
    protocol: Protocol,
    source: SocketAddr,
    vip: SocketAddr,
) -> Result<FlowAnswer> {
    let pin_dir = &state.config.pin_dir;
    let key = FlowKey {
        src: addr_of(source.ip()),
        dst: addr_of(vip.ip()),
        sport: source.port().to_be(),
        dport: vip.port().to_be(),
        proto: protocol.number(),
        _pad: [0; 3],
    };
    let mut table = ConnTable::open(pin_dir)?;
    let known = table.get(&key);
    let input = packet(protocol, source, vip)?;
    let program = dataplane::xdp_program(ebpf, BALANCER_PROGRAM)?;
    let mut out = vec![0u8; input.len() + 128];
    let run = program
        .test_run(TestRunOptions { data_in: Some(&input), data_out: Some(&mut out), ..Default::default() })
        .doing("BPF_PROG_TEST_RUN")?;
    out.truncate(run.data_size_out as usize);
    if known.is_none() {
        table.remove(&key);
    }
    if run.return_value != XDP_TX && run.return_value != XDP_REDIRECT {
        return Ok(FlowAnswer {
            backend: None,
            action: xdp_action(run.return_value).to_owned(),
            why: "not forwarded".into(),
        });
    }
    // The outer header's destination: the backend.
    let outer = |at: std::ops::Range<usize>| out.get(at).ok_or(InspectError::ShortOutput(out.len()));
    let backend: IpAddr = match out.get(12..14) {
        Some([0x08, 0x00]) => <[u8; 4]>::try_from(outer(30..34)?).expect("4 bytes").into(),
        _ => <[u8; 16]>::try_from(outer(38..54)?).expect("16 bytes").into(),
    };
    let why = if known.is_some() {
        "connection table".to_owned()
    } else {
        // Which generation placed it: the current table for this VIP's pool, or not.
        let current = state
            .config
            .vips
            .iter()
            .find(|v| v.addr == vip.ip() && (v.port == vip.port() || v.port == 0) && v.protocol == protocol)
            .map(|v| {
                let (weighted, _) = state.effective_backends(state.config.pool_of(v));
                let table = maglev::table(&weighted, RING_SIZE);
                let entry = table[(flow_hash(&key) % RING_SIZE) as usize];
                weighted.get(entry as usize).map(|w| ip_of(&w.addr))
            });
        if current.flatten() == Some(backend) {
            "current Maglev generation".to_owned()
        } else {
            "previous Maglev generation (within flow_grace_seconds of a pool change)".to_owned()
        }
    };
    Ok(FlowAnswer { backend: Some(backend), action: xdp_action(run.return_value).to_owned(), why })
}

/// What a change would do to one VIP (`POST /plan`'s answer is one per VIP).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VipPlan {
    pub vip: String,
    /// Share of Maglev buckets whose backend changes (new connections that would land elsewhere).
    pub buckets_moved_percent: f64,
    /// Flows of this VIP in the connection table now.
    pub live_flows: usize,
    /// Of those, flows whose backend leaves the pool: they move (and are reset by the new backend).
    pub live_flows_moved: usize,
}

/// The plan for `commands` (or, with `new_config`, for a reload to it), computed on a copy.
pub fn plan(state: &State, commands: &[Command], new_config: Option<&Config>) -> Result<Vec<VipPlan>> {
    let mut next = state.clone();
    let commands = match new_config {
        Some(config) => state.diff(config),
        None => commands.to_vec(),
    };
    for command in &commands {
        next.apply(command)?;
    }
    let flows = ConnTable::open(&state.config.pin_dir)?.flows();
    let ids = crate::dataplane::tables::Tables::open(&state.config.pin_dir)?.backend_ids()?;
    let mut plans = Vec::new();
    for vip in state.config.vips.iter().filter(|v| v.mode == crate::config::VipMode::L4) {
        let before = state.effective_backends(state.config.pool_of(vip)).0;
        let Some(after_vip) = next.config.vips.iter().find(|v| v.name == vip.name) else { continue };
        let after = next.effective_backends(next.config.pool_of(after_vip)).0;
        let owner = |backends: &[maglev::Weighted], e: u32| backends.get(e as usize).map(|w| w.addr);
        let (tb, ta) = (maglev::table(&before, RING_SIZE), maglev::table(&after, RING_SIZE));
        let moved = tb.iter().zip(&ta).filter(|&(&b, &a)| owner(&before, b) != owner(&after, a)).count();
        let remaining: BTreeSet<[u8; 16]> =
            next.config.pool_of(after_vip).backends.iter().map(|b| addr_of(b.addr)).collect();
        let addr = addr_of(vip.addr);
        let of_vip: Vec<&(FlowKey, u32)> = flows
            .iter()
            .filter(|(k, _)| {
                k.dst == addr
                    && (vip.port == 0 || u16::from_be(k.dport) == vip.port)
                    && k.proto == vip.protocol.number()
            })
            .collect();
        let leaving = of_vip
            .iter()
            .filter(|(_, backend)| !ids.iter().any(|(a, id)| id == backend && remaining.contains(a)))
            .count();
        plans.push(VipPlan {
            vip: format!("{} {}:{}", vip.name, vip.addr, vip.port),
            buckets_moved_percent: 100.0 * moved as f64 / RING_SIZE as f64,
            live_flows: of_vip.len(),
            live_flows_moved: leaving,
        });
    }
    Ok(plans)
}
