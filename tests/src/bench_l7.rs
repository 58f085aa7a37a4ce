//! `cargo xtask bench l7`: Sluice's L7 proxy next to HAProxy and nginx as reverse proxies, same
//! two backends (round robin in every proxy), same load, each proxy alone on CPU 0 and the load
//! generator and backends on CPU 1. Each mode's proxies run back to back, each a fresh process,
//! in the opposite order the next round.
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

mod instructions;
mod quic;
pub use instructions::run_instructions;

use crate::{
    l7_targets::{self, Round, Row, Sample},
    netns::run,
    pki::TestCa,
    servers::TempDir,
};

const NS: &str = "slbench";
/// The core the load generator and the backends run on (`/proc/stat`'s name for it).
const LOAD_CPU: &str = "cpu1";
const BACKENDS: [u16; 2] = [18081, 18082];
/// Idle keep-alive connections held open to measure each proxy's memory per connection. Not
/// 10,000: the open-file hard limit here is 20,000 and HAProxy reserves two per connection.
const IDLE_CONNECTIONS: usize = 9_000;
/// Idle TLS connections held open to measure each proxy's memory per TLS connection: fewer, as
/// each costs a handshake on the bench's one client thread.
const IDLE_TLS_CONNECTIONS: usize = 3_000;

/// A process in the bench namespace, killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn in_ns(cpu: &str, program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{NS}")).args(["--", "taskset", "-c", cpu, program]).args(args);
    cmd
}

fn spawn(cpu: &str, program: &str, args: &[&str]) -> Result<Proc> {
    let child = in_ns(cpu, program, args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    Ok(Proc(child))
}

/// CPU seconds (user + system) used so far by `pid` and its threads.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks: f64 =
        fields.get(11..13).map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// The total and idle (with I/O wait) time of `/proc/stat`'s line `cpu` ("cpu" for all CPUs,
/// "cpu1" for one), in ticks.
fn cpu_times(cpu: &str) -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(cpu))
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    (v.iter().sum(), idle)
}

/// The busy share of `cpu` between two readings of [`cpu_times`].
fn busy_between((t0, i0): (f64, f64), (t1, i1): (f64, f64)) -> f64 {
    if t1 > t0 { 1.0 - (i1 - i0) / (t1 - t0) } else { 0.0 }
}

/// Busy share of all CPUs over `window` (other load on the shared machine).
fn busy(window: Duration) -> f64 {
    let before = cpu_times("cpu");
    std::thread::sleep(window);
    busy_between(before, cpu_times("cpu"))
}

fn wait_port(port: u16) -> Result<()> {
    for _ in 0..100 {
        let out = run("ip", &["netns", "exec", NS, "ss", "-Htln", &format!("sport = :{port}")])?;
        if !out.stdout.is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on {port}")
}

/// A connection the idle-memory probe holds: plain TCP or TLS over it.
trait Held: std::io::Read + std::io::Write + Send {}
impl<T: std::io::Read + std::io::Write + Send> Held for T {}

/// A TLS client trusting the bench's CA, offering HTTP/1.1 only (an idle keep-alive connection
/// as a browser's HTTP/1.1 one).
fn tls_client(ca: &Path) -> Result<Arc<rustls::ClientConfig>> {
    use rustls_pki_types::{CertificateDer, pem::PemObject as _};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).context("reading the bench CA")? {
        roots.add(cert.context("parsing the bench CA")?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Opens `n` connections to the proxy's `port` (TLS when `tls` is given), makes one request on
/// each and leaves them open and idle; returns the growth of the proxy's resident memory per
/// connection.
fn idle_memory_per_connection(
    pid: u32,
    port: u16,
    n: usize,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<f64> {
    let before = crate::rss_bytes(pid);
    let path = format!("/run/netns/{NS}");
    let held = std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<Vec<Box<dyn Held>>> {
                let ns = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
                // SAFETY: setns on this thread only, with a valid namespace fd.
                if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) } != 0 {
                    bail!("setns {path}: {}", std::io::Error::last_os_error());
                }
                let mut streams: Vec<Box<dyn Held>> = Vec::with_capacity(n);
                for _ in 0..n {
                    let tcp = std::net::TcpStream::connect(("127.0.0.1", port))?;
                    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
                    let mut stream: Box<dyn Held> = match tls {
                        Some(config) => {
                            let name = rustls_pki_types::ServerName::try_from("bench.test")?;
                            let client = rustls::ClientConnection::new(config.clone(), name)?;
                            Box::new(rustls::StreamOwned::new(client, tcp))
                        }
                        None => Box::new(tcp),
                    };
                    stream.write_all(b"GET / HTTP/1.1\r\nHost: bench.test\r\n\r\n")?;
                    streams.push(stream);
                }
                let mut buf = [0u8; 4096];
                for s in &mut streams {
                    let got = s.read(&mut buf)?;
                    if !buf[..got].starts_with(b"HTTP/1.1 200") {
                        bail!("an idle-connection probe got: {}", String::from_utf8_lossy(&buf[..got]));
                    }
                }
                Ok(streams)
            })
            .join()
            .map_err(|_| anyhow::anyhow!("idle-connection thread panicked"))?
    })?;
    std::thread::sleep(Duration::from_secs(1));
    let after = crate::rss_bytes(pid);
    drop(held);
    Ok(after.saturating_sub(before) as f64 / n as f64)
}

