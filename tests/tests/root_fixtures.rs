//! Root test, Katran's method: the real balancer object in the kernel, provisioned with fixed
//! VIPs, backends and MACs through lbd's map writer, runs a table of fixtures in order through
//! BPF_PROG_TEST_RUN; each asserts the verdict and the output bytes. Counters are then compared
//! with what the table implies.
use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use anyhow::{Context as _, Result};
use lb_common::{
    flow::{CONN_WAYS, FlowKey, set_of},
    hash::flow_hash,
    vip::{VIP_F_DROP_FRAGMENTS, VIP_F_L7, VIP_F_SYN_COOKIES},
};
use lb_userspace::dataplane::tables::Desired;
use sluice_tests::{
    harness::{ENCAP_SRC4, ENCAP_SRC6, Harness, desired, flow, vip},
    packets::{
        self, CLIENT_MAC, LB_MAC, Tcp, echo_reply, echo_request, encapsulated, hex_diff, ip_part, linux_syn,
        tcp, tcp_ack, too_big, too_big_answer, udp,
    },
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const CLIENT: &str = "198.18.0.2";
const CLIENT6: &str = "fd00:5e::2";
const VIP_WEB: &str = "198.19.0.1"; // :80 tcp -> web, :53 udp -> dns
const VIP_ANY: &str = "198.19.0.2"; // every tcp port -> solo
const VIP_L7: &str = "198.19.0.3"; // :443 tcp, L7
const VIP_NOFRAG: &str = "198.19.0.4"; // :80 tcp, drops fragments
const VIP_V4_TO_V6: &str = "198.19.0.5"; // :80 tcp -> IPv6 backend
const VIP_EMPTY: &str = "198.19.0.6"; // :80 tcp -> empty pool
const VIP6: &str = "fd00:5e:100::1"; // :80 tcp -> web6
const WEB: [(&str, u32); 2] = [("198.18.10.2", 100), ("198.18.11.2", 100)];
const WEB_PLUS: [(&str, u32); 3] = [("198.18.10.2", 100), ("198.18.11.2", 100), ("198.18.13.2", 100)];
const WEB6: [(&str, u32); 2] = [("fd00:5e:10::2", 100), ("fd00:5e:11::2", 100)];

/// VIP table index of each VIP in [`desired_state`] (for the model).
const IDX_WEB: usize = 0;
const IDX_V6: usize = 6;

fn desired_state(web: &[(&str, u32)]) -> Desired {
    desired(
        vec![
            vip(VIP_WEB, 80, 6, 0, web),
            vip(VIP_WEB, 53, 17, 0, &[("198.18.12.2", 100)]),
            vip(VIP_ANY, 0, 6, 0, &[("198.18.12.2", 100)]),
            vip(VIP_L7, 443, 6, VIP_F_L7, &[]),
            vip(VIP_NOFRAG, 80, 6, VIP_F_DROP_FRAGMENTS, web),
            vip(VIP_V4_TO_V6, 80, 6, 0, &[("fd00:5e:12::2", 100)]),
            vip(VIP6, 80, 6, 0, &WEB6),
            vip(VIP_EMPTY, 80, 6, 0, &[]),
        ],
        &["203.0.113.0/24", "2001:db8:bad::/48"],
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// What the balancer should send.
enum Expect {
    /// The input, unchanged (pass or drop).
    Same,
    /// Exactly these bytes.
    Bytes(Vec<u8>),
}

struct Fixture {
    description: String,
    input: Vec<u8>,
    verdict: u32,
    /// The counter slot that says why.
    reason: &'static str,
    output: Expect,
}

fn fixture(description: &str, input: Vec<u8>, verdict: u32, reason: &'static str) -> Fixture {
    Fixture { description: description.into(), input, verdict, reason, output: Expect::Same }
}

/// A fixture whose output is `input`'s IP packet encapsulated to `backend` with `flow`'s hash.
fn forwarded(description: &str, input: Vec<u8>, inner_at: usize, backend: IpAddr, flow: &FlowKey) -> Fixture {
    let out = encapsulated(&input[inner_at..], backend, ENCAP_SRC4, ENCAP_SRC6, flow_hash(flow));
    Fixture {
        description: description.into(),
        input,
        verdict: XDP_TX,
        reason: "tx",
        output: Expect::Bytes(out),
    }
}

fn tcp4(sport: u16, dst: &str, dport: u16, flags: Tcp) -> Vec<u8> {
    tcp(ip(CLIENT), sport, ip(dst), dport, flags, b"")
}

fn with_vlans(frame: &[u8], tags: &[u16]) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    for (i, tag) in tags.iter().enumerate() {
        let tpid: u16 = if i == 0 && tags.len() > 1 { 0x88a8 } else { 0x8100 };
        out.extend_from_slice(&tpid.to_be_bytes());
        out.extend_from_slice(&tag.to_be_bytes());
    }
    out.extend_from_slice(&frame[12..]);
    out
}

/// Inserts `options` (a multiple of 4 bytes) into an IPv4 frame's header, fixing IHL, length
/// and header checksum.
fn with_ipv4_options(frame: &[u8], options: &[u8]) -> Vec<u8> {
    let mut out = frame.to_vec();
    out.splice(34..34, options.iter().copied());
    out[14] = 0x40 | ((20 + options.len()) / 4) as u8;
    let total = u16::from_be_bytes([out[16], out[17]]) + options.len() as u16;
    out[16..18].copy_from_slice(&total.to_be_bytes());
    refresh_ipv4_checksum(&mut out);
    out
}

fn refresh_ipv4_checksum(frame: &mut [u8]) {
    let ihl = ((frame[14] & 0x0f) as usize) * 4;
    frame[24..26].fill(0);
    let sum: u32 = frame[14..14 + ihl].chunks(2).map(|w| u16::from_be_bytes([w[0], w[1]]) as u32).sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    let folded = !(((folded & 0xffff) + (folded >> 16)) as u16);
    frame[24..26].copy_from_slice(&folded.to_be_bytes());
}

/// Sets IPv4 flags/fragment offset bytes.
fn fragment4(mut frame: Vec<u8>, flags_offset: u16) -> Vec<u8> {
    frame[20..22].copy_from_slice(&flags_offset.to_be_bytes());
    refresh_ipv4_checksum(&mut frame);
    frame
}

/// Inserts IPv6 extension headers (already chained: the last one's next header is the L4).
fn with_ipv6_ext(frame: &[u8], first: u8, ext: &[u8]) -> Vec<u8> {
    let mut out = frame.to_vec();
    out.splice(54..54, ext.iter().copied());
    out[20] = first;
    let len = u16::from_be_bytes([out[18], out[19]]) + ext.len() as u16;
    out[18..20].copy_from_slice(&len.to_be_bytes());
    out
}

fn set(mut frame: Vec<u8>, at: usize, bytes: &[u8]) -> Vec<u8> {
    frame[at..at + bytes.len()].copy_from_slice(bytes);
    frame
}

/// Fixtures of the first phase: every path, with the web pool at two backends.
fn phase_one(h: &Harness) -> Vec<Fixture> {
    let web_flow = |sport| flow(CLIENT, sport, VIP_WEB, 80, 6);
    let web = |sport| h.model_backend(IDX_WEB, &web_flow(sport));
    let mut f = Vec::new();
    // TCP over IPv4: a connection's life, and new connections spreading over the pool.
    for (flags, name) in [
        (Tcp::Syn, "SYN"),
        (Tcp::Ack, "ACK (connection table hit)"),
        (Tcp::PshAck, "PSH/ACK"),
        (Tcp::Fin, "FIN"),
        (Tcp::Rst, "RST"),
    ] {
        f.push(forwarded(
            &format!("v4 TCP {name} to web VIP"),
            tcp4(40000, VIP_WEB, 80, flags),
            14,
            web(40000),
            &web_flow(40000),
        ));
    }
    let data = tcp(ip(CLIENT), 40000, ip(VIP_WEB), 80, Tcp::PshAck, &[0xab; 1000]);
    f.push(forwarded("v4 TCP 1000-byte segment", data, 14, web(40000), &web_flow(40000)));
    for sport in 41000..41006 {
        f.push(forwarded(
            &format!("v4 TCP SYN, new flow from :{sport}"),
            tcp4(sport, VIP_WEB, 80, Tcp::Syn),
            14,
            web(sport),
            &web_flow(sport),
        ));
    }
    f.push(forwarded(
        "v4 TCP ACK of an unknown flow (table miss, Maglev)",
        tcp4(42000, VIP_WEB, 80, Tcp::Ack),
        14,
        web(42000),
        &web_flow(42000),
    ));
    f.push(forwarded(
        "v4 TCP SYN/ACK to a VIP is not a new flow",
        tcp4(42001, VIP_WEB, 80, Tcp::SynAck),
        14,
        web(42001),
        &web_flow(42001),
    ));
    // UDP.
    let dns = ip("198.18.12.2");
    let dns_flow = flow(CLIENT, 5353, VIP_WEB, 53, 17);
    f.push(forwarded(
        "v4 UDP to dns VIP",
        udp(ip(CLIENT), 5353, ip(VIP_WEB), 53, b"query"),
        14,
        dns,
        &dns_flow,
    ));
    f.push(forwarded(
        "v4 UDP same flow again (hit)",
        udp(ip(CLIENT), 5353, ip(VIP_WEB), 53, b"query2"),
        14,
        dns,
        &dns_flow,
    ));
    f.push(fixture(
        "v4 UDP to a port that is no VIP",
        udp(ip(CLIENT), 5353, ip(VIP_WEB), 54, b"x"),
        XDP_PASS,
        "pass_not_vip",
    ));
    f.push(fixture(
        "v4 TCP to the UDP VIP's port",
        tcp4(40000, VIP_WEB, 53, Tcp::Syn),
        XDP_PASS,
        "pass_not_vip",
    ));
    // Any-port VIP.
    for port in [8080u16, 22] {
        let fl = flow(CLIENT, 40000, VIP_ANY, port, 6);
        f.push(forwarded(
            &format!("v4 TCP SYN to any-port VIP :{port}"),
            tcp4(40000, VIP_ANY, port, Tcp::Syn),
            14,
            dns,
            &fl,
        ));
    }
    f.push(fixture(
        "v4 UDP to a TCP any-port VIP",
        udp(ip(CLIENT), 1, ip(VIP_ANY), 53, b"x"),
        XDP_PASS,
        "pass_not_vip",
    ));
    // L7 VIP and non-VIP traffic go up the stack.
    f.push(fixture("v4 TCP SYN to L7 VIP", tcp4(40000, VIP_L7, 443, Tcp::Syn), XDP_PASS, "pass_l7"));
    f.push(fixture("v4 TCP ACK to L7 VIP", tcp4(40000, VIP_L7, 443, Tcp::Ack), XDP_PASS, "pass_l7"));
    f.push(fixture(
        "v4 TCP to L7 VIP address, other port",
        tcp4(40000, VIP_L7, 80, Tcp::Syn),
        XDP_PASS,
        "pass_not_vip",
    ));
    f.push(fixture(
        "v4 TCP to the lb's own address",
        tcp4(40000, "198.18.1.2", 22, Tcp::Syn),
        XDP_PASS,
        "pass_not_vip",
    ));
    let mut arp = tcp4(40000, VIP_WEB, 80, Tcp::Syn);
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    f.push(fixture("ARP", arp.clone(), XDP_PASS, "pass_not_ip"));
    f.push(fixture("LLDP", set(arp, 12, &0x88ccu16.to_be_bytes()), XDP_PASS, "pass_not_ip"));
    // VLAN tags are stripped on the way to the backend.
    let syn = tcp4(43000, VIP_WEB, 80, Tcp::Syn);
    f.push(forwarded("802.1Q-tagged v4 SYN", with_vlans(&syn, &[7]), 18, web(43000), &web_flow(43000)));
    let q = udp(ip(CLIENT), 5353, ip(VIP_WEB), 53, b"qinq");
    f.push(forwarded("QinQ-tagged v4 UDP", with_vlans(&q, &[100, 7]), 22, dns, &dns_flow));
    // IPv4 options are carried inside.
    let opt = with_ipv4_options(&tcp4(43001, VIP_WEB, 80, Tcp::Syn), &[1, 1, 1, 0]);
    f.push(forwarded("v4 SYN with 4 bytes of IP options", opt, 14, web(43001), &web_flow(43001)));
    let opt = with_ipv4_options(&tcp4(43002, VIP_WEB, 80, Tcp::Syn), &[1; 40]);
    f.push(forwarded("v4 SYN with IHL 15 (40 bytes of options)", opt, 14, web(43002), &web_flow(43002)));
    // Malformed packets: dropped, counted by reason.
    let good = tcp4(40000, VIP_WEB, 80, Tcp::Syn);
    // (BPF_PROG_TEST_RUN refuses frames under 14 bytes, as drivers never deliver them.)
    f.push(fixture(
        "QinQ inner tag cut short",
        with_vlans(&good, &[100, 7])[..20].to_vec(),
        XDP_DROP,
        "drop_malformed_l2",
    ));
    f.push(fixture(
        "VLAN tag cut short",
        with_vlans(&good, &[7])[..15].to_vec(),
        XDP_DROP,
        "drop_malformed_l2",
    ));
    f.push(fixture("IPv4 header cut at 10 bytes", good[..24].to_vec(), XDP_DROP, "drop_malformed_ipv4"));
    f.push(fixture("IPv4 IHL 4", set(good.clone(), 14, &[0x44]), XDP_DROP, "drop_malformed_ipv4"));
    f.push(fixture(
        "IPv4 total length beyond the frame",
        set(good.clone(), 16, &[0x05, 0xdc]),
        XDP_DROP,
        "drop_malformed_ipv4",
    ));
    f.push(fixture(
        "IPv4 total length below IHL",
        set(good.clone(), 16, &[0, 12]),
        XDP_DROP,
        "drop_malformed_ipv4",
    ));
    f.push(fixture(
        "IP version 5 in an IPv4 frame",
        set(good.clone(), 14, &[0x55]),
        XDP_DROP,
        "drop_malformed_ipv4",
    ));
    let mut short_tcp = good[..44].to_vec();
    short_tcp[16..18].copy_from_slice(&30u16.to_be_bytes());
    f.push(fixture("TCP header cut at 10 bytes", short_tcp, XDP_DROP, "drop_malformed_l4"));
    let mut short_udp = udp(ip(CLIENT), 1, ip(VIP_WEB), 53, b"")[..38].to_vec();
    short_udp[16..18].copy_from_slice(&24u16.to_be_bytes());
    f.push(fixture("UDP header cut at 4 bytes", short_udp, XDP_DROP, "drop_malformed_l4"));
    let syn6 = tcp(ip(CLIENT6), 40000, ip(VIP6), 80, Tcp::Syn, b"");
    f.push(fixture("IPv6 header cut at 20 bytes", syn6[..34].to_vec(), XDP_DROP, "drop_malformed_ipv6"));
    f.push(fixture(
        "IPv6 payload length beyond the frame",
        set(syn6.clone(), 18, &[0x05, 0xdc]),
        XDP_DROP,
        "drop_malformed_ipv6",
    ));
    let chain: Vec<u8> =
        [[60, 0, 1, 4, 0, 0, 0, 0]; 4].concat().into_iter().chain([6, 0, 1, 4, 0, 0, 0, 0]).collect();
    f.push(fixture(
        "IPv6 with 5 extension headers",
        with_ipv6_ext(&syn6, 0, &chain),
        XDP_DROP,
        "drop_malformed_ipv6",
    ));
    let cut_ext = with_ipv6_ext(&syn6, 0, &[6, 1, 1, 4, 0, 0, 0, 0]);
    f.push(fixture("IPv6 extension header longer than the packet", cut_ext, XDP_DROP, "drop_malformed_l4"));
    let mut short_icmp = echo_request(ip(CLIENT), ip(VIP_WEB))[..38].to_vec();
    short_icmp[16..18].copy_from_slice(&24u16.to_be_bytes());
    f.push(fixture("ICMP header cut at 4 bytes", short_icmp, XDP_DROP, "drop_malformed_l4"));
    // Deny lists come first.
    let denied = tcp(ip("203.0.113.9"), 40000, ip(VIP_WEB), 80, Tcp::Syn, b"");
    f.push(fixture("denied v4 source to a VIP", denied, XDP_DROP, "drop_denied"));
    let denied = udp(ip("203.0.113.200"), 1, ip("198.18.1.2"), 53, b"x");
    f.push(fixture("denied v4 source to a non-VIP", denied, XDP_DROP, "drop_denied"));
    let denied = tcp(ip("2001:db8:bad:1::9"), 40000, ip(VIP6), 80, Tcp::Syn, b"");
    f.push(fixture("denied v6 source", denied, XDP_DROP, "drop_denied"));
    // An IPv6 packet from an IPv4-mapped source meets the IPv4 deny list.
    let denied = tcp(ip("::ffff:203.0.113.9"), 40000, ip(VIP6), 80, Tcp::Syn, b"");
    f.push(fixture("denied v4 source, IPv4-mapped in an IPv6 packet", denied, XDP_DROP, "drop_denied"));
    let near = tcp(ip("203.0.114.1"), 40000, ip(VIP_WEB), 80, Tcp::Syn, b"");
    let near_flow = flow("203.0.114.1", 40000, VIP_WEB, 80, 6);
    f.push(forwarded(
        "v4 source just outside a denied prefix",
        near,
        14,
        h.model_backend(IDX_WEB, &near_flow),
        &near_flow,
    ));
    // Fragments.
    let frag = tcp(ip(CLIENT), 40000, ip(VIP_WEB), 80, Tcp::PshAck, &[1; 64]);
    f.push(fixture(
        "v4 first fragment (MF) to a VIP",
        fragment4(frag.clone(), 0x2000),
        XDP_PASS,
        "pass_fragment",
    ));
    f.push(fixture("v4 later fragment to a VIP", fragment4(frag.clone(), 0x0008), XDP_PASS, "pass_fragment"));
    let nofrag = tcp(ip(CLIENT), 40000, ip(VIP_NOFRAG), 80, Tcp::PshAck, &[1; 64]);
    f.push(fixture(
        "v4 fragment to a VIP that drops them",
        fragment4(nofrag, 0x2000),
        XDP_DROP,
        "drop_fragment",
    ));
    let frag6 = with_ipv6_ext(
        &tcp(ip(CLIENT6), 40000, ip(VIP6), 80, Tcp::PshAck, &[1; 64]),
        44,
        &[6, 0, 0, 1, 0, 0, 0, 9],
    );
    f.push(fixture("v6 fragment header to a VIP", frag6, XDP_PASS, "pass_fragment"));
    let other = tcp(ip(CLIENT), 40000, ip("198.18.1.2"), 80, Tcp::PshAck, &[1; 64]);
    f.push(fixture("v4 fragment to a non-VIP", fragment4(other, 0x2000), XDP_PASS, "pass_not_vip"));
    // ICMP echo to a VIP is answered here.
    let reply = |src, dst| Expect::Bytes(echo_reply(ip(src), ip(dst)));
    f.push(Fixture {
        output: reply(CLIENT, VIP_WEB),
        ..fixture("ICMP echo to a VIP", echo_request(ip(CLIENT), ip(VIP_WEB)), XDP_TX, "icmp_echo_reply")
    });
    f.push(Fixture {
        output: reply(CLIENT6, VIP6),
        ..fixture("ICMPv6 echo to a VIP", echo_request(ip(CLIENT6), ip(VIP6)), XDP_TX, "icmp_echo_reply")
    });
    f.push(fixture(
        "ICMP echo to a non-VIP",
        echo_request(ip(CLIENT), ip("198.18.1.2")),
        XDP_PASS,
        "pass_not_vip",
    ));
    let echo_reply_in = set(echo_request(ip(CLIENT), ip(VIP_WEB)), 34, &[0]);
    f.push(fixture("ICMP echo reply to a VIP", echo_reply_in, XDP_PASS, "pass_not_vip"));
    // ICMP "too big" about a VIP flow goes to that flow's backend.
    let sent = tcp(ip(VIP_WEB), 80, ip(CLIENT), 40000, Tcp::PshAck, &[0; 64]);
    let ptb = too_big(ip("198.18.0.1"), ip(VIP_WEB), ip_part(&sent));
    let mut fx = forwarded("ICMP frag-needed quoting a web VIP flow", ptb, 14, web(40000), &web_flow(40000));
    fx.reason = "icmp_too_big_forwarded";
    f.push(fx);
    let sent6 = tcp(ip(VIP6), 80, ip(CLIENT6), 40000, Tcp::PshAck, &[0; 64]);
    let ptb6 = too_big(ip("fd00:5e::1"), ip(VIP6), ip_part(&sent6));
    let f6 = flow(CLIENT6, 40000, VIP6, 80, 6);
    let mut fx =
        forwarded("ICMPv6 packet-too-big quoting a v6 VIP flow", ptb6, 14, h.model_backend(IDX_V6, &f6), &f6);
    fx.reason = "icmp_too_big_forwarded";
    f.push(fx);
    let not_vip = tcp(ip(VIP_WEB), 81, ip(CLIENT), 40000, Tcp::PshAck, &[0; 64]);
    let ptb = too_big(ip("198.18.0.1"), ip(VIP_WEB), ip_part(&not_vip));
    f.push(fixture("ICMP frag-needed quoting a non-VIP port", ptb, XDP_PASS, "pass_not_vip"));
    // IPv6: IP6IP6.
    let v6_flow = |sport| flow(CLIENT6, sport, VIP6, 80, 6);
    let v6 = |sport| h.model_backend(IDX_V6, &v6_flow(sport));
    f.push(forwarded("v6 TCP SYN to v6 VIP", syn6.clone(), 14, v6(40000), &v6_flow(40000)));
    let ack6 = tcp(ip(CLIENT6), 40000, ip(VIP6), 80, Tcp::Ack, b"");
    f.push(forwarded("v6 TCP ACK (hit)", ack6, 14, v6(40000), &v6_flow(40000)));
    let hbh =
        with_ipv6_ext(&tcp(ip(CLIENT6), 40001, ip(VIP6), 80, Tcp::Syn, b""), 0, &[6, 0, 1, 4, 0, 0, 0, 0]);
    f.push(forwarded("v6 SYN with a hop-by-hop header", hbh, 14, v6(40001), &v6_flow(40001)));
    for sport in 40010..40014 {
        let syn = tcp(ip(CLIENT6), sport, ip(VIP6), 80, Tcp::Syn, b"");
        f.push(forwarded(&format!("v6 SYN, new flow from :{sport}"), syn, 14, v6(sport), &v6_flow(sport)));
    }
    f.push(fixture(
        "v6 UDP to the v6 TCP VIP",
        udp(ip(CLIENT6), 1, ip(VIP6), 80, b"x"),
        XDP_PASS,
        "pass_not_vip",
    ));
    // IPv4 VIP, IPv6 backend: IPv4-in-IPv6.
    let fl = flow(CLIENT, 40000, VIP_V4_TO_V6, 80, 6);
    f.push(forwarded(
        "v4 SYN to a VIP with an IPv6 backend",
        tcp4(40000, VIP_V4_TO_V6, 80, Tcp::Syn),
        14,
        ip("fd00:5e:12::2"),
        &fl,
    ));
    // No backend, too big.
    f.push(fixture(
        "SYN to a VIP with an empty pool",
        tcp4(40000, VIP_EMPTY, 80, Tcp::Syn),
        XDP_DROP,
        "drop_no_backend",
    ));
    // Too big to encapsulate (max_encap_ip_len 1500): the client gets "fragmentation needed" /
    // "packet too big" with the inner MTU that fits, unless no error may be sent.
    let answered = |description: &str, input: Vec<u8>, vip: &str, client: &str, mtu: u32| Fixture {
        description: description.into(),
        output: Expect::Bytes(too_big_answer(ip(vip), ip(client), ip_part(&input), mtu)),
        input,
        verdict: XDP_TX,
        reason: "icmp_too_big_sent",
    };
    let big = tcp(ip(CLIENT), 44000, ip(VIP_WEB), 80, Tcp::PshAck, &[7; 1460]);
    f.push(answered(
        "1500-byte IPv4 packet, DF: fragmentation needed, MTU 1480",
        big.clone(),
        VIP_WEB,
        CLIENT,
        1480,
    ));
    let big6 = tcp(ip(CLIENT6), 44000, ip(VIP6), 80, Tcp::PshAck, &[7; 1440]);
    f.push(answered("1500-byte IPv6 packet: packet too big, MTU 1460", big6, VIP6, CLIENT6, 1460));
    let big_4in6 = tcp(ip(CLIENT), 44001, ip(VIP_V4_TO_V6), 80, Tcp::PshAck, &[7; 1460]);
    f.push(answered(
        "1500-byte IPv4 packet to an IPv6 backend: MTU 1460",
        big_4in6,
        VIP_V4_TO_V6,
        CLIENT,
        1460,
    ));
    let with_options = with_ipv4_options(&big, &[1, 1, 1, 1]);
    f.push(answered(
        "1504-byte IPv4 packet with options: the quote keeps them",
        with_options,
        VIP_WEB,
        CLIENT,
        1480,
    ));
    let mut no_df = big.clone();
    no_df[14 + 6] &= !0x40;
    refresh_ipv4_checksum(&mut no_df);
    f.push(fixture("1500-byte IPv4 packet without DF: dropped", no_df, XDP_DROP, "drop_too_big"));
    f.push(fixture("1500-byte packet in a VLAN: dropped", with_vlans(&big, &[7]), XDP_DROP, "drop_too_big"));
    f
}

fn run_fixtures(h: &mut Harness, fixtures: &[Fixture]) -> Result<()> {
    for (i, f) in fixtures.iter().enumerate() {
        let (verdict, out) = h.run(&f.input).with_context(|| format!("fixture {i} `{}`", f.description))?;
        let expected = match &f.output {
            Expect::Same => &f.input,
            Expect::Bytes(b) => b,
        };
        if verdict != f.verdict || &out != expected {
            panic!(
                "fixture {i} `{}`: verdict {verdict}, expected {}\n{}{}",
                f.description,
                f.verdict,
                hex_diff("expected", expected, &out),
                hex_diff("actual", &out, expected)
            );
        }
    }
    Ok(())
}

/// Counter slot -> how many fixtures should have counted there.
fn expected_counts(fixtures: &[Fixture]) -> BTreeMap<&'static str, u64> {
    let mut counts = BTreeMap::new();
    for f in fixtures {
        let verdict = match f.verdict {
            XDP_DROP => "drop",
            XDP_PASS => "pass",
            _ => "tx",
        };
        *counts.entry(verdict).or_default() += 1;
        if f.reason != verdict {
            *counts.entry(f.reason).or_default() += 1;
        }
    }
    counts
}

#[test]
fn root_fixtures_every_path() -> Result<()> {
    let mut h = Harness::new("fixtures", 8, desired_state(&WEB))?;
    let fixtures = phase_one(&h);
    assert!(fixtures.len() >= 60, "only {} fixtures", fixtures.len());
    run_fixtures(&mut h, &fixtures)?;

    let mut expected = expected_counts(&fixtures);
    let actual: BTreeMap<&str, u64> = h.stats()?.into_iter().filter(|(_, n)| *n > 0).collect();
    expected.retain(|_, n| *n > 0);
    assert_eq!(actual, expected, "global counters");

    // Per-backend packets: every forwarded fixture counted on the backend it went to.
    let mut per_backend: BTreeMap<IpAddr, u64> = BTreeMap::new();
    for f in &fixtures {
        if let (Expect::Bytes(out), XDP_TX) = (&f.output, f.verdict)
            && !matches!(f.reason, "icmp_echo_reply" | "icmp_too_big_sent")
        {
            let backend: IpAddr = if out[12] == 0x08 {
                <[u8; 4]>::try_from(&out[30..34]).unwrap().into()
            } else {
                <[u8; 16]>::try_from(&out[38..54]).unwrap().into()
            };
            *per_backend.entry(backend).or_default() += 1;
        }
    }
    let actual: BTreeMap<IpAddr, u64> =
        h.backend_stats()?.into_iter().map(|(a, p, _, _)| (a, p)).filter(|(_, p)| *p > 0).collect();
    assert_eq!(actual, per_backend, "per-backend packets");
    Ok(())
}

#[test]
fn root_fixtures_pool_change_keeps_flows() -> Result<()> {
    let mut h = Harness::new("poolchange", 8, desired_state(&WEB))?;
    let web_flow = |sport| flow(CLIENT, sport, VIP_WEB, 80, 6);
    // Establish flows from many ports on the two-backend pool.
    let ports: Vec<u16> = (50000..50200).collect();
    let before: Vec<IpAddr> = ports.iter().map(|&p| h.model_backend(IDX_WEB, &web_flow(p))).collect();
    let setup: Vec<Fixture> = ports
        .iter()
        .zip(&before)
        .map(|(&p, &b)| {
            forwarded("SYN before the change", tcp4(p, VIP_WEB, 80, Tcp::Syn), 14, b, &web_flow(p))
        })
        .collect();
    run_fixtures(&mut h, &setup)?;

    // Add a third backend: about a third of new flows go to it.
    let changes = h.apply(desired_state(&WEB_PLUS))?;
    assert!(changes.iter().any(|c| c.contains("new Maglev table")), "{changes:?}");
    let after: Vec<IpAddr> = ports.iter().map(|&p| h.model_backend(IDX_WEB, &web_flow(p))).collect();
    let moved: Vec<usize> = (0..ports.len()).filter(|&i| before[i] != after[i]).collect();
    let kept: Vec<usize> = (0..ports.len()).filter(|&i| before[i] == after[i]).collect();
    assert!(moved.len() > 20 && kept.len() > 20, "moved {} kept {}", moved.len(), kept.len());
    let (m0, m1, m2, k0) = (moved[0], moved[1], moved[2], kept[0]);

    // Established flows whose bucket moved stay on their backend (connection table hit).
    let f = vec![
        forwarded(
            "ACK of a moved flow: table hit keeps it",
            tcp4(ports[m0], VIP_WEB, 80, Tcp::Ack),
            14,
            before[m0],
            &web_flow(ports[m0]),
        ),
        forwarded(
            "ACK of a kept flow",
            tcp4(ports[k0], VIP_WEB, 80, Tcp::Ack),
            14,
            before[k0],
            &web_flow(ports[k0]),
        ),
    ];
    run_fixtures(&mut h, &f)?;

    // Evicted from the table: a non-SYN goes to the previous generation's backend.
    h.evict(&web_flow(ports[m1]))?;
    let f = vec![
        forwarded(
            "ACK of an evicted moved flow: previous generation",
            tcp4(ports[m1], VIP_WEB, 80, Tcp::Ack),
            14,
            before[m1],
            &web_flow(ports[m1]),
        ),
        forwarded(
            "...and stays there (re-inserted)",
            tcp4(ports[m1], VIP_WEB, 80, Tcp::PshAck),
            14,
            before[m1],
            &web_flow(ports[m1]),
        ),
        // A SYN always takes the current table (a new connection reusing the 5-tuple).
        forwarded(
            "SYN of a moved flow: current generation",
            tcp4(ports[m2], VIP_WEB, 80, Tcp::Syn),
            14,
            after[m2],
            &web_flow(ports[m2]),
        ),
        forwarded(
            "ACK after that SYN: hit on the new backend",
            tcp4(ports[m2], VIP_WEB, 80, Tcp::Ack),
            14,
            after[m2],
            &web_flow(ports[m2]),
        ),
    ];
    run_fixtures(&mut h, &f)?;
    assert!(h.conn_entry(&web_flow(ports[m1]))?.is_some());

    // Remove the backend a flow is on: its packets move (only they do), nothing is dropped.
    let gone = before[k0];
    let remaining: Vec<(&str, u32)> = WEB_PLUS.iter().copied().filter(|(a, _)| ip(a) != gone).collect();
    h.apply(desired_state(&remaining))?;
    let now = h.model_backend(IDX_WEB, &web_flow(ports[k0]));
    assert_ne!(now, gone);
    h.evict(&web_flow(ports[k0]))?;
    let f = vec![forwarded(
        "ACK of a flow whose backend was removed: current generation",
        tcp4(ports[k0], VIP_WEB, 80, Tcp::Ack),
        14,
        now,
        &web_flow(ports[k0]),
    )];
    run_fixtures(&mut h, &f)?;
    Ok(())
}

#[test]
fn root_fixtures_previous_generation_ends_with_flow_grace() -> Result<()> {
    // The balancer checks the grace on the coarse clock: within it, an evicted flow whose bucket
    // moved goes to its old backend; after it, to the current table's.
    let grace = Duration::from_secs(1);
    let with_grace = |web: &[(&str, u32)]| Desired { flow_grace: grace, ..desired_state(web) };
    let mut h = Harness::new("grace", 8, with_grace(&WEB))?;
    let web_flow = |sport| flow(CLIENT, sport, VIP_WEB, 80, 6);
    let ports: Vec<u16> = (51000..51100).collect();
    let before: Vec<IpAddr> = ports.iter().map(|&p| h.model_backend(IDX_WEB, &web_flow(p))).collect();
    h.apply(with_grace(&WEB_PLUS))?;
    let after: Vec<IpAddr> = ports.iter().map(|&p| h.model_backend(IDX_WEB, &web_flow(p))).collect();
    let moved: Vec<usize> = (0..ports.len()).filter(|&i| before[i] != after[i]).collect();
    assert!(moved.len() >= 2, "moved {}", moved.len());
    let (m0, m1) = (moved[0], moved[1]);
    let ack = |i: usize, what, to| {
        forwarded(what, tcp4(ports[i], VIP_WEB, 80, Tcp::Ack), 14, to, &web_flow(ports[i]))
    };

    // No SYN was seen for these flows: each ACK misses the connection table.
    run_fixtures(&mut h, &[ack(m0, "ACK within the grace: previous generation", before[m0])])?;
    std::thread::sleep(grace + Duration::from_millis(100));
    run_fixtures(&mut h, &[ack(m1, "ACK after the grace: current generation", after[m1])])?;
    Ok(())
}

#[test]
fn root_fixtures_flow_hash_matches_userspace() -> Result<()> {
    // The outer source carries the kernel's flow hash: it must equal lb-common's.
    let mut h = Harness::new("hash", 8, desired_state(&WEB))?;
    for sport in [1u16, 80, 443, 40000, 65535] {
        let input = tcp4(sport, VIP_WEB, 80, Tcp::Syn);
        let (verdict, out) = h.run(&input)?;
        assert_eq!(verdict, XDP_TX);
        let expected = (flow_hash(&flow(CLIENT, sport, VIP_WEB, 80, 6)) as u16).to_be_bytes();
        assert_eq!(&out[28..30], &expected, "sport {sport}");
    }
    let _ = packets::LB_MAC;
    Ok(())
}

#[test]
fn root_fixtures_redirect_instead_of_tx() -> Result<()> {
    const XDP_REDIRECT: u32 = 4;
    let mut state = desired_state(&WEB);
    state.redirect_ifindex = 1; // loopback: any ifindex the kernel knows
    let mut h = Harness::new("redirect", 8, state)?;
    let fl = flow(CLIENT, 40000, VIP_WEB, 80, 6);
    let input = tcp4(40000, VIP_WEB, 80, Tcp::Syn);
    let expected =
        encapsulated(&input[14..], h.model_backend(IDX_WEB, &fl), ENCAP_SRC4, ENCAP_SRC6, flow_hash(&fl));
    let (verdict, out) = h.run(&input)?;
    assert_eq!((verdict, out), (XDP_REDIRECT, expected));
    let stats: BTreeMap<&str, u64> = h.stats()?.into_iter().collect();
    assert_eq!((stats["redirect"], stats["tx"]), (1, 0));
    Ok(())
}

/// The deny lists are looked up only for sources the deny filter marks, and the any-port lookup
/// only while an any-port VIP exists (DataplaneConfig flags): a prefix or an any-port VIP added
/// later is honoured at once, and one removed stops matching.
#[test]
fn root_fixtures_lookups_follow_what_the_maps_hold() -> Result<()> {
    let bare = desired(vec![vip(VIP_WEB, 80, 6, 0, &WEB)], &[]);
    let full = desired(
        vec![vip(VIP_WEB, 80, 6, 0, &WEB), vip(VIP_ANY, 0, 6, 0, &[("198.18.12.2", 100)])],
        &["198.18.0.0/24", "fd00:5e::/64"],
    );
    let mut h = Harness::new("lookup-flags", 8, bare.clone())?;
    let to_web = tcp4(40000, VIP_WEB, 80, Tcp::Syn);
    let to_any = tcp4(40001, VIP_ANY, 8080, Tcp::Syn);
    let v6 = tcp(ip(CLIENT6), 40002, ip(VIP6), 80, Tcp::Syn, b"");
    let verdicts = |h: &mut Harness| -> Result<Vec<u32>> {
        [&to_web, &to_any, &v6].iter().map(|p| h.run(p).map(|(verdict, _)| verdict)).collect()
    };
    assert_eq!(verdicts(&mut h)?, [XDP_TX, XDP_PASS, XDP_PASS], "empty deny lists, no any-port VIP");
    h.apply(full)?;
    assert_eq!(verdicts(&mut h)?, [XDP_DROP, XDP_DROP, XDP_DROP], "client prefixes denied");
    let mut any_port_only = bare.clone();
    any_port_only.vips.push(vip(VIP_ANY, 0, 6, 0, &[("198.18.12.2", 100)]));
    h.apply(any_port_only)?;
    assert_eq!(verdicts(&mut h)?, [XDP_TX, XDP_TX, XDP_PASS], "deny lists emptied, any-port VIP kept");
    h.apply(bare)?;
    assert_eq!(verdicts(&mut h)?, [XDP_TX, XDP_PASS, XDP_PASS], "back to the start");
    Ok(())
}

/// Deny prefixes wider than a filter block mark every block they overlap (IPv4 /16s, IPv6 bits
/// 16..32), so sources far from the prefix's network address are still denied; neighbours
/// just outside pass; removing the prefixes lets all through.
#[test]
fn root_fixtures_deny_filter_covers_wide_prefixes() -> Result<()> {
    let vips = vec![vip(VIP_WEB, 80, 6, 0, &WEB), vip(VIP6, 80, 6, 0, &WEB6)];
    let deny = desired(vips.clone(), &["10.0.0.0/8", "fd00:5e00::/24", "172.16.5.0/24"]);
    let mut h = Harness::new("deny-filter", 8, deny)?;
    let cases = [
        ("10.0.0.1", VIP_WEB, XDP_DROP),
        ("10.255.200.7", VIP_WEB, XDP_DROP),
        ("11.0.0.1", VIP_WEB, XDP_TX),
        ("9.255.255.255", VIP_WEB, XDP_TX),
        ("172.16.5.77", VIP_WEB, XDP_DROP),
        ("172.16.6.77", VIP_WEB, XDP_TX),
        ("fd00:5eff:1234::9", VIP6, XDP_DROP),
        ("fd00:5e00::1", VIP6, XDP_DROP),
        ("fd00:5f00::1", VIP6, XDP_TX),
        ("fd01:5e00::1", VIP6, XDP_TX),
    ];
    let run = |h: &mut Harness| -> Result<Vec<u32>> {
        let mut verdicts = Vec::new();
        for (i, (src, dst, _)) in cases.iter().enumerate() {
            verdicts.push(h.run(&tcp(ip(src), 41000 + i as u16, ip(dst), 80, Tcp::Syn, b""))?.0);
        }
        Ok(verdicts)
    };
    let expected: Vec<u32> = cases.iter().map(|c| c.2).collect();
    assert_eq!(run(&mut h)?, expected, "sources against {cases:?}");
    h.apply(desired(vips, &[]))?;
    assert_eq!(run(&mut h)?, vec![XDP_TX; cases.len()], "deny lists emptied");
    Ok(())
}

/// The connection table's sets (lb_common::flow): a ninth flow in a full set, all used since
/// the last sweep, evicts the slot its hash names and starts a sweep; the next one evicts the
/// first slot not used since, sparing a flow that sent a packet in between.
#[test]
fn root_fixtures_conn_table_sets_evict_the_unused() -> Result<()> {
    let mut h = Harness::new("conn-sets", 8, desired_state(&WEB))?;
    let first = flow(CLIENT, 40000, VIP_WEB, 80, 6);
    let set = set_of(flow_hash(&first));
    // Ten flows of one set: other clients and ports until enough share it.
    let mut flows = vec![(CLIENT.to_owned(), 40000u16)];
    'search: for host in 0..=u16::MAX {
        let src = format!("198.18.{}.{}", host >> 8, host & 0xff);
        for sport in 1024..=u16::MAX {
            if set_of(flow_hash(&flow(&src, sport, VIP_WEB, 80, 6))) == set
                && (src.as_str(), sport) != (CLIENT, 40000)
            {
                flows.push((src.clone(), sport));
                if flows.len() == 10 {
                    break 'search;
                }
            }
        }
    }
    assert_eq!(flows.len(), 10);
    let key = |i: usize| flow(&flows[i].0, flows[i].1, VIP_WEB, 80, 6);
    let send = |h: &mut Harness, i: usize, flags: Tcp| -> Result<()> {
        let (verdict, _) = h.run(&tcp(ip(&flows[i].0), flows[i].1, ip(VIP_WEB), 80, flags, b""))?;
        assert_eq!(verdict, XDP_TX, "flow {i}");
        Ok(())
    };
    let present = |h: &Harness| -> Result<Vec<usize>> {
        Ok((0..10).filter(|&i| h.conn_entry(&key(i)).ok().flatten().is_some()).collect())
    };
    // Eight SYNs fill the set's ways 0..7 in order.
    for i in 0..8 {
        send(&mut h, i, Tcp::Syn)?;
    }
    assert_eq!(present(&h)?, (0..8).collect::<Vec<_>>());
    // The ninth: every slot was used since the (never run) sweep, so the hash names the slot.
    send(&mut h, 8, Tcp::Syn)?;
    let named = ((flow_hash(&key(8)) >> 17) % CONN_WAYS) as usize;
    let expected: Vec<usize> = (0..9).filter(|&i| i != named).collect();
    assert_eq!(present(&h)?, expected, "flow {named} evicted");
    // Flow `spared` sends a packet (a hit marks it used); the tenth flow evicts the first slot
    // used by neither it nor the ninth flow (which took slot `named`).
    let spared = if named == 0 { 1 } else { 0 };
    send(&mut h, spared, Tcp::Ack)?;
    send(&mut h, 9, Tcp::Syn)?;
    let victim = (0..8).find(|&way| way != spared && way != named).unwrap();
    let expected: Vec<usize> = (0..10).filter(|&i| i != named && i != victim).collect();
    assert_eq!(present(&h)?, expected, "flow {victim} evicted, flow {spared} spared");
    Ok(())
}

