//! The real XDP object loaded into the kernel (not attached), provisioned through lbd's own
//! map writer, and run on packets with BPF_PROG_TEST_RUN.
use std::{net::IpAddr, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions},
};
use ipnet::IpNet;
use lb_common::{flow::FlowKey, hash::flow_hash, ring::RING_SIZE, vip::VipKey};
use lb_userspace::{
    dataplane::{
        self, BALANCER_PROGRAM, Role,
        conn_table::ConnTable,
        counters::Counters,
        tables::{Desired, DesiredVip, Tables, addr_of},
    },
    maglev::{self, Weighted},
};

use crate::packets::NEXT_HOP_MAC;

/// Outer IPv4 source prefix (top 16 bits) used by fixtures.
pub const ENCAP_SRC4: [u8; 4] = [198, 18, 0, 0];
/// Outer IPv6 source prefix (top 96 bits) used by fixtures.
pub const ENCAP_SRC6: [u8; 16] = [0xfd, 0, 0, 0x5e, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// A loaded balancer with its maps pinned in a private bpffs directory.
pub struct Harness {
    pub ebpf: Ebpf,
    pub tables: Tables,
    pub pin_dir: PathBuf,
    pub desired: Desired,
}

/// A VIP for [`Desired`]: address, port (0: any), protocol number, flags, backends with weights.
pub fn vip(addr: &str, port: u16, proto: u8, flags: u32, backends: &[(&str, u32)]) -> DesiredVip {
    DesiredVip {
        key: VipKey { addr: addr_of(addr.parse().unwrap()), port: port.to_be(), proto, _pad: 0 },
        flags,
        backends: backends
            .iter()
            .map(|(a, w)| Weighted { addr: addr_of(a.parse().unwrap()), weight: *w })
            .collect(),
    }
}

/// Data-plane settings shared by fixtures and benchmarks.
pub fn desired(vips: Vec<DesiredVip>, deny: &[&str]) -> Desired {
    Desired {
        vips,
        deny: deny.iter().map(|d| d.parse::<IpNet>().unwrap()).collect(),
        next_hop_mac: Some(NEXT_HOP_MAC),
        encap_source_v4: ENCAP_SRC4,
        encap_source_v6: ENCAP_SRC6,
        max_encap_ip_len: 1500,
        flow_grace: Duration::from_secs(3600),
        redirect_ifindex: 0,
        syn_limit: Default::default(),
    }
}

impl Harness {
    /// Loads the object with rings for `max_vips` and applies `desired`.
    pub fn new(name: &str, max_vips: u32, desired: Desired) -> Result<Harness> {
        crate::require_root();
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/sluice-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&pin_dir);
        let loaded = dataplane::load(&pin_dir, Role::Balancer { max_vips }).and_then(|ebpf| {
            let mut tables = Tables::open(&pin_dir)?;
            tables.apply(&desired)?;
            Ok((ebpf, tables))
        });
        match loaded {
            Ok((ebpf, tables)) => Ok(Harness { ebpf, tables, pin_dir, desired }),
            Err(e) => {
                // No Harness, so no Drop: the pins a failed load left go here.
                let _ = std::fs::remove_dir_all(&pin_dir);
                Err(e.into())
            }
        }
    }

    /// Applies a new desired state (a pool change).
    pub fn apply(&mut self, desired: Desired) -> Result<Vec<String>> {
        let changes = self.tables.apply(&desired)?;
        self.desired = desired;
        Ok(changes)
    }

    /// Runs the balancer once on `input`: (XDP action, output bytes).
    pub fn run(&mut self, input: &[u8]) -> Result<(u32, Vec<u8>)> {
        let program = dataplane::xdp_program(&mut self.ebpf, BALANCER_PROGRAM)?;
        let mut out = vec![0u8; input.len() + 256];
        let result = program
            .test_run(TestRunOptions { data_in: Some(input), data_out: Some(&mut out), ..Default::default() })
            .context("BPF_PROG_TEST_RUN")?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }

    /// Runs the balancer once on `input` and returns the kernel's measured run time in ns
    /// (one packet per call: the kernel does not restore a rewritten packet between repeats).
    pub fn time_once(&mut self, input: &[u8]) -> Result<u64> {
        let program = dataplane::xdp_program(&mut self.ebpf, BALANCER_PROGRAM)?;
        let result = program.test_run(TestRunOptions { data_in: Some(input), ..Default::default() })?;
        Ok(result.duration.as_nanos() as u64)
    }

    /// The backend the model (Maglev over the VIP's pool, flow hash) predicts for a new flow.
    pub fn model_backend(&self, vip_index: usize, flow: &FlowKey) -> IpAddr {
        let backends = &self.desired.vips[vip_index].backends;
        let table = maglev::table(backends, RING_SIZE);
        let entry = table[(flow_hash(flow) % RING_SIZE) as usize];
        lb_userspace::dataplane::tables::ip_of(&backends[entry as usize].addr)
    }

    /// The connection table's entry for a flow (backend id), if any.
    pub fn conn_entry(&self, flow: &FlowKey) -> Result<Option<u32>> {
        Ok(ConnTable::open(&self.pin_dir)?.get(flow))
    }

    /// Forgets a flow, as an eviction would.
    pub fn evict(&self, flow: &FlowKey) -> Result<()> {
        ConnTable::open(&self.pin_dir)?.remove(flow);
        Ok(())
    }

    /// Global counters by name.
    pub fn stats(&self) -> Result<Vec<(&'static str, u64)>> {
        Ok(Counters::open(&self.pin_dir)?
            .verdicts()?
            .into_iter()
            .map(|(s, c)| (s.name(), c.packets))
            .collect())
    }

    /// Per-backend (address, packets, new flows, lru hits).
    pub fn backend_stats(&self) -> Result<Vec<(IpAddr, u64, u64, u64)>> {
        Ok(Counters::open(&self.pin_dir)?
            .backends()?
            .into_iter()
            .map(|(addr, c)| (addr, c.packets, c.new_flows, c.lru_hits))
            .collect())
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// The connection-table key of a packet from `src:sport` to `dst:dport`.
pub fn flow(src: &str, sport: u16, dst: &str, dport: u16, proto: u8) -> FlowKey {
    FlowKey {
        src: addr_of(src.parse().unwrap()),
        dst: addr_of(dst.parse().unwrap()),
        sport: sport.to_be(),
        dport: dport.to_be(),
        proto,
        _pad: [0; 3],
    }
}