/// Raises this process's open-file limit to its hard limit (the proxies it starts inherit it).
fn raise_fd_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain getrlimit/setrlimit on this process with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn parse_ms(v: &str) -> f64 {
    let (num, unit) = v.find(|c: char| c.is_ascii_alphabetic()).map(|i| v.split_at(i)).unwrap_or((v, "ms"));
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "s" => n * 1000.0,
        _ => n,
    }
}

/// The p50 and p99 in ms of the requests in an h2load `--log-file` (a line a request: start
/// time in µs, status, µs until the answer ended), by nearest rank; NaN for an empty log.
/// h2load's own summary gives only the mean, and the issue asks for a p99 in every mode.
fn h2load_percentiles(log: &str) -> (f64, f64) {
    let mut us: Vec<u64> = log.lines().filter_map(|l| l.split('\t').nth(2)?.trim().parse().ok()).collect();
    if us.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    us.sort_unstable();
    let rank = |p: f64| us[((p * us.len() as f64).ceil() as usize).clamp(1, us.len()) - 1] as f64 / 1000.0;
    (rank(0.50), rank(0.99))
}

/// Runs the load for `seconds` against a proxy: wrk (HTTP/1.1) or h2load (HTTP/2, its
/// per-request log in `log_dir`).
fn load(proxy_pid: u32, mode: &str, url: &str, seconds: u64, log_dir: &Path) -> Result<Sample> {
    let other_cpu = busy(Duration::from_millis(500));
    let cpu_before = cpu_seconds(proxy_pid);
    let load_before = cpu_times(LOAD_CPU);
    let started = Instant::now();
    let duration = format!("{seconds}s");
    let h2_log = log_dir.join("h2load.log");
    let out = if mode == "h2" {
        let log_arg = format!("--log-file={}", h2_log.display());
        in_ns("1", "h2load", &["-t1", "-c64", "-m10", "-D", &seconds.to_string(), &log_arg, url]).output()?
    } else {
        let mut args = vec!["-t1", "-c64", "-d", &duration, "--latency"];
        if mode == "tls-handshake" {
            args.extend(["-H", "Connection: close"]);
        }
        if mode == GZIP {
            args.extend(["-H", "Accept-Encoding: gzip"]);
        }
        args.push(url);
        in_ns("1", "wrk", &args).output()?
    };
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(proxy_pid) - cpu_before;
    let load_cpu = busy_between(load_before, cpu_times(LOAD_CPU));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (rps, p50_ms, p99_ms) = if mode == "h2" {
        let rps = text
            .lines()
            .find(|l| l.starts_with("finished in"))
            .and_then(|l| l.split(", ").nth(1)?.split_whitespace().next()?.parse().ok());
        let log = std::fs::read_to_string(&h2_log).unwrap_or_default();
        let _ = std::fs::remove_file(&h2_log);
        let (p50, p99) = h2load_percentiles(&log);
        (rps.context(format!("h2load output: {text}"))?, p50, p99)
    } else {
        let rps = text
            .lines()
            .find(|l| l.starts_with("Requests/sec:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok());
        let pct = |p: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(p))
                .and_then(|l| l.split_whitespace().nth(1).map(parse_ms))
        };
        (
            rps.context(format!("wrk output: {text}"))?,
            pct("50%").unwrap_or(f64::NAN),
            pct("99%").unwrap_or(f64::NAN),
        )
    };
    let requests = rps * elapsed.min(seconds as f64 + 0.5);
    Ok(Sample { rps, p50_ms, p99_ms, cpu_us_per_request: cpu * 1e6 / requests.max(1.0), other_cpu, load_cpu })
}

