//! A listener's open connections per client address (`max_connections_per_client`, nginx's
//! `limit_conn`, HAProxy's `src_conn_cur`): a client at its limit has its next connection
//! closed at once, so one address cannot hold every slot of `max_connections` with busy
//! connections (slow uploads), which the cap's eviction of idle ones does not free. An IPv6
//! client is counted by its network (`client_ipv6_prefix`, a /64 by default), as a client with
//! a /64 of its own could take a new address for every connection: `client_group` says how,
//! for the rate limits by client too.
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

/// What limits count `client` as: its IPv4 address (an IPv4 client on an IPv6 socket,
/// `::ffff:a.b.c.d`, included), or the first `ipv6_prefix` bits of its IPv6 address.
pub fn client_group(client: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match client.to_canonical() {
        IpAddr::V6(v6) if ipv6_prefix < 128 => {
            let mask = u128::MAX.checked_shl(128 - u32::from(ipv6_prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
        other => other,
    }
}

/// Every worker's connections of one listener, counted by client (`client_group`).
pub struct ClientCounts {
    limit: u32,
    ipv6_prefix: u8,
    open: Mutex<HashMap<IpAddr, u32, foldhash::fast::RandomState>>,
}

/// One connection's place in its client's count; given back when dropped.
pub struct Admitted {
    counts: Arc<ClientCounts>,
    client: IpAddr,
}

impl ClientCounts {
    pub fn new(limit: u32, ipv6_prefix: u8) -> Arc<ClientCounts> {
        Arc::new(ClientCounts { limit, ipv6_prefix, open: Mutex::default() })
    }

    /// A place for a connection from `client`, or None when its group (`client_group`) has
    /// `limit` open already.
    pub fn admit(self: &Arc<Self>, client: IpAddr) -> Option<Admitted> {
        let client = client_group(client, self.ipv6_prefix);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(client).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(Admitted { counts: self.clone(), client })
    }

    /// How many connections `client` has open.
    #[cfg(test)]
    fn open(&self, client: IpAddr) -> u32 {
        self.open.lock().unwrap().get(&client).copied().unwrap_or(0)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_at_its_limit_waits_for_one_of_its_own_to_close() {
        let counts = ClientCounts::new(2, 64);
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let first = counts.admit(a).unwrap();
        let _second = counts.admit(a).unwrap();
        assert!(counts.admit(a).is_none());
        // The same client on an IPv6 socket.
        assert!(counts.admit("::ffff:192.0.2.1".parse().unwrap()).is_none());
        let _other = counts.admit(b).expect("another client has its own count");
        drop(first);
        assert_eq!(counts.open(a), 1);
        assert!(counts.admit(a).is_some());
        assert_eq!(counts.open(a), 1, "the dropped admission gave its place back");
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_network() {
        let counts = ClientCounts::new(2, 64);
        let _first = counts.admit("2001:db8:1:2::1".parse().unwrap()).unwrap();
        let _second = counts.admit("2001:db8:1:2:ffff::9".parse().unwrap()).unwrap();
        assert!(
            counts.admit("2001:db8:1:2:abcd::1".parse().unwrap()).is_none(),
            "a new address, the same /64"
        );
        let _next = counts.admit("2001:db8:1:3::1".parse().unwrap()).expect("the next /64 is another client");
        let each = ClientCounts::new(1, 128);
        let _one = each.admit("2001:db8::1".parse().unwrap()).unwrap();
        let _two = each.admit("2001:db8::2".parse().unwrap()).expect("at /128 every address counts alone");
        let group = |ip: &str, bits| client_group(ip.parse().unwrap(), bits).to_string();
        assert_eq!(group("2001:db8:1:2:3:4:5:6", 48), "2001:db8:1::");
        assert_eq!(group("2001:db8:1:2:3:4:5:6", 56), "2001:db8:1::");
        assert_eq!(group("2001:db8:1:2ff:3:4:5:6", 56), "2001:db8:1:200::");
        assert_eq!(group("::ffff:192.0.2.7", 64), "192.0.2.7", "IPv4 stays whole");
    }

    #[test]
    fn a_client_with_nothing_open_leaves_no_entry() {
        let counts = ClientCounts::new(1, 64);
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        drop(counts.admit(a).unwrap());
        assert!(counts.open.lock().unwrap().is_empty());
    }
}
