//! Root tests of the L7 proxy with real clients (curl, openssl s_client, wrk) and real backends
//! (nginx): TLS by SNI with ALPN, HTTP/1.1 and HTTP/2, routing, forwarding headers, limits and
//! request smuggling, certificate reload, graceful stop.
use std::{
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::Stdio,
    time::Duration,
};

use anyhow::{Result, bail};
use sluice_tests::{
    netns::Topology,
    pki::TestCa,
    servers::{Haproxy, Lbd, Nginx, NginxTls, NsServer, TempDir, wait_for},
};

const VIP: &str = "198.19.0.3";

struct Bed {
    lbd: Option<Lbd>,
    _nginx: Vec<Nginx>,
    _servers: Vec<NsServer>,
    _haproxy: Haproxy,
    ca: TestCa,
    config: PathBuf,
    topology: Topology,
    _dir: TempDir,
}

impl Bed {
    fn new(name: &str) -> Result<Bed> {
        let topology = Topology::new(2)?;
        let dir = TempDir::new(name)?;
        let ca = TestCa::new(&dir.0)?;
        let (a_cert, a_key) =
            ca.leaf("example", &["example.test", "api.example.test", "grpc.example.test"], false)?;
        // Its CA's OCSP responder's answer, stapled to its handshakes (checked against the CA
        // in its file).
        ca.chain(&a_cert)?;
        let a_ocsp = dir.0.join("example.ocsp");
        ca.ocsp_response(&a_cert, 60, &a_ocsp)?;
        ca.leaf("client", &["client.test"], false)?;
        let (b_cert, b_key) = ca.leaf("wild", &["*.wild.test"], true)?;
        let (b1, b2) = (topology.backends[0].addr4, topology.backends[1].addr4);
        // The backends' own certificate, for their addresses and an internal name; and a CA
        // that signed nothing of theirs.
        let (n1, n2) = (b1.to_string(), b2.to_string());
        let (backend_cert, backend_key) = ca.leaf("backend", &["backend.internal", &n1, &n2], false)?;
        let other_dir = dir.0.join("other");
        std::fs::create_dir_all(&other_dir)?;
        let other_ca = TestCa::new(&other_dir)?;
        let mut nginx = Vec::new();
        for (i, backend) in topology.backends.iter().enumerate() {
            let tls = NginxTls { cert: &backend_cert, key: &backend_key, client_ca: &ca.cert };
            nginx.push(Nginx::start_with(backend, &format!("backend{}", i + 1), Some(tls))?);
        }
        topology.lb.run("ip", &["addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
        let config = dir.0.join("sluice.toml");
        std::fs::write(
            &config,
            format!(
                r#"[dataplane]
interface = "eth0"
xdp_mode = "generic"
pin_dir = "/sys/fs/bpf/{tag}"

[[vip]]
name = "https"
address = "{VIP}"
port = 443
protocol = "tcp"
pool = "web"
mode = "l7"

[[vip]]
name = "http"
address = "{VIP}"
protocol = "tcp"
pool = "web"
mode = "l7"

[[pool]]
name = "web"
backends = [{{ address = "{b1}" }}, {{ address = "{b2}" }}]
slow_start_ms = 60000

[[pool]]
name = "api"
backends = [{{ address = "{b1}" }}, {{ address = "{b2}" }}]
balance = "hash"
hash_key = "header:x-user"

[[listener]]
name = "https"
address = "{VIP}:443"
tls = {{ certificates = [{{ cert = "{ac}", key = "{ak}", ocsp = "{ao}" }}, {{ cert = "{bc}", key = "{bk}" }}] }}
max_body_bytes = 1000
max_header_bytes = 8192
header_read_timeout_ms = 1000
drain_timeout_ms = 10000

[[listener]]
name = "http"
address = "{VIP}:80"
header_read_timeout_ms = 1000
stream_idle_timeout_ms = 1500

[[pool]]
name = "grpc"
backends = [{{ address = "{b1}" }}]
port = 8081
protocol = "h2c"

[[listener]]
name = "mtls"
address = "{VIP}:8443"
tls = {{ certificates = [{{ cert = "{ac}", key = "{ak}" }}], client_ca = "{ca}", cipher_suites = ["TLS13_CHACHA20_POLY1305_SHA256", "TLS13_AES_256_GCM_SHA384"], forward_client_cert = true, forward_client_cert_details = ["cert"] }}

[[route]]
listener = "mtls"
pool = "web"

[[route]]
listener = "https"
host = "grpc.example.test"
pool = "grpc"

[[listener]]
name = "redirect"
address = "{VIP}:8080"
redirect_https = true

[[route]]
listener = "https"
host = "api.example.test"
path_prefix = "/api"
pool = "api"

# HAProxy behind a PROXY v2 pool: it reads the TLVs lbd writes for a TLS client.
[[pool]]
name = "ppv2"
backends = [{{ address = "{b2}" }}]
port = 8085
proxy_protocol = "v2"

[[route]]
listener = "https"
host = "pp.wild.test"
pool = "ppv2"

[[route]]
listener = "https"
host = "*.wild.test"
pool = "web"

[[route]]
name = "site"
listener = "https"
host = "example.test"
method = "GET"
pool = "web"

[[pool]]
name = "ws"
backends = [{{ address = "{b2}" }}]
port = 8082

[[route]]
listener = "http"
host = "ws.test"
pool = "ws"

# Two streams an h2c connection, then another connection.
[[pool]]
name = "grpc_capped"
backends = [{{ address = "{b1}" }}]
port = 8081
protocol = "h2c"
max_requests_per_connection = 2

[[route]]
listener = "http"
host = "grpc-capped.test"
pool = "grpc_capped"

[[pool]]
name = "secure"
backends = [{{ address = "{b1}" }}, {{ address = "{b2}" }}]
port = 443
tls = {{ ca = "{ca}", server_name = "backend.internal" }}
health = {{ kind = "http", port = 443, path = "/", interval_ms = 300, timeout_ms = 250 }}

[[pool]]
name = "secure_h2"
backends = [{{ address = "{b1}" }}]
port = 443
protocol = "h2"
tls = {{ ca = "{ca}", cert = "{client_cert}", key = "{client_key}" }}
health = {{ kind = "http", port = 443, path = "/", interval_ms = 300, timeout_ms = 250 }}

[[pool]]
name = "untrusted"
backends = [{{ address = "{b1}" }}, {{ address = "{b2}" }}]
port = 443
tls = {{ ca = "{other_ca}" }}
health = {{ kind = "http", port = 443, path = "/", interval_ms = 300, timeout_ms = 250 }}

[[route]]
listener = "http"
host = "secure.test"
pool = "secure"

[[route]]
listener = "http"
host = "h2.secure.test"
pool = "secure_h2"

[[route]]
listener = "http"
host = "untrusted.test"
pool = "untrusted"

[[pool]]
name = "misnamed"
backends = [{{ address = "{b1}" }}]
port = 443
tls = {{ ca = "{ca}", server_name = "elsewhere.internal" }}

[[route]]
listener = "http"
host = "misnamed.test"
pool = "misnamed"

[[pool]]
name = "byhost"
backends = [{{ address = "{b1}" }}]
port = 443
tls = {{ ca = "{ca}", sni_from_host = true }}

[[route]]
listener = "http"
host = "backend.internal"
pool = "byhost"

[[route]]
listener = "http"
host = "elsewhere.internal"
pool = "byhost"

[[pool]]
name = "hints"
backends = [{{ address = "{b1}" }}]
port = 8083

[[route]]
listener = "http"
host = "hints.test"
pool = "hints"

[[route]]
listener = "http"
host = "edits.test"
path_prefix = "/old/"
rewrite_prefix = "/"
pool = "web"
request_headers = {{ set = {{ "x-subject" = "edge" }} }}
response_headers = {{ set = {{ "x-frame-options" = "DENY" }}, remove = ["server"] }}
compress = {{ min_bytes = 16 }}

[[route]]
listener = "http"
host = "moved.test"
path_prefix = "/old/"
rewrite_prefix = "/new/"
redirect = {{ prefix = "https://www.moved.test", status = 308 }}

[[route]]
listener = "http"
host = "fixed.test"
respond = {{ status = 503, body = "down for maintenance\n", content_type = "text/plain" }}
response_headers = {{ set = {{ "retry-after" = "120" }} }}

[[route]]
listener = "http"
pool = "web"

[admin]
socket = "{dir}/lbd.sock"
metrics = "127.0.0.1:9100"
"#,
                tag = topology.tag,
                ac = a_cert.display(),
                ao = a_ocsp.display(),
                ak = a_key.display(),
                bc = b_cert.display(),
                bk = b_key.display(),
                dir = dir.0.display(),
                ca = ca.cert.display(),
                other_ca = other_ca.cert.display(),
                client_cert = ca.dir.join("client.pem").display(),
                client_key = ca.dir.join("client.key").display(),
            ),
        )?;
        let h2c = vec![
            NsServer::h2c(&topology.backends[0], 8081, "backend1")?,
            NsServer::upgrade_echo(&topology.backends[1], 8082)?,
            NsServer::early_hints(&topology.backends[0], 8083)?,
        ];
        // The PROXY v2 backend: HAProxy answers with what the header told it.
        let haproxy = Haproxy::start(
            &topology.backends[1],
            "defaults\n mode http\n timeout connect 5s\n timeout client 30s\n timeout server 30s\n\
             frontend pp\n bind :8085 accept-proxy\n http-request return status 200 content-type text/plain \
             lf-string \"authority=%[fc_pp_authority] client=%[src]\\n\"\n",
            8085,
        )?;
        let lbd = Lbd::start(&topology.lb, &config)?;
        wait_for("the https listener", Duration::from_secs(5), || {
            topology.lb.run("ss", &["-Htln", "sport = :443"]).map(|o| !o.stdout.is_empty()).unwrap_or(false)
        })?;
        Ok(Bed {
            lbd: Some(lbd),
            _nginx: nginx,
            _servers: h2c,
            _haproxy: haproxy,
            ca,
            config,
            topology,
            _dir: dir,
        })
    }

    /// curl from the client namespace with the test CA; returns stdout.
    fn curl(&self, args: &[&str]) -> Result<String> {
        let cacert = self.ca.cert.to_str().unwrap_or_default().to_owned();
        let mut all = vec!["-sS", "--max-time", "5", "--cacert", &cacert];
        for name in ["example.test", "api.example.test", "x.wild.test", "other.test", "grpc.example.test"] {
            all.push("--resolve");
            all.push(Box::leak(format!("{name}:443:{VIP}").into_boxed_str()));
        }
        all.extend_from_slice(args);
        Ok(String::from_utf8_lossy(&self.topology.client.run("curl", &all)?.stdout).into_owned())
    }

    /// `openssl s_client` from the client namespace; returns its whole output.
    fn s_client(&self, args: &[&str]) -> Result<String> {
        let mut child = self
            .topology
            .client
            .command("openssl")
            .args([
                "s_client",
                "-connect",
                &format!("{VIP}:443"),
                "-CAfile",
                self.ca.cert.to_str().unwrap_or_default(),
            ])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        drop(child.stdin.take());
        let out = child.wait_with_output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    }

    /// A raw TCP exchange with the plain listener: sends `bytes`, returns what came back
    /// until the server closed or 3 s passed.
    fn raw(&self, bytes: &[u8], pause: Duration) -> Result<String> {
        let mut stream = self.topology.client.within(|| Ok(TcpStream::connect((VIP, 80))?))?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        stream.write_all(bytes)?;
        std::thread::sleep(pause);
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out);
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

fn subject(s_client: &str) -> String {
    s_client.lines().find(|l| l.starts_with("subject=")).unwrap_or_default().replace(' ', "")
}

#[test]
fn root_l7_tls_sni_alpn_versions_resumption() -> Result<()> {
    let bed = Bed::new("l7-tls")?;
    let out = bed.s_client(&["-servername", "api.example.test", "-alpn", "h2"])?;
    assert!(subject(&out).contains("CN=example.test"), "{out}");
    assert!(out.contains("ALPN protocol: h2") && out.contains("TLSv1.3"), "{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");

    // Its OCSP response stapled (nginx's `ssl_stapling_file`); the wildcard one has none.
    let out = bed.s_client(&["-servername", "example.test", "-status"])?;
    assert!(out.contains("OCSP Response Status: successful") && out.contains("Cert Status: good"), "{out}");
    let out = bed.s_client(&["-servername", "deep.x.wild.test", "-alpn", "http/1.1", "-status"])?;
    assert!(out.contains("OCSP response: no response sent"), "{out}");
    assert!(subject(&out).contains("CN=*.wild.test"), "wildcard by SNI: {out}");
    assert!(out.contains("ALPN protocol: http/1.1") && out.contains("2048 bit"), "RSA key: {out}");
    // lbctl lists both, the stapled one with its staple's end, as read from files.
    let listed =
        bed.lbd.as_ref().map(|lbd| lbd.lbctl(&["listener", "list"])).transpose()?.unwrap_or_default();
    let row = |name: &str| listed.lines().find(|l| l.contains(name)).unwrap_or_default().to_owned();
    assert!(
        row("api.example.test").contains(" stapled to ") && row("api.example.test").ends_with("files"),
        "{listed}"
    );
    assert!(row("*.wild.test").contains(" - ") && row("*.wild.test").ends_with("files"), "{listed}");

    // A PROXY v2 pool: HAProxy reads the client's server name from the header's TLV.
    let out = bed.curl(&["--resolve", &format!("pp.wild.test:443:{VIP}"), "https://pp.wild.test/"])?;
    assert_eq!(out, format!("authority=pp.wild.test client={}\n", bed.topology.client.addr4), "{out}");

    let out = bed.s_client(&["-servername", "unknown.test", "-tls1_2"])?;
    assert!(subject(&out).contains("CN=example.test"), "default certificate: {out}");
    assert!(out.contains("TLSv1.2"), "{out}");

    // The server picks the suite: AES-128-GCM when offered (OpenSSL asks for AES-256 first),
    // and a client that offers only AES-256 still gets it.
    let out = bed.s_client(&["-servername", "example.test"])?;
    assert!(out.contains("TLSv1.3, Cipher is TLS_AES_128_GCM_SHA256"), "{out}");
    let out = bed.s_client(&["-servername", "example.test", "-tls1_2"])?;
    assert!(out.contains("Cipher is ECDHE-ECDSA-AES128-GCM-SHA256"), "{out}");
    let out = bed.s_client(&["-servername", "example.test", "-ciphersuites", "TLS_AES_256_GCM_SHA384"])?;
    assert!(out.contains("TLSv1.3, Cipher is TLS_AES_256_GCM_SHA384"), "{out}");
    // A listener's own `cipher_suites`, in its order (OpenSSL asks for AES-256 first).
    let (cert, key) = (bed.ca.dir.join("client.pem"), bed.ca.dir.join("client.key"));
    let out = bed.s_client(&[
        "-connect",
        &format!("{VIP}:8443"),
        "-servername",
        "example.test",
        "-cert",
        cert.to_str().unwrap_or_default(),
        "-key",
        key.to_str().unwrap_or_default(),
    ])?;
    assert!(out.contains("TLSv1.3, Cipher is TLS_CHACHA20_POLY1305_SHA256"), "{out}");

    let session = bed._dir.0.join("session.pem");
    bed.s_client(&[
        "-servername",
        "example.test",
        "-tls1_2",
        "-sess_out",
        session.to_str().unwrap_or_default(),
    ])?;
    let out = bed.s_client(&[
        "-servername",
        "example.test",
        "-tls1_2",
        "-sess_in",
        session.to_str().unwrap_or_default(),
    ])?;
    assert!(out.contains("Reused, TLSv1.2"), "session resumption: {out}");
    Ok(())
}

#[test]
fn root_l7_http1_http2_routing_and_headers() -> Result<()> {
    let bed = Bed::new("l7-route")?;
    let mut seen = std::collections::BTreeSet::new();
    for version in ["--http2", "--http1.1"] {
        for _ in 0..4 {
            let out = bed.curl(&[version, "-w", " %{http_version}", "https://example.test/"])?;
            let (body, got) = out.rsplit_once(' ').unwrap_or_default();
            assert_eq!(got, if version == "--http2" { "2" } else { "1.1" }, "{out}");
            seen.insert(body.trim().to_owned());
        }
    }
    assert_eq!(seen.len(), 2, "round robin over both backends: {seen:?}");

    // Routing: host + path prefix to the hashed pool, wildcard host, method, no match.
    let user_a: Vec<String> = (0..4)
        .map(|_| bed.curl(&["-H", "x-user: alice", "https://api.example.test/api/v1"]))
        .collect::<Result<_>>()?;
    assert!(user_a.iter().all(|b| *b == user_a[0]), "consistent hash on x-user: {user_a:?}");
    assert!(bed.curl(&["https://x.wild.test/"])?.starts_with("backend"));
    let code = |args: &[&str]| -> Result<String> {
        let mut all = vec!["-o", "/dev/null", "-w", "%{http_code}"];
        all.extend_from_slice(args);
        bed.curl(&all)
    };
    assert_eq!(code(&["https://api.example.test/other"])?, "404");
    assert_eq!(code(&["-X", "POST", "https://example.test/"])?, "404", "route is GET only");
    assert_eq!(code(&["-k", "https://other.test/"])?, "404");

    // Forwarding headers reach the backend; X-Request-Id is kept or made. Via says the
    // protocol the request came in (RFC 9110 §7.6.3).
    for (version, via) in [("--http1.1", "via=1.1 sluice"), ("--http2", "via=2 sluice")] {
        let echo = bed.curl(&[version, "-H", "x-request-id: abc123", "https://example.test/echo"])?;
        for part in [
            "xff=198.18.0.2",
            "proto=https",
            "rid=abc123",
            via,
            "host=example.test",
            "fwd=for=198.18.0.2;proto=https;host=example.test",
        ] {
            assert!(echo.contains(part), "{version}: missing {part}: {echo}");
        }
    }
    // Forwarded's host is the Host as the client sent it, port and all (RFC 7239 §5.3).
    let echo = bed.curl(&["-H", "Host: Example.test:8080", &format!("http://{VIP}/echo")])?;
    assert!(echo.contains("fwd=for=198.18.0.2;proto=http;host=\"Example.test:8080\" rid="), "{echo}");
    // A client's own forwarding fields: its X-Forwarded-For list is extended, its Via replaced
    // (one field each reaches the backend, not the client's and the proxy's).
    let echo = bed.curl(&[
        "-H",
        "x-forwarded-for: 203.0.113.9",
        "-H",
        "via: 1.0 client",
        "-H",
        "forwarded: for=203.0.113.9",
        "--http1.1",
        "https://example.test/echo",
    ])?;
    for part in [
        "xff=203.0.113.9, 198.18.0.2 proto=",
        "via=1.1 sluice host=",
        "fwd=for=198.18.0.2;proto=https;host=example.test rid=",
    ] {
        assert!(echo.contains(part), "missing {part}: {echo}");
    }
    // The host a request is routed by is the host its backend gets. curl as a forward proxy
    // sends an absolute-form target: routed by example.test (web, not the ws pool of ws.test),
    // so the backend's Host is example.test, not the ws.test the client put beside it.
    let proxy = format!("http://{VIP}:80");
    let echo = bed.curl(&["--http1.1", "-x", &proxy, "-H", "Host: ws.test", "http://example.test/echo"])?;
    for part in ["fwd=for=198.18.0.2;proto=http;host=example.test rid=", "host=example.test method="] {
        assert!(echo.contains(part), "missing {part}: {echo}");
    }
    // A Host cannot add parameters to Forwarded: it arrives quoted.
    let echo = bed.curl(&["-H", "Host: a;for=192.0.2.66,for=192.0.2.77", &format!("http://{VIP}/echo")])?;
    assert!(
        echo.contains("fwd=for=198.18.0.2;proto=http;host=\"a;for=192.0.2.66,for=192.0.2.77\""),
        "{echo}"
    );
    // HTTP/1.1 without Host, or with an invalid one: 400 (RFC 9110 §7.2), as nginx answers.
    for host in ["Host:", "Host: a/b", "Host: u@a"] {
        assert_eq!(code(&["-H", host, &format!("http://{VIP}/echo")])?, "400", "{host}");
    }
    // The answer carries the request's ID; a backend's answer names the proxy in Via, once, over
    // HTTP/2 and HTTP/1.1; an answer the proxy made (404) has no Via.
    for version in ["--http2", "--http1.1"] {
        let headers = bed.curl(&[version, "-D", "-", "-o", "/dev/null", "https://example.test/echo"])?;
        let headers = headers.to_ascii_lowercase();
        assert!(headers.contains("x-request-id: "), "{headers}");
        assert_eq!(headers.matches("via: 1.1 sluice\r\n").count(), 1, "{headers}");
        let refused = bed.curl(&[version, "-D", "-", "-o", "/dev/null", "https://api.example.test/other"])?;
        assert!(refused.starts_with("HTTP/") && !refused.to_ascii_lowercase().contains("via:"), "{refused}");
    }

    // Redirect listener.
    let location = bed.curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        &format!("http://{VIP}:8080/x?y=1"),
    ])?;
    assert_eq!(location, format!("301 https://{VIP}/x?y=1"));

    // Metrics.
    let metrics = String::from_utf8_lossy(
        &bed.topology.lb.run("curl", &["-sS", "http://127.0.0.1:9100/metrics"])?.stdout,
    )
    .into_owned();
    assert!(metrics.contains("sluice_http_requests_total{route=\"site\",pool=\"web\""), "{metrics}");
    assert!(metrics.contains("sluice_tls_handshakes_total{listener=\"https\",result=\"ok\"}"), "{metrics}");
    assert!(metrics.contains("sluice_http_upstream_seconds_bucket"), "{metrics}");

    // A backend's 103 Early Hints reaches curl before the answer, over HTTP/1.1 and HTTP/2
    // (prior knowledge), without its hop-by-hop fields.
    for (version, status) in [("--http1.1", "HTTP/1.1 103"), ("--http2-prior-knowledge", "HTTP/2 103")] {
        let out = bed.curl(&[version, "-D", "-", "-H", "Host: hints.test", &format!("http://{VIP}/")])?;
        let hints = out.find(status).unwrap_or_else(|| panic!("no {status} in {out}"));
        let answer = out.find(" 200").unwrap_or_else(|| panic!("no answer in {out}"));
        assert!(hints < answer && out.ends_with("hinted\n"), "{out}");
        let interim = out[hints..answer].to_ascii_lowercase();
        assert!(interim.contains("link: </style.css>; rel=preload"), "{out}");
        assert!(!interim.contains("x-hop"), "a hop-by-hop field passed: {out}");
    }

    // A route's edits: nginx answers at /echo (the route's /old/ rewritten to /) with the
    // X-Subject it got, the route's and not curl's; the answer carries the route's field and
    // not nginx's Server, over HTTP/1.1 and HTTP/2.
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let echo = format!("http://{VIP}/old/echo");
        let out =
            bed.curl(&[version, "-D", "-", "-H", "Host: edits.test", "-H", "X-Subject: client", &echo])?;
        let lower = out.to_ascii_lowercase();
        assert!(out.contains(" sub=edge user=\n") && !out.contains("client"), "{out}");
        assert!(lower.contains("\r\nx-frame-options: deny\r\n"), "{out}");
        assert!(!lower.contains("\r\nserver:"), "a removed field reached the client: {out}");
        assert!(!lower.contains("content-encoding"), "gzip without Accept-Encoding: {out}");
        // With --compressed, curl asks for gzip and decodes it.
        let out = bed.curl(&[version, "--compressed", "-D", "-", "-H", "Host: edits.test", &echo])?;
        assert!(out.to_ascii_lowercase().contains("\r\ncontent-encoding: gzip\r\n"), "{out}");
        assert!(out.contains(" sub=edge user=\n"), "not decoded: {out}");
    }
    // Routes that answer by themselves: a redirect to another host with the path a backend
    // would get and the query, and a fixed answer with the route's field, to HTTP/1.1 and
    // HTTP/2 (HEAD: the head alone).
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let out =
            bed.curl(&[version, "-D", "-", "-H", "Host: moved.test", &format!("http://{VIP}/old/a?b=1")])?;
        let lower = out.to_ascii_lowercase();
        assert!(
            out.contains(" 308") && lower.contains("\r\nlocation: https://www.moved.test/new/a?b=1\r\n"),
            "{out}"
        );
        let fixed = format!("http://{VIP}/");
        let out = bed.curl(&[version, "-D", "-", "-H", "Host: fixed.test", &fixed])?;
        let lower = out.to_ascii_lowercase();
        assert!(out.contains(" 503") && lower.contains("\r\nretry-after: 120\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\ndown for maintenance\n"), "{out}");
        let out = bed.curl(&[version, "-I", "-H", "Host: fixed.test", &fixed])?;
        assert!(out.contains(" 503") && out.to_ascii_lowercase().contains("content-length: 21"), "{out}");
    }
    let listed = bed.lbd.as_ref().expect("running").lbctl(&["route", "list"])?;
    let edits = listed.lines().find(|l| l.contains("edits.test")).unwrap_or_default();
    assert!(edits.contains(" path>/, 3 fields, gzip "), "{listed}");
    let moved = listed.lines().find(|l| l.contains("moved.test")).unwrap_or_default();
    assert!(moved.contains(" redirect 308 https://www.moved.test… "), "{listed}");
    let fixed = listed.lines().find(|l| l.contains("fixed.test")).unwrap_or_default();
    assert!(fixed.contains(" respond 503 "), "{listed}");

    // Round robin follows the weights: 300 against 100 gives three requests in four.
    let (b1, b2) = (bed.topology.backends[0].addr4, bed.topology.backends[1].addr4);
    let lbctl = |args: &[&str]| bed.lbd.as_ref().expect("running").lbctl(args);
    lbctl(&["backend", "weight", "web", &b1.to_string(), "300"])?;
    let bodies: Vec<String> = (0..40).map(|_| bed.curl(&["https://example.test/"])).collect::<Result<_>>()?;
    let first = bodies.iter().filter(|b| b.trim() == "backend1").count();
    assert_eq!((first, bodies.len() - first), (30, 10), "{bodies:?}");
    lbctl(&["backend", "weight", "web", &b1.to_string(), "100"])?;

    // Slow start: a backend back from a drain gets a tenth of its share at first (and ramps
    // to all of it over the pool's 60 s), where one there from the start had it at once.
    lbctl(&["backend", "drain", "web", &b2.to_string()])?;
    lbctl(&["backend", "drain", "web", &b2.to_string(), "--undo"])?;
    let shown = lbctl(&["pool", "show", "web"])?;
    let row = shown.lines().find(|l| l.contains(&b2.to_string())).unwrap_or_default();
    assert!(row.contains("(slow start: 1") && shown.contains("slow start 60000 ms"), "{shown}");
    let bodies: Vec<String> = (0..22).map(|_| bed.curl(&["https://example.test/"])).collect::<Result<_>>()?;
    let second = bodies.iter().filter(|b| b.trim() == "backend2").count();
    assert!((1..=5).contains(&second), "{second} of 22 to the ramping backend: {bodies:?}");

    // A backend removed from the pool leaves the request series; the other stays.
    let series = |b| format!("sluice_http_requests_total{{route=\"site\",pool=\"web\",backend=\"{b}:80\"");
    assert!(metrics.contains(&series(b2)), "{metrics}");
    bed.lbd.as_ref().expect("running").lbctl(&["backend", "remove", "web", &b2.to_string()])?;
    let metrics = String::from_utf8_lossy(
        &bed.topology.lb.run("curl", &["-sS", "http://127.0.0.1:9100/metrics"])?.stdout,
    )
    .into_owned();
    assert!(metrics.contains(&series(b1)), "{metrics}");
    assert!(!metrics.contains(&series(b2)), "{metrics}");
    assert!(
        !metrics.contains(&format!("sluice_http_upstream_seconds_count{{pool=\"web\",backend=\"{b2}:80\"}}")),
        "{metrics}"
    );
    Ok(())
}

