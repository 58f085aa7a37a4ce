//! `cargo xtask bench l4`: ns per packet of each XDP path through BPF_PROG_TEST_RUN, one packet
//! per call, median over many calls, next to an empty XDP program measured in the same run.
use std::{net::Ipv4Addr, time::Instant};

use anyhow::{Context as _, Result, bail};
use aya::{
    maps::{HashMap as BpfHashMap, Map, MapData},
    programs::{TestRun, TestRunOptions},
};
use lb_common::flow::{CONN_TABLE_MAP, FlowKey, FlowValue};
use lb_userspace::dataplane::{self, PASS_PROGRAM, Role};
use object::{Object, ObjectSection, ObjectSymbol};
use sluice_tests::{
    harness::{Harness, desired, flow, vip},
    packets::{Tcp, tcp},
    servers::TempDir,
};

/// Calls per measured path.
const CALLS: usize = 100_000;
const VIP: &str = "198.19.0.1";

/// Builds of the object that differ in the connection table's map type and flags.
#[derive(Clone, Copy)]
enum ConnTable {
    /// BPF_MAP_TYPE_LRU_HASH with BPF_F_NO_COMMON_LRU (what Sluice ships).
    SharedPerCpuLru,
    /// BPF_MAP_TYPE_LRU_HASH with one common LRU list.
    SharedCommonLru,
    /// BPF_MAP_TYPE_LRU_PERCPU_HASH: a value per CPU.
    PerCpu,
}

impl ConnTable {
    fn name(self) -> &'static str {
        match self {
            ConnTable::SharedPerCpuLru => "lru_hash + NO_COMMON_LRU (shipped)",
            ConnTable::SharedCommonLru => "lru_hash, common LRU",
            ConnTable::PerCpu => "lru_percpu_hash",
        }
    }
}

/// An 8-byte aligned copy of the object with CONN_TABLE's definition patched.
fn object_variant(variant: ConnTable) -> Result<Vec<u64>> {
    let original = dataplane::ebpf_object();
    let mut words = vec![0u64; original.len().div_ceil(8)];
    // SAFETY: viewing a u64 buffer as bytes.
    let bytes = unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), words.len() * 8) };
    bytes[..original.len()].copy_from_slice(original);
    let file = object::File::parse(original)?;
    let symbol = file.symbols().find(|s| s.name() == Ok(CONN_TABLE_MAP)).context("CONN_TABLE symbol")?;
    let section = file.section_by_index(symbol.section_index().context("no section")?)?;
    let (offset, _) = section.file_range().context("maps section has no file range")?;
    // struct bpf_map_def { type, key_size, value_size, max_entries, map_flags, ... }
    let at = (offset + symbol.address()) as usize;
    let (map_type, flags): (u32, u32) = match variant {
        ConnTable::SharedPerCpuLru => (9, 2),
        ConnTable::SharedCommonLru => (9, 0),
        ConnTable::PerCpu => (10, 0),
    };
    if u32::from_le_bytes(bytes[at..at + 4].try_into()?) != 9 {
        bail!("CONN_TABLE is not where expected in the object");
    }
    bytes[at..at + 4].copy_from_slice(&map_type.to_le_bytes());
    bytes[at + 16..at + 20].copy_from_slice(&flags.to_le_bytes());
    words.truncate(original.len().div_ceil(8));
    Ok(words)
}

fn as_bytes(words: &[u64], len: usize) -> &[u8] {
    // SAFETY: viewing a u64 buffer as bytes.
    let bytes = unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), words.len() * 8) };
    &bytes[..len]
}

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

