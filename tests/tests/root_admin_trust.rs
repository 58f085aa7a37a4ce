//! Root tests of the control plane against hostile or mistaken use: a second lbd on the same
//! pin directory, `lbd stop --detach` under a running lbd, a foreign-owned pin directory, an
//! oversized or slow admin request, a plan that names a path, a FIFO as a config, lbctl's
//! timeout, closed pipe and `--watch 0`.
use std::{
    io::{Read, Write},
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use sluice_tests::{
    netns::{Topology, mac_text},
    servers::{Lbd, TempDir},
};

const VIP: &str = "198.19.0.1";

fn config(topology: &Topology, dir: &Path) -> Result<std::path::PathBuf> {
    let path = dir.join("sluice.toml");
    std::fs::write(
        &path,
        format!(
            "[dataplane]\ninterface = \"eth0\"\nxdp_mode = \"generic\"\npin_dir = \"/sys/fs/bpf/{tag}\"\n\
             next_hop_mac = \"{mac}\"\n\n[[vip]]\nname = \"web\"\naddress = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\n\
             pool = \"web\"\n\n[[pool]]\nname = \"web\"\nbackends = [{{ address = \"{b1}\" }}]\n\n\
             [admin]\nsocket = \"{dir}/lbd.sock\"\nmetrics = \"127.0.0.1:9100\"\n",
            tag = topology.tag,
            mac = mac_text(topology.router_mac_to_lb),
            b1 = topology.backends[0].addr4,
            dir = dir.display(),
        ),
    )?;
    Ok(path)
}

fn lbd_bin() -> String {
    sluice_tests::bin_dir().join("lbd").display().to_string()
}

fn lbctl_bin() -> String {
    sluice_tests::bin_dir().join("lbctl").display().to_string()
}

/// One raw HTTP exchange on the admin socket; returns the status line.
fn admin_raw(socket: &Path, request: &[u8]) -> Result<String> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    // A refused body may close the connection before all of it is written.
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    Ok(String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_owned())
}

