//! Addresses in map keys: always 16 bytes, IPv4 as IPv4-mapped IPv6 (`::ffff:a.b.c.d`).

/// A 16-byte address as it appears in map keys and values.
pub type Addr = [u8; 16];

/// The IPv4-mapped form of an IPv4 address given as its four network-order bytes.
#[inline(always)]
pub const fn mapped_v4(v4: [u8; 4]) -> Addr {
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3]]
}

/// Whether `addr` is an IPv4-mapped address.
#[inline(always)]
pub fn is_v4(addr: &Addr) -> bool {
    addr[..10] == [0; 10] && addr[10] == 0xff && addr[11] == 0xff
}
