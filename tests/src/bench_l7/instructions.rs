//! `cargo xtask bench l7-instructions`: lbd's user-space instructions per request, counted by
//! callgrind. The count is the same run to run within a few tenths of a percent, where this VM's
//! rates move by 10–30%, so it resolves a change of 1% to the request path that no rate can.
//! It counts no kernel time (half or more of a request's CPU here): a change to system calls or
//! to how writes are batched shows in `bench l7`, not here. With `SLUICE_BENCH_BASELINE`, an
//! earlier lbd is counted beside this one. `SLUICE_BENCH_MODES` picks modes as in `bench l7`;
//! `SLUICE_BENCH_DUMPS=DIR` keeps callgrind's dumps there for `callgrind_annotate`.
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{Bed, chosen_modes, in_ns, sluice_config, spawn, wait_port};
use crate::netns::run;

/// Requests before the count starts (connections made, pools and caches warm).
const WARM_UP: usize = 2_000;
/// Requests counted.
const COUNTED: usize = 20_000;
/// The modes: h2load's arguments beyond the common ones, and the URL.
const MODES: [(&str, &[&str], &str); 3] = [
    ("http1-keepalive", &["--h1"], "http://127.0.0.1:9080/"),
    ("tls-keepalive", &["--h1"], "https://127.0.0.1:9443/"),
    ("h2", &["-m10"], "https://127.0.0.1:9443/"),
];

/// `requests` requests over 16 connections from CPU 1; fails unless every one succeeded.
fn load(extra: &[&str], url: &str, requests: usize) -> Result<()> {
    let n = requests.to_string();
    let mut args = vec!["-t1", "-c16", "-n", &n];
    args.extend_from_slice(extra);
    args.push(url);
    let out = in_ns("1", "h2load", &args).output().context("running h2load")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let done = format!("{requests} succeeded");
    if !text.contains(&done) {
        bail!("h2load: not all {requests} requests succeeded: {text}");
    }
    Ok(())
}

/// The total of a callgrind dump's counts (its `summary:` or `totals:` line).
fn dump_total(path: &Path) -> Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("summary:").or_else(|| l.strip_prefix("totals:")))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no totals in {}", path.display()))
}

/// Instructions per counted request of lbd `bin` under callgrind in one mode.
fn count(
    name: &str,
    bin: &Path,
    conf: &Path,
    dir: &Path,
    (mode, extra, url): (&str, &[&str], &str),
) -> Result<f64> {
    let out_arg = format!("--callgrind-out-file={}", dir.join("callgrind.%p").display());
    let (bin, conf) = (bin.to_str().context("path")?, conf.to_str().context("path")?);
    // nsenter and taskset exec what they start: the child's pid is callgrind's.
    let lbd = spawn("0", "valgrind", &[&out_arg, "--tool=callgrind", bin, "run", "-c", conf])
        .context("apt install valgrind")?;
    let pid = lbd.0.id().to_string();
    // lbd starts ~50 times slower under callgrind.
    let started = Instant::now();
    while wait_port(9443).is_err() {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("lbd under callgrind did not listen within 60 s");
        }
    }
    load(extra, url, WARM_UP)?;
    run("callgrind_control", &["-z", &pid])?;
    load(extra, url, COUNTED)?;
    run("callgrind_control", &["-d", &pid])?;
    drop(lbd);
    let dump = dir.join(format!("callgrind.{pid}.1"));
    let total = dump_total(&dump)?;
    if let Some(keep) = std::env::var_os("SLUICE_BENCH_DUMPS") {
        let kept = Path::new(&keep).join(format!("callgrind.{name}.{mode}"));
        std::fs::copy(&dump, kept).context("SLUICE_BENCH_DUMPS")?;
    }
    Ok(total as f64 / COUNTED as f64)
}

/// Counts lbd (and the baseline, if set) in every mode and prints the table.
pub fn run_instructions() -> Result<()> {
    let bed = Bed::new("bench-l7-ir")?;
    let dir = &bed.dir;
    // L7 only, and no busy polling: its spinning between requests would be counted.
    let conf = dir.0.join("sluice.toml");
    std::fs::write(&conf, sluice_config(&dir.0, &bed.cert, &bed.key, Some(0), false, false, false))?;
    let mut lbds: Vec<(&str, PathBuf)> = vec![("sluice", crate::bin_dir().join("lbd"))];
    if let Some(baseline) = std::env::var_os("SLUICE_BENCH_BASELINE") {
        lbds.push(("sluice-base", PathBuf::from(baseline)));
    }
    println!(
        "cargo xtask bench l7-instructions: lbd's user-space instructions per request (callgrind), \
         {COUNTED} requests counted after {WARM_UP}, h2load -t1 -c16 from CPU 1"
    );
    print!("{:<17}", "mode");
    for (name, _) in &lbds {
        print!(" {name:>12}");
    }
    println!("{}", if lbds.len() > 1 { "   sluice/sluice-base" } else { "" });
    // `bench l7`'s reading of SLUICE_BENCH_MODES (a name it does not know is an error); its
    // modes this bench has no count for (new handshakes, idle memory) are left out.
    let (chosen, _) = chosen_modes()?;
    for mode in MODES.into_iter().filter(|m| chosen.contains(&m.0)) {
        let mut counts = Vec::new();
        for (name, bin) in &lbds {
            counts.push(count(name, bin, &conf, &dir.0, mode)?);
        }
        print!("{:<17}", mode.0);
        for c in &counts {
            print!(" {c:>12.0}");
        }
        match counts.as_slice() {
            [new, base] => println!("   {:.3}x", new / base),
            _ => println!(),
        }
    }
    Ok(())
}
