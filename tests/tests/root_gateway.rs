//! Root tests of the gateway steps on the L7 path, with curl against real nginx backends:
//! weighted canary split, rate limits, client address lists, retries to another backend, and
//! fallback answers.
use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context, Result};
use sluice_tests::{
    netns::Topology,
    pki::TestCa,
    servers::{Lbd, Nginx, NginxTls, TempDir, wait_for},
};

const VIP: &str = "198.19.0.4";

struct Bed {
    lbd: Lbd,
    nginx: Vec<Nginx>,
    topology: Topology,
    dir: TempDir,
}

impl Bed {
    /// Backends 1 and 2 run nginx; backend 3 runs nothing (connections are refused).
    fn new() -> Result<Bed> {
        let topology = Topology::new(3)?;
        let dir = TempDir::new("gateway")?;
        // Backend 2 serves HTTPS too (an identity provider's JWK Set, `/jwks.json`).
        let ca = TestCa::new(&dir.0)?;
        let (cert, key) = ca.leaf("backend2", &[&topology.backends[1].addr4.to_string()], false)?;
        let tls = NginxTls { cert: &cert, key: &key, client_ca: &ca.cert };
        let nginx = vec![
            Nginx::start(&topology.backends[0], "backend1")?,
            Nginx::start_with(&topology.backends[1], "backend2", Some(tls))?,
        ];
        std::fs::write(nginx[1].dir().join("jwks.json"), jwk_set(&[&Es256::new("k0")?.jwk]))?;
        let jwks_ca = ca.cert.display();
        topology.lb.run("ip", &["addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
        let b = |i: usize| topology.backends[i].addr4;
        std::fs::write(dir.0.join("keys.txt"), "# accepted keys\nkey-one\nkey-three\n")?;
        // An identity provider's RSA key (openssl's), for PS256 tokens: lbd has its public half.
        let openssl = |args: &[&str]| -> Result<Vec<u8>> {
            let out = std::process::Command::new("openssl").args(args).output().context("openssl")?;
            anyhow::ensure!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(out.stdout)
        };
        let rsa_key = dir.0.join("idp-rsa.key");
        std::fs::write(
            &rsa_key,
            openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])?,
        )?;
        let public = openssl(&["pkey", "-in", rsa_key.to_str().context("path")?, "-pubout"])?;
        std::fs::write(dir.0.join("idp-rsa.pub"), public)?;
        // Users as Apache's htpasswd makes them: bcrypt and SHA-512 crypt.
        let mut users = String::new();
        for (flag, user, password) in [("-nbB", "ann", "open sesame"), ("-nb5", "bob", "hunter2")] {
            let made = std::process::Command::new("htpasswd").args([flag, user, password]).output()?;
            anyhow::ensure!(
                made.status.success(),
                "htpasswd {flag}: {}",
                String::from_utf8_lossy(&made.stderr)
            );
            users.push_str(String::from_utf8(made.stdout)?.trim());
            users.push('\n');
        }
        std::fs::write(dir.0.join("users.htpasswd"), users)?;
        std::fs::write(dir.0.join("404.html"), "<h1>Nothing here</h1>\n")?;
        std::fs::write(dir.0.join("502.json"), "{\"error\":\"try again soon\"}\n")?;
        let config = dir.0.join("sluice.toml");
        std::fs::write(
            &config,
            format!(
                r#"[dataplane]
interface = "eth0"
xdp_mode = "generic"
pin_dir = "/sys/fs/bpf/{tag}"

[[vip]]
name = "gw"
address = "{VIP}"
port = 80
protocol = "tcp"
pool = "one"
mode = "l7"

[[pool]]
name = "one"
backends = [{{ address = "{b1}" }}]

# One request per backend connection (nginx counts them in `$connection_requests`).
[[pool]]
name = "capped"
backends = [{{ address = "{b1}" }}]
max_requests_per_connection = 1
keepalive_timeout_ms = 4000

[[pool]]
name = "two"
backends = [{{ address = "{b2}" }}]

[[pool]]
name = "flaky"
backends = [{{ address = "{b3}" }}, {{ address = "{b1}" }}]

[[pool]]
name = "dead"
backends = [{{ address = "{b3}" }}]

# A cookie keeps each client on the backend that first answered it.
[[pool]]
name = "cookied"
backends = [{{ address = "{b1}" }}, {{ address = "{b2}" }}]
sticky_cookie = {{ name = "SERVERID", max_age_s = 3600 }}

[[route]]
name = "cookied"
listener = "http"
host = "cookied.test"
pool = "cookied"

# Backend 2 stands by: it takes requests only while backend 1 cannot.
[[pool]]
name = "standby"
backends = [{{ address = "{b1}" }}, {{ address = "{b2}", backup = true }}]

[[route]]
name = "standby"
listener = "http"
host = "standby.test"
pool = "standby"

# Checked by what the answer says: backend 1's page lacks the text, so it is down.
[[pool]]
name = "bodychecked"
backends = [{{ address = "{b1}" }}, {{ address = "{b2}" }}]
health = {{ kind = "http", port = 80, path = "/", expect_body = "backend2", interval_ms = 300, timeout_ms = 250, rise = 1, fall = 1 }}

[[route]]
name = "bodychecked"
listener = "http"
host = "bodychecked.test"
pool = "bodychecked"

# Backend 2 first: paused in the test, it takes connections and never answers.
[[pool]]
name = "hanging"
backends = [{{ address = "{b2}" }}, {{ address = "{b1}" }}]

[[pool]]
name = "ejecting"
backends = [{{ address = "{b3}" }}, {{ address = "{b1}" }}]
outlier = {{ consecutive_failures = 2, ejection_ms = 1500 }}

[[pool]]
name = "narrow"
backends = [{{ address = "{b1}" }}]
max_requests_per_backend = 1
max_pending_requests = 1

[[route]]
name = "eject"
listener = "http"
host = "eject.test"
pool = "ejecting"
retries = 1
retry_budget_percent = 100

[[route]]
name = "breaker"
listener = "http"
host = "breaker.test"
pool = "narrow"

[[route]]
name = "budget"
listener = "http"
host = "budget.test"
pool = "flaky"
retries = 1
retry_budget_percent = 0

[[route]]
name = "keys"
listener = "http"
host = "keys.test"
pool = "one"
api_key = {{ header = "x-api-key", file = "keys.txt" }}

[[route]]
name = "staff"
listener = "http"
host = "staff.test"
pool = "one"
basic_auth = {{ file = "users.htpasswd", realm = "Staff only", user_header = "x-user" }}

# Backends that read the PROXY protocol (nginx `listen 8084 proxy_protocol`), checked with it.
[[pool]]
name = "pp1"
backends = [{{ address = "{b1}" }}]
port = 8084
proxy_protocol = "v1"
health = {{ kind = "http", port = 8084, path = "/", interval_ms = 300, timeout_ms = 250 }}

[[pool]]
name = "pp2"
backends = [{{ address = "{b2}" }}]
port = 8084
proxy_protocol = "v2"
health = {{ kind = "http", port = 8084, path = "/", interval_ms = 300, timeout_ms = 250 }}

[[route]]
listener = "http"
host = "pp1.test"
pool = "pp1"

[[route]]
listener = "http"
host = "pp2.test"
pool = "pp2"

[[route]]
name = "jwks"
listener = "http"
host = "jwks.test"
pool = "one"
jwt = {{ algorithm = "ES256", jwks_url = "https://{b2}/jwks.json", jwks_ca = "{jwks_ca}", jwks_refresh_s = 10, subject_header = "x-subject", claim_headers = {{ email = "x-user" }} }}

[[route]]
name = "jwt"
listener = "http"
host = "jwt.test"
pool = "one"
jwt = {{ algorithm = "HS256", secret = "s3cret", issuer = "sluice-test", audience = "edge", subject_header = "x-subject" }}

[[route]]
name = "jwt-pss"
listener = "http"
host = "jwtpss.test"
pool = "one"
jwt = {{ algorithm = "PS256", key_file = "idp-rsa.pub", subject_header = "x-subject" }}

[[route]]
name = "capped"
listener = "http"
host = "capped.test"
pool = "capped"

# A rate limit per JWT subject: each user has a bucket of their own, wherever they come from.
[[route]]
name = "jwt-per-user"
listener = "http"
host = "jwt-limited.test"
pool = "one"
jwt = {{ algorithm = "HS256", secret = "s3cret", issuer = "sluice-test", audience = "edge" }}
rate_limit = {{ requests_per_second = 0.01, burst = 2, key = "jwt_subject" }}

[[route]]
name = "admin"
listener = "http"
host = "paths.test"
path_prefix = "/admin"
pool = "one"
api_key = {{ header = "x-api-key", file = "keys.txt" }}

[[route]]
name = "open"
listener = "http"
host = "paths.test"
pool = "one"

[[route]]
name = "keyed"
listener = "http"
host = "keyed.test"
pool = "one"
api_key = {{ header = "x-api-key", file = "keys.txt" }}
rate_limit = {{ requests_per_second = 1, burst = 2, key = "api_key" }}

[[route]]
name = "mirror"
listener = "http"
host = "mirror.test"
pool = "one"
shadow = {{ pool = "two", percent = 50 }}

[[route]]
name = "ab"
listener = "http"
host = "ab.test"
cookies = {{ variant = "b" }}
pool = "two"

[[route]]
name = "ab-query"
listener = "http"
host = "ab.test"
query = {{ api = "v2" }}
pool = "two"

[[route]]
name = "ab-default"
listener = "http"
host = "ab.test"
pool = "one"

[[route]]
name = "sticky"
listener = "http"
host = "sticky.test"
pool = "one"
split = [{{ pool = "two", percent = 50 }}]
sticky = true

[[route]]
name = "cached"
listener = "http"
host = "cache.test"
pool = "one"
cache = {{ max_entries = 100 }}

[[pool]]
name = "three"
backends = [{{ address = "{b3}" }}]

[[route]]
name = "mirror-slow"
listener = "http"
host = "mirror-slow.test"
pool = "one"
shadow = {{ pool = "three", percent = 100 }}

[[listener]]
name = "http"
address = "{VIP}:80"
access_log = false

# IPv6 clients, counted by their /64 (the default), or each address alone.
[[listener]]
name = "v6"
address = "[{lb6}]:80"
access_log = false

[[listener]]
name = "v6each"
address = "[{lb6}]:81"
access_log = false
client_ipv6_prefix = 128

[[route]]
listener = "v6"
pool = "one"
rate_limit = {{ requests_per_second = 0.01, burst = 2 }}

# lbd's own errors as the site's pages (nginx's `error_page`).
[[listener]]
name = "paged"
address = "[{lb6}]:82"
access_log = false
error_pages = {{ 404 = "404.html", 502 = "502.json" }}

[[route]]
listener = "paged"
host = "dead.test"
pool = "dead"

[[route]]
listener = "paged"
host = "live.test"
pool = "one"
intercept_errors = true

[[route]]
listener = "v6each"
pool = "one"
rate_limit = {{ requests_per_second = 0.01, burst = 2 }}

[[route]]
name = "passthrough"
listener = "http"
host = "passthrough.test"
pool = "one"
retries = 1

[[route]]
name = "budget20"
listener = "http"
host = "budget20.test"
pool = "flaky"
retries = 1
retry_budget_percent = 20

[[route]]
name = "stale"
listener = "http"
host = "stale.test"
pool = "one"
cache = {{ max_entries = 10, stale_if_error_s = 600 }}

[[route]]
name = "updating"
listener = "http"
host = "updating.test"
pool = "one"
cache = {{ max_entries = 10, stale_while_revalidate_s = 30 }}

[[route]]
name = "smallcache"
listener = "http"
host = "smallcache.test"
pool = "one"
cache = {{ max_entries = 10, max_object_bytes = 1000 }}

[[pool]]
name = "hashed"
backends = [{{ address = "{b1}" }}, {{ address = "{b2}" }}]
balance = "hash"
hash_key = "header:x-user"

[[route]]
name = "hashplain"
listener = "http"
host = "hashplain.test"
pool = "hashed"

[[route]]
name = "hashcache"
listener = "http"
host = "hashcache.test"
pool = "hashed"
cache = {{ max_entries = 100 }}

# By a query parameter (HAProxy's `balance url_param`).
[[pool]]
name = "byquery"
backends = [{{ address = "{b1}" }}, {{ address = "{b2}" }}]
balance = "hash"
hash_key = "query:user"

[[route]]
name = "byquery"
listener = "http"
host = "byquery.test"
pool = "byquery"

[[route]]
name = "canary"
listener = "http"
host = "canary.test"
pool = "one"
split = [{{ pool = "two", percent = 10 }}]

[[route]]
name = "per-tenant"
listener = "http"
host = "tenant.test"
pool = "one"
rate_limit = {{ requests_per_second = 0.01, burst = 2, key = "header", header = "x-tenant" }}

[[route]]
name = "limited"
listener = "http"
host = "limited.test"
pool = "one"
rate_limit = {{ requests_per_second = 5, burst = 5 }}

[[route]]
name = "told"
listener = "http"
host = "told.test"
pool = "one"
rate_limit = {{ requests_per_second = 0.5, burst = 2, headers = true }}

[[route]]
name = "private"
listener = "http"
host = "private.test"
pool = "one"
deny = ["198.18.0.0/24"]

[[route]]
name = "retry"
listener = "http"
host = "retry.test"
pool = "flaky"
retries = 1
retry_budget_percent = 100

[[route]]
name = "noretry"
listener = "http"
host = "noretry.test"
pool = "flaky"

[[route]]
name = "late"
listener = "http"
host = "late.test"
pool = "hanging"
retries = 1
retry_budget_percent = 100
try_timeout_ms = 400

[[route]]
name = "hung"
listener = "http"
host = "hung.test"
pool = "hanging"
timeout_ms = 1500

[[route]]
name = "fallback"
listener = "http"
host = "fallback.test"
pool = "dead"
fallback = {{ status = 503, body = "down for maintenance\n" }}

# Backends from DNS: the addresses of app.sluice.test, asked of a DNS server on backend 3
# (dnsmasq, started by the test that uses it) every second.
[resolver]
nameservers = ["{b3}"]

[[pool]]
name = "named"
dns = {{ name = "app.sluice.test", interval_ms = 1000, empty_hold_ms = 1000 }}

[[route]]
name = "named"
listener = "http"
host = "named.test"
pool = "named"

[admin]
socket = "{dir}/lbd.sock"
metrics = "127.0.0.1:9100"
"#,
                tag = topology.tag,
                b1 = b(0),
                b2 = b(1),
                b3 = b(2),
                lb6 = topology.lb.addr6,
                dir = dir.0.display(),
            ),
        )?;
        let lbd = Lbd::start(&topology.lb, &config)?;
        wait_for("the listener", Duration::from_secs(5), || {
            topology.lb.run("ss", &["-Htln", "sport = :80"]).map(|o| !o.stdout.is_empty()).unwrap_or(false)
        })?;
        Ok(Bed { lbd, nginx, topology, dir })
    }

