//! Root tests of client-connection hygiene on the L7 listeners, with real sockets from a client
//! namespace: silent and stalled connections closed by their timeouts, idle connections closed
//! first when a listener is full, the descriptor limit reached without a log flood or false
//! health verdicts, and the parser's edge cases (duplicate Host, HTTP/2 header count,
//! `Connection: Host`, half-close, access-log injection, refusals counted). The bed's lbd polls
//! busily (`[proxy] busy_poll_us`), so every case also runs with busy polling on; one checks
//! that an idle lbd stops polling.
use std::{
    io::{Read, Write},
    net::{Shutdown, TcpStream},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Result;
use sluice_tests::{
    l7_config,
    netns::Topology,
    pki::TestCa,
    servers::{Haproxy, Lbd, Nginx, TempDir, wait_for},
};

const VIP: &str = "198.19.0.5";

struct Bed {
    lbd: Lbd,
    _nginx: Nginx,
    ca: TestCa,
    log: PathBuf,
    topology: Topology,
    _dir: TempDir,
}

impl Bed {
    fn new(name: &str) -> Result<Bed> {
        let topology = Topology::new(1)?;
        let dir = TempDir::new(name)?;
        let ca = TestCa::new(&dir.0)?;
        let (cert, key) = ca.leaf("example", &["example.test"], false)?;
        let nginx = Nginx::start(&topology.backends[0], "backend1")?;
        topology.lb.run("ip", &["addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
        let b1 = topology.backends[0].addr4;
        let config = dir.0.join("sluice.toml");
        std::fs::write(
            &config,
            format!(
                r#"[proxy]
busy_poll_us = 200

{bed}[[listener]]
name = "plain"
address = "{VIP}:80"
first_byte_timeout_ms = 1000
idle_timeout_ms = 1500

[[listener]]
name = "tls"
address = "{VIP}:443"
tls = {{ certificates = [{{ cert = "{cert}", key = "{key}" }}] }}
handshake_timeout_ms = 1000

[[listener]]
name = "small"
address = "{VIP}:8080"
max_connections = 50
first_byte_timeout_ms = 60000
idle_timeout_ms = 60000

[[listener]]
name = "wide"
address = "{VIP}:8081"
first_byte_timeout_ms = 60000
idle_timeout_ms = 60000
client_address = {{ header = "x-forwarded-for", trusted = ["{client}/32"] }}

[[listener]]
name = "proxied"
address = "{VIP}:8082"
proxy_protocol = true

# Only errors from 404 up are logged here.
[[listener]]
name = "filtered"
address = "{VIP}:8084"
access_log_filter = {{ status_at_least = 404 }}

[[listener]]
name = "proxied_tls"
address = "{VIP}:8443"
tls = {{ certificates = [{{ cert = "{cert}", key = "{key}" }}] }}
proxy_protocol = true

[[route]]
listener = "plain"
host = "quiet.test"
pool = "web"
access_log = false

[[route]]
listener = "plain"
pool = "web"

[[route]]
listener = "tls"
pool = "web"

[[route]]
listener = "small"
pool = "web"

[[route]]
listener = "wide"
pool = "web"

[[route]]
listener = "filtered"
pool = "web"

[[route]]
listener = "proxied"
pool = "web"

[[route]]
listener = "proxied_tls"
pool = "web"

[admin]
socket = "{dir}/lbd.sock"
metrics = "127.0.0.1:9100"
"#,
                bed = l7_config::l7_bed(&topology.tag, VIP, &[b1]),
                client = topology.client.addr4,
                cert = cert.display(),
                key = key.display(),
                dir = dir.0.display(),
            ),
        )?;
        let log = dir.0.join("lbd.log");
        let lbd = Lbd::start_logging(&topology.lb, &config, Some(&log))?;
        wait_for("the listeners", Duration::from_secs(5), || {
            topology.lb.run("ss", &["-Htln", "sport = :8443"]).map(|o| !o.stdout.is_empty()).unwrap_or(false)
        })?;
        Ok(Bed { lbd, _nginx: nginx, ca, log, topology, _dir: dir })
    }

    /// `curl` from the client namespace: the body (empty on failure).
    fn body(&self, url: &str, args: &[&str]) -> Result<String> {
        let cacert = self.ca.cert.to_str().unwrap_or_default().to_owned();
        let mut all = vec!["-s", "--max-time", "3", "--cacert", &cacert];
        all.extend_from_slice(args);
        all.push(url);
        Ok(String::from_utf8_lossy(&self.topology.client.run("curl", &all)?.stdout).into_owned())
    }

    /// `curl` from the client namespace: the status code (000 on failure).
    fn status(&self, url: &str, args: &[&str]) -> Result<String> {
        let cacert = self.ca.cert.to_str().unwrap_or_default().to_owned();
        let resolve = format!("example.test:443:{VIP}");
        let mut all = vec!["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3"];
        all.extend(["--cacert", &cacert, "--resolve", &resolve]);
        all.extend_from_slice(args);
        all.push(url);
        Ok(String::from_utf8_lossy(&self.topology.client.run("curl", &all)?.stdout).into_owned())
    }

    /// `n` connections to `port` that send `bytes` (maybe nothing) and then wait.
    fn idle_sockets(&self, port: u16, n: usize, bytes: &[u8]) -> Result<Vec<TcpStream>> {
        let bytes = bytes.to_vec();
        self.topology.client.within(move || {
            let mut sockets = Vec::new();
            for _ in 0..n {
                let mut s =
                    TcpStream::connect_timeout(&format!("{VIP}:{port}").parse()?, Duration::from_secs(2))?;
                if !bytes.is_empty() {
                    s.write_all(&bytes)?;
                }
                sockets.push(s);
            }
            Ok(sockets)
        })
    }

    /// A raw exchange with the plain listener; `half_close` shuts the write side after sending.
    fn raw(&self, bytes: &[u8], half_close: bool) -> Result<String> {
        let bytes = bytes.to_vec();
        self.topology.client.within(move || {
            let mut s = TcpStream::connect((VIP, 80))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.write_all(&bytes)?;
            if half_close {
                s.shutdown(Shutdown::Write)?;
            }
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            Ok(String::from_utf8_lossy(&out).into_owned())
        })
    }

    /// `bytes` to the TLS listener over TLS 1.3 with ALPN h2, then the client's `close_notify`
    /// and the end of its TCP stream: what it then reads back, decrypted.
    fn tls_h2_half_closed(&self, bytes: &[u8]) -> Result<Vec<u8>> {
        use rustls_pki_types::{CertificateDer, pem::PemObject as _};
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&self.ca.cert)? {
            roots.add(cert?)?;
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let config = std::sync::Arc::new(config);
        let bytes = bytes.to_vec();
        self.topology.client.within(move || {
            let mut conn = rustls::ClientConnection::new(config, "example.test".try_into()?)?;
            let mut socket = TcpStream::connect((VIP, 443))?;
            socket.set_read_timeout(Some(Duration::from_secs(3)))?;
            rustls::Stream::new(&mut conn, &mut socket).write_all(&bytes)?;
            conn.send_close_notify();
            while conn.wants_write() {
                conn.write_tls(&mut socket)?;
            }
            socket.shutdown(Shutdown::Write)?;
            let mut out = Vec::new();
            // The proxy closes without a close_notify of its own: the read ends in an error,
            // after what came before it.
            let _ = rustls::Stream::new(&mut conn, &mut socket).read_to_end(&mut out);
            Ok(out)
        })
    }

    fn metrics(&self) -> Result<String> {
        let out = self.topology.lb.run("curl", &["-sS", "http://127.0.0.1:9100/metrics"])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// CPU seconds `pid` has used (user and system, all threads).
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name (which may hold spaces) in parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime, fields 14 and 15 of the line: 11 and 12 after the name (state is 0).
    // SAFETY: sysconf only reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(11) + ticks(12)) / hz)
}

/// Whether the server has closed `socket` (a read sees the end, or a reset).
fn closed_by_server(mut socket: &TcpStream) -> bool {
    let _ = socket.set_read_timeout(Some(Duration::from_millis(20)));
    let mut byte = [0u8; 64];
    loop {
        match socket.read(&mut byte) {
            Ok(0) => return true,
            Ok(_) => continue, // an answer (e.g. a TLS alert) before the close
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// The value of the first metrics line starting with `prefix`.
fn metric(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn root_l7_hygiene_silent_and_stalled_connections_time_out() -> Result<()> {
    let bed = Bed::new("hyg-timeouts")?;
    // 500 plain sockets that send nothing, 200 TLS sockets stalled inside their ClientHello
    // (a record header announcing 512 bytes, then 6 of them).
    let silent = bed.idle_sockets(80, 500, b"")?;
    // The kernel holds them until they send or about a second passes (`defer_accept`): lbd has
    // not taken them yet.
    let open = metric(&bed.metrics()?, "sluice_http_connections{listener=\"plain\"}");
    assert!(open < 500.0, "{open} silent connections accepted at once");
    let stalled =
        bed.idle_sockets(443, 200, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03])?;
    // Meanwhile a normal client keeps getting answers.
    for _ in 0..5 {
        assert_eq!(bed.status(&format!("http://{VIP}/"), &[])?, "200");
        assert_eq!(bed.status("https://example.test/", &[])?, "200");
    }
    // The kernel hands a silent connection over after about a second (`defer_accept`); the
    // first-byte timeout (1 s) runs from then.
    std::thread::sleep(Duration::from_millis(2800));
    let silent_closed = silent.iter().filter(|s| closed_by_server(s)).count();
    let stalled_closed = stalled.iter().filter(|s| closed_by_server(s)).count();
    assert_eq!(silent_closed, 500, "silent sockets still open after the first-byte timeout");
    assert_eq!(stalled_closed, 200, "stalled handshakes still open after the handshake timeout");
    let metrics = bed.metrics()?;
    assert!(
        metric(
            &metrics,
            "sluice_http_idle_closed_connections_total{listener=\"plain\",reason=\"first_byte_timeout\"}"
        ) >= 500.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "sluice_tls_handshakes_total{listener=\"tls\",result=\"timeout\"}") >= 200.0,
        "{metrics}"
    );

    // Handshakes whose ClientHello names an IP address as SNI (wrk does; RFC 6066 forbids it)
    // leave no line each in lbd's log: a client cannot make the log grow per connection.
    let lines_before = std::fs::read_to_string(&bed.log)?.lines().count();
    let script = format!(
        "for i in $(seq 20); do openssl s_client -connect {VIP}:443 -servername {VIP} </dev/null >/dev/null 2>&1; done"
    );
    bed.topology.client.run("sh", &["-c", &script])?;
    let log = std::fs::read_to_string(&bed.log)?;
    let new_lines: Vec<&str> = log.lines().skip(lines_before).collect();
    assert!(new_lines.len() < 5, "20 handshakes with an IP address as SNI logged {new_lines:#?}");

    // A keep-alive connection idle between requests is closed after idle_timeout (1.5 s).
    let kept = bed.idle_sockets(80, 1, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")?;
    std::thread::sleep(Duration::from_millis(500));
    assert!(!closed_by_server(&kept[0]), "closed before the idle timeout");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(closed_by_server(&kept[0]), "idle keep-alive connection kept open");

    // Busy polling ends 200 µs after the last client byte: an idle lbd sleeps.
    let before = cpu_seconds(bed.lbd.pid())?;
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_seconds(bed.lbd.pid())? - before;
    assert!(used < 0.3, "idle lbd with busy polling used {used:.2} s of CPU in 2 s");
    Ok(())
}

#[test]
fn root_l7_hygiene_full_listener_closes_idle_first_and_descriptor_limit() -> Result<()> {
    let bed = Bed::new("hyg-limits")?;
    // max_connections = 50, all taken by idle sockets: a new client is still served.
    // (Silent sockets: the kernel hands them over after about a second, `defer_accept`.)
    let idle = bed.idle_sockets(8080, 50, b"")?;
    std::thread::sleep(Duration::from_millis(1800));
    assert_eq!(bed.status(&format!("http://{VIP}:8080/"), &[])?, "200", "locked out by idle sockets");
    assert!(idle.iter().any(closed_by_server), "no idle connection made room");
    drop(idle);

    // The descriptor limit: 300, exhausted by 400 idle clients on a listener with long timeouts.
    let pid = bed.lbd.pid().to_string();
    let out = bed.topology.lb.run("prlimit", &["--pid", &pid, "--nofile=300:300"])?;
    assert!(out.status.success(), "prlimit: {}", String::from_utf8_lossy(&out.stderr));
    let lines_before = std::fs::read_to_string(&bed.log)?.lines().count();
    let started = Instant::now();
    let flood = bed.idle_sockets(8081, 400, b"")?;
    std::thread::sleep(Duration::from_secs(3));
    let seconds = started.elapsed().as_secs_f64();
    let log = std::fs::read_to_string(&bed.log)?;
    let new_lines = log.lines().count() - lines_before;
    assert!(new_lines as f64 <= 5.0 * seconds + 5.0, "{new_lines} log lines in {seconds:.1} s:\n{log}");
    // Health probes did not mark the healthy backend down.
    assert!(!log.contains("is DOWN"), "a healthy backend was marked down:\n{log}");
    let pool = bed.lbd.pool_show("web")?;
    assert!(pool.values().all(|(health, _)| health == "up"), "{pool:?}");
    // The clients leave: service resumes.
    drop(flood);
    wait_for("service after the flood", Duration::from_secs(5), || {
        bed.status(&format!("http://{VIP}/"), &[]).map(|c| c == "200").unwrap_or(false)
    })?;
    Ok(())
}

#[test]
fn root_l7_hygiene_parser_edges_and_access_log() -> Result<()> {
    let bed = Bed::new("hyg-parser")?;
    // Two Host headers: 400.
    let out = bed.raw(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", false)?;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    // CONNECT: 501 (no tunnel to where a client asks); a bare authority as the target: 400.
    let out = bed.raw(b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n", false)?;
    assert!(out.starts_with("HTTP/1.1 501"), "{out}");
    let out = bed.raw(b"GET example.test:80 HTTP/1.1\r\nHost: a\r\n\r\n", false)?;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    // HTTP/1.0 without Host: the backend (nginx, which answers 400 to an HTTP/1.1 request
    // without one) gets its own address as Host, as nginx sends by default.
    let out = bed.raw(b"GET /echo HTTP/1.0\r\n\r\n", false)?;
    assert!(out.starts_with("HTTP/1.1 200") && out.contains(" host=198.18."), "{out}");
    // `Connection: close, Host` does not strip Host on the way to the backend.
    let out =
        bed.raw(b"GET /echo HTTP/1.1\r\nHost: example.test\r\nConnection: close, Host\r\n\r\n", false)?;
    assert!(out.contains("host=example.test"), "{out}");
    // A client that half-closes after a complete GET is answered.
    let out = bed.raw(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", true)?;
    assert!(out.starts_with("HTTP/1.1 200") && out.contains("backend1"), "{out}");
    // So is one speaking HTTP/2 (prior knowledge: the preface, empty SETTINGS, a GET on stream
    // 1 in HPACK), as nginx and HAProxy answer it.
    let h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0\0\0\x06\x01\x05\0\0\0\x01\x82\x86\x84\x01\x01a";
    let out = bed.raw(h2, true)?;
    assert!(out.contains("backend1"), "{out:?}");
    // And over TLS: the client's close_notify, then the end of its stream.
    let out = bed.tls_h2_half_closed(&h2[..])?;
    assert!(String::from_utf8_lossy(&out).contains("backend1"), "{out:?}");
    // HTTP/2 with 150 header fields: 431, as HTTP/1.1.
    let many: Vec<String> = (0..150).map(|i| format!("x-h{i}: v")).collect();
    let mut args: Vec<&str> = vec!["--http2"];
    for h in &many {
        args.extend(["-H", h.as_str()]);
    }
    assert_eq!(bed.status("https://example.test/", &args)?, "431");
    // A forged X-Request-Id arrives escaped in the access log.
    let forged = "x-request-id: abc status=500 upstream=10.6.6.6:80";
    assert_eq!(bed.status(&format!("http://{VIP}/"), &["-H", forged])?, "200");
    // Behind a trusted proxy (the client's address, on the wide listener), the log's client is
    // the address it forwarded, and the connection's its peer.
    let behind = ["-H", "x-forwarded-for: 198.51.100.7", "-H", "x-request-id: behind-a-proxy"];
    assert_eq!(bed.status(&format!("http://{VIP}:8081/"), &behind)?, "200");
    // A route with `access_log = false` leaves no line, though its requests are counted.
    let quiet = ["-H", "host: quiet.test", "-H", "x-request-id: quiet-one"];
    assert_eq!(bed.status(&format!("http://{VIP}/"), &quiet)?, "200");
    // A listener that logs errors only: nginx's 404 (a file it lacks) leaves a line, its 200 none.
    let filtered = |path: &str, id: &str| bed.status(&format!("http://{VIP}:8084{path}"), &["-H", id]);
    assert_eq!(filtered("/", "x-request-id: filtered-200")?, "200");
    assert_eq!(filtered("/slow/missing", "x-request-id: filtered-404")?, "404");
    // Parser refusals are counted and logged.
    let out = bed.raw(b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n", false)?;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    // Workers hand their lines to the log's writer every 100 ms.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let log = loop {
        let log = std::fs::read_to_string(&bed.log)?;
        let both = log.contains("abc status=500")
            && log.contains("status=400 reason=")
            && log.contains("behind-a-proxy")
            && log.contains("filtered-404");
        if both || std::time::Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let line = log.lines().find(|l| l.contains("abc status=500")).unwrap_or_default();
    assert!(line.contains("request_id=\"abc status=500 upstream=10.6.6.6:80\""), "not escaped: {line}");
    assert!(line.contains(" user_agent=") && line.contains("curl/"), "{line}");
    assert!(line.contains(" status=200 "), "{line}");
    // The backend's time to its answer's head; one try, so no `tries`.
    assert!(line.contains(" upstream_ms=") && !line.contains(" tries="), "{line}");
    assert!(log.lines().any(|l| l.contains("access") && l.contains("status=400 reason=")), "{log}");
    assert!(log.contains("request_id=filtered-404"), "the filter keeps an error");
    let line = log.lines().find(|l| l.contains("behind-a-proxy")).unwrap_or_default();
    let peer = format!("client=198.51.100.7 peer={}:", bed.topology.client.addr4);
    assert!(line.contains(&peer), "{line}");
    // Each worker hands its lines over every 100 ms: the quiet route's would be there by now.
    std::thread::sleep(Duration::from_millis(300));
    let log = std::fs::read_to_string(&bed.log)?;
    assert!(!log.contains("quiet-one"), "a route without an access log was logged");
    assert!(!log.contains("filtered-200"), "a 200 on a listener that logs errors only was logged");
    let metrics = bed.metrics()?;
    assert!(
        metric(&metrics, "sluice_http_parser_refused_total{listener=\"plain\",status=\"400\"}") >= 1.0,
        "{metrics}"
    );
    let b1 = bed.topology.backends[0].addr4;
    let quiet = format!(
        "sluice_http_requests_total{{route=\"plain#0\",pool=\"web\",backend=\"{b1}:80\",class=\"2xx\"}}"
    );
    assert_eq!(metric(&metrics, &quiet), 1.0, "{metrics}");
    Ok(())
}

/// Behind a balancer that speaks the PROXY protocol (HAProxy from apt in the client's
/// namespace, `send-proxy-v2` to the TLS listener and `send-proxy` to the plain one; curl's own
/// `--haproxy-protocol`): the header's source is the client the backend and the access log
/// see. A connection with no header is closed unanswered and counted.
#[test]
fn root_l7_hygiene_behind_a_balancer_with_the_proxy_protocol() -> Result<()> {
    let bed = Bed::new("hyg-proxied")?;
    let balancer = format!(
        "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 5s\n  timeout server 5s\n\
         frontend tls\n  bind 127.0.0.1:9443\n  default_backend lbd_tls\n\
         frontend plain\n  bind 127.0.0.1:9080\n  default_backend lbd_plain\n\
         backend lbd_tls\n  server lbd {VIP}:8443 send-proxy-v2\n\
         backend lbd_plain\n  server lbd {VIP}:8082 send-proxy\n"
    );
    let _haproxy = Haproxy::start(&bed.topology.client, &balancer, 9080)?;
    // Through HAProxy, curl's connection comes from 127.0.0.1 and HAProxy's to lbd from the
    // client's address: the backend's X-Forwarded-For is the header's source.
    let resolve = "example.test:9443:127.0.0.1";
    let body =
        bed.body("https://example.test:9443/echo", &["--resolve", resolve, "-H", "x-request-id: via-v2"])?;
    assert!(body.starts_with("backend1 xff=127.0.0.1 proto=https"), "{body:?}");
    let body = bed.body("https://example.test:9443/echo", &["--resolve", resolve, "--http2"])?;
    assert!(body.starts_with("backend1 xff=127.0.0.1 proto=https"), "{body:?}");
    let body = bed.body("http://127.0.0.1:9080/echo", &["-H", "x-request-id: via-v1"])?;
    assert!(body.starts_with("backend1 xff=127.0.0.1 proto=http "), "{body:?}");
    // curl's own v1 header names its own address.
    let body = bed.body(&format!("http://{VIP}:8082/echo"), &["--haproxy-protocol"])?;
    let client = bed.topology.client.addr4;
    assert!(body.starts_with(&format!("backend1 xff={client} ")), "{body:?}");
    // No header (a request, a ClientHello's first bytes): closed unanswered, counted.
    for (port, bytes) in
        [(8082, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".as_slice()), (8443, b"\x16\x03\x01\x02\x00\x01\x00")]
    {
        let out = bed.topology.client.within(move || {
            let mut s = TcpStream::connect((VIP, port))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.write_all(bytes)?;
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            Ok(out)
        })?;
        assert!(out.is_empty(), "{port}: {out:?}");
    }
    let metrics = bed.metrics()?;
    for listener in ["proxied", "proxied_tls"] {
        let series =
            format!("sluice_http_proxy_protocol_refused_total{{listener=\"{listener}\",reason=\"missing\"}}");
        assert_eq!(metric(&metrics, &series), 1.0, "{metrics}");
    }
    // The access log's client is the header's source.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let log = loop {
        let log = std::fs::read_to_string(&bed.log)?;
        if (log.contains("via-v2") && log.contains("via-v1")) || std::time::Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for id in ["via-v2", "via-v1"] {
        let line = log.lines().find(|l| l.contains(id)).unwrap_or_default();
        assert!(line.contains("client=127.0.0.1:") && !line.contains("peer="), "{line}");
    }
    Ok(())
}
