//! Resolves `next_hop_mac = "auto"`: the MAC of the IPv4 default gateway on the interface, from
//! the kernel's routing and neighbour tables of lbd's network namespace.
use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Context as _, Result, bail};

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
