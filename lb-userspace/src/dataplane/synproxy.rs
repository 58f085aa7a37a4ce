//! The netfilter half of SYN cookies for L7 VIPs (`syn_cookies = true`): XDP answers SYNs with
//! cookies and passes up only ACKs with a valid one (lb_ebpf's `synproxy`); netfilter's
//! SYNPROXY target then checks the cookie again, opens the real connection to lbd's listener
//! and translates sequence numbers for the connection's life (conntrack). SYNs that reach the
//! stack (IP options, VLAN tags, no XDP) are answered by SYNPROXY itself.
//!
//! The rules are iptables' and ip6tables' (their nftables-backed `-nft` tools on Debian), not
//! an nftables `synproxy` statement: on the tested kernel (6.18) that statement drops IPv6
//! packets whose checksum the stack verifies in software (it checks them as IPv4), while the
//! xtables target checks each family its own way. lbd owns one chain, `SLUICE_SYNPROXY`, in
//! the raw table (SYNs not tracked) and in the filter table (SYNPROXY, then drop what is still
//! invalid), per family, jumped to from PREROUTING and INPUT; a family's chain is rewritten
//! whole in one `-restore --noflush` when its VIPs change. Conntrack must not pick up a
//! connection it has not seen open (`nf_conntrack_tcp_loose = 0`), or the ACK would bypass
//! SYNPROXY: lbd sets it. The chains stay when lbd stops (open connections need them) and go
//! when a change leaves a family with no VIP asking for cookies; an lbd started without such
//! VIPs touches nothing, so after a restart without them `iptables -t raw -D PREROUTING -j
//! SLUICE_SYNPROXY` and friends (operations.md) remove what an earlier run left.
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

/// The chain lbd owns in the raw and filter tables of each family.
pub const CHAIN: &str = "SLUICE_SYNPROXY";
/// How long one tool run may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(5);
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

/// An address family's tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn tool(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    fn has(self, addr: &IpAddr) -> bool {
        addr.is_ipv4() == (self == Family::V4)
    }
}

/// The `-restore --noflush` input that makes the family's chains hold exactly the rules of
/// `vips` (those of the family).
fn render(family: Family, vips: &CookieVips) -> String {
    let (mut raw, mut filter) = (String::new(), String::new());
    for (addr, port) in vips.iter().filter(|(a, _)| family.has(a)) {
        let mss = if addr.is_ipv4() { SYN_COOKIE_MSS } else { SYN_COOKIE_MSS6 };
        let vip = format!("-d {addr} -p tcp --dport {port}");
        raw.push_str(&format!("-A {CHAIN} {vip} --syn -j CT --notrack\n"));
        filter.push_str(&format!(
            "-A {CHAIN} {vip} -m conntrack --ctstate INVALID,UNTRACKED -j SYNPROXY --sack-perm --timestamp \
             --wscale {SYN_COOKIE_WSCALE} --mss {mss}\n\
             -A {CHAIN} {vip} -m conntrack --ctstate INVALID -j DROP\n"
        ));
    }
    format!(
        "*raw\n:{CHAIN} - [0:0]\n-F {CHAIN}\n{raw}COMMIT\n*filter\n:{CHAIN} - [0:0]\n-F {CHAIN}\n{filter}COMMIT\n"
    )
}

/// Keeps the host's SYNPROXY rules in step with the VIPs.
#[derive(Default)]
pub struct Rules {
    /// What the chains hold; None until lbd has written them once.
    applied: Option<CookieVips>,
    /// A write failed part way: what the chains hold is not known, so the next sync rewrites
    /// (or removes) both families' (the rollback after a failed change must not stop at the
    /// family that was already written).
    unknown: bool,
}

impl Rules {
    /// Makes the chains hold `vips`' rules; returns a line when they changed. With no VIP
    /// asking for cookies from the start, netfilter is not touched.
    pub fn sync(&mut self, vips: &CookieVips) -> Result<Option<String>> {
        let before = self.applied.clone().unwrap_or_default();
        let known = !self.unknown;
        if known && (self.applied.as_ref() == Some(vips) || (self.applied.is_none() && vips.is_empty())) {
            self.applied = Some(vips.clone());
            return Ok(None);
        }
        // Until every step below has succeeded, what the chains hold is not known.
        self.unknown = true;
        for family in [Family::V4, Family::V6] {
            let of =
                |set: &CookieVips| set.iter().filter(|(a, _)| family.has(a)).copied().collect::<Vec<_>>();
            let (was, now) = (of(&before), of(vips));
            if known && self.applied.is_some() && was == now {
                continue;
            }
            if !now.is_empty() {
                write_chains(family, vips)?;
            } else if !was.is_empty() || !known {
                remove_chains(family);
            }
        }
        if !vips.is_empty() && std::fs::read_to_string(LOOSE_SYSCTL).unwrap_or_default().trim() != "0" {
            std::fs::write(LOOSE_SYSCTL, "0").map_err(|error| DataplaneError::Io {
                doing: format!("setting {LOOSE_SYSCTL} to 0 (SYN cookies need it)"),
                error,
            })?;
        }
        self.applied = Some(vips.clone());
        self.unknown = false;
        Ok(Some(match vips.is_empty() {
            true => "SYN cookies: SYNPROXY rules removed".to_owned(),
            false => {
                let list: Vec<String> = vips.iter().map(|(a, p)| format!("{a}:{p}")).collect();
                format!("SYN cookies: SYNPROXY for {}", list.join(", "))
            }
        }))
    }
}

