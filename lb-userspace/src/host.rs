//! What the config needs from the host, in lbd's network namespace: interface MTU and index,
//! and for `next_hop_mac = "auto"` the IPv4 default gateway's MAC from the neighbour table.
use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Context as _, Result, bail};

use crate::config::{Config, NextHop};

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

/// Looks up what `config` refers to on this host.
pub fn facts(config: &Config) -> Result<HostFacts> {
    let next_hop_mac = match config.next_hop_mac {
        NextHop::Unset => None,
        NextHop::Mac(mac) => Some(mac),
        NextHop::Auto => Some(resolve(&config.interface)?),
    };
    let redirect_ifindex = match &config.redirect_interface {
        None => 0,
        Some(name) => ifindex(name)?,
    };
    Ok(HostFacts { mtu: interface_mtu(&config.interface)?, next_hop_mac, redirect_ifindex })
}

/// The index of interface `name`.
pub fn ifindex(name: &str) -> Result<u32> {
    let c_name = std::ffi::CString::new(name).context("interface name contains NUL")?;
    // SAFETY: a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c_name.as_ptr()) } {
        0 => bail!("no interface {name}: {}", std::io::Error::last_os_error()),
        index => Ok(index),
    }
}

/// The default gateway of `iface` from /proc/net/route.
fn default_gateway(iface: &str) -> Result<Ipv4Addr> {
    let routes = std::fs::read_to_string("/proc/net/route").context("reading /proc/net/route")?;
    for line in routes.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() > 2 && cols[0] == iface && cols[1] == "00000000" {
            let raw = u32::from_str_radix(cols[2], 16)?;
            return Ok(Ipv4Addr::from(raw.to_le_bytes()));
        }
    }
    bail!("no IPv4 default route via {iface}: set dataplane.next_hop_mac explicitly")
}

/// `ip`'s MAC in /proc/net/arp, if resolved.
fn arp_entry(ip: Ipv4Addr, iface: &str) -> Result<Option<[u8; 6]>> {
    let table = std::fs::read_to_string("/proc/net/arp").context("reading /proc/net/arp")?;
    for line in table.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // IP, HW type, flags (0x2: complete), MAC, mask, device.
        if cols.len() >= 6 && cols[0] == ip.to_string() && cols[5] == iface && cols[2] == "0x2" {
            let mut mac = [0u8; 6];
            for (byte, part) in mac.iter_mut().zip(cols[3].split(':')) {
                *byte = u8::from_str_radix(part, 16)?;
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
        let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
        let _ = socket.send_to(b"", (gateway, 9));
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("gateway {gateway} on {iface} did not answer ARP: set dataplane.next_hop_mac explicitly")
}

/// The MTU of `iface` in the current network namespace.
pub fn interface_mtu(iface: &str) -> Result<u32> {
    // SAFETY: plain socket/ioctl/close with a zeroed, NUL-terminated ifreq.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(iface.bytes().take(libc::IFNAMSIZ - 1)) {
            *dst = src as libc::c_char;
        }
        let rc = libc::ioctl(fd, libc::SIOCGIFMTU, &mut req);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc < 0 {
            bail!("reading the MTU of {iface}: {err}");
        }
        Ok(req.ifr_ifru.ifru_mtu as u32)
    }
}
