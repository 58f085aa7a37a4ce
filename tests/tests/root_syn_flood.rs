//! Root test of the per-prefix SYN limit under a real flood: hping3 floods the L4 and the L7 VIP
//! with SYNs from one spoofed source while a real client opens 150 connections to each. Without
//! the limit the flood reaches the backends and lbd's listener; with it XDP drops it
//! (`drop_syn_rate`) and the real connections still succeed.
use std::{process::Stdio, time::Duration};

use anyhow::{Context as _, Result};
use sluice_tests::mixed_bed::{L7, MixedBed, VIP4};

/// The flood's spoofed source (its /24 is what the limit counts).
const SPOOFED: &str = "100.64.7.7";
const FLOOD: Duration = Duration::from_secs(4);

/// What one flood did.
#[derive(Debug)]
struct Round {
    /// SYNs hping3 sent (both floods).
    sent: u64,
    /// Real connections that got their answer, of 300.
    answered: usize,
    /// Packets XDP forwarded to the backends, dropped as over rate, and passed to lbd's stack.
    forwarded: u64,
    dropped: u64,
    passed_l7: u64,
}

fn verdicts(bed: &MixedBed) -> Result<(u64, u64, u64)> {
    let stats: serde_json::Value = serde_json::from_str(&bed.lbd.lbctl(&["-o", "json", "stats"])?)?;
    let counter = |name: &str| {
        stats["counters"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == name)
            .map_or(0, |c| c["packets"].as_u64().unwrap_or(0))
    };
    Ok((counter("tx"), counter("drop_syn_rate"), counter("pass_l7")))
}

fn flood(bed: &MixedBed) -> Result<Round> {
    let client = &bed.topology.client;
    let before = verdicts(bed)?;
    let seconds = FLOOD.as_secs().to_string();
    let floods: Vec<std::process::Child> = [VIP4, L7]
        .iter()
        .map(|vip| {
            client
                .command("timeout")
                .args([
                    "-s", "INT", &seconds, "hping3", "-q", "-S", "-p", "80", "--flood", "-a", SPOOFED, vip,
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("starting hping3")
        })
        .collect::<Result<_>>()?;
    std::thread::sleep(Duration::from_millis(500));
    // 150 real connections to each VIP while the floods run.
    let script = format!(
        "ok=0; for i in $(seq 150); do for v in {VIP4} {L7}; do curl -s -o /dev/null --max-time 2 http://$v/ && ok=$((ok+1)); done; done; echo $ok"
    );
    let real = client.run("sh", &["-c", &script])?;
    let answered: usize = String::from_utf8_lossy(&real.stdout).trim().parse().unwrap_or(0);
    let mut sent = 0;
    for flood in floods {
        let out = flood.wait_with_output()?;
        let said =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        sent += said
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .with_context(|| format!("hping3 said: {said}"))?;
    }
    let after = verdicts(bed)?;
    Ok(Round {
        sent,
        answered,
        forwarded: after.0 - before.0,
        dropped: after.1 - before.1,
        passed_l7: after.2 - before.2,
    })
}

#[test]
fn root_syn_flood_from_one_prefix_is_dropped_in_xdp() -> Result<()> {
    let bed = MixedBed::start("syn-flood", "")?;
    let open = flood(&bed)?;
    println!("no limit: {open:?}");

    // The limit: 100 SYNs a second per prefix, 200 at once; applied by a reload.
    let text = std::fs::read_to_string(&bed.config)?;
    let limited = text.replace(
        "xdp_mode = \"generic\"\n",
        "xdp_mode = \"generic\"\nsyn_rate_per_prefix = 100\nsyn_burst = 200\n",
    );
    std::fs::write(&bed.config, limited)?;
    bed.lbd.lbctl(&["reload"])?;
    let guarded = flood(&bed)?;
    println!("limited: {guarded:?}");

    let allowed = 200 + 100 * (FLOOD.as_secs() + 1);
    assert!(guarded.sent > 10 * allowed, "the flood was too small to show anything: {guarded:?}");
    assert!(
        guarded.answered >= 297,
        "real connections under the limited flood: {guarded:?} (99% of 300: 297)"
    );
    assert!(guarded.dropped + 2 * allowed >= guarded.sent, "XDP did not drop the flood: {guarded:?}");
    // Without the limit the flood went on to the backends and lbd's listener; with it, what
    // went on is the real connections and the allowed rate.
    assert!(
        open.forwarded + open.passed_l7 > 5 * (guarded.forwarded + guarded.passed_l7),
        "{open:?} vs {guarded:?}"
    );
    assert_eq!(open.dropped, 0, "{open:?}");
    Ok(())
}
