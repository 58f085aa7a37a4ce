//! lbctl: inspect a running Sluice: fast-path counters per verdict, VIP and backend.
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use lb_common::stats::Stat;
use lb_userspace::{stats, tables::ip_of};

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
    /// Fast-path counters summed over CPUs: verdicts and reasons, then per VIP and per backend.
    Stats {
        /// Only the per-VIP table.
        #[arg(long)]
        vip: bool,
        /// Only the per-backend table.
        #[arg(long)]
        backend: bool,
    },
    /// Counters of the backends' decapsulation program (`lbd decap`); use its --pin-dir.
    DecapStats,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Stats { vip, backend } => {
            let all = !vip && !backend;
            if all {
                println!("{:<24} {:>14} {:>16}", "counter", "packets", "bytes");
                for (stat, c) in stats::verdicts(&cli.pin_dir)? {
                    if c.packets > 0 || (stat as u32) <= Stat::Redirect as u32 {
                        println!("{:<24} {:>14} {:>16}", stat.name(), c.packets, c.bytes);
                    }
                }
            }
            let header = |what| {
                println!(
                    "\n{what:<28} {:>12} {:>14} {:>10} {:>10} {:>10}",
                    "packets", "bytes", "new_flows", "lru_hits", "lru_miss"
                )
            };
            if all || vip {
                header("vip");
                for (key, c) in stats::vips(&cli.pin_dir)? {
                    let port = u16::from_be(key.port);
                    let name = format!(
                        "{}:{}/{}",
                        ip_of(&key.addr),
                        if port == 0 { "*".into() } else { port.to_string() },
                        proto(key.proto)
                    );
                    println!(
                        "{name:<28} {:>12} {:>14} {:>10} {:>10} {:>10}",
                        c.packets, c.bytes, c.new_flows, c.lru_hits, c.lru_misses
                    );
                }
            }
            if all || backend {
                header("backend");
                for (addr, c) in stats::backends(&cli.pin_dir)? {
                    println!(
                        "{:<28} {:>12} {:>14} {:>10} {:>10} {:>10}",
                        addr.to_string(),
                        c.packets,
                        c.bytes,
                        c.new_flows,
                        c.lru_hits,
                        c.lru_misses
                    );
                }
            }
        }
        Command::DecapStats => {
            println!("{:<14} {:>14} {:>16}", "counter", "packets", "bytes");
            for (stat, c) in stats::decap(&cli.pin_dir)? {
                println!("{:<14} {:>14} {:>16}", stat.name(), c.packets, c.bytes);
            }
        }
    }
    Ok(())
}

fn proto(number: u8) -> &'static str {
    match number {
        6 => "tcp",
        17 => "udp",
        _ => "?",
    }
}
