//! Root tests of the live view. The status page (`/` beside `/metrics`): headless Chromium
//! (Debian's) loads it from the balancer's namespace after real L4 and L7 traffic, a screenshot
//! is taken, and the numbers the page shows match the admin API's: each backend's health,
//! weight and share, its packets (XDP) and requests (proxy), the VIPs' packets and the verdict
//! counters. `lbctl top`: driven in tmux under traffic, its screen read back, `q` quits.
use std::{collections::BTreeMap, path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result, ensure};
use sluice_tests::mixed_bed::{L7, MixedBed, VIP4};

/// The page's `data-key` cells after its script ran: key -> text.
fn shown(dom: &str) -> BTreeMap<String, String> {
    let mut cells = BTreeMap::new();
    for part in dom.split("data-key=\"").skip(1) {
        let Some((key, rest)) = part.split_once('"') else { continue };
        let Some(text) = rest.split_once('>').and_then(|(_, t)| t.split_once('<')).map(|(t, _)| t) else {
            continue;
        };
        cells.insert(key.to_owned(), text.to_owned());
    }
    cells
}

#[test]
fn root_live_view_page_shows_what_the_admin_api_says() -> Result<()> {
    let bed = MixedBed::start("live-view", "metrics = \"127.0.0.1:9100\"")?;
    let (client, lb) = (&bed.topology.client, &bed.topology.lb);
    for url in [format!("http://{VIP4}/"), format!("http://{L7}/")] {
        for _ in 0..20 {
            client.run("curl", &["-sS", "--max-time", "5", "-o", "/dev/null", &url])?;
        }
    }
    std::thread::sleep(Duration::from_millis(300));

    // The page, after its script has polled /view twice.
    let chromium = |extra: &[&str]| -> Result<String> {
        let mut args = vec![
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1200,640",
            "--virtual-time-budget=2500",
        ];
        args.extend_from_slice(extra);
        args.push("http://127.0.0.1:9100/");
        let out = lb.command("chromium").args(&args).output().context("running chromium")?;
        ensure!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let dom = chromium(&["--dump-dom"])?;
    let cells = shown(&dom);
    ensure!(!cells.is_empty(), "the page shows no numbers:\n{dom}");

    // The admin API's numbers (no traffic runs now: they do not move between the two reads).
    let view: serde_json::Value = serde_json::from_str(&bed.lbd.lbctl(&["-o", "json", "stats"])?)?;
    let pool = bed.lbd.pool_show("web")?;
    for backend in &bed.topology.backends {
        let key = format!("web/{}", backend.addr4);
        let (health, weight) = &pool[&backend.addr4.to_string()];
        ensure!(
            cells.get(&format!("health-{key}")).map(String::as_str)
                == Some(if health == "up" { "up" } else { "DOWN" }),
            "health of {key}: {cells:?} vs {pool:?}"
        );
        ensure!(
            cells.get(&format!("share-{key}")).map(String::as_str) == Some("50.0"),
            "share of {key}: {cells:?}"
        );
        ensure!(
            cells[&format!("weight-{key}")] == weight.to_string(),
            "weight of {key}: {cells:?} vs {pool:?}"
        );
        let packets = view["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["address"] == backend.addr4.to_string())
            .map(|b| b["traffic"]["packets"].as_u64().unwrap_or(0))
            .context("backend in lbctl stats")?;
        ensure!(
            cells[&format!("packets-{key}")] == packets.to_string(),
            "packets of {key}: {cells:?} vs {packets}"
        );
        ensure!(packets > 0, "no L4 packets reached {key}");
    }
    let requests: u64 = bed
        .topology
        .backends
        .iter()
        .map(|b| cells[&format!("requests-web/{}", b.addr4)].parse::<u64>().unwrap_or(0))
        .sum();
    ensure!(requests == 20, "the page shows {requests} proxied requests, 20 were made: {cells:?}");
    let vip_packets = view["vips"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["address"] == VIP4)
        .map(|v| v["traffic"]["packets"].as_u64().unwrap_or(0))
        .context("the L4 VIP in lbctl stats")?;
    ensure!(cells["vip-packets-l4"] == vip_packets.to_string(), "VIP packets: {cells:?} vs {vip_packets}");
    for counter in view["counters"].as_array().into_iter().flatten() {
        let (name, packets) =
            (counter["name"].as_str().unwrap_or_default(), counter["packets"].as_u64().unwrap_or(0));
        if packets > 0 {
            ensure!(
                cells
                    .get(&format!("verdict-{name}"))
                    .is_some_and(|shown| shown.parse::<u64>().is_ok_and(|n| n.abs_diff(packets) <= 10)),
                "verdict {name}: page {:?}, lbctl {packets}",
                cells.get(&format!("verdict-{name}"))
            );
        }
    }

    // The screenshot (docs/status-page.png: SLUICE_CAPTURE=DIR keeps it), under traffic so
    // that the rates move: wrk on both VIPs for 3 s.
    let screenshot = bed.dir.0.join("status-page.png");
    std::thread::scope(|scope| -> Result<()> {
        for url in [format!("http://{VIP4}/"), format!("http://{L7}/")] {
            scope.spawn(move || client.command("wrk").args(["-t1", "-c4", "-d3s", &url]).output());
        }
        std::thread::sleep(Duration::from_millis(1500));
        chromium(&[&format!("--screenshot={}", screenshot.display())]).map(|_| ())
    })?;
    let png = std::fs::read(&screenshot)?;
    ensure!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "no screenshot");
    if let Some(dir) = std::env::var_os("SLUICE_CAPTURE") {
        std::fs::write(Path::new(&dir).join("status-page.png"), &png)?;
    }
    println!("the page showed {} numbers; screenshot {} bytes", cells.len(), png.len());
    Ok(())
}

/// Whether a backend's row in `lbctl top` shows both kinds of traffic moving (its numbers:
/// weight, share, packets/s, new flows/s, requests/s, …).
fn moving(row: &str) -> bool {
    let numbers: Vec<f64> = row.split_whitespace().filter_map(|w| w.trim_matches('│').parse().ok()).collect();
    numbers.len() >= 5 && numbers[2] > 0.0 && numbers[4] > 0.0
}

#[test]
fn root_live_view_lbctl_top_in_tmux() -> Result<()> {
    let bed = MixedBed::start("top", "")?;
    let client = &bed.topology.client;
    let tmux = |args: &[&str]| -> Result<String> {
        let socket = format!("sluice-test-{}", std::process::id());
        let out = Command::new("tmux").arg("-L").arg(&socket).args(args).output().context("running tmux")?;
        ensure!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let lbctl = sluice_tests::bin_dir().join("lbctl");
    let top = format!("{} --socket {} top", lbctl.display(), bed.lbd.socket.display());
    let screen = std::thread::scope(|scope| -> Result<String> {
        for url in [format!("http://{VIP4}/"), format!("http://{L7}/")] {
            // 16 connections: Maglev puts at least one on each backend (4 left all on one
            // backend in 1 run of 8, and that backend's row without L4 packets).
            scope.spawn(move || client.command("wrk").args(["-t1", "-c16", "-d4s", &url]).output());
        }
        tmux(&["new-session", "-d", "-s", "top", "-x", "150", "-y", "24", &top])?;
        // Rates need two of lbctl top's samples: the screen is read until every backend's row
        // shows traffic, for as long as the load runs (a slow machine took over 2.5 s).
        let started = std::time::Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(250));
            let screen = tmux(&["capture-pane", "-p", "-t", "top"])?;
            let all_moving = bed
                .topology
                .backends
                .iter()
                .all(|b| screen.lines().find(|l| l.contains(&b.addr4.to_string())).is_some_and(moving));
            if all_moving || started.elapsed() >= Duration::from_millis(3500) {
                break Ok(screen);
            }
        }
    })?;
    println!("{screen}");
    if let Some(dir) = std::env::var_os("SLUICE_CAPTURE") {
        std::fs::write(Path::new(&dir).join("lbctl-top.txt"), &screen)?;
    }
    ensure!(
        screen.contains("backends (by traffic)") && screen.contains("q quits"),
        "not lbctl top:\n{screen}"
    );
    for backend in &bed.topology.backends {
        let row =
            screen.lines().find(|l| l.contains(&backend.addr4.to_string())).context("a backend's row")?;
        ensure!(moving(row), "no rates for {}: {row}", backend.addr4);
        ensure!(row.contains(" up "), "{row}");
    }
    let vip_row =
        screen.lines().find(|l| l.contains(&format!("{VIP4}:80/tcp"))).context("the L4 VIP's row")?;
    ensure!(vip_row.split_whitespace().filter_map(|w| w.parse::<f64>().ok()).any(|n| n > 0.0), "{vip_row}");
    // `q` quits and gives the terminal back.
    tmux(&["send-keys", "-t", "top", "q"])?;
    sluice_tests::servers::wait_for("lbctl top to quit on q", Duration::from_secs(3), || {
        tmux(&["has-session", "-t", "top"]).is_err()
    })?;
    Ok(())
}
