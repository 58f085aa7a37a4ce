//! The SYN-ACK that answers a SYN with a SYN cookie (L7 VIPs with `syn_cookies`): what the
//! client's SYN offers (window scale, SACK, timestamps), and the answer's IP (v4 or v6) and TCP headers
//! with their checksums. Pure code over copies of the headers: the XDP program moves bytes in
//! and out with helpers, host tests run it as is.
//!
//! The answer is the one netfilter's SYNPROXY would send, so that SYNPROXY, which checks the
//! returning ACK and opens the real connection to lbd's listener, understands it: window 0
//! (the client waits for SYNPROXY's window update before it sends data), our MSS, and when the
//! client sent a timestamp, SACK permission and window scale as offered, with the client's
//! window scale (0xf: none) and SACK permission (bit 4) kept in the low six bits of our
//! timestamp value, where SYNPROXY reads them back from the ACK's echo. A client without
//! timestamps gets neither window scaling nor SACK (as with the kernel's own cookies).
use lb_common::syn::{SYN_COOKIE_MSS, SYN_COOKIE_MSS6, SYN_COOKIE_WSCALE};

use crate::{
    csum,
    parse::{IPPROTO_TCP, TCP_ACK, TCP_SYN},
};

/// The largest TCP header (with options).
pub const TCP_MAX_HLEN: usize = 60;
/// The bytes of the IP header [`synack`] works on: IPv4's 20 (no options) or IPv6's 40 (no
/// extension headers).
pub const IP_MAX_HLEN: usize = 40;
/// TTL of the answers.
const TTL: u8 = 64;

const OPT_NOP: u8 = 1;
const OPT_MSS: u8 = 2;
const OPT_WSCALE: u8 = 3;
const OPT_SACK_PERM: u8 = 4;
const OPT_TIMESTAMP: u8 = 8;

/// What a SYN's options offer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offered {
    pub wscale: Option<u8>,
    pub sack: bool,
    /// The client's timestamp value, if it sent the option.
    pub tsval: Option<u32>,
}

/// Where a known SYN layout has its options (offsets into the TCP header), for a header of
/// `len` bytes.
struct Layout {
    len: usize,
    sack: usize,
    timestamp: usize,
    wscale: usize,
}

/// The SYN layouts of the systems that send timestamps (without them, SYNPROXY can keep no
/// option: the answer then has the MSS alone, whatever the SYN offered).
const LAYOUTS: [Layout; 3] = [
    // Linux: MSS, SACK permitted, timestamps, NOP, window scale.
    Layout { len: 40, sack: 24, timestamp: 26, wscale: 37 },
    // FreeBSD: MSS, NOP, window scale, SACK permitted, timestamps.
    Layout { len: 40, wscale: 25, sack: 28, timestamp: 30 },
    // macOS and iOS: MSS, NOP, window scale, NOP, NOP, timestamps, SACK permitted, end.
    Layout { len: 44, wscale: 25, timestamp: 30, sack: 40 },
];

/// Reads what the SYN with TCP header `tcp` (`len` bytes) offers, when its options are laid
/// out as one of [`LAYOUTS`] (kinds and sizes checked where each option should be); any other
/// layout offers nothing here. Not a walk over the options: every read is at a constant offset,
/// which the verifier checks in one pass, where an option-by-option walk made it explore every
/// chain of option sizes (over its limit of a million instructions).
#[inline(always)]
pub fn offered(tcp: &[u8; TCP_MAX_HLEN], len: usize) -> Offered {
    let is = |at: usize, kind: u8, size: u8| tcp[at] == kind && tcp[at + 1] == size;
    let mut i = 0;
    while i < LAYOUTS.len() {
        let l = &LAYOUTS[i];
        if len == l.len
            && is(20, OPT_MSS, 4)
            && is(l.sack, OPT_SACK_PERM, 2)
            && is(l.timestamp, OPT_TIMESTAMP, 10)
            && is(l.wscale, OPT_WSCALE, 3)
        {
            let t = l.timestamp + 2;
            return Offered {
                wscale: Some(tcp[l.wscale + 2]),
                sack: true,
                tsval: Some(u32::from_be_bytes([tcp[t], tcp[t + 1], tcp[t + 2], tcp[t + 3]])),
            };
        }
        i += 1;
    }
    Offered::default()
}

