//! Root test: lbd attaches the XDP program to a veth in a namespace, real TCP traffic crosses
//! it, and the per-CPU counters read back through lbctl grow; lbd re-adopts its pinned link.
use std::path::PathBuf;

use anyhow::Result;
use sluice_tests::{
    netns::Topology,
    servers::{Lbd, Nginx, TempDir},
};

/// Parses `lbctl stats` into (verdict, packets, bytes) rows.
fn verdict_rows(text: &str) -> Vec<(String, u64, u64)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            Some((cols.next()?.to_owned(), cols.next()?.parse().ok()?, cols.next()?.parse().ok()?))
        })
        .collect()
}

fn passed(lbd: &Lbd) -> Result<(u64, u64)> {
    let rows = verdict_rows(&lbd.lbctl(&["stats"])?);
    let (_, packets, bytes) = rows.into_iter().find(|(v, _, _)| v == "pass").expect("pass row");
    Ok((packets, bytes))
}

fn curl_lb(topology: &Topology, times: usize) -> Result<()> {
    let url = format!("http://{}/", topology.lb.addr4);
    for _ in 0..times {
        let out = topology.client.run("curl", &["-sS", "--max-time", "5", &url])?;
        assert_eq!(String::from_utf8_lossy(&out.stdout), "lb\n");
    }
    Ok(())
}

fn attach_count_and_readopt(mode: &str) -> Result<()> {
    let topology = Topology::new(0)?;
    let dir = TempDir::new(&format!("attach-{mode}"))?;
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{}", topology.tag));
    let config = dir.0.join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[dataplane]\ninterface = \"eth0\"\nxdp_mode = \"{mode}\"\npin_dir = \"{}\"\n[admin]\nsocket = \"{}/lbd.sock\"\n",
            pin_dir.display(),
            dir.0.display()
        ),
    )?;
    let _nginx = Nginx::start(&topology.lb, "lb")?;
    let lbd = Lbd::start(&topology.lb, &config)?;
    let link = topology.lb.run("ip", &["link", "show", "eth0"])?;
    let expected = if mode == "native" { "xdp " } else { "xdpgeneric" };
    assert!(String::from_utf8_lossy(&link.stdout).contains(expected), "not attached in {mode} mode");

    let (before, _) = passed(&lbd)?;
    curl_lb(&topology, 10)?;
    let (after, bytes) = passed(&lbd)?;
    // Each HTTP exchange is at least SYN, ACK, request, ACK and FIN from the client.
    assert!(after >= before + 50, "pass counter went {before} -> {after}");
    assert!(bytes >= after * 54, "bytes {bytes} too small for {after} packets");

    // SIGKILL lbd: the pinned program keeps counting; a new lbd adopts it and counters continue.
    lbd.sigkill();
    curl_lb(&topology, 2)?;
    let lbd = Lbd::start(&topology.lb, &config)?;
    let (adopted, _) = passed(&lbd)?;
    assert!(adopted >= after + 10, "counters did not continue across SIGKILL: {after} -> {adopted}");
    Ok(())
}
#[test]
fn root_attach_generic_counts_real_traffic() -> Result<()> {
    sluice_tests::require_root();
    attach_count_and_readopt("generic")
}

#[test]
fn root_attach_native_counts_real_traffic() -> Result<()> {
    sluice_tests::require_root();
    attach_count_and_readopt("native")
}
