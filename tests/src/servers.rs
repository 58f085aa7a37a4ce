//! Real processes for tests and the demo: nginx backends, HAProxy in front, and lbd, each
//! stopped on drop.
use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::netns::Host;

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

/// Removes every `TempDir` this process made (for an interrupt, when no destructor runs).
pub fn remove_temp_dirs() {
    let mine = format!("-{}-", std::process::id());
    for entry in std::fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("sluice-") && name.contains(&mine) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl TempDir {
    pub fn new(name: &str) -> Result<TempDir> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sluice-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // 0700: test keys and configs inside are nobody else's to read.
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700).create(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Stops a child: SIGTERM, then SIGKILL after a second.
fn stop(child: &mut Child) {
    // SAFETY: signalling our own child by PID.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits until something in `host` listens on TCP `port` (`what`, for the error).
pub fn wait_listening(host: &Host, port: u16, what: &str, timeout: Duration) -> Result<()> {
    wait_for(&format!("{what} to listen on :{port}"), timeout, || {
        host.run("ss", &["-Htln", &format!("sport = :{port}")]).map(|o| !o.stdout.is_empty()).unwrap_or(false)
    })
}

/// Waits until `ready` holds, polling, or fails after `timeout` naming `what`.
pub fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

/// An nginx (one worker) in a namespace answering every GET on port 80 with its own name.
pub struct Nginx {
    child: Child,
    _dir: TempDir,
}

/// What an nginx serves on 443 beside port 80: TLS with this certificate and key, HTTP/2 by
/// ALPN, client certificates from `client_ca` asked for but not required.
pub struct NginxTls<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
    pub client_ca: &'a Path,
}

impl Nginx {
    pub fn start(host: &Host, name: &str) -> Result<Nginx> {
        Nginx::start_with(host, name, None)
    }

    /// `start`, and TLS on 443 when `tls` says; `/tls` then answers with the scheme, the
    /// protocol, the TLS version, the SNI and whether a client certificate was verified. Port
    /// 8084 requires a PROXY protocol header and answers with the client it names (`pp=`).
    pub fn start_with(host: &Host, name: &str, tls: Option<NginxTls<'_>>) -> Result<Nginx> {
        let dir = TempDir::new(&format!("nginx-{}", host.ns))?;
        let tls = match tls {
            None => String::new(),
            Some(tls) => format!(
                "listen 443 ssl http2;\n    ssl_certificate {};\n    ssl_certificate_key {};\n    \
                 ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_client_certificate {};\n    ssl_verify_client optional;\n    \
                 location /tls {{ return 200 \"{name} $scheme $server_protocol $ssl_protocol sni=$ssl_server_name \
                 client=$ssl_client_verify\\n\"; }}\n    ",
                tls.cert.display(),
                tls.key.display(),
                tls.client_ca.display()
            ),
        };
        let conf = dir.0.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nmaster_process off;\nworker_processes 1;\npid {dir}/nginx.pid;\n\
                 error_log {dir}/error.log;\nevents {{ worker_connections 4096; }}\n\
                 http {{\n  access_log off;\n  keepalive_requests 100000;\n  client_body_temp_path {dir};\n  \
                 proxy_temp_path {dir};\n  fastcgi_temp_path {dir};\n  uwsgi_temp_path {dir};\n  scgi_temp_path {dir};\n  \
                 server {{\n    listen 80 reuseport;\n    listen [::]:80 reuseport;\n    {tls}\
                 location / {{ return 200 \"{name}\\n\"; }}\n    \
                 location /echo {{ return 200 \"{name} xff=$http_x_forwarded_for proto=$http_x_forwarded_proto \
                 fwd=$http_forwarded rid=$http_x_request_id via=$http_via host=$host method=$request_method xfcc=$http_x_forwarded_client_cert sub=$http_x_subject user=$http_x_user\\n\"; }}\n    \
                 location /slow {{ root {dir}; limit_rate 40k; }}\n    \
                 location /cached {{ add_header Cache-Control \"max-age=3\"; return 200 \"{name} cached\\n\"; }}\n    \
                 location /busy {{ return 503 \"{name} busy\\n\"; }}\n    \
                 location /conn {{ return 200 \"{name} r=$connection_requests\\n\"; }}\n    \
                 location /big {{ root {dir}; add_header Cache-Control \"max-age=60\"; }}\n    \
                 location /short {{ root {dir}; add_header Cache-Control \"max-age=1\"; }}\n    \
                 location = /jwks.json {{ root {dir}; default_type application/json; }}\n  }}\n  \
                 server {{\n    listen 8084 proxy_protocol;\n    \
                 location / {{ return 200 \"{name} pp=$proxy_protocol_addr:$proxy_protocol_port c=$connection\\n\"; }}\n  }}\n}}\n",
                dir = dir.0.display()
            ),
        )?;
        // /slow serves 120 KiB at 40 KiB/s: a three-second response for drain tests.
        std::fs::write(dir.0.join("slow"), vec![b'x'; 120 * 1024])?;
        // /big: 64 KiB at full speed, cacheable (larger than a small cache's objects).
        std::fs::write(dir.0.join("big"), vec![b'y'; 64 * 1024])?;
        // /short: a file (ETag, Last-Modified) fresh for a second: revalidated by caches.
        std::fs::write(dir.0.join("short"), format!("{name} short\n"))?;
        let child = host
            .command("nginx")
            .args(["-c", conf.to_str().context("path")?, "-p", dir.0.to_str().context("path")?])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        let mut nginx = Nginx { child, _dir: dir };
        wait_listening(host, 80, "nginx", Duration::from_secs(5)).inspect_err(|_| stop(&mut nginx.child))?;
        Ok(nginx)
    }
}

impl Nginx {
    /// Its folder: files put there are served at their names (`/jwks.json`).
    pub fn dir(&self) -> &Path {
        &self._dir.0
    }

    /// The nginx process (nsenter execs it, so it is the child itself).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the process (SIGSTOP) until the guard is dropped: a backend that hangs, whose
    /// kernel still takes connections and requests but which never answers.
    pub fn pause(&self) -> Paused<'_> {
        // SAFETY: signalling our own child by PID.
        unsafe { libc::kill(self.pid() as i32, libc::SIGSTOP) };
        Paused(self)
    }
}

/// A paused nginx ([`Nginx::pause`]), continued when dropped.
pub struct Paused<'a>(&'a Nginx);

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by PID.
        unsafe { libc::kill(self.0.pid() as i32, libc::SIGCONT) };
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// An HAProxy (apt's) in a namespace, run from `config` (a whole haproxy.cfg); started once
/// it listens on `port`.
pub struct Haproxy {
    child: Child,
    _dir: TempDir,
}

impl Haproxy {
    pub fn start(host: &Host, config: &str, port: u16) -> Result<Haproxy> {
        let dir = TempDir::new(&format!("haproxy-{}", host.ns))?;
        let path = dir.0.join("haproxy.cfg");
        std::fs::write(&path, config)?;
        let child = host
            .command("haproxy")
            .args(["-db", "-f", path.to_str().context("path")?])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting haproxy")?;
        let mut haproxy = Haproxy { child, _dir: dir };
        wait_listening(host, port, "haproxy", Duration::from_secs(5))
            .inspect_err(|_| stop(&mut haproxy.child))?;
        Ok(haproxy)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Pebble, Let's Encrypt's test ACME CA (Debian's `pebble`), in a host's namespace: its
/// directory at `https://ADDRESS:14000/dir` under a certificate from `ca`, every name it
/// validates resolved to `answer` by its mock DNS (`pebble-challtestsrv`), its TLS-ALPN-01
/// validations made to port 443 and its HTTP-01 ones to port 80, the certificates it issues valid for `validity`, and with
/// `binding` (a key ID and its base64url HMAC key) an external account required of new accounts.
pub struct Pebble {
    pebble: Child,
    dns: Child,
    /// The directory URL.
    pub directory: String,
    /// The management interface (its roots at `/roots/0`).
    pub management: String,
}

impl Pebble {
    pub fn start(
        host: &Host,
        ca: &crate::pki::TestCa,
        answer: std::net::Ipv4Addr,
        validity: Duration,
        binding: Option<(&str, &str)>,
    ) -> Result<Pebble> {
        let address = host.addr4;
        let (cert, key) = ca.leaf("pebble", &["pebble.test", &address.to_string()], false)?;
        let config = ca.dir.join("pebble.json");
        std::fs::write(
            &config,
            format!(
                r#"{{"pebble": {{"listenAddress": "{address}:14000", "managementListenAddress": "{address}:15000",
  "certificate": "{cert}", "privateKey": "{key}", "httpPort": 80, "tlsPort": 443,
  "ocspResponderURL": "",
  "certificateValidityPeriod": {validity}, {binding}}}}}"#,
                cert = cert.display(),
                key = key.display(),
                validity = validity.as_secs(),
                binding = match binding {
                    Some((kid, key)) => format!(
                        r#""externalAccountBindingRequired": true, "externalAccountMACKeys": {{"{kid}": "{key}"}}"#
                    ),
                    None => r#""externalAccountBindingRequired": false"#.to_owned(),
                },
            ),
        )?;
        let dns = host
            .command("pebble-challtestsrv")
            .args(["-defaultIPv4", &answer.to_string(), "-defaultIPv6", "", "-dns01", "127.0.0.1:8053"])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", "", "-management", "127.0.0.1:8055"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting pebble-challtestsrv")?;
        let pebble = host
            .command("pebble")
            .args(["-config", config.to_str().context("path")?, "-dnsserver", "127.0.0.1:8053"])
            // No random sleeps before validations, no nonces refused at random.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting pebble")?;
        let mut started = Pebble {
            pebble,
            dns,
            directory: format!("https://{address}:14000/dir"),
            management: format!("https://{address}:15000"),
        };
        wait_listening(host, 14000, "pebble", Duration::from_secs(10))
            .and_then(|()| wait_listening(host, 8055, "pebble-challtestsrv", Duration::from_secs(5)))
            .inspect_err(|_| {
                stop(&mut started.pebble);
                stop(&mut started.dns);
            })?;
        Ok(started)
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        stop(&mut self.pebble);
        stop(&mut self.dns);
    }
}

/// The Python with grpcio that `scripts/setup` installs.
pub const GRPC_PYTHON: &str = "/usr/local/lib/sluice/grpc/bin/python";

/// The path of a script in `tests/grpc`.
pub fn grpc_script(name: &str) -> String {
    format!("{}/grpc/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// The Python with aioquic that `scripts/setup` installs: a real HTTP/3 client, apart from
/// lbd's own QUIC and HTTP/3 crates.
pub const H3_PYTHON: &str = "/usr/local/lib/sluice/h3/bin/python";

/// `requests` (`tests/h3/ask.py`'s JSON objects) over one HTTP/3 connection from `host` to
/// `address:port`, naming `server_name` and trusting `ca`: each answer's JSON object, in order.
pub fn h3_ask(
    host: &Host,
    address: &str,
    port: u16,
    server_name: &str,
    ca: &Path,
    requests: &[serde_json::Value],
) -> Result<Vec<serde_json::Value>> {
    anyhow::ensure!(Path::new(H3_PYTHON).exists(), "{H3_PYTHON} missing: run scripts/setup");
    let script = format!("{}/h3/ask.py", env!("CARGO_MANIFEST_DIR"));
    let (port, ca) = (port.to_string(), ca.to_str().context("CA path")?.to_owned());
    let requests: Vec<String> = requests.iter().map(serde_json::Value::to_string).collect();
    let mut args = vec![script.as_str(), address, &port, server_name, &ca];
    args.extend(requests.iter().map(String::as_str));
    let out = host.run("timeout", &[&["30", H3_PYTHON][..], &args].concat())?;
    let answers: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("ask.py's answers")?;
    anyhow::ensure!(
        answers.len() == requests.len(),
        "{} answers to {} requests: {answers:?}; {}",
        answers.len(),
        requests.len(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(answers)
}

/// A real gRPC server (grpcio, `tests/grpc/health_server.py`) in a namespace, with grpcio's
/// health servicer: SERVING until [`GrpcServer::serving`] says otherwise.
pub struct GrpcServer {
    child: Child,
}

impl GrpcServer {
    /// With `max_connection_age_ms`, the server closes each connection gracefully that long
    /// after it opened (gRPC's MAX_CONNECTION_AGE: a GOAWAY, the calls in flight finished).
    pub fn start(host: &Host, port: u16, max_connection_age_ms: Option<u32>) -> Result<GrpcServer> {
        anyhow::ensure!(Path::new(GRPC_PYTHON).exists(), "{GRPC_PYTHON} missing: run scripts/setup");
        let mut args = vec![grpc_script("health_server.py"), port.to_string()];
        args.extend(max_connection_age_ms.map(|ms| ms.to_string()));
        let child = host
            .command(GRPC_PYTHON)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the gRPC server")?;
        let mut server = GrpcServer { child };
        wait_listening(host, port, "the gRPC server", Duration::from_secs(10))
            .inspect_err(|_| stop(&mut server.child))?;
        Ok(server)
    }

    /// Sets every service of its health servicer SERVING or NOT_SERVING (`nsenter` execs the
    /// server, so the child is the server itself).
    pub fn serving(&self, serving: bool) {
        let signal = if serving { libc::SIGUSR2 } else { libc::SIGUSR1 };
        // SAFETY: signalling our own child by PID.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// A running `lbd run` inside the lb namespace. On drop: SIGTERM, then `lbd stop --detach`.
pub struct Lbd {
    child: Child,
    host: Host,
    pub config: PathBuf,
    pub pin_dir: PathBuf,
    pub socket: PathBuf,
    /// Whether drop detaches the program and removes the pins (false after [`Lbd::sigkill`]).
    detach_on_drop: bool,
    /// The lbd that took over after [`Lbd::upgrade`] (not our child: signalled by pid).
    successor: Option<u32>,
}

impl Lbd {
    /// Starts lbd with `config` and waits until it has attached and its admin socket answers.
    pub fn start(host: &Host, config: &Path) -> Result<Lbd> {
        Lbd::start_logging(host, config, None)
    }

    /// [`Lbd::start`] with lbd's log (stderr) written to `log` when given.
    pub fn start_logging(host: &Host, config: &Path, log: Option<&Path>) -> Result<Lbd> {
        let parsed = lb_userspace::config::Config::load(config).map_err(|e| anyhow::anyhow!("{e}"))?;
        let (pin_dir, socket) = (parsed.pin_dir, parsed.admin_socket);
        let _ = std::fs::remove_file(&socket);
        let child = host
            .command(crate::bin_dir().join("lbd").to_str().context("path")?)
            .args(["run", "-c", config.to_str().context("path")?])
            .stderr(match log {
                Some(path) => Stdio::from(std::fs::File::create(path).context("creating the lbd log")?),
                None => Stdio::inherit(),
            })
            .spawn()
            .context("starting lbd")?;
        let mut lbd = Lbd {
            child,
            host: host.clone(),
            config: config.to_owned(),
            pin_dir,
            socket,
            detach_on_drop: true,
            successor: None,
        };
        let (link, socket) = (lbd.pin_dir.join("link"), lbd.socket.clone());
        let child = &mut lbd.child;
        wait_for("lbd to attach and open its admin socket", Duration::from_secs(10), || {
            (link.exists() && socket.exists()) || matches!(child.try_wait(), Ok(Some(_)))
        })?;
        if let Ok(Some(status)) = lbd.child.try_wait() {
            bail!("lbd exited early: {status}");
        }
        Ok(lbd)
    }

    /// The lbd process (nsenter execs it; after an upgrade, the one that took over).
    pub fn pid(&self) -> u32 {
        self.successor.unwrap_or_else(|| self.child.id())
    }

    /// `lbctl upgrade`: a new lbd takes over (the old one drains and exits meanwhile; see
    /// [`Lbd::wait_predecessor`]).
    pub fn upgrade(&mut self) -> Result<String> {
        let said = self.lbctl(&["upgrade"])?;
        self.upgraded(&said)?;
        Ok(said)
    }

    /// Waits until the lbd replaced by [`Lbd::upgrade`] has drained and exited.
    pub fn wait_predecessor(&mut self, timeout: Duration) -> Result<()> {
        let child = &mut self.child;
        wait_for("the old lbd to drain and exit", timeout, || matches!(child.try_wait(), Ok(Some(_))))
    }

    /// Kills lbd with SIGKILL, leaving its pinned program and maps in the kernel.
    pub fn sigkill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.detach_on_drop = false;
    }

    /// Stops lbd with SIGTERM, as systemd does (and the lbd that took over from it, if any):
    /// the program stays attached with its pins.
    pub fn stop_keeping_pins(mut self) {
        stop(&mut self.child);
        if let Some(pid) = self.successor.take() {
            // SAFETY: the lbd this test started through an upgrade, by PID.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            let gone = || !Path::new(&format!("/proc/{pid}")).exists();
            if wait_for("the upgraded lbd to exit", Duration::from_secs(10), gone).is_err() {
                // SAFETY: as above.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        self.detach_on_drop = false;
    }

    /// Notes an upgrade made by other means than [`Lbd::upgrade`] (lbctl run by a script):
    /// `said` is lbctl's answer, naming the lbd that took over.
    pub fn upgraded(&mut self, said: &str) -> Result<()> {
        let pid = said
            .split_whitespace()
            .skip_while(|w| *w != "lbd")
            .nth(1)
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("no pid in {said:?}"))?;
        self.successor = Some(pid);
        Ok(())
    }

    /// Sends a signal to lbd.
    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child (or the lbd that took over from it) by PID.
        unsafe { libc::kill(self.pid() as i32, signal) };
    }

    /// `lbctl pool show POOL` as backend address -> (health, effective weight).
    pub fn pool_show(&self, pool: &str) -> Result<std::collections::BTreeMap<String, (String, u64)>> {
        Ok(self
            .lbctl(&["pool", "show", pool])?
            .lines()
            .skip(2)
            .filter_map(|l| {
                let c: Vec<&str> = l.split_whitespace().collect();
                Some((c.first()?.to_string(), (c.get(3)?.to_string(), c.get(4)?.parse().ok()?)))
            })
            .collect())
    }

    /// Runs lbctl against this lbd and returns its stdout (an error carries its stderr).
    pub fn lbctl(&self, args: &[&str]) -> Result<String> {
        let lbctl = crate::bin_dir().join("lbctl");
        let mut all = vec!["--socket", self.socket.to_str().context("path")?];
        all.extend_from_slice(args);
        let out = self.host.run(lbctl.to_str().context("path")?, &all)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Lbd {
    fn drop(&mut self) {
        stop(&mut self.child);
        if let Some(pid) = self.successor {
            self.signal(libc::SIGTERM);
            let gone = || !Path::new(&format!("/proc/{pid}")).exists();
            if wait_for("the upgraded lbd to exit", Duration::from_secs(10), gone).is_err() {
                // SAFETY: the lbd this test started through an upgrade, by PID.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        if !self.detach_on_drop {
            return;
        }
        let lbd = crate::bin_dir().join("lbd");
        let _ = self.host.run(
            lbd.to_str().unwrap_or("lbd"),
            &["stop", "--detach", "-c", self.config.to_str().unwrap_or_default()],
        );
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Sluice's decapsulation program on a backend's eth0 (`lbd decap`), detached on drop.
pub struct Decap {
    host: Host,
    pub pin_dir: PathBuf,
}

impl Decap {
    pub fn attach(host: &Host, mode: &str) -> Result<Decap> {
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{}-decap", host.ns));
        let lbd = crate::bin_dir().join("lbd");
        let pin = pin_dir.to_str().context("path")?;
        host.run(
            lbd.to_str().context("path")?,
            &["decap", "--iface", "eth0", "--mode", mode, "--pin-dir", pin],
        )?;
        Ok(Decap { host: host.clone(), pin_dir })
    }

    /// Packets the program decapsulated.
    pub fn decapsulated(&self) -> Result<u64> {
        let stats = lb_userspace::dataplane::counters::decap(&self.pin_dir)?;
        Ok(stats[lb_common::stats::DecapStat::Decapsulated as usize].1.packets)
    }
}

impl Drop for Decap {
    fn drop(&mut self) {
        let lbd = crate::bin_dir().join("lbd");
        let pin = self.pin_dir.to_str().unwrap_or_default().to_owned();
        let _ = self
            .host
            .run(lbd.to_str().unwrap_or("lbd"), &["decap", "--iface", "eth0", "--detach", "--pin-dir", &pin]);
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// The pass-everything XDP program on a veth end, so that its peer's native XDP_TX frames are
/// delivered (veth drops them otherwise). Detached on drop.
pub struct PeerPass {
    pin_dir: PathBuf,
}

impl PeerPass {
    pub fn attach(host: &Host, iface: &str) -> Result<PeerPass> {
        use lb_userspace::{
            config::XdpModeSetting,
            dataplane::{self, PASS_PROGRAM, Role},
        };
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{}-{iface}-pass", host.ns));
        let dir = pin_dir.clone();
        let iface = iface.to_owned();
        host.within(move || {
            let mut ebpf = dataplane::load(&dir, Role::Pass)?;
            dataplane::attach(&mut ebpf, PASS_PROGRAM, &iface, XdpModeSetting::Native, &dir)?;
            Ok(())
        })?;
        Ok(PeerPass { pin_dir })
    }
}

impl Drop for PeerPass {
    fn drop(&mut self) {
        let _ = lb_userspace::dataplane::detach(&self.pin_dir);
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// Reads a request head (with no body) a byte at a time, so nothing after it is taken; false if
/// the stream ended first.
async fn head_read(stream: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return false,
        }
    }
    true
}

/// A tokio server on its own thread inside a namespace, one task per connection; stopped on drop.
pub struct NsServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl NsServer {
    pub fn start<F, Fut>(host: &Host, port: u16, serve: F) -> Result<NsServer>
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        host.spawn_within(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::bind(("0.0.0.0", port)).await {
                    Ok(l) => l,
                    Err(err) => {
                        let _ = ready_tx.send(Err(err.into()));
                        return Ok(());
                    }
                };
                let _ = ready_tx.send(Ok(()));
                loop {
                    let (stream, _) = tokio::select! {
                        accepted = listener.accept() => accepted?,
                        _ = &mut stopped => return Ok(()),
                    };
                    tokio::spawn(serve(stream));
                }
            })
        });
        ready_rx.recv_timeout(Duration::from_secs(5)).context("server did not start")??;
        Ok(NsServer { stop: Some(stop) })
    }

    /// Cleartext HTTP/2 (prior knowledge), as gRPC backends are: answers every request with
    /// `h2c <name> <version> conn <n>` (n: which of its connections, from 1) and the trailer
    /// `grpc-status: 0`.
    pub fn h2c(host: &Host, port: u16, name: &str) -> Result<NsServer> {
        use bytes::Bytes;
        use http_body_util::StreamBody;
        use hyper::body::Frame;
        let name = name.to_owned();
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        NsServer::start(host, port, move |stream| {
            let name = name.clone();
            let connection = connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            async move {
                let service =
                    hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                        let body = format!("h2c {name} {:?} conn {connection}\n", request.version());
                        let mut trailers = hyper::HeaderMap::new();
                        trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
                        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
                            vec![Ok(Frame::data(Bytes::from(body))), Ok(Frame::trailers(trailers))];
                        async move {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(StreamBody::new(
                                futures_util::stream::iter(frames),
                            )))
                        }
                    });
                let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            }
        })
    }

    /// Accepts an HTTP/1.1 Upgrade (`101 Switching Protocols`), then echoes every byte back:
    /// a stand-in for a WebSocket server.
    pub fn upgrade_echo(host: &Host, port: u16) -> Result<NsServer> {
        use tokio::io::AsyncWriteExt;
        NsServer::start(host, port, |mut stream| async move {
            if !head_read(&mut stream).await {
                return;
            }
            let reply =
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
            if stream.write_all(reply).await.is_err() {
                return;
            }
            let (mut read, mut write) = stream.split();
            let _ = tokio::io::copy(&mut read, &mut write).await;
        })
    }

    /// HTTP/1.1 that answers every request with `103 Early Hints` (a Link to preload and a
    /// hop-by-hop field), then after 200 ms `200 OK` with the body `hinted`; kept alive.
    pub fn early_hints(host: &Host, port: u16) -> Result<NsServer> {
        use tokio::io::AsyncWriteExt;
        NsServer::start(host, port, |mut stream| async move {
            while head_read(&mut stream).await {
                let hints = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\
                              Connection: x-hop\r\nX-Hop: 1\r\n\r\n";
                if stream.write_all(hints).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                if stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nhinted\n").await.is_err() {
                    return;
                }
            }
        })
    }

    /// HTTP/1.1 that answers every request after `delay` (a slow backend).
    pub fn slow(host: &Host, port: u16, delay: Duration) -> Result<NsServer> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        NsServer::start(host, port, move |mut stream| async move {
            let mut buf = vec![0u8; 8192];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                tokio::time::sleep(delay).await;
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nslow\n").await;
            }
        })
    }
}

impl Drop for NsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
