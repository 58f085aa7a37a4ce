//! Host tests of the parser on packets built with etherparse, then cut or corrupted.
extern crate std;
use std::vec::Vec;

use etherparse::PacketBuilder;

use lb_common::addr::mapped_v4;

use super::*;

const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

fn parse(bytes: &[u8]) -> Result<bool, Malformed> {
    let start = bytes.as_ptr() as usize;
    let mut slot = core::mem::MaybeUninit::uninit();
    parse_frame(start, start + bytes.len(), Packet::zeroed_in(&mut slot))
}

fn packet(bytes: &[u8]) -> Packet {
    let start = bytes.as_ptr() as usize;
    let mut slot = core::mem::MaybeUninit::uninit();
    let p = Packet::zeroed_in(&mut slot);
    assert_eq!(parse_frame(start, start + bytes.len(), p), Ok(true));
    *p
}

fn tcp4(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4([198, 18, 0, 2], [198, 19, 0, 1], 64)
        .tcp(40000, 80, 1, 1000)
        .syn()
        .write(&mut out, payload)
        .unwrap();
    out
}

fn udp6() -> Vec<u8> {
    let mut out = Vec::new();
    let src = [0xfd, 0, 0, 0x5e, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    let dst = [0xfd, 0, 0, 0x5e, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    PacketBuilder::ethernet2(MAC_A, MAC_B).ipv6(src, dst, 64).udp(5353, 53).write(&mut out, b"q").unwrap();
    out
}

#[test]
fn tcp_over_ipv4() {
    let p = packet(&tcp4(b"hi"));
    assert!(!p.ipv6);
    assert_eq!((p.l3_off, p.l4_off, p.flow.proto), (14, 34, IPPROTO_TCP));
    assert_eq!(p.flow.src, mapped_v4([198, 18, 0, 2]));
    assert_eq!(p.flow.dst, mapped_v4([198, 19, 0, 1]));
    assert_eq!((u16::from_be(p.flow.sport), u16::from_be(p.flow.dport)), (40000, 80));
    assert!(p.is_syn());
    assert_eq!(p.ip_len, 20 + 20 + 2);
}

#[test]
fn udp_over_ipv6() {
    let p = packet(&udp6());
    assert!(p.ipv6);
    assert_eq!((p.l4_off, p.flow.proto, u16::from_be(p.flow.dport)), (54, IPPROTO_UDP, 53));
}

#[test]
fn vlan_tags_are_skipped() {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .single_vlan(7.try_into().unwrap())
        .ipv4([1, 2, 3, 4], [5, 6, 7, 8], 64)
        .udp(1, 2)
        .write(&mut out, &[])
        .unwrap();
    assert_eq!(packet(&out).l3_off, 18);
}

#[test]
fn ipv4_options_move_the_l4_header() {
    let mut bytes = tcp4(&[]);
    // Insert 8 bytes of options (NOPs, then end-of-list): IHL 5 -> 7, total length + 8.
    bytes.splice(34..34, [1, 1, 1, 1, 1, 1, 1, 0]);
    bytes[14] = 0x47;
    let total = u16::from_be_bytes([bytes[16], bytes[17]]) + 8;
    bytes[16..18].copy_from_slice(&total.to_be_bytes());
    let p = packet(&bytes);
    assert_eq!((p.l4_off, u16::from_be(p.flow.dport)), (42, 80));
}

#[test]
fn ipv6_extension_headers_are_skipped() {
    let mut bytes = udp6();
    // Hop-by-hop (8 bytes) then destination options (16 bytes) before UDP.
    let mut ext = std::vec![60, 0, 1, 4, 0, 0, 0, 0];
    ext.extend_from_slice(&[17, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    bytes.splice(54..54, ext);
    bytes[20] = 0; // next header: hop-by-hop
    let len = u16::from_be_bytes([bytes[18], bytes[19]]) + 24;
    bytes[18..20].copy_from_slice(&len.to_be_bytes());
    let p = packet(&bytes);
    assert_eq!((p.l4_off, p.flow.proto, u16::from_be(p.flow.dport)), (78, IPPROTO_UDP, 53));
}

#[test]
fn too_many_ipv6_extension_headers_are_malformed() {
    let mut bytes = udp6();
    let mut chain = Vec::new();
    for _ in 0..MAX_IPV6_EXT_HEADERS + 1 {
        chain.extend_from_slice(&[60, 0, 1, 4, 0, 0, 0, 0]);
    }
    let n = chain.len();
    chain[n - 8] = 17;
    bytes.splice(54..54, chain);
    bytes[20] = 60;
    let len = u16::from_be_bytes([bytes[18], bytes[19]]) + n as u16;
    bytes[18..20].copy_from_slice(&len.to_be_bytes());
    assert_eq!(parse(&bytes), Err(Malformed::Ipv6));
}

#[test]
fn fragments_are_flagged_without_l4() {
    let mut bytes = tcp4(b"payload");
    bytes[20] = 0x20; // MF
    let p = packet(&bytes);
    assert!(p.fragment);
    assert_eq!(p.flow.dport, 0);
}

#[test]
fn non_ip_is_not_ip() {
    let mut bytes = tcp4(&[]);
    bytes[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert_eq!(parse(&bytes), Ok(false));
}

#[test]
fn every_truncation_is_malformed_never_a_panic() {
    for full in [tcp4(b"data"), udp6()] {
        let l4_end = if full[12] == 0x08 { 14 + 20 + 20 } else { 14 + 40 + 8 };
        for len in 0..l4_end {
            let result = parse(&full[..len]);
            assert!(result.is_err(), "truncated to {len}: {result:?}");
        }
    }
}

#[test]
fn bad_ipv4_headers_are_malformed() {
    let good = tcp4(&[]);
    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x44;
    let mut long_total = good.clone();
    long_total[16..18].copy_from_slice(&200u16.to_be_bytes());
    let mut short_total = good.clone();
    short_total[16..18].copy_from_slice(&10u16.to_be_bytes());
    let mut bad_version = good.clone();
    bad_version[14] = 0x65;
    for bytes in [bad_ihl, long_total, short_total, bad_version] {
        assert_eq!(parse(&bytes), Err(Malformed::Ipv4));
    }
}

#[test]
fn trailing_ethernet_padding_is_fine() {
    let mut bytes = tcp4(&[]);
    bytes.extend_from_slice(&[0; 6]);
    assert_eq!(packet(&bytes).ip_len, 40);
}