    /// `n` requests for `host` on one keep-alive connection: (status, body) of each.
    fn requests(&self, host: &str, n: usize) -> Result<Vec<(u16, String)>> {
        let url = format!("http://{VIP}/");
        let header = format!("Host: {host}");
        let mut args = vec!["-sS", "-H", &header, "-w", "|%{http_code}\n"];
        for _ in 0..n {
            args.push(&url);
        }
        let out = String::from_utf8_lossy(&self.topology.client.run("curl", &args)?.stdout).into_owned();
        // Every body here is one line, and -w adds "|CODE" on the next.
        let lines: Vec<&str> = out.lines().collect();
        Ok(lines
            .chunks(2)
            .map(|pair| {
                let code = pair.get(1).and_then(|l| l.strip_prefix('|')?.parse().ok()).unwrap_or(0);
                (code, pair[0].trim().to_owned())
            })
            .collect())
    }
}

fn tally(answers: &[(u16, String)]) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for (code, body) in answers {
        *seen.entry(format!("{code} {body}")).or_default() += 1;
    }
    seen
}

#[test]
fn root_gateway_split_limits_access_retries_fallback() -> Result<()> {
    let bed = Bed::new()?;

    // Canary: 10% of 2000 requests to pool `two`, within ±3 points.
    let answers = bed.requests("canary.test", 2000)?;
    assert_eq!(answers.len(), 2000);
    let canary = answers.iter().filter(|(c, b)| *c == 200 && b == "backend2").count() as f64 / 20.0;
    assert!((7.0..=13.0).contains(&canary), "canary share {canary}%: {:?}", tally(&answers));
    assert!(answers.iter().all(|(c, _)| *c == 200));
    // The next steps by lbctl: all of it (blue-green), then none; each in the config file.
    let config = bed.dir.0.join("sluice.toml");
    for (percent, backend) in [("100", "backend2"), ("0", "backend1")] {
        let said = bed.lbd.lbctl(&["route", "split", "canary", "two", percent])?;
        assert!(said.contains(&format!("route canary: {percent}% to pool two")), "{said}");
        let answers = bed.requests("canary.test", 50)?;
        assert!(answers.iter().all(|(c, b)| *c == 200 && b == backend), "{percent}%: {:?}", tally(&answers));
    }
    let split_in_file = || -> Result<Vec<(String, f64)>> {
        let text = std::fs::read_to_string(&config)?;
        let written =
            lb_userspace::config::Config::parse(&config, &text).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(written.routes.into_iter().find(|r| r.name == "canary").map(|r| r.split).unwrap_or_default())
    };
    assert_eq!(split_in_file()?, [], "the ended split is still in the file");
    bed.lbd.lbctl(&["route", "split", "canary", "two", "10"])?;
    assert_eq!(split_in_file()?, [("two".to_owned(), 10.0)]);
    let listed = bed.lbd.lbctl(&["route", "list"])?;
    let canary = listed.lines().find(|l| l.starts_with("canary ")).unwrap_or_default();
    assert!(
        canary.contains("canary.test")
            && canary.ends_with("one              -                    -                        two 10%"),
        "{listed}"
    );
    let refused = bed.lbd.lbctl(&["route", "split", "canary", "one", "10"]).unwrap_err().to_string();
    assert!(refused.contains("own pool"), "{refused}");

    // Rate limit: burst 5 at once, then 429 with Retry-After.
    let answers = bed.requests("limited.test", 20)?;
    let ok = answers.iter().filter(|(c, _)| *c == 200).count();
    let limited = answers.iter().filter(|(c, _)| *c == 429).count();
    assert!((5..=7).contains(&ok) && ok + limited == 20, "{:?}", tally(&answers));
    let headers = bed.topology.client.run(
        "curl",
        &["-sS", "-D", "-", "-o", "/dev/null", "-H", "Host: limited.test", &format!("http://{VIP}/")],
    )?;
    let headers = String::from_utf8_lossy(&headers.stdout).to_ascii_lowercase();
    assert!(headers.contains("429") && headers.contains("retry-after: 1"), "{headers}");
    assert!(!headers.contains("ratelimit-"), "a limit that does not tell: {headers}");
    // A limit that tells (burst 2, a token every 2 s): each answer says what is left.
    let told = |expected: &[&str]| -> Result<()> {
        let out = bed.topology.client.run(
            "curl",
            &["-sS", "-D", "-", "-o", "/dev/null", "-H", "Host: told.test", &format!("http://{VIP}/")],
        )?;
        let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
        anyhow::ensure!(expected.iter().all(|line| head.contains(&format!("{line}\r\n"))), "{head}");
        Ok(())
    };
    told(&["http/1.1 200 ok", "ratelimit-limit: 2", "ratelimit-remaining: 1", "ratelimit-reset: 2"])?;
    told(&["http/1.1 200 ok", "ratelimit-remaining: 0", "ratelimit-reset: 4"])?;
    told(&["http/1.1 429 too many requests", "ratelimit-remaining: 0", "retry-after: 2"])?;

    // Per tenant, as a gateway in front names it (burst 2): one tenant's third request is
    // refused, another tenant's first is not; a request without the field counts by client.
    let tenant =
        |name: &str| ask(&bed, "tenant.test", "/", &[format!("X-Tenant: {name}")]).map(|(code, _)| code);
    let codes = [tenant("acme")?, tenant("acme")?, tenant("acme")?, tenant("globex")?];
    assert_eq!(codes, [200, 200, 429, 200], "per tenant");
    let none = (0..3)
        .map(|_| ask(&bed, "tenant.test", "/", &[]).map(|(code, _)| code))
        .collect::<Result<Vec<_>>>()?;
    assert_eq!(none, [200, 200, 429], "by client without the field");

    // IPv6 clients: three addresses of one /64 share its bucket (burst 2); on a listener that
    // counts each address alone, each has its own.
    let lb6 = bed.topology.lb.addr6;
    let client6 = bed.topology.client.addr6.segments();
    let mut statuses = Vec::new();
    for (port, last) in [(80, 0x10), (80, 0x11), (80, 0x12), (81, 0x20), (81, 0x21), (81, 0x22)] {
        let mut segments = client6;
        segments[7] = last;
        let source = std::net::Ipv6Addr::from(segments).to_string();
        bed.topology
            .client
            .run("ip", &["-6", "addr", "add", &format!("{source}/64"), "dev", "eth0", "nodad"])?;
        let url = format!("http://[{lb6}]:{port}/");
        let out = bed
            .topology
            .client
            .run("curl", &["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--interface", &source, &url])?;
        statuses.push(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    assert_eq!(statuses, ["200", "200", "429", "200", "200", "200"]);
    // A listener's error pages: lbd's own 404 and 502 as its pages, a backend's answer as it is.
    let paged = |host: &str, path: &str| -> Result<String> {
        let url = format!("http://[{lb6}]:82{path}");
        let host = format!("Host: {host}");
        let out = bed
            .topology
            .client
            .run("curl", &["-sS", "-H", &host, "-w", "|%{http_code}|%{content_type}", &url])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    assert_eq!(paged("none.test", "/")?, "<h1>Nothing here</h1>\n|404|text/html; charset=utf-8");
    assert_eq!(paged("dead.test", "/")?, "{\"error\":\"try again soon\"}\n|502|application/json");
    let live = paged("live.test", "/")?;
    assert!(live.starts_with("backend1") && live.contains("|200|"), "{live}");
    // nginx's own 404 (a file it does not have), intercepted by the route (`intercept_errors`):
    // the site's page; its 503, for which the listener has no page, as nginx said it.
    assert_eq!(paged("live.test", "/slow/missing")?, "<h1>Nothing here</h1>\n|404|text/html; charset=utf-8");
    assert_eq!(paged("live.test", "/busy")?, "backend1 busy\n|503|text/plain");
    assert_eq!(ask(&bed, "none.test", "/", &[])?, (404, "no route".into()), "a listener without pages");
    // A chaos experiment by command: every request of route `open` answered 503 by the fault,
    // written to the file; cleared, served again.
    bed.lbd.lbctl(&["route", "fault", "open", "--abort-status", "503"])?;
    assert_eq!(ask(&bed, "paths.test", "/", &[])?, (503, "fault injected".into()));
    let file = std::fs::read_to_string(bed.dir.0.join("sluice.toml"))?;
    assert!(file.contains("fault = { abort_status = 503 }"), "written to the file");
    let listed = bed.lbd.lbctl(&["route", "list"])?;
    assert!(listed.contains("  fault: abort 503 to 100%"), "{listed}");
    bed.lbd.lbctl(&["route", "fault", "open", "--clear"])?;
    assert_eq!(ask(&bed, "paths.test", "/", &[])?, (200, "backend1".into()));
    let refused = format!("{:?}", bed.lbd.lbctl(&["route", "fault", "open", "--abort-status", "200"]));
    assert!(refused.contains("fault: abort_status must be 400 to 599"), "{refused}");
    // lbctl listener list: each listener with its routes and open connections (one held open).
    let mut held = bed
        .topology
        .client
        .command("bash")
        .args(["-c", &format!("exec 3<>/dev/tcp/{VIP}/80; sleep 4")])
        .spawn()?;
    let mut listed = String::new();
    wait_for("the held connection in lbctl listener list", Duration::from_secs(3), || {
        listed = bed.lbd.lbctl(&["listener", "list"]).unwrap_or_default();
        listed.lines().any(|l| l.starts_with("http ") && l.split_whitespace().nth(4) == Some("1"))
    })
    .with_context(|| listed.clone())?;
    let _ = held.kill();
    let _ = held.wait();
    let each = listed.lines().find(|l| l.starts_with("v6each ")).unwrap_or_default();
    assert!(each.contains(&format!("[{lb6}]:81")) && each.contains(" http "), "{listed}");

    assert_eq!(
        tally(&bed.requests("private.test", 3)?).keys().next().map(String::as_str),
        Some("403 client address not allowed on this route")
    );

    // Retries: half the picks hit a refusing backend; one retry on the other makes all succeed.
    let with_retry = bed.requests("retry.test", 40)?;
    assert!(with_retry.iter().all(|(c, b)| *c == 200 && b == "backend1"), "{:?}", tally(&with_retry));
    // Without retries, a refused connect (nothing was sent) still goes to the other backend,
    // within the retry budget (20% of the route's requests, plus 3): more than the half the
    // live backend got succeed, and past the budget 502s show.
    let without = bed.requests("noretry.test", 40)?;
    let ok = without.iter().filter(|(c, b)| *c == 200 && b == "backend1").count();
    assert!(ok >= 23 && without.iter().any(|(c, _)| *c == 502), "{:?}", tally(&without));

    // A backend that hangs (backend 2 paused): a try left after `try_timeout_ms` (400) goes to
    // the other backend, so every request is answered, the hung ones 400 ms late. Without it,
    // the hung backend's requests wait for the route's whole timeout (1500) and get 504.
    {
        let _paused = bed.nginx[1].pause();
        let started = std::time::Instant::now();
        let late = bed.requests("late.test", 6)?;
        let took = started.elapsed();
        assert!(late.iter().all(|(c, b)| *c == 200 && b == "backend1"), "{:?}", tally(&late));
        assert!(took >= Duration::from_millis(1100) && took < Duration::from_secs(4), "{took:?}");
        let hung = tally(&bed.requests("hung.test", 2)?);
        let expected = [("200 backend1", 1), ("504 upstream timed out", 1)];
        assert_eq!(hung, expected.map(|(k, n)| (k.to_owned(), n)).into(), "{hung:?}");
    }

    // Shadowing: half the requests are mirrored to pool `two`; the client only sees `one`.
    let answers = bed.requests("mirror.test", 200)?;
    assert!(answers.iter().all(|(c, b)| *c == 200 && b == "backend1"), "{:?}", tally(&answers));
    let mirrored = wait_for_count(&bed, "sluice_http_requests_total{route=\"mirror:shadow\",pool=\"two\"")?;
    assert!((60..=140).contains(&mirrored), "{mirrored} of 200 mirrored");
    // POSTs are mirrored with their bodies (up to 64 KiB by default); longer ones are not.
    let post = |bytes: usize, n: usize| -> Result<Vec<String>> {
        let file = bed.dir.0.join(format!("body-{bytes}"));
        std::fs::write(&file, vec![b'p'; bytes])?;
        let (host, data) = ("Host: mirror.test".to_owned(), format!("@{}", file.display()));
        let url = format!("http://{VIP}/");
        let mut args = vec!["-sS", "-H", &host, "--data-binary", &data, "-w", "|%{http_code}\n"];
        args.extend(std::iter::repeat_n(url.as_str(), n));
        let out = bed.topology.client.run("curl", &args)?;
        Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect())
    };
    let answers = post(1000, 100)?;
    assert!(answers.iter().all(|l| l == "backend1" || l == "|200"), "{answers:?}");
    let with_bodies =
        wait_for_count(&bed, "sluice_http_requests_total{route=\"mirror:shadow\",pool=\"two\"")?;
    assert!(
        (mirrored + 25..=mirrored + 75).contains(&with_bodies),
        "{} of 100 POSTs mirrored",
        with_bodies - mirrored
    );
    let answers = post(100 * 1024, 10)?;
    assert!(answers.iter().all(|l| l == "backend1" || l == "|200"), "{answers:?}");
    let after = wait_for_count(&bed, "sluice_http_requests_total{route=\"mirror:shadow\",pool=\"two\"")?;
    assert_eq!(after, with_bodies, "a 100 KiB body was mirrored");

    // A/B by cookie value.
    assert_eq!(ask(&bed, "ab.test", "/", &["cookie: variant=b".into()])?, (200, "backend2".into()));
    assert_eq!(ask(&bed, "ab.test", "/", &["cookie: variant=a".into()])?, (200, "backend1".into()));
    // ...and by a query parameter's value, as sent.
    assert_eq!(ask(&bed, "ab.test", "/?x=1&api=v2", &[])?, (200, "backend2".into()));
    assert_eq!(ask(&bed, "ab.test", "/?api=v1", &[])?, (200, "backend1".into()));
    assert_eq!(ask(&bed, "ab.test", "/?api=v%32", &[])?, (200, "backend1".into()));
    // Sticky split: with cookies kept, every request stays on the first pool it was given;
    // without, both pools answer.
    let sticky = |cookies: bool| -> Result<BTreeMap<String, usize>> {
        let url = format!("http://{VIP}/");
        let mut args = vec!["-sS", "-H", "Host: sticky.test", "-w", "\n"];
        if cookies {
            args.extend(["-b", ""]);
        }
        args.extend(std::iter::repeat_n(url.as_str(), 20));
        let out = String::from_utf8_lossy(&bed.topology.client.run("curl", &args)?.stdout).into_owned();
        let mut seen = BTreeMap::new();
        for line in out.lines().filter(|l| !l.is_empty()) {
            *seen.entry(line.to_owned()).or_default() += 1;
        }
        Ok(seen)
    };
    assert_eq!(sticky(true)?.len(), 1, "sticky clients moved between pools");
    assert_eq!(sticky(false)?.len(), 2, "the split did not split");

    // Fallback: the pool's only backend is down.
    let answers = bed.requests("fallback.test", 2)?;
    assert!(answers.iter().all(|(c, b)| *c == 503 && b == "down for maintenance"), "{answers:?}");
    Ok(())
}

#[test]
fn root_gateway_outlier_ejection_circuit_breaker_retry_budget() -> Result<()> {
    let bed = Bed::new()?;
    let dead = bed.topology.backends[2].addr4.to_string();

    // Two failures in a row eject the refusing backend: out for L7 and L4 (Maglev weight 0).
    let answers = bed.requests("eject.test", 8)?;
    assert!(answers.iter().all(|(c, _)| *c == 200), "{:?}", tally(&answers));
    wait_for("ejection", Duration::from_secs(1), || {
        bed.lbd.pool_show("ejecting").map(|p| p[&dead] == ("EJECTED".to_owned(), 0)).unwrap_or(false)
    })?;
    // ...and back after the ejection time.
    wait_for("return after ejection", Duration::from_secs(3), || {
        bed.lbd.pool_show("ejecting").map(|p| p[&dead].0 == "up").unwrap_or(false)
    })?;

    // A health check that wants text in the answer: backend 1 answers 200 without it, so it is
    // down, and every request goes to backend 2.
    let (b1, b2) = (bed.topology.backends[0].addr4.to_string(), bed.topology.backends[1].addr4.to_string());
    wait_for("backend 1 down by its answer's text", Duration::from_secs(5), || {
        bed.lbd.pool_show("bodychecked").map(|p| p[&b1].0 == "DOWN" && p[&b2].0 == "up").unwrap_or(false)
    })?;
    let answers = bed.requests("bodychecked.test", 6)?;
    assert!(answers.iter().all(|(c, b)| *c == 200 && b == "backend2"), "{:?}", tally(&answers));

    // A backup backend stands by while the other can take requests: with backend 1 drained,
    // backend 2 takes them all; undrained, backend 1 has them back.
    let all_to = |backend: &str| -> Result<()> {
        let answers = bed.requests("standby.test", 6)?;
        anyhow::ensure!(answers.iter().all(|(c, b)| *c == 200 && b == backend), "{:?}", tally(&answers));
        Ok(())
    };
    all_to("backend1")?;
    let shown = bed.lbd.lbctl(&["pool", "show", "standby"])?;
    assert!(shown.lines().any(|l| l.contains(&b2) && l.ends_with("(backup)")), "{shown}");
    bed.lbd.lbctl(&["backend", "drain", "standby", &b1])?;
    all_to("backend2")?;
    bed.lbd.lbctl(&["backend", "drain", "standby", &b1, "--undo"])?;
    all_to("backend1")?;

    // A backend cookie: curl with a cookie jar stays on the backend that first answered it, a
    // client without one is balanced over both. Drained, the backend keeps the clients its
    // cookie names and takes no new one.
    let jar = bed.dir.0.join("cookies.txt");
    let jar = jar.to_str().context("path")?;
    let backends = |with_jar: bool| -> Result<BTreeMap<String, usize>> {
        let url = format!("http://{VIP}/");
        let mut args = vec!["-sS", "-H", "Host: cookied.test"];
        if with_jar {
            args.extend(["-b", jar, "-c", jar]);
        }
        args.extend(std::iter::repeat_n(url.as_str(), 8));
        let out = String::from_utf8_lossy(&bed.topology.client.run("curl", &args)?.stdout).into_owned();
        let mut seen = BTreeMap::new();
        for line in out.lines() {
            *seen.entry(line.to_owned()).or_default() += 1;
        }
        Ok(seen)
    };
    let first = backends(true)?;
    assert_eq!(first.len(), 1, "a client with a cookie jar moved between backends: {first:?}");
    let kept = first.keys().next().cloned().unwrap_or_default();
    assert_eq!(backends(false)?.len(), 2, "clients without cookies all went to one backend");
    let jar_text = std::fs::read_to_string(jar)?;
    assert!(
        jar_text.contains("SERVERID") && !jar_text.contains(&b1) && !jar_text.contains(&b2),
        "{jar_text}"
    );
    let kept_address = if kept == "backend1" { &b1 } else { &b2 };
    bed.lbd.lbctl(&["backend", "drain", "cookied", kept_address])?;
    assert_eq!(backends(true)?, BTreeMap::from([(kept.clone(), 8)]), "drained: its client stays");
    let others = backends(false)?;
    assert!(!others.contains_key(&kept), "drained: a new client came to it: {others:?}");
    let shown = bed.lbd.lbctl(&["pool", "show", "cookied"])?;
    assert!(shown.contains(", sticky by cookie SERVERID"), "{shown}");

    // Circuit breaking: one request in flight per backend; a second one gets 503 at once.
    let slow = bed
        .topology
        .client
        .command("curl")
        .args(["-sS", "-o", "/dev/null", "-H", "Host: breaker.test", &format!("http://{VIP}/slow")])
        .spawn()?;
    std::thread::sleep(Duration::from_millis(500));
    // The second waits (pending) for the first to finish; a third finds the queue full.
    let started = std::time::Instant::now();
    let pending = bed
        .topology
        .client
        .command("curl")
        .args(["-sS", "-H", "Host: breaker.test", &format!("http://{VIP}/")])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    let third = bed.requests("breaker.test", 1)?;
    assert_eq!(third[0].0, 503, "{third:?}");
    let mut slow = slow;
    slow.wait()?;
    let out = pending.wait_with_output()?;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "backend1", "the pending request");
    assert!(started.elapsed() > Duration::from_secs(1), "the pending request did not wait");
    assert_eq!(bed.requests("breaker.test", 1)?[0], (200, "backend1".to_owned()));

    // Retry budget 0%: only the floor of 3 retries; after that failures show.
    let answers = bed.requests("budget.test", 40)?;
    let failed = answers.iter().filter(|(c, _)| *c == 502).count();
    assert!(failed >= 5, "budget did not stop retries: {:?}", tally(&answers));
    Ok(())
}

/// One request with extra headers: (status, body).
fn ask(bed: &Bed, host: &str, path: &str, headers: &[String]) -> Result<(u16, String)> {
    let url = format!("http://{VIP}{path}");
    let host = format!("Host: {host}");
    let mut args = vec!["-sS", "--path-as-is", "-H", host.as_str(), "-w", "\n|%{http_code}"];
    for h in headers {
        args.extend(["-H", h.as_str()]);
    }
    args.push(&url);
    let out = String::from_utf8_lossy(&bed.topology.client.run("curl", &args)?.stdout).into_owned();
    let (body, code) = out.rsplit_once('|').unwrap_or_default();
    Ok((code.trim().parse().unwrap_or(0), body.trim().to_owned()))
}

fn token(secret: &str, sub: &str, aud: &str, exp_in: i64, nbf_in: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let claims = serde_json::json!({ "sub": sub, "iss": "sluice-test", "aud": aud, "exp": now + exp_in, "nbf": now + nbf_in });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode")
}

/// An ES256 key pair: its signing key, and its public half as a JWK named `kid`.
struct Es256 {
    key: jsonwebtoken::EncodingKey,
    jwk: String,
    kid: String,
}

impl Es256 {
    fn new(kid: &str) -> Result<Es256> {
        use base64::Engine as _;
        let pair = rcgen::KeyPair::generate()?;
        let point = pair.public_key_raw(); // 0x04, then x and y
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let (x, y) = (b64(&point[1..33]), b64(&point[33..65]));
        let jwk = format!(
            r#"{{"kty":"EC","crv":"P-256","kid":"{kid}","use":"sig","alg":"ES256","x":"{x}","y":"{y}"}}"#
        );
        let key = jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes())?;
        Ok(Es256 { key, jwk, kid: kid.to_owned() })
    }

    /// `Authorization: Bearer …` for `sub`, signed by this key, its header naming `kid`.
    fn bearer(&self, kid: &str, sub: &str) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(kid.to_owned());
        let exp =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
                + 600;
        let claims = serde_json::json!({ "sub": sub, "exp": exp, "email": format!("{sub}@example.test") });
        format!(
            "Authorization: Bearer {}",
            jsonwebtoken::encode(&header, &claims, &self.key).expect("encode")
        )
    }
}

