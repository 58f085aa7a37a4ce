//! Root tests of the control plane on a real topology: lbctl pool changes under long-lived
//! connections, health checks taking backends out and back, SIGKILL and re-adoption, SIGHUP
//! (a backup backend standing by, then taking the flows).
use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use lb_common::hash::flow_hash;
use sluice_tests::{
    harness::flow,
    netns::{Host, Topology, mac_text},
    servers::{Decap, Lbd, Nginx, PeerPass, TempDir, wait_for},
};

const VIP: &str = "198.19.0.1";

/// A test bed: three DSR backends (nginx answering its name), the lb with lbd.
struct Bed {
    lbd: Option<Lbd>,
    nginx: Vec<Option<Nginx>>,
    _decap: Vec<Decap>,
    _pass: PeerPass,
    config: PathBuf,
    dir: TempDir,
    topology: Topology,
}

impl Bed {
    /// Pool `web` starts with backends 1 and 2 (backend 3 exists, unused), TCP health checks
    /// every 300 ms, rise and fall 2.
    fn new(name: &str) -> Result<Bed> {
        let topology = Topology::new(3)?;
        let dir = TempDir::new(name)?;
        let _pass = PeerPass::attach(&topology.router, "r1")?;
        let mut nginx = Vec::new();
        let mut decap = Vec::new();
        for (i, backend) in topology.backends.iter().enumerate() {
            backend.make_dsr_backend(&[VIP])?;
            nginx.push(Some(Nginx::start(backend, &format!("backend{}", i + 1))?));
            decap.push(Decap::attach(backend, "native")?);
        }
        let config = dir.0.join("sluice.toml");
        let b = &topology.backends;
        std::fs::write(
            &config,
            format!(
                "# test bed\n[dataplane]\ninterface = \"eth0\"\nxdp_mode = \"native\"\npin_dir = \"/sys/fs/bpf/{tag}\"\n\
                 next_hop_mac = \"{mac}\"\n\n[[vip]]\nname = \"web\"\naddress = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\n\
                 pool = \"web\"\n\n[[pool]]\nname = \"web\"\nbackends = [{{ address = \"{b1}\" }}, {{ address = \"{b2}\" }}]\n\
                 health = {{ kind = \"http\", port = 80, path = \"/\", interval_ms = 300, timeout_ms = 200, rise = 2, fall = 2 }}\n\n\
                 [admin]\nsocket = \"{dir}/lbd.sock\"\nmetrics = \"127.0.0.1:9100\"\n",
                tag = topology.tag,
                mac = mac_text(topology.router_mac_to_lb),
                b1 = b[0].addr4,
                b2 = b[1].addr4,
                dir = dir.0.display(),
            ),
        )?;
        let lbd = Lbd::start(&topology.lb, &config)?;
        Ok(Bed { lbd: Some(lbd), nginx, _decap: decap, _pass, config, dir, topology })
    }

    fn lbd(&self) -> &Lbd {
        self.lbd.as_ref().expect("lbd running")
    }

    fn backend(&self, n: usize) -> String {
        self.topology.backends[n - 1].addr4.to_string()
    }

    /// Which backends answer `n` new connections.
    fn new_connections(&self, n: usize) -> Result<BTreeMap<String, usize>> {
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            let out =
                self.topology.client.run("curl", &["-sS", "--max-time", "3", &format!("http://{VIP}/")])?;
            *seen.entry(String::from_utf8_lossy(&out.stdout).trim().to_owned()).or_default() += 1;
        }
        Ok(seen)
    }

    /// `lbctl pool show web`: address -> (health, effective weight).
    fn pool(&self) -> Result<BTreeMap<String, (String, u64)>> {
        self.lbd().pool_show("web")
    }
}

/// A long-lived HTTP/1.1 keep-alive connection from the client namespace to the VIP.
struct KeepAlive {
    reader: BufReader<TcpStream>,
}

impl KeepAlive {
    fn open(client: &Host) -> Result<KeepAlive> {
        let stream = client.within(|| {
            Ok(TcpStream::connect_timeout(
                &std::net::SocketAddr::new(VIP.parse::<std::net::IpAddr>()?, 80),
                Duration::from_secs(3),
            )?)
        })?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        Ok(KeepAlive { reader: BufReader::new(stream) })
    }

    /// Sends a request on the connection and returns the backend that answered.
    fn ask(&mut self) -> Result<String> {
        self.reader.get_mut().write_all(b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n")?;
        let mut length = None;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("connection closed");
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = Some(v.trim().parse::<usize>()?);
            }
        }
        let mut body = vec![0; length.context("no content-length")?];
        self.reader.read_exact(&mut body)?;
        Ok(String::from_utf8_lossy(&body).trim().to_owned())
    }
}

