//! Root test of docs/deploy.md: every `sh` block runs, in order, where its first line says
//! (`# on: lb`, `lb, lbd running`, `lb, lbd stopped`, `router`, `backend`, `client`) on the
//! namespace bed, with the guide's variables set to the bed's values; blocks marked `# not run
//! by the test: WHY` are skipped, and a block with neither fails the test (the guide stays
//! honest about what was run). The guide ends with a client fetching the VIP through the
//! balancer it set up.
use std::path::Path;

use anyhow::{Context as _, Result, bail, ensure};
use sluice_tests::{
    netns::{Host, Topology},
    servers::{Decap, Lbd, Nginx, TempDir},
};

const VIP: &str = "198.19.0.9";
/// The pins the guide's commands make at their default places.
const DEFAULT_PINS: [&str; 3] =
    ["/sys/fs/bpf/sluice", "/sys/fs/bpf/sluice-decap-eth0", "/sys/fs/bpf/sluice-pass-r1"];

/// One `sh` block of the guide and where it runs.
struct Block {
    on: Option<String>,
    code: String,
}

fn blocks(guide: &str) -> Result<Vec<Block>> {
    let mut out = Vec::new();
    let mut lines = guide.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "```sh" {
            continue;
        }
        let code: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        let first = code.first().copied().unwrap_or_default();
        let on = if let Some(on) = first.strip_prefix("# on: ") {
            Some(on.trim().to_owned())
        } else if first.starts_with("# not run by the test") {
            None
        } else {
            bail!(
                "a block of docs/deploy.md says neither where it runs nor why it is not run:\n{}",
                code.join("\n")
            );
        };
        out.push(Block { on, code: code.join("\n") });
    }
    Ok(out)
}

/// Removes the pins at the guide's default places (a run that failed may have left them).
fn clear_default_pins() {
    for dir in DEFAULT_PINS {
        let _ = std::fs::remove_dir_all(dir);
    }
}

struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        clear_default_pins();
    }
}

#[test]
fn root_deploy_guide_commands_work() -> Result<()> {
    let guide = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/deploy.md"))?;
    let blocks = blocks(&guide)?;
    ensure!(blocks.iter().filter(|b| b.on.is_some()).count() >= 10, "too few blocks run");
    clear_default_pins();
    let _cleanup = Cleanup;
    let topology = Topology::new(2)?;
    let dir = TempDir::new("deploy")?;
    let config = dir.0.join("etc/sluice/sluice.toml");
    let (backend, other) = (&topology.backends[0], &topology.backends[1]);
    // The guide sets up one backend (its commands use the default pin places, one per host);
    // the other is set up the same way by the test's helpers.
    let _nginx = [Nginx::start(backend, "backend1")?, Nginx::start(other, "backend2")?];
    other.make_dsr_backend(&[VIP])?;
    let _decap = Decap::attach(other, "auto")?;
    let path = format!(
        "{}:/usr/local/lib/sluice:{}",
        sluice_tests::bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let vars = [
        ("EDGE_IF", "eth0".to_owned()),
        ("VIP", VIP.to_owned()),
        ("LB_ADDR", topology.lb.addr4.to_string()),
        ("BACKEND1", backend.addr4.to_string()),
        ("BACKEND2", other.addr4.to_string()),
        ("BACKEND_IF", "eth0".to_owned()),
        ("CONFIG", config.display().to_string()),
        ("PATH", path),
    ];
    let mut lbd: Option<Lbd> = None;
    let mut ran = 0;
    for block in &blocks {
        let Some(on) = &block.on else { continue };
        let host: &Host = match on.as_str() {
            "lb" => &topology.lb,
            "lb, lbd running" => {
                if lbd.is_none() {
                    lbd = Some(Lbd::start(&topology.lb, &config)?);
                }
                &topology.lb
            }
            "lb, lbd stopped" => {
                if let Some(running) = lbd.take() {
                    running.stop_keeping_pins();
                }
                &topology.lb
            }
            "router" => &topology.router,
            "backend" => backend,
            "client" => &topology.client,
            other => bail!("unknown place `{other}` in docs/deploy.md"),
        };
        let out = host
            .command("bash")
            .args(["-euo", "pipefail", "-c", &block.code])
            .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .context("running a block of the guide")?;
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        println!("--- on {on}:\n{}\n{stdout}", block.code);
        ensure!(
            out.status.success(),
            "this block of docs/deploy.md failed on {on}:\n{}\n{stdout}{stderr}",
            block.code
        );
        if let (Some(running), Some(line)) =
            (lbd.as_mut(), stdout.lines().find(|l| l.starts_with("upgraded: lbd ")))
        {
            running.upgraded(line)?;
        }
        if block.code.contains("curl -fsS --max-time 5 \"http://$VIP/\"") {
            ensure!(stdout.starts_with("backend"), "the VIP did not answer from a backend: {stdout}");
        }
        ran += 1;
    }
    println!("{ran} blocks of docs/deploy.md ran");
    // Taken away as the guide's last block says: no XDP left on the lb's NIC.
    let link = topology.lb.run("ip", &["-details", "link", "show", "dev", "eth0"])?;
    ensure!(!String::from_utf8_lossy(&link.stdout).contains("xdp"), "XDP still attached");
    backend.run(
        sluice_tests::bin_dir().join("lbd").to_str().context("path")?,
        &["decap", "--iface", "eth0", "--detach"],
    )?;
    topology.router.run(
        sluice_tests::bin_dir().join("lbd").to_str().context("path")?,
        &["pass", "--iface", "r1", "--detach"],
    )?;
    Ok(())
}