#[test]
fn root_trust_one_lbd_per_pin_directory() -> Result<()> {
    let topology = Topology::new(1)?;
    let dir = TempDir::new("trust-instance")?;
    let config = config(&topology, &dir.0)?;
    let lbd = Lbd::start(&topology.lb, &config)?;
    let config_arg = config.to_str().context("path")?;
    // A second lbd on the same config fails at once, with a message, and touches nothing.
    let started = Instant::now();
    let second = topology.lb.command(&lbd_bin()).args(["run", "-c", config_arg]).output()?;
    assert!(!second.status.success(), "a second lbd started");
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(said.contains("another lbd is running"), "{said}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(lbd.lbctl(&["status"])?.contains("eth0"), "the first lbd is unreachable");
    // `lbd stop --detach` under a running lbd is refused; the program stays attached.
    let stop = topology.lb.command(&lbd_bin()).args(["stop", "--detach", "-c", config_arg]).output()?;
    assert!(!stop.status.success(), "detached under a running lbd");
    assert!(String::from_utf8_lossy(&stop.stderr).contains("another lbd is running"));
    assert!(lbd.pin_dir.join("link").exists(), "the link pin is gone");
    drop(lbd);

    // A pin directory another user owns, or anyone may write, is refused before anything.
    let pin_dir = std::path::PathBuf::from(format!("/sys/fs/bpf/{}", topology.tag));
    let _ = std::fs::remove_dir_all(&pin_dir);
    std::fs::create_dir_all(&pin_dir)?;
    std::os::unix::fs::chown(&pin_dir, Some(65534), Some(65534))?;
    let foreign = topology.lb.command(&lbd_bin()).args(["run", "-c", config_arg]).output()?;
    assert!(!foreign.status.success());
    assert!(String::from_utf8_lossy(&foreign.stderr).contains("owned by uid 65534"), "{foreign:?}");
    std::os::unix::fs::chown(&pin_dir, Some(0), Some(0))?;
    std::fs::set_permissions(&pin_dir, std::fs::Permissions::from_mode(0o777))?;
    let open = topology.lb.command(&lbd_bin()).args(["run", "-c", config_arg]).output()?;
    assert!(!open.status.success());
    assert!(String::from_utf8_lossy(&open.stderr).contains("writable by group or others"), "{open:?}");
    std::fs::remove_dir_all(&pin_dir)?;

    // `lbd decap` on an interface that does not exist fails and leaves no pins behind.
    let decap_dir = format!("/sys/fs/bpf/{}-decap-nonexist0", topology.tag);
    let decap = topology
        .lb
        .command(&lbd_bin())
        .args(["decap", "--iface", "nonexist0", "--pin-dir", &decap_dir])
        .output()?;
    assert!(!decap.status.success());
    assert!(!Path::new(&decap_dir).exists(), "a failed decap left its pins");
    // `lbd pass` puts the pass program on a veth peer (the router's end) and takes it off.
    let pass_dir = format!("/sys/fs/bpf/{}-r1-pass", topology.tag);
    let pass = topology
        .router
        .command(&lbd_bin())
        .args(["pass", "--iface", "r1", "--pin-dir", &pass_dir])
        .output()?;
    assert!(pass.status.success(), "{}", String::from_utf8_lossy(&pass.stderr));
    let shown = topology.router.run("ip", &["link", "show", "r1"])?;
    assert!(String::from_utf8_lossy(&shown.stdout).contains("xdp"), "no XDP program on r1");
    let off = topology
        .router
        .command(&lbd_bin())
        .args(["pass", "--iface", "r1", "--pin-dir", &pass_dir, "--detach"])
        .output()?;
    assert!(off.status.success() && !Path::new(&pass_dir).exists());
    Ok(())
}

#[test]
fn root_trust_admin_input_is_bounded() -> Result<()> {
    let topology = Topology::new(1)?;
    let dir = TempDir::new("trust-admin")?;
    let config = config(&topology, &dir.0)?;
    let lbd = Lbd::start(&topology.lb, &config)?;
    let socket = lbd.socket.clone();

    // A 300 MB body is refused after 1 MiB, and lbd's memory does not grow with it.
    let before = sluice_tests::rss_bytes(lbd.pid());
    let status = std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<String> {
                let mut stream = UnixStream::connect(&socket)?;
                stream.set_read_timeout(Some(Duration::from_secs(15)))?;
                stream.write_all(
                    b"POST /commands HTTP/1.1\r\nHost: lbd\r\nContent-Length: 300000000\r\n\r\n",
                )?;
                let chunk = vec![b'x'; 1 << 20];
                for _ in 0..300 {
                    if stream.write_all(&chunk).is_err() {
                        break; // lbd closed it, as it should
                    }
                }
                let mut answer = Vec::new();
                let _ = stream.read_to_end(&mut answer);
                Ok(String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_owned())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))?
    })?;
    assert!(status.is_empty() || status.contains("413"), "{status}");
    let grown = sluice_tests::rss_bytes(lbd.pid()).saturating_sub(before);
    assert!(grown < 64 << 20, "lbd grew by {grown} bytes on a refused body");

    // Commands that are the State's own (probe results, pools, VIPs) are not on the API.
    for body in [
        r#"{"command": "remove_vip", "name": "web"}"#,
        r#"{"command": "add_vip", "name": "nonexistent"}"#,
        r#"{"command": "set_health", "pool": "web", "address": "10.0.0.1", "healthy": false}"#,
        r#"[{"command": "add_deny", "prefix": "192.0.2.0/24"}, {"command": "remove_pool", "pool": "web"}]"#,
    ] {
        let request = format!(
            "POST /commands HTTP/1.1\r\nHost: lbd\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        assert!(admin_raw(&socket, request.as_bytes())?.contains("400"), "{body} was accepted");
    }
    assert!(lbd.lbctl(&["vip", "list"])?.contains("web"), "a refused command changed the VIPs");
    assert!(!lbd.lbctl(&["deny", "list"])?.contains("192.0.2.0"), "half of a refused list was applied");
    // The operator's own deny commands through lbctl: added, listed, removed.
    lbd.lbctl(&["deny", "add", "192.0.2.0/24"])?;
    assert!(lbd.lbctl(&["deny", "list"])?.contains("192.0.2.0/24"), "lbctl deny add");
    lbd.lbctl(&["deny", "remove", "192.0.2.0/24"])?;
    assert!(!lbd.lbctl(&["deny", "list"])?.contains("192.0.2.0"), "lbctl deny remove");

    // A plan names no path: lbd refuses the old `config` field, lbctl sends the text.
    let body = r#"{"config": "/dev/zero"}"#;
    let request = format!(
        "POST /plan HTTP/1.1\r\nHost: lbd\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let started = Instant::now();
    assert!(admin_raw(&socket, request.as_bytes())?.contains("400"));
    assert!(started.elapsed() < Duration::from_secs(5));
    let plan = lbd.lbctl(&["plan", "-c", config.to_str().context("path")?])?;
    assert!(plan.contains("buckets moved"), "{plan}");
    // A FIFO as a config: lbctl, `lbd check` and a plan all say so at once instead of hanging.
    let fifo = dir.0.join("fifo.toml");
    let fifo_c = std::ffi::CString::new(fifo.to_str().context("path")?)?;
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo_c.as_ptr(), 0o600) }, 0);
    let started = Instant::now();
    let lbctl = topology
        .lb
        .command(&lbctl_bin())
        .args(["--socket", socket.to_str().context("path")?, "plan", "-c", fifo.to_str().context("path")?])
        .output()?;
    assert!(!lbctl.status.success() && String::from_utf8_lossy(&lbctl.stderr).contains("not a regular file"));
    let check =
        topology.lb.command(&lbd_bin()).args(["check", "-c", fifo.to_str().context("path")?]).output()?;
    let said =
        format!("{}{}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr));
    assert!(!check.status.success() && said.contains("not a regular file"), "{said}");
    assert!(started.elapsed() < Duration::from_secs(5), "a FIFO hung a reader");

    // A connection that sends nothing is closed by lbd's read timeout (10 s).
    let mut idle = UnixStream::connect(&socket)?;
    idle.set_read_timeout(Some(Duration::from_secs(20)))?;
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = idle.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() < Duration::from_secs(15), "an idle admin connection stayed open");
    // More than 64 connections at once: the extra ones are closed, lbctl still gets through
    // once they are gone.
    let held: Vec<UnixStream> = (0..70).map(|_| UnixStream::connect(&socket)).collect::<Result<_, _>>()?;
    std::thread::sleep(Duration::from_millis(300));
    let mut refused = 0;
    for mut stream in held.iter().skip(64) {
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        if matches!(stream.read(&mut buf), Ok(0)) {
            refused += 1;
        }
    }
    assert_eq!(refused, 6, "connections over the cap were not closed");
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    assert!(lbd.lbctl(&["status"])?.contains("eth0"));

    // Liveness and readiness.
    for path in ["/live", "/ready"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: lbd\r\nConnection: close\r\n\r\n");
        assert!(admin_raw(&socket, request.as_bytes())?.contains("200"), "{path}");
    }
    // lbctl and the API speak names, not codes or serde's shapes.
    let status = lbd.lbctl(&["status"])?;
    assert!(status.contains("eth0") && !status.contains("\"eth0\""), "{status}");
    let flow = lbd.lbctl(&["-o", "json", "flow", &format!("{VIP}:80"), "tcp", "10.9.9.9:40000"])?;
    assert!(flow.contains("\"action\": \"tx\""), "{flow}");
    let scrape = topology.lb.run("curl", &["-sS", "http://127.0.0.1:9100/metrics"])?;
    let scrape = String::from_utf8_lossy(&scrape.stdout);
    assert!(scrape.contains("protocol=\"tcp\"") && !scrape.contains("protocol=\"6\""), "{scrape}");

    // Metrics carry a content type Prometheus accepts: OpenMetrics when asked for (Prometheus's
    // Accept header), else the 0.0.4 text format, which promtool checks.
    let accept = "Accept: application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3";
    let metrics = topology
        .lb
        .run("curl", &["-sS", "-H", accept, "-D", "-", "-o", "/dev/null", "http://127.0.0.1:9100/metrics"])?;
    let head = String::from_utf8_lossy(&metrics.stdout).to_ascii_lowercase();
    assert!(head.contains("content-type: application/openmetrics-text"), "{head}");
    let metrics =
        topology.lb.run("curl", &["-sS", "-D", "-", "-o", "/dev/null", "http://127.0.0.1:9100/metrics"])?;
    let head = String::from_utf8_lossy(&metrics.stdout).to_ascii_lowercase();
    assert!(head.contains("content-type: text/plain; version=0.0.4"), "{head}");
    let promtool = "/usr/local/lib/sluice/promtool";
    anyhow::ensure!(Path::new(promtool).exists(), "{promtool} missing: run scripts/setup");
    let checked = topology
        .lb
        .command("sh")
        .args(["-c", &format!("curl -sS http://127.0.0.1:9100/metrics | {promtool} check metrics")])
        .output()?;
    let said =
        format!("{}{}", String::from_utf8_lossy(&checked.stdout), String::from_utf8_lossy(&checked.stderr));
    assert!(checked.status.success() && said.trim().is_empty(), "promtool check metrics: {said}");

    // lbctl: `--watch 0` is refused, a closed pipe ends it quietly, a silent lbd times out.
    let watch0 = topology
        .lb
        .command(&lbctl_bin())
        .args(["--socket", socket.to_str().context("path")?, "stats", "--watch", "0"])
        .output()?;
    assert!(!watch0.status.success());
    let piped = topology
        .lb
        .command("sh")
        .args(["-c", &format!("{} --socket {} stats --watch 1 | head -1", lbctl_bin(), socket.display())])
        .stderr(Stdio::piped())
        .output()?;
    assert!(!String::from_utf8_lossy(&piped.stderr).contains("panicked"), "{piped:?}");
    let silent = dir.0.join("silent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&silent)?; // accepts, never answers
    let started = Instant::now();
    let timed = topology
        .lb
        .command(&lbctl_bin())
        .args(["--socket", silent.to_str().context("path")?, "--timeout", "1", "status"])
        .output()?;
    assert!(!timed.status.success() && String::from_utf8_lossy(&timed.stderr).contains("did not answer"));
    assert!(started.elapsed() < Duration::from_secs(5));
    Ok(())
}

