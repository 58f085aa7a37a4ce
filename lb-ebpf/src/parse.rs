//! Bounds-checked parsing of Ethernet / 802.1Q / IPv4 / IPv6 / TCP / UDP / ICMP over the packet
//! bytes `[start, end)`. No BPF helpers: the same code runs in the XDP program and in host tests.
//! Every read is checked against `end` right before it, in the form the verifier accepts.
use core::mem::size_of;

use lb_common::flow::FlowKey;

use crate::wire::{Word, read, span};

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_IPV6: u8 = 41;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPV4_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;
/// Extension headers skipped at most; a longer chain is malformed.
pub const MAX_IPV6_EXT_HEADERS: usize = 4;
/// VLAN tags skipped at most (QinQ).
pub const MAX_VLAN_TAGS: usize = 2;

#[inline(always)]
fn be16(start: usize, end: usize, off: usize) -> Option<u16> {
    read::<u16>(start, end, off).map(u16::from_be)
}

/// Sets a 16-byte address from its big-endian halves with two 8-byte stores. (Assigning an
/// array instead compiles, on BPF, to calls of memset / memmove subprograms that move one
/// byte per loop turn: tens of nanoseconds a packet.)
#[inline(always)]
fn set_addr(addr: &mut [u8; 16], high: u64, low: u64) {
    let at = addr.as_mut_ptr();
    // SAFETY: both 8-byte stores lie inside `addr`.
    unsafe {
        core::ptr::write_unaligned(at as *mut [u8; 8], high.to_be_bytes());
        core::ptr::write_unaligned(at.add(8) as *mut [u8; 8], low.to_be_bytes());
    }
}

/// Why a packet is malformed; each maps to a drop-reason counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    L2,
    Ipv4,
    Ipv6,
    L4,
}

/// The fields the balancer needs from an IP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Offset of the IP header from the start of the frame.
    pub l3_off: usize,
    /// Offset of the L4 header (meaningless for fragments).
    pub l4_off: usize,
    pub ipv6: bool,
    /// Addresses (IPv4-mapped for IPv4), ports (network order; 0 for ICMP and fragments) and
    /// L4 protocol (after IPv6 extension headers): the connection-table key as it stands.
    pub flow: FlowKey,
    pub tcp_flags: u8,
    /// ICMP/ICMPv6 type and code (0 otherwise).
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// A fragment (IPv4 MF or offset, or an IPv6 fragment header): no L4 header parsed.
    pub fragment: bool,
    /// Bytes of the IP packet per its header (header and payload).
    pub ip_len: usize,
}

impl Packet {
    /// A zeroed packet in `slot`, to parse into (parsing fills it in place: the BPF stack is
    /// too small for copies of it). Made with eight-byte stores: a zeroed struct literal
    /// compiles, on BPF, to a call of a memset subprogram that stores one byte per loop turn.
    #[inline(always)]
    pub fn zeroed_in(slot: &mut core::mem::MaybeUninit<Packet>) -> &mut Packet {
        const WORDS: usize = size_of::<Packet>() / 8;
        let words = slot.as_mut_ptr() as *mut u64;
        let mut i = 0;
        while i < WORDS {
            // SAFETY: inside `slot` (Packet is 8-aligned and a multiple of 8 bytes long, as
            // asserted below). Volatile: merged stores would become a memset call again.
            unsafe { core::ptr::write_volatile(words.add(i), 0) };
            i += 1;
        }
        // SAFETY: every byte is written, and all-zero bytes are a valid Packet (integers,
        // `false`, zeroed arrays).
        unsafe { slot.assume_init_mut() }
    }

    /// A TCP SYN without ACK: a new connection, always placed by the current Maglev table.
    pub fn is_syn(&self) -> bool {
        self.flow.proto == IPPROTO_TCP && self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }
}

const _: () = assert!(size_of::<Packet>().is_multiple_of(8) && core::mem::align_of::<Packet>() == 8);

/// Parses a whole frame into `p`: Ok(false) if it is not IPv4 or IPv6 (ARP, LLDP, ...).
#[inline(always)]
pub fn parse_frame(start: usize, end: usize, p: &mut Packet) -> Result<bool, Malformed> {
    let mut ethertype = be16(start, end, 12).ok_or(Malformed::L2)?;
    let mut l3_off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        ethertype = be16(start, end, l3_off + 2).ok_or(Malformed::L2)?;
        l3_off += 4;
    }
    match ethertype {
        ETH_P_IP => parse_ipv4(start, end, l3_off, true, p).map(|()| true),
        ETH_P_IPV6 => parse_ipv6(start, end, l3_off, true, p).map(|()| true),
        _ => Ok(false),
    }
}

/// Parses an IPv4 header at `l3_off` and its L4 header. `whole` is false for the packet quoted
/// inside an ICMP error, which is cut short: then only the first 8 L4 bytes must be present
/// and the total length is not checked against the frame.
#[inline(always)]
pub fn parse_ipv4(
    start: usize,
    end: usize,
    l3_off: usize,
    whole: bool,
    p: &mut Packet,
) -> Result<(), Malformed> {
    let at = span(start, end, l3_off, IPV4_HLEN).ok_or(Malformed::Ipv4)?;
    // SAFETY: the 20 bytes at `at` are inside the packet, checked just above.
    let [head, frag, ttl_proto, src, dst] =
        unsafe { [0, 4, 8, 12, 16].map(|off| u32::from_be(u32::read(at + off))) };
    let ihl = ((head >> 24) as usize & 0x0f) * 4;
    if head >> 28 != 4 || ihl < 20 {
        return Err(Malformed::Ipv4);
    }
    let ip_len = (head & 0xffff) as usize;
    if ip_len < ihl || (whole && l3_off + ip_len > end - start) {
        return Err(Malformed::Ipv4);
    }
    p.l3_off = l3_off;
    p.ipv6 = false;
    p.ip_len = ip_len;
    p.flow.proto = (ttl_proto >> 16) as u8;
    // IPv4-mapped (::ffff:a.b.c.d), as lb_common::addr::mapped_v4 spells it.
    set_addr(&mut p.flow.src, 0, 0xffff_0000_0000 | src as u64);
    set_addr(&mut p.flow.dst, 0, 0xffff_0000_0000 | dst as u64);
    p.l4_off = l3_off + ihl;
    // MF set or a non-zero offset.
    p.fragment = frag & 0x3fff != 0;
    if p.fragment {
        return Ok(());
    }
    parse_l4(start, end, p, whole)
}

