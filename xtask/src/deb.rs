//! `cargo xtask deb`: the Debian package. lbd and lbctl in /usr/bin, the hardened unit and a
//! bpffs mount unit, /etc/sluice/sluice.toml as a conffile (the full example, commented out:
//! it passes `lbd check` and attaches nowhere until edited), the docs, man pages and bash/zsh
//! completions generated from the clap definitions (`lbd generate`, `lbctl generate`).
//!
//! Built with `dpkg-deb` from a staged tree rather than `cargo-deb`: the layout is this file,
//! and CI need not build one more tool (cargo-deb compiles for about two minutes here).
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const VERSION: &str = env!("CARGO_PKG_VERSION");
const DOCS: &[&str] = &[
    "architecture.md",
    "config.md",
    "datapath.md",
    "operations.md",
    "performance.md",
    "performance-l7-log.md",
];

/// Runs `program args`, failing with its stderr.
fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// `gzip -9n` of `path` in place (Debian wants man pages and changelogs compressed, without
/// a timestamp).
fn gzip(path: &Path) -> Result<()> {
    run("gzip", &["-9nf", path.to_str().context("path")?])?;
    Ok(())
}

/// The package's config: the full example commented out, and only the admin socket active.
fn conffile() -> Result<String> {
    let example = fs::read_to_string(Path::new(ROOT).join("config/sluice.toml"))?;
    let mut text = String::from(
        "# /etc/sluice/sluice.toml: lbd's config. As shipped lbd attaches nowhere and serves only\n\
         # its admin socket. Edit it (every key: /usr/share/doc/sluice/config.md), check it with\n\
         # `lbd check`, then `systemctl enable --now sluice`. A full example, commented out:\n#\n",
    );
    for line in example.lines() {
        text.push_str(if line.is_empty() { "#" } else { "# " });
        text.push_str(line);
        text.push('\n');
    }
    text.push_str("\n[admin]\nsocket = \"/run/sluice/lbd.sock\"\n");
    Ok(text)
}

/// The lowest glibc the binaries need, from their versioned symbols.
fn glibc_needed(binaries: &[PathBuf]) -> String {
    let mut best = (2u32, 34u32);
    for binary in binaries {
        let Ok(symbols) = run("objdump", &["-T", binary.to_str().unwrap_or_default()]) else { continue };
        for version in
            symbols.split_whitespace().filter_map(|w| w.strip_prefix("(GLIBC_").or(w.strip_prefix("GLIBC_")))
        {
            let mut parts = version.trim_end_matches(')').split('.').map(|p| p.parse::<u32>().unwrap_or(0));
            let v = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
            best = best.max(v);
        }
    }
    format!("{}.{}", best.0, best.1)
}

const MOUNT_UNIT: &str = "[Unit]
Description=BPF file system for Sluice's pinned XDP programs and maps
Documentation=file:///usr/share/doc/sluice/operations.md
DefaultDependencies=no
Before=sluice.service

[Mount]
What=bpffs
Where=/sys/fs/bpf
Type=bpf
Options=mode=0700

[Install]
WantedBy=multi-user.target
";