/// Opens at least `n` connections, and more until both initial backends hold some (the flow
/// hash of random source ports decides: 8 of them all land on one backend 1 time in 128).
fn open_spread(bed: &Bed, n: usize) -> Result<Vec<(KeepAlive, String)>> {
    let mut conns = Vec::new();
    let owners = |conns: &[(KeepAlive, String)]| -> BTreeSet<String> {
        conns.iter().map(|(_, w)| w.clone()).collect()
    };
    while conns.len() < n || (owners(&conns).len() < 2 && conns.len() < 64) {
        let mut c = KeepAlive::open(&bed.topology.client)?;
        let who = c.ask()?;
        conns.push((c, who));
    }
    assert_eq!(
        owners(&conns),
        BTreeSet::from(["backend1".to_owned(), "backend2".to_owned()]),
        "initial spread"
    );
    Ok(conns)
}

#[test]
fn root_control_pool_changes_keep_established_connections() -> Result<()> {
    let bed = Bed::new("control-pool")?;
    let mut conns = open_spread(&bed, 12)?;

    // Add backend3: established connections stay, new ones reach it; the file has it.
    let out = bed.lbd().lbctl(&["backend", "add", "web", &bed.backend(3), "--weight", "100"])?;
    assert!(out.contains("added"), "{out}");
    for (c, who) in conns.iter_mut() {
        assert_eq!(&c.ask()?, who, "an established connection moved after backend add");
    }
    let seen = bed.new_connections(30)?;
    assert!(seen.contains_key("backend3"), "new connections never reached the new backend: {seen:?}");
    let file = std::fs::read_to_string(&bed.config)?;
    assert!(file.contains(&bed.backend(3)) && file.starts_with("# test bed"), "not written back:\n{file}");

    // Drain backend1: its connections stay, no new connection reaches it.
    bed.lbd().lbctl(&["backend", "drain", "web", &bed.backend(1)])?;
    for (c, who) in conns.iter_mut() {
        assert_eq!(&c.ask()?, who, "an established connection moved after drain");
    }
    let seen = bed.new_connections(30)?;
    assert!(!seen.contains_key("backend1"), "a drained backend got new connections: {seen:?}");
    assert_eq!(bed.pool()?[&bed.backend(1)].1, 0, "drained backend's effective weight");

    // Weight: backend3 weight 0 leaves only backend2 for new connections.
    bed.lbd().lbctl(&["backend", "weight", "web", &bed.backend(3), "0"])?;
    let seen = bed.new_connections(10)?;
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["backend2"], "{seen:?}");
    bed.lbd().lbctl(&["backend", "weight", "web", &bed.backend(3), "100"])?;

    // `lbctl flow` names each connection's backend, from the connection table.
    for (c, who) in conns.iter() {
        let source = c.reader.get_ref().local_addr()?.to_string();
        let out = bed.lbd().lbctl(&["flow", &format!("{VIP}:80"), "tcp", &source])?;
        let n: usize = who.trim_start_matches("backend").parse()?;
        assert!(out.contains(&format!("backend {} (connection table)", bed.backend(n))), "{out}");
    }
    let unseen = bed.lbd().lbctl(&["flow", &format!("{VIP}:80"), "tcp", "198.18.0.2:1"])?;
    assert!(unseen.contains("current Maglev generation"), "{unseen}");

    // `lbctl plan` before removing backend2: a share of buckets and its live flows move.
    let on_b2 = conns.iter().filter(|(_, w)| w == "backend2").count();
    let plan = bed.lbd().lbctl(&["plan", "backend", "remove", "web", &bed.backend(2)])?;
    let row: Vec<&str> = plan.lines().nth(1).context("plan row")?.split_whitespace().collect();
    let moved: f64 = row[row.len() - 3].trim_end_matches('%').parse()?;
    let live_moved: usize = row[row.len() - 1].parse()?;
    assert!((20.0..=60.0).contains(&moved), "{plan}");
    assert!(live_moved >= on_b2, "{plan}");
    assert!(bed.pool()?.contains_key(&bed.backend(2)), "plan changed the pool");

    // Remove backend2: connections on backend1 and backend3 stay; backend2's move (and are reset).
    bed.lbd().lbctl(&["backend", "remove", "web", &bed.backend(2)])?;
    for (c, who) in conns.iter_mut().filter(|(_, w)| w != "backend2") {
        assert_eq!(&c.ask()?, who, "a connection on a remaining backend moved after remove");
    }
    let seen = bed.new_connections(20)?;
    assert!(!seen.contains_key("backend2"), "a removed backend got new connections: {seen:?}");

    // Refused commands change nothing.
    let err = bed.lbd().lbctl(&["backend", "add", "web", &bed.backend(1)]).unwrap_err().to_string();
    assert!(err.contains("already has backend"), "{err}");
    let err = bed.lbd().lbctl(&["backend", "remove", "nope", &bed.backend(1)]).unwrap_err().to_string();
    assert!(err.contains("no pool `nope`"), "{err}");

    // The file written back is what a restart serves.
    let out = std::process::Command::new(sluice_tests::bin_dir().join("lbd"))
        .args(["check", "-c"])
        .arg(&bed.config)
        .output()?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\n");
    let file = std::fs::read_to_string(&bed.config)?;
    assert!(!file.contains(&bed.backend(2)) && file.contains("drain = true"), "{file}");
    Ok(())
}

