//! lbd: the Sluice daemon. Attaches the XDP balancer and keeps its maps in step with the config.
use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use lb_userspace::{
    admin,
    config::{Config, XdpModeSetting},
    daemon::{Core, Shared, lock},
    dataplane::{self, Role},
    health, proxy,
};
use log::{error, info, warn};
use sd_notify::NotifyState;

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
}

fn parse_mode(text: &str) -> Result<XdpModeSetting, String> {
    match text {
        "native" => Ok(XdpModeSetting::Native),
        "generic" => Ok(XdpModeSetting::Generic),
        "auto" => Ok(XdpModeSetting::Auto),
        _ => Err(format!("`{text}`: expected native, generic or auto")),
    }
}

fn main() -> ExitCode {
    // aya warns that the kernel refuses the object's BTF (rustc describes Rust enums with
    // unions the kernel rejects); the maps and programs do not need it, so only errors show.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info,aya::bpf=error")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { config } => return check(&config),
        Command::Run { config } => run(&config),
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

/// Raises the soft descriptor limit to the hard one (every client connection and upstream
/// connection is a descriptor; the usual soft default of 1024 is far below `max_connections`).
fn raise_descriptor_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the rlimit we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    let soft = limit.rlim_cur;
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit reads the rlimit we own.
    let raised = soft == limit.rlim_max || unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } == 0;
    let now = if raised { limit.rlim_max } else { soft };
    info!("descriptor limit: soft {now} (was {soft}), hard {}", limit.rlim_max);
}

fn run(path: &Path) -> Result<()> {
    let config = load_config(path)?;
    raise_descriptor_limit();
    let (interface, mode, pin_dir) = (config.interface.clone(), config.xdp_mode, config.pin_dir.clone());
    let (admin_socket, metrics) = (config.admin_socket.clone(), config.metrics);
    // One lbd per pin directory, which only root may change: checked and locked before
    // anything (maps, admin socket) is touched. An L7-only host (no [dataplane]) has neither.
    let (_instance, core) = if config.dataplane {
        lb_userspace::instance::prepare_pin_dir(&pin_dir)?;
        let instance = lb_userspace::instance::lock(&pin_dir)?;
        // Keeps the program loaded while lbd runs; the pinned link keeps it attached after.
        let ebpf = dataplane::load(&pin_dir, Role::Balancer { max_vips: config.max_vips })?;
        // Program the maps before attaching, so the first packet already sees the pools.
        let core: Shared = Arc::new(Mutex::new(Core::start(config, path.to_owned(), Some(ebpf))?));
        let attached = {
            let mut core = lock(&core);
            let ebpf = core.ebpf.as_mut().context("the loaded program")?;
            dataplane::attach(ebpf, dataplane::BALANCER_PROGRAM, &interface, mode, &pin_dir)?
        };
        info!("balancer on {interface} ({attached:?}); maps pinned under {}", pin_dir.display());
        (Some(instance), core)
    } else {
        info!("no [dataplane]: L7 only, no XDP program");
        (None, Arc::new(Mutex::new(Core::start(config, path.to_owned(), None)?)))
    };
    let dataplane_on = _instance.is_some();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
        .enable_all()
        .build()?;
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
        let admin = admin::bind(&admin_socket)?;
        tokio::spawn(admin::serve(admin, core.clone()));
        info!("admin API on {}", admin_socket.display());
        if let Some(address) = metrics {
            tokio::spawn(lb_userspace::metrics::serve(lb_userspace::metrics::bind(address).await?, core.clone()));
            info!("metrics on http://{address}/metrics");
        }
        if dataplane_on {
            tokio::spawn(watch_dataplane(core.clone(), pin_dir.join("link"), interface.clone()));
        }
        let mut checked = HashSet::new();
        health::spawn_missing(&core, &mut checked);
        // L7 listeners: bound before READY, so a busy port fails the start.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        // The proxy's outlier ejections are State commands, applied like health results.
        let (ejections, mut ejected) = tokio::sync::mpsc::unbounded_channel();
        let ejecting = core.clone();
        tokio::spawn(async move {
            while let Some(command) = ejected.recv().await {
                if let Err(err) = lock(&ejecting).execute(&[command]) {
                    error!("outlier ejection: {err}");
                }
            }
        });
        let (snapshot, forwarder) = {
            let core = lock(&core);
            let forwarder = proxy::pipeline::Forwarder::new(core.proxy_metrics.clone(), ejections, core.cache.clone());
            (core.l7.clone(), Arc::new(forwarder))
        };
        let mut listeners = Vec::new();
        let mut bound = Vec::new();
        let workers = proxy::workers::count();
        let configured = lock(&core).state.config.listeners.clone();
        for listener in configured {
            let certs = proxy::load_certs(&listener)?;
            if let Some(resolver) = &certs {
                tokio::spawn(proxy::watch_certs(listener.clone(), resolver.clone()));
            }
            bound.push(proxy::workers::bind(listener.clone(), certs.clone(), workers)?);
            listeners.push((listener, certs));
        }
        let serving = proxy::workers::start(bound, snapshot.clone(), forwarder.clone(), stop_rx.clone())?;
        // SIGHUP and `lbctl reload` share one reload path (lb_userspace::reload).
        let (reload_tx, mut reload_asks) = tokio::sync::mpsc::channel(4);
        lock(&core).reloads = Some(reload_tx);
        let mut reloader = lb_userspace::reload::Reloader {
            core: core.clone(),
            path: path.to_owned(),
            listeners,
            checked,
        };
        notify(&[NotifyState::Ready]);
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    notify(&[NotifyState::Reloading, NotifyState::monotonic_usec_now().unwrap_or(NotifyState::Ready)]);
                    let _ = reloader.reload().await;
                    notify(&[NotifyState::Ready]);
                }
                Some(asked) = reload_asks.recv() => {
                    notify(&[NotifyState::Reloading, NotifyState::monotonic_usec_now().unwrap_or(NotifyState::Ready)]);
                    let _ = asked.send(reloader.reload().await);
                    notify(&[NotifyState::Ready]);
                }
            }
        }
        // Graceful stop: listeners stop accepting and drain in-flight requests.
        notify(&[NotifyState::Stopping]);
        let _ = stop_tx.send(true);
        let _ = tokio::task::spawn_blocking(move || {
            for worker in serving {
                let _ = worker.join();
            }
        })
        .await;
        anyhow::Ok(())
    })?;
    let _ = std::fs::remove_file(&admin_socket);
    if dataplane_on {
        info!("stopping; the XDP program stays attached (lbd stop --detach removes it)");
    } else {
        info!("stopping");
    }
    Ok(())
}

