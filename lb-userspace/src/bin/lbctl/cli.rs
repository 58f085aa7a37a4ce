//! What lbctl takes on its command line (clap): the global options, the nouns and their verbs;
//! a backend verb as the State's command.
use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use clap::{Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use lb_userspace::{config::DEFAULT_ADMIN_SOCKET, state::Command};

#[derive(Parser)]
#[command(name = "lbctl", version, about = "Control and inspect a running Sluice (lbd)")]
pub struct Cli {
    /// lbd's admin socket.
    #[arg(long, global = true, default_value = DEFAULT_ADMIN_SOCKET)]
    pub socket: PathBuf,
    /// How long to wait for lbd's answer, in seconds.
    #[arg(long, global = true, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(subcommand)]
    pub noun: Noun,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
pub enum Noun {
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
    /// L7 listeners: their address, TLS, limits and open connections.
    Listener {
        #[command(subcommand)]
        verb: ListenerVerb,
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
pub enum NodeVerb {
    /// Withdraw every VIP from BGP (the router sends the traffic to the other hosts); kept in
    /// the config file across restarts.
    Drain,
    /// Announce the VIPs again.
    Undrain,
}

#[derive(Subcommand)]
pub enum VipVerb {
    /// List VIPs.
    List,
}

#[derive(Subcommand)]
pub enum PoolVerb {
    /// List pools.
    List,
    /// One pool's backends.
    Show {
        /// The pool's name.
        name: String,
    },
}

#[derive(Subcommand, Clone)]
pub enum BackendVerb {
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
pub enum ListenerVerb {
    /// L7 listeners with their address, protocol, limits, routes and open connections.
    List,
}

#[derive(Subcommand)]
pub enum RouteVerb {
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
    /// Inject faults into a route's requests, to see how clients and retries bear them (a
    /// chaos experiment; written to the config file): hold a share of them DELAY_MS first,
    /// answer a share with ABORT_STATUS and ask no backend. `--clear` stops.
    Fault {
        /// The route's name.
        route: String,
        /// How long to hold a request, 1 to 60000 ms.
        #[arg(long)]
        delay_ms: Option<u64>,
        /// The share of requests held, 0 to 100 (default 100).
        #[arg(long)]
        delay_percent: Option<f64>,
        /// The status to answer with, 400 to 599.
        #[arg(long)]
        abort_status: Option<u16>,
        /// The share of requests answered so, 0 to 100 (default 100).
        #[arg(long)]
        abort_percent: Option<f64>,
        /// Stop the route's faults.
        #[arg(long, conflicts_with_all = ["delay_ms", "delay_percent", "abort_status", "abort_percent"])]
        clear: bool,
    },
}

#[derive(Subcommand)]
pub enum CacheVerb {
    /// Empty a route's cache, or only one path of it, or the paths under a prefix.
    Purge {
        /// The route's name.
        route: String,
        /// Only this path (and query), e.g. `/img/logo.png`; or, ending in `*`, every path
        /// that begins with what comes before it, e.g. `/img/*`.
        path: Option<String>,
    },
}

#[derive(Subcommand, Clone)]
pub enum PlanVerb {
    /// A backend change: add, remove, drain or weight.
    Backend {
        #[command(subcommand)]
        verb: BackendVerb,
    },
}

impl BackendVerb {
    /// The State's command for this change.
    pub fn command(self) -> Command {
        match self {
            BackendVerb::Add { pool, address, weight } => Command::AddBackend { pool, address, weight },
            BackendVerb::Remove { pool, address } => Command::RemoveBackend { pool, address },
            BackendVerb::Drain { pool, address, undo } => Command::SetDrain { pool, address, drain: !undo },
            BackendVerb::Weight { pool, address, weight } => Command::SetWeight { pool, address, weight },
        }
    }
}

#[derive(Subcommand)]
pub enum DenyVerb {
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