/// A harness whose state does not fit (two VIPs, rings for one) fails and leaves no pins.
#[test]
fn root_fixtures_failed_setup_leaves_no_pins() -> Result<()> {
    let two = desired(vec![vip(VIP_WEB, 80, 6, 0, &WEB), vip(VIP_ANY, 0, 6, 0, &WEB)], &[]);
    let error = Harness::new("too-small", 1, two).err().context("2 VIPs in rings for 1 were accepted")?;
    assert!(format!("{error:#}").contains("2 VIPs configured"), "{error:#}");
    let pins = format!("/sys/fs/bpf/sluice-too-small-{}", std::process::id());
    assert!(!std::path::Path::new(&pins).exists(), "{pins} left behind");
    Ok(())
}

/// The per-prefix SYN limit (lb_common::syn): a /24 gets its burst, then is dropped and counted;
/// another /24 and the flows already open are not touched; a reload to no limit lifts it.
#[test]
fn root_fixtures_syn_limit_per_source_prefix() -> Result<()> {
    let mut state = desired_state(&WEB);
    // 1 SYN a second per prefix, 4 at once: within this test's few ms, the burst.
    state.syn_limit = lb_common::syn::SynLimit::new(1, 4);
    let mut h = Harness::new("syn-limit", 8, state)?;
    let syn_from = |src: &str, sport: u16| tcp(ip(src), sport, ip(VIP_WEB), 80, Tcp::Syn, b"");
    let verdicts: Vec<u32> =
        (0..10).map(|i| h.run(&syn_from("100.64.7.7", 40000 + i)).map(|(v, _)| v)).collect::<Result<_>>()?;
    assert_eq!(verdicts, [[XDP_TX; 4].as_slice(), &[XDP_DROP; 6]].concat(), "the burst, then drops");
    // Another source of the same /24 shares the bucket; another /24 has its own.
    assert_eq!(h.run(&syn_from("100.64.7.200", 41000))?.0, XDP_DROP);
    assert_eq!(h.run(&syn_from("100.64.8.7", 41000))?.0, XDP_TX);
    // Packets of open flows are not SYNs: never limited.
    assert_eq!(h.run(&tcp(ip("100.64.7.7"), 40000, ip(VIP_WEB), 80, Tcp::Ack, b""))?.0, XDP_TX);
    let stats: BTreeMap<&str, u64> = h.stats()?.into_iter().collect();
    assert_eq!(stats["drop_syn_rate"], 7);
    // No limit: the prefix's SYNs pass again.
    let mut off = h.desired.clone();
    off.syn_limit = Default::default();
    h.apply(off)?;
    assert_eq!(h.run(&syn_from("100.64.7.7", 42000))?.0, XDP_TX);
    Ok(())
}

