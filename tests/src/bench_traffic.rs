//! The real-traffic half of `cargo xtask bench l4`: packets/s and connections/s through the lb
//! namespace, Sluice's XDP balancer (native mode, DSR) against the kernel's own nftables
//! `dnat to jhash` balancer (NAT, replies back through the lb) on the same topology.
//!
//! ```text
//!  client (trafgen, wrk) ── router ── lb (Sluice XDP | nftables dnat)
//!                              ├── be1 (nginx; Sluice decap)
//!                              └── be2
//! ```
//! Packets: trafgen sends 64-byte UDP datagrams to the VIP from 1024 source ports in turn (every
//! flow established) and from random source ports (every packet a new flow); counted where the
//! router hands them to the backends. Connections: wrk with `Connection: close`, one TCP
//! connection per request, to nginx on the backends.
//!
//! The lb's receive path runs in a threaded NAPI poller pinned to CPU 1 (XDP in Sluice's run;
//! GRO on, so that the veth has a poller, in nftables' run) and everything else on CPU 0, so
//! CPU 1's busy time over what was delivered is what the lb costs per packet or connection.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    netns::{Host, Topology, mac_text, read_mac, run},
    servers::{Decap, Lbd, Nginx, PeerPass, TempDir},
};

const VIP: &str = "198.19.0.1";
const UDP_PORT: u16 = 9;

/// The CPU that runs only the lb's receive path.
const LB_CPU: u32 = 1;

/// What each balancer did in one run.
struct Figures {
    /// UDP packets/s delivered to the backends over established flows, and the lb CPU's ns each.
    pps_established: f64,
    ns_established: f64,
    /// The same with every packet a new flow.
    pps_new: f64,
    ns_new: f64,
    /// Share of the sent packets that reached a backend (established flows).
    delivered: f64,
    /// TCP connections/s (one request each), and the lb CPU's µs per connection.
    cps: f64,
    us_per_connection: f64,
    /// Share of connections that failed.
    cps_errors: f64,
}

/// A packet counter of interface `dev` in `host`'s namespace ("tx" or "rx").
fn link_packets(host: &Host, dev: &str, direction: &str) -> Result<u64> {
    let out = host.run("ip", &["-s", "-j", "link", "show", dev])?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    json[0]["stats64"][direction]["packets"]
        .as_u64()
        .with_context(|| format!("no {direction} packets on {dev}"))
}

/// Packets the router has handed to the backends so far.
fn delivered_to_backends(topology: &Topology) -> Result<u64> {
    (0..topology.backends.len()).map(|k| link_packets(&topology.router, &format!("r{}", 10 + k), "tx")).sum()
}

/// Busy seconds of CPU `cpu` so far (everything but idle, iowait and steal).
fn cpu_busy_seconds(cpu: u32) -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let prefix = format!("cpu{cpu} ");
    let Some(line) = stat.lines().find(|l| l.starts_with(&prefix)) else { return 0.0 };
    let ticks: f64 = line
        .split_whitespace()
        .skip(1)
        .enumerate()
        .filter(|(i, _)| ![3, 4, 7].contains(i))
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// The kernel's threaded NAPI pollers: (pid, name).
fn napi_threads() -> Result<Vec<(u32, String)>> {
    let mut threads = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.starts_with("napi/") {
            threads.push((pid, comm.trim().to_owned()));
        }
    }
    Ok(threads)
}

/// Moves `dev`'s NAPI polling (the veth needs a poller: XDP or GRO) into a kernel thread pinned
/// to `cpu`.
fn pin_napi(host: &Host, dev: &str, cpu: u32) -> Result<()> {
    let before = napi_threads()?;
    // `ip netns exec` mounts the namespace's own /sys, where `dev` is.
    let set = format!("echo 1 > /sys/class/net/{dev}/threaded");
    run("ip", &["netns", "exec", &host.ns, "sh", "-c", &set])?;
    let new: Vec<u32> =
        napi_threads()?.into_iter().filter(|t| !before.contains(t)).map(|(pid, _)| pid).collect();
    if new.is_empty() {
        bail!("{}: no NAPI thread appeared for {dev}", host.ns);
    }
    for pid in new {
        run("taskset", &["-pc", &cpu.to_string(), &pid.to_string()])?;
    }
    Ok(())
}

/// trafgen's packet description: Ethernet to the router, IPv4 to the VIP, UDP with the given
/// source-port expression, 18 bytes of payload (a 64-byte frame).
fn trafgen_config(topology: &Topology, router_mac: [u8; 6], sport: &str) -> String {
    format!(
        "{{ eth(da={da}, sa={sa}), ipv4(sa={src}, da={VIP}, ttl=64), udp(sp={sport}, dp={UDP_PORT}), fill(0x5a, 18) }}\n",
        da = mac_text(router_mac),
        sa = mac_text(topology.client.mac),
        src = topology.client.addr4,
    )
}