fn jwk_set(keys: &[&str]) -> String {
    format!(r#"{{"keys":[{}]}}"#, keys.join(","))
}

/// A route whose JWT keys are an identity provider's JWK Set, fetched by lbd over HTTPS from
/// nginx (its server checked against the route's `jwks_ca`): a token is checked with the key its
/// `kid` names, and a key the provider adds is fetched once a token names it.
#[test]
fn root_gateway_jwt_keys_from_a_jwk_set_url() -> Result<()> {
    let bed = Bed::new()?;
    let (k1, k2) = (Es256::new("k1")?, Es256::new("k2")?);
    let publish = |keys: &[&Es256]| -> Result<()> {
        let jwks: Vec<&str> = keys.iter().map(|k| k.jwk.as_str()).collect();
        let staged = bed.nginx[1].dir().join("jwks.json.new");
        std::fs::write(&staged, jwk_set(&jwks))?;
        Ok(std::fs::rename(&staged, bed.nginx[1].dir().join("jwks.json"))?)
    };
    // Until a token names it, lbd holds the set it fetched at start (k0 alone).
    publish(&[&k1])?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let answer = loop {
        let forged = "X-User: mallory".to_owned();
        let answer = ask(&bed, "jwks.test", "/echo", &[k1.bearer(&k1.kid, "ann"), forged])?;
        if answer.0 == 200 || std::time::Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(answer.0, 200, "{answer:?}");
    // The token's subject and email reach the backend; the client's own X-User does not.
    assert!(answer.1.contains("sub=ann user=ann@example.test"), "{answer:?}");
    // k1's kid on another key's signature; no token; a token of a key nobody published.
    let forged = ask(&bed, "jwks.test", "/", &[k2.bearer(&k1.kid, "ann")])?;
    assert_eq!(forged, (401, "token signature invalid".into()));
    assert_eq!(ask(&bed, "jwks.test", "/", &[])?, (401, "bearer token required".into()));
    assert_eq!(ask(&bed, "jwks.test", "/", &[k2.bearer(&k2.kid, "bob")])?, (401, "token key unknown".into()));
    // The provider adds k2: a token of it is let in once lbd fetches the set again (every
    // `jwks_refresh_s`, 10 s here; an unknown key made it fetch just now, and may again only
    // after 30 s).
    publish(&[&k1, &k2])?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let answer = loop {
        let answer = ask(&bed, "jwks.test", "/echo", &[k2.bearer(&k2.kid, "bob")])?;
        if answer.0 == 200 || std::time::Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(answer.0 == 200 && answer.1.contains("sub=bob"), "{answer:?}");
    Ok(())
}

#[test]
fn root_gateway_api_keys_and_jwt() -> Result<()> {
    let bed = Bed::new()?;
    // API keys from a file that reloads.
    assert_eq!(ask(&bed, "keys.test", "/", &[])?, (401, "API key required".into()));
    // A trailing dot names the same host (as DNS and nginx read it): the same route, the same gate.
    assert_eq!(ask(&bed, "keys.test.", "/", &[])?, (401, "API key required".into()));
    assert_eq!(
        ask(&bed, "keys.test", "/", &["x-api-key: nope".into()])?,
        (403, "API key not accepted".into())
    );
    assert_eq!(ask(&bed, "keys.test", "/", &["x-api-key: key-one".into()])?, (200, "backend1".into()));
    std::fs::write(bed.dir.0.join("keys.txt"), "key-one\nkey-two\nkey-three\n")?;
    wait_for("the new key", Duration::from_secs(4), || {
        ask(&bed, "keys.test", "/", &["x-api-key: key-two".into()]).map(|a| a.0 == 200).unwrap_or(false)
    })?;

    // Basic auth, users from htpasswd, logins by curl's -u.
    let staff = |login: &str| -> Result<(u16, String)> {
        let url = format!("http://{VIP}/echo");
        let args = [
            "-sS",
            "-u",
            login,
            "-H",
            "Host: staff.test",
            "-H",
            "X-User: mallory",
            "-D",
            "-",
            "-w",
            "\n|%{http_code}",
            &url,
        ];
        let out = String::from_utf8_lossy(&bed.topology.client.run("curl", &args)?.stdout).into_owned();
        let (text, code) = out.rsplit_once('|').unwrap_or_default();
        Ok((code.trim().parse().unwrap_or(0), text.to_owned()))
    };
    for login in ["ann:open sesame", "bob:hunter2"] {
        let (code, text) = staff(login)?;
        let user = login.split(':').next().unwrap_or_default();
        assert_eq!(code, 200, "{login}: {text}");
        assert!(text.contains(&format!("user={user}\n")), "the user's name, not the forged one: {text}");
    }
    for login in ["ann:hunter2", "carol:open sesame", "bob:"] {
        let (code, text) = staff(login)?;
        assert_eq!(code, 401, "{login}: {text}");
        let challenge = "www-authenticate: basic realm=\"staff only\", charset=\"utf-8\"";
        assert!(text.to_ascii_lowercase().contains(challenge), "{text}");
    }
    assert_eq!(ask(&bed, "staff.test", "/", &[])?, (401, "credentials required".into()));
    let listed = bed.lbd.lbctl(&["route", "list"])?;
    let staff = listed.lines().find(|l| l.starts_with("staff ")).unwrap_or_default();
    assert!(staff.contains(" basic_auth "), "{listed}");
    let keyed = listed.lines().find(|l| l.starts_with("keyed ")).unwrap_or_default();
    assert!(keyed.contains(" api_key, rate_limit 1/s per api_key "), "{listed}");
    let per_user = listed.lines().find(|l| l.starts_with("jwt-per-user ")).unwrap_or_default();
    assert!(per_user.contains(" jwt, rate_limit 0.01/s per jwt_subject "), "{listed}");
    let retries = listed.lines().skip_while(|l| !l.starts_with("retry ")).nth(1);
    assert_eq!(retries, Some("  retries: 1 on reset, 502, 503, 504 (budget 100%)"), "{listed}");

    // The PROXY protocol to backends: nginx reads the client's address from it, in v1 and v2,
    // and the pools' health checks (which send the header that names no client) keep them up.
    // Two requests on one curl connection reach nginx on one connection (`$connection`), kept
    // for that client; another curl's get another.
    let client = bed.topology.client.addr4;
    for (host, name) in [("pp1.test", "backend1"), ("pp2.test", "backend2")] {
        let (code, body) = ask(&bed, host, "/", &[])?;
        assert_eq!(code, 200, "{host}: {body}");
        assert!(body.starts_with(&format!("{name} pp={client}:")), "{host}: {body}");
        let url = format!("http://{VIP}/");
        let args = ["-sS", "-H", &format!("Host: {host}"), &url, &url];
        let twice = String::from_utf8_lossy(&bed.topology.client.run("curl", &args)?.stdout).into_owned();
        let answers: Vec<&str> = twice.lines().collect();
        assert!(answers.len() == 2 && answers[0] == answers[1], "one backend connection: {twice}");
        assert!(
            answers[0].starts_with(&format!("{name} pp={client}:")) && answers[0] != body,
            "{twice} {body}"
        );
    }
    std::thread::sleep(Duration::from_millis(800));
    let show = bed.lbd.lbctl(&["pool", "show", "pp2"])?;
    assert!(show.contains(" up ") && !show.contains("DOWN"), "{show}");

    // JWT: valid, expired, not yet valid, wrong audience, bad signature, missing.
    let bearer = |t: String| format!("authorization: Bearer {t}");
    let (code, body) = ask(
        &bed,
        "jwt.test",
        "/echo",
        &[bearer(token("s3cret", "alice", "edge", 60, -1)), "x-subject: mallory".into()],
    )?;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("sub=alice"), "the verified subject, not the forged one: {body}");
    let cases = [
        (token("s3cret", "alice", "edge", -10, -60), 401, "token expired"),
        (token("s3cret", "alice", "edge", 600, 300), 401, "token not valid yet"),
        (token("s3cret", "alice", "other", 60, -1), 403, "token audience not accepted"),
        (token("wrong", "alice", "edge", 60, -1), 401, "token signature invalid"),
    ];
    for (t, status, why) in cases {
        assert_eq!(ask(&bed, "jwt.test", "/", &[bearer(t)])?, (status, why.to_owned()));
    }
    assert_eq!(ask(&bed, "jwt.test", "/", &[])?, (401, "bearer token required".into()));
    // A pool that closes each backend connection after one request: nginx never sees a second
    // request on one (with keep-alive as usual, some of six requests would share one).
    for _ in 0..6 {
        assert_eq!(ask(&bed, "capped.test", "/conn", &[])?, (200, "backend1 r=1".to_owned()));
    }
    // Limited per subject: alice's third request waits; bob, from the same address, does not.
    let code = |sub: &str| -> Result<u16> {
        Ok(ask(&bed, "jwt-limited.test", "/", &[bearer(token("s3cret", sub, "edge", 60, -1))])?.0)
    };
    let alice: Vec<u16> = (0..3).map(|_| code("alice")).collect::<Result<_>>()?;
    assert_eq!((alice, code("bob")?), (vec![200, 200, 429], 200));

    // A gate on a path prefix holds however the client spells the path: it is made canonical
    // before routing, so no spelling reaches the open route beside it while the backend reads
    // it as /admin. curl sends these as written (`--path-as-is`).
    for path in ["/admin/x", "/x/../admin/x", "/%61dmin/x", "//admin/x", "/./admin/x", "/x/%2e%2E/admin/x"] {
        assert_eq!(ask(&bed, "paths.test", path, &[])?, (401, "API key required".into()), "{path}");
    }
    assert_eq!(ask(&bed, "paths.test", "/x/../public", &[])?, (200, "backend1".into()));
    assert_eq!(ask(&bed, "paths.test", "/%zz", &[])?.0, 400, "a malformed escape");

    // Rate limit per API key: one key's bucket running dry does not touch another's.
    let codes: Vec<u16> = (0..5)
        .map(|_| ask(&bed, "keyed.test", "/", &["x-api-key: key-one".into()]).map(|a| a.0))
        .collect::<Result<_>>()?;
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 3, "{codes:?}");
    assert_eq!(ask(&bed, "keyed.test", "/", &["x-api-key: key-three".into()])?.0, 200);
    Ok(())
}

/// The value of the first metrics line starting with `prefix` (after the shadow tasks finish).
fn wait_for_count(bed: &Bed, prefix: &str) -> Result<u64> {
    let read = || -> Result<u64> {
        let out = bed.topology.lb.run("curl", &["-sS", "http://127.0.0.1:9100/metrics"])?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum())
    };
    let mut last = read()?;
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(200));
        let now = read()?;
        if now == last && now > 0 {
            break;
        }
        last = now;
    }
    Ok(last)
}

