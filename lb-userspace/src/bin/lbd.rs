//! lbd: the Sluice daemon. Attaches the XDP balancer and keeps its maps in step with the config.
use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use lb_userspace::{config::Config, dataplane};
use log::{error, info};

#[derive(Parser)]
#[command(
    name = "lbd",
    version,
    about = "Sluice load balancer daemon: XDP L4 fast path and L7 proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the XDP balancer to the configured interface, pin it, and serve until SIGTERM.
    /// The program stays attached after lbd exits; the next `lbd run` re-adopts it.
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
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { config } => return check(&config),
        Command::Run { config } => run(&config),
        Command::Stop { config, detach } => stop(&config, detach),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: &std::path::Path) -> Result<Config> {
    Config::load(path).map_err(|errors| anyhow::anyhow!("invalid config:\n{errors}"))
}

fn check(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
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

fn run(path: &std::path::Path) -> Result<()> {
    let config = load_config(path)?;
    let mut ebpf = dataplane::load(&config.pin_dir)?;
    let attached = dataplane::attach(&mut ebpf, &config.interface, config.xdp_mode, &config.pin_dir)?;
    info!(
        "balancer on {} ({attached:?}); maps pinned under {}",
        config.interface,
        config.pin_dir.display()
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(wait_for_stop_signal())?;
    info!("stopping; the XDP program stays attached (lbd stop --detach removes it)");
    Ok(())
}

async fn wait_for_stop_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

fn stop(path: &std::path::Path, detach: bool) -> Result<()> {
    anyhow::ensure!(
        detach,
        "`lbd stop` needs --detach: it removes the fast path and its connection table"
    );
    let config = load_config(path)?;
    dataplane::detach(&config.pin_dir)?;
    info!("detached and removed {}", config.pin_dir.display());
    Ok(())
}
