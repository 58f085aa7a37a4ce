//! Root test of BGP announcements with real BIRD daemons: three Sluice hosts, each running lbd
//! and BIRD, peer with a router whose BIRD installs multipath (ECMP) routes into its kernel with
//! L4 hashing, over IPv4 and IPv6 sessions. The router holds a 3-way route per VIP (IPv6 too);
//! `lbctl node drain` withdraws one host's announcements (kept in its config file); a pool with
//! nothing usable withdraws that VIP only;
//! SIGTERM withdraws before lbd stops serving; `undrain` announces again. On the full edge
//! topology (client, router, three balancers, three DSR backends with Sluice's decap), new
//! connections spread over every balancer and backend, and when a balancer is lost the router
//! moves its 50 long-lived flows to the others, which find the same backend (same Maglev table,
//! same hash): none breaks.
use std::{net::Ipv4Addr, path::Path, process::Child, time::Duration};

use anyhow::{Context as _, Result};
use sluice_tests::{
    many_hosts::{Edge, Flows, bird, new_flows, router_bird_config},
    netns::{Host, delete_namespaces, run},
    servers::{Lbd, TempDir, wait_for},
};

const HOSTS: usize = 3;
const WEB: &str = "198.19.0.1";
const API: &str = "198.19.0.2";
const WEB6: &str = "2001:db8:77::1";

/// Router, hosts and their BIRDs; everything is removed on drop.
struct Bed {
    tag: String,
    router: Host,
    hosts: Vec<Host>,
    birds: Vec<Child>,
}

impl Drop for Bed {
    fn drop(&mut self) {
        for bird in &mut self.birds {
            let _ = bird.kill();
            let _ = bird.wait();
        }
        delete_namespaces(&self.tag);
    }
}

fn host(ns: String, addr4: Ipv4Addr, dev: &str) -> Host {
    Host { ns, addr4, addr6: std::net::Ipv6Addr::UNSPECIFIED, dev: dev.to_owned(), mac: [0; 6] }
}

impl Bed {
    fn new(dir: &Path) -> Result<Bed> {
        sluice_tests::require_root();
        let tag = format!("slb{}", std::process::id() % 100_000);
        delete_namespaces(&tag);
        let router = host(format!("{tag}-r"), Ipv4Addr::new(10, 77, 0, 1), "");
        run("ip", &["netns", "add", &router.ns])?;
        let mut bed = Bed { tag: tag.clone(), router, hosts: Vec::new(), birds: Vec::new() };
        bed.router.run("ip", &["link", "set", "lo", "up"])?;
        // ECMP over the hosts, hashed on the 5-tuple (what an edge router's L4 hashing does).
        bed.router
            .run("sysctl", &["-qw", "net.ipv4.fib_multipath_hash_policy=1", "net.ipv4.ip_forward=1"])?;
        bed.router.run("sysctl", &["-qw", "net.ipv6.fib_multipath_hash_policy=1"])?;
        let mut neighbors = String::new();
        for i in 1..=HOSTS {
            let h = host(format!("{tag}-h{i}"), Ipv4Addr::new(10, 77, i as u8, 2), "eth0");
            run("ip", &["netns", "add", &h.ns])?;
            let peer = format!("h{i}");
            run(
                "ip",
                &[
                    "link",
                    "add",
                    &peer,
                    "netns",
                    &bed.router.ns,
                    "type",
                    "veth",
                    "peer",
                    "eth0",
                    "netns",
                    &h.ns,
                ],
            )?;
            bed.router.run("ip", &["addr", "add", &format!("10.77.{i}.1/24"), "dev", &peer])?;
            bed.router.run("ip", &["addr", "add", &format!("fd00:77:{i}::1/64"), "dev", &peer, "nodad"])?;
            bed.router.run("ip", &["link", "set", &peer, "up"])?;
            h.run("ip", &["link", "set", "lo", "up"])?;
            h.run("ip", &["addr", "add", &format!("10.77.{i}.2/24"), "dev", "eth0"])?;
            h.run("ip", &["addr", "add", &format!("fd00:77:{i}::2/64"), "dev", "eth0", "nodad"])?;
            h.run("ip", &["link", "set", "eth0", "up"])?;
            neighbors.push_str(&format!("protocol bgp h{i} from lb {{ neighbor 10.77.{i}.2 as 65001; }}\n"));
            neighbors
                .push_str(&format!("protocol bgp h{i}v6 from lb6 {{ neighbor fd00:77:{i}::2 as 65001; }}\n"));
            bed.hosts.push(h);
        }
        let router_conf = router_bird_config("10.77.0.1", &neighbors);
        let router_bird = bird(&bed.router, dir, "r", &router_conf)?;
        bed.birds.push(router_bird);
        for (i, h) in bed.hosts.clone().iter().enumerate() {
            let i = i + 1;
            let routes = dir.join(format!("h{i}-vips.conf"));
            // lbd rewrites this file; BIRD needs it to exist at start.
            std::fs::write(&routes, lb_userspace::announce::render(&Default::default()))?;
            let conf = format!(
                "router id 10.77.{i}.2;\nprotocol device {{ scan time 1; }}\ninclude \"{routes}\";\n\
                 protocol bgp uplink {{ local 10.77.{i}.2 as 65001; neighbor 10.77.{i}.1 as 65000; hold time 6; \
                 connect retry time 1; ipv4 {{ import none; export where proto = \"sluice_vips4\"; next hop self; }}; }}\n\
                 protocol bgp uplink6 {{ local fd00:77:{i}::2 as 65001; neighbor fd00:77:{i}::1 as 65000; hold time 6; \
                 connect retry time 1; ipv6 {{ import none; export where proto = \"sluice_vips6\"; next hop self; }}; }}\n",
                routes = routes.display()
            );
            let child = bird(h, dir, &format!("h{i}"), &conf)?;
            bed.birds.push(child);
        }
        Ok(bed)
    }

