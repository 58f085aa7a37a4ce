//! Project tasks: `cargo xtask test | demo | bench | fuzz | deb`.
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
    /// Coverage-guided fuzzing (cargo-fuzz, libFuzzer with AddressSanitizer) of the HTTP/1.1
    /// engine's parsers and the path's canonical form, against the properties the mutation
    /// tests check (`lb-userspace/src/proxy/h1/properties.rs`). Not part of `test`: it runs
    /// as long as it is given. A failing input is left in fuzz/artifacts/TARGET/.
    Fuzz {
        /// One target (a file name in fuzz/fuzz_targets/, without `.rs`); all of them if left out.
        target: Option<String>,
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
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

/// The cargo-fuzz release `fuzz` installs when it is missing.
const CARGO_FUZZ: &str = "0.13.2";

fn fuzz(target: Option<String>, seconds: u64) -> Result<()> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz"));
    let targets = match target {
        Some(target) => vec![target],
        None => {
            let mut all: Vec<String> = std::fs::read_dir(dir.join("fuzz_targets"))?
                .filter_map(|e| Some(e.ok()?.path().file_stem()?.to_str()?.to_owned()))
                .collect();
            all.sort();
            all
        }
    };
    let installed = Command::new(env!("CARGO")).args(["fuzz", "--version"]).output();
    if !installed.is_ok_and(|o| o.status.success()) {
        cargo(&["install", "--locked", "--version", CARGO_FUZZ, "cargo-fuzz"])?;
    }
    for target in &targets {
        let (corpus, seeds) = (format!("corpus/{target}"), format!("seeds/{target}"));
        std::fs::create_dir_all(dir.join(&corpus))?;
        let time = format!("-max_total_time={seconds}");
        let args = ["fuzz", "run", target.as_str(), &corpus, &seeds, "--", &time, "-max_len=4096"];
        println!("==> (in fuzz/) cargo {}", args.join(" "));
        // The pinned stable compiler, let use `-Zsanitizer=address` by RUSTC_BOOTSTRAP: no
        // nightly to install (the eBPF build's nightly is older than aya's minimum Rust).
        let status =
            Command::new(env!("CARGO")).args(args).current_dir(&dir).env("RUSTC_BOOTSTRAP", "1").status()?;
        if !status.success() {
            bail!("fuzz target {target} failed ({status}): its input is in fuzz/artifacts/{target}/");
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Test { host_only } => test(host_only),
        Task::Demo { keep, cluster } => demo(keep, cluster),
        Task::Bench { what } => bench(&what),
        Task::Fuzz { target, seconds } => fuzz(target, seconds),
        Task::Deb { bin_dir, out } => deb::deb(bin_dir, out).map(|_| ()),
    }
}
