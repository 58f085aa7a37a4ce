//! The demo: a namespace topology, lbd with config/demo.toml, real traffic through the XDP
//! balancer (L4, DSR) and the TLS proxy (L7), an operator's day with lbctl, teardown. With
//! `--cluster`: three balancers behind a BGP router (ECMP), a balancer lost, flows living on.
use std::{collections::BTreeMap, time::Duration};

use anyhow::{Result, bail};
use sluice_tests::{
    many_hosts::{Edge, Flows},
    netns::{self, Host, Topology},
    pki::TestCa,
    servers::{Decap, Lbd, Nginx, PeerPass, TempDir, wait_for},
};

const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/demo.toml");
const PIN_DIR: &str = "/sys/fs/bpf/sluice-demo";

fn step(text: &str) {
    println!("\n\x1b[1m==> {text}\x1b[0m");
}

/// `n` requests on one connection with curl: who answered, and how many failed.
fn requests(client: &Host, url: &str, n: usize, extra: &[&str]) -> Result<BTreeMap<String, usize>> {
    let mut args = vec!["-sS", "--max-time", "10", "-w", "|%{http_code}\n"];
    args.extend_from_slice(extra);
    for _ in 0..n {
        args.push(url);
    }
    let out = String::from_utf8_lossy(&client.run("curl", &args)?.stdout).into_owned();
    let mut answers = BTreeMap::new();
    for pair in out.lines().collect::<Vec<_>>().chunks(2) {
        let who = if pair.get(1) == Some(&"|200") { pair[0].to_owned() } else { format!("failed {pair:?}") };
        *answers.entry(who).or_default() += 1;
    }
    println!("  {n} x GET {url}: {answers:?}");
    if answers.keys().any(|k| k.starts_with("failed")) {
        bail!("client errors");
    }
    Ok(answers)
}

/// Prints the end of lbd's log when the demo stops early (a failed step unwinds through it).
struct LogOnFailure(std::path::PathBuf);

impl Drop for LogOnFailure {
    fn drop(&mut self) {
        let log = std::fs::read_to_string(&self.0).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        eprintln!("\n--- the last lines of lbd's log ({}) ---", self.0.display());
        for line in &lines[lines.len().saturating_sub(40)..] {
            eprintln!("{line}");
        }
    }
}

/// Tears down on Ctrl-C: the daemons first (they hold the pins), then the namespaces whose
/// names start with `tag`, pins and temporary files.
fn on_interrupt(tag: String) -> Result<()> {
    ctrlc::set_handler(move || {
        eprintln!("\ninterrupted: tearing down");
        // lbd's, nginx's and BIRD's command lines name their files in this process's temporary dirs.
        let mine = format!("sluice-.*-{}-", std::process::id());
        let _ = std::process::Command::new("pkill").args(["-TERM", "-f", &mine]).status();
        std::thread::sleep(Duration::from_millis(500));
        netns::delete_namespaces(&tag);
        let _ = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("rm -rf /sys/fs/bpf/{tag}-* {PIN_DIR}"))
            .status();
        sluice_tests::servers::remove_temp_dirs();
        std::process::exit(130);
    })?;
    Ok(())
}

/// `--cluster`: three balancers announce the VIP over BGP (BIRD) to a router that spreads
/// connections with ECMP; one balancer is lost and the connections it carried live on.
fn cluster() -> Result<()> {
    step("three balancers (lbd + BIRD each) announce 198.19.0.1 to a BIRD router (ECMP, L4 hash)");
    let edge = Edge::start("demo-cluster")?;
    on_interrupt(edge.topology.tag.clone())?;
    println!("  router: {}", edge.route().trim_end().replace('\n', "\n          "));
    step("60 new connections: spread over the balancers and the backends");
    let before = edge.new_flows()?;
    let backends = edge.connections(60)?;
    let balancers: Vec<u64> = edge.new_flows()?.iter().zip(&before).map(|(a, b)| a - b).collect();
    println!("  backends 1-3 answered {backends:?}; balancers 1-3 took {balancers:?} new flows");
    step("lbctl status on balancer 1");
    print!("{}", edge.lbds[0].lbctl(&["status"])?);
    step("30 long-lived connections (a request every 200 ms); balancer 3's link goes down");
    let flows = Flows::start(&edge.topology.client, edge.vip, 30, Duration::from_secs(4))?;
    std::thread::sleep(Duration::from_secs(1));
    let gone = edge.lose(2)?;
    println!("  the router dropped balancer 3 after {gone:?}:");
    println!("  router: {}", edge.route().trim_end().replace('\n', "\n          "));
    let seen = flows.finish();
    println!(
        "  30 connections: {} broken, {} changed backend, longest pause {:?}",
        seen.broken.len(),
        seen.switched,
        seen.gap
    );
    if !seen.broken.is_empty() || seen.switched > 0 {
        bail!("connections broke");
    }
    step("lbctl node drain on balancer 1: its route is withdrawn first");
    print!("{}", edge.lbds[0].lbctl(&["node", "drain"])?);
    edge.wait_gone(0)?;
    println!("  router: {}", edge.route().trim_end());
    step("teardown");
    drop(edge);
    println!("  done: daemons stopped, namespaces and pins removed");
    Ok(())
}

