//! lbd: the Sluice daemon. Attaches the XDP balancer and keeps its maps in step with the config.
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, Result};
use clap::{CommandFactory as _, Parser, Subcommand};
use lb_userspace::{
    config::{Config, XdpModeSetting},
    dataplane::{self, Role},
};
use log::{error, info};

// The proxy allocates per request; mimalloc spends a third of glibc's time on it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "lbd", version, about = "Sluice load balancer daemon: XDP L4 fast path and L7 proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the XDP balancer to the configured interface, program VIPs, pools and deny lists,
    /// and serve until SIGTERM (SIGHUP reloads the config). The program stays attached after
    /// lbd exits; the next `lbd run` re-adopts it with its connection table.
    Run {
        /// Config file.
        #[arg(short, long, default_value = "/etc/sluice/sluice.toml")]
        config: PathBuf,
    },
    /// Validate a config file and print OK or every error (file:line: what is wrong). Touches nothing.
    Check {
        /// Config file.
        #[arg(short, long, default_value = "/etc/sluice/sluice.toml")]
        config: PathBuf,
    },
    /// Stop forwarding: detach the XDP program and remove every pinned map and link.
    Stop {
        /// Config file (for the pin directory).
        #[arg(short, long, default_value = "/etc/sluice/sluice.toml")]
        config: PathBuf,
        /// Required: detaching drops the connection table and stops the fast path.
        #[arg(long)]
        detach: bool,
    },
    /// On a backend: attach Sluice's decapsulation program (IPIP / IPv6-in-IPv6 / IPv4-in-IPv6)
    /// to IFACE, for kernels without ipip/ip6_tunnel. Pins under /sys/fs/bpf/sluice-decap-IFACE.
    Decap {
        /// The backend's NIC.
        #[arg(long)]
        iface: String,
        /// native, generic or auto.
        #[arg(long, default_value = "auto", value_parser = parse_mode)]
        mode: XdpModeSetting,
        /// Detach it instead.
        #[arg(long)]
        detach: bool,
        /// bpffs directory for its link and counters (default /sys/fs/bpf/sluice-decap-IFACE).
        #[arg(long)]
        pin_dir: Option<PathBuf>,
    },
    /// On the peer of a veth the balancer runs on native XDP (a router's end, a test bed):
    /// attach the pass-everything program, without which veth drops native XDP_TX frames.
    /// Pins under /sys/fs/bpf/sluice-pass-IFACE.
    Pass {
        /// The peer interface.
        #[arg(long)]
        iface: String,
        /// native, generic or auto.
        #[arg(long, default_value = "native", value_parser = parse_mode)]
        mode: XdpModeSetting,
        /// Detach it instead.
        #[arg(long)]
        detach: bool,
        /// bpffs directory for its link (default /sys/fs/bpf/sluice-pass-IFACE).
        #[arg(long)]
        pin_dir: Option<PathBuf>,
    },
    /// Write lbd's man pages or a shell completion script into DIR (for packaging).
    #[command(hide = true)]
    Generate {
        #[arg(value_enum)]
        what: lb_userspace::generate::Generated,
        dir: PathBuf,
    },
}

fn parse_mode(text: &str) -> Result<XdpModeSetting, String> {
    match text {
        "native" => Ok(XdpModeSetting::Native),
        "generic" => Ok(XdpModeSetting::Generic),
        "auto" => Ok(XdpModeSetting::Auto),
        _ => Err(format!("`{text}`: expected native, generic or auto")),
    }
}

/// What lbd logs, before `RUST_LOG`'s directives.
const LOG_FILTER: &str = "info,aya::bpf=error,rustls=error";

