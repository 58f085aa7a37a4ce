//! Root test, end to end on veth in namespaces: client -> router -> lb (lbd, XDP) -> IPIP /
//! IP6IP6 -> backends (Sluice's decap, VIP on loopback, nginx) -> straight back to the client.
use std::{collections::BTreeMap, path::PathBuf};

use anyhow::Result;
use sluice_tests::{
    netns::{Topology, mac_text},
    servers::{Decap, Lbd, Nginx, PeerPass, TempDir},
};

const VIP4: &str = "198.19.0.1";
const VIP6: &str = "fd00:5e:100::1";

/// Writes an lbd config for the topology: one v4 and one v6 TCP VIP over both backends.
fn config(topology: &Topology, dir: &TempDir, mode: &str, pin_dir: &std::path::Path) -> Result<PathBuf> {
    let b = &topology.backends;
    let text = format!(
        "[dataplane]\ninterface = \"eth0\"\nxdp_mode = \"{mode}\"\npin_dir = \"{pin}\"\nnext_hop_mac = \"{mac}\"\n\
         [[vip]]\nname = \"web4\"\naddress = \"{VIP4}\"\nport = 80\nprotocol = \"tcp\"\npool = \"web4\"\n\
         [[vip]]\nname = \"web6\"\naddress = \"{VIP6}\"\nport = 80\nprotocol = \"tcp\"\npool = \"web6\"\n\
         [[pool]]\nname = \"web4\"\nbackends = [{{ address = \"{a4}\" }}, {{ address = \"{b4}\" }}]\n\
         [[pool]]\nname = \"web6\"\nbackends = [{{ address = \"{a6}\" }}, {{ address = \"{b6}\" }}]\n\
         [admin]\nsocket = \"{dir}/lbd.sock\"\n",
        dir = dir.0.display(),
        pin = pin_dir.display(),
        mac = mac_text(topology.router_mac_to_lb),
        a4 = b[0].addr4,
        b4 = b[1].addr4,
        a6 = b[0].addr6,
        b6 = b[1].addr6,
    );
    let path = dir.0.join("sluice.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Requests `url` from the client `n` times (new connection each): answers by backend name.
fn spread(topology: &Topology, url: &str, first_port: u16, n: u16) -> Result<BTreeMap<String, usize>> {
    let mut seen = BTreeMap::new();
    for i in 0..n {
        let port = (first_port + i).to_string();
        let out = topology.client.run("curl", &["-sS", "--max-time", "5", "--local-port", &port, url])?;
        *seen.entry(String::from_utf8_lossy(&out.stdout).trim().to_owned()).or_default() += 1;
    }
    Ok(seen)
}

/// The DSR test bed: the topology, two nginx backends with the VIPs on loopback and Sluice's
/// decap in `mode`, and (native mode) the pass program XDP_TX needs on the router's lb link.
/// Fields drop in order, the topology last.
struct Bed {
    _pass: Option<PeerPass>,
    _servers: Vec<Nginx>,
    decaps: Vec<Decap>,
    dir: TempDir,
    pin_dir: PathBuf,
    topology: Topology,
}

fn bed(mode: &str, name: &str) -> Result<Bed> {
    let topology = Topology::new(2)?;
    let dir = TempDir::new(&format!("{name}-{mode}"))?;
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{}", topology.tag));
    let pass = if mode == "native" { Some(PeerPass::attach(&topology.router, "r1")?) } else { None };
    let mut servers = Vec::new();
    let mut decaps = Vec::new();
    for (i, backend) in topology.backends.iter().enumerate() {
        backend.make_dsr_backend(&[VIP4, VIP6])?;
        servers.push(Nginx::start(backend, &format!("backend{}", i + 1))?);
        decaps.push(Decap::attach(backend, mode)?);
    }
    Ok(Bed { _pass: pass, _servers: servers, decaps, dir, pin_dir, topology })
}

fn dsr_end_to_end(mode: &str) -> Result<()> {
    let Bed { ref topology, ref dir, ref pin_dir, ref decaps, .. } = bed(mode, "e2e")?;
    let lbd = Lbd::start(&topology.lb, &config(topology, dir, mode, pin_dir)?)?;

    for (url, first_port) in [(format!("http://{VIP4}/"), 20000), (format!("http://[{VIP6}]/"), 30000)] {
        let seen = spread(topology, &url, first_port, 24)?;
        assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), ["backend1", "backend2"], "{url}: {seen:?}");
        assert!(seen.values().all(|&n| n >= 4), "{url}: uneven spread {seen:?}");
    }
    // Every backend decapsulated, and the lb counted per-backend traffic.
    for decap in decaps {
        assert!(decap.decapsulated()? >= 40, "backend decapsulated too little");
    }
    let stats = lbd.lbctl(&["stats"])?;
    for backend in &topology.backends {
        assert!(stats.contains(&backend.addr4.to_string()), "{stats}");
    }
    // DSR: replies do not cross the lb. The lb's XDP saw only client->VIP packets; a reply
    // would have been passed to its stack, and nothing else talks to the lb here.
    let passed = lb_userspace::dataplane::counters::Counters::open(pin_dir)?.verdicts()?;
    let tx = passed.iter().find(|(s, _)| s.name() == "tx").map(|(_, c)| c.packets).unwrap_or(0);
    let not_vip =
        passed.iter().find(|(s, _)| s.name() == "pass_not_vip").map(|(_, c)| c.packets).unwrap_or(0);
    assert!(tx >= 48 * 5, "only {tx} packets forwarded");
    assert!(not_vip < 10, "{not_vip} non-VIP packets reached the lb: replies are not direct");
    drop(lbd);
    Ok(())
}

