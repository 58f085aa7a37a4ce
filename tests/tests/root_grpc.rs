//! Root tests of gRPC through the L7 proxy with real gRPC servers and a real gRPC client
//! (grpcio, from `scripts/setup`): plaintext HTTP/2 from the client, an h2c pool to the
//! backends, and the pool's gRPC health checks (`kind = "grpc"`) taking a NOT_SERVING backend
//! out and bringing it back, so clients never hear NOT_SERVING; the proxy's refusals told as
//! gRPC statuses; calls that outlive their backends' connections; gRPC-Web from a browser page
//! on another origin (headless Chromium, the routes' CORS policy).
use std::time::Duration;

use anyhow::Result;
use sluice_tests::{
    netns::Topology,
    servers::{GRPC_PYTHON, GrpcServer, Lbd, TempDir, grpc_script, wait_for},
};

const VIP: &str = "198.19.0.7";
const PORT: u16 = 50051;

/// The gRPC routes' CORS policy: the page's origin (the listener on port 8080) may call them.
const CORS: &str = "cors = { allow_origins = [\"http://198.19.0.7:8080\"], allow_methods = [\"POST\"], \
     allow_headers = [\"content-type\", \"x-grpc-web\", \"x-user-agent\"], \
     expose_headers = [\"grpc-status\", \"grpc-message\"], max_age_s = 60 }";

/// A web app's page, served from another origin than its gRPC service's (port 8080 against
/// 80), as a browser app with a gRPC-Web client calls it: a health check (a preflighted
/// `application/grpc-web-text` POST), a call the proxy refuses, and a read of a route whose
/// policy names another origin. It writes what its script could read into the page.
const PAGE: &str = "<html><body><pre id=\"out\">waiting</pre><script>\
const out = document.getElementById(\"out\"); const lines = [];\
const web = { method: \"POST\", headers: { \"content-type\": \"application/grpc-web-text\", \"x-grpc-web\": \"1\", \"x-user-agent\": \"grpc-web-javascript/0.1\" }, body: \"AAAAAAA=\" };\
async function call(path) {\
  try {\
    const answer = await fetch(\"http://198.19.0.7\" + path, web);\
    const bytes = Array.from(atob(await answer.text()), c => c.charCodeAt(0));\
    const cut = bytes.indexOf(128);\
    const message = cut < 0 ? bytes : bytes.slice(0, cut);\
    const trailers = cut < 0 ? \"\" : String.fromCharCode(...bytes.slice(cut + 5)).trim();\
    lines.push(path + \" status=\" + answer.status + \" grpc-status=\" + answer.headers.get(\"grpc-status\") + \" message=\" + message.join(\",\") + \" trailers=\" + trailers.replace(/\\r\\n/g, \";\"));\
  } catch (e) { lines.push(path + \" failed \" + e.name); }\
}\
async function main() {\
  await call(\"/grpc.health.v1.Health/Check\");\
  await call(\"/sluice.Closed/Call\");\
  try { const answer = await fetch(\"http://198.19.0.7/private/\"); lines.push(\"private read \" + answer.status); }\
  catch (e) { lines.push(\"private failed \" + e.name); }\
  out.textContent = lines.join(\"\\n\");\
}\
main();\
</script></body></html>";

struct Bed {
    _lbd: Lbd,
    servers: Vec<GrpcServer>,
    topology: Topology,
    dir: TempDir,
}