#[test]
fn root_gateway_response_cache() -> Result<()> {
    let mut bed = Bed::new()?;
    let get = |bed: &Bed| -> Result<(u16, String, String)> {
        let out = bed
            .topology
            .client
            .run("curl", &["-sS", "-D", "-", "-H", "Host: cache.test", &format!("http://{VIP}/cached")])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let code = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let x_cache = text
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("x-cache: ").map(|v| v.trim().to_owned()))
            .unwrap_or_default();
        let body = text.rsplit("\r\n\r\n").next().unwrap_or_default().trim().to_owned();
        // A hit names the proxy in Via once, as a miss does; the proxy's own 502 has none.
        let vias: Vec<&str> =
            text.lines().map(str::trim_end).filter(|l| l.to_ascii_lowercase().starts_with("via:")).collect();
        let via_ok = match code {
            200 => vias.len() == 1 && vias[0].ends_with(": 1.1 sluice"),
            _ => vias.is_empty(),
        };
        anyhow::ensure!(via_ok, "Via: {text}");
        Ok((code, x_cache, body))
    };
    assert_eq!(get(&bed)?, (200, "miss".into(), "backend1 cached".into()));
    assert_eq!(get(&bed)?, (200, "hit".into(), "backend1 cached".into()));

    // Each client's conditions are judged against the stored answer; a range passes the cache by.
    /// Status, fields (names lowercased), body bytes.
    type Answer = (u16, Vec<(String, String)>, u64);
    let big = |extra: &[&str]| -> Result<Answer> {
        let url = format!("http://{VIP}/big");
        let mut args =
            vec!["-sS", "-D", "-", "-o", "/dev/null", "-w", "%{size_download}", "-H", "Host: cache.test"];
        args.extend_from_slice(extra);
        args.push(&url);
        let out = bed.topology.client.run("curl", &args)?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (head, size) = text.rsplit_once("\r\n\r\n").context("no head")?;
        let code = head.get(9..12).and_then(|c| c.parse().ok()).context("no status")?;
        let fields = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            .collect();
        Ok((code, fields, size.trim().parse()?))
    };
    let field = |fields: &[(String, String)], name: &str| {
        fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()).unwrap_or_default()
    };
    let (code, fields, size) = big(&["-r", "0-9"])?;
    assert_eq!((code, field(&fields, "x-cache"), size), (206, String::new(), 10));
    let (code, fields, size) = big(&[])?;
    assert_eq!((code, field(&fields, "x-cache").as_str(), size), (200, "MISS", 65536));
    let (etag, modified) = (field(&fields, "etag"), field(&fields, "last-modified"));
    assert!(!etag.is_empty() && !modified.is_empty(), "{fields:?}");
    let (code, fields, _) = big(&["-H", &format!("If-None-Match: {etag}")])?;
    assert_eq!((code, field(&fields, "x-cache").as_str()), (304, "HIT"));
    assert_eq!(field(&fields, "etag"), etag);
    assert!(!field(&fields, "age").is_empty(), "{fields:?}");
    assert_eq!(big(&["-H", &format!("If-Modified-Since: {modified}")])?.0, 304);
    let (code, fields, size) = big(&["-H", "If-None-Match: \"other\""])?;
    assert_eq!((code, field(&fields, "x-cache").as_str(), size), (200, "HIT", 65536));
    for x_cache in ["MISS", "HIT"] {
        let (code, fields, _) = big(&["-I"])?;
        assert_eq!((code, field(&fields, "x-cache").as_str()), (200, x_cache));
        assert_eq!(field(&fields, "content-length"), "65536");
    }
    assert!(bed.lbd.lbctl(&["cache", "purge", "cached", "/big"])?.contains("purged 2"), "GET and HEAD");

    // Concurrent misses make one upstream request.
    assert!(bed.lbd.lbctl(&["cache", "purge", "cached", "/cached"])?.contains("purged 1"));
    let fills = || wait_for_count(&bed, "sluice_http_requests_total{route=\"cached:fill\"");
    let before = fills()?;
    let url = format!("http://{VIP}/cached");
    let mut args =
        vec!["-sS", "--parallel", "--parallel-immediate", "-H", "Host: cache.test", "-o", "/dev/null"];
    args.extend(std::iter::repeat_n(url.as_str(), 10));
    bed.topology.client.run("curl", &args)?;
    assert_eq!(fills()? - before, 1, "10 concurrent misses, one fill");

    // Served while the backend is down, within max-age (3 s)...
    bed.nginx.remove(0);
    assert_eq!(get(&bed)?, (200, "hit".into(), "backend1 cached".into()));
    // ...and gone after a purge.
    assert!(bed.lbd.lbctl(&["cache", "purge", "cached"])?.contains("purged 1"));
    assert_eq!(get(&bed)?.0, 502);
    Ok(())
}

