//! Root test of the Debian package (`cargo xtask deb`): lintian finds no error, `dpkg -i`
//! puts every file in place, the shipped config passes `lbd check`, `man lbd` renders, and
//! `dpkg -r` / `dpkg -P` take it all away again.
use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, ensure};
use sluice_tests::servers::TempDir;

fn run(program: &str, args: &[&str]) -> Result<std::process::Output> {
    Command::new(program).args(args).output().with_context(|| format!("running {program}"))
}

fn installed() -> bool {
    run("dpkg-query", &["-W", "-f=${Status}", "sluice"])
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("installed"))
}

/// Purges the package whatever happens to the test.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = run("dpkg", &["--purge", "sluice"]);
    }
}

#[test]
fn root_deb_installs_checks_and_removes_cleanly() -> Result<()> {
    ensure!(
        !installed(),
        "a sluice package is installed on this machine already: this test would replace it"
    );
    let dir = TempDir::new("deb")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = dir.0.to_str().context("path")?;
    // The binaries the other root tests run, packaged as they are (no build beside the tests).
    let bins = sluice_tests::bin_dir();
    let bins = bins.to_str().context("path")?;
    let built =
        run(&cargo, &["run", "--quiet", "--package", "xtask", "--", "deb", "--bin-dir", bins, "--out", out])?;
    ensure!(built.status.success(), "cargo xtask deb: {}", String::from_utf8_lossy(&built.stderr));
    let package =
        String::from_utf8_lossy(&built.stdout).lines().last().context("no package path")?.to_owned();

    // lintian: no error; the warnings are printed (and named in docs/operations.md).
    let lint = run("lintian", &["--tag-display-limit", "0", &package])?;
    let said = String::from_utf8_lossy(&lint.stdout).into_owned();
    println!("lintian:\n{said}");
    ensure!(lint.status.success() && !said.lines().any(|l| l.starts_with("E:")), "lintian errors:\n{said}");

    let _purge = Purge;
    let install = run("dpkg", &["-i", &package])?;
    ensure!(install.status.success(), "dpkg -i: {}", String::from_utf8_lossy(&install.stderr));
    let listed = String::from_utf8_lossy(&run("dpkg", &["-L", "sluice"])?.stdout).into_owned();
    for wanted in [
        "/usr/bin/lbd",
        "/usr/bin/lbctl",
        "/lib/systemd/system/sluice.service",
        "/lib/systemd/system/sys-fs-bpf.mount",
        "/etc/sluice/sluice.toml",
        "/usr/share/doc/sluice/operations.md",
        "/usr/share/doc/sluice/copyright",
        "/usr/share/man/man1/lbd.1.gz",
        "/usr/share/man/man1/lbctl-upgrade.1.gz",
        "/usr/share/bash-completion/completions/lbctl",
        "/usr/share/zsh/vendor-completions/_lbd",
    ] {
        ensure!(listed.lines().any(|l| l == wanted), "{wanted} is not in the package:\n{listed}");
    }
    for path in listed.lines().filter(|l| l.starts_with('/')) {
        ensure!(Path::new(path).exists(), "{path} is listed but not on disk");
    }
    let unit = std::fs::read_to_string("/lib/systemd/system/sluice.service")?;
    ensure!(unit.contains("ExecStart=/usr/bin/lbd run -c /etc/sluice/sluice.toml"), "{unit}");

    let check = run("/usr/bin/lbd", &["check", "-c", "/etc/sluice/sluice.toml"])?;
    ensure!(
        check.status.success(),
        "lbd check of the shipped config: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let man = Command::new("man").arg("lbd").env("MANPAGER", "cat").env("MANWIDTH", "80").output()?;
    let page = String::from_utf8_lossy(&man.stdout);
    ensure!(man.status.success() && page.contains("lbd - Sluice load balancer daemon"), "man lbd:\n{page}");
    let version = run("/usr/bin/lbctl", &["--version"])?;
    ensure!(String::from_utf8_lossy(&version.stdout).starts_with("lbctl "), "lbctl --version");

    // Remove: the binaries go, the conffile stays until purge.
    let remove = run("dpkg", &["-r", "sluice"])?;
    ensure!(remove.status.success(), "dpkg -r: {}", String::from_utf8_lossy(&remove.stderr));
    ensure!(!Path::new("/usr/bin/lbd").exists() && !Path::new("/usr/share/man/man1/lbd.1.gz").exists());
    ensure!(Path::new("/etc/sluice/sluice.toml").exists(), "dpkg -r must keep the conffile");
    let purge = run("dpkg", &["-P", "sluice"])?;
    ensure!(purge.status.success(), "dpkg -P: {}", String::from_utf8_lossy(&purge.stderr));
    ensure!(
        !Path::new("/etc/sluice/sluice.toml").exists() && !installed(),
        "dpkg -P left the package behind"
    );
    Ok(())
}