/// Watches what can silently stop the fast path, every 5 s: the pinned XDP link disappearing
/// (someone ran `bpftool` or removed the pins), and the NIC's own XDP transmit error counters
/// growing (native XDP_TX frames the driver drops; on veth, a peer without an XDP program).
async fn watch_dataplane(core: Shared, link: PathBuf, interface: String) {
    let mut present = true;
    let mut errors = lb_userspace::dataplane::nic::xdp_tx_errors(&interface).map(|(n, _)| n);
    lock(&core).nic_xdp_tx_errors = errors;
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        let now = link.exists();
        if present && !now {
            error!(
                "the XDP link pin {} is gone: the fast path is detached; restart lbd to attach it",
                link.display()
            );
        } else if !present && now {
            info!("the XDP link pin {} is back", link.display());
        }
        present = now;
        let iface = interface.clone();
        let read = tokio::task::spawn_blocking(move || lb_userspace::dataplane::nic::xdp_tx_errors(&iface))
            .await
            .ok()
            .flatten();
        if let (Some((total, names)), Some(before)) = (&read, errors)
            && *total > before
        {
            warn!(
                "{interface}: {} XDP transmit errors in the last 5 s ({}): the driver drops frames the \
                 balancer sends back out; on veth, the peer needs an XDP program (`lbd pass --iface PEER`)",
                total - before,
                names.join(", ")
            );
        }
        errors = read.map(|(n, _)| n);
        lock(&core).nic_xdp_tx_errors = errors;
    }
}

/// Tells systemd (when lbd runs under it) where the daemon is.
fn notify(states: &[NotifyState]) {
    let _ = sd_notify::notify(states);
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
            return Err(err);
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