impl Bed {
    /// Two gRPC backends (closing each connection `max_connection_age_ms` after it opened, if
    /// given), the first `pooled` of them in lbd's h2c pool.
    fn new(name: &str, max_connection_age_ms: Option<u32>, pooled: usize) -> Result<Bed> {
        let topology = Topology::new(2)?;
        let dir = TempDir::new(name)?;
        let servers = topology
            .backends
            .iter()
            .map(|b| GrpcServer::start(b, PORT, max_connection_age_ms))
            .collect::<Result<Vec<_>>>()?;
        topology.lb.run("ip", &["addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
        let backends: Vec<String> =
            topology.backends[..pooled].iter().map(|b| format!("{{ address = \"{}\" }}", b.addr4)).collect();
        let config = dir.0.join("sluice.toml");
        std::fs::write(
            &config,
            format!(
                r#"[dataplane]
interface = "eth0"
xdp_mode = "generic"
pin_dir = "/sys/fs/bpf/{tag}"

[[vip]]
name = "grpc"
address = "{VIP}"
port = 80
protocol = "tcp"
pool = "grpc"
mode = "l7"

[[pool]]
name = "grpc"
backends = [{backends}]
port = {PORT}
protocol = "h2c"
health = {{ kind = "grpc", port = {PORT}, interval_ms = 300, timeout_ms = 250, rise = 1, fall = 2 }}

[[listener]]
name = "plain"
address = "{VIP}:80"

[[route]]
listener = "plain"
path_prefix = "/sluice.Closed/"
pool = "grpc"
deny = ["0.0.0.0/0"]
grpc_web = true
{cors}

[[route]]
listener = "plain"
path_prefix = "/private/"
respond = {{ status = 200, body = "not for other sites" }}
cors = {{ allow_origins = ["https://elsewhere.test"] }}

[[route]]
listener = "plain"
pool = "grpc"
grpc_web = true
{cors}

[[listener]]
name = "page"
address = "{VIP}:8080"

[[route]]
listener = "page"
respond = {{ status = 200, content_type = "text/html", body = '{page}' }}

[admin]
socket = "{dir}/lbd.sock"
metrics = "127.0.0.1:9100"
"#,
                tag = topology.tag,
                backends = backends.join(", "),
                cors = CORS,
                page = PAGE,
                dir = dir.0.display(),
            ),
        )?;
        let lbd = Lbd::start_logging(&topology.lb, &config, Some(&dir.0.join("lbd.log")))?;
        wait_for("the listener", Duration::from_secs(5), || {
            topology.lb.run("ss", &["-Htln", "sport = :80"]).map(|o| !o.stdout.is_empty()).unwrap_or(false)
        })?;
        Ok(Bed { _lbd: lbd, servers, topology, dir })
    }

    /// `count` gRPC health checks of `service` from the client, through the proxy, on one
    /// channel, from each of `threads` threads at once: each answer's status name.
    fn check(&self, service: &str, count: usize, threads: usize) -> Result<Vec<String>> {
        let (target, count, threads) = (format!("{VIP}:80"), count.to_string(), threads.to_string());
        let out = self
            .topology
            .client
            .run(GRPC_PYTHON, &[&grpc_script("health_check.py"), &target, service, &count, &threads])?;
        Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect())
    }

    /// One unary call of `method` from the client, through the proxy: its code's name and
    /// details (`OK` and the answer's length when it succeeded).
    fn call(&self, method: &str) -> Result<String> {
        let out = self
            .topology
            .client
            .run(GRPC_PYTHON, &[&grpc_script("call.py"), &format!("{VIP}:80"), method])?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// A gRPC-Web call from curl over HTTP/1.1, as a browser makes it: `message` (gRPC's
    /// frames) as `content_type`; the answer's content type and body.
    fn web_call(&self, method: &str, content_type: &str, message: &[u8]) -> Result<(String, Vec<u8>)> {
        let (sent, answer) = (self.dir.0.join("web-call"), self.dir.0.join("web-answer"));
        std::fs::write(&sent, message)?;
        let out = self.topology.client.run(
            "curl",
            &[
                "-sS",
                "--http1.1",
                "--max-time",
                "5",
                "-H",
                &format!("content-type: {content_type}"),
                "-H",
                "x-grpc-web: 1",
                "--data-binary",
                &format!("@{}", sent.display()),
                "-o",
                &answer.display().to_string(),
                "-w",
                "%{content_type}",
                &format!("http://{VIP}{method}"),
            ],
        )?;
        Ok((String::from_utf8_lossy(&out.stdout).into_owned(), std::fs::read(&answer)?))
    }

    /// The access-log lines lbd has written for calls of `method` (they reach the log within
    /// 100 ms).
    fn logged(&self, method: &str) -> Vec<String> {
        std::thread::sleep(Duration::from_millis(300));
        let log = std::fs::read_to_string(self.dir.0.join("lbd.log")).unwrap_or_default();
        let path = format!(" path={method} ");
        log.lines()
            .filter(|l| l.contains(" INFO  access] ") && l.contains(&path))
            .map(str::to_owned)
            .collect()
    }

    /// lbd's metrics (empty if they cannot be had).
    fn metrics(&self) -> String {
        let scraped = self.topology.lb.run("curl", &["-sS", "http://127.0.0.1:9100/metrics"]);
        scraped.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    }

    /// Whether lbd has backend `i` up in the pool (its metrics).
    fn up(&self, i: usize) -> bool {
        let backend = self.topology.backends[i].addr4;
        let wanted = format!("sluice_backend_up{{pool=\"grpc\",backend=\"{backend}\"}} 1");
        self.metrics().lines().any(|l| l == wanted)
    }
}

#[test]
fn root_grpc_through_the_proxy_and_grpc_health_checks() -> Result<()> {
    let bed = Bed::new("grpc", None, 2)?;
    // gRPC from a real client to real servers, through an h2c pool (both backends in turn).
    assert_eq!(bed.check("", 6, 1)?, ["SERVING"; 6]);
    assert_eq!(bed.check("sluice.Echo", 2, 1)?, ["SERVING"; 2]);
    assert_eq!(bed.check("nothing.Here", 1, 1)?, ["NOT_FOUND"], "the server's own answer passes through");
    // A call the proxy refuses (the route denies every client) is told a gRPC status with the
    // reason, as Envoy tells it, not an HTTP 403 the client would call PERMISSION_DENIED
    // with no word of why; a method the backend lacks is the backend's answer.
    assert_eq!(
        bed.call("/sluice.Closed/Call")?,
        "PERMISSION_DENIED client address not allowed on this route"
    );
    assert_eq!(bed.call("/sluice.Echo/Nothing")?, "UNIMPLEMENTED Method not found!");
    // The access log says each call's gRPC status beside its HTTP status (the backends' 200,
    // or the status the proxy meant by its refusal): from the answer's trailers, its head (a
    // trailers-only answer), or the refusal.
    let logged = |method: &str, status: &str| {
        let lines = bed.logged(method);
        let wanted = format!(" status={status} ");
        assert!(!lines.is_empty() && lines.iter().all(|l| l.contains(&wanted)), "{wanted} in {lines:?}");
    };
    logged("/sluice.Closed/Call", "403 grpc_status=7");
    logged("/sluice.Echo/Nothing", "200 grpc_status=12");
    let checks = bed.logged("/grpc.health.v1.Health/Check");
    for code in ["0", "5"] {
        let wanted = format!(" status=200 grpc_status={code} ");
        assert!(checks.iter().any(|l| l.contains(&wanted)), "{wanted} in {checks:?}");
    }
    // gRPC-Web from curl, as a browser sends it, to grpcio, which speaks gRPC only (the
    // route's `grpc_web`): the answer's message (SERVING), then its trailers as a frame.
    const CHECK: &str = "/grpc.health.v1.Health/Check";
    let (content_type, body) = bed.web_call(CHECK, "application/grpc-web+proto", &[0; 5])?;
    assert_eq!(content_type, "application/grpc-web+proto");
    let (message, trailers) = grpc_web_frames(&body);
    assert_eq!(message, [8, 1], "HealthCheckResponse{{status: SERVING}}: {body:?}");
    assert!(trailers.lines().any(|l| l.trim_end() == "grpc-status:0"), "{trailers:?}");
    let (content_type, body) = bed.web_call(CHECK, "application/grpc-web-text", b"AAAAAAA=")?;
    assert_eq!(content_type, "application/grpc-web-text");
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.decode(&body)?;
    assert_eq!(grpc_web_frames(&body).0, [8, 1], "{body:?}");
    // Backend 1 says NOT_SERVING: the health checks take it out, and clients, answered by
    // backend 2 alone, hear SERVING.
    bed.servers[0].serving(false);
    wait_for("backend 1 taken out", Duration::from_secs(5), || !bed.up(0))?;
    assert!(bed.up(1), "backend 2 is still SERVING");
    assert_eq!(bed.check("", 6, 1)?, ["SERVING"; 6]);
    // SERVING again: back in.
    bed.servers[0].serving(true);
    wait_for("backend 1 back", Duration::from_secs(5), || bed.up(0))?;
    Ok(())
}

/// A backend that closes every connection 100 ms after it opened (gRPC's MAX_CONNECTION_AGE,
/// which servers set so clients spread anew): a GOAWAY, after which calls sent on the
/// connection are refused, or never sent as it closes. Each goes to the backend again, on
/// another connection, with its message (the route's `retry_buffer_bytes`), so no call fails;
/// the metrics count them. Before the messages were kept, 16 to 21 of these 1,200 calls failed
/// (UNAVAILABLE: 502) with two backends in the pool; kept, but sent only to a backend not tried
/// yet, 11 failed with this one.
#[test]
fn root_grpc_calls_outlive_the_backends_max_connection_age() -> Result<()> {
    let bed = Bed::new("grpc-aged", Some(100), 1)?;
    let answers = bed.check("", 150, 8)?;
    let failed: Vec<&String> = answers.iter().filter(|a| *a != "SERVING").collect();
    let resent: u64 = bed
        .metrics()
        .lines()
        .filter(|l| l.starts_with("sluice_http_upstream_unprocessed_total{pool=\"grpc\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    eprintln!(
        "{} calls, {} failed {:?}, {resent} not processed and sent again",
        answers.len(),
        failed.len(),
        &failed[..failed.len().min(10)]
    );
    assert_eq!(answers.len(), 1200);
    assert!(failed.is_empty(), "calls failed across the backends' GOAWAYs");
    assert!(resent > 0, "no call met a GOAWAY: the test tried nothing");
    Ok(())
}

/// gRPC-Web from a real browser: headless Chromium, in the client's namespace, opens a page
/// served from another origin and calls the service with a preflighted gRPC-Web POST. The
/// route's CORS policy lets the page read the answer (the message and the trailers' frame), and
/// the status of a call the proxy refuses (`grpc-status` exposed on a refusal); a route whose
/// policy names another origin stays unreadable. The preflights never reach grpcio, which would
/// not answer them: the access log has them as the proxy's own answers.
#[test]
fn root_grpc_web_from_a_browser_page_on_another_origin() -> Result<()> {
    let bed = Bed::new("grpc-browser", None, 2)?;
    let out = bed
        .topology
        .client
        .command("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000", "--dump-dom"])
        .arg(format!("http://{VIP}:8080/"))
        .output()?;
    anyhow::ensure!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
    let dom = String::from_utf8_lossy(&out.stdout);
    let shown =
        dom.split("<pre id=\"out\">").nth(1).and_then(|rest| rest.split("</pre>").next()).unwrap_or("");
    let lines: Vec<&str> = shown.lines().collect();
    // The answer's message (a frame: flags, length 2, HealthCheckResponse{status: SERVING}),
    // then its trailers' frame; no grpc-status in the head of a call that went well.
    assert!(
        lines.first().is_some_and(|l| l.starts_with(
            "/grpc.health.v1.Health/Check status=200 grpc-status=null message=0,0,0,0,2,8,1 trailers=grpc-status:0;"
        )),
        "{dom}"
    );
    // The proxy's refusal, a trailers-only answer: its status in the head, readable by the
    // page only because the refusal carries the policy's fields too.
    assert_eq!(
        lines.get(1..),
        Some(
            &["/sluice.Closed/Call status=200 grpc-status=7 message= trailers=", "private failed TypeError"]
                [..]
        ),
        "{dom}"
    );
    let (checks, closed) = (bed.logged("/grpc.health.v1.Health/Check"), bed.logged("/sluice.Closed/Call"));
    // The calls' gRPC statuses in the log: the one the proxy framed from the trailers into the
    // body, and the refusal's.
    let calls =
        |lines: &[String]| lines.iter().filter(|l| l.contains(" method=POST ")).cloned().collect::<Vec<_>>();
    let (check_calls, closed_calls) = (calls(&checks), calls(&closed));
    assert!(
        check_calls.len() == 1 && check_calls[0].contains(" status=200 grpc_status=0 "),
        "{check_calls:?}"
    );
    assert!(
        closed_calls.len() == 1 && closed_calls[0].contains(" status=403 grpc_status=7 "),
        "{closed_calls:?}"
    );
    let preflights: Vec<String> =
        checks.into_iter().chain(closed).filter(|l| l.contains(" method=OPTIONS ")).collect();
    assert_eq!(preflights.len(), 2, "{preflights:?}");
    assert!(
        preflights.iter().all(|l| l.contains(" status=204 ") && l.contains("reason=preflight")),
        "{preflights:?}"
    );
    Ok(())
}

/// A gRPC-Web answer's body: its one message, and its trailers' frame as text.
fn grpc_web_frames(body: &[u8]) -> (Vec<u8>, String) {
    let (mut message, mut trailers, mut at) = (Vec::new(), String::new(), 0);
    while at + 5 <= body.len() {
        let length = u32::from_be_bytes(body[at + 1..at + 5].try_into().unwrap()) as usize;
        let frame = &body[at + 5..(at + 5 + length).min(body.len())];
        match body[at] {
            0x80 => trailers = String::from_utf8_lossy(frame).into_owned(),
            _ => message = frame.to_vec(),
        }
        at += 5 + length;
    }
    (message, trailers)
}