/// A cache route's stale answers with nginx as the origin: revalidated with their validators
/// (nginx's 304), served at once while fetched again apart, and instead of the error when the
/// backend is gone.
#[test]
fn root_gateway_cache_revalidates_and_serves_stale_answers() -> Result<()> {
    let mut bed = Bed::new()?;
    let get = |bed: &Bed, host: &str| -> Result<(u16, String, String)> {
        let host = format!("Host: {host}");
        let out = bed
            .topology
            .client
            .run("curl", &["-sS", "-D", "-", "-H", &host, &format!("http://{VIP}/short")])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let code = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let x_cache = text
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("x-cache: ").map(|v| v.trim().to_owned()))
            .unwrap_or_default();
        let body = text.rsplit("\r\n\r\n").next().unwrap_or_default().trim().to_owned();
        Ok((code, x_cache, body))
    };
    let fills =
        |route: &str| wait_for_count(&bed, &format!("sluice_http_requests_total{{route=\"{route}:fill\""));
    let expire = || std::thread::sleep(Duration::from_millis(1200));
    let short = |x_cache: &str| (200, x_cache.to_owned(), "backend1 short".to_owned());
    assert_eq!(get(&bed, "stale.test")?, short("miss"));
    assert_eq!(get(&bed, "updating.test")?, short("miss"));
    // What each cache holds is in the metrics.
    let metrics = bed.topology.lb.run("curl", &["-sS", "http://127.0.0.1:9100/metrics"])?;
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    for line in
        ["sluice_http_cache_entries{route=\"stale\"} 1", "sluice_http_cache_bytes{route=\"updating\"} 15"]
    {
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }
    expire();
    // nginx answers the stored ETag with 304: the body stays, fresh for another second.
    assert_eq!(get(&bed, "stale.test")?, short("revalidated"));
    assert_eq!(get(&bed, "stale.test")?, short("hit"));
    // Within stale_while_revalidate_s: the stale answer at once, then the one fetched apart.
    let before = fills("updating")?;
    assert_eq!(get(&bed, "updating.test")?, short("updating"));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match get(&bed, "updating.test")? {
            got if got == short("hit") => break,
            got => anyhow::ensure!(got == short("updating"), "{got:?}"),
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "no fill apart");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(fills("updating")? - before, 1, "one fill apart");
    // The backend gone: within stale_if_error_s the stale answer, not the 502.
    bed.nginx.remove(0);
    expire();
    assert_eq!(get(&bed, "stale.test")?, short("stale"));
    assert_eq!(get(&bed, "updating.test")?, short("updating"));
    let out = bed.topology.client.run(
        "curl",
        &[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Host: cache.test",
            &format!("http://{VIP}/short"),
        ],
    )?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "502", "a route without grace");
    // A purge by prefix takes the paths under it.
    assert!(bed.lbd.lbctl(&["cache", "purge", "stale", "/sh*"])?.contains("purged 1"));
    assert_eq!(get(&bed, "stale.test")?.0, 502, "purged: nothing stale left to serve");
    Ok(())
}

