//! The demo: a namespace topology, lbd with config/demo.toml, real traffic through the XDP
//! balancer to two DSR backends, per-backend counters, teardown.
use std::{collections::BTreeMap, time::Duration};

use anyhow::Result;
use sluice_tests::{
    netns::{self, Topology},
    pki::TestCa,
    servers::{Decap, Lbd, Nginx, PeerPass, TempDir},
};

const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/demo.toml");
const PIN_DIR: &str = "/sys/fs/bpf/sluice-demo";

fn step(text: &str) {
    println!("\n\x1b[1m==> {text}\x1b[0m");
}

fn requests(topology: &Topology, url: &str, n: usize) -> Result<()> {
    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..n {
        let out = topology.client.run("curl", &["-sS", "--max-time", "5", url])?;
        *answers.entry(String::from_utf8_lossy(&out.stdout).trim().to_owned()).or_default() += 1;
    }
    println!("  {n} x GET {url}: answered by {answers:?}");
    Ok(())
}

fn main() -> Result<()> {
    let keep = std::env::args().any(|a| a == "--keep");
    sluice_tests::require_root();
    // A stale demo (killed hard) would hold the pins: start clean.
    let _ = std::fs::remove_dir_all(PIN_DIR);

    step("topology: client -- router -- lb, two backends behind the router");
    let topology = Topology::new(2)?;
    let tag = topology.tag.clone();
    ctrlc::set_handler(move || {
        eprintln!("\ninterrupted: tearing down");
        netns::delete_namespaces(&tag);
        let _ = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("rm -rf /sys/fs/bpf/{tag}-* {PIN_DIR}"))
            .status();
        std::process::exit(130);
    })?;
    for host in std::iter::once(&topology.client).chain([&topology.lb]).chain(&topology.backends) {
        println!("  {:<18} {} {}", host.ns, host.addr4, host.addr6);
    }

    step("backends: VIPs on loopback, nginx, `lbd decap` (XDP strips IPIP/IP6IP6)");
    let mut keepalive = Vec::new();
    for (i, backend) in topology.backends.iter().enumerate() {
        backend.make_dsr_backend(&["198.19.0.1", "fd00:5e:100::1"])?;
        let nginx = Nginx::start(backend, &format!("backend{}", i + 1))?;
        let decap = Decap::attach(backend, "native")?;
        println!("  {}: nginx on :80, decap on eth0", backend.ns);
        keepalive.push((nginx, decap));
    }
    // The router's end of the lb link gets an XDP program so veth delivers native XDP_TX frames.
    let _pass = PeerPass::attach(&topology.router, "r1")?;

    step("lbd run -c config/demo.toml (a copy: lbctl writes changes back to the file)");
    let scratch = TempDir::new("demo")?;
    let config = scratch.0.join("sluice.toml");
    std::fs::copy(CONFIG, &config)?;
    // The HTTPS VIP's certificate, from a CA made now (no key is ever committed).
    let ca = TestCa::new(&scratch.0)?;
    ca.leaf("site", &["site.demo.test"], false)?;
    topology.lb.run("ip", &["addr", "add", "198.19.0.3/32", "dev", "lo"])?;
    let lbd = Lbd::start(&topology.lb, &config)?;
    print!("{}", String::from_utf8_lossy(&topology.lb.run("ip", &["-br", "link", "show", "eth0"])?.stdout));

    step("client: HTTP to the VIPs; the balancer encapsulates, backends answer the client directly");
    requests(&topology, "http://198.19.0.1/", 20)?;
    requests(&topology, "http://[fd00:5e:100::1]/", 10)?;

    step("client: HTTPS to the L7 VIP (XDP passes it up; lbd terminates TLS, HTTP/2, routes to the pool)");
    let cacert = ca.cert.to_str().unwrap_or_default().to_owned();
    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..10 {
        let out = topology.client.run(
            "curl",
            &[
                "-sS",
                "--http2",
                "--cacert",
                &cacert,
                "--resolve",
                "site.demo.test:443:198.19.0.3",
                "https://site.demo.test/",
            ],
        )?;
        *answers.entry(String::from_utf8_lossy(&out.stdout).trim().to_owned()).or_default() += 1;
    }
    println!("  10 x GET https://site.demo.test/ (TLS 1.3, h2): answered by {answers:?}");

    step("lbctl stats");
    print!("{}", lbd.lbctl(&["stats"])?);

    step("lbctl pool show web");
    print!("{}", lbd.lbctl(&["pool", "show", "web"])?);
    step("lbctl plan backend drain web 198.18.11.2   (what would move, before doing it)");
    print!("{}", lbd.lbctl(&["plan", "backend", "drain", "web", "198.18.11.2"])?);
    step("lbctl backend drain web 198.18.11.2");
    print!("{}", lbd.lbctl(&["backend", "drain", "web", "198.18.11.2"])?);
    requests(&topology, "http://198.19.0.1/", 10)?;
    step("lbctl backend drain --undo web 198.18.11.2");
    print!("{}", lbd.lbctl(&["backend", "drain", "--undo", "web", "198.18.11.2"])?);
    requests(&topology, "http://198.19.0.1/", 10)?;
    step("lbctl flow 198.19.0.1:80 tcp 198.18.0.2:40000   (asks the loaded XDP program)");
    print!("{}", lbd.lbctl(&["flow", "198.19.0.1:80", "tcp", "198.18.0.2:40000"])?);
    step("lbctl stats --backend");
    print!("{}", lbd.lbctl(&["stats", "--backend"])?);
    step("L7 metrics (curl http://127.0.0.1:9190/metrics | grep sluice_http_requests)");
    let metrics = topology.lb.run("curl", &["-sS", "http://127.0.0.1:9190/metrics"])?;
    for line in
        String::from_utf8_lossy(&metrics.stdout).lines().filter(|l| l.starts_with("sluice_http_requests"))
    {
        println!("  {line}");
    }

    if keep {
        step("--keep: running; `nsenter --net=/run/netns/<name>` to explore; Ctrl-C tears down");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    step("teardown");
    drop(lbd);
    drop(keepalive);
    drop(topology);
    println!("  done: namespaces, links and pins removed");
    Ok(())
}
