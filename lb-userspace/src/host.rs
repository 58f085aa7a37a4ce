//! What the config needs from the host, in lbd's network namespace: interface MTU and index,
//! for `next_hop_mac = "auto"` the IPv4 default gateway's MAC from the neighbour table, and
//! whether the outer IPv4 sources share addresses with a subnet on the interface.
use std::{net::Ipv4Addr, path::Path, time::Duration};

use crate::config::{Config, ConfigError, ConfigErrors, NextHop};

/// What the host could not tell.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("no interface {name}: {error}")]
    NoInterface { name: String, error: std::io::Error },
    #[error("{doing}: {error}")]
    Io { doing: String, error: std::io::Error },
    /// A kernel table (/proc/net/route, /proc/net/arp) held a line this code cannot read.
    #[error("unreadable line in {table}: {line:?}")]
    Unreadable { table: &'static str, line: String },
    #[error("no IPv4 default route via {0}: set dataplane.next_hop_mac explicitly")]
    NoDefaultRoute(String),
    #[error("gateway {gateway} on {iface} did not answer ARP: set dataplane.next_hop_mac explicitly")]
    NoArpAnswer { gateway: Ipv4Addr, iface: String },
}

type Result<T, E = HostError> = std::result::Result<T, E>;

fn read_table(table: &'static str) -> Result<String> {
    std::fs::read_to_string(table).map_err(|error| HostError::Io { doing: format!("reading {table}"), error })
}

/// Facts about the host that turn a config into map contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFacts {
    /// MTU of the edge interface: the largest encapsulated packet.
    pub mtu: u32,
    /// The resolved next hop; None: L4 VIP traffic is passed up.
    pub next_hop_mac: Option<[u8; 6]>,
    /// ifindex of `redirect_interface`; 0: XDP_TX.
    pub redirect_ifindex: u32,
}

/// What only the host can tell `lbd check`: the interfaces `config` (read from `file`) names
/// exist in this network namespace.
pub fn check(config: &Config, file: &Path) -> Result<(), ConfigErrors> {
    if !config.dataplane {
        return Ok(());
    }
    let found: Vec<ConfigError> = std::iter::once(&config.interface)
        .chain(&config.redirect_interface)
        .filter(|name| ifindex(name).is_err())
        .map(|name| ConfigError {
            file: file.to_owned(),
            line: config.interface_line,
            message: format!("interface `{name}` does not exist in this network namespace"),
        })
        .collect();
    if found.is_empty() { Ok(()) } else { Err(ConfigErrors(found)) }
}

/// Looks up what `config` refers to on this host.
pub fn facts(config: &Config) -> Result<HostFacts> {
    if !config.dataplane {
        // L7 only: nothing is written to maps.
        return Ok(HostFacts { mtu: 1500, next_hop_mac: None, redirect_ifindex: 0 });
    }
    let next_hop_mac = match config.next_hop_mac {
        NextHop::Unset => None,
        NextHop::Mac(mac) => Some(mac),
        NextHop::Auto => Some(resolve(&config.interface)?),
    };
    let redirect_ifindex = match &config.redirect_interface {
        None => 0,
        Some(name) => ifindex(name)?,
    };
    for subnet in encap_source_clashes(&config.interface, config.encap_source_v4).unwrap_or_default() {
        log::warn!(
            "encap_source_v4 {}: its /16 overlaps {subnet} on {}; a router there drops packets whose \
             source is its own or a broadcast address, so some flows would never connect: use a /16 \
             found nowhere on the path",
            config.encap_source_v4,
            config.interface
        );
    }
    Ok(HostFacts { mtu: interface_mtu(&config.interface)?, next_hop_mac, redirect_ifindex })
}

/// The IPv4 subnets connected to `iface` that share addresses with the /16 of `source`.
fn encap_source_clashes(iface: &str, source: Ipv4Addr) -> Result<Vec<String>> {
    let routes = read_table("/proc/net/route")?;
    subnets_sharing_16(&routes, iface, source)
}

/// Of the routes without a gateway on `iface` in `routes` (/proc/net/route's text), those that
/// share addresses with the /16 of `source`, as "a.b.c.d/len".
fn subnets_sharing_16(routes: &str, iface: &str, source: Ipv4Addr) -> Result<Vec<String>> {
    let mut clashes = Vec::new();
    for line in routes.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 8 || cols[0] != iface || cols[2] != "00000000" {
            continue;
        }
        let (net, mask) = (u32::from(route_addr(cols[1])?), u32::from(route_addr(cols[7])?));
        // The wider of the two prefixes decides whether they share addresses.
        let common = mask & 0xffff_0000;
        if mask != 0 && net & common == u32::from(source) & common {
            clashes.push(format!("{}/{}", Ipv4Addr::from(net), mask.count_ones()));
        }
    }
    Ok(clashes)
}

