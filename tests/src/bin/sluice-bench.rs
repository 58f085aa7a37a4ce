//! `cargo xtask bench l4`: ns per packet of each XDP path through BPF_PROG_TEST_RUN, one packet
//! per call, median over many calls, next to an empty XDP program measured in the same run.
use std::{net::Ipv4Addr, time::Instant};

use anyhow::{Context as _, Result, bail};
use aya::programs::{TestRun, TestRunOptions};
use lb_userspace::dataplane::{self, PASS_PROGRAM, Role, conn_table::ConnTable};
use sluice_tests::{
    harness::{Harness, desired, flow, vip},
    packets::{Tcp, tcp},
    servers::TempDir,
};

/// Calls per measured path.
const CALLS: usize = 100_000;
const VIP: &str = "198.19.0.1";

fn median(mut samples: Vec<u64>) -> f64 {
    samples.sort_unstable();
    samples[samples.len() / 2] as f64
}

/// The client address and port of flow `i` (distinct for every i < 2^32).
fn client(i: usize) -> (String, u16) {
    let host = (i / 50_000) as u32;
    (
        Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 128, 0)) + host).to_string(),
        10_000 + (i % 50_000) as u16,
    )
}

fn packets(kind: &str, n: usize, offset: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let (src, port) = client(offset + i);
            let src = src.parse().unwrap();
            match kind {
                "syn" => tcp(src, port, VIP.parse().unwrap(), 80, Tcp::Syn, b""),
                "ack" => tcp(src, port, VIP.parse().unwrap(), 80, Tcp::Ack, b""),
                _ => unreachable!(),
            }
        })
        .collect()
}

/// Median ns of `calls` runs cycling through `inputs`.
fn measure(h: &mut Harness, inputs: &[Vec<u8>], calls: usize) -> Result<f64> {
    let mut samples = Vec::with_capacity(calls);
    for i in 0..calls {
        samples.push(h.time_once(&inputs[i % inputs.len()])?);
    }
    Ok(median(samples))
}

/// Rounds of `bench l4`'s per-path measurements.
const L4_ROUNDS: usize = 3;
/// Floor rounds further apart than this (max / min) mean the machine was busy during the run.
const BUSY_SPREAD: f64 = 1.10;

/// Per path, the lowest of the rounds' medians.
fn best(rounds: &[Vec<(String, f64)>]) -> Vec<(String, f64)> {
    rounds[0]
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (name.clone(), rounds.iter().map(|r| r[i].1).fold(f64::INFINITY, f64::min)))
        .collect()
}

/// The measured paths: name -> median ns.
fn paths(h: &mut Harness, label: &str, round: usize) -> Result<Vec<(String, f64)>> {
    // Flows of this round only: a later round's SYNs and misses are new flows too.
    let flows = 10_000_000 * (round + 1);
    let mut out = Vec::new();
    let non_vip = vec![tcp("198.18.0.2".parse()?, 40000, "198.18.1.2".parse()?, 22, Tcp::Ack, b"")];
    out.push(("non-VIP pass".to_owned(), measure(h, &non_vip, CALLS)?));
    // Every SYN a new 5-tuple: Maglev lookup, LRU insert, encapsulation.
    out.push((
        "SYN to VIP (new flow)".to_owned(),
        measure(h, &packets("syn", CALLS, flows + 2_000_000), CALLS)?,
    ));
    // One SYN over and over (a retransmitting client): the same work as a new flow, but its
    // connection-table set stays in the cache, which shows what the table's memory costs.
    let again = packets("syn", 1, flows + 2_500_000);
    out.push(("SYN, same 5-tuple again".to_owned(), measure(h, &again, CALLS)?));
    // One established flow over and over: LRU hit.
    let hit = packets("ack", 1, flows + 3_000_000);
    h.run(&hit[0])?;
    out.push(("established (LRU hit)".to_owned(), measure(h, &hit, CALLS)?));
    // Every ACK a flow never seen: LRU miss, Maglev, insert.
    out.push((
        "LRU miss (non-SYN)".to_owned(),
        measure(h, &packets("ack", CALLS, flows + 4_000_000), CALLS)?,
    ));
    let denied = vec![tcp("203.0.113.7".parse()?, 40000, VIP.parse()?, 80, Tcp::Syn, b"")];
    out.push(("deny-listed drop".to_owned(), measure(h, &denied, CALLS)?));
    eprintln!("  measured {label}, round {}", round + 1);
    Ok(out)
}