/// Sends UDP from the client for `seconds` with one trafgen process (it binds itself to CPU 0);
/// returns (delivered/s, lb CPU ns per delivered packet, delivered share).
fn blast(
    topology: &Topology,
    dir: &Path,
    router_mac: [u8; 6],
    sport: &str,
    seconds: u64,
) -> Result<(f64, f64, f64)> {
    let conf = dir.join("trafgen.cfg");
    std::fs::write(&conf, trafgen_config(topology, router_mac, sport))?;
    let sent_before = link_packets(&topology.client, "eth0", "tx")?;
    let delivered_before = delivered_to_backends(topology)?;
    let busy_before = cpu_busy_seconds(LB_CPU);
    let started = Instant::now();
    let status = topology
        .client
        .command("timeout")
        .args(["-s", "INT", &seconds.to_string(), "trafgen", "--dev", "eth0", "--conf"])
        .arg(&conf)
        .args(["--cpus", "1", "--no-cpu-stats"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running trafgen (scripts/setup installs netsniff-ng)")?;
    // timeout exits 124 when it stopped trafgen, which is the normal end.
    if !status.success() && status.code() != Some(124) {
        bail!("trafgen failed: {status}");
    }
    let elapsed = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(300));
    let busy = cpu_busy_seconds(LB_CPU) - busy_before;
    let sent = link_packets(&topology.client, "eth0", "tx")? - sent_before;
    let delivered = (delivered_to_backends(topology)? - delivered_before).max(1) as f64;
    Ok((delivered / elapsed, busy * 1e9 / delivered, delivered / sent.max(1) as f64))
}

/// wrk from the client (CPU 0) with one connection per request; returns (connections/s, lb CPU
/// µs per connection, error share).
fn connect_rate(topology: &Topology, seconds: u64) -> Result<(f64, f64, f64)> {
    let busy_before = cpu_busy_seconds(LB_CPU);
    let out = topology.client.run(
        "taskset",
        &[
            "-c",
            "0",
            "wrk",
            "-t1",
            "-c32",
            &format!("-d{seconds}s"),
            "-H",
            "Connection: close",
            &format!("http://{VIP}/"),
        ],
    )?;
    let busy = cpu_busy_seconds(LB_CPU) - busy_before;
    let text = String::from_utf8_lossy(&out.stdout);
    let number = |prefix: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    let rate = number("Requests/sec:").context("wrk printed no rate")?;
    let total = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    let errors: f64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
        .map(|e| e.split(',').filter_map(|p| p.split_whitespace().last()?.parse::<f64>().ok()).sum())
        .unwrap_or(0.0)
        + number("Non-2xx or 3xx responses:").unwrap_or(0.0);
    let error_share = if total > 0.0 { errors / total } else { 1.0 };
    Ok((rate, busy * 1e6 / total.max(1.0), error_share))
}

/// The whole measurement on a topology whose lb balances VIP:80/tcp and VIP:9/udp.
fn measure(topology: &Topology, dir: &Path, seconds: u64) -> Result<Figures> {
    let router_mac = read_mac(&topology.router.ns, "r0")?;
    // Warm the path (ARP, flows) before counting.
    blast(topology, dir, router_mac, "dinc(1024, 2047)", 1)?;
    let (pps_established, ns_established, delivered) =
        blast(topology, dir, router_mac, "dinc(1024, 2047)", seconds)?;
    let (pps_new, ns_new, _) = blast(topology, dir, router_mac, "drnd()", seconds)?;
    let (cps, us_per_connection, cps_errors) = connect_rate(topology, seconds)?;
    Ok(Figures {
        pps_established,
        ns_established,
        pps_new,
        ns_new,
        delivered,
        cps,
        us_per_connection,
        cps_errors,
    })
}

/// A topology with two nginx backends (CPU 0) that accept the VIP on loopback (DSR), and the
/// pass program on the router's lb link (native XDP_TX from the lb needs a program on the
/// peer; nftables' run gets the same) with its poller on CPU 0.
fn topology() -> Result<(Topology, Vec<Nginx>, PeerPass)> {
    let topology = Topology::new(2)?;
    let mut servers = Vec::new();
    for (i, backend) in topology.backends.iter().enumerate() {
        backend.make_dsr_backend(&[VIP])?;
        let nginx = Nginx::start(backend, &format!("backend{}", i + 1))?;
        run("taskset", &["-pc", "0", &nginx.pid().to_string()])?;
        servers.push(nginx);
    }
    let pass = PeerPass::attach(&topology.router, "r1")?;
    pin_napi(&topology.router, "r1", 0)?;
    Ok((topology, servers, pass))
}

fn sluice(seconds: u64) -> Result<Figures> {
    let (topology, _servers, _pass) = topology()?;
    let dir = TempDir::new("bench-traffic-sluice")?;
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{}", topology.tag));
    let _decaps: Vec<Decap> =
        topology.backends.iter().map(|b| Decap::attach(b, "native")).collect::<Result<_>>()?;
    let b = &topology.backends;
    let config = dir.0.join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[dataplane]\ninterface = \"eth0\"\nxdp_mode = \"native\"\npin_dir = \"{pin}\"\nnext_hop_mac = \"{mac}\"\n\
             [[vip]]\nname = \"web\"\naddress = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\npool = \"web\"\n\
             [[vip]]\nname = \"udp\"\naddress = \"{VIP}\"\nport = {UDP_PORT}\nprotocol = \"udp\"\npool = \"web\"\n\
             [[pool]]\nname = \"web\"\nbackends = [{{ address = \"{a}\" }}, {{ address = \"{b}\" }}]\n\
             [admin]\nsocket = \"{dir}/lbd.sock\"\n",
            pin = pin_dir.display(),
            mac = mac_text(topology.router_mac_to_lb),
            a = b[0].addr4,
            b = b[1].addr4,
            dir = dir.0.display(),
        ),
    )?;
    let lbd = Lbd::start(&topology.lb, &config)?;
    // The daemon is idle while traffic flows; it stays off the measured CPU (all its threads).
    run("taskset", &["-apc", "0", &lbd.pid().to_string()])?;
    pin_napi(&topology.lb, "eth0", LB_CPU)?;
    measure(&topology, &dir.0, seconds)
}