    /// The words after `key` (`via`, `dev`) in the router's route to `vip` (`-4` or `-6`),
    /// sorted and without repeats: its next hops or its links.
    fn route_words(&self, family: &str, vip: &str, key: &str) -> Vec<String> {
        let Ok(out) = self.router.run("ip", &[family, "route", "show", vip]) else { return Vec::new() };
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut words: Vec<String> = text
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == key)
            .map(|w| w[1].to_owned())
            .collect();
        words.sort();
        words.dedup();
        words
    }

    /// The router's next hops for `vip` (the hosts' addresses).
    fn next_hops(&self, vip: &str) -> Vec<String> {
        self.route_words("-4", vip, "via")
    }

    /// The router's links (`hN`) an IPv6 `vip` is routed over (its next hops may be link-local).
    fn links6(&self, vip: &str) -> Vec<String> {
        self.route_words("-6", vip, "dev")
    }

    /// Waits until the router sends IPv6 `vip` to exactly the hosts numbered `hosts`.
    fn expect6(&self, vip: &str, hosts: &[usize]) -> Result<()> {
        let want: Vec<String> = hosts.iter().map(|i| format!("h{i}")).collect();
        wait_for(&format!("the router's route to {vip} over {want:?}"), Duration::from_secs(20), || {
            self.links6(vip) == want
        })
        .with_context(|| format!("{vip} is over {:?}", self.links6(vip)))
    }

    /// Waits until the router sends `vip` to exactly the hosts numbered `hosts`.
    fn expect(&self, vip: &str, hosts: &[usize]) -> Result<()> {
        let want: Vec<String> = hosts.iter().map(|i| format!("10.77.{i}.2")).collect();
        wait_for(&format!("the router's route to {vip} via {want:?}"), Duration::from_secs(20), || {
            self.next_hops(vip) == want
        })
        .with_context(|| format!("{vip} is via {:?}", self.next_hops(vip)))
    }
}

fn config(dir: &Path, tag: &str, i: usize, withdraw_wait_ms: u64) -> Result<std::path::PathBuf> {
    let path = dir.join(format!("h{i}.toml"));
    std::fs::write(
        &path,
        format!(
            "[dataplane]\ninterface = \"eth0\"\nxdp_mode = \"generic\"\npin_dir = \"/sys/fs/bpf/{tag}-h{i}\"\n\n\
             [bgp]\nroutes_file = \"{d}/h{i}-vips.conf\"\ncontrol_socket = \"{d}/h{i}.ctl\"\n\
             withdraw_wait_ms = {withdraw_wait_ms}\n\n\
             [[vip]]\nname = \"web\"\naddress = \"{WEB}\"\nport = 80\nprotocol = \"tcp\"\npool = \"web\"\n\n\
             [[vip]]\nname = \"api\"\naddress = \"{API}\"\nport = 80\nprotocol = \"tcp\"\npool = \"api\"\n\n\
             [[pool]]\nname = \"web\"\nbackends = [{{ address = \"10.99.0.1\" }}, {{ address = \"10.99.0.2\" }}]\n\n\
             [[pool]]\nname = \"api\"\nbackends = [{{ address = \"10.99.0.3\" }}]\n\n\
             [[vip]]\nname = \"web6\"\naddress = \"{WEB6}\"\nport = 80\nprotocol = \"tcp\"\npool = \"web6\"\n\n\
             [[pool]]\nname = \"web6\"\nbackends = [{{ address = \"2001:db8:99::1\" }}]\n\n\
             [admin]\nsocket = \"{d}/h{i}.sock\"\nmetrics = \"127.0.0.1:9100\"\n",
            d = dir.display(),
        ),
    )?;
    Ok(path)
}

