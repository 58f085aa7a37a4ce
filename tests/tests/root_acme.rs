//! Root test of a listener's certificate from an ACME CA: Pebble (Let's Encrypt's test CA) in
//! the client's namespace validates each name by TLS-ALPN-01 through the router to the VIP's
//! port 443, as a public CA would; curl then checks the served chain against Pebble's root. A
//! restarted lbd serves the certificate it kept, with no new order, and orders the next one
//! itself two-thirds through the first's life (Pebble issues them for 45 s here), serving it
//! without a restart. A CA that refuses the account has its refusal logged, and its wait kept
//! across a restart.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Result, ensure};
use sluice_tests::{
    l7_config,
    netns::Topology,
    pki::TestCa,
    servers::{Lbd, Nginx, Pebble, TempDir, wait_for},
};

const VIP: &str = "198.19.0.5";
const NAMES: [&str; 2] = ["shop.example.test", "www.example.test"];
/// An external account's HMAC key, base64url as a CA gives it.
const BINDING_KEY: &str = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";

/// A bed: one backend, the VIP on the lb's loopback, and Pebble in the client's namespace
/// (certificates valid for `validity`, `binding` required of new accounts).
struct Bed {
    topology: Topology,
    dir: TempDir,
    ca: TestCa,
    pebble: Pebble,
    _nginx: Nginx,
}

