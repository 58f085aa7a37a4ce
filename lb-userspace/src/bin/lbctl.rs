//! lbctl: operate a running Sluice: counters today; pools, VIPs and flows as they land.
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use lb_userspace::stats;

#[derive(Parser)]
#[command(name = "lbctl", version, about = "Control and inspect a running Sluice (lbd)")]
struct Cli {
    /// bpffs directory where lbd pinned its maps.
    #[arg(long, global = true, default_value = lb_common::PIN_DIR)]
    pin_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Packet and byte counters of the XDP fast path, summed over CPUs.
    Stats,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Stats => {
            println!("{:<10} {:>14} {:>16}", "verdict", "packets", "bytes");
            for (stat, counter) in stats::verdicts(&cli.pin_dir)? {
                println!(
                    "{:<10} {:>14} {:>16}",
                    stat.name(),
                    counter.packets,
                    counter.bytes
                );
            }
        }
    }
    Ok(())
}