/// SYN cookies for an L7 VIP (lb_common::syn, lb_ebpf::synack): a SYN is answered from XDP with
/// a SYN-ACK (back to the sender, checksums valid, the options SYNPROXY reads back) whose
/// sequence number is a cookie of the kernel's secret; the ACK that carries it passes, one
/// with another number is dropped; a SYN without options gets the MSS alone. The other L7 VIP
/// (no cookies) passes its SYNs up as before.
#[test]
fn root_fixtures_syn_cookies_for_an_l7_vip() -> Result<()> {
    use etherparse::{SlicedPacket, TcpOptionElement, TransportSlice};
    let state = desired(
        vec![
            vip(VIP_L7, 443, 6, VIP_F_L7 | VIP_F_SYN_COOKIES, &[]),
            vip(VIP_WEB, 443, 6, VIP_F_L7, &[]),
            vip(VIP6, 443, 6, VIP_F_L7 | VIP_F_SYN_COOKIES, &[]),
        ],
        &[],
    );
    let mut h = Harness::new("syn-cookies", 8, state)?;
    let syn = linux_syn(ip(CLIENT), 40000, ip(VIP_L7), 443, 0x0102_0304, 0xaabb_ccdd);
    let (verdict, out) = h.run(&syn)?;
    assert_eq!(verdict, XDP_TX, "a SYN to a VIP with cookies is answered from XDP");
    assert_eq!((&out[..6], &out[6..12]), (&CLIENT_MAC[..], &LB_MAC[..]), "back to the sender");
    let parsed = SlicedPacket::from_ethernet(&out).context("the answer parses")?;
    let Some(etherparse::NetSlice::Ipv4(ipv4)) = &parsed.net else { anyhow::bail!("not IPv4") };
    let Some(TransportSlice::Tcp(answer)) = &parsed.transport else { anyhow::bail!("not TCP") };
    assert_eq!(
        (ipv4.header().source_addr().to_string(), ipv4.header().destination_addr().to_string()),
        (VIP_L7.to_string(), CLIENT.to_string())
    );
    let ip_header = ipv4.header().to_header();
    assert_eq!(ip_header.header_checksum, ip_header.calc_header_checksum(), "IPv4 checksum");
    let header = answer.to_header();
    assert_eq!(header.calc_checksum_ipv4(&ip_header, &[])?, header.checksum, "TCP checksum");
    assert!(header.syn && header.ack && !header.rst && !header.fin);
    assert_eq!((header.source_port, header.destination_port), (443, 40000));
    assert_eq!((header.acknowledgment_number, header.window_size), (0x0102_0305, 0));
    let options: Vec<TcpOptionElement> = answer.options_iterator().collect::<Result<_, _>>()?;
    let TcpOptionElement::Timestamp(tsval, tsecr) = options[2] else { anyhow::bail!("{options:?}") };
    assert_eq!(
        options,
        [
            TcpOptionElement::MaximumSegmentSize(lb_common::syn::SYN_COOKIE_MSS),
            TcpOptionElement::SelectiveAcknowledgementPermitted,
            TcpOptionElement::Timestamp(tsval, tsecr),
            TcpOptionElement::Noop,
            TcpOptionElement::WindowScale(lb_common::syn::SYN_COOKIE_WSCALE),
        ]
    );
    assert_eq!(
        (tsecr, tsval & 0x3f),
        (0xaabb_ccdd, 0x10 | 7),
        "the client's scale and SACK in our timestamp"
    );

    // The client's ACK carries the cookie + 1: no socket, valid cookie: up to SYNPROXY.
    let cookie = header.sequence_number;
    let ack = tcp_ack(ip(CLIENT), 40000, ip(VIP_L7), 443, 0x0102_0305, cookie.wrapping_add(1), b"");
    assert_eq!(h.run(&ack)?.0, XDP_PASS, "the ACK with the cookie");
    let forged = tcp_ack(ip(CLIENT), 40000, ip(VIP_L7), 443, 0x0102_0305, cookie.wrapping_add(2), b"");
    assert_eq!(h.run(&forged)?.0, XDP_DROP, "an ACK without a valid cookie");
    let other = tcp_ack(ip(CLIENT), 40001, ip(VIP_L7), 443, 0x0102_0305, cookie.wrapping_add(1), b"");
    assert_eq!(h.run(&other)?.0, XDP_DROP, "the cookie of another flow");

    // A SYN without options (hping3's): the MSS alone, the frame grown to fit it.
    let bare = tcp4(40002, VIP_L7, 443, Tcp::Syn);
    let (verdict, out) = h.run(&bare)?;
    assert_eq!((verdict, out.len()), (XDP_TX, 14 + 20 + 24));
    // No cookies on the other L7 VIP: its SYN goes up the stack.
    assert_eq!(h.run(&tcp4(40003, VIP_WEB, 443, Tcp::Syn))?.0, XDP_PASS);

    // IPv6: the same, with the IPv6 pseudo-header and an MSS of 1440.
    let syn6 = linux_syn(ip(CLIENT6), 40004, ip(VIP6), 443, 7, 0x0102_0304);
    let (verdict, out) = h.run(&syn6)?;
    assert_eq!(verdict, XDP_TX, "an IPv6 SYN to a VIP with cookies");
    let parsed = SlicedPacket::from_ethernet(&out).context("the IPv6 answer parses")?;
    let Some(etherparse::NetSlice::Ipv6(ipv6)) = &parsed.net else { anyhow::bail!("not IPv6") };
    let Some(TransportSlice::Tcp(answer)) = &parsed.transport else { anyhow::bail!("not TCP") };
    assert_eq!(ipv6.header().source_addr().to_string(), VIP6);
    let header = answer.to_header();
    assert_eq!(header.calc_checksum_ipv6(&ipv6.header().to_header(), &[])?, header.checksum, "TCP checksum");
    assert_eq!((header.syn, header.ack, header.acknowledgment_number), (true, true, 8));
    assert_eq!(
        answer.options_iterator().next().transpose()?,
        Some(TcpOptionElement::MaximumSegmentSize(1440))
    );
    let ack6 = tcp_ack(ip(CLIENT6), 40004, ip(VIP6), 443, 8, header.sequence_number.wrapping_add(1), b"");
    assert_eq!(h.run(&ack6)?.0, XDP_PASS, "the IPv6 ACK with the cookie");
    let forged6 = tcp_ack(ip(CLIENT6), 40004, ip(VIP6), 443, 8, header.sequence_number.wrapping_add(9), b"");
    assert_eq!(h.run(&forged6)?.0, XDP_DROP, "an IPv6 ACK without a valid cookie");

    let stats: BTreeMap<&str, u64> = h.stats()?.into_iter().collect();
    assert_eq!(
        (stats["syn_cookie_sent"], stats["syn_cookie_valid"], stats["drop_syn_cookie"]),
        (3, 2, 3),
        "{stats:?}"
    );
    Ok(())
}