#[test]
fn root_trust_reload_refuses_what_needs_a_restart() -> Result<()> {
    let topology = Topology::new(1)?;
    let dir = TempDir::new("trust-reload")?;
    let config = config(&topology, &dir.0)?;
    let log = dir.0.join("lbd.log");
    let lbd = Lbd::start_logging(&topology.lb, &config, Some(&log))?;
    // A new listener cannot start on SIGHUP: the reload says so instead of "applied".
    let original = std::fs::read_to_string(&config)?;
    let mut text = original.clone();
    text.push_str("\n[[listener]]\nname = \"late\"\naddress = \"127.0.0.1:18443\"\n");
    std::fs::write(&config, text)?;
    lbd.signal(libc::SIGHUP);
    sluice_tests::servers::wait_for("the reload's verdict", Duration::from_secs(5), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("reload refused"))
    })?;
    let said = std::fs::read_to_string(&log)?;
    assert!(said.contains("a restart is needed"), "{said}");
    assert!(!said.contains("reload applied") && !said.contains("certificates reloaded"), "{said}");
    assert!(!said.contains("admin connection from"), "every lbctl call logged at INFO");
    // `lbctl reload` takes the same path and answers with its result; status and metrics keep it.
    let refused = lbd.lbctl(&["reload"]).expect_err("a refused reload succeeded").to_string();
    assert!(refused.contains("a restart is needed"), "{refused}");
    let scrape = |topology: &Topology| -> Result<String> {
        Ok(String::from_utf8_lossy(
            &topology.lb.run("curl", &["-sS", "http://127.0.0.1:9100/metrics"])?.stdout,
        )
        .into_owned())
    };
    assert!(scrape(&topology)?.contains("sluice_reload_last_success 0"));
    std::fs::write(&config, &original)?;
    let applied = lbd.lbctl(&["reload"])?;
    assert!(applied.contains("reload applied"), "{applied}");
    let metrics = scrape(&topology)?;
    for expected in [
        "sluice_reload_last_success 1",
        "sluice_xdp_attached 1",
        "sluice_build_info{version=",
        "sluice_process_open_fds",
    ] {
        assert!(metrics.contains(expected), "no `{expected}` in the metrics");
    }
    assert!(lbd.lbctl(&["status"])?.contains("last_reload"));

    // A config on a read-only mount does not block a drain: applied, and said to be temporary.
    let d = dir.0.to_str().context("path")?;
    sluice_tests::netns::run("mount", &["--bind", d, d])?;
    let remounted = sluice_tests::netns::run("mount", &["-o", "remount,ro,bind", d]);
    let backend = topology.backends[0].addr4.to_string();
    let drained = remounted.and_then(|_| lbd.lbctl(&["backend", "drain", "web", &backend]));
    let pool = lbd.lbctl(&["pool", "show", "web"]);
    let _ = sluice_tests::netns::run("umount", &[d]);
    let drained = drained?;
    assert!(drained.contains("read-only"), "{drained}");
    assert!(pool?.to_ascii_lowercase().contains("drain"), "the drain was not applied");
    Ok(())
}

