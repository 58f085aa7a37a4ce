//! Root test of a binary upgrade (`lbctl upgrade`, the same as SIGUSR2) under load: wrk over
//! HTTP and TLS and h2load over HTTP/2 to L7 VIPs see no failed request and no connection
//! error, 50 long-lived L4 flows through XDP none broken; an upgrade whose new lbd fails its
//! config check leaves the old one serving; the XDP counters continue.
use std::{path::PathBuf, process::Stdio, time::Duration};

use anyhow::{Context as _, Result};
use sluice_tests::{
    many_hosts::Flows,
    netns::{Topology, mac_text},
    pki::TestCa,
    servers::{Decap, Lbd, Nginx, TempDir, wait_for},
};

/// The L4 VIP (DSR to the backends) and the L7 VIP (lbd's listeners).
const VIP4: &str = "198.19.0.1";
const L7: &str = "198.19.0.3";

fn config(topology: &Topology, dir: &TempDir, ca: &TestCa) -> Result<PathBuf> {
    let (cert, key) = ca.leaf("site", &["example.test"], false)?;
    let b = &topology.backends;
    let text = format!(
        "[dataplane]\ninterface = \"eth0\"\nxdp_mode = \"generic\"\npin_dir = \"/sys/fs/bpf/{tag}\"\nnext_hop_mac = \"{mac}\"\n\n\
         [[vip]]\nname = \"l4\"\naddress = \"{VIP4}\"\nport = 80\nprotocol = \"tcp\"\npool = \"web\"\n\n\
         [[vip]]\nname = \"http\"\naddress = \"{L7}\"\nport = 80\nprotocol = \"tcp\"\npool = \"web\"\nmode = \"l7\"\n\n\
         [[vip]]\nname = \"https\"\naddress = \"{L7}\"\nport = 443\nprotocol = \"tcp\"\npool = \"web\"\nmode = \"l7\"\n\n\
         [[pool]]\nname = \"web\"\nbackends = [{{ address = \"{a}\" }}, {{ address = \"{b}\" }}]\n\n\
         [[listener]]\nname = \"http\"\naddress = \"{L7}:80\"\n\n\
         [[listener]]\nname = \"https\"\naddress = \"{L7}:443\"\ntls = {{ certificates = [{{ cert = \"{cert}\", key = \"{key}\" }}] }}\n\n\
         [[route]]\nlistener = \"http\"\npool = \"web\"\n\n[[route]]\nlistener = \"https\"\npool = \"web\"\n\n\
         [admin]\nsocket = \"{dir}/lbd.sock\"\n",
        tag = topology.tag,
        mac = mac_text(topology.router_mac_to_lb),
        a = b[0].addr4,
        b = b[1].addr4,
        cert = cert.display(),
        key = key.display(),
        dir = dir.0.display(),
    );
    let path = dir.0.join("sluice.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Forwarded packets of the L4 VIP, from lbctl stats.
fn forwarded(lbd: &Lbd) -> Result<u64> {
    let stats = lbd.lbctl(&["-o", "json", "stats"])?;
    let v: serde_json::Value = serde_json::from_str(&stats)?;
    Ok(v["vips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|vip| vip["address"] == VIP4)
        .map(|vip| vip["traffic"]["packets"].as_u64().unwrap_or(0))
        .sum())
}

#[test]
fn root_upgrade_under_load_loses_nothing() -> Result<()> {
    let topology = Topology::new(2)?;
    let dir = TempDir::new("upgrade")?;
    let ca = TestCa::new(&dir.0)?;
    let mut servers = Vec::new();
    let mut decaps = Vec::new();
    for (i, backend) in topology.backends.iter().enumerate() {
        backend.make_dsr_backend(&[VIP4])?;
        servers.push(Nginx::start(backend, &format!("backend{}", i + 1))?);
        decaps.push(Decap::attach(backend, "generic")?);
    }
    topology.lb.run("ip", &["addr", "add", &format!("{L7}/32"), "dev", "lo"])?;
    let path = config(&topology, &dir, &ca)?;
    let mut lbd = Lbd::start(&topology.lb, &path)?;
    wait_for("the https listener", Duration::from_secs(5), || {
        topology.lb.run("ss", &["-Htln", "sport = :443"]).map(|o| !o.stdout.is_empty()).unwrap_or(false)
    })?;

    // Load: HTTP and TLS keep-alive (wrk), HTTP/2 over TLS (h2load), 50 long-lived L4 flows.
    let flows = Flows::start(&topology.client, VIP4, 50, Duration::from_secs(9))?;
    let client = &topology.client;
    let wrk = |url: &str, connections: &str| {
        client.command("wrk").args(["-t1", connections, "-d7s", url]).stdout(Stdio::piped()).spawn()
    };
    let http = wrk(&format!("http://{L7}/"), "-c16")?;
    let tls = wrk(&format!("https://{L7}/"), "-c8")?;
    let h2 = client
        .command("h2load")
        .args(["-c4", "-m4", "-D", "7", &format!("https://{L7}/")])
        .stdout(Stdio::piped())
        .spawn()?;
    let before = forwarded(&lbd)?;
    std::thread::sleep(Duration::from_secs(2));

    // The upgrade: a new lbd on the same binary path takes the sockets over.
    let said = lbd.upgrade()?;
    println!("{}", said.trim());
    std::thread::sleep(Duration::from_millis(500));

    // A new binary that fails (here: its config check) leaves the serving lbd alone.
    let good = std::fs::read_to_string(&path)?;
    std::fs::write(&path, format!("{good}\nnot_a_setting = 1\n"))?;
    let refused = lbd.lbctl(&["upgrade"]);
    std::fs::write(&path, &good)?;
    let refused = refused.expect_err("an upgrade to a failing lbd must be refused").to_string();
    assert!(refused.contains("keeps serving"), "{refused}");
    std::thread::sleep(Duration::from_secs(1));

    let read = |child: std::process::Child| -> Result<String> {
        Ok(String::from_utf8_lossy(&child.wait_with_output()?.stdout).into_owned())
    };
    for (what, out) in [("HTTP", read(http)?), ("TLS", read(tls)?)] {
        println!(
            "{what} during the upgrade: {}",
            out.lines().find(|l| l.contains("requests in")).unwrap_or("")
        );
        assert!(out.contains("requests in"), "{what}: {out}");
        assert!(!out.contains("Socket errors") && !out.contains("Non-2xx"), "{what} failures: {out}");
    }
    let out = read(h2)?;
    let requests = out.lines().find(|l| l.starts_with("requests:")).context("h2load's summary")?.to_owned();
    println!("HTTP/2 during the upgrade: {requests}");
    assert!(requests.contains(" 0 failed, 0 errored, 0 timeout"), "{out}");
    // The old lbd served its busy HTTP/2 connections to their end, then exited.
    lbd.wait_predecessor(Duration::from_secs(15))?;
    let seen = flows.finish();
    println!("L4 flows: {} broken, longest gap {:?}", seen.broken.len(), seen.gap);
    assert!(seen.broken.is_empty(), "L4 flows broken by the upgrade: {:?}", seen.broken);
    // The counters live in the pinned maps: they continue.
    let after = forwarded(&lbd)?;
    assert!(after > before, "the L4 VIP's counter went from {before} to {after}");
    let status = lbd.lbctl(&["status"])?;
    assert!(status.contains("uptime"), "{status}");
    drop(lbd);
    Ok(())
}
