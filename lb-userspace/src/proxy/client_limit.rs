//! A listener's open connections per client address (`max_connections_per_client`, nginx's
//! `limit_conn`, HAProxy's `src_conn_cur`): a client at its limit has its next connection
//! closed at once, so one address cannot hold every slot of `max_connections` with busy
//! connections (slow uploads), which the cap's eviction of idle ones does not free.
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

/// Every worker's connections of one listener, counted by client address.
pub struct ClientCounts {
    limit: u32,
    open: Mutex<HashMap<IpAddr, u32, foldhash::fast::RandomState>>,
}

/// One connection's place in its client's count; given back when dropped.
pub struct Admitted {
    counts: Arc<ClientCounts>,
    client: IpAddr,
}

impl ClientCounts {
    pub fn new(limit: u32) -> Arc<ClientCounts> {
        Arc::new(ClientCounts { limit, open: Mutex::default() })
    }

    /// A place for a connection from `client`, or None when it has `limit` open already. An
    /// IPv4 client on an IPv6 socket (`::ffff:a.b.c.d`) counts as its IPv4 address.
    pub fn admit(self: &Arc<Self>, client: IpAddr) -> Option<Admitted> {
        let client = client.to_canonical();
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
        let counts = ClientCounts::new(2);
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
    fn a_client_with_nothing_open_leaves_no_entry() {
        let counts = ClientCounts::new(1);
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        drop(counts.admit(a).unwrap());
        assert!(counts.open.lock().unwrap().is_empty());
    }
}
