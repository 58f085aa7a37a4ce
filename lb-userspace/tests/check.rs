//! `lbd check` on broken configs: exit 1, every expected `file:line: message` printed, nothing
//! touched; and OK with exit 0 on the shipped configs.
use std::process::Command;

/// `lo` exists in every network namespace.
const BASE: &str = "[dataplane]\ninterface = \"lo\"\n";

/// Runs `lbd check -c` on `text`: (exit code, stdout).
fn check(name: &str, text: &str) -> (i32, String) {
    check_with_files(name, text, &[])
}

/// [`check`] with files (certificates) beside the config.
fn check_with_files(name: &str, text: &str, files: &[&str]) -> (i32, String) {
    let dir = std::env::temp_dir().join(format!("sluice-check-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for file in files {
        std::fs::write(dir.join(file), "placeholder").unwrap();
    }
    let file = dir.join("sluice.toml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lbd")).args(["check", "-c"]).arg(&file).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).replace(&file.display().to_string(), "FILE");
    std::fs::remove_dir_all(&dir).unwrap();
    (out.status.code().unwrap_or(-1), stdout)
}

fn pool(backends: &str) -> String {
    format!("[[pool]]\nname = \"web\"\nbackends = [{backends}]\n")
}

const VIP: &str =
    "[[vip]]\nname = \"web\"\naddress = \"198.19.0.1\"\nport = 80\nprotocol = \"tcp\"\npool = \"web\"\n";

#[test]
fn broken_configs_are_refused_with_file_line_and_reason() {
    let cases: Vec<(&str, String, &str)> = vec![
        ("syntax", "[dataplane\n".into(), "FILE:1: "),
        ("unknown-key", format!("{BASE}colour = \"blue\"\n"), "FILE:3: unknown field `colour`"),
        ("missing-interface", "[dataplane]\nxdp_mode = \"native\"\n".into(), "missing field `interface`"),
        ("bad-mode", format!("{BASE}xdp_mode = \"turbo\"\n"), "FILE:3: unknown variant `turbo`"),
        (
            "bad-mac",
            format!("{BASE}next_hop_mac = \"zz:00:00:00:00:00\"\n"),
            "FILE:3: `zz:00:00:00:00:00` is not \"auto\"",
        ),
        ("undefined-pool", format!("{BASE}{VIP}"), "FILE:8: VIP `web` uses pool `web`, which is not defined"),
        (
            "bad-address",
            format!("{BASE}{VIP}{}", pool("{ address = \"10.0.0.256\" }")),
            "FILE:11: `10.0.0.256` is not an IP address",
        ),
        (
            "duplicate-backend",
            format!("{BASE}{VIP}{}", pool("{ address = \"10.0.0.1\" }, { address = \"10.0.0.1\" }")),
            "backend 10.0.0.1 is listed twice",
        ),
        (
            "weight",
            format!("{BASE}{VIP}{}", pool("{ address = \"10.0.0.1\", weight = 100000 }")),
            "weight must be 0 (drained) to 65535",
        ),
        ("duplicate-vip", format!("{BASE}{VIP}{VIP}{}", pool("")), "VIP `web` is defined twice"),
        (
            "v6-vip-v4-backend",
            format!("{BASE}{}{}", VIP.replace("198.19.0.1", "fd00::1"), pool("{ address = \"10.0.0.1\" }")),
            "IPv6 VIP `web` cannot reach IPv4 backend",
        ),
        (
            "deny-host-bits",
            format!("{BASE}[deny]\nprefixes = [\"10.1.2.3/8\"]\n"),
            "FILE:4: `10.1.2.3/8` has host bits set",
        ),
        ("pin-dir", format!("{BASE}pin_dir = \"/tmp/pins\"\n"), "FILE:3: pin_dir must be under /sys/fs/bpf"),
        (
            "health",
            format!(
                "{BASE}{VIP}[[pool]]\nname = \"web\"\nhealth = {{ kind = \"tcp\", port = 80, timeout_ms = 5000, interval_ms = 1000 }}\n"
            ),
            "timeout_ms must be above 0 and below interval_ms",
        ),
        (
            "metrics",
            format!("{BASE}[admin]\nmetrics = \"localhost\"\n"),
            "FILE:4: `localhost` is not an address:port",
        ),
        (
            "no-such-interface",
            "[dataplane]\n\ninterface = \"nosuch0\"\n".into(),
            "FILE:3: interface `nosuch0` does not exist",
        ),
    ];
    assert!(cases.len() >= 10);
    for (name, text, expected) in cases {
        let (code, out) = check(name, &text);
        assert_eq!(code, 1, "{name}: exit code, output:\n{out}");
        assert!(out.contains(expected), "{name}: expected `{expected}` in:\n{out}");
    }
}

#[test]
fn every_error_is_reported_at_once() {
    let text = format!(
        "{BASE}xdp_mode = \"native\"\npin_dir = \"/tmp/x\"\nnext_hop_mac = \"nope\"\n[deny]\nprefixes = [\"1.2.3.4/8\"]\n"
    );
    let (code, out) = check("many", &text);
    assert_eq!((code, out.lines().count()), (1, 3), "{out}");
}

#[test]
fn shipped_configs_are_ok() {
    for file in ["demo.toml", "sluice.toml"] {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/").to_owned() + file;
        // They name eth0, which this machine may not have: check them on lo.
        let text =
            std::fs::read_to_string(&path).unwrap().replace("interface = \"eth0\"", "interface = \"lo\"");
        // demo.toml names certificates beside it (scripts/demo makes them); check reads files only.
        assert_eq!(
            check_with_files(file, &text, &["site.pem", "site.key"]),
            (0, "OK\n".to_owned()),
            "{file}"
        );
    }
}
