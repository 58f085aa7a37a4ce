//! Packets for fixtures, built with etherparse: what clients send, and what the balancer
//! should send on (outer headers built here independently of the XDP code's own builders).
use std::net::IpAddr;

use etherparse::{
    Icmpv4Type, Icmpv6Type, IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header, PacketBuilder,
    icmpv4::DestUnreachableHeader,
};

/// The client side's MAC (the router as seen by the lb).
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc1];
/// The lb's NIC MAC.
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x1b];
/// The next hop the lb encapsulates toward.
pub const NEXT_HOP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

/// TCP flags of a test segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tcp {
    Syn,
    SynAck,
    Ack,
    PshAck,
    Rst,
    Fin,
}

fn v4(ip: IpAddr) -> [u8; 4] {
    match ip {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(_) => panic!("{ip} is not IPv4"),
    }
}

fn v6(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
    }
}

/// Ethernet + IPv4/IPv6 (by the addresses) builder start.
fn ip(src: IpAddr, dst: IpAddr) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
    if src.is_ipv4() { eth.ipv4(v4(src), v4(dst), 64) } else { eth.ipv6(v6(src), v6(dst), 64) }
}

/// A TCP segment from `src:sport` to `dst:dport`.
pub fn tcp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, flags: Tcp, payload: &[u8]) -> Vec<u8> {
    let b = ip(src, dst).tcp(sport, dport, 1000, 65535);
    let b = match flags {
        Tcp::Syn => b.syn(),
        Tcp::SynAck => b.syn().ack(1),
        Tcp::Ack => b.ack(1),
        Tcp::PshAck => b.psh().ack(1),
        Tcp::Rst => b.rst(),
        Tcp::Fin => b.fin().ack(1),
    };
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

/// A SYN as Linux sends it (IPv4 or IPv6 by the addresses): MSS 1460, SACK permitted,
/// timestamps (value `tsval`), window scale 7; sequence number `seq`.
pub fn linux_syn(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, seq: u32, tsval: u32) -> Vec<u8> {
    use etherparse::TcpOptionElement::*;
    let options = [
        MaximumSegmentSize(1460),
        SelectiveAcknowledgementPermitted,
        Timestamp(tsval, 0),
        Noop,
        WindowScale(7),
    ];
    let b = ip(src, dst).tcp(sport, dport, seq, 64240).syn().options(&options).expect("options fit");
    let mut out = Vec::new();
    b.write(&mut out, b"").unwrap();
    out
}

/// A bare ACK (with `payload`) from `src:sport` with sequence `seq` acknowledging `ack`.
pub fn tcp_ack(
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    seq: u32,
    ack: u32,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    ip(src, dst).tcp(sport, dport, seq, 502).ack(ack).write(&mut out, payload).unwrap();
    out
}

/// A UDP datagram.
pub fn udp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    ip(src, dst).udp(sport, dport).write(&mut out, payload).unwrap();
    out
}

/// An ICMP / ICMPv6 echo request.
pub fn echo_request(src: IpAddr, dst: IpAddr) -> Vec<u8> {
    let mut out = Vec::new();
    let b = ip(src, dst);
    if src.is_ipv4() {
        b.icmpv4_echo_request(7, 1).write(&mut out, b"ping").unwrap();
    } else {
        b.icmpv6_echo_request(7, 1).write(&mut out, b"ping").unwrap();
    }
    out
}

/// The echo reply the balancer should send for [`echo_request`] (MACs swapped).
pub fn echo_reply(src: IpAddr, dst: IpAddr) -> Vec<u8> {
    let mut out = Vec::new();
    let eth = PacketBuilder::ethernet2(LB_MAC, CLIENT_MAC);
    if src.is_ipv4() {
        eth.ipv4(v4(dst), v4(src), 64).icmpv4_echo_reply(7, 1).write(&mut out, b"ping").unwrap();
    } else {
        eth.ipv6(v6(dst), v6(src), 64).icmpv6_echo_reply(7, 1).write(&mut out, b"ping").unwrap();
    }
    out
}