#[test]
fn root_bgp_hosts_announce_drain_and_withdraw_through_bird() -> Result<()> {
    let dir = TempDir::new("bgp")?;
    let bed = Bed::new(&dir.0)?;
    let mut lbds = Vec::new();
    for (i, h) in bed.hosts.iter().enumerate() {
        // The third host waits 3 s after withdrawing on SIGTERM, long enough to watch it.
        let wait = if i == 2 { 3_000 } else { 500 };
        let log = dir.0.join(format!("lbd-h{}.log", i + 1));
        lbds.push(Lbd::start_logging(h, &config(&dir.0, &bed.tag, i + 1, wait)?, Some(&log))?);
    }

    // Every host announces both VIPs: the router holds a 3-way ECMP route for each.
    bed.expect(WEB, &[1, 2, 3])?;
    bed.expect(API, &[1, 2, 3])?;
    bed.expect6(WEB6, &[1, 2, 3])?;
    let status = lbds[0].lbctl(&["status"])?;
    assert!(status.contains(&format!("bgp_announced    {WEB}, {API}")), "{status}");
    let announced = |h: &Host, vip: &str| -> Result<bool> {
        let out = h.run("curl", &["-sS", "http://127.0.0.1:9100/metrics"])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = format!("sluice_bgp_announced{{address=\"{vip}\"}} ");
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .with_context(|| format!("no {line} in {text}"))?;
        Ok(value.trim() == "1")
    };
    assert!(announced(&bed.hosts[0], WEB)?, "the metrics do not say host 1 announces {WEB}");

    // Drain host 1: both VIPs leave it; the drain is written to its config file.
    lbds[0].lbctl(&["node", "drain"])?;
    bed.expect(WEB, &[2, 3])?;
    bed.expect(API, &[2, 3])?;
    bed.expect6(WEB6, &[2, 3])?;
    assert!(lbds[0].lbctl(&["status"])?.contains("nothing (node drained)"));
    assert!(!announced(&bed.hosts[0], WEB)?, "the metrics still say host 1 announces {WEB}");
    assert!(std::fs::read_to_string(&lbds[0].config)?.contains("drained = true"));

    // Host 2's web pool has nothing usable: web leaves host 2, api stays.
    for backend in ["10.99.0.1", "10.99.0.2"] {
        lbds[1].lbctl(&["backend", "drain", "web", backend])?;
    }
    bed.expect(WEB, &[3])?;
    bed.expect(API, &[2, 3])?;

    // SIGTERM on host 3: withdrawn while lbd still serves (its withdraw wait), then it exits.
    lbds[2].signal(libc::SIGTERM);
    let pid = lbds[2].pid();
    bed.expect(API, &[2])?;
    assert!(bed.next_hops(WEB).is_empty(), "web still routed: {:?}", bed.next_hops(WEB));
    assert!(Path::new(&format!("/proc/{pid}")).exists(), "lbd exited before the router moved the traffic");
    let log = dir.0.join("lbd-h3.log");
    wait_for("lbd on host 3 to exit", Duration::from_secs(15), || {
        std::fs::read_to_string(&log).unwrap_or_default().contains("stopping")
    })?;

    // Undrain host 1: it announces again.
    lbds[0].lbctl(&["node", "undrain"])?;
    bed.expect(WEB, &[1])?;
    bed.expect(API, &[1, 2])?;
    Ok(())
}

#[test]
fn root_bgp_ecmp_spreads_flows_and_a_lost_host_keeps_them_on_their_backends() -> Result<()> {
    let mut edge = Edge::start("bgp-ecmp")?;
    let (client, vip) = (edge.topology.client.clone(), edge.vip);

    // 300 new connections: every balancer takes new flows, every backend answers; then the
    // same over IPv6 (its own VIP, announced over IPv6 sessions, encapsulated IPv6 in IPv6).
    spread(&edge, "IPv4", 300, |edge, n| edge.connections(n))?;
    spread(&edge, "IPv6", 150, |edge, n| edge.connections6(n))?;

    // 50 long-lived flows, a request every 200 ms each; 2 s in, the router loses balancer 3's
    // link: its flows move to the other balancers, which miss them in their connection tables
    // and still pick the same backend. Measured: flows moved, flows broken, the longest gap
    // between two answers on one flow.
    flows_live_on(&mut edge, 2, "lost (its link down)", |edge| edge.lose(2))?;

    // Balancer 1 is drained under 30 more long-lived flows: its route goes first, its flows
    // move to balancer 2 on their backends, and it takes no new connection afterwards.
    let flows = Flows::start(&client, vip, 30, Duration::from_secs(4))?;
    std::thread::sleep(Duration::from_secs(1));
    edge.lbds[0].lbctl(&["node", "drain"])?;
    edge.wait_gone(0)?;
    let drained_before = new_flows(&edge.lbds[0].pin_dir)?;
    let seen = flows.finish();
    assert!(
        seen.broken.is_empty() && seen.switched == 0,
        "drain: broken {:?}, {} changed",
        seen.broken,
        seen.switched
    );
    edge.connections(50)?;
    assert_eq!(new_flows(&edge.lbds[0].pin_dir)?, drained_before, "a drained balancer took new connections");
    println!("balancer 1 drained under 30 flows: 0 broken, 0 changed backend, no new connections after");
    Ok(())
}

