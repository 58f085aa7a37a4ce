//! The demo: a namespace topology, lbd with config/demo.toml, real traffic, counters shown.
use std::{path::Path, time::Duration};

use anyhow::Result;
use sluice_tests::{
    netns::{self, Topology},
    servers::{Lbd, Nginx},
};

const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/demo.toml");
const PIN_DIR: &str = "/sys/fs/bpf/sluice-demo";

fn step(text: &str) {
    println!("\n\x1b[1m==> {text}\x1b[0m");
}

fn main() -> Result<()> {
    let keep = std::env::args().any(|a| a == "--keep");
    sluice_tests::require_root();
    // A stale demo (killed hard) would hold the pins: start clean.
    let _ = std::fs::remove_dir_all(PIN_DIR);

    step("topology: client -- router -- lb, and two backends behind the router");
    let topology = Topology::new(2)?;
    let tag = topology.tag.clone();
    ctrlc::set_handler(move || {
        eprintln!("\ninterrupted: tearing down");
        netns::delete_namespaces(&tag);
        let _ = std::fs::remove_dir_all(PIN_DIR);
        std::process::exit(130);
    })?;
    for host in std::iter::once(&topology.client)
        .chain([&topology.lb])
        .chain(&topology.backends)
    {
        println!("  {:<18} {} {}", host.ns, host.addr4, host.addr6);
    }

    step("lbd run -c config/demo.toml (in the lb namespace)");
    let lbd = Lbd::start(&topology.lb, Path::new(CONFIG), Path::new(PIN_DIR))?;
    print!(
        "{}",
        String::from_utf8_lossy(&topology.lb.run("ip", &["-br", "link", "show", "eth0"])?.stdout)
    );
    let _lb_server = Nginx::start(&topology.lb, "lb")?;

    step("client: 20 HTTP requests through the lb's XDP-attached NIC");
    let url = format!("http://{}/", topology.lb.addr4);
    for _ in 0..20 {
        topology
            .client
            .run("curl", &["-sS", "--max-time", "5", "-o", "/dev/null", &url])?;
    }
    println!("  20 requests answered");

    step("lbctl stats");
    print!("{}", lbd.lbctl(&["stats"])?);

    if keep {
        step("--keep: running; enter a namespace with `nsenter --net=/run/netns/<name>`; Ctrl-C tears down");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    step("teardown");
    drop(lbd);
    drop(topology);
    println!("  done: namespaces, links and pins removed");
    Ok(())
}
