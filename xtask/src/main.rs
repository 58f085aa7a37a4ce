//! Project tasks: `cargo xtask test | demo | bench | deb`.
mod deb;

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Sluice project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// fmt check, clippy, host unit tests, then the root tests (XDP fixtures, namespaces).
    Test {
        /// Only the host checks and unit tests (no root needed).
        #[arg(long)]
        host_only: bool,
    },
    /// Benchmarks, printed next to a peer measured in the same run. `l4`: ns per packet of
    /// each XDP path against an empty XDP program, then real traffic against nftables
    /// (`l4-traffic` alone); `l7`: the proxy against HAProxy and nginx; `l7-instructions`:
    /// lbd's user-space instructions per request (callgrind), for A/B comparisons.
    Bench {
        /// Which: l4, l4-traffic, l7 or l7-instructions.
        what: String,
    },
    /// Build, bring up a namespace topology, run lbd with config/demo.toml, send traffic, show counters.
    Demo {
        /// Leave the topology and lbd running for exploration (Ctrl-C tears down).
        #[arg(long)]
        keep: bool,
        /// The many-host story: three balancers behind a BGP router, one lost.
        #[arg(long)]
        cluster: bool,
    },
    /// Build the Debian package (target/deb/sluice_VERSION_ARCH.deb): binaries, hardened unit,
    /// conffile, docs, man pages, completions.
    Deb {
        /// Package the lbd and lbctl found in DIR instead of building release binaries (the
        /// root test packages the binaries it tests).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Where to put it (default target/deb).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn cargo(args: &[&str]) -> Result<()> {
    println!("==> cargo {}", args.join(" "));
    let status = Command::new(env!("CARGO")).args(args).status().context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn test(host_only: bool) -> Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&["clippy", "--workspace", "--exclude", "lb-ebpf", "--all-targets", "--", "-D", "warnings"])?;
    // lb-ebpf's helper-free library (parser, checksums) builds and is tested on the host too.
    cargo(&["clippy", "--package", "lb-ebpf", "--lib", "--tests", "--", "-D", "warnings"])?;
    cargo(&["test", "--workspace", "--exclude", "lb-ebpf", "--exclude", "sluice-tests"])?;
    cargo(&["test", "--package", "lb-ebpf", "--lib"])?;
    if host_only {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "the root tests (BPF_PROG_TEST_RUN fixtures, network namespaces) need root: \
             run `sudo scripts/test`, or `cargo xtask test --host-only` for the host tests alone"
        );
    }
    cargo(&["build", "--package", "lb-userspace"])?;
    cargo(&["test", "--package", "sluice-tests", "--", "--test-threads", "2"])
}

fn demo(keep: bool, cluster: bool) -> Result<()> {
    if !is_root() {
        bail!("the demo makes network namespaces and attaches XDP: run it as root");
    }
    cargo(&["build", "--package", "lb-userspace"])?;
    let mut args = vec!["run", "--quiet", "--package", "sluice-tests", "--bin", "sluice-demo", "--"];
    if keep {
        args.push("--keep");
    }
    if cluster {
        args.push("--cluster");
    }
    println!("==> cargo {}", args.join(" "));
    let status = Command::new(env!("CARGO")).args(&args).status().context("running cargo")?;
    // Ctrl-C: the demo tore itself down and said so; end as interrupted, without an error.
    if status.code() == Some(130) || std::os::unix::process::ExitStatusExt::signal(&status) == Some(2) {
        std::process::exit(130);
    }
    if !status.success() {
        bail!("the demo failed ({status})");
    }
    Ok(())
}

fn bench(what: &str) -> Result<()> {
    if !is_root() {
        bail!("benchmarks load XDP programs and make namespaces: run them as root");
    }
    // Benchmarks measure the lbd that ships (the `dist` profile).
    cargo(&["build", "--profile", "dist", "--package", "lb-userspace"])?;
    let bin_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/dist");
    let args =
        ["run", "--quiet", "--release", "--package", "sluice-tests", "--bin", "sluice-bench", "--", what];
    println!("==> SLUICE_BIN_DIR={bin_dir} cargo {}", args.join(" "));
    let status = Command::new(env!("CARGO")).args(args).env("SLUICE_BIN_DIR", bin_dir).status()?;
    if !status.success() {
        bail!("bench {what} failed ({status})");
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Test { host_only } => test(host_only),
        Task::Demo { keep, cluster } => demo(keep, cluster),
        Task::Bench { what } => bench(&what),
        Task::Deb { bin_dir, out } => deb::deb(bin_dir, out).map(|_| ()),
    }
}