#[test]
fn root_bgp_kill_9_of_lbd_and_bird_keeps_flows() -> Result<()> {
    let mut edge = Edge::start("bgp-kill")?;
    // 50 long-lived flows; 2 s in, balancer 2's lbd and BIRD die by SIGKILL. Its BGP session
    // ends with the process (the kernel closes the socket), the router drops its route at once,
    // and its flows move to the other balancers, which pick the same backends. Until then its
    // XDP program keeps forwarding: a crashed lbd does not detach it.
    flows_live_on(&mut edge, 1, "killed (lbd and BIRD, SIGKILL)", |edge| edge.kill(1))?;
    Ok(())
}

/// `n` new connections (`connect`): every backend answers and every balancer takes at least a
/// seventh of them; prints the spread.
fn spread(
    edge: &Edge,
    family: &str,
    n: usize,
    connect: impl Fn(&Edge, usize) -> Result<Vec<usize>>,
) -> Result<()> {
    let before = edge.new_flows()?;
    let per_backend = connect(edge, n)?;
    let least = n / 7;
    assert_eq!(per_backend.iter().sum::<usize>(), n, "{family}: {per_backend:?}");
    assert!(per_backend.iter().all(|&k| k >= least), "{family}: backends took {per_backend:?} of {n}");
    let per_lb: Vec<u64> = edge.new_flows()?.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert!(
        per_lb.iter().all(|&k| k >= least as u64),
        "{family}: balancers took {per_lb:?} of {n} new flows"
    );
    println!("{n} {family} connections: backends {per_backend:?}, balancers {per_lb:?}");
    Ok(())
}

/// 50 long-lived flows to the IPv4 VIP and 20 to the IPv6 one (a request every 200 ms each);
/// 2 s in, balancer `n` goes (`lose`). Its flows must move to the other balancers and stay on
/// their backends: prints and checks the flows it carried, how long the route took to go,
/// flows broken or moved to another backend, and the longest gap between two answers on one
/// flow.
fn flows_live_on(
    edge: &mut Edge,
    n: usize,
    how: &str,
    lose: impl FnOnce(&mut Edge) -> Result<Duration>,
) -> Result<()> {
    let client = edge.topology.client.clone();
    let before = new_flows(&edge.lbds[n].pin_dir)?;
    let flows = Flows::start(&client, edge.vip, 50, Duration::from_secs(5))?;
    let flows6 = Flows::start(&client, edge.vip6, 20, Duration::from_secs(5))?;
    std::thread::sleep(Duration::from_secs(2));
    let carried = new_flows(&edge.lbds[n].pin_dir)? - before;
    let withdrawn = lose(edge)?;
    let (seen, seen6) = (flows.finish(), flows6.finish());
    println!(
        "balancer {} {how}: {carried} of 70 flows (50 IPv4, 20 IPv6) moved, IPv4 route gone in \
         {withdrawn:?}, {} broken, {} changed backend, longest gap between answers {:?} (IPv6: {} broken, \
         {} changed, longest gap {:?}; requests every 200 ms)",
        n + 1,
        seen.broken.len(),
        seen.switched,
        seen.gap,
        seen6.broken.len(),
        seen6.switched,
        seen6.gap
    );
    anyhow::ensure!(carried > 0, "balancer {} carried none of the 70 flows: the test shows nothing", n + 1);
    anyhow::ensure!(seen.broken.is_empty(), "flows broke: {:?}", seen.broken);
    anyhow::ensure!(seen6.broken.is_empty(), "IPv6 flows broke: {:?}", seen6.broken);
    anyhow::ensure!(
        seen.switched + seen6.switched == 0,
        "a flow changed backend when balancer {} went",
        n + 1
    );
    Ok(())
}