#[test]
fn root_gateway_shadow_never_slows_the_client() -> Result<()> {
    let bed = Bed::new()?;
    // Backend 3 answers only after 2 s; every request is mirrored to it.
    let _slow = sluice_tests::servers::NsServer::slow(&bed.topology.backends[2], 80, Duration::from_secs(2))?;
    let started = std::time::Instant::now();
    let answers = bed.requests("mirror-slow.test", 10)?;
    let took = started.elapsed();
    assert!(answers.iter().all(|(c, b)| *c == 200 && b == "backend1"), "{:?}", tally(&answers));
    assert!(took < Duration::from_millis(1500), "10 answers took {took:?}: the shadow held them up");
    wait_for("every request mirrored", Duration::from_secs(6), || {
        wait_for_count(&bed, "sluice_http_requests_total{route=\"mirror-slow:shadow\"")
            .map(|n| n == 10)
            .unwrap_or(false)
    })?;
    Ok(())
}

#[test]
fn root_gateway_claims_pass_through_budget_big_objects_and_hashed_fills() -> Result<()> {
    let bed = Bed::new()?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
    let sign = |claims: serde_json::Value| {
        let key = jsonwebtoken::EncodingKey::from_secret(b"s3cret");
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).expect("encode")
    };
    // JWT: a configured issuer or audience must be present; the scheme is case-insensitive.
    let no_iss = sign(serde_json::json!({ "sub": "ann", "aud": "edge", "exp": now + 60 }));
    let no_aud = sign(serde_json::json!({ "sub": "ann", "iss": "sluice-test", "exp": now + 60 }));
    let good = token("s3cret", "ann", "edge", 60, -5);
    assert_eq!(ask(&bed, "jwt.test", "/", &[format!("authorization: Bearer {no_iss}")])?.0, 403);
    assert_eq!(ask(&bed, "jwt.test", "/", &[format!("authorization: Bearer {no_aud}")])?.0, 403);
    assert_eq!(ask(&bed, "jwt.test", "/", &[format!("authorization: bEARER {good}")])?.0, 200);
    // RSA-PSS (PS256) with the provider's key: its tokens pass with their subject; the same
    // key's RS256 tokens, and PS256 tokens of another key, do not.
    let private = std::fs::read(bed.dir.0.join("idp-rsa.key"))?;
    let rsa = |algorithm, key: &[u8]| -> Result<String> {
        let claims = serde_json::json!({ "sub": "pat", "exp": now + 60 });
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(key)?;
        Ok(jsonwebtoken::encode(&jsonwebtoken::Header::new(algorithm), &claims, &key)?)
    };
    let bearer = |token: String| vec![format!("authorization: Bearer {token}")];
    let pss = rsa(jsonwebtoken::Algorithm::PS256, &private)?;
    let (code, body) = ask(&bed, "jwtpss.test", "/echo", &bearer(pss))?;
    assert!(code == 200 && body.contains("sub=pat"), "{code} {body}");
    let pkcs1 = rsa(jsonwebtoken::Algorithm::RS256, &private)?;
    assert_eq!(ask(&bed, "jwtpss.test", "/", &bearer(pkcs1))?.0, 401, "RS256 on a PS256 route");
    let other = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
        .output()?
        .stdout;
    let forged = rsa(jsonwebtoken::Algorithm::PS256, &other)?;
    assert_eq!(ask(&bed, "jwtpss.test", "/", &bearer(forged))?.0, 401, "another key's PS256");

    // A 503 that cannot be retried (one backend) reaches the client as the backend sent it.
    assert_eq!(ask(&bed, "passthrough.test", "/busy", &[])?, (503, "backend1 busy".into()));

    // The retry budget counts granted retries only: 200 GETs on a half-refusing pool get about
    // 3 + 20% of 200 = 43 retries (the rest of the refused half fails).
    let answers = bed.requests("budget20.test", 200)?;
    let failed = answers.iter().filter(|(c, _)| *c == 502).count();
    assert!((40..=75).contains(&failed), "{failed} failures: {:?}", tally(&answers));

    // On a cache route, an answer over max_object_bytes streams through, uncached, every time.
    for _ in 0..2 {
        let url = format!("http://{VIP}/big");
        let out = bed.topology.client.run(
            "curl",
            &[
                "-sS",
                "-o",
                "/dev/null",
                "-H",
                "Host: smallcache.test",
                "-w",
                "%{http_code} %{size_download}",
                &url,
            ],
        )?;
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200 65536");
    }

    // Cache fills pick the backend with the request's own hash key.
    let backend_of = |user: &str| -> Result<String> {
        Ok(ask(&bed, "hashplain.test", "/", &[format!("x-user: {user}")])?.1)
    };
    let users: Vec<String> = (0..20).map(|i| format!("user{i}")).collect();
    let mut by_backend = BTreeMap::new();
    for user in &users {
        by_backend.entry(backend_of(user)?).or_insert_with(|| user.clone());
    }
    assert_eq!(by_backend.len(), 2, "20 users all hashed to one backend: {by_backend:?}");
    for (i, (backend, user)) in by_backend.iter().enumerate() {
        let (code, body) =
            ask(&bed, "hashcache.test", &format!("/cached?fill={i}"), &[format!("x-user: {user}")])?;
        assert_eq!((code, body), (200, format!("{backend} cached")), "{user}");
    }

    // By a query parameter: a user's requests keep their backend whatever the path and the
    // other parameters; 20 users use both.
    let mut by_backend = BTreeMap::new();
    for user in &users {
        let (code, backend) = ask(&bed, "byquery.test", &format!("/?user={user}"), &[])?;
        assert_eq!(code, 200);
        for again in [format!("/echo?a=1&user={user}"), format!("/x/y?user={user}&b")] {
            let (code, body) = ask(&bed, "byquery.test", &again, &[])?;
            assert!(code == 200 && body.starts_with(&backend), "{user} {again}: {body} not {backend}");
        }
        *by_backend.entry(backend).or_insert(0) += 1;
    }
    assert_eq!(by_backend.len(), 2, "20 users all hashed to one backend: {by_backend:?}");
    Ok(())
}