/// The fixtures' packets changed a few bytes at a time (cut short, bits flipped, bytes
/// inserted or repeated): every one is passed or dropped untouched, or sent on well formed,
/// to a backend or back to its sender, and every one is counted under its verdict.
#[test]
fn root_fixtures_mutated_packets_are_counted_and_never_sent_on_malformed() -> Result<()> {
    const PACKETS: usize = 20_000;
    const SPICE: &[&[u8]] = &[
        &[0x81, 0x00, 0x00, 0x05], // a VLAN tag
        &[0x08, 0x00],
        &[0x86, 0xdd],
        &[0x45],
        &[0x4f],
        &[0x00, 0x00],
        &[0xff, 0xff],
        &[0x06],
        &[0x11],
        &[0x2c], // IPv6 fragment header
        &[0x00; 8],
    ];
    let mut h = Harness::new("mutated", 8, desired_state(&WEB))?;
    let seeds: Vec<Vec<u8>> = phase_one(&h).into_iter().map(|f| f.input).collect();
    let backends: Vec<IpAddr> = h
        .desired
        .vips
        .iter()
        .flat_map(|v| v.backends.iter().map(|w| lb_userspace::dataplane::tables::ip_of(&w.addr)))
        .collect();
    let mut rng = lb_userspace::mutation::Rng(0x5eed_0006);
    let mut verdicts = BTreeMap::new();
    for _ in 0..PACKETS {
        let seed = &seeds[rng.below(seeds.len())];
        let input = lb_userspace::mutation::mutate(&mut rng, seed, SPICE);
        if input.len() < 14 {
            continue; // shorter than an Ethernet header: the kernel delivers none (nor tests one)
        }
        let (verdict, out) = h.run(&input)?;
        *verdicts.entry(verdict).or_insert(0u64) += 1;
        match verdict {
            XDP_DROP | XDP_PASS => assert_eq!(out, input, "changed, verdict {verdict}: {input:02x?}"),
            XDP_TX => {
                let sent =
                    ip_header(&out).unwrap_or_else(|| panic!("sent on without an IP header: {out:02x?}"));
                let came = ip_header(&input);
                let to_sender = came.as_ref().is_some_and(|c| c.src == sent.dst);
                assert!(
                    backends.contains(&sent.dst) || to_sender,
                    "sent to {} (no backend, not the sender): {input:02x?}",
                    sent.dst
                );
                // A header the balancer made is right; one it answered in place (an echo reply:
                // addresses swapped) keeps the request's checksum, right or wrong, so a receiver
                // drops a corrupted one as it would have dropped the request.
                let answered_in_place = out.len() == input.len();
                assert!(
                    sent.checksum_ok || (answered_in_place && !came.is_some_and(|c| c.checksum_ok)),
                    "IPv4 header checksum broken: {input:02x?} -> {out:02x?}"
                );
                // The IP length covers what is there (a frame may carry padding after it, as
                // Ethernet's minimum size adds to a short packet: receivers trim it).
                let there = out.len() - sent.offset;
                assert!(
                    (sent.header..=there).contains(&sent.length),
                    "IP length {} for {there} bytes: {input:02x?}",
                    sent.length
                );
            }
            other => panic!("verdict {other} for {input:02x?}"),
        }
    }
    // Every packet counted once under its verdict.
    let stats: BTreeMap<&str, u64> = h.stats()?.into_iter().collect();
    for (verdict, name) in [(XDP_DROP, "drop"), (XDP_PASS, "pass"), (XDP_TX, "tx")] {
        assert_eq!(
            stats.get(name).copied().unwrap_or(0),
            verdicts.get(&verdict).copied().unwrap_or(0),
            "{name}"
        );
    }
    // The mutations reach every verdict (else this tests little).
    assert!(verdicts.values().all(|&n| n >= PACKETS as u64 / 50) && verdicts.len() == 3, "{verdicts:?}");
    Ok(())
}