/// Parses an IPv6 header at `l3_off`, skips extension headers, and parses the L4 header.
#[inline(always)]
pub fn parse_ipv6(
    start: usize,
    end: usize,
    l3_off: usize,
    whole: bool,
    p: &mut Packet,
) -> Result<(), Malformed> {
    let at = span(start, end, l3_off, IPV6_HLEN).ok_or(Malformed::Ipv6)?;
    // SAFETY: the 40 bytes at `at` are inside the packet, checked just above.
    let (version, lengths) = unsafe { (u8::read(at) >> 4, u32::from_be(u32::read(at + 4))) };
    if version != 6 {
        return Err(Malformed::Ipv6);
    }
    let payload_len = (lengths >> 16) as usize;
    if whole && l3_off + IPV6_HLEN + payload_len > end - start {
        return Err(Malformed::Ipv6);
    }
    p.l3_off = l3_off;
    p.ipv6 = true;
    p.ip_len = IPV6_HLEN + payload_len;
    // SAFETY: as above.
    let [src_high, src_low, dst_high, dst_low] =
        unsafe { [8, 16, 24, 32].map(|off| u64::from_be(u64::read(at + off))) };
    set_addr(&mut p.flow.src, src_high, src_low);
    set_addr(&mut p.flow.dst, dst_high, dst_low);
    let mut next = (lengths >> 8) as u8;
    let mut off = l3_off + IPV6_HLEN;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes.
            0 | 43 | 60 => {
                let ext = read::<u16>(start, end, off).ok_or(Malformed::Ipv6)?.to_ne_bytes();
                next = ext[0];
                off += (ext[1] as usize + 1) * 8;
            }
            // Fragment header: 8 bytes; the L4 header is only in the first fragment, and the
            // balancer does not reassemble, so stop here.
            44 => {
                // Its first 4 bytes: next header, reserved, offset and flags.
                p.flow.proto = read::<u32>(start, end, off).ok_or(Malformed::Ipv6)?.to_ne_bytes()[0];
                p.l4_off = off + 8;
                p.fragment = true;
                return Ok(());
            }
            _ => break,
        }
    }
    if matches!(next, 0 | 43 | 60 | 44) {
        return Err(Malformed::Ipv6);
    }
    p.flow.proto = next;
    p.l4_off = off;
    parse_l4(start, end, p, whole)
}

#[inline(always)]
fn parse_l4(start: usize, end: usize, p: &mut Packet, whole: bool) -> Result<(), Malformed> {
    // Each arm checks its own length: the verifier does not carry a length chosen by one
    // match over to another.
    match p.flow.proto {
        // An ICMP error quotes only 8 bytes of the L4 header: the ports.
        IPPROTO_TCP | IPPROTO_UDP if !whole => {
            let at = span(start, end, p.l4_off, 4).ok_or(Malformed::L4)?;
            set_ports(p, at);
        }
        IPPROTO_TCP => {
            // Ports, and flags at byte 13: the whole fixed header must be there.
            let at = span(start, end, p.l4_off, 20).ok_or(Malformed::L4)?;
            set_ports(p, at);
            // SAFETY: byte 13 of the 20 checked above.
            p.tcp_flags = unsafe { u8::read(at + 13) };
        }
        IPPROTO_UDP => {
            let at = span(start, end, p.l4_off, 8).ok_or(Malformed::L4)?;
            set_ports(p, at);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let at = span(start, end, p.l4_off, 8).ok_or(Malformed::L4)?;
            // SAFETY: 2 of the 8 bytes checked above.
            let [icmp_type, icmp_code] = unsafe { u16::read(at) }.to_ne_bytes();
            p.icmp_type = icmp_type;
            p.icmp_code = icmp_code;
        }
        _ => {}
    }
    Ok(())
}

/// Sets the ports from the 4 bytes at `at` (checked by the caller), in network order as the
/// bytes lie. The flow's last word (ports, protocol, zero padding) is written with one store:
/// the hash and the lookups read it as one word, and a load spanning several smaller stores
/// still on their way to the cache cannot take its bytes from them, so it waits.
#[inline(always)]
fn set_ports(p: &mut Packet, at: usize) {
    // SAFETY: the caller checked the 4 bytes at `at`.
    let [a, b, c, d] = unsafe { u32::read(at) }.to_ne_bytes();
    let tail = u64::from_ne_bytes([a, b, c, d, p.flow.proto, 0, 0, 0]);
    // SAFETY: word 4 of the 8-aligned 40-byte FlowKey (lb_common::flow::FlowKey::words).
    unsafe { (&mut p.flow as *mut FlowKey as *mut u64).add(4).write(tail) };
}

#[cfg(test)]
mod tests;