/// Mean ns per packet of the non-rewriting paths and the empty program, `repeat` = CALLS in
/// one BPF_PROG_TEST_RUN (warm caches, no per-call timer overhead).
fn warm_paths(h: &mut Harness) -> Result<Vec<(&'static str, f64)>> {
    let non_vip = tcp("198.18.0.2".parse()?, 40000, "198.18.1.2".parse()?, 22, Tcp::Ack, b"");
    let denied = tcp("203.0.113.7".parse()?, 40000, VIP.parse()?, 80, Tcp::Syn, b"");
    let mut out = Vec::new();
    for (name, input) in [("non-VIP pass", &non_vip), ("deny-listed drop", &denied)] {
        let program = dataplane::xdp_program(&mut h.ebpf, dataplane::BALANCER_PROGRAM)?;
        let run = program.test_run(TestRunOptions {
            data_in: Some(input),
            repeat: CALLS as u32,
            ..Default::default()
        })?;
        out.push((name, run.duration.as_nanos() as f64));
    }
    let pin_dir = std::path::PathBuf::from(format!("/sys/fs/bpf/sluice-bench-warm-{}", std::process::id()));
    let mut ebpf = dataplane::load(&pin_dir, Role::Pass)?;
    let program = dataplane::xdp_program(&mut ebpf, PASS_PROGRAM)?;
    let run = program.test_run(TestRunOptions {
        data_in: Some(&non_vip),
        repeat: CALLS as u32,
        ..Default::default()
    })?;
    out.push(("empty XDP program", run.duration.as_nanos() as f64));
    drop(ebpf);
    let _ = std::fs::remove_dir_all(&pin_dir);
    Ok(out)
}

/// Median ns of the empty program (XDP_PASS, nothing else) on a 74-byte frame.
fn floor() -> Result<f64> {
    let dir = TempDir::new("bench-floor")?;
    let pin_dir = std::path::PathBuf::from(format!("/sys/fs/bpf/sluice-bench-floor-{}", std::process::id()));
    let mut ebpf = dataplane::load(&pin_dir, Role::Pass)?;
    let program = dataplane::xdp_program(&mut ebpf, PASS_PROGRAM)?;
    let input = tcp("198.18.0.2".parse()?, 40000, VIP.parse()?, 80, Tcp::Ack, b"");
    let mut samples = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        samples.push(
            program
                .test_run(TestRunOptions { data_in: Some(&input), ..Default::default() })?
                .duration
                .as_nanos() as u64,
        );
    }
    drop(dir);
    let _ = std::fs::remove_dir_all(&pin_dir);
    Ok(median(samples))
}

fn small_state() -> lb_userspace::dataplane::tables::Desired {
    let web: Vec<(String, u32)> = (0..16).map(|i| (format!("198.18.10.{}", i + 2), 100)).collect();
    let web: Vec<(&str, u32)> = web.iter().map(|(a, w)| (a.as_str(), *w)).collect();
    desired(vec![vip(VIP, 80, 6, 0, &web)], &["203.0.113.0/24"])
}

/// 1024 VIPs with 16 backends each (16384 backends); the measured VIP is the first.
fn large_state() -> lb_userspace::dataplane::tables::Desired {
    let mut vips = Vec::new();
    for v in 0..1024u32 {
        let addr = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 1)) + v).to_string();
        let backends: Vec<String> = (0..16u32)
            .map(|b| Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 64, 0)) + v * 16 + b).to_string())
            .collect();
        let backends: Vec<(&str, u32)> = backends.iter().map(|a| (a.as_str(), 100)).collect();
        vips.push(vip(&addr, 80, 6, 0, &backends));
    }
    desired(vips, &["203.0.113.0/24"])
}

/// Fills the connection table with `n` flows of the measured VIP.
fn fill_conn_table(h: &Harness, n: usize) -> Result<usize> {
    let mut table = ConnTable::open(&h.pin_dir)?;
    for i in 0..n {
        let (src, port) = client(10_000_000 + i);
        table.insert(&flow(&src, port, VIP, 80, 6), (i % 16) as u32);
    }
    Ok(table.flows().len())
}

