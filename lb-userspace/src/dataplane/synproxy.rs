//! The nftables half of SYN cookies for L7 VIPs (`syn_cookies = true`): XDP answers SYNs with
//! cookies and passes up only ACKs with a valid one (lb_ebpf's `synproxy`); nftables' SYNPROXY
//! then checks the cookie again, opens the real connection to lbd's listener and translates
//! sequence numbers for the connection's life (conntrack). lbd keeps one table,
//! `inet sluice_synproxy`, holding a rule pair per such VIP, replaced whole in one `nft -f`
//! transaction when the set changes. SYNs that reach the stack (IPv6, IP options, VLAN tags,
//! no XDP) are answered by SYNPROXY itself. Conntrack must not pick up a connection it has not
//! seen open (`nf_conntrack_tcp_loose = 0`), or the ACK would bypass SYNPROXY: lbd sets it.
//! The table stays when lbd stops (open connections need it), and goes when a change leaves
//! no VIP asking for cookies (an lbd started without such VIPs does not touch nftables at all,
//! so a table an earlier run left stays until `nft delete table inet sluice_synproxy`).
use std::{
    collections::BTreeSet,
    io::Write as _,
    net::IpAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use lb_common::{
    syn::{SYN_COOKIE_MSS, SYN_COOKIE_MSS6, SYN_COOKIE_WSCALE},
    vip::{VIP_F_SYN_COOKIES, VipKey},
};

use super::{DataplaneError, Result, tables::ip_of};

/// The nftables table lbd owns.
pub const TABLE: &str = "inet sluice_synproxy";
/// How long `nft` may take.
const NFT_TIMEOUT: Duration = Duration::from_secs(5);
const LOOSE_SYSCTL: &str = "/proc/sys/net/netfilter/nf_conntrack_tcp_loose";

/// The VIPs (address, port) whose SYNs get cookies.
pub type CookieVips = BTreeSet<(IpAddr, u16)>;

/// The VIPs with cookies among `vips` (key and flags, as the maps hold them).
pub fn cookie_vips<'a>(vips: impl IntoIterator<Item = (&'a VipKey, u32)>) -> CookieVips {
    vips.into_iter()
        .filter(|(_, flags)| flags & VIP_F_SYN_COOKIES != 0)
        .map(|(key, _)| (ip_of(&key.addr), u16::from_be(key.port)))
        .collect()
}

/// The `nft -f` script that makes the table hold exactly `vips`' rules (none: no table).
pub fn render(vips: &CookieVips) -> String {
    // Creating the table first makes the delete succeed when it did not exist.
    let mut script = format!("table {TABLE}\ndelete table {TABLE}\n");
    if vips.is_empty() {
        return script;
    }
    let family = |addr: &IpAddr| if addr.is_ipv4() { "ip" } else { "ip6" };
    let mut raw = String::new();
    let mut input = String::new();
    for (addr, port) in vips {
        let vip = format!("{} daddr {addr} tcp dport {port}", family(addr));
        let mss = if addr.is_ipv4() { SYN_COOKIE_MSS } else { SYN_COOKIE_MSS6 };
        raw.push_str(&format!("\t\t{vip} tcp flags syn notrack\n"));
        input.push_str(&format!(
            "\t\t{vip} ct state invalid,untracked synproxy mss {mss} wscale {SYN_COOKIE_WSCALE} timestamp sack-perm\n\
             \t\t{vip} ct state invalid drop\n"
        ));
    }
    script.push_str(&format!(
        "table {TABLE} {{\n\
         \tchain prerouting {{\n\t\ttype filter hook prerouting priority raw; policy accept;\n{raw}\t}}\n\
         \tchain input {{\n\t\ttype filter hook input priority filter; policy accept;\n{input}\t}}\n}}\n"
    ));
    script
}

/// Keeps the host's SYNPROXY rules in step with the VIPs.
#[derive(Default)]
pub struct Rules {
    /// What the table holds; None until lbd has written it once.
    applied: Option<CookieVips>,
}