impl Bed {
    fn new(name: &str, validity: Duration, binding: Option<(&str, &str)>) -> Result<Bed> {
        let topology = Topology::new(1)?;
        let dir = TempDir::new(name)?;
        let ca = TestCa::new(&dir.0)?;
        let nginx = Nginx::start(&topology.backends[0], "backend1")?;
        topology.lb.run("ip", &["addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
        let pebble = Pebble::start(&topology.client, &ca, VIP.parse()?, validity, binding)?;
        Ok(Bed { topology, dir, ca, pebble, _nginx: nginx })
    }

    /// lbd's config: the listeners `shop` (443) and `shop-alt` (8443) with `acme` for [`NAMES`]
    /// (listed in another order by the second), `extra` in its `acme`.
    fn config(&self, extra: &str) -> Result<PathBuf> {
        let acme = |names: [&str; 2]| {
            format!(
                r#"{{ acme = {{ directory = "{}", contact = ["mailto:ops@example.test"], names = ["{}", "{}"], state = "{}", directory_ca = "{}", accept_terms = true{extra} }} }}"#,
                self.pebble.directory,
                names[0],
                names[1],
                self.state().display(),
                self.ca.cert.display(),
            )
        };
        self.config_of(&format!(
            r#"[[listener]]
name = "shop"
address = "{VIP}:443"
tls = {}

# The same certificate on another port (as a site's IPv6 listener would have it): one order.
[[listener]]
name = "shop-alt"
address = "{VIP}:8443"
tls = {}
"#,
            acme(NAMES),
            acme([NAMES[1], NAMES[0]]),
        ))
    }

    /// lbd's config: the bed's VIP and pool, `listeners`, a route from each to the pool, the
    /// admin socket and metrics.
    fn config_of(&self, listeners: &str) -> Result<PathBuf> {
        let (topology, dir) = (&self.topology, &self.dir);
        let routes: String = listeners
            .lines()
            .filter_map(|l| l.strip_prefix("name = "))
            .map(|name| format!("[[route]]\nlistener = {name}\npool = \"web\"\n\n"))
            .collect();
        let config = dir.0.join("sluice.toml");
        std::fs::write(
            &config,
            format!(
                "{bed}{listeners}\n{routes}[admin]\nsocket = \"{dir}/lbd.sock\"\nmetrics = \"127.0.0.1:9100\"\n",
                bed = l7_config::l7_bed(&topology.tag, VIP, &[topology.backends[0].addr4]),
                dir = dir.0.display(),
            ),
        )?;
        Ok(config)
    }

    /// Where lbd keeps its ACME state.
    fn state(&self) -> PathBuf {
        self.dir.0.join("acme")
    }
}

#[test]
fn root_acme_certificate_ordered_by_tls_alpn_served_kept_across_a_restart_and_renewed() -> Result<()> {
    // The CA binds new accounts to an external one (ZeroSSL's and company CAs' way).
    let key = BINDING_KEY;
    let bed = Bed::new("acme", Duration::from_secs(45), Some(("kid-1", key)))?;
    let (topology, dir, ca, pebble, state) = (&bed.topology, &bed.dir, &bed.ca, &bed.pebble, bed.state());
    let config = bed.config(&format!(", external_account = {{ kid = \"kid-1\", hmac_key = \"{key}\" }}"))?;
    // Pebble's root (made when it starts), fetched over its own HTTPS.
    let root = dir.0.join("pebble-root.pem");
    let fetched = topology.client.run(
        "curl",
        &[
            "-sf",
            "--max-time",
            "5",
            "--cacert",
            ca.cert.to_str().unwrap_or_default(),
            &format!("{}/roots/0", pebble.management),
        ],
    )?;
    std::fs::write(&root, &fetched.stdout)?;
    // curl to a name at the VIP's port, the chain checked against Pebble's root: the status.
    let get_at = |name: &str, port: u16| -> Result<String> {
        let resolve = format!("{name}:{port}:{VIP}");
        let out = topology
            .client
            .command("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(["--max-time", "3", "--cacert", root.to_str().unwrap_or_default(), "--resolve", &resolve])
            .arg(format!("https://{name}:{port}/"))
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let get = |name: &str| get_at(name, 443);
    let log = dir.0.join("lbd.log");
    {
        let _lbd = Lbd::start_logging(&topology.lb, &config, Some(&log))?;
        let cert = state.join(NAMES[0]).join("cert.pem");
        wait_for("the ordered certificate", Duration::from_secs(60), || cert.exists())?;
        wait_for("the certificate served", Duration::from_secs(5), || {
            get(NAMES[0]).is_ok_and(|s| s == "200")
        })?;
        ensure!(get(NAMES[1])? == "200", "the second name");
        // The other listener serves the same certificate, from the one order.
        wait_for("the certificate served on 8443", Duration::from_secs(5), || {
            get_at(NAMES[1], 8443).is_ok_and(|s| s == "200")
        })?;
        let logged = std::fs::read_to_string(&log)?;
        ensure!(logged.contains("certificate ordered into"), "{logged}");
        ensure!(logged.matches("ordering a certificate").count() == 1, "more than one order: {logged}");
        let key = state.join(NAMES[0]).join("key.pem");
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key)?.permissions());
        ensure!(mode & 0o077 == 0, "the key is readable by others: {mode:o}");
        ensure!(has_account(&state)?, "no account kept");
        // Its expiry in the metrics, for an alert before it lapses.
        let at = expiry(topology)?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        ensure!((now + 20..now + 60).contains(&at), "the expiry is not in 45 s: {at} at {now}");
    }
    // Restarted: the kept certificate serves at once, and nothing is ordered.
    let log2 = dir.0.join("lbd2.log");
    let lbd = Lbd::start_logging(&topology.lb, &config, Some(&log2))?;
    wait_for("the kept certificate served", Duration::from_secs(5), || {
        get(NAMES[1]).is_ok_and(|s| s == "200")
    })?;
    std::thread::sleep(Duration::from_secs(1));
    let logged = std::fs::read_to_string(&log2)?;
    ensure!(!logged.contains("ordering a certificate"), "ordered again: {logged}");
    // lbctl lists it: its least name, its two names, when it expires, where it came from.
    let listed = lbd.lbctl(&["listener", "list"])?;
    let row = listed.lines().find(|l| l.starts_with("shop ") && l.contains(NAMES[0])).unwrap_or_default();
    ensure!(listed.contains("https 0 certs+acme"), "{listed}");
    let alt = listed.lines().find(|l| l.starts_with("shop-alt ") && l.contains(NAMES[0])).unwrap_or_default();
    ensure!(alt.trim_end().ends_with("acme"), "{listed}");
    ensure!(row.contains(" 2 ") && row.contains("(0d)") && row.trim_end().ends_with("acme"), "{listed}");
    // Two-thirds through its life (30 s), the next is ordered and served, with no restart.
    let first = expiry(topology)?;
    wait_for("the renewed certificate served", Duration::from_secs(60), || {
        expiry(topology).is_ok_and(|at| at > first)
    })?;
    ensure!(get(NAMES[0])? == "200" && get(NAMES[1])? == "200", "the renewed certificate");
    let logged = std::fs::read_to_string(&log2)?;
    ensure!(logged.contains("certificate ordered into"), "{logged}");
    Ok(())
}

/// HTTP-01 (HAProxy's and nginx's `acme`): Pebble asks for its token on the VIP's port 80,
/// where a plain listener that sends everything else to https answers it before redirecting.
#[test]
fn root_acme_certificate_ordered_by_http_01_on_a_plain_listener() -> Result<()> {
    let bed = Bed::new("acme-http", Duration::from_secs(3600), None)?;
    let (topology, dir, ca, pebble, state) = (&bed.topology, &bed.dir, &bed.ca, &bed.pebble, bed.state());
    let config = bed.config_of(&format!(
        r#"[[listener]]
name = "plain"
address = "{VIP}:80"
redirect_https = true

[[listener]]
name = "shop"
address = "{VIP}:443"
tls = {{ acme = {{ directory = "{directory}", names = ["{n1}"], state = "{state}", directory_ca = "{ca}", accept_terms = true, challenge = "http-01" }} }}
"#,
        directory = pebble.directory,
        n1 = NAMES[0],
        state = state.display(),
        ca = ca.cert.display(),
    ))?;
    let log = dir.0.join("lbd.log");
    let _lbd = Lbd::start_logging(&topology.lb, &config, Some(&log))?;
    let cert = state.join(NAMES[0]).join("cert.pem");
    wait_for("the ordered certificate", Duration::from_secs(60), || cert.exists())?;
    let root = dir.0.join("pebble-root.pem");
    let cacert = ca.cert.to_str().unwrap_or_default();
    let fetched = topology.client.run(
        "curl",
        &["-sf", "--max-time", "5", "--cacert", cacert, &format!("{}/roots/0", pebble.management)],
    )?;
    std::fs::write(&root, &fetched.stdout)?;
    let status = |url: &str| -> Result<String> {
        let resolve = format!("{}:443:{VIP}", NAMES[0]);
        let out = topology
            .client
            .command("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3"])
            .args(["--cacert", root.to_str().unwrap_or_default(), "--resolve", &resolve, url])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    wait_for("the certificate served", Duration::from_secs(5), || {
        status(&format!("https://{}/", NAMES[0])).is_ok_and(|s| s == "200")
    })?;
    // The validation was answered by lbd itself, logged as such; once the order is done, the
    // token's path is redirected as any other.
    let logged = std::fs::read_to_string(&log)?;
    ensure!(
        logged.contains("path=/.well-known/acme-challenge/") && logged.contains("reason=\"acme challenge\""),
        "{logged}"
    );
    ensure!(status(&format!("http://{VIP}/.well-known/acme-challenge/x"))? == "301", "not redirected");
    Ok(())
}

/// When the listener's certificate expires, as lbd's metrics say (0: no such series).
fn expiry(topology: &Topology) -> Result<u64> {
    let metrics = topology.lb.run("curl", &["-s", "--max-time", "3", "http://127.0.0.1:9100/metrics"])?;
    let metrics = String::from_utf8_lossy(&metrics.stdout).into_owned();
    let series = format!(
        "sluice_tls_certificate_expiry_timestamp_seconds{{listener=\"shop\",certificate=\"{}\"}} ",
        NAMES[0]
    );
    let line = metrics.lines().find(|l| l.starts_with(&series)).unwrap_or_default();
    Ok(line.trim_start_matches(&series).trim().parse().unwrap_or(0))
}

/// A CA that refuses the account (it requires an external account; none is given): the
/// failure is logged with the CA's reason and its wait kept, and a restarted lbd waits it out
/// in place of ordering at once.
#[test]
fn root_acme_an_order_the_ca_refuses_is_logged_and_its_wait_outlives_a_restart() -> Result<()> {
    let bed = Bed::new("acme-refused", Duration::from_secs(3600), Some(("kid-1", BINDING_KEY)))?;
    let config = bed.config("")?;
    let (log, held) = (bed.dir.0.join("lbd.log"), bed.state().join(NAMES[0]).join("retry-after"));
    {
        let _lbd = Lbd::start_logging(&bed.topology.lb, &config, Some(&log))?;
        wait_for("the failed order's wait kept", Duration::from_secs(30), || held.exists())?;
        let logged = std::fs::read_to_string(&log)?;
        ensure!(
            logged.contains("ACME order failed, again in 60s")
                && logged.to_ascii_lowercase().contains("external"),
            "{logged}"
        );
    }
    ensure!(!bed.state().join(NAMES[0]).join("cert.pem").exists(), "a certificate from a refused order");
    let log = bed.dir.0.join("lbd2.log");
    let _lbd = Lbd::start_logging(&bed.topology.lb, &config, Some(&log))?;
    std::thread::sleep(Duration::from_secs(1));
    let logged = std::fs::read_to_string(&log)?;
    ensure!(
        logged.contains("the last ACME order failed: the next in")
            && !logged.contains("ordering a certificate"),
        "{logged}"
    );
    Ok(())
}

fn has_account(state: &Path) -> Result<bool> {
    Ok(std::fs::read_to_string(state.join(NAMES[0]).join("account.json"))?.contains("\"directory\""))
}
