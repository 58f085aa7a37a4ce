//! Root test of a binary upgrade (`lbctl upgrade`, the same as SIGUSR2) under load: wrk over
//! HTTP and TLS and h2load over HTTP/2 to L7 VIPs see no failed request and no connection
//! error, 50 long-lived L4 flows through XDP none broken; an upgrade whose new lbd fails its
//! config check leaves the old one serving; the XDP counters continue.
use std::{process::Stdio, time::Duration};

use anyhow::{Context as _, Result};
use sluice_tests::{
    many_hosts::Flows,
    mixed_bed::{L7, MixedBed, VIP4},
    servers::Lbd,
};

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
    let mut bed = MixedBed::start("upgrade", "metrics = \"127.0.0.1:9100\"")?;
    let (path, topology, lbd) = (bed.config.clone(), &bed.topology, &mut bed.lbd);
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
    let before = forwarded(lbd)?;
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
    let mut answered = 0;
    for (what, out) in [("HTTP", read(http)?), ("TLS", read(tls)?)] {
        let line = out.lines().find(|l| l.contains("requests in")).unwrap_or("");
        println!("{what} during the upgrade: {line}");
        answered += line.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        assert!(out.contains("requests in"), "{what}: {out}");
        assert!(!out.contains("Socket errors") && !out.contains("Non-2xx"), "{what} failures: {out}");
    }
    let out = read(h2)?;
    let requests = out.lines().find(|l| l.starts_with("requests:")).context("h2load's summary")?.to_owned();
    println!("HTTP/2 during the upgrade: {requests}");
    assert!(requests.contains(" 0 failed, 0 errored, 0 timeout"), "{out}");
    answered += requests.split_whitespace().nth(1).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
    // The old lbd served its busy HTTP/2 connections to their end, then exited.
    lbd.wait_predecessor(Duration::from_secs(15))?;
    let seen = flows.finish();
    println!("L4 flows: {} broken, longest gap {:?}", seen.broken.len(), seen.gap);
    assert!(seen.broken.is_empty(), "L4 flows broken by the upgrade: {:?}", seen.broken);
    // The counters live in the pinned maps: they continue.
    let after = forwarded(lbd)?;
    assert!(after > before, "the L4 VIP's counter went from {before} to {after}");
    // The proxy's request counters continue too: the old lbd sent its totals once drained.
    let counted = || -> Result<u64> {
        let out = topology.lb.run("curl", &["-sS", "--max-time", "5", "http://127.0.0.1:9100/view"])?;
        let view: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok(view["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|b| b["requests"].as_u64().unwrap_or(0))
            .sum())
    };
    let mut last = 0;
    let settled = sluice_tests::servers::wait_for("the old lbd's counters", Duration::from_secs(10), || {
        last = counted().unwrap_or(0);
        last >= answered
    });
    println!("requests answered by the clients' count {answered}, by the new lbd's counters {last}");
    settled?;
    // At most one in-flight request per connection or stream more (cut off as the clients stopped).
    assert!(last <= answered + 64, "counted {last}, answered {answered}");
    let status = lbd.lbctl(&["status"])?;
    assert!(status.contains("uptime"), "{status}");

    // Listener changes, which a reload refuses, come with an upgrade to the same binary: a
    // listener added (the new lbd binds it) beside the ones it takes over.
    std::fs::write(
        &path,
        format!(
            "{good}\n[[listener]]\nname = \"late\"\naddress = \"{L7}:8080\"\n\n[[route]]\nlistener = \"late\"\npool = \"web\"\n"
        ),
    )?;
    let refused = lbd.lbctl(&["reload"]).expect_err("a reload that adds a listener").to_string();
    assert!(refused.contains("`lbctl upgrade`"), "{refused}");
    lbd.upgrade()?;
    lbd.wait_predecessor(Duration::from_secs(15))?;
    let answer = topology.client.run("curl", &["-sS", "--max-time", "3", &format!("http://{L7}:8080/")])?;
    assert!(String::from_utf8_lossy(&answer.stdout).starts_with("backend"), "{answer:?}");
    Ok(())
}
