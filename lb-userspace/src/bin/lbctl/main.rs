//! lbctl: operate a running lbd through its admin socket: pools, backends, deny lists, counters.
use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

mod top;

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use lb_userspace::{admin::views, config::DEFAULT_ADMIN_SOCKET, dataplane::counters, state::Command};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(name = "lbctl", version, about = "Control and inspect a running Sluice (lbd)")]
struct Cli {
    /// lbd's admin socket.
    #[arg(long, global = true, default_value = DEFAULT_ADMIN_SOCKET)]
    socket: PathBuf,
    /// How long to wait for lbd's answer, in seconds.
    #[arg(long, global = true, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout: u64,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    noun: Noun,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Noun {
    /// Uptime, interface, pin directory, pools failing open, the last reload.
    Status,
    /// Re-read the config file (as SIGHUP does) and say what changed, or why nothing did.
    Reload,
    /// Start the binary at lbd's path on the same sockets (a binary upgrade, like SIGUSR2):
    /// the new lbd takes over, this one drains and exits. A new binary that fails to start
    /// leaves this one serving.
    Upgrade,
    /// A full-screen live view: VIPs and backends sorted by traffic, with their rates, health,
    /// errors and p99, refreshed every second (`q` quits).
    Top {
        /// Seconds between readings (1 to 3600).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=3600))]
        interval: u64,
    },
    /// Write lbctl's man pages or a shell completion script into DIR (for packaging).
    #[command(hide = true)]
    Generate {
        #[arg(value_enum)]
        what: lb_userspace::generate::Generated,
        dir: PathBuf,
    },
    /// This host's BGP announcements (`[bgp]`).
    Node {
        #[command(subcommand)]
        verb: NodeVerb,
    },
    /// VIPs.
    Vip {
        #[command(subcommand)]
        verb: VipVerb,
    },
    /// Pools and their backends' weight, drain and health.
    Pool {
        #[command(subcommand)]
        verb: PoolVerb,
    },
    /// Change a pool's backends (written to the config file, applied at once).
    Backend {
        #[command(subcommand)]
        verb: BackendVerb,
    },
    /// L7 routes: list them, or change a split (written to the config file, applied at once).
    Route {
        #[command(subcommand)]
        verb: RouteVerb,
    },
    /// Source prefixes dropped in XDP.
    Deny {
        #[command(subcommand)]
        verb: DenyVerb,
    },
    /// Fast-path counters: per verdict and reason, per VIP and per backend (ipvsadm --stats style).
    Stats {
        /// Only VIPs.
        #[arg(long)]
        vip: bool,
        /// Only backends.
        #[arg(long)]
        backend: bool,
        /// Print rates (pps, bps) every N seconds until interrupted.
        #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
        watch: Option<u64>,
    },
    /// Which backend a flow goes to and why (connection table, current or previous Maglev
    /// generation), answered by running the loaded XDP program on a synthesized packet.
    Flow {
        /// The VIP as ADDR:PORT ([v6]:port for IPv6).
        vip: SocketAddr,
        /// tcp or udp.
        protocol: String,
        /// The client as ADDR:PORT.
        source: SocketAddr,
    },
    /// What a change would move before making it: share of Maglev buckets, live flows.
    Plan {
        /// A whole new config (what a reload to it would do).
        #[arg(short, long)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        change: Option<PlanVerb>,
    },
    /// L7 response caches.
    Cache {
        #[command(subcommand)]
        verb: CacheVerb,
    },
    /// Counters of a backend's decapsulation program (`lbd decap`), read from its pins.
    DecapStats {
        /// Its pin directory.
        #[arg(long)]
        pin_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum NodeVerb {
    /// Withdraw every VIP from BGP (the router sends the traffic to the other hosts); kept in
    /// the config file across restarts.
    Drain,
    /// Announce the VIPs again.
    Undrain,
}

#[derive(Subcommand)]
enum VipVerb {
    /// List VIPs.
    List,
}

#[derive(Subcommand)]
enum PoolVerb {
    /// List pools.
    List,
    /// One pool's backends.
    Show {
        /// The pool's name.
        name: String,
    },
}

#[derive(Subcommand, Clone)]
enum BackendVerb {
    /// Add a backend.
    Add {
        /// The pool's name.
        pool: String,
        /// The backend's IP address.
        address: IpAddr,
        /// Its weight (0 to 65535).
        #[arg(long, default_value_t = lb_userspace::config::DEFAULT_WEIGHT)]
        weight: u32,
    },
    /// Remove a backend: its flows move to the others.
    Remove {
        /// The pool's name.
        pool: String,
        /// The backend's IP address.
        address: IpAddr,
    },
    /// Drain a backend: no new flows, established flows stay (`--undo` makes it ready again).
    Drain {
        /// The pool's name.
        pool: String,
        /// The backend's IP address.
        address: IpAddr,
        /// Make it ready again.
        #[arg(long)]
        undo: bool,
    },
    /// Set a backend's weight.
    Weight {
        /// The pool's name.
        pool: String,
        /// The backend's IP address.
        address: IpAddr,
        /// The new weight (0 to 65535; 0 drains it).
        weight: u32,
    },
}

#[derive(Subcommand)]
enum RouteVerb {
    /// L7 routes in the order they are tried per listener, with their pool and split.
    List,
    /// Send PERCENT of a route's requests to POOL instead of its own pool: a canary step
    /// (100: blue-green; 0 ends the split to POOL).
    Split {
        /// The route's name.
        route: String,
        /// The other pool.
        pool: String,
        /// Its share of the route's requests, 0 to 100.
        percent: f64,
    },
}

#[derive(Subcommand)]
enum CacheVerb {
    /// Empty a route's cache, or only one path of it.
    Purge {
        /// The route's name.
        route: String,
        /// Only this path (and query), e.g. `/img/logo.png`.
        path: Option<String>,
    },
}

#[derive(Subcommand, Clone)]
enum PlanVerb {
    /// A backend change: add, remove, drain or weight.
    Backend {
        #[command(subcommand)]
        verb: BackendVerb,
    },
}

impl BackendVerb {
    fn command(self) -> Command {
        match self {
            BackendVerb::Add { pool, address, weight } => Command::AddBackend { pool, address, weight },
            BackendVerb::Remove { pool, address } => Command::RemoveBackend { pool, address },
            BackendVerb::Drain { pool, address, undo } => Command::SetDrain { pool, address, drain: !undo },
            BackendVerb::Weight { pool, address, weight } => Command::SetWeight { pool, address, weight },
        }
    }
}

#[derive(Subcommand)]
enum DenyVerb {
    /// Drop a source prefix in XDP.
    Add {
        /// A prefix like 203.0.113.0/24 or an address.
        prefix: IpNet,
    },
    /// Stop dropping a source prefix.
    Remove {
        /// The prefix, as added.
        prefix: IpNet,
    },
    /// The prefixes dropped.
    List,
}

/// How long every admin call may take (set once from `--timeout`).
static TIMEOUT: std::sync::OnceLock<std::time::Duration> = std::sync::OnceLock::new();

/// One request to the admin socket within `--timeout`; non-2xx answers become errors carrying
/// lbd's reason.
async fn call(socket: &PathBuf, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
    let limit = *TIMEOUT.get_or_init(|| std::time::Duration::from_secs(10));
    tokio::time::timeout(limit, call_once(socket, method, path, body))
        .await
        .map_err(|_| anyhow::anyhow!("lbd did not answer within {limit:?} (--timeout)"))?
}

async fn call_once(socket: &PathBuf, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| format!("connecting to {} (is lbd running? --socket)", socket.display()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "lbd")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    let value: Value =
        serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
    if !status.is_success() {
        bail!("{}", value.get("error").and_then(Value::as_str).unwrap_or(&value.to_string()));
    }
    Ok(value)
}

async fn command(cli: &Cli, command: Command) -> Result<Value> {
    call(&cli.socket, Method::POST, "/commands", Some(serde_json::to_value(command)?)).await
}

fn print_changes(value: &Value) {
    let changes = value["changes"].as_array().cloned().unwrap_or_default();
    if changes.is_empty() {
        println!("no change");
    }
    for change in changes {
        println!("{}", change.as_str().unwrap_or_default());
    }
}

fn print_pool(pool: &views::Pool) {
    let open = if pool.failing_open { "  (FAILING OPEN: every backend down)" } else { "" };
    println!("pool {}{open}", pool.name);
    println!("  {:<40} {:>7} {:>6} {:>8} {:>10}", "backend", "weight", "drain", "health", "effective");
    for b in &pool.backends {
        let health = match (b.healthy, b.ejected) {
            (_, true) => "EJECTED",
            (true, _) => "up",
            _ => "DOWN",
        };
        println!(
            "  {:<40} {:>7} {:>6} {:>8} {:>10}",
            b.address.to_string(),
            b.weight,
            if b.drain { "yes" } else { "no" },
            health,
            b.effective_weight
        );
    }
}

fn traffic_row(name: &str, t: &views::Traffic, rate: Option<(&views::Traffic, f64)>) {
    match rate {
        None => println!(
            "{name:<30} {:>12} {:>14} {:>10} {:>10} {:>10}",
            t.packets, t.bytes, t.new_flows, t.lru_hits, t.lru_misses
        ),
        Some((before, secs)) => {
            // Counters restart with the maps: a smaller value is a new start, not a negative rate.
            let per_second = |now: u64, then: u64| now.saturating_sub(then) as f64 / secs;
            let pps = per_second(t.packets, before.packets);
            let bps = 8.0 * per_second(t.bytes, before.bytes);
            let cps = per_second(t.new_flows, before.new_flows);
            println!("{name:<30} {:>12} {:>14} {pps:>10.0} {bps:>12.0} {cps:>8.0}", t.packets, t.bytes);
        }
    }
}

fn print_stats(stats: &views::Stats, previous: Option<(&views::Stats, f64)>, vip: bool, backend: bool) {
    let all = !vip && !backend;
    if all {
        println!("{:<30} {:>12} {:>14}", "counter", "packets", "bytes");
        for (i, c) in stats.counters.iter().enumerate() {
            if i < 4 || c.packets != 0 {
                println!("{:<30} {:>12} {:>14}", c.name, c.packets, c.bytes);
            }
        }
        println!();
    }
    let header = |what: &str| match previous {
        None => println!(
            "{what:<30} {:>12} {:>14} {:>10} {:>10} {:>10}",
            "packets", "bytes", "new_flows", "lru_hits", "lru_miss"
        ),
        Some(_) => {
            println!("{what:<30} {:>12} {:>14} {:>10} {:>12} {:>8}", "packets", "bytes", "pps", "bps", "cps")
        }
    };
    if all || vip {
        header("vip");
        for v in &stats.vips {
            let port = if v.port == 0 { "*".to_owned() } else { v.port.to_string() };
            let name = format!("{}:{port}/{}", v.address, v.protocol);
            // The same VIP in the previous reading: address, port and protocol.
            let rate = previous.map(|(p, secs)| {
                let before = p
                    .vips
                    .iter()
                    .find(|x| x.address == v.address && x.port == v.port && x.protocol == v.protocol)
                    .map_or(&v.traffic, |x| &x.traffic);
                (before, secs)
            });
            traffic_row(&name, &v.traffic, rate);
        }
        println!();
    }
    if all || backend {
        header("backend");
        for b in &stats.backends {
            let rate = previous.map(|(p, secs)| {
                let before =
                    p.backends.iter().find(|x| x.address == b.address).map_or(&b.traffic, |x| &x.traffic);
                (before, secs)
            });
            traffic_row(&b.address.to_string(), &b.traffic, rate);
        }
    }
}

/// Asks lbd: with `-o json`, prints its answer as it came and returns None; else its answer
/// as the typed view `T`.
async fn ask<T: serde::de::DeserializeOwned>(
    cli: &Cli,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<Option<T>> {
    let v = call(&cli.socket, method, path, body).await?;
    if matches!(cli.output, Output::Json) {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(None);
    }
    serde_json::from_value(v).with_context(|| format!("lbd's {path} answer")).map(Some)
}

async fn run(cli: Cli) -> Result<()> {
    let json_out = matches!(cli.output, Output::Json);
    let show = |value: &Value| println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
    match &cli.noun {
        Noun::Status => {
            if let Some(s) = ask::<views::Status>(&cli, Method::GET, "/status", None).await? {
                let reload = match s.last_reload {
                    None => "none yet".to_owned(),
                    Some(r) => format!(
                        "{} (unix time {})",
                        if r.applied { "applied" } else { "refused" },
                        r.unix_seconds
                    ),
                };
                let interface = if s.interface.is_empty() { "- (L7 only)" } else { &s.interface };
                println!("{:<16} {interface}", "interface");
                println!("{:<16} {}", "pin_dir", s.pin_dir.display());
                println!("{:<16} {}", "config", s.config.display());
                println!("{:<16} {}", "uptime_seconds", s.uptime_seconds);
                println!("{:<16} {}", "vips", s.vips);
                println!("{:<16} {}", "pools", s.pools);
                println!("{:<16} {}", "failing_open", s.failing_open.join(", "));
                println!("{:<16} {reload}", "last_reload");
                if let Some(c) = &s.cluster {
                    let state = match &c.error {
                        None => format!("revision {}", c.revision),
                        Some(err) => format!("UNREACHABLE, serving revision {} ({err})", c.revision),
                    };
                    println!("{:<16} {} under {}: {state}", "etcd", c.endpoints.join(", "), c.prefix);
                }
                if let Some(bgp) = &s.bgp {
                    let announced: Vec<String> = bgp.announced.iter().map(ToString::to_string).collect();
                    let announced =
                        if announced.is_empty() { "nothing".to_owned() } else { announced.join(", ") };
                    println!(
                        "{:<16} {announced}{}",
                        "bgp_announced",
                        if bgp.drained { " (node drained)" } else { "" }
                    );
                    if let Some(err) = &bgp.error {
                        println!("{:<16} {err}", "bgp_error");
                    }
                }
            }
        }
        Noun::Reload => {
            if let Some(applied) = ask::<views::Changes>(&cli, Method::POST, "/reload", None).await? {
                for line in &applied.changes {
                    println!("{line}");
                }
                println!("reload applied ({} changes)", applied.changes.len());
            }
        }
        // Answered in main, without lbd.
        Noun::Generate { .. } => {}
        Noun::Top { interval } => top::top(&cli.socket, std::time::Duration::from_secs(*interval)).await?,
        Noun::Upgrade => {
            if let Some(done) = ask::<views::Upgraded>(&cli, Method::POST, "/upgrade", None).await? {
                println!("upgraded: lbd {} serves; the old one drains and exits", done.pid);
            }
        }
        Noun::Route { verb: RouteVerb::List } => {
            if let Some(routes) = ask::<Vec<views::Route>>(&cli, Method::GET, "/routes", None).await? {
                println!(
                    "{:<20} {:<12} {:<24} {:<16} {:<16} split",
                    "name", "listener", "host", "path", "pool"
                );
                for r in routes {
                    let mut split: Vec<String> =
                        r.split.iter().map(|(p, share)| format!("{p} {share}%")).collect();
                    if r.sticky && !split.is_empty() {
                        split.push("(sticky)".into());
                    }
                    let split = if split.is_empty() { "-".to_owned() } else { split.join(", ") };
                    println!(
                        "{:<20} {:<12} {:<24} {:<16} {:<16} {split}",
                        r.name, r.listener, r.host, r.path, r.pool
                    );
                }
            }
        }
        Noun::Route { verb: RouteVerb::Split { route, pool, percent } } => {
            let split = Command::SetSplit { route: route.clone(), pool: pool.clone(), percent: *percent };
            let v = command(&cli, split).await?;
            if json_out { show(&v) } else { print_changes(&v) }
        }
        Noun::Node { verb } => {
            let drained = matches!(verb, NodeVerb::Drain);
            let v = command(&cli, Command::SetNodeDrain { drained }).await?;
            if json_out { show(&v) } else { print_changes(&v) }
        }
        Noun::Vip { verb: VipVerb::List } => {
            if let Some(vips) = ask::<Vec<views::Vip>>(&cli, Method::GET, "/vips", None).await? {
                println!("{:<16} {:<40} {:>6} {:<5} {:<11} pool", "name", "address", "port", "proto", "mode");
                for vip in vips {
                    let port = if vip.port == 0 { "*".into() } else { vip.port.to_string() };
                    let mode = if vip.syn_cookies { format!("{}+cookies", vip.mode) } else { vip.mode };
                    println!(
                        "{:<16} {:<40} {:>6} {:<5} {:<11} {}",
                        vip.name,
                        vip.address.to_string(),
                        port,
                        vip.protocol,
                        mode,
                        vip.pool
                    );
                }
            }
        }
        Noun::Pool { verb } => {
            let v = match verb {
                PoolVerb::List => call(&cli.socket, Method::GET, "/pools", None).await?,
                PoolVerb::Show { name } => {
                    call(&cli.socket, Method::GET, &format!("/pools/{name}"), None).await?
                }
            };
            if json_out {
                show(&v);
            } else if v.is_array() {
                let pools: Vec<views::Pool> = serde_json::from_value(v).context("lbd's /pools answer")?;
                pools.iter().for_each(print_pool);
            } else {
                print_pool(&serde_json::from_value(v).context("lbd's /pools/NAME answer")?);
            }
        }
        Noun::Backend { verb } => {
            let v = command(&cli, verb.clone().command()).await?;
            if json_out { show(&v) } else { print_changes(&v) }
        }
        Noun::Deny { verb } => match verb {
            DenyVerb::Add { prefix } | DenyVerb::Remove { prefix } => {
                let c = if matches!(verb, DenyVerb::Add { .. }) {
                    Command::AddDeny { prefix: *prefix }
                } else {
                    Command::RemoveDeny { prefix: *prefix }
                };
                let v = command(&cli, c).await?;
                if json_out { show(&v) } else { print_changes(&v) }
            }
            DenyVerb::List => {
                let status = call(&cli.socket, Method::GET, "/deny", None).await?;
                if json_out {
                    show(&status);
                } else {
                    for p in status.as_array().into_iter().flatten() {
                        println!("{}", p.as_str().unwrap_or_default());
                    }
                }
            }
        },
        Noun::Stats { vip, backend, watch } => {
            let mut previous: Option<(views::Stats, std::time::Instant)> = None;
            loop {
                let v = call(&cli.socket, Method::GET, "/stats", None).await?;
                let stats: views::Stats = serde_json::from_value(v.clone()).context("lbd's /stats answer")?;
                if json_out {
                    show(&v);
                } else {
                    let rate = previous.as_ref().map(|(p, at)| (p, at.elapsed().as_secs_f64()));
                    print_stats(&stats, rate, *vip, *backend);
                }
                let Some(seconds) = watch else { break };
                previous = Some((stats, std::time::Instant::now()));
                tokio::time::sleep(Duration::from_secs(*seconds)).await;
                println!();
            }
        }
        Noun::Flow { vip, protocol, source } => {
            let proto: lb_userspace::config::Protocol = serde_json::from_value(json!(protocol))
                .map_err(|_| anyhow::anyhow!("{protocol}: tcp or udp"))?;
            let query = views::FlowQuery { protocol: proto, source: *source, vip: *vip };
            let body = Some(serde_json::to_value(&query)?);
            if let Some(flow) = ask::<views::Flow>(&cli, Method::POST, "/flow", body).await? {
                match flow.backend {
                    Some(backend) => {
                        println!("{source} -> {vip}/{protocol}: backend {backend} ({})", flow.why)
                    }
                    None => {
                        println!("{source} -> {vip}/{protocol}: not forwarded (XDP action {})", flow.action)
                    }
                }
            }
        }
        Noun::Plan { config, change } => {
            let query = match (config, change) {
                (Some(path), None) => {
                    // lbctl reads the file (bounded, regular files only) and sends its text.
                    let text = lb_userspace::config::read_file(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    views::PlanQuery {
                        config_text: Some(text),
                        config_name: Some(path.display().to_string()),
                        ..Default::default()
                    }
                }
                (None, Some(PlanVerb::Backend { verb })) => {
                    views::PlanQuery { commands: vec![verb.clone().command()], ..Default::default() }
                }
                _ => bail!("give either -c NEW.toml or a change (`lbctl plan backend remove POOL ADDR`)"),
            };
            let v = call(&cli.socket, Method::POST, "/plan", Some(serde_json::to_value(&query)?)).await?;
            if json_out {
                show(&v);
            } else {
                let plans: Vec<views::VipPlan> = serde_json::from_value(v).context("lbd's /plan answer")?;
                println!(
                    "{:<40} {:>14} {:>11} {:>16}",
                    "vip", "buckets moved", "live flows", "live flows moved"
                );
                for p in plans {
                    println!(
                        "{:<40} {:>13.2}% {:>11} {:>16}",
                        p.vip, p.buckets_moved_percent, p.live_flows, p.live_flows_moved
                    );
                }
            }
        }
        Noun::Cache { verb: CacheVerb::Purge { route, path } } => {
            let v = call(
                &cli.socket,
                Method::POST,
                "/cache/purge",
                Some(serde_json::to_value(views::Purge { route: route.clone(), path: path.clone() })?),
            )
            .await?;
            if json_out {
                show(&v);
            } else {
                println!("purged {} entries", v["purged"].as_u64().unwrap_or(0));
            }
        }
        Noun::DecapStats { pin_dir } => {
            let rows: Vec<Value> = counters::decap(pin_dir)?
                .into_iter()
                .map(|(s, c)| json!({ "name": s.name(), "packets": c.packets, "bytes": c.bytes }))
                .collect();
            if json_out {
                show(&json!(rows));
            } else {
                println!("{:<14} {:>14} {:>16}", "counter", "packets", "bytes");
                for r in rows {
                    println!(
                        "{:<14} {:>14} {:>16}",
                        r["name"].as_str().unwrap_or_default(),
                        r["packets"].as_u64().unwrap_or(0),
                        r["bytes"].as_u64().unwrap_or(0)
                    );
                }
            }
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    // A closed pipe (`lbctl stats | head`) ends lbctl quietly, as it does any other tool.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    if let Noun::Generate { what, dir } = &cli.noun {
        let written = lb_userspace::generate::generate(<Cli as clap::CommandFactory>::command(), *what, dir);
        return match written {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("lbctl: {err}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let _ = TIMEOUT.set(std::time::Duration::from_secs(cli.timeout));
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("lbctl: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("lbctl: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