#[test]
fn root_l7_limits_and_request_smuggling() -> Result<()> {
    let bed = Bed::new("l7-limits")?;
    let code = |args: &[&str]| -> Result<String> {
        let mut all = vec!["-o", "/dev/null", "-w", "%{http_code}"];
        all.extend_from_slice(args);
        bed.curl(&all)
    };
    let body = "x".repeat(2000);
    assert_eq!(code(&["--http1.1", "-X", "GET", "--data", &body, "https://example.test/"])?, "413");
    let big = format!("x-big: {}", "y".repeat(10_000));
    assert_eq!(code(&["--http1.1", "-H", &big, "https://example.test/"])?, "431");

    // CL.TE: hyper follows RFC 9112 §6.3 (Transfer-Encoding wins, the connection closes after
    // the answer), so the smuggled second request is never read, let alone forwarded.
    let out = bed.raw(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n",
        Duration::ZERO,
    )?;
    assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "a smuggled request was answered: {out}");
    assert!(out.to_ascii_lowercase().contains("connection: close"), "{out}");
    // Duplicate lengths, invalid chunk sizes, unknown codings: 400 and closed.
    let vectors: [&[u8]; 3] = [
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nhello\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ];
    for vector in vectors {
        let out = bed.raw(vector, Duration::ZERO)?;
        assert!(
            out.starts_with("HTTP/1.1 400") || out.is_empty(),
            "{:?} -> {out:?}",
            String::from_utf8_lossy(vector)
        );
        assert!(!out.contains("backend"), "smuggled through: {out}");
    }
    // Chunked last after a coding the proxy does not implement: 501 and closed.
    let out = bed.raw(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        Duration::ZERO,
    )?;
    assert!(out.starts_with("HTTP/1.1 501") && out.contains("connection: close"), "{out}");
    // Too many header fields: 431.
    let many: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    let out = bed.raw(format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n").as_bytes(), Duration::ZERO)?;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    // A WebSocket-style upgrade is passed through: after 101, bytes flow both ways.
    let mut stream = bed.topology.client.within(|| Ok(TcpStream::connect((VIP, 80))?))?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    stream.write_all(
        b"GET /chat HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte)? == 1 {
        head.push(byte[0]);
    }
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    stream.write_all(b"ping through the tunnel")?;
    let mut echoed = [0u8; 23];
    stream.read_exact(&mut echoed)?;
    assert_eq!(&echoed, b"ping through the tunnel");
    // A silence shorter than stream_idle_timeout_ms (1.5 s) leaves the tunnel open; a longer
    // one closes it (before the 3 s read timeout).
    std::thread::sleep(Duration::from_millis(800));
    stream.write_all(b"ping through the tunnel")?;
    stream.read_exact(&mut echoed)?;
    let silent = std::time::Instant::now();
    // A signal to this test process (another test's child ending) may interrupt the read.
    let closed = loop {
        match stream.read(&mut byte) {
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            read => break read,
        }
    };
    assert!(matches!(closed, Ok(0)), "a silent tunnel stayed open: {closed:?} after {:?}", silent.elapsed());
    assert!(silent.elapsed() >= Duration::from_millis(1000), "closed after {:?}", silent.elapsed());
    // An idle keep-alive connection is closed after header_read_timeout (1 s): reading to the
    // end returns as soon as the pause is over, not when the 3 s read timeout expires.
    let started = std::time::Instant::now();
    let out = bed.raw(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", Duration::from_millis(1600))?;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "idle connection kept open: {:?}",
        started.elapsed()
    );
    // A well-formed request on the same path works.
    let ok = bed.raw(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", Duration::ZERO)?;
    assert!(ok.starts_with("HTTP/1.1 200") && ok.contains("backend"), "{ok}");
    // Slowloris: headers never finish; the listener hangs up after header_read_timeout (1 s).
    let started = std::time::Instant::now();
    let out = bed.raw(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: 1\r\n", Duration::from_millis(100))?;
    assert!(started.elapsed() < Duration::from_millis(2900), "slow headers held the connection: {out:?}");
    assert!(!out.contains("200"), "{out}");
    Ok(())
}

#[test]
fn root_l7_certificate_reload_and_graceful_stop() -> Result<()> {
    let mut bed = Bed::new("l7-reload")?;
    let fingerprint = |bed: &Bed| -> Result<String> {
        let out = bed.s_client(&["-servername", "example.test", "-showcerts"])?;
        let pem: String = out
            .lines()
            .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
            .take_while(|l| !l.starts_with("-----END"))
            .collect();
        if pem.is_empty() {
            bail!("no certificate in: {out}");
        }
        Ok(pem)
    };
    let first = fingerprint(&bed)?;
    // New certificate files: picked up without a restart.
    bed.ca.leaf("example", &["example.test", "api.example.test"], false)?;
    wait_for("the new certificate", Duration::from_secs(4), || {
        fingerprint(&bed).map(|f| f != first).unwrap_or(false)
    })?;
    let second = fingerprint(&bed)?;
    // A broken file is refused: the last good certificate keeps serving.
    std::fs::write(bed.ca.dir.join("example.pem"), "not a certificate")?;
    if let Some(lbd) = bed.lbd.as_ref() {
        lbd.signal(libc::SIGHUP);
    }
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(fingerprint(&bed)?, second);
    assert!(bed.curl(&["https://example.test/"])?.starts_with("backend"));

    // Graceful stop: a 3 s response in flight finishes; lbd exits; the port closes.
    let cacert = bed.ca.cert.to_str().unwrap_or_default().to_owned();
    let resolve = format!("example.test:443:{VIP}");
    let download = bed
        .topology
        .client
        .command("curl")
        .args([
            "-sS",
            "--max-time",
            "15",
            "--cacert",
            &cacert,
            "--resolve",
            &resolve,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
        ])
        .arg("https://example.test/slow")
        .stdout(Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(700));
    let lbd = bed.lbd.take().expect("running");
    lbd.signal(libc::SIGTERM);
    let out = download.wait_with_output()?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200 122880", "in-flight response cut by SIGTERM");
    drop(lbd);
    let _ = bed.config.clone();
    Ok(())
}

#[test]
fn root_l7_no_failures_under_load_while_rotating() -> Result<()> {
    let bed = Bed::new("l7-load")?;
    let wrk = bed
        .topology
        .client
        .command("wrk")
        .args(["-t1", "-c8", "-d5s", "-H", "Host: example.test", &format!("https://{VIP}/")])
        .stdout(Stdio::piped())
        .spawn()?;
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(1000));
        bed.ca.leaf("example", &["example.test", "api.example.test"], false)?;
        if let Some(lbd) = bed.lbd.as_ref() {
            lbd.signal(libc::SIGHUP);
        }
    }
    let out = String::from_utf8_lossy(&wrk.wait_with_output()?.stdout).into_owned();
    assert!(out.contains("requests in"), "{out}");
    assert!(!out.contains("Socket errors") && !out.contains("Non-2xx"), "failures under rotation: {out}");
    let requests: u64 = out
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(requests > 500, "{out}");
    Ok(())
}