/// What the mutation test checks of a frame's IP header.
struct IpHeader {
    /// Where it starts in the frame (after any VLAN tags).
    offset: usize,
    src: IpAddr,
    dst: IpAddr,
    /// The header's own length, and the whole packet's as the header gives it.
    header: usize,
    length: usize,
    /// IPv4: the header checksum is right (IPv6 has none: true).
    checksum_ok: bool,
}

/// A frame's IP header, read by etherparse leniently (a mutated frame whose lengths disagree
/// still shows the header it has).
fn ip_header(frame: &[u8]) -> Option<IpHeader> {
    let at = |header: &[u8]| (header.as_ptr() as usize - frame.as_ptr() as usize, header.len());
    let ((offset, header), src, dst, length, checksum_ok) =
        match etherparse::LaxSlicedPacket::from_ethernet(frame).ok()?.net? {
            etherparse::LaxNetSlice::Ipv4(ip) => {
                let h = ip.header();
                let checksum_ok = h.to_header().calc_header_checksum() == h.header_checksum();
                (
                    at(h.slice()),
                    h.source_addr().into(),
                    h.destination_addr().into(),
                    h.total_len().into(),
                    checksum_ok,
                )
            }
            etherparse::LaxNetSlice::Ipv6(ip) => {
                let h = ip.header();
                let length = h.slice().len() + usize::from(h.payload_length());
                (at(h.slice()), h.source_addr().into(), h.destination_addr().into(), length, true)
            }
            _ => return None,
        };
    Some(IpHeader { offset, src, dst, header, length, checksum_ok })
}