#[test]
fn root_e2e_dsr_native() -> Result<()> {
    dsr_end_to_end("native")
}

#[test]
fn root_e2e_dsr_generic() -> Result<()> {
    dsr_end_to_end("generic")
}

/// Path MTU discovery through the balancer: with the lb's link at 1500 bytes, a client's
/// full-size segments no longer fit once encapsulated. The lb answers "fragmentation needed" /
/// "packet too big" from the VIP; the client's kernel accepts it (it caches the smaller path
/// MTU for the VIP), resends smaller segments, and the upload completes.
fn path_mtu_discovery(mode: &str) -> Result<()> {
    let Bed { ref topology, ref dir, ref pin_dir, .. } = bed(mode, "e2e-pmtu")?;
    topology.lb.run("ip", &["link", "set", "eth0", "mtu", "1500"])?;
    let lbd = Lbd::start(&topology.lb, &config(topology, dir, mode, pin_dir)?)?;
    let body = dir.0.join("body");
    std::fs::write(&body, vec![b'x'; 200_000])?;
    let upload = format!("@{}", body.display());
    for (url, vip, mtu) in
        [(format!("http://{VIP4}/"), VIP4, "mtu 1480"), (format!("http://[{VIP6}]/"), VIP6, "mtu 1460")]
    {
        let out = topology.client.run(
            "curl",
            &[
                "-sS",
                "--max-time",
                "10",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--data-binary",
                &upload,
                &url,
            ],
        )?;
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{url}");
        let route = topology.client.run("ip", &["route", "get", vip])?;
        let route = String::from_utf8_lossy(&route.stdout);
        assert!(route.contains(mtu), "the client did not learn the path MTU to {vip}: {route}");
    }
    let stats = lb_userspace::dataplane::counters::Counters::open(pin_dir)?.verdicts()?;
    let sent = stats.iter().find(|(s, _)| s.name() == "icmp_too_big_sent").map_or(0, |(_, c)| c.packets);
    assert!(sent >= 2, "the lb sent {sent} ICMP errors");
    drop(lbd);
    Ok(())
}

#[test]
fn root_e2e_path_mtu_discovery_native() -> Result<()> {
    path_mtu_discovery("native")
}

#[test]
fn root_e2e_path_mtu_discovery_generic() -> Result<()> {
    path_mtu_discovery("generic")
}