/// Our timestamp value: the time in ms with its low six bits replaced by the client's window
/// scale (0xf: none) and SACK permission (bit 4), as SYNPROXY reads them back.
#[inline(always)]
pub fn timestamp_cookie(now_ms: u32, offered: &Offered) -> u32 {
    let wscale = match offered.wscale {
        Some(w) => (w & 0xf) as u32,
        None => 0xf,
    };
    (now_ms & !0x3f) | wscale | (offered.sack as u32) << 4
}

#[inline(always)]
fn put32(out: &mut [u8], at: usize, value: u32) {
    if let Some(slot) = out.get_mut(at..at + 4) {
        slot.copy_from_slice(&value.to_be_bytes());
    }
}

/// The one's-complement sum of `bytes[from..from + len]` as big-endian words (`len` even, at
/// most `N`).
#[inline(always)]
fn sum16<const N: usize>(bytes: &[u8; N], from: usize, len: usize) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < N / 2 {
        let at = from + 2 * i;
        if 2 * i >= len || at + 1 >= N {
            break;
        }
        sum += u16::from_be_bytes([bytes[at], bytes[at + 1]]) as u32;
        i += 1;
    }
    sum
}

/// Turns the SYN's headers, copied into `ip` (IPv4: its first 20 bytes) and `tcp` (`tcp_len`
/// bytes), into the SYN-ACK's in place: addresses and ports swapped, sequence number `cookie`,
/// the options above, checksums. Returns the new TCP header's length (20 to 40). In place, so
/// the XDP program needs no third buffer on its 512-byte stack.
#[inline(always)]
pub fn synack(
    ip: &mut [u8; IP_MAX_HLEN],
    ipv6: bool,
    tcp: &mut [u8; TCP_MAX_HLEN],
    tcp_len: usize,
    cookie: u32,
    now_ms: u32,
) -> usize {
    let offered = offered(tcp, tcp_len);
    let (sport, dport) = ([tcp[0], tcp[1]], [tcp[2], tcp[3]]);
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    // TCP options, as words.
    let mut options = [0u32; 5];
    let mut words = 0;
    let mss = if ipv6 { SYN_COOKIE_MSS6 } else { SYN_COOKIE_MSS };
    options[words] = (OPT_MSS as u32) << 24 | 4 << 16 | mss as u32;
    words += 1;
    if let Some(tsecr) = offered.tsval {
        let lead = if offered.sack {
            (OPT_SACK_PERM as u32) << 24 | 2 << 16
        } else {
            (OPT_NOP as u32) << 24 | (OPT_NOP as u32) << 16
        };
        options[words] = lead | (OPT_TIMESTAMP as u32) << 8 | 10;
        options[words + 1] = timestamp_cookie(now_ms, &offered);
        options[words + 2] = tsecr;
        words += 3;
        if offered.wscale.is_some() {
            options[words] =
                (OPT_NOP as u32) << 24 | (OPT_WSCALE as u32) << 16 | 3 << 8 | SYN_COOKIE_WSCALE as u32;
            words += 1;
        }
    }
    let tcp_out = 20 + 4 * words;

    // IP: addresses swapped, our TTL / hop limit, the new length.
    let pseudo = if ipv6 {
        let mut src = [0u8; 16];
        src.copy_from_slice(&ip[8..24]);
        ip.copy_within(24..40, 8);
        ip[24..40].copy_from_slice(&src);
        ip[..4].copy_from_slice(&[0x60, 0, 0, 0]);
        ip[4..6].copy_from_slice(&(tcp_out as u16).to_be_bytes());
        ip[6] = IPPROTO_TCP;
        ip[7] = TTL;
        sum16(ip, 8, 32)
    } else {
        let mut src = [0u8; 4];
        src.copy_from_slice(&ip[12..16]);
        ip.copy_within(16..20, 12);
        ip[16..20].copy_from_slice(&src);
        ip[..12].copy_from_slice(&[0x45, 0, 0, 0, 0, 0, 0x40, 0, TTL, IPPROTO_TCP, 0, 0]);
        ip[2..4].copy_from_slice(&((20 + tcp_out) as u16).to_be_bytes());
        let header: [u32; 5] = core::array::from_fn(|i| {
            u32::from_be_bytes([ip[4 * i], ip[4 * i + 1], ip[4 * i + 2], ip[4 * i + 3]])
        });
        ip[10..12].copy_from_slice(&csum::ipv4_header(&header).to_be_bytes());
        sum16(ip, 12, 8)
    };

    // TCP: ports swapped, our cookie, the client's sequence number + 1, SYN|ACK, window 0.
    tcp[0..2].copy_from_slice(&dport);
    tcp[2..4].copy_from_slice(&sport);
    put32(tcp, 4, cookie);
    put32(tcp, 8, seq.wrapping_add(1));
    tcp[12] = ((tcp_out / 4) as u8) << 4;
    tcp[13] = TCP_SYN | TCP_ACK;
    tcp[14..20].copy_from_slice(&[0; 6]);
    let mut i = 0;
    while i < 5 {
        if i < words {
            put32(tcp, 20 + 4 * i, options[i]);
        }
        i += 1;
    }
    // Pseudo-header (addresses, protocol, TCP length) and the TCP header.
    let pseudo = pseudo + IPPROTO_TCP as u32 + tcp_out as u32;
    let check = !csum::fold(pseudo + sum16(tcp, 0, tcp_out));
    tcp[16..18].copy_from_slice(&check.to_be_bytes());
    tcp_out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Linux client's SYN (MSS 1460, SACK, timestamps, window scale 7) from 10.0.0.1:40000
    /// to 10.0.0.2:443, sequence number 0x01020304, timestamp 0xaabbccdd.
    fn linux_syn() -> ([u8; IP_MAX_HLEN], [u8; TCP_MAX_HLEN], usize) {
        let mut ip = [0u8; IP_MAX_HLEN];
        ip[..20]
            .copy_from_slice(&[0x45, 0, 0, 60, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
        let mut tcp = [0u8; TCP_MAX_HLEN];
        let head = [
            0x9c, 0x40, 0x01, 0xbb, 0x01, 0x02, 0x03, 0x04, 0, 0, 0, 0, 0xa0, 0x02, 0xfa, 0xf0, 0, 0, 0, 0,
            // MSS 1460, SACK permitted, timestamps, NOP, window scale 7
            2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0xaa, 0xbb, 0xcc, 0xdd, 0, 0, 0, 0, 1, 3, 3, 7,
        ];
        tcp[..40].copy_from_slice(&head);
        (ip, tcp, 40)
    }

    /// Sums `bytes` as big-endian words (RFC 1071).
    fn sum(bytes: &[u8]) -> u32 {
        bytes.chunks(2).map(|w| u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]) as u32).sum()
    }

    #[test]
    fn a_linux_syn_offers_scale_sack_and_timestamps() {
        let (_, tcp, len) = linux_syn();
        assert_eq!(offered(&tcp, len), Offered { wscale: Some(7), sack: true, tsval: Some(0xaabbccdd) });
    }

    #[test]
    fn bsd_and_apple_layouts_are_read_too() {
        let mut tcp = [0u8; TCP_MAX_HLEN];
        let bsd = [2, 4, 5, 180, 1, 3, 3, 6, 4, 2, 8, 10, 0, 0, 0, 9, 0, 0, 0, 0];
        tcp[20..40].copy_from_slice(&bsd);
        assert_eq!(offered(&tcp, 40), Offered { wscale: Some(6), sack: true, tsval: Some(9) });
        let apple = [2, 4, 5, 180, 1, 3, 3, 6, 1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 0, 4, 2, 0, 0];
        tcp[20..44].copy_from_slice(&apple);
        assert_eq!(offered(&tcp, 44), Offered { wscale: Some(6), sack: true, tsval: Some(9) });
    }

    #[test]
    fn other_layouts_and_cut_options_offer_nothing() {
        let (_, mut tcp, _) = linux_syn();
        // The header claims 28 bytes: the timestamp and window scale are not in it.
        assert_eq!(offered(&tcp, 28), Offered::default());
        tcp[27] = 9; // the timestamp's size is wrong
        assert_eq!(offered(&tcp, 40), Offered::default());
        // Windows: MSS, NOP, window scale, NOP, NOP, SACK permitted; no timestamps.
        let mut windows = [0u8; TCP_MAX_HLEN];
        windows[20..32].copy_from_slice(&[2, 4, 5, 180, 1, 3, 3, 8, 1, 1, 4, 2]);
        assert_eq!(offered(&windows, 32), Offered::default());
    }

    #[test]
    fn the_answer_is_a_valid_syn_ack_with_the_cookie_and_the_encoded_options() {
        let (mut ip, mut tcp, len) = linux_syn();
        let tcp_out = synack(&mut ip, false, &mut tcp, len, 0xc0c0_0001, 0x0001_2345);
        assert_eq!(tcp_out, 40);
        // IPv4: swapped addresses, length, and a checksum that sums to 0xffff.
        assert_eq!((&ip[12..16], &ip[16..20]), (&[10, 0, 0, 2][..], &[10, 0, 0, 1][..]));
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 60);
        assert_eq!(csum::fold(sum(&ip[..20])), 0xffff);
        // TCP: ports swapped, cookie, ack = seq + 1, SYN|ACK, 40-byte header, window 0.
        assert_eq!(&tcp[0..4], &[0x01, 0xbb, 0x9c, 0x40]);
        assert_eq!(&tcp[4..8], &0xc0c0_0001u32.to_be_bytes());
        assert_eq!(&tcp[8..12], &0x0102_0305u32.to_be_bytes());
        assert_eq!((tcp[12], tcp[13], &tcp[14..16]), (0xa0, 0x12, &[0u8, 0][..]));
        // MSS 1460; SACK permitted + timestamps (ours: ms with scale 7 and SACK in the low
        // bits; echo: the client's); NOP + window scale 7.
        assert_eq!(&tcp[20..24], &[2, 4, 0x05, 0xb4]);
        assert_eq!(&tcp[24..28], &[4, 2, 8, 10]);
        assert_eq!(
            u32::from_be_bytes([tcp[28], tcp[29], tcp[30], tcp[31]]),
            (0x0001_2345 & !0x3f) | 0x10 | 7
        );
        assert_eq!(&tcp[32..36], &[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(&tcp[36..40], &[1, 3, 3, SYN_COOKIE_WSCALE]);
        // TCP checksum over the pseudo-header and the segment.
        let pseudo = sum(&ip[12..20]) + 6 + 40;
        assert_eq!(csum::fold(pseudo + sum(&tcp[..40])), 0xffff);
    }

    #[test]
    fn a_syn_without_options_gets_the_mss_alone() {
        let (mut ip, mut tcp, _) = linux_syn();
        tcp[12] = 0x50;
        tcp[20..40].fill(0);
        let tcp_out = synack(&mut ip, false, &mut tcp, 20, 7, 0);
        assert_eq!((tcp_out, tcp[12], u16::from_be_bytes([ip[2], ip[3]])), (24, 0x60, 44));
        assert_eq!(&tcp[20..24], &[2, 4, 0x05, 0xb4]);
        let pseudo = sum(&ip[12..20]) + 6 + 24;
        assert_eq!(csum::fold(pseudo + sum(&tcp[..24])), 0xffff);
    }

    #[test]
    fn an_ipv6_answer_swaps_the_addresses_and_sums_the_ipv6_pseudo_header() {
        let (_, mut tcp, len) = linux_syn();
        let mut ip = [0u8; IP_MAX_HLEN];
        ip[..8].copy_from_slice(&[0x60, 0, 0, 0, 0, 40, 6, 64]);
        ip[8..24].copy_from_slice(&[0xfd, 0, 0, 0x5e, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        ip[24..40].copy_from_slice(&[0xfd, 0, 0, 0x5e, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        let (client, vip) = (ip[8..24].to_vec(), ip[24..40].to_vec());
        let tcp_out = synack(&mut ip, true, &mut tcp, len, 1, 0);
        assert_eq!((&ip[8..24], &ip[24..40]), (&vip[..], &client[..]));
        assert_eq!(&ip[..8], &[0x60, 0, 0, 0, 0, 40, 6, 64]);
        assert_eq!(&tcp[20..24], &[2, 4, 0x05, 0xa0], "MSS 1440 over IPv6");
        let pseudo = sum(&ip[8..40]) + 6 + tcp_out as u32;
        assert_eq!(csum::fold(pseudo + sum(&tcp[..tcp_out])), 0xffff);
    }

    #[test]
    fn no_window_scale_is_encoded_as_0xf() {
        let offered = Offered { wscale: None, sack: false, tsval: Some(1) };
        assert_eq!(timestamp_cookie(0x1000_0fff, &offered), 0x1000_0fcf);
    }
}