fn nftables(seconds: u64) -> Result<Figures> {
    let (topology, _servers, _pass) = topology()?;
    let dir = TempDir::new("bench-traffic-nft")?;
    let lb = &topology.lb;
    lb.run("ethtool", &["-K", "eth0", "gro", "on"])?;
    pin_napi(lb, "eth0", LB_CPU)?;
    for key in
        ["net.ipv4.ip_forward=1", "net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.eth0.send_redirects=0"]
    {
        lb.run("sysctl", &["-qw", key])?;
    }
    let (a, b) = (topology.backends[0].addr4, topology.backends[1].addr4);
    let rules = format!(
        "table ip sluicebench {{\n chain prerouting {{\n  type nat hook prerouting priority dstnat; policy accept;\n  \
         ip daddr {VIP} tcp dport 80 dnat to jhash ip saddr . tcp sport mod 2 map {{ 0 : {a}, 1 : {b} }}\n  \
         ip daddr {VIP} udp dport {UDP_PORT} dnat to jhash ip saddr . udp sport mod 2 map {{ 0 : {a}, 1 : {b} }}\n }}\n}}\n"
    );
    let file = dir.0.join("lb.nft");
    std::fs::write(&file, rules)?;
    lb.run("nft", &["-f", file.to_str().context("path")?])?;
    // NAT needs the replies back through the lb: the router sends what the backends send to it.
    let router = &topology.router;
    for k in 0..topology.backends.len() {
        router.run("ip", &["rule", "add", "iif", &format!("r{}", 10 + k), "table", "100"])?;
    }
    router.run("ip", &["route", "add", "default", "via", &lb.addr4.to_string(), "table", "100"])?;
    measure(&topology, &dir.0, seconds)
}

/// Runs both balancers `rounds` times and prints the table.
pub fn run_bench(seconds: u64, rounds: usize) -> Result<()> {
    crate::require_root();
    for tool in ["trafgen", "nft", "wrk"] {
        if Command::new("sh").args(["-c", &format!("command -v {tool}")]).output()?.stdout.is_empty() {
            bail!("{tool} is missing: run scripts/setup");
        }
    }
    println!(
        "\nreal traffic through the lb namespace, {seconds} s per case: the lb's receive path alone on CPU {LB_CPU}; \
         trafgen, wrk,\nrouter and backends on CPU 0. \"lb ns/pkt\", \"lb us/conn\": CPU {LB_CPU}'s busy time per delivered packet or connection."
    );
    println!(
        "{:<6} {:<18} {:>12} {:>10} {:>12} {:>10} {:>10} {:>9} {:>11} {:>7}",
        "round",
        "lb",
        "pps 1k flows",
        "lb ns/pkt",
        "pps new",
        "lb ns/pkt",
        "delivered",
        "conn/s",
        "lb us/conn",
        "errors"
    );
    type Balancer = fn(u64) -> Result<Figures>;
    for round in 1..=rounds {
        let mut rows = Vec::new();
        for (name, balancer) in [("sluice xdp native", sluice as Balancer), ("nftables dnat", nftables)] {
            let f = balancer(seconds).with_context(|| format!("{name} run"))?;
            println!(
                "{round:<6} {name:<18} {:>12.0} {:>10.0} {:>12.0} {:>10.0} {:>9.1}% {:>9.0} {:>11.1} {:>6.2}%",
                f.pps_established,
                f.ns_established,
                f.pps_new,
                f.ns_new,
                f.delivered * 100.0,
                f.cps,
                f.us_per_connection,
                f.cps_errors * 100.0
            );
            rows.push(f);
        }
        let (s, n) = (&rows[0], &rows[1]);
        println!(
            "{round:<6} {:<18} {:>11.2}x {:>9.2}x {:>11.2}x {:>9.2}x {:>10} {:>8.2}x {:>10.2}x",
            "sluice/nftables",
            s.pps_established / n.pps_established,
            s.ns_established / n.ns_established,
            s.pps_new / n.pps_new,
            s.ns_new / n.ns_new,
            "",
            s.cps / n.cps,
            s.us_per_connection / n.us_per_connection
        );
    }
    Ok(())
}