fn main() -> Result<()> {
    let what = std::env::args().nth(1).unwrap_or_default();
    if std::env::var_os("RUST_LOG").is_none() {
        // SAFETY: the first thing main does, before any other thread exists. The lbd processes
        // the benches start inherit it: their info lines would break up the tables.
        unsafe { std::env::set_var("RUST_LOG", "warn") };
    }
    let seconds = std::env::var("SLUICE_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    // l7: three rounds, so that the verdict's medians outvote one disturbed run.
    let default_rounds = if what == "l7" { 3 } else { 2 };
    let rounds =
        std::env::var("SLUICE_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(default_rounds);
    if what == "l7" {
        return sluice_tests::bench_l7::run_bench(seconds, rounds);
    }
    if what == "l7-instructions" {
        return sluice_tests::bench_l7::run_instructions();
    }
    // The byte forwarder `bench l7` starts beside the proxies: `forward LISTEN BACKEND...`.
    if what == "forward" {
        let addresses = std::env::args().skip(2).map(|a| a.parse()).collect::<Result<Vec<_>, _>>()?;
        let (listen, backends) =
            addresses.split_first().context("usage: sluice-bench forward LISTEN BACKEND...")?;
        return sluice_tests::forward_floor::run(*listen, backends);
    }
    if what == "l4-traffic" {
        return sluice_tests::bench_traffic::run_bench(seconds, rounds);
    }
    if what != "l4" {
        bail!("usage: sluice-bench l4|l4-traffic|l7|l7-instructions");
    }
    sluice_tests::require_root();
    let started = Instant::now();
    println!(
        "cargo xtask bench l4: median ns per packet, {CALLS} BPF_PROG_TEST_RUN calls per path, one packet per call, best of {L4_ROUNDS} rounds"
    );
    // One round, no peers: for comparing builds. "scale" measures the large state instead.
    if let Some(quick) = std::env::var_os("SLUICE_BENCH_QUICK") {
        let floor = floor()?;
        let mut h = if quick == "scale" {
            let large = Harness::new("bench-large", 1024, large_state())?;
            fill_conn_table(&large, 1_000_000)?;
            large
        } else {
            Harness::new("bench-small", 4, small_state())?
        };
        for (name, ns) in paths(&mut h, "quick", 0)? {
            println!("{name:<26} {ns:>8.0} net {:>8.0}", ns - floor);
        }
        return Ok(());
    }
    let mut large = Harness::new("bench-large", 1024, large_state())?;
    let flows = fill_conn_table(&large, 1_000_000)?;
    // Rounds alternate between an empty table (loaded afresh) and the large state, so that a
    // burst of noise on this shared machine hits one round, not one side; each path keeps its
    // best round. The floor is measured each round too and keeps its best, like the paths.
    let (mut base, mut scaled, mut floors) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..L4_ROUNDS {
        floors.push(floor()?);
        let mut small = Harness::new("bench-small", 4, small_state())?;
        base.push(paths(&mut small, "1 VIP, 16 backends", round)?);
        drop(small);
        scaled.push(paths(&mut large, "1024 VIPs, 16384 backends, 1M flows", round)?);
    }
    let (base, scaled) = (best(&base), best(&scaled));
    drop(large);
    // Paths that leave the packet as it is can also run warm, many times in one call.
    let mut small = Harness::new("bench-small", 4, small_state())?;
    let warm = warm_paths(&mut small)?;
    drop(small);

    let floor = floors.iter().copied().fold(f64::INFINITY, f64::min);
    let floors_max = floors.iter().copied().fold(0.0, f64::max);
    let floors: Vec<String> = floors.iter().map(|f| format!("{f:.0}")).collect();

    println!("\nempty XDP program (floor): {} ns in the rounds; net = path - {floor:.0}", floors.join(", "));
    let spread = floors_max / floor;
    if spread > BUSY_SPREAD {
        println!(
            "warning: the floor moved by {:.0}% between rounds: the machine was busy during this run, \
             so absolute figures are high (ratios hold better); run again for them",
            100.0 * (spread - 1.0)
        );
    }
    println!("\n{:<26} {:>8} {:>8} | {:>10} {:>8} {:>8}", "path", "ns", "net", "at scale", "net", "ratio");
    for ((name, ns), (_, big)) in base.iter().zip(&scaled) {
        println!(
            "{name:<26} {ns:>8.0} {:>8.0} | {big:>10.0} {:>8.0} {:>8.2}",
            ns - floor,
            big - floor,
            big / ns
        );
    }
    println!("(at scale: 1024 VIPs, 16384 backends, {flows} flows in the connection table)");
    println!("\nwarm, repeat={CALLS} in one call (paths that do not rewrite the packet):");
    for (name, ns) in &warm {
        println!("{name:<26} {ns:>8.0} ns/packet");
    }
    sluice_tests::bench_traffic::run_bench(seconds, rounds)?;
    println!("\ntook {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