#[test]
fn root_trust_systemd_unit_is_hardened() -> Result<()> {
    // systemd-analyze's offline check of the shipped unit: exposure 5.0 or lower.
    let unit = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/sluice.service");
    let out = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=50"])
        .arg(&unit)
        .output()
        .context("running systemd-analyze (package systemd)")?;
    let said = String::from_utf8_lossy(&out.stdout);
    let overall = said.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_default().to_owned();
    assert!(out.status.success(), "exposure above 5.0: {overall}\n{}", String::from_utf8_lossy(&out.stderr));
    let level: f64 = overall
        .split("sluice.service: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .context("no exposure level in systemd-analyze's output")?;
    assert!(level <= 5.0, "{overall}");
    Ok(())
}

#[test]
fn root_trust_l7_only_host_runs_without_dataplane() -> Result<()> {
    let topology = Topology::new(1)?;
    let dir = TempDir::new("trust-l7only")?;
    let _nginx = sluice_tests::servers::Nginx::start(&topology.backends[0], "backend1")?;
    let config = dir.0.join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[[pool]]\nname = \"web\"\nbackends = [{{ address = \"{b1}\" }}]\n\n\
             [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:18080\"\n\n[[route]]\nlistener = \"l\"\npool = \"web\"\n\n\
             [admin]\nsocket = \"{dir}/lbd.sock\"\n",
            b1 = topology.backends[0].addr4,
            dir = dir.0.display(),
        ),
    )?;
    let check =
        topology.lb.command(&lbd_bin()).args(["check", "-c", config.to_str().context("path")?]).output()?;
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
    let mut lbd =
        topology.lb.command(&lbd_bin()).args(["run", "-c", config.to_str().context("path")?]).spawn()?;
    let socket = dir.0.join("lbd.sock");
    let answered =
        sluice_tests::servers::wait_for("the L7-only lbd to answer", Duration::from_secs(10), || {
            topology
                .lb
                .run("curl", &["-sS", "--max-time", "2", "http://127.0.0.1:18080/"])
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("backend1"))
        });
    let status = topology
        .lb
        .run(&lbctl_bin(), &["--socket", socket.to_str().context("path")?, "status"])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let pins = std::fs::read_dir("/sys/fs/bpf")?
        .flatten()
        .any(|e| e.file_name().to_string_lossy().contains(&topology.tag));
    // SAFETY: signalling our own child by PID.
    unsafe { libc::kill(lbd.id() as i32, libc::SIGTERM) };
    let _ = lbd.wait();
    answered?;
    assert!(status?.contains("uptime_seconds"));
    assert!(!pins, "an L7-only lbd pinned something");
    Ok(())
}