#[test]
fn root_control_health_checks_remove_and_restore_backends() -> Result<()> {
    let mut bed = Bed::new("control-health")?;
    let interval = Duration::from_millis(300);
    assert_eq!(bed.new_connections(20)?.len(), 2);

    // Stop backend2's server: down within two intervals (plus one for the probe in flight).
    bed.nginx[1] = None;
    let b2 = bed.backend(2);
    wait_for("backend2 marked down", interval * 3 + Duration::from_millis(400), || {
        bed.pool().map(|p| p[&b2].0 == "DOWN").unwrap_or(false)
    })?;
    assert_eq!(bed.pool()?[&b2].1, 0, "a down backend keeps Maglev buckets");
    assert_eq!(bed.new_connections(20)?.keys().collect::<Vec<_>>(), ["backend1"]);
    let metrics = bed.topology.lb.run("curl", &["-sS", "http://127.0.0.1:9100/metrics"])?;
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics.lines().any(|l| l.starts_with("sluice_backend_up{") && l.contains(&b2) && l.ends_with(" 0")),
        "{metrics}"
    );
    assert!(metrics.contains("sluice_backend_packets_total{backend=\"198.18.10.2\"}"), "{metrics}");
    let gauge = |name: &str| -> Option<u64> {
        metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    };
    let flows = gauge("sluice_conn_table_flows").unwrap_or(0);
    assert!(flows >= 20, "the connections above are in the connection table: {metrics}");
    assert_eq!(gauge("sluice_conn_table_slots"), Some(lb_common::flow::CONN_SLOT_COUNT as u64), "{metrics}");

    // Bring it back: up after `rise` good probes.
    bed.nginx[1] = Some(Nginx::start(&bed.topology.backends[1], "backend2")?);
    wait_for("backend2 back up", interval * 4 + Duration::from_millis(400), || {
        bed.pool().map(|p| p[&b2].0 == "up").unwrap_or(false)
    })?;
    assert!(bed.new_connections(20)?.contains_key("backend2"));

    // Every backend down: the pool fails open rather than dropping everything.
    bed.nginx[0] = None;
    bed.nginx[1] = None;
    let b1 = bed.backend(1);
    wait_for("both down", interval * 4, || {
        bed.pool().map(|p| p[&b1].0 == "DOWN" && p[&b2].0 == "DOWN").unwrap_or(false)
    })?;
    let show = bed.lbd().lbctl(&["pool", "show", "web"])?;
    assert!(show.contains("FAILING OPEN"), "{show}");
    assert!(
        show.contains("\n  l7: port 80, http1, round_robin, connect 3000 ms, keep-alive 60000 ms\n"),
        "{show}"
    );
    assert!(bed.pool()?.values().all(|(_, w)| *w == 100), "{show}");
    Ok(())
}

#[test]
fn root_control_sigkill_keeps_forwarding_and_restart_readopts() -> Result<()> {
    let mut bed = Bed::new("control-kill")?;
    let mut conns = open_spread(&bed, 8)?;
    let before = bed.lbd().lbctl(&["stats", "--backend"])?;
    let packets = |text: &str| -> u64 {
        text.lines().skip(1).filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()).sum()
    };

    bed.lbd.take().expect("running").sigkill();
    for (c, who) in conns.iter_mut() {
        assert_eq!(&c.ask()?, who, "forwarding stopped or moved after SIGKILL");
    }
    assert_eq!(bed.new_connections(10)?.len(), 2, "new connections while lbd is dead");

    bed.lbd = Some(Lbd::start(&bed.topology.lb, &bed.config)?);
    for (c, who) in conns.iter_mut() {
        assert_eq!(&c.ask()?, who, "a flow was re-balanced by the restart");
    }
    let after = bed.lbd().lbctl(&["stats", "--backend"])?;
    assert!(packets(&after) > packets(&before) + 16, "counters did not continue:\n{before}\n{after}");
    drop(bed.dir.0.clone());
    Ok(())
}