/// The backends' decapsulation, on the balancer's own encapsulated output (IPIP, IPv6 in IPv6,
/// IPv4 in IPv6) and on what it passes, changed a few bytes at a time: each packet goes up
/// either untouched or with exactly its outer IP header taken out and the Ethernet type made
/// the inner one's, as `decapsulation` predicts, and is counted as one or the other.
#[test]
fn root_fixtures_decap_of_mutated_packets_strips_exactly_the_outer_header() -> Result<()> {
    use aya::programs::{TestRun as _, TestRunOptions};
    use lb_common::stats::DecapStat;
    use lb_userspace::dataplane::{self, DECAP_PROGRAM, Role, counters};
    const PACKETS: usize = 20_000;
    const SPICE: &[&[u8]] =
        &[&[0x04], &[0x29], &[0x45], &[0x4f], &[0x41], &[0x20, 0x00], &[0x00; 20], &[0x86, 0xdd]];
    let mut balancer = Harness::new("decap-seeds", 8, desired_state(&WEB))?;
    let mut seeds = Vec::new();
    for fixture in phase_one(&balancer) {
        let (verdict, out) = balancer.run(&fixture.input)?;
        seeds.push(if verdict == XDP_TX { out } else { fixture.input });
    }
    drop(balancer);
    let pin_dir =
        std::path::PathBuf::from(format!("/sys/fs/bpf/sluice-decap-mutated-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&pin_dir);
    let tested = (|| -> Result<()> {
        let mut ebpf = dataplane::load(&pin_dir, Role::Decap)?;
        let mut rng = lb_userspace::mutation::Rng(0x5eed_000b);
        let (mut passed, mut decapsulated) = (0u64, 0u64);
        for _ in 0..PACKETS {
            let seed = &seeds[rng.below(seeds.len())];
            let input = lb_userspace::mutation::mutate(&mut rng, seed, SPICE);
            if input.len() < 14 {
                continue; // shorter than an Ethernet header: the kernel delivers none
            }
            let program = dataplane::xdp_program(&mut ebpf, DECAP_PROGRAM)?;
            let mut out = vec![0u8; input.len() + 256];
            let options =
                TestRunOptions { data_in: Some(&input), data_out: Some(&mut out), ..Default::default() };
            let result = program.test_run(options).context("BPF_PROG_TEST_RUN")?;
            out.truncate(result.data_size_out as usize);
            assert_eq!(result.return_value, XDP_PASS, "{input:02x?}");
            match decapsulation(&input) {
                None => {
                    assert_eq!(out, input, "changed a packet it must pass untouched");
                    passed += 1;
                }
                Some((outer, inner_type)) => {
                    let mut expected = input[..12].to_vec();
                    expected.extend(inner_type.to_be_bytes());
                    expected.extend(&input[14 + outer..]);
                    assert_eq!(out, expected, "not exactly the outer header taken out: {input:02x?}");
                    decapsulated += 1;
                }
            }
        }
        let counted = counters::decap(&pin_dir)?;
        let packets = |of: DecapStat| {
            counted.iter().find(|(stat, _)| *stat as u32 == of as u32).map(|(_, c)| c.packets)
        };
        assert_eq!(
            (packets(DecapStat::Passed), packets(DecapStat::Decapsulated)),
            (Some(passed), Some(decapsulated))
        );
        // The mutations reach both outcomes (else this tests little).
        assert!(
            passed >= PACKETS as u64 / 20 && decapsulated >= PACKETS as u64 / 20,
            "{passed} {decapsulated}"
        );
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&pin_dir);
    tested
}

/// What the backends' decapsulation takes out of a frame, if anything: the outer header's length
/// and the inner packet's Ethernet type. An unfragmented IPv4 header (20 bytes or more) or an
/// IPv6 header, carrying IPv4 or IPv6 (protocol 4 or 41), with an Ethernet header's worth of
/// the frame left once it is taken out (the kernel's bound for moving a frame's start; what
/// follows may be a cut-short inner packet, which the stack then drops).
fn decapsulation(frame: &[u8]) -> Option<(usize, u16)> {
    let inner = |proto: u8| match proto {
        4 => Some(0x0800u16),
        41 => Some(0x86dd),
        _ => None,
    };
    let (outer, inner_type) = match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 => {
            let ip = frame.get(14..34)?;
            let unfragmented = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff == 0;
            let outer = usize::from(ip[0] & 0x0f) * 4;
            (unfragmented && outer >= 20).then_some((outer, inner(ip[9])?))?
        }
        0x86dd => (40, inner(*frame.get(20)?)?),
        _ => return None,
    };
    (frame.len() >= outer + 14).then_some((outer, inner_type))
}