#[test]
fn root_trust_dropped_native_xdp_tx_is_reported() -> Result<()> {
    // Native XDP on a veth whose peer (the router's r1) has no XDP program: every frame the
    // balancer sends back out is dropped by the driver. lbd must say so, not stay silent.
    let topology = Topology::new(1)?;
    let dir = TempDir::new("trust-xdp-tx")?;
    let config = config(&topology, &dir.0)?;
    std::fs::write(&config, std::fs::read_to_string(&config)?.replace("\"generic\"", "\"native\""))?;
    let log = dir.0.join("lbd.log");
    let lbd = Lbd::start_logging(&topology.lb, &config, Some(&log))?;
    let counters = topology.lb.within(|| Ok(lb_userspace::dataplane::nic::xdp_tx_errors("eth0")))?;
    let (_, names) = counters.context("veth shows no XDP transmit error counters")?;
    assert!(names.iter().any(|n| n.contains("xdp_tx_errors")), "{names:?}");
    for port in 0..20 {
        let _ = topology.client.run(
            "curl",
            &[
                "-sS",
                "--max-time",
                "0.3",
                "--local-port",
                &(40_000 + port).to_string(),
                &format!("http://{VIP}/"),
            ],
        );
    }
    sluice_tests::servers::wait_for(
        "lbd to report the dropped XDP_TX frames",
        Duration::from_secs(12),
        || std::fs::read_to_string(&log).is_ok_and(|l| l.contains("XDP transmit errors")),
    )?;
    let scrape = topology.lb.run("curl", &["-sS", "http://127.0.0.1:9100/metrics"])?;
    let scrape = String::from_utf8_lossy(&scrape.stdout);
    let errors: i64 = scrape
        .lines()
        .find_map(|l| l.strip_prefix("sluice_nic_xdp_tx_errors "))
        .and_then(|v| v.trim().parse().ok())
        .context("no sluice_nic_xdp_tx_errors in the metrics")?;
    assert!(errors > 0, "{errors}");
    drop(lbd);
    Ok(())
}