/// An ICMP "fragmentation needed" (or ICMPv6 "packet too big") from `router` to `to`, quoting
/// the first bytes of `quoted` (an IP packet, without its Ethernet header).
pub fn too_big(router: IpAddr, to: IpAddr, quoted: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let b = ip(router, to);
    if router.is_ipv4() {
        let t = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
            next_hop_mtu: 1400,
        });
        b.icmpv4(t).write(&mut out, &quoted[..quoted.len().min(28)]).unwrap();
    } else {
        b.icmpv6(Icmpv6Type::PacketTooBig { mtu: 1400 })
            .write(&mut out, &quoted[..quoted.len().min(48)])
            .unwrap();
    }
    out
}

/// The balancer's answer to a client packet too big to encapsulate: from the VIP back to the
/// client (MACs swapped), ICMP "fragmentation needed" (IPv4, DF set like any etherparse IPv4
/// header) or ICMPv6 "packet too big" with `mtu`, quoting the first 68 (IPv4) or 128 (IPv6)
/// bytes of `ip_packet`.
pub fn too_big_answer(vip: IpAddr, client: IpAddr, ip_packet: &[u8], mtu: u32) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(LB_MAC, CLIENT_MAC);
    let mut out = Vec::new();
    if vip.is_ipv4() {
        let quote = 68;
        let t = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
            next_hop_mtu: mtu as u16,
        });
        eth.ipv4(v4(vip), v4(client), 64).icmpv4(t).write(&mut out, &ip_packet[..quote]).unwrap();
    } else {
        let quote = ip_packet.len().min(128);
        eth.ipv6(v6(vip), v6(client), 64)
            .icmpv6(Icmpv6Type::PacketTooBig { mtu })
            .write(&mut out, &ip_packet[..quote])
            .unwrap();
    }
    out
}

/// The IP packet inside an Ethernet frame without VLAN tags.
pub fn ip_part(frame: &[u8]) -> &[u8] {
    &frame[14..]
}

/// The frame the balancer sends for `inner_ip` (an IP packet) to `backend`: Ethernet to the
/// next hop, an outer IPv4 (protocol 4) or IPv6 (next header 41 or 4) header whose source
/// carries `hash` (IPv4: low 16 bits under 198.18.0.0/16 of `src4`; IPv6: low 32 bits).
pub fn encapsulated(inner_ip: &[u8], backend: IpAddr, src4: [u8; 4], src6: [u8; 16], hash: u32) -> Vec<u8> {
    let inner_v6 = inner_ip[0] >> 4 == 6;
    let mut out = Vec::new();
    out.extend_from_slice(&NEXT_HOP_MAC);
    out.extend_from_slice(&LB_MAC);
    match backend {
        IpAddr::V4(b) => {
            out.extend_from_slice(&0x0800u16.to_be_bytes());
            let h = (hash as u16).to_be_bytes();
            let mut header = Ipv4Header::new(
                inner_ip.len() as u16,
                64,
                IpNumber(4),
                [src4[0], src4[1], h[0], h[1]],
                b.octets(),
            )
            .unwrap();
            header.dont_fragment = false;
            header.header_checksum = header.calc_header_checksum();
            header.write(&mut out).unwrap();
        }
        IpAddr::V6(b) => {
            out.extend_from_slice(&0x86ddu16.to_be_bytes());
            let mut source = src6;
            source[12..].copy_from_slice(&hash.to_be_bytes());
            let header = Ipv6Header {
                traffic_class: 0,
                flow_label: Ipv6FlowLabel::try_new(hash & 0xf_ffff).unwrap(),
                payload_length: inner_ip.len() as u16,
                next_header: IpNumber(if inner_v6 { 41 } else { 4 }),
                hop_limit: 64,
                source,
                destination: b.octets(),
            };
            header.write(&mut out).unwrap();
        }
    }
    out.extend_from_slice(inner_ip);
    out
}

/// A hex dump, 16 bytes a line, marking lines that differ from `other`.
pub fn hex_diff(label: &str, bytes: &[u8], other: &[u8]) -> String {
    let mut out = format!("{label} ({} bytes):\n", bytes.len());
    for (i, chunk) in bytes.chunks(16).enumerate() {
        let theirs = other.get(i * 16..(i * 16 + 16).min(other.len())).unwrap_or(&[]);
        let mark = if chunk == theirs { ' ' } else { '!' };
        let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
        out += &format!("{mark} {:04x}  {}\n", i * 16, hex.join(" "));
    }
    out
}