fn main() -> Result<()> {
    let keep = std::env::args().any(|a| a == "--keep");
    sluice_tests::require_root();
    if std::env::args().any(|a| a == "--cluster") {
        return cluster();
    }
    // A stale demo (killed hard) would hold the pins: start clean.
    let _ = std::fs::remove_dir_all(PIN_DIR);

    step("topology: two clients -- router -- lb (XDP), two backends behind the router");
    let topology = Topology::new(2)?;
    let tag = topology.tag.clone();
    on_interrupt(tag)?;
    for host in [&topology.client, &topology.client2, &topology.lb].into_iter().chain(&topology.backends) {
        println!("  {:<18} {} {}", host.ns, host.addr4, host.addr6);
    }

    step("backends: VIPs on loopback, nginx, `lbd decap` (XDP strips IPIP/IP6IP6)");
    let mut nginx = Vec::new();
    let mut decaps = Vec::new();
    for (i, backend) in topology.backends.iter().enumerate() {
        backend.make_dsr_backend(&["198.19.0.1", "fd00:5e:100::1"])?;
        nginx.push(Some(Nginx::start(backend, &format!("backend{}", i + 1))?));
        decaps.push(Decap::attach(backend, "native")?);
        println!("  {}: nginx on :80, decap on eth0", backend.ns);
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
    // lbd's own log goes to a file, so the story reads clean; it is shown if a step fails.
    let log = scratch.0.join("lbd.log");
    let lbd = Lbd::start_logging(&topology.lb, &config, Some(&log))?;
    let show_log_on_failure = LogOnFailure(log.clone());
    print!("{}", String::from_utf8_lossy(&topology.lb.run("ip", &["-br", "link", "show", "eth0"])?.stdout));

    // A new connection (a new flow) per request, so Maglev's spread shows.
    let fresh = ["-H", "Connection: close"];
    step("L4: HTTP to the VIPs; XDP encapsulates to a backend, which answers the client directly");
    requests(&topology.client, "http://198.19.0.1/", 20, &fresh)?;
    requests(&topology.client, "http://[fd00:5e:100::1]/", 10, &fresh)?;

    step("L7: HTTPS to 198.19.0.3 (XDP passes it up; lbd terminates TLS 1.3 + h2 and routes)");
    let cacert = ca.cert.to_str().unwrap_or_default().to_owned();
    let tls = ["--http2", "--cacert", &cacert, "--resolve", "site.demo.test:443:198.19.0.3"];
    requests(&topology.client, "https://site.demo.test/", 10, &tls)?;

    step("lbctl stats   (per-CPU XDP counters, summed)");
    print!("{}", lbd.lbctl(&["stats"])?);

    step("lbctl plan backend drain web 198.18.11.2   (what would move, before doing it)");
    print!("{}", lbd.lbctl(&["plan", "backend", "drain", "web", "198.18.11.2"])?);
    step("lbctl backend drain web 198.18.11.2   (no new flows; established ones stay)");
    print!("{}", lbd.lbctl(&["backend", "drain", "web", "198.18.11.2"])?);
    requests(&topology.client, "http://198.19.0.1/", 10, &fresh)?;

    step("backend2's nginx dies; the health check (1 s, fall 2) takes it out");
    nginx[1] = None;
    wait_for("backend2 marked down", Duration::from_secs(5), || {
        lbd.lbctl(&["pool", "show", "web"]).map(|s| s.contains("DOWN")).unwrap_or(false)
    })?;
    print!("{}", lbd.lbctl(&["pool", "show", "web"])?);
    lbd.lbctl(&["backend", "drain", "--undo", "web", "198.18.11.2"])?;
    println!("  (undrained: it stays out while down)");
    requests(&topology.client, "http://198.19.0.1/", 20, &fresh)?;

    step("backend2 comes back; after two good checks it takes traffic again");
    nginx[1] = Some(Nginx::start(&topology.backends[1], "backend2")?);
    wait_for("backend2 back up", Duration::from_secs(5), || {
        lbd.lbctl(&["pool", "show", "web"]).map(|s| !s.contains("DOWN")).unwrap_or(false)
    })?;
    requests(&topology.client, "http://198.19.0.1/", 20, &fresh)?;

    step("reload: 10% of the HTTPS site to the canary pool (edit the file, SIGHUP)");
    let text = std::fs::read_to_string(&config)?;
    let canary = text
        .replace("pool = \"stable\"\n", "pool = \"stable\"\nsplit = [{ pool = \"canary\", percent = 10 }]\n");
    std::fs::write(&config, canary)?;
    lbd.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    let answers = requests(&topology.client, "https://site.demo.test/", 400, &tls)?;
    let share = *answers.get("backend2").unwrap_or(&0) as f64 / 4.0;
    println!("  canary share: {share:.1}%");

    step("a deny-listed client (198.18.2.0/24) is dropped in XDP");
    let denied = topology.client2.run("curl", &["-sS", "--max-time", "2", "http://198.19.0.1/"]);
    println!("  client2: {}", if denied.is_err() { "no answer (dropped)" } else { "answered?!" });
    let stats = lbd.lbctl(&["stats"])?;
    for line in stats.lines().filter(|l| l.starts_with("drop")) {
        println!("  {line}");
    }

    step("lbctl stats --backend");
    print!("{}", lbd.lbctl(&["stats", "--backend"])?);

    if keep {
        step("--keep: running; `nsenter --net=/run/netns/<name>` to explore; Ctrl-C tears down");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    step("teardown");
    std::mem::forget(show_log_on_failure);
    drop(lbd);
    drop(decaps);
    drop(nginx);
    drop(topology);
    println!("  done: namespaces, links and pins removed");
    Ok(())
}