/// dnsmasq on `host` (port 53) answering for `sluice.test` from `hosts` alone (NXDOMAIN for a
/// name it does not list); SIGHUP makes it read the file again. Stopped when dropped.
struct Dnsmasq(std::process::Child);

impl Dnsmasq {
    fn start(host: &sluice_tests::netns::Host, hosts: &std::path::Path) -> Result<Dnsmasq> {
        let child = host
            .command("dnsmasq")
            .args(["--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces", "--user=root"])
            .args(["--conf-file=/dev/null", "--pid-file=", "--local=/sluice.test/"])
            .arg(format!("--listen-address={}", host.addr4))
            .arg(format!("--addn-hosts={}", hosts.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("dnsmasq")?;
        Ok(Dnsmasq(child))
    }

    fn reread(&self) {
        // SAFETY: the dnsmasq this test started, by PID.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGHUP) };
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn root_gateway_a_pool_s_backends_follow_its_dns_records() -> Result<()> {
    let bed = Bed::new()?;
    let (b1, b2) = (bed.topology.backends[0].addr4, bed.topology.backends[1].addr4);
    let hosts = bed.dir.0.join("dns-hosts");
    std::fs::write(&hosts, format!("{b1} app.sluice.test\n{b2} app.sluice.test\n"))?;
    let dns = Dnsmasq::start(&bed.topology.backends[2], &hosts)?;
    // Both records' backends answer, by round robin.
    let mut answers = Vec::new();
    wait_for("both DNS backends serving", Duration::from_secs(8), || {
        answers = bed.requests("named.test", 6).unwrap_or_default();
        let tally = tally(&answers);
        tally.get("200 backend1") == Some(&3) && tally.get("200 backend2") == Some(&3)
    })
    .with_context(|| format!("{:?}", tally(&answers)))?;
    let shown = bed.lbd.lbctl(&["pool", "show", "named"])?;
    assert!(shown.contains("backends from DNS: app.sluice.test, asked every 1000 ms"), "{shown}");
    assert!(shown.contains("; last: 2 addresses"), "{shown}");
    assert!(shown.contains(&b1.to_string()) && shown.contains(&b2.to_string()), "{shown}");
    // Which backends it has is the records' to say.
    let added = bed.lbd.lbctl(&["backend", "add", "named", "10.9.9.9"]);
    let refused = format!("{added:?}");
    assert!(refused.contains("addresses of DNS name app.sluice.test: change its records"), "{refused}");
    // Backend 1's record gone: within a few seconds every request goes to backend 2.
    std::fs::write(&hosts, format!("{b2} app.sluice.test\n"))?;
    dns.reread();
    wait_for("backend 1 gone with its record", Duration::from_secs(8), || {
        answers = bed.requests("named.test", 6).unwrap_or_default();
        tally(&answers).get("200 backend2") == Some(&6)
    })
    .with_context(|| format!("{:?}", tally(&answers)))?;
    let file = std::fs::read_to_string(bed.dir.0.join("sluice.toml"))?;
    let named = file.split("name = \"named\"").nth(1).unwrap_or_default();
    let backends = named.lines().find(|l| l.starts_with("backends")).unwrap_or_default();
    assert!(
        backends.contains(&b2.to_string()) && !backends.contains(&b1.to_string()),
        "written back: {backends}"
    );
    // DNS away (stopped): the last known backend keeps serving, and the metrics say so.
    drop(dns);
    let mut metrics = String::new();
    wait_for("the metrics to tell DNS is not answering", Duration::from_secs(8), || {
        metrics = bed
            .topology
            .lb
            .run("curl", &["-sS", "http://127.0.0.1:9100/metrics"])
            .map_or(String::new(), |o| String::from_utf8_lossy(&o.stdout).into_owned());
        metrics.contains("sluice_dns_pool_answering{pool=\"named\"} 0")
    })
    .with_context(|| metrics.lines().filter(|l| l.contains("dns_pool")).collect::<Vec<_>>().join("\n"))?;
    assert!(metrics.contains("sluice_dns_pool_addresses{pool=\"named\"} 0"), "no answer, no address");
    let answers = bed.requests("named.test", 4)?;
    assert_eq!(tally(&answers).get("200 backend2"), Some(&4), "{:?}", tally(&answers));
    Ok(())
}