/// An address or mask column of /proc/net/route (hex of the address's bytes read as a
/// little-endian word).
fn route_addr(hex: &str) -> Result<Ipv4Addr> {
    let word = u32::from_str_radix(hex, 16)
        .map_err(|_| HostError::Unreadable { table: "/proc/net/route", line: hex.into() })?;
    Ok(Ipv4Addr::from(word.to_le_bytes()))
}

/// The index of interface `name`.
pub fn ifindex(name: &str) -> Result<u32> {
    let no_interface = |error| HostError::NoInterface { name: name.into(), error };
    let c_name = std::ffi::CString::new(name).map_err(|e| no_interface(e.into()))?;
    // SAFETY: a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c_name.as_ptr()) } {
        0 => Err(no_interface(std::io::Error::last_os_error())),
        index => Ok(index),
    }
}

/// The default gateway of `iface` from /proc/net/route.
fn default_gateway(iface: &str) -> Result<Ipv4Addr> {
    let routes = read_table("/proc/net/route")?;
    for line in routes.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() > 2 && cols[0] == iface && cols[1] == "00000000" {
            return route_addr(cols[2]);
        }
    }
    Err(HostError::NoDefaultRoute(iface.into()))
}

/// `ip`'s MAC in /proc/net/arp, if resolved.
fn arp_entry(ip: Ipv4Addr, iface: &str) -> Result<Option<[u8; 6]>> {
    let table = read_table("/proc/net/arp")?;
    for line in table.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // IP, HW type, flags (0x2: complete), MAC, mask, device.
        if cols.len() >= 6 && cols[0] == ip.to_string() && cols[5] == iface && cols[2] == "0x2" {
            let mut mac = [0u8; 6];
            for (byte, part) in mac.iter_mut().zip(cols[3].split(':')) {
                *byte = u8::from_str_radix(part, 16)
                    .map_err(|_| HostError::Unreadable { table: "/proc/net/arp", line: line.into() })?;
            }
            return Ok(Some(mac));
        }
    }
    Ok(None)
}

/// The gateway's MAC, prompting ARP resolution (a UDP datagram to the discard port) if needed.
pub fn resolve(iface: &str) -> Result<[u8; 6]> {
    let gateway = default_gateway(iface)?;
    for _ in 0..20 {
        if let Some(mac) = arp_entry(gateway, iface)? {
            return Ok(mac);
        }
        let socket = std::net::UdpSocket::bind("0.0.0.0:0")
            .map_err(|error| HostError::Io { doing: "opening a UDP socket".into(), error })?;
        let _ = socket.send_to(b"", (gateway, 9));
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(HostError::NoArpAnswer { gateway, iface: iface.into() })
}

/// The MTU of `iface` in the current network namespace.
pub fn interface_mtu(iface: &str) -> Result<u32> {
    // SAFETY: plain socket/ioctl/close with a zeroed, NUL-terminated ifreq.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if fd < 0 {
            return Err(HostError::Io { doing: "socket".into(), error: std::io::Error::last_os_error() });
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(iface.bytes().take(libc::IFNAMSIZ - 1)) {
            *dst = src as libc::c_char;
        }
        let rc = libc::ioctl(fd, libc::SIOCGIFMTU, &mut req);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc < 0 {
            return Err(HostError::Io { doing: format!("reading the MTU of {iface}"), error: err });
        }
        Ok(req.ifr_ifru.ifru_mtu as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// /proc/net/route of the test bed's lb: its link 198.18.1.0/24, a default route, and a
    /// 10.0.0.0/8 on another interface.
    const ROUTES: &str = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
        eth0\t00000000\t010112C6\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
        eth0\t000112C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
        eth1\t0000000A\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0\n";

    #[test]
    fn encap_sources_sharing_a_connected_subnet_are_named() -> Result<()> {
        let clashes = |source: [u8; 4]| subnets_sharing_16(ROUTES, "eth0", Ipv4Addr::from(source));
        assert_eq!(clashes([198, 18, 255, 0])?, ["198.18.1.0/24"], "the /16 holds eth0's subnet");
        assert!(clashes([172, 16, 0, 0])?.is_empty(), "the default route does not count");
        assert!(clashes([198, 19, 0, 0])?.is_empty());
        assert!(clashes([10, 1, 0, 0])?.is_empty(), "10.0.0.0/8 is on eth1");
        assert_eq!(subnets_sharing_16(ROUTES, "eth1", Ipv4Addr::new(10, 1, 0, 0))?, ["10.0.0.0/8"]);
        Ok(())
    }
}