#[test]
fn root_l7_h2c_upstream_with_trailers_and_mtls() -> Result<()> {
    let bed = Bed::new("l7-h2c")?;
    // HTTP/2 to the client, prior-knowledge HTTP/2 to the backend, trailers kept (gRPC's way).
    let out =
        bed.curl(&["--http2", "-v", "-H", "te: trailers", "https://grpc.example.test/pkg.Service/Call"])?;
    assert!(out.contains("h2c backend1 HTTP/2.0"), "{out}");
    let verbose = String::from_utf8_lossy(
        &bed.topology
            .client
            .command("curl")
            .args(["-sS", "--http2", "-v", "--cacert", bed.ca.cert.to_str().unwrap_or_default()])
            .args(["--resolve", &format!("grpc.example.test:443:{VIP}"), "https://grpc.example.test/x"])
            .output()?
            .stderr,
    )
    .into_owned();
    assert!(verbose.to_ascii_lowercase().contains("grpc-status: 0"), "trailer lost: {verbose}");
    // To an HTTP/1.1 client in the last chunk (`--raw`: the chunks as they came).
    let raw = bed.curl(&["--http1.1", "--raw", "https://grpc.example.test/x"])?;
    assert!(raw.ends_with("0\r\ngrpc-status: 0\r\n\r\n"), "trailer lost: {raw:?}");

    // A pool's max_requests_per_connection counts an h2c connection's streams: at most two on
    // each (each worker keeps its own connections, so requests on two workers interleave).
    let mut carried = std::collections::HashMap::<String, usize>::new();
    for _ in 0..6 {
        let out = bed.curl(&["-H", "host: grpc-capped.test", &format!("http://{VIP}/x")])?;
        assert!(out.starts_with("h2c backend1"), "{out}");
        *carried.entry(out.split_whitespace().last().unwrap_or_default().to_owned()).or_default() += 1;
    }
    assert!(carried.values().all(|n| *n <= 2), "two requests a connection: {carried:?}");
    assert!(carried.len() >= 3, "six requests on two-request connections: {carried:?}");
    // The metrics count the connections the pool made, as the backend saw them.
    let metrics = bed.topology.lb.run("curl", &["-sS", "http://127.0.0.1:9100/metrics"])?;
    let opened = format!(
        "sluice_http_upstream_connections_total{{pool=\"grpc_capped\",backend=\"{}:8081\"}} {}",
        bed.topology.backends[0].addr4,
        carried.len()
    );
    let text = String::from_utf8_lossy(&metrics.stdout);
    assert!(text.lines().any(|l| l == opened), "no `{opened}` in the metrics");

    // mTLS: a client certificate from the CA is required.
    let dir = &bed.ca.dir;
    let url = "https://example.test:8443/".to_owned();
    let resolve = format!("example.test:8443:{VIP}");
    let with_cert = bed.curl(&[
        "--resolve",
        &resolve,
        "--cert",
        dir.join("client.pem").to_str().unwrap_or_default(),
        "--key",
        dir.join("client.key").to_str().unwrap_or_default(),
        &url,
    ])?;
    assert!(with_cert.starts_with("backend"), "{with_cert}");
    // The backend is told the certificate (Envoy's X-Forwarded-Client-Cert): its SHA-256 as
    // openssl computes it, the certificate itself (URL-encoded PEM), its subject, its DNS name.
    // A client's own field goes nowhere.
    let (cert, key) = (dir.join("client.pem"), dir.join("client.key"));
    let echoed = bed.curl(&[
        "--resolve",
        &resolve,
        "--cert",
        cert.to_str().unwrap_or_default(),
        "--key",
        key.to_str().unwrap_or_default(),
        "-H",
        "x-forwarded-client-cert: Hash=forged",
        "https://example.test:8443/echo",
    ])?;
    let fingerprint = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in", cert.to_str().unwrap_or_default()])
        .output()?;
    let hash: String = String::from_utf8_lossy(&fingerprint.stdout)
        .rsplit('=')
        .next()
        .unwrap_or_default()
        .trim()
        .replace(':', "")
        .to_ascii_lowercase();
    assert_eq!(hash.len(), 64, "{fingerprint:?}");
    let (head, tail) =
        (format!(" xfcc=Hash={hash};Cert=\""), "\";Subject=\"CN=client.test\";DNS=client.test sub=");
    let sent = echoed.split_once(&head).and_then(|(_, rest)| rest.split_once(tail)).map(|(pem, _)| pem);
    let pem = std::fs::read_to_string(&cert)?.replace("\r\n", "\n");
    assert_eq!(sent.map(url_decoded), Some(pem), "{echoed}");
    // On a listener that does not forward certificates, the client's own field is dropped.
    let plain = bed.curl(&["-H", "x-forwarded-client-cert: Hash=forged", &format!("http://{VIP}/echo")])?;
    assert!(plain.contains(" xfcc= sub="), "{plain}");
    let without = bed.curl(&["--resolve", &resolve, &url]);
    assert!(without.is_err(), "no client certificate, yet: {without:?}");
    Ok(())
}