/// The measured paths: name -> median ns.
fn paths(h: &mut Harness, label: &str) -> Result<Vec<(String, f64)>> {
    let mut out = Vec::new();
    let non_vip = vec![tcp("198.18.0.2".parse()?, 40000, "198.18.1.2".parse()?, 22, Tcp::Ack, b"")];
    out.push(("non-VIP pass".to_owned(), measure(h, &non_vip, CALLS)?));
    // Every SYN a new 5-tuple: Maglev lookup, LRU insert, encapsulation.
    out.push(("SYN to VIP (new flow)".to_owned(), measure(h, &packets("syn", CALLS, 2_000_000), CALLS)?));
    // One established flow over and over: LRU hit.
    let hit = packets("ack", 1, 3_000_000);
    h.run(&hit[0])?;
    out.push(("established (LRU hit)".to_owned(), measure(h, &hit, CALLS)?));
    // Every ACK a flow never seen: LRU miss, Maglev, insert.
    out.push(("LRU miss (non-SYN)".to_owned(), measure(h, &packets("ack", CALLS, 4_000_000), CALLS)?));
    let denied = vec![tcp("203.0.113.7".parse()?, 40000, VIP.parse()?, 80, Tcp::Syn, b"")];
    out.push(("deny-listed drop".to_owned(), measure(h, &denied, CALLS)?));
    eprintln!("  measured {label}");
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

fn small_state() -> lb_userspace::tables::Desired {
    let web: Vec<(String, u32)> = (0..16).map(|i| (format!("198.18.10.{}", i + 2), 100)).collect();
    let web: Vec<(&str, u32)> = web.iter().map(|(a, w)| (a.as_str(), *w)).collect();
    desired(vec![vip(VIP, 80, 6, 0, &web)], &["203.0.113.0/24"])
}

/// 1024 VIPs with 16 backends each (16384 backends); the measured VIP is the first.
fn large_state() -> lb_userspace::tables::Desired {
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

/// Fills the connection table with `n` flows, spread over the CPUs' LRU lists.
fn fill_conn_table(h: &Harness, n: usize) -> Result<usize> {
    let data = MapData::from_pin(h.pin_dir.join(CONN_TABLE_MAP))?;
    let mut table: BpfHashMap<MapData, FlowKey, FlowValue> = BpfHashMap::try_from(Map::LruHashMap(data))?;
    let cpus = std::thread::available_parallelism()?.get();
    for cpu in 0..cpus {
        // SAFETY: a zeroed cpu_set_t with one CPU set, applied to this thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
        }
        for i in (cpu..n).step_by(cpus) {
            let (src, port) = client(10_000_000 + i);
            table.insert(
                &flow(&src, port, VIP, 80, 6),
                &FlowValue { backend: (i % 16) as u32, hash: i as u32 },
                0,
            )?;
        }
    }
    Ok(table.keys().count())
}

fn main() -> Result<()> {
    let what = std::env::args().nth(1).unwrap_or_default();
    if std::env::var_os("RUST_LOG").is_none() {
        // SAFETY: the first thing main does, before any other thread exists. The lbd processes
        // the benches start inherit it: their info lines would break up the tables.
        unsafe { std::env::set_var("RUST_LOG", "warn") };
    }
    let seconds = std::env::var("SLUICE_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let rounds = std::env::var("SLUICE_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    if what == "l7" {
        return sluice_tests::bench_l7::run_bench(seconds, rounds);
    }
    if what == "l4-traffic" {
        return sluice_tests::bench_traffic::run_bench(seconds, rounds);
    }
    if what != "l4" {
        bail!("usage: sluice-bench l4|l4-traffic|l7");
    }
    sluice_tests::require_root();
    let started = Instant::now();
    println!(
        "cargo xtask bench l4: median ns per packet, {CALLS} BPF_PROG_TEST_RUN calls per path, one packet per call"
    );
    let floor_before = floor()?;

    let mut small = Harness::new("bench-small", 4, small_state())?;
    let base = paths(&mut small, "1 VIP, 16 backends")?;
    // Paths that leave the packet as it is can also run warm, many times in one call.
    let warm = warm_paths(&mut small)?;
    drop(small);
    if std::env::var_os("SLUICE_BENCH_QUICK").is_some() {
        for (name, ns) in &base {
            println!("{name:<26} {ns:>8.0} net {:>8.0}", ns - floor_before);
        }
        return Ok(());
    }

    let mut large = Harness::new("bench-large", 1024, large_state())?;
    let flows = fill_conn_table(&large, 1_000_000)?;
    let scaled = paths(&mut large, "1024 VIPs, 16384 backends, 1M flows")?;
    drop(large);

    let mut variants = Vec::new();
    for variant in [ConnTable::SharedCommonLru, ConnTable::PerCpu] {
        let object = object_variant(variant)?;
        let bytes = as_bytes(&object, dataplane::ebpf_object().len());
        let mut h = Harness::with_object(bytes, "bench-variant", 4, small_state())?;
        variants.push((variant, paths(&mut h, variant.name())?));
    }
    let floor_after = floor()?;
    let floor = (floor_before + floor_after) / 2.0;

    println!(
        "\nempty XDP program (floor): {floor_before:.0} ns before, {floor_after:.0} ns after; net = path - {floor:.0}"
    );
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
    println!("\nconnection table variants (net ns):");
    print!("{:<26}", "path");
    for v in [ConnTable::SharedPerCpuLru, ConnTable::SharedCommonLru, ConnTable::PerCpu] {
        print!(
            " {:>22}",
            v.name().split(' ').next().unwrap_or_default().to_owned()
                + if matches!(v, ConnTable::SharedPerCpuLru) {
                    "+nocommon"
                } else if matches!(v, ConnTable::SharedCommonLru) {
                    "+common"
                } else {
                    ""
                }
        );
    }
    println!();
    for (i, (name, ns)) in base.iter().enumerate() {
        print!("{name:<26} {:>22.0}", ns - floor);
        for (_, results) in &variants {
            print!(" {:>22.0}", results[i].1 - floor);
        }
        println!();
    }
    println!("\nwarm, repeat={CALLS} in one call (paths that do not rewrite the packet):");
    for (name, ns) in &warm {
        println!("{name:<26} {ns:>8.0} ns/packet");
    }
    sluice_tests::bench_traffic::run_bench(seconds, rounds)?;
    println!("\ntook {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
