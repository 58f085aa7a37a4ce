//! The start of an L7 root test's lbd config: the pieces every such bed shares.
use std::net::Ipv4Addr;

/// `[dataplane]` (generic XDP on the lb's `eth0`, maps pinned under `tag`), the VIP `web` at
/// `vip` in L7 mode on every port, and its pool `web` of `backends` with a quick TCP health
/// check (300 ms, up after one pass, down after two failures). Listeners, routes and `[admin]`
/// follow it.
pub fn l7_bed(tag: &str, vip: &str, backends: &[Ipv4Addr]) -> String {
    let backends: Vec<String> = backends.iter().map(|b| format!("{{ address = \"{b}\" }}")).collect();
    format!(
        r#"[dataplane]
interface = "eth0"
xdp_mode = "generic"
pin_dir = "/sys/fs/bpf/{tag}"

[[vip]]
name = "web"
address = "{vip}"
protocol = "tcp"
pool = "web"
mode = "l7"

[[pool]]
name = "web"
backends = [{}]
health = {{ kind = "tcp", port = 80, interval_ms = 300, timeout_ms = 200, rise = 1, fall = 2 }}

"#,
        backends.join(", ")
    )
}