impl Rules {
    /// Makes the table hold `vips`' rules; returns a line when it changed. With no VIP asking
    /// for cookies from the start, nftables is not touched.
    pub fn sync(&mut self, vips: &CookieVips) -> Result<Option<String>> {
        let first = self.applied.is_none();
        if self.applied.as_ref() == Some(vips) || (first && vips.is_empty()) {
            self.applied = Some(vips.clone());
            return Ok(None);
        }
        nft(&render(vips))?;
        let loose = std::fs::read_to_string(LOOSE_SYSCTL).unwrap_or_default();
        if !vips.is_empty() && loose.trim() != "0" {
            std::fs::write(LOOSE_SYSCTL, "0").map_err(|error| DataplaneError::Io {
                doing: format!("setting {LOOSE_SYSCTL} to 0 (SYN cookies need it)"),
                error,
            })?;
        }
        let line = match vips.is_empty() {
            true => Some("SYN cookies: nftables SYNPROXY rules removed".to_owned()),
            false => {
                let list: Vec<String> = vips.iter().map(|(a, p)| format!("{a}:{p}")).collect();
                Some(format!("SYN cookies: nftables SYNPROXY for {}", list.join(", ")))
            }
        };
        self.applied = Some(vips.clone());
        Ok(line)
    }
}

/// Runs `nft -f -` with `script`, within NFT_TIMEOUT.
fn nft(script: &str) -> Result<()> {
    let failed = |doing: &str, error: std::io::Error| DataplaneError::Io {
        doing: format!("{doing} (SYN cookies need nftables: apt install nftables)"),
        error,
    };
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed("running nft", e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(|e| failed("writing to nft", e))?;
    }
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(|e| failed("waiting for nft", e))? {
            if status.success() {
                return Ok(());
            }
            let mut said = String::new();
            if let Some(mut stderr) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut stderr, &mut said);
            }
            return Err(DataplaneError::Unexpected(format!(
                "nft refused the SYN cookie rules: {}",
                said.trim()
            )));
        }
        if started.elapsed() > NFT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(DataplaneError::Unexpected(format!("nft did not finish within {NFT_TIMEOUT:?}")));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_name_each_vip_with_the_xdp_answers_mss_and_scale() {
        let vips: CookieVips =
            [("198.19.0.3".parse().unwrap(), 80), ("fd00:5e:100::3".parse().unwrap(), 443)].into();
        let script = render(&vips);
        assert_eq!(
            script,
            "table inet sluice_synproxy\ndelete table inet sluice_synproxy\n\
             table inet sluice_synproxy {\n\
             \tchain prerouting {\n\t\ttype filter hook prerouting priority raw; policy accept;\n\
             \t\tip daddr 198.19.0.3 tcp dport 80 tcp flags syn notrack\n\
             \t\tip6 daddr fd00:5e:100::3 tcp dport 443 tcp flags syn notrack\n\t}\n\
             \tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\
             \t\tip daddr 198.19.0.3 tcp dport 80 ct state invalid,untracked synproxy mss 1460 wscale 7 timestamp sack-perm\n\
             \t\tip daddr 198.19.0.3 tcp dport 80 ct state invalid drop\n\
             \t\tip6 daddr fd00:5e:100::3 tcp dport 443 ct state invalid,untracked synproxy mss 1440 wscale 7 timestamp sack-perm\n\
             \t\tip6 daddr fd00:5e:100::3 tcp dport 443 ct state invalid drop\n\t}\n}\n"
        );
    }

    #[test]
    fn no_vip_with_cookies_removes_the_table() {
        assert_eq!(
            render(&CookieVips::new()),
            "table inet sluice_synproxy\ndelete table inet sluice_synproxy\n"
        );
    }

    #[test]
    fn only_vips_flagged_for_cookies_are_listed() {
        let key = |port: u16| VipKey {
            addr: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 19, 0, 3],
            port: port.to_be(),
            proto: 6,
            _pad: 0,
        };
        let (a, b) = (key(80), key(443));
        let vips = cookie_vips([(&a, VIP_F_SYN_COOKIES | 1), (&b, 1)]);
        assert_eq!(vips, [("198.19.0.3".parse().unwrap(), 80)].into());
    }
}