/// The second backend also listens on 127.0.0.2 at the first one's port: a Sluice pool has one
/// port, so it reaches the two backends as 127.0.0.1 and 127.0.0.2 (the peers use the ports).
/// `/gz/` serves the gzip mode's page (`PAGE`) as text/html. Each also serves TLS on its port
/// + `TLS_OFFSET` (the tls-upstream mode), with the bed's certificate.
fn backend_config(dir: &Path, port: u16, cert: &Path, key: &Path) -> String {
    let tls_port = port + TLS_OFFSET;
    let alias = if port == BACKENDS[1] {
        format!("listen 127.0.0.2:{}; listen 127.0.0.2:{} ssl;", BACKENDS[0], BACKENDS[0] + TLS_OFFSET)
    } else {
        String::new()
    };
    let tls = format!(
        "listen 127.0.0.1:{tls_port} ssl; ssl_certificate {}; ssl_certificate_key {}; ssl_protocols TLSv1.2 TLSv1.3;",
        cert.display(),
        key.display()
    );
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/b{port}.pid;\nerror_log {d}/b{port}.log;\n\
         events {{ worker_connections 4096; }}\nhttp {{\n access_log off;\n keepalive_requests 1000000;\n\
         client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
         server {{ listen 127.0.0.1:{port}; {tls} {alias} location / {{ return 200 \"ok\\n\"; }}\n\
         location /gz/ {{ root {d}; default_type text/html; }} }}\n}}\n",
        d = dir.display()
    )
}

/// nginx as a proxy; `server_suites`: it picks the TLS suite, AES-128-GCM first (as Sluice does
/// by default), instead of taking the client's first choice.
fn nginx_proxy_config(dir: &Path, cert: &Path, key: &Path, ca: &Path, server_suites: bool) -> String {
    let suites = match server_suites {
        true => {
            " ssl_prefer_server_ciphers on; ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256;"
        }
        false => "",
    };
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/np.pid;\nerror_log {d}/np.log;\nworker_rlimit_nofile 19000;\n\
         events {{ worker_connections 16384; }}\nhttp {{\n access_log off;\n keepalive_requests 1000000;\n http2_max_requests 1000000;\n\
         gzip on; gzip_comp_level 1; gzip_min_length 256; gzip_proxied any;\n\
         client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
         upstream b {{ server 127.0.0.1:{b0}; server 127.0.0.1:{b1}; keepalive 64; keepalive_requests 1000000; }}\n\
         upstream bt {{ server 127.0.0.1:{t0}; server 127.0.0.1:{t1}; keepalive 64; keepalive_requests 1000000; }}\n\
         server {{ listen 127.0.0.1:8080; listen 127.0.0.1:8443 ssl http2; ssl_certificate {c}; ssl_certificate_key {k};\n\
         ssl_protocols TLSv1.3 TLSv1.2; ssl_session_tickets on;{suites}\n\
         location / {{ proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n\
         location {TLS_UPSTREAM_PATH} {{ proxy_pass https://bt; proxy_http_version 1.1; proxy_set_header Connection \"\";\
         proxy_ssl_verify on; proxy_ssl_trusted_certificate {ca}; proxy_ssl_name bench.test; proxy_ssl_server_name on; }} }}\n}}\n",
        d = dir.display(),
        c = cert.display(),
        k = key.display(),
        ca = ca.display(),
        b0 = BACKENDS[0],
        b1 = BACKENDS[1],
        t0 = BACKENDS[0] + TLS_OFFSET,
        t1 = BACKENDS[1] + TLS_OFFSET
    )
}

fn haproxy_config(pem: &Path, ca: &Path) -> String {
    format!(
        "global\n nbthread 1\n maxconn 9500\n tune.ssl.default-dh-param 2048\ndefaults\n mode http\n timeout connect 5s\n timeout client 30s\n timeout server 30s\n\
         http-reuse always\nfrontend f\n bind 127.0.0.1:7080\n bind 127.0.0.1:7443 ssl crt {p} alpn h2,http/1.1\n\
         use_backend bt if {{ path_beg {TLS_UPSTREAM_PATH} }}\n default_backend b\n\
         backend b\n balance roundrobin\n compression algo gzip\n compression type text/html\n server b0 127.0.0.1:{b0}\n server b1 127.0.0.1:{b1}\n\
         backend bt\n balance roundrobin\n server t0 127.0.0.1:{t0} ssl verify required ca-file {ca} sni str(bench.test) verifyhost bench.test\n\
          server t1 127.0.0.1:{t1} ssl verify required ca-file {ca} sni str(bench.test) verifyhost bench.test\n",
        p = pem.display(),
        ca = ca.display(),
        b0 = BACKENDS[0],
        b1 = BACKENDS[1],
        t0 = BACKENDS[0] + TLS_OFFSET,
        t1 = BACKENDS[1] + TLS_OFFSET
    )
}

/// Sluice's config; `busy_poll_us` adds a `[proxy]` table setting it (None: the default).
/// lbd's config: the two backends, plain HTTP on 9080 and TLS on 9443. `dataplane`: with XDP
/// on the bench's veth (as an edge host runs), else L7 only. `current`: `/gz/` on 9080 is
/// gzipped, as the peers' text/html, and `TLS_UPSTREAM_PATH` goes to the backends over TLS
/// (an lbd older than `compress` and pools' `tls` is given a config without either). `http3`:
/// HTTP/3 on 9443 too (for its idle memory alone: its Alt-Svc field would be in the TLS
/// answers, and its endpoints' buffers in the idle TCP figures).
fn sluice_config(
    dir: &Path,
    cert: &Path,
    key: &Path,
    busy_poll_us: Option<u64>,
    dataplane: bool,
    current: bool,
    http3: bool,
) -> String {
    let proxy = match busy_poll_us {
        None => String::new(),
        Some(us) => format!("[proxy]\nbusy_poll_us = {us}\n\n"),
    };
    let dataplane = if dataplane {
        "[dataplane]\ninterface = \"bench0\"\nxdp_mode = \"generic\"\npin_dir = \"/sys/fs/bpf/sluice-bench-l7\"\n\n"
    } else {
        ""
    };
    let current = match current {
        true => format!(
            "[[route]]\nlistener = \"http\"\npath_prefix = \"/gz/\"\npool = \"b\"\ncompress = {{}}\n\n\
             [[pool]]\nname = \"bt\"\nbackends = [{{ address = \"127.0.0.1\" }}, {{ address = \"127.0.0.2\" }}]\nport = {t0}\n\
             tls = {{ ca = \"{ca}\", server_name = \"bench.test\" }}\n\n\
             [[route]]\nlistener = \"http\"\npath_prefix = \"{TLS_UPSTREAM_PATH}\"\npool = \"bt\"\n\n",
            t0 = BACKENDS[0] + TLS_OFFSET,
            ca = dir.join("ca.pem").display(),
        ),
        false => String::new(),
    };
    format!(
        "{proxy}{dataplane}[[pool]]\nname = \"b\"\nbackends = [{{ address = \"127.0.0.1\" }}, {{ address = \"127.0.0.2\" }}]\nport = {b0}\n\n\
         [[listener]]\nname = \"http\"\naddress = \"127.0.0.1:9080\"\naccess_log = false\nmax_connections = 15000\n\n\
         [[listener]]\nname = \"https\"\naddress = \"127.0.0.1:9443\"\naccess_log = false\n\
         tls = {{ certificates = [{{ cert = \"{c}\", key = \"{k}\" }}]{h3} }}\n\n\
         {current}[[route]]\nlistener = \"http\"\npool = \"b\"\n\n[[route]]\nlistener = \"https\"\npool = \"b\"\n\n\
         [admin]\nsocket = \"{d}/lbd.sock\"\n",
        c = cert.display(),
        k = key.display(),
        d = dir.display(),
        b0 = BACKENDS[0],
        h3 = if http3 { ", http3 = true" } else { "" },
    )
}

/// The busy-polling Sluice's modes: those where its core would otherwise sleep between packets.
const BUSY_POLL_MODES: [&str; 2] = ["tls-keepalive", "tls-handshake"];
/// The peer that picks TLS suites as Sluice does (not a default config: not in `sluice/best`).
const SAME_SUITES: &str = "nginx-128";
/// The byte forwarder (`forward_floor`): the bed's ceiling in HTTP/1.1 keep-alive, not a peer.
const FLOOR: &str = "forward";
/// Where the forwarder listens.
const FLOOR_PORT: u16 = 6080;
/// Rows measured for reference, not peers: not in `sluice/best` nor in the verdict.
const REFERENCES: [&str; 2] = [SAME_SUITES, FLOOR];
/// An earlier lbd measured beside this one in every mode (`SLUICE_BENCH_BASELINE=PATH`): an
/// A/B in the same run, interleaved with the peers. Not a peer and not in the verdict.
const BASELINE: &str = "sluice-base";
/// A 10 KiB text/html page through each proxy's gzip at level 1, wrk asking for gzip (HTTP/1.1
/// keep-alive; no target in issue #8).
const GZIP: &str = "gzip";
/// Plain HTTP/1.1 keep-alive from the client, TLS from the proxy to the backends (kept-alive,
/// the backends' certificate checked against the bed's CA, SNI `bench.test`; no target in
/// issue #8).
const TLS_UPSTREAM: &str = "tls-upstream";
/// What the tls-upstream mode asks for (each proxy routes it to its TLS backends).
const TLS_UPSTREAM_PATH: &str = "/tls-up/";
/// The backends' TLS ports are their plain ports plus this.
const TLS_OFFSET: u16 = 100;
/// The current lbd with HTTP/3, measured for its idle HTTP/3 connections alone.
const H3: &str = "sluice-h3";
const MODES: [&str; 6] = ["http1-keepalive", "tls-keepalive", "tls-handshake", "h2", GZIP, TLS_UPSTREAM];
/// The modes of an lbd older than `compress` (the baseline).
const MODES_BEFORE_GZIP: [&str; 4] = ["http1-keepalive", "tls-keepalive", "tls-handshake", "h2"];
/// The gzip mode's page: list items of a few words, as a page of links, 10 KiB.
const PAGE_BYTES: usize = 10 * 1024;

/// The modes to run: `SLUICE_BENCH_MODES` (a comma-separated subset) or all; and whether to
/// measure idle memory (always with all modes, else only if the list names `idle`).
fn chosen_modes() -> Result<(Vec<&'static str>, bool)> {
    let Ok(listed) = std::env::var("SLUICE_BENCH_MODES") else { return Ok((MODES.to_vec(), true)) };
    let listed: Vec<&str> = listed.split(',').map(str::trim).collect();
    if let Some(unknown) = listed.iter().find(|m| **m != "idle" && !MODES.contains(m)) {
        anyhow::bail!("SLUICE_BENCH_MODES: no mode `{unknown}` (modes: {}, idle)", MODES.join(", "));
    }
    Ok((MODES.into_iter().filter(|m| listed.contains(m)).collect(), listed.contains(&"idle")))
}

/// The bench's namespace, deleted (with the balancer's pins) when dropped.
struct Namespace;

impl Namespace {
    fn new() -> Result<Namespace> {
        let _ = run("ip", &["netns", "del", NS]);
        run("ip", &["netns", "add", NS])?;
        let namespace = Namespace;
        run("ip", &["-n", NS, "link", "set", "lo", "up"])?;
        // The veth lbd's XDP program attaches to (`[dataplane]`); no traffic crosses it.
        run("ip", &["-n", NS, "link", "add", "bench0", "type", "veth", "peer", "name", "bench1"])?;
        Ok(namespace)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", NS]);
        let _ = std::fs::remove_dir_all("/sys/fs/bpf/sluice-bench-l7");
    }
}

/// What every L7 bench runs on: the namespace, a CA and a certificate for 127.0.0.1, and the
/// two nginx backends on CPU 1. The backends stop before the namespace goes.
struct Bed {
    dir: TempDir,
    ca: TestCa,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    _backends: Vec<Proc>,
    _namespace: Namespace,
}

impl Bed {
    fn new(name: &str) -> Result<Bed> {
        crate::require_root();
        raise_fd_limit();
        let namespace = Namespace::new()?;
        let dir = TempDir::new(name)?;
        let ca = TestCa::new(&dir.0)?;
        let (cert, key) = ca.leaf("bench", &["bench.test", "127.0.0.1"], false)?;
        std::fs::create_dir_all(dir.0.join("gz"))?;
        std::fs::write(dir.0.join("gz/page.html"), page())?;
        let mut backends = Vec::new();
        for port in BACKENDS {
            let conf = dir.0.join(format!("b{port}.conf"));
            std::fs::write(&conf, backend_config(&dir.0, port, &cert, &key))?;
            let prefix = dir.0.to_str().context("path")?;
            backends.push(spawn("1", "nginx", &["-c", conf.to_str().context("path")?, "-p", prefix])?);
            wait_port(port)?;
        }
        Ok(Bed { dir, ca, cert, key, _backends: backends, _namespace: namespace })
    }
}

/// The gzip mode's page: `PAGE_BYTES` of list items whose words and numbers come from a fixed
/// sequence (gzip at level 1 takes it to about a fifth).
fn page() -> String {
    let words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "load", "balancer"];
    let (mut page, mut x) = (String::from("<!doctype html>\n<ul>\n"), 1u64);
    while page.len() < PAGE_BYTES {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let word = words[(x >> 33) as usize % words.len()];
        page += &format!(
            "<li class=\"item-{}\"><a href=\"/p/{word}/{}\">{word} {}</a></li>\n",
            x % 7,
            x % 1000,
            x % 97
        );
    }
    page.truncate(PAGE_BYTES);
    page
}

/// A proxy as the bench runs it: its name, its command line, its plain and TLS ports.
struct Proxy {
    name: &'static str,
    argv: Vec<String>,
    http: u16,
    https: u16,
}

impl Proxy {
    /// Started for one measurement (a fresh process each time), on the proxy's core.
    fn start(&self) -> Result<Proc> {
        let args: Vec<&str> = self.argv[1..].iter().map(String::as_str).collect();
        let proc = spawn("0", &self.argv[0], &args)?;
        wait_port(self.https)?;
        Ok(proc)
    }

    /// The modes it runs in, when not all (the references).
    fn only(&self) -> Option<&'static [&'static str]> {
        match self.name {
            "sluice-bp" => Some(&BUSY_POLL_MODES),
            H3 => Some(&[]),
            SAME_SUITES => Some(&["tls-handshake"]),
            FLOOR => Some(&["http1-keepalive"]),
            BASELINE => Some(&MODES_BEFORE_GZIP),
            _ => None,
        }
    }
}

/// Stops a proxy after its measurement (and clears lbd's pins).
fn stop(proc: Proc) {
    drop(proc);
    let _ = std::fs::remove_dir_all("/sys/fs/bpf/sluice-bench-l7");
}

/// Runs the whole comparison and prints it.
pub fn run_bench(seconds: u64, rounds: usize) -> Result<()> {
    let bed = Bed::new("bench-l7")?;
    let tls = tls_client(&bed.ca.cert)?;
    let baseline = std::env::var_os("SLUICE_BENCH_BASELINE").map(std::path::PathBuf::from);
    let (modes, measure_memory) = chosen_modes()?;
    let proxies = proxies(&bed, baseline.as_deref())?;
    legend(seconds, baseline.as_deref());
    warm_backends()?;
    let mut all = Vec::new();
    for round in 1..=rounds {
        let (memory, tls_memory) = match measure_memory {
            true => idle_memory(&proxies, &tls)?,
            false => (Vec::new(), Vec::new()),
        };
        let quic_memory = match measure_memory {
            true => Some(idle_quic_memory(&proxies, &bed.ca.cert)?),
            false => None,
        };
        let table = rates(&proxies, &modes, round, seconds, &bed.dir.0)?;
        println!("\nround {round}:");
        print_round(&table, &proxies.iter().map(|p| p.name).collect::<Vec<_>>(), &modes);
        if measure_memory {
            print_memory(&format!("{IDLE_CONNECTIONS} open, one request each, plain HTTP"), &memory);
            print_memory(&format!("{IDLE_TLS_CONNECTIONS} open, one request each, TLS 1.3"), &tls_memory);
        }
        if let Some(bytes) = quic_memory {
            println!(
                "\nmemory per idle HTTP/3 connection ({} open, one request each; no peer here serves HTTP/3):\nsluice      {:>8.1} KiB",
                quic::IDLE_QUIC_CONNECTIONS,
                bytes / 1024.0
            );
        }
        all.push(Round { table, memory, tls_memory });
    }
    println!();
    for line in l7_targets::verdict(&all, &REFERENCES) {
        println!("{line}");
    }
    Ok(())
}

/// A second of load on each backend alone before the first round. Without it the run's first
/// case met cold backends: the same lbd measured 0.92–0.98x its own rate in that case against
/// the case after it (the first case is Sluice's in the first round).
fn warm_backends() -> Result<()> {
    for port in BACKENDS {
        let out =
            in_ns("1", "wrk", &["-t1", "-c64", "-d1s", &format!("http://127.0.0.1:{port}/")]).output()?;
        if !out.status.success() {
            bail!("warming backend {port}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok(())
}

/// The proxies compared, their configs written into the bed's directory: Sluice (and the
/// baseline lbd, when given), HAProxy, nginx, and the references.
fn proxies(bed: &Bed, baseline: Option<&Path>) -> Result<Vec<Proxy>> {
    let (dir, cert, key) = (&bed.dir, &bed.cert, &bed.key);
    let combined = dir.0.join("haproxy.pem");
    std::fs::write(&combined, std::fs::read_to_string(cert)? + &std::fs::read_to_string(key)?)?;
    let sluice_conf = dir.0.join("sluice.toml");
    std::fs::write(&sluice_conf, sluice_config(&dir.0, cert, key, None, true, true, false))?;
    let base_conf = dir.0.join("sluice-base.toml");
    std::fs::write(&base_conf, sluice_config(&dir.0, cert, key, None, true, false, false))?;
    let busy_conf = dir.0.join("sluice-busy.toml");
    std::fs::write(&busy_conf, sluice_config(&dir.0, cert, key, Some(100), true, true, false))?;
    let h3_conf = dir.0.join("sluice-h3.toml");
    std::fs::write(&h3_conf, sluice_config(&dir.0, cert, key, None, true, true, true))?;
    let nginx_conf = dir.0.join("proxy.conf");
    let ca = &bed.ca.cert;
    std::fs::write(&nginx_conf, nginx_proxy_config(&dir.0, cert, key, ca, false))?;
    let nginx_128_conf = dir.0.join("proxy-128.conf");
    std::fs::write(&nginx_128_conf, nginx_proxy_config(&dir.0, cert, key, ca, true))?;
    let haproxy_conf = dir.0.join("haproxy.cfg");
    std::fs::write(&haproxy_conf, haproxy_config(&combined, ca))?;
    let lbd = crate::bin_dir().join("lbd");
    let lbd_run = |name, bin: &Path, conf: &Path| Proxy {
        name,
        argv: vec![bin.display().to_string(), "run".into(), "-c".into(), conf.display().to_string()],
        http: 9080,
        https: 9443,
    };
    let nginx = |name, conf: &Path| {
        let (conf, prefix) = (conf.display().to_string(), dir.0.display().to_string());
        Proxy {
            name,
            argv: vec!["nginx".into(), "-c".into(), conf, "-p".into(), prefix],
            http: 8080,
            https: 8443,
        }
    };
    let mut proxies = vec![
        lbd_run("sluice", &lbd, &sluice_conf),
        // The same lbd with `[proxy] busy_poll_us = 100` (the default is 40), in BUSY_POLL_MODES.
        lbd_run("sluice-bp", &lbd, &busy_conf),
        // The same lbd with HTTP/3 on 9443 too: in no mode, for its idle HTTP/3 memory alone.
        lbd_run(H3, &lbd, &h3_conf),
        Proxy {
            name: "haproxy",
            argv: vec!["haproxy".into(), "-db".into(), "-f".into(), haproxy_conf.display().to_string()],
            http: 7080,
            https: 7443,
        },
        nginx("nginx", &nginx_conf),
        // nginx picking the suite as Sluice does, in the handshake mode: the same work per
        // handshake on both ends (OpenSSL's clients ask for AES-256-GCM-SHA384 first).
        nginx(SAME_SUITES, &nginx_128_conf),
        Proxy {
            name: FLOOR,
            argv: vec![
                std::env::current_exe()?.display().to_string(),
                "forward".into(),
                format!("127.0.0.1:{FLOOR_PORT}"),
                format!("127.0.0.1:{}", BACKENDS[0]),
                format!("127.0.0.1:{}", BACKENDS[1]),
            ],
            http: FLOOR_PORT,
            https: FLOOR_PORT,
        },
    ];
    if let Some(baseline) = baseline {
        proxies.insert(1, lbd_run(BASELINE, baseline, &base_conf));
    }
    Ok(proxies)
}

/// What the bench's output says of its setup and its references.
fn legend(seconds: u64, baseline: Option<&Path>) {
    println!(
        "cargo xtask bench l7: {seconds} s per case, wrk -t1 -c64 (h2: h2load -t1 -c64 -m10), proxy on CPU 0, load and backends on CPU 1"
    );
    println!(
        "other: all CPUs' busy share just before the case (the machine's own load); load: CPU 1's busy share during it (near 100%, the client's and backends' core bounds the rate as much as the proxy)"
    );
    println!(
        "sluice-bp: the same lbd with `[proxy] busy_poll_us = 100` (the default is 40), in {BUSY_POLL_MODES:?}"
    );
    println!(
        "{SAME_SUITES}: nginx picking the TLS suite, AES-128-GCM first, as Sluice does by default (tls-handshake; not in sluice/best)"
    );
    println!(
        "{FLOOR}: a byte forwarder, no HTTP, a backend connection per client (http1-keepalive; the bed's ceiling for an epoll proxy, not in sluice/best)"
    );
    println!(
        "{GZIP}: a {PAGE_BYTES}-byte text/html page gzipped at level 1 by each proxy (wrk asks for gzip; plain HTTP/1.1 keep-alive)"
    );
    println!(
        "{TLS_UPSTREAM}: plain HTTP/1.1 keep-alive from the client, TLS to the backends (kept alive, certificate and name checked)"
    );
    if let Some(baseline) = baseline {
        println!(
            "{BASELINE}: {} with the same config (without the gzip and TLS-upstream routes), in every mode but {GZIP} and {TLS_UPSTREAM} (an A/B; not in the verdict)",
            baseline.display()
        );
    }
}

/// Each compared proxy's memory per idle connection, plain and TLS. Measured on a fresh
/// process: after load, freed buffers the allocator keeps would hide the growth.
#[allow(clippy::type_complexity, reason = "two lists of (proxy, bytes)")]
fn idle_memory(
    proxies: &[Proxy],
    tls: &Arc<rustls::ClientConfig>,
) -> Result<(Vec<(String, f64)>, Vec<(String, f64)>)> {
    let (mut memory, mut tls_memory) = (Vec::new(), Vec::new());
    for proxy in proxies.iter().filter(|p| p.only().is_none()) {
        // nsenter execs taskset, which execs the proxy: the child's pid is the proxy's.
        let proc = proxy.start()?;
        memory.push((
            proxy.name.to_string(),
            idle_memory_per_connection(proc.0.id(), proxy.http, IDLE_CONNECTIONS, None)?,
        ));
        stop(proc);
        let proc = proxy.start()?;
        let bytes = idle_memory_per_connection(proc.0.id(), proxy.https, IDLE_TLS_CONNECTIONS, Some(tls))?;
        tls_memory.push((proxy.name.to_string(), bytes));
        stop(proc);
    }
    Ok((memory, tls_memory))
}

/// The current lbd's memory per idle HTTP/3 connection, on a fresh process.
fn idle_quic_memory(proxies: &[Proxy], ca: &Path) -> Result<f64> {
    let sluice = proxies.iter().find(|p| p.name == H3).context("no HTTP/3 lbd in the bench")?;
    let proc = sluice.start()?;
    let bytes = quic::idle_memory_per_connection(proc.0.id(), sluice.https, quic::IDLE_QUIC_CONNECTIONS, ca);
    stop(proc);
    bytes
}

/// One round's rates: each mode's proxies one after another, seconds apart, in the opposite
/// order the next round. The VM's speed drifts within minutes, and a ratio of samples taken
/// far apart measured the drift as much as the proxies.
fn rates(proxies: &[Proxy], modes: &[&str], round: usize, seconds: u64, log_dir: &Path) -> Result<Vec<Row>> {
    let mut table = Vec::new();
    for &mode in modes {
        let mut order: Vec<_> =
            proxies.iter().filter(|p| p.only().is_none_or(|only| only.contains(&mode))).collect();
        if round.is_multiple_of(2) {
            order.reverse();
        }
        for proxy in order {
            let proc = proxy.start()?;
            let url = match mode {
                "http1-keepalive" => format!("http://127.0.0.1:{}/", proxy.http),
                TLS_UPSTREAM => {
                    let url = format!("http://127.0.0.1:{}{TLS_UPSTREAM_PATH}", proxy.http);
                    answers_ok(&url).with_context(|| format!("{} in the {TLS_UPSTREAM} mode", proxy.name))?;
                    url
                }
                GZIP => {
                    let url = format!("http://127.0.0.1:{}/gz/page.html", proxy.http);
                    let size = gzipped(&url).with_context(|| format!("{} in the gzip mode", proxy.name))?;
                    if round == 1 {
                        println!("{GZIP}: {} sends the {PAGE_BYTES}-byte page as {size} bytes", proxy.name);
                    }
                    url
                }
                _ => format!("https://127.0.0.1:{}/", proxy.https),
            };
            table.push((
                mode.to_owned(),
                proxy.name.to_string(),
                load(proc.0.id(), mode, &url, seconds, log_dir)?,
            ));
            stop(proc);
        }
    }
    Ok(table)
}

/// Checks that the proxy at `url` answers 200 (wrk counts any answer alike: a proxy that
/// could not reach its TLS backends would be measured answering 502).
fn answers_ok(url: &str) -> Result<()> {
    let out = in_ns("1", "curl", &["-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}", url])
        .output()?;
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    if status != "200" {
        bail!("{url} answered {status:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Checks that the proxy at `url` gzips the page (wrk reads no bodies and would count plain
/// answers alike); the coded page's size (HAProxy's libslz codes faster and larger than zlib).
fn gzipped(url: &str) -> Result<u64> {
    let args = [
        "-sS",
        "--max-time",
        "5",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-w",
        "%{size_download}",
        "-H",
        "Accept-Encoding: gzip",
        url,
    ];
    let out = in_ns("1", "curl", &args).output()?;
    let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    let (head, size) = text.rsplit_once("\r\n\r\n").context("no head from curl")?;
    if !format!("{head}\r\n").contains("\r\ncontent-encoding: gzip\r\n") {
        bail!("the page came back not gzipped: {head}");
    }
    size.trim().parse().context("curl's size_download")
}

/// Prints one round: each mode's rows in `order`, Sluice's rate against the best peer's, the
/// references' lines.
fn print_round(table: &[Row], order: &[&str], modes: &[&str]) {
    println!(
        "{:<16} {:<11} {:>10} {:>9} {:>9} {:>10} {:>7} {:>7} {:>14}",
        "mode", "proxy", "req/s", "p50 ms", "p99 ms", "cpu us/req", "other", "load", "sluice/best"
    );
    for mode in modes {
        let mut rows: Vec<&Row> = table.iter().filter(|(m, _, _)| m == mode).collect();
        rows.sort_by_key(|(_, p, _)| order.iter().position(|q| q == p));
        let best_peer = rows
            .iter()
            .filter(|(_, p, _)| l7_targets::is_peer(p, &REFERENCES))
            .map(|(_, _, s)| s.rps)
            .fold(0.0, f64::max);
        for (m, p, s) in &rows {
            let ratio = if p.starts_with("sluice") && best_peer > 0.0 {
                format!("{:.2}x", s.rps / best_peer)
            } else {
                String::new()
            };
            println!(
                "{m:<16} {p:<11} {:>10.0} {:>9.2} {:>9.2} {:>10.1} {:>6.0}% {:>6.0}% {:>14}",
                s.rps,
                s.p50_ms,
                s.p99_ms,
                s.cpu_us_per_request,
                s.other_cpu * 100.0,
                s.load_cpu * 100.0,
                ratio
            );
        }
        let row = |proxy: &str| rows.iter().find(|(_, p, _)| p == proxy).map(|(_, _, s)| s);
        if let (Some(sluice), Some(floor)) = (row("sluice"), row(FLOOR))
            && best_peer > 0.0
        {
            println!(
                "{mode:<16} sluice/{FLOOR}: {:.2}x; {FLOOR}/best peer: {:.2}x",
                sluice.rps / floor.rps,
                floor.rps / best_peer
            );
        }
        if let (Some(sluice), Some(base)) = (row("sluice"), row(BASELINE)) {
            println!(
                "{mode:<16} sluice/{BASELINE}: {:.3}x the rate, {:.2}x the CPU per request, p99 {:.2} against {:.2} ms",
                sluice.rps / base.rps,
                sluice.cpu_us_per_request / base.cpu_us_per_request,
                sluice.p99_ms,
                base.p99_ms
            );
        }
        if let (Some(sluice), Some(same)) = (row("sluice"), row(SAME_SUITES)) {
            println!(
                "{mode:<16} sluice/{SAME_SUITES}: {:.2}x the rate, {:.2}x the CPU per request",
                sluice.rps / same.rps,
                sluice.cpu_us_per_request / same.cpu_us_per_request
            );
        }
    }
}

/// Memory per idle connection of one kind, Sluice's beside the smallest peer's.
fn print_memory(what: &str, memory: &[(String, f64)]) {
    let best_peer = memory
        .iter()
        .filter(|(p, _)| l7_targets::is_peer(p, &REFERENCES))
        .map(|(_, b)| *b)
        .fold(f64::MAX, f64::min);
    println!("\nmemory per idle keep-alive connection ({what}):");
    for (proxy, bytes) in memory {
        let ratio = if proxy == "sluice" && best_peer >= 1.0 {
            format!("{:.2}x the smallest peer", bytes / best_peer)
        } else {
            String::new()
        };
        println!("{proxy:<11} {:>8.1} KiB  {ratio}", bytes / 1024.0);
    }
}

#[cfg(test)]
mod tests {
    use super::h2load_percentiles;

    #[test]
    fn h2loads_log_gives_the_p50_and_p99_by_nearest_rank() {
        // 200 requests taking 1..=200 ms, listed out of order, and a line that is not one.
        let mut log = String::from("garbage\n");
        for ms in (1..=200u64).rev() {
            log += &format!("1700000000000000\t200\t{}\n", ms * 1000);
        }
        assert_eq!(h2load_percentiles(&log), (100.0, 198.0));
        assert_eq!(h2load_percentiles("1\t200\t2500\n"), (2.5, 2.5));
        let (p50, p99) = h2load_percentiles("");
        assert!(p50.is_nan() && p99.is_nan());
    }
}