fn main() -> ExitCode {
    // aya warns that the kernel refuses the object's BTF (rustc describes Rust enums with
    // unions the kernel rejects); the maps and programs do not need it, so only errors show.
    // rustls warns about what a client sent (an IP address as SNI, which wrk and others send):
    // one line per connection that any client can ask for. Handshakes are counted by result
    // in the metrics instead (`sluice_tls_handshakes_total`).
    // `RUST_LOG` is read after these defaults: it sets the level and overrides the modules it
    // names (`RUST_LOG=warn,rustls=warn` shows rustls's warnings again).
    env_logger::Builder::new().parse_filters(LOG_FILTER).parse_env(env_logger::Env::default()).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate { what, dir } => {
            lb_userspace::generate::generate(Cli::command(), what, &dir).map_err(Into::into)
        }
        Command::Check { config } => return check(&config),
        Command::Run { config } => lb_userspace::run::run(&config).map_err(Into::into),
        Command::Stop { config, detach } => stop(&config, detach),
        Command::Decap { iface, mode, detach, pin_dir } => {
            let pin_dir = pin_dir.unwrap_or_else(|| dataplane::decap_pin_dir(&iface));
            helper(Helper::Decap, &iface, mode, detach, &pin_dir)
        }
        Command::Pass { iface, mode, detach, pin_dir } => {
            let pin_dir =
                pin_dir.unwrap_or_else(|| PathBuf::from(format!("{}-pass-{iface}", lb_common::PIN_DIR)));
            helper(Helper::Pass, &iface, mode, detach, &pin_dir)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: &Path) -> Result<Config> {
    Config::load(path).map_err(|errors| anyhow::anyhow!("invalid config:\n{errors}"))
}

fn check(path: &Path) -> ExitCode {
    match Config::load(path).and_then(|config| lb_userspace::host::check(&config, path)) {
        Ok(_) => {
            println!("OK");
            ExitCode::SUCCESS
        }
        Err(errors) => {
            println!("{errors}");
            ExitCode::FAILURE
        }
    }
}

fn stop(path: &Path, detach: bool) -> Result<()> {
    anyhow::ensure!(detach, "`lbd stop` needs --detach: it removes the fast path and its connection table");
    let config = load_config(path)?;
    if config.pin_dir.exists() {
        // A running lbd holds the lock: detaching under it would leave it serving from maps
        // nothing uses.
        let _instance = lb_userspace::instance::lock(&config.pin_dir)?;
    }
    dataplane::detach(&config.pin_dir)?;
    info!("detached and removed {}", config.pin_dir.display());
    Ok(())
}

/// The small XDP programs lbd attaches for others: a backend's decapsulation, a veth peer's pass.
#[derive(Clone, Copy)]
enum Helper {
    Decap,
    Pass,
}

fn helper(which: Helper, iface: &str, mode: XdpModeSetting, detach: bool, pin_dir: &Path) -> Result<()> {
    let (role, program, what) = match which {
        Helper::Decap => (Role::Decap, dataplane::DECAP_PROGRAM, "decap"),
        Helper::Pass => (Role::Pass, dataplane::PASS_PROGRAM, "pass"),
    };
    if detach {
        dataplane::detach(pin_dir)?;
        info!("{what} detached from {iface}");
        return Ok(());
    }
    // A wrong interface fails before anything is pinned.
    lb_userspace::host::ifindex(iface).with_context(|| format!("interface {iface}"))?;
    let fresh = !pin_dir.exists();
    let attached = dataplane::load(pin_dir, role)
        .and_then(|mut ebpf| dataplane::attach(&mut ebpf, program, iface, mode, pin_dir));
    let attached = match attached {
        Ok(attached) => attached,
        Err(err) => {
            // Leave no maps behind from a failed first attach.
            if fresh {
                let _ = dataplane::detach(pin_dir);
                let _ = std::fs::remove_dir_all(pin_dir);
            }
            return Err(err.into());
        }
    };
    match which {
        Helper::Decap => info!(
            "decap on {iface} ({attached:?}); counters: lbctl decap-stats --pin-dir {}",
            pin_dir.display()
        ),
        Helper::Pass => info!("pass on {iface} ({attached:?}); pinned under {}", pin_dir.display()),
    }
    Ok(())
}