/// Rewrites the family's chains and makes sure PREROUTING (raw) and INPUT (filter) jump to them.
fn write_chains(family: Family, vips: &CookieVips) -> Result<()> {
    let restore = format!("{}-restore", family.tool());
    run(&restore, &["--noflush"], Some(&render(family, vips)))?;
    for (table, hook) in [("raw", "PREROUTING"), ("filter", "INPUT")] {
        if run(family.tool(), &["-t", table, "-C", hook, "-j", CHAIN], None).is_err() {
            run(family.tool(), &["-t", table, "-I", hook, "-j", CHAIN], None)?;
        }
    }
    Ok(())
}

/// Removes the family's jumps and chains; what is already gone is no error.
fn remove_chains(family: Family) {
    for (table, hook) in [("raw", "PREROUTING"), ("filter", "INPUT")] {
        while run(family.tool(), &["-t", table, "-D", hook, "-j", CHAIN], None).is_ok() {}
        let _ = run(family.tool(), &["-t", table, "-F", CHAIN], None);
        let _ = run(family.tool(), &["-t", table, "-X", CHAIN], None);
    }
}

/// Runs `tool args` (with `input` on its stdin) within TOOL_TIMEOUT.
fn run(tool: &str, args: &[&str], input: Option<&str>) -> Result<()> {
    let failed = |error: std::io::Error| DataplaneError::Io {
        doing: format!("running {tool} (SYN cookies need iptables: apt install iptables)"),
        error,
    };
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(failed)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.unwrap_or_default().as_bytes()).map_err(failed)?;
    }
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(failed)? {
            if status.success() {
                return Ok(());
            }
            let mut said = String::new();
            if let Some(mut stderr) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut stderr, &mut said);
            }
            return Err(DataplaneError::Unexpected(format!(
                "{tool} {} refused the SYN cookie rules: {}",
                args.join(" "),
                said.trim()
            )));
        }
        if started.elapsed() > TOOL_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(DataplaneError::Unexpected(format!("{tool} did not finish within {TOOL_TIMEOUT:?}")));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vips() -> CookieVips {
        [("198.19.0.3".parse().unwrap(), 80), ("fd00:5e:100::3".parse().unwrap(), 443)].into()
    }

    #[test]
    fn each_family_gets_its_vips_with_the_xdp_answers_mss_and_scale() {
        assert_eq!(
            render(Family::V4, &vips()),
            "*raw\n:SLUICE_SYNPROXY - [0:0]\n-F SLUICE_SYNPROXY\n\
             -A SLUICE_SYNPROXY -d 198.19.0.3 -p tcp --dport 80 --syn -j CT --notrack\nCOMMIT\n\
             *filter\n:SLUICE_SYNPROXY - [0:0]\n-F SLUICE_SYNPROXY\n\
             -A SLUICE_SYNPROXY -d 198.19.0.3 -p tcp --dport 80 -m conntrack --ctstate INVALID,UNTRACKED \
             -j SYNPROXY --sack-perm --timestamp --wscale 7 --mss 1460\n\
             -A SLUICE_SYNPROXY -d 198.19.0.3 -p tcp --dport 80 -m conntrack --ctstate INVALID -j DROP\nCOMMIT\n"
        );
        let v6 = render(Family::V6, &vips());
        assert!(v6.contains("-d fd00:5e:100::3 -p tcp --dport 443 -m conntrack --ctstate INVALID,UNTRACKED"));
        assert!(v6.contains("--mss 1440\n") && !v6.contains("198.19.0.3"), "{v6}");
    }

    #[test]
    fn a_family_without_vips_gets_empty_chains() {
        let v4_only: CookieVips = [("198.19.0.3".parse().unwrap(), 80)].into();
        assert_eq!(
            render(Family::V6, &v4_only),
            "*raw\n:SLUICE_SYNPROXY - [0:0]\n-F SLUICE_SYNPROXY\nCOMMIT\n*filter\n:SLUICE_SYNPROXY - [0:0]\n-F SLUICE_SYNPROXY\nCOMMIT\n"
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