#[test]
fn root_control_sighup_applies_good_configs_only() -> Result<()> {
    let mut bed = Bed::new("control-hup")?;
    let original = std::fs::read_to_string(&bed.config)?;
    let pool_before = bed.pool()?;

    // The admin socket answers a client that half-closes after its request (`nc -U -N`), on a
    // route whose answer comes after a wait (hyper's default dropped those: /live's is ready
    // before hyper reads the end, /view's is made on a blocking thread).
    let mut admin = std::os::unix::net::UnixStream::connect(bed.dir.0.join("lbd.sock"))?;
    admin.set_read_timeout(Some(Duration::from_secs(5)))?;
    admin.write_all(b"GET /view HTTP/1.1\r\nHost: lbd\r\n\r\n")?;
    admin.shutdown(std::net::Shutdown::Write)?;
    let mut answer = String::new();
    admin.read_to_string(&mut answer)?;
    assert!(answer.starts_with("HTTP/1.1 200"), "half-closed admin client got: {answer:?}");

    std::fs::write(&bed.config, original.replace("port = 80\nprotocol", "port = 80\nprotocl"))?;
    bed.lbd().signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(bed.pool()?, pool_before, "a broken reload changed the pool");

    let b3 = bed.backend(3);
    let good = original.replace(
        &format!("{{ address = \"{}\" }}]", bed.backend(2)),
        &format!("{{ address = \"{}\" }}, {{ address = \"{b3}\", weight = 100 }}]", bed.backend(2)),
    );
    assert_ne!(good, original);
    std::fs::write(&bed.config, good)?;
    bed.lbd().signal(libc::SIGHUP);
    wait_for("reload applied", Duration::from_secs(3), || {
        bed.pool().map(|p| p.contains_key(&b3)).unwrap_or(false)
    })?;
    assert!(bed.new_connections(30)?.contains_key("backend3"));

    // Backend 3 made a backup by a reload: it stands by (L4 flows go to backends 1 and 2), and
    // takes every new flow once both are down, the pool not failing open.
    let with_backup = std::fs::read_to_string(&bed.config)?.replace(
        &format!("{{ address = \"{b3}\", weight = 100 }}"),
        &format!("{{ address = \"{b3}\", backup = true }}"),
    );
    std::fs::write(&bed.config, with_backup)?;
    bed.lbd().signal(libc::SIGHUP);
    wait_for("backend3 standing by", Duration::from_secs(3), || {
        bed.pool().map(|p| p[&b3] == ("up".to_owned(), 0)).unwrap_or(false)
    })?;
    let shown = bed.lbd().lbctl(&["pool", "show", "web"])?;
    assert!(shown.lines().any(|l| l.contains(&b3) && l.ends_with("(backup)")), "{shown}");
    assert_eq!(bed.new_connections(20)?.keys().collect::<Vec<_>>(), ["backend1", "backend2"]);
    bed.nginx[0] = None;
    bed.nginx[1] = None;
    let (b1, b2) = (bed.backend(1), bed.backend(2));
    wait_for("backends 1 and 2 down", Duration::from_secs(3), || {
        bed.pool().map(|p| p[&b1].0 == "DOWN" && p[&b2].0 == "DOWN" && p[&b3].1 == 100).unwrap_or(false)
    })?;
    assert_eq!(bed.new_connections(20)?.keys().collect::<Vec<_>>(), ["backend3"]);
    let shown = bed.lbd().lbctl(&["pool", "show", "web"])?;
    assert!(!shown.contains("FAILING OPEN"), "{shown}");
    Ok(())
}

/// Flows whose outer source would land on an address of the router, with the outer /16 its own
/// links use (198.18.0.0/16), connect like any other: the default `encap_source_v4` lies
/// outside the bed's addresses. With 198.18.255.0 the router dropped such packets as martians
/// and a few flows in 65,536 per router address never connected (the e2e tests' rare timeouts).
#[test]
fn root_control_flows_connect_whatever_their_outer_source() -> Result<()> {
    let bed = Bed::new("control-outer")?;
    // The router's addresses (198.18.N.1) and its subnets' network and broadcast addresses.
    let router: Vec<u32> =
        [0u32, 1, 2, 10, 11, 12].iter().flat_map(|&n| [n << 8 | 1, n << 8, n << 8 | 255]).collect();
    let client = bed.topology.client.addr4.to_string();
    // Ports below the ephemeral range: free to bind in the client namespace.
    let ports: Vec<u16> = (1_024..32_768u16)
        .filter(|&port| router.contains(&(flow_hash(&flow(&client, port, VIP, 80, 6)) & 0xffff)))
        .take(4)
        .collect();
    assert_eq!(ports.len(), 4, "too few ports with such a hash in the range");
    for port in ports {
        let out = bed.topology.client.run(
            "curl",
            &["-sS", "--max-time", "3", "--local-port", &port.to_string(), &format!("http://{VIP}/")],
        )?;
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("backend"), "port {port}");
    }
    Ok(())
}
