//! Root tests of HTTP/3 through an L7 VIP, from a client namespace with a real client apart
//! from lbd's own stack (aioquic): requests spread over the pool on one QUIC connection, the
//! fields backends see, a malformed request refused, TCP clients told by Alt-Svc, the log, the
//! metrics and `lbctl`; and a graceful stop that lets an HTTP/3 request finish.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Result, ensure};
use serde_json::{Value, json};
use sluice_tests::{
    l7_config,
    netns::Topology,
    pki::TestCa,
    servers::{Lbd, Nginx, NsServer, TempDir, h3_ask, wait_for},
};

const VIP: &str = "198.19.0.6";

struct Bed {
    lbd: Lbd,
    _nginx: Vec<Nginx>,
    _hints: NsServer,
    ca: TestCa,
    log: PathBuf,
    topology: Topology,
    _dir: TempDir,
}

impl Bed {
    fn new(name: &str) -> Result<Bed> {
        let topology = Topology::new(2)?;
        let dir = TempDir::new(name)?;
        let ca = TestCa::new(&dir.0)?;
        let (cert, key) = ca.leaf("example", &["example.test"], false)?;
        let nginx = vec![
            Nginx::start(&topology.backends[0], "backend1")?,
            Nginx::start(&topology.backends[1], "backend2")?,
        ];
        // A backend that sends 103 Early Hints before its answer.
        let hints = NsServer::early_hints(&topology.backends[0], 8083)?;
        topology.lb.run("ip", &["addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
        let backends = [topology.backends[0].addr4, topology.backends[1].addr4];
        let config = dir.0.join("sluice.toml");
        std::fs::write(
            &config,
            format!(
                r#"{bed}[[listener]]
name = "h3"
address = "{VIP}:443"
tls = {{ certificates = [{{ cert = "{cert}", key = "{key}" }}], http3 = true }}
drain_timeout_ms = 5000

[[pool]]
name = "hints"
backends = [{{ address = "{b1}" }}]
port = 8083

[[route]]
listener = "h3"
path = "/hints"
pool = "hints"

[[route]]
listener = "h3"
pool = "web"

[admin]
socket = "{dir}/lbd.sock"
metrics = "127.0.0.1:9100"
"#,
                bed = l7_config::l7_bed(&topology.tag, VIP, &backends),
                b1 = backends[0],
                cert = cert.display(),
                key = key.display(),
                dir = dir.0.display(),
            ),
        )?;
        let log = dir.0.join("lbd.log");
        let lbd = Lbd::start_logging(&topology.lb, &config, Some(&log))?;
        wait_for("the listener's TCP and UDP sockets", Duration::from_secs(5), || {
            let listening =
                |args: &[&str]| topology.lb.run("ss", args).map(|o| !o.stdout.is_empty()).unwrap_or(false);
            listening(&["-Htln", "sport = :443"]) && listening(&["-Huln", "sport = :443"])
        })?;
        // Both backends up, so that requests spread.
        wait_for("both backends up", Duration::from_secs(5), || {
            lbd.pool_show("web").is_ok_and(|pool| pool.values().all(|(state, _)| state == "up"))
        })?;
        Ok(Bed { lbd, _nginx: nginx, _hints: hints, ca, log, topology, _dir: dir })
    }

    /// `requests` over one HTTP/3 connection from the client namespace.
    fn ask(&self, requests: &[Value]) -> Result<Vec<Value>> {
        h3_ask(&self.topology.client, VIP, 443, "example.test", &self.ca.cert, requests)
    }

    fn metrics(&self) -> Result<String> {
        let out =
            self.topology.lb.run("curl", &["-sS", "--max-time", "3", "http://127.0.0.1:9100/metrics"])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

#[test]
fn root_http3_a_real_client_through_the_vip_spread_refused_logged_and_told_over_tcp() -> Result<()> {
    let bed = Bed::new("h3")?;
    let mut requests = vec![json!({ "path": "/" }); 10];
    requests.push(json!({ "path": "/echo?x=1", "headers": [["x-request-id", "h3-check"]] }));
    // A connection-specific field (RFC 9114 §4.2): a backend could take it for framing.
    requests.push(json!({ "path": "/", "headers": [["transfer-encoding", "chunked"]] }));
    requests.push(json!({ "path": "/echo", "method": "POST", "body": "x".repeat(100_000) }));
    requests.push(json!({ "path": "/hints" }));
    // A head over the listener's 16 KiB (aioquic sends it though told the limit).
    requests.push(json!({ "path": "/", "headers": [["x-big", "b".repeat(20_000)]] }));
    let answers = bed.ask(&requests)?;
    let bodies: Vec<&str> = answers[..10].iter().map(|a| a["body"].as_str().unwrap_or_default()).collect();
    ensure!(answers[..10].iter().all(|a| a["status"] == 200), "{answers:?}");
    for backend in ["backend1\n", "backend2\n"] {
        ensure!(bodies.contains(&backend), "no answer from {backend}: {bodies:?}");
    }
    let echo = answers[10]["body"].as_str().unwrap_or_default();
    ensure!(answers[10]["status"] == 200, "{:?}", answers[10]);
    for seen in ["proto=https", "rid=h3-check", "via=3 sluice", "host=example.test", "method=GET"] {
        ensure!(echo.contains(seen), "the backend did not see {seen}: {echo}");
    }
    ensure!(answers[10]["headers"]["alt-svc"] == "h3=\":443\"; ma=86400", "{:?}", answers[10]);
    ensure!(answers[11]["status"] == 400, "a Transfer-Encoding over HTTP/3: {:?}", answers[11]);
    // nginx answers a POST to a `return` location too: the body went through.
    ensure!(answers[12]["status"] == 200, "a 100 kB POST: {:?}", answers[12]);
    ensure!(answers[12]["body"].as_str().is_some_and(|b| b.contains("method=POST")), "{:?}", answers[12]);

    // The backend's 103 Early Hints reaches the client before the answer, its hop-by-hop
    // fields left out.
    let hinted = &answers[13];
    ensure!(hinted["status"] == 200 && hinted["body"] == "hinted\n", "{hinted:?}");
    ensure!(hinted["interim"][0][":status"] == "103", "no 103 before the answer: {hinted:?}");
    ensure!(hinted["interim"][0]["link"] == "</style.css>; rel=preload", "{hinted:?}");
    ensure!(hinted["interim"][0].get("x-hop").is_none(), "a hop-by-hop field passed: {hinted:?}");

    ensure!(answers[14]["status"] == 431, "a 20 kB head: {:?}", answers[14]["status"]);

    // A TCP client is told where HTTP/3 is.
    let cacert = bed.ca.cert.to_str().unwrap_or_default().to_owned();
    let resolve = format!("example.test:443:{VIP}");
    let out = bed.topology.client.run(
        "curl",
        &[
            "-sS",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "--max-time",
            "3",
            "--cacert",
            &cacert,
            "--resolve",
            &resolve,
            "https://example.test/",
        ],
    )?;
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    ensure!(head.contains("alt-svc: h3=\":443\"; ma=86400"), "{head}");

    // The log says HTTP/3 (its ALPN), the metrics count its handshake and requests, lbctl lists it.
    wait_for("the access log's lines", Duration::from_secs(3), || {
        std::fs::read_to_string(&bed.log).is_ok_and(|log| log.contains("request_id=h3-check"))
    })?;
    let log = std::fs::read_to_string(&bed.log)?;
    let line = log.lines().find(|l| l.contains("request_id=h3-check")).unwrap_or_default();
    ensure!(line.contains("status=200") && line.contains("tls=TLSv1_3 sni=example.test alpn=h3"), "{line}");
    ensure!(
        log.lines().any(|l| l.contains("status=400") && l.contains("alpn=h3")),
        "no refusal logged:\n{log}"
    );
    ensure!(log.contains("status=431 reason=\"head too large\""), "the 431 not logged:\n{log}");
    let metrics = bed.metrics()?;
    let refused = "sluice_http_parser_refused_total{listener=\"h3\",status=\"431\"} 1";
    ensure!(metrics.contains(refused), "{metrics}");
    ensure!(metrics.contains("sluice_tls_handshakes_total{listener=\"h3\",result=\"ok\"}"), "{metrics}");
    let listed = bed.lbd.lbctl(&["listener", "list"])?;
    ensure!(listed.contains("https 1 cert+h3"), "{listed}");
    Ok(())
}

#[test]
fn root_http3_a_stopping_lbd_lets_an_http3_request_finish() -> Result<()> {
    let bed = Bed::new("h3-stop")?;
    // /slow takes about three seconds; lbd is told to stop one second in.
    let asking = {
        let client = bed.topology.client.clone();
        let ca = bed.ca.cert.clone();
        std::thread::spawn(move || {
            h3_ask(&client, VIP, 443, "example.test", &ca, &[json!({ "path": "/slow" })])
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    bed.lbd.signal(libc::SIGTERM);
    let answers = asking.join().map_err(|_| anyhow::anyhow!("the client's thread panicked"))??;
    ensure!(answers[0]["status"] == 200, "{:?}", answers[0]);
    let length = answers[0]["body"].as_str().map_or(0, str::len);
    ensure!(length == 120 * 1024, "the answer was cut at {length} bytes");
    Ok(())
}

#[test]
fn root_http3_across_an_upgrade_a_download_finishes_and_new_connections_are_served() -> Result<()> {
    let mut bed = Bed::new("h3-upgrade")?;
    // A download in flight on the old lbd's QUIC connection (/slow: ~3 s).
    let downloading = {
        let (client, ca) = (bed.topology.client.clone(), bed.ca.cert.clone());
        std::thread::spawn(move || {
            h3_ask(&client, VIP, 443, "example.test", &ca, &[json!({ "path": "/slow" })])
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let old = bed.lbd.pid();
    bed.lbd.upgrade()?;
    ensure!(bed.lbd.pid() != old, "no new lbd");
    // While the old lbd drains (both read the handed-over UDP sockets), new connections, each
    // from a port of its own, are served.
    for n in 0..12 {
        let answer = bed.ask(&[json!({ "path": "/echo" })])?;
        ensure!(answer[0]["status"] == 200, "connection {n} after the upgrade: {answer:?}");
    }
    ensure!(
        Path::new(&format!("/proc/{old}")).exists(),
        "the old lbd ended before the check: it proves nothing"
    );
    let downloaded = downloading.join().map_err(|_| anyhow::anyhow!("the client's thread panicked"))??;
    ensure!(downloaded[0]["status"] == 200, "{:?}", downloaded[0]);
    let length = downloaded[0]["body"].as_str().map_or(0, str::len);
    ensure!(length == 120 * 1024, "the download was cut at {length} bytes");
    bed.lbd.wait_predecessor(Duration::from_secs(10))?;
    ensure!(bed.ask(&[json!({ "path": "/" })])?[0]["status"] == 200);
    Ok(())
}