const POSTINST: &str = "#!/bin/sh
set -e
if [ \"$1\" = configure ] && [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
";

const PRERM: &str = "#!/bin/sh
set -e
# Stopping lbd leaves the XDP program attached (by design: forwarding survives restarts);
# `lbd stop --detach` removes it.
if [ \"$1\" = remove ] && [ -d /run/systemd/system ]; then
    deb-systemd-invoke stop sluice.service >/dev/null || true
fi
";

const POSTRM: &str = "#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
# The unit's StateDirectory (ACME accounts and certificates) goes with a purge only.
if [ \"$1\" = purge ]; then
    rm -rf /var/lib/sluice
fi
";

/// Builds the package into `out` (default target/deb) from the `dist` binaries, built first,
/// or from the binaries already in `bin_dir` (the tests package the very binaries they run);
/// returns its path.
pub fn deb(bin_dir: Option<PathBuf>, out: Option<PathBuf>) -> Result<PathBuf> {
    let bins = match bin_dir {
        Some(dir) => dir,
        None => {
            crate::cargo(&["build", "--profile", "dist", "--package", "lb-userspace", "--bins"])?;
            Path::new(ROOT).join("target/dist")
        }
    };
    let arch = run("dpkg", &["--print-architecture"])?.trim().to_owned();
    let out = match out {
        Some(out) => out,
        None => fs::canonicalize(ROOT)?.join("target/deb"),
    };
    let stage = out.join(format!("sluice_{VERSION}_{arch}"));
    let _ = fs::remove_dir_all(&stage);
    fs::create_dir_all(&stage)?;
    let installed = stage_binaries(&bins, &stage)?;
    stage_config(&stage)?;
    stage_docs(&stage)?;
    stage_manuals(&stage, &installed)?;
    stage_control(&stage, &arch, &installed)?;
    let package = out.join(format!("sluice_{VERSION}_{arch}.deb"));
    run(
        "dpkg-deb",
        &[
            "--root-owner-group",
            "-Zxz",
            "--build",
            stage.to_str().context("path")?,
            package.to_str().context("path")?,
        ],
    )?;
    if !package.exists() {
        bail!("dpkg-deb made no {}", package.display());
    }
    println!("{}", package.display());
    Ok(package)
}

/// lbd and lbctl into usr/bin, stripped; gives their staged paths.
fn stage_binaries(bins: &Path, stage: &Path) -> Result<Vec<PathBuf>> {
    let bin_dir = stage.join("usr/bin");
    fs::create_dir_all(&bin_dir)?;
    let mut installed = Vec::new();
    for name in ["lbd", "lbctl"] {
        let to = bin_dir.join(name);
        fs::copy(bins.join(name), &to).with_context(|| format!("copying {name} from {}", bins.display()))?;
        fs::set_permissions(&to, fs::Permissions::from_mode(0o755))?;
        run(
            "strip",
            &[
                "--strip-unneeded",
                "--remove-section=.comment",
                "--remove-section=.note",
                to.to_str().context("path")?,
            ],
        )?;
        installed.push(to);
    }
    Ok(installed)
}

/// The systemd units (the repository's, with the packaged paths) and the config file.
fn stage_config(stage: &Path) -> Result<()> {
    let unit = fs::read_to_string(Path::new(ROOT).join("config/sluice.service"))?
        .replace("/usr/local/bin/", "/usr/bin/")
        .replace("After=network-online.target", "After=network-online.target sys-fs-bpf.mount")
        .replace("Wants=network-online.target", "Wants=network-online.target sys-fs-bpf.mount");
    write(&stage.join("lib/systemd/system/sluice.service"), &unit, 0o644)?;
    write(&stage.join("lib/systemd/system/sys-fs-bpf.mount"), MOUNT_UNIT, 0o644)?;
    // 0640: operators put JWT secrets and key paths here (lintian warns: non-standard-file-perm).
    write(&stage.join("etc/sluice/sluice.toml"), &conffile()?, 0o640)
}

/// Docs, copyright and changelog (a native package's: changelog.gz).
fn stage_docs(stage: &Path) -> Result<()> {
    let doc = stage.join("usr/share/doc/sluice");
    fs::create_dir_all(&doc)?;
    fs::copy(Path::new(ROOT).join("README.md"), doc.join("README.md"))?;
    for name in DOCS {
        fs::copy(Path::new(ROOT).join("docs").join(name), doc.join(name))?;
    }
    write(
        &doc.join("copyright"),
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: sluice\n\n\
         Files: *\nCopyright: 2026 the Sluice developers\nLicense: Apache-2.0\n \
         On Debian systems, the full text of the Apache License 2.0 is in\n \
         /usr/share/common-licenses/Apache-2.0.\n",
        0o644,
    )?;
    let date = run("date", &["-R"])?.trim().to_owned();
    write(
        &doc.join("changelog"),
        &format!(
            "sluice ({VERSION}) unstable; urgency=medium\n\n  * Built by cargo xtask deb.\n\n \
             -- Sluice developers <sluice@example.org>  {date}\n"
        ),
        0o644,
    )?;
    gzip(&doc.join("changelog"))
}

/// Man pages and completions, from the binaries themselves.
fn stage_manuals(stage: &Path, installed: &[PathBuf]) -> Result<()> {
    let man = stage.join("usr/share/man/man1");
    let bash = stage.join("usr/share/bash-completion/completions");
    let zsh = stage.join("usr/share/zsh/vendor-completions");
    for binary in installed {
        let b = binary.to_str().context("path")?;
        run(b, &["generate", "man", man.to_str().context("path")?])?;
        run(b, &["generate", "bash", bash.to_str().context("path")?])?;
        run(b, &["generate", "zsh", zsh.to_str().context("path")?])?;
    }
    for page in fs::read_dir(&man)? {
        let page = page?.path();
        fs::set_permissions(&page, fs::Permissions::from_mode(0o644))?;
        gzip(&page)?;
    }
    for dir in [&bash, &zsh] {
        for file in fs::read_dir(dir)? {
            fs::set_permissions(file?.path(), fs::Permissions::from_mode(0o644))?;
        }
    }
    Ok(())
}

/// DEBIAN/: control (with the installed size and the glibc the binaries need), conffiles,
/// the maintainer scripts and md5sums of every file but the conffile.
fn stage_control(stage: &Path, arch: &str, installed: &[PathBuf]) -> Result<()> {
    let control = stage.join("DEBIAN");
    let size_kib = run("du", &["-sk", "--exclude=DEBIAN", stage.to_str().context("path")?])?
        .split_whitespace()
        .next()
        .unwrap_or("0")
        .to_owned();
    write(
        &control.join("control"),
        &format!(
            "Package: sluice\nVersion: {VERSION}\nArchitecture: {arch}\n\
             Maintainer: Sluice developers <sluice@example.org>\nInstalled-Size: {size_kib}\n\
             Depends: libc6 (>= {glibc}), libgcc-s1\nSuggests: bird2, iptables\nSection: net\nPriority: optional\n\
             Description: kernel-accelerated L4/L7 load balancer\n \
             Sluice balances TCP and UDP in an XDP program (Maglev hashing, a\n \
             connection table, IPIP/IP6IP6 to backends that answer clients\n \
             directly) and terminates TLS, HTTP/1.1 and HTTP/2 in userspace: one\n \
             config, one daemon (lbd) and one CLI (lbctl) for pools, health\n \
             checks, counters, BGP announcements and etcd.\n",
            glibc = glibc_needed(installed),
        ),
        0o644,
    )?;
    write(&control.join("conffiles"), "/etc/sluice/sluice.toml\n", 0o644)?;
    write(&control.join("postinst"), POSTINST, 0o755)?;
    write(&control.join("prerm"), PRERM, 0o755)?;
    write(&control.join("postrm"), POSTRM, 0o755)?;
    let mut files = Vec::new();
    collect(stage, &mut files)?;
    files.retain(|f| !f.starts_with(&control) && !f.starts_with(stage.join("etc")));
    files.sort();
    let mut sums = String::new();
    for file in &files {
        let sum = run("md5sum", &[file.to_str().context("path")?])?;
        let hash = sum.split_whitespace().next().context("md5sum's answer")?;
        let relative = file.strip_prefix(stage)?.display();
        sums.push_str(&format!("{hash}  {relative}\n"));
    }
    write(&control.join("md5sums"), &sums, 0o644)
}

/// Every regular file under `dir`.
fn collect(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, files)?;
        } else {
            files.push(path);
        }
    }
    Ok(())
}
