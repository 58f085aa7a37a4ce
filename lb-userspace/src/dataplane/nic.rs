//! A NIC's own counters (what `ethtool -S` shows), read with the ethtool ioctl. Native XDP_TX
//! frames a driver cannot send (on veth: a peer without an XDP program) are dropped silently
//! and counted only there, so lbd watches the ones named like XDP transmit errors.
use std::{io, os::fd::AsRawFd};

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSTATS: u32 = 0x1d;
const ETH_SS_STATS: u32 = 1;
const ETH_GSTRING_LEN: usize = 32;
/// More counters than any driver has; a bound on what is allocated.
const MAX_STATS: usize = 16_384;

/// `struct ifreq` with its data pointer (40 bytes on 64-bit Linux).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

/// One ethtool request on `iface`, `buf` holding the command and room for the answer.
fn ethtool<T>(socket: &std::net::UdpSocket, iface: &str, buf: &mut [T]) -> io::Result<()> {
    let mut request = IfReq { name: [0; libc::IFNAMSIZ], data: buf.as_mut_ptr().cast(), _pad: [0; 16] };
    let name = iface.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad interface name"));
    }
    request.name[..name.len()].copy_from_slice(name);
    // SAFETY: SIOCETHTOOL on a socket we own, with an ifreq whose data points at `buf`, which
    // the caller sized for the command written at its start; both outlive the call.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), SIOCETHTOOL, &mut request) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Every counter of `iface` by name (empty when the driver has none).
pub fn stats(iface: &str) -> io::Result<Vec<(String, u64)>> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").or_else(|_| std::net::UdpSocket::bind("[::]:0"))?;
    // How many: ethtool_sset_info { cmd, reserved, sset_mask: u64, data: [u32] }.
    let mut info = [0u32; 6];
    info[0] = ETHTOOL_GSSET_INFO;
    info[2] = 1 << ETH_SS_STATS; // sset_mask, low half (little endian)
    ethtool(&socket, iface, &mut info)?;
    let n = if info[2] & (1 << ETH_SS_STATS) != 0 { info[4] as usize } else { 0 };
    if n == 0 || n > MAX_STATS {
        return Ok(Vec::new());
    }
    // Names: ethtool_gstrings { cmd, string_set, len, data: [u8; len * 32] }.
    let mut names = vec![0u8; 12 + n * ETH_GSTRING_LEN];
    names[0..4].copy_from_slice(&ETHTOOL_GSTRINGS.to_ne_bytes());
    names[4..8].copy_from_slice(&ETH_SS_STATS.to_ne_bytes());
    names[8..12].copy_from_slice(&(n as u32).to_ne_bytes());
    ethtool(&socket, iface, &mut names)?;
    // Values: ethtool_stats { cmd, n_stats, data: [u64; n] }, u64-aligned.
    let mut values = vec![0u64; 1 + n];
    values[0] = u64::from(ETHTOOL_GSTATS) | (n as u64) << 32;
    ethtool(&socket, iface, &mut values)?;
    Ok((0..n)
        .map(|i| {
            let raw = &names[12 + i * ETH_GSTRING_LEN..12 + (i + 1) * ETH_GSTRING_LEN];
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            (String::from_utf8_lossy(&raw[..end]).into_owned(), values[1 + i])
        })
        .collect())
}

/// The sum of `iface`'s counters named like XDP transmit errors (`xdp` with `tx` or `xmit`,
/// and `err`), and their names; None when the driver has none.
pub fn xdp_tx_errors(iface: &str) -> Option<(u64, Vec<String>)> {
    let stats = stats(iface).ok()?;
    let mut names = Vec::new();
    let mut total = 0u64;
    for (name, value) in stats {
        let n = name.to_ascii_lowercase();
        if n.contains("xdp") && (n.contains("tx") || n.contains("xmit")) && n.contains("err") {
            total += value;
            names.push(name);
        }
    }
    (!names.is_empty()).then_some((total, names))
}