#[test]
fn root_l7_tls_to_nginx_backends() -> Result<()> {
    let bed = Bed::new("l7-backend-tls")?;
    let get = |host: &str, path: &str| -> Result<String> {
        let out = bed.topology.client.run(
            "curl",
            &["-sS", "--max-time", "5", "-H", &format!("host: {host}"), &format!("http://{VIP}{path}")],
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    // HTTP/1.1 over TLS to both backends, the pool's name in SNI, no client certificate.
    let mut seen = Vec::new();
    for _ in 0..4 {
        let out = get("secure.test", "/tls")?;
        assert!(out.ends_with(" https HTTP/1.1 TLSv1.3 sni=backend.internal client=NONE\n"), "{out}");
        seen.push(out.split(' ').next().unwrap_or_default().to_owned());
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen, ["backend1", "backend2"], "both backends over TLS");
    // HTTP/2 by ALPN, checked by address (no SNI), with the pool's client certificate.
    let out = get("h2.secure.test", "/tls")?;
    assert_eq!(out, "backend1 https HTTP/2.0 TLSv1.3 sni= client=SUCCESS\n");
    // The pool's client certificate rotated on disk, with no reload: new connections present
    // the new one within a second. One from a CA nginx does not trust gets nginx's 400; the
    // test CA's own again, 200. (Key first, then certificate: between the two renames the pair
    // does not match, and the files read before stay in use.)
    let stranger_dir = bed.ca.dir.join("stranger");
    std::fs::create_dir_all(&stranger_dir)?;
    let (cert, key) = TestCa::new(&stranger_dir)?.leaf("client", &["client.test"], false)?;
    std::fs::rename(key, bed.ca.dir.join("client.key"))?;
    std::fs::rename(cert, bed.ca.dir.join("client.pem"))?;
    let h2_status = || -> Result<String> {
        let args = ["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H", "host: h2.secure.test"];
        let url = format!("http://{VIP}/tls");
        let out = bed.topology.client.run("curl", &[&args[..], &[url.as_str()]].concat())?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    wait_for("the rotated client certificate in use", Duration::from_secs(3), || {
        h2_status().is_ok_and(|s| s == "400")
    })?;
    bed.ca.leaf("client", &["client.test"], false)?;
    wait_for("the test CA's client certificate in use again", Duration::from_secs(5), || {
        get("h2.secure.test", "/tls")
            .is_ok_and(|o| o == "backend1 https HTTP/2.0 TLSv1.3 sni= client=SUCCESS\n")
    })?;
    // Forwarding fields reach the backend through TLS as they do in plain HTTP.
    let echo = get("secure.test", "/echo")?;
    assert!(echo.contains("host=secure.test") && echo.contains("proto=http"), "{echo}");
    // A pool that trusts another CA sends nothing: 502 (or 503 once its health checks, which
    // shake hands the same way, have taken both backends out).
    let status = |host: &str| -> Result<String> {
        let host = format!("host: {host}");
        let args = ["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H", &host, &format!("http://{VIP}/")];
        Ok(String::from_utf8_lossy(&bed.topology.client.run("curl", &args)?.stdout).into_owned())
    };
    let untrusted = status("untrusted.test")?;
    assert!(untrusted == "502" || untrusted == "503", "{untrusted}");
    // A certificate that does not hold the pool's name: 502, counted as a TLS failure.
    assert_eq!(status("misnamed.test")?, "502");
    // A pool that names each request's host: the certificate's name passes, another does not.
    let out = get("backend.internal", "/tls")?;
    assert_eq!(out, "backend1 https HTTP/1.1 TLSv1.3 sni=backend.internal client=NONE\n");
    assert_eq!(status("elsewhere.internal")?, "502");
    let metrics = bed.topology.lb.run("curl", &["-sS", "http://127.0.0.1:9100/metrics"])?;
    let failures = format!(
        "sluice_http_upstream_connect_failures_total{{pool=\"misnamed\",backend=\"{}:443\",reason=\"tls\"}} 1",
        bed.topology.backends[0].addr4
    );
    let text = String::from_utf8_lossy(&metrics.stdout);
    assert!(text.lines().any(|l| l == failures), "no `{failures}` in the metrics");
    // The health checks over TLS: the trusted pools' backends up, the untrusted pool's down.
    wait_for("TLS health checks to settle", Duration::from_secs(5), || {
        let metrics = bed.topology.lb.run("curl", &["-sS", "http://127.0.0.1:9100/metrics"]);
        let text = metrics.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        let up = |pool: &str| -> Vec<String> {
            text.lines()
                .filter(|l| l.starts_with("sluice_backend_up{") && l.contains(&format!("pool=\"{pool}\"")))
                .map(|l| l.rsplit(' ').next().unwrap_or_default().to_owned())
                .collect()
        };
        up("secure") == ["1", "1"] && up("secure_h2") == ["1"] && up("untrusted") == ["0", "0"]
    })?;
    Ok(())
}

/// `%XX` escapes decoded (a URL-encoded PEM).
fn url_decoded(text: &str) -> String {
    let mut out = Vec::new();
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        let hex = |b: Option<u8>| (b.unwrap_or(b'0') as char).to_digit(16).unwrap_or(0) as u8;
        out.push(if b == b'%' { hex(bytes.next()) * 16 + hex(bytes.next()) } else { b });
    }
    String::from_utf8_lossy(&out).into_owned()
}
