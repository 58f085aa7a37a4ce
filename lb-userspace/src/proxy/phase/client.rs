//! Client: which address a request comes from. The connection's peer, or, when the peer is a
//! trusted proxy (the listener's `client_address`), the address it forwarded (nginx's
//! `realip` with `real_ip_recursive`, Envoy's trusted hops); the gates, the hash by client and
//! the access log see it.
use std::net::{IpAddr, SocketAddr};

use hyper::{HeaderMap, header::FORWARDED};

use crate::{config::ClientAddress, proxy::phase::headers::X_FORWARDED_FOR};

/// The request's client: `peer`, unless `peer` is one of `from`'s trusted proxies and the field
/// names another address. From X-Forwarded-For (every field of it, in order), or from
/// Forwarded's `for=` (RFC 7239: an element per hop), that is the last address not itself
/// trusted, walking from the right (the proxies appended theirs), or the first if all are; an
/// entry that is not an address (Forwarded's `unknown` or an obfuscated `_name`, an element
/// without `for`) stops the walk and the peer stays the client, as does a field that is
/// missing or not an address.
pub fn address(from: &ClientAddress, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let trusted = |ip: &IpAddr| from.trusted.iter().any(|net| net.contains(ip));
    if !trusted(&peer) {
        return peer;
    }
    let entry: fn(&str) -> Option<IpAddr> = if from.header == X_FORWARDED_FOR {
        parse
    } else if from.header == FORWARDED {
        forwarded_for
    } else {
        return headers.get(&from.header).and_then(|v| parse(v.to_str().ok()?)).unwrap_or(peer);
    };
    let mut last = peer;
    for field in headers.get_all(&from.header).iter().rev() {
        let Ok(text) = field.to_str() else { return peer };
        // Split at every comma, quoted or not: the entries the trusted proxies appended must
        // read the same whatever a client wrote before them (an open quote of its own would
        // otherwise swallow them, and the walk would stop at the proxy's address).
        for element in text.rsplit(',') {
            let Some(ip) = entry(element) else { return peer };
            if !trusted(&ip) {
                return ip;
            }
            last = ip;
        }
    }
    last
}

/// The address of a Forwarded element's `for` (`for=192.0.2.1`, `for="[2001:db8::1]:443"`;
/// names case-insensitive, RFC 7239 §4); None without one, or when it is no address. Pairs
/// are split at every `;`, as elements at every `,` (an address holds neither).
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let value = element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim_matches([' ', '\t']).eq_ignore_ascii_case("for").then_some(value)
    })?;
    let value = value.trim_matches([' ', '\t']);
    let value = match value.strip_prefix('"') {
        // A quoted address has no escapes of its own (`\` only before a character that
        // needs none in an address): one with a backslash is not an address.
        Some(quoted) => quoted.strip_suffix('"').filter(|v| !v.contains('\\'))?,
        None => value,
    };
    parse(value)
}

/// One address: `192.0.2.1`, `2001:db8::1`, `[2001:db8::1]`, with a port or not; spaces
/// around it.
fn parse(text: &str) -> Option<IpAddr> {
    let text = text.trim_matches([' ', '\t']);
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| text.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
}

#[cfg(test)]
mod tests {
    use hyper::header::{HeaderName, HeaderValue};

    use super::*;

    fn from(header: &str) -> ClientAddress {
        let trusted = ["10.0.0.0/8", "2001:db8:f::/48"].iter().map(|n| n.parse().unwrap()).collect();
        ClientAddress { header: HeaderName::from_bytes(header.as_bytes()).unwrap(), trusted }
    }

    fn client(header: &str, peer: &str, fields: &[&str]) -> String {
        let mut headers = HeaderMap::new();
        for value in fields {
            headers.append(
                HeaderName::from_bytes(header.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        address(&from(header), peer.parse().unwrap(), &headers).to_string()
    }

    #[test]
    fn the_last_untrusted_address_of_x_forwarded_for_from_a_trusted_peer_is_the_client() {
        let xff = |peer, fields: &[&str]| client("x-forwarded-for", peer, fields);
        assert_eq!(xff("10.0.0.2", &["192.0.2.1"]), "192.0.2.1");
        // A client's own claim before the address the trusted proxy saw is passed over.
        assert_eq!(xff("10.0.0.2", &["6.6.6.6, 192.0.2.1, 10.1.1.1"]), "192.0.2.1");
        assert_eq!(xff("10.0.0.2", &["6.6.6.6", "192.0.2.1,10.1.1.1"]), "192.0.2.1", "fields in order");
        assert_eq!(xff("10.0.0.2", &["\"6.6.6.6, 192.0.2.1"]), "192.0.2.1", "a client's open quote");
        assert_eq!(xff("10.0.0.2", &["[2001:db8::1]:443"]), "2001:db8::1");
        assert_eq!(xff("2001:db8:f::9", &["2001:db8::1"]), "2001:db8::1");
        assert_eq!(xff("10.0.0.2", &["10.3.3.3, 10.1.1.1"]), "10.3.3.3", "all trusted: the first");
        // A peer that is not trusted is the client, whatever it says.
        assert_eq!(xff("192.0.2.9", &["192.0.2.1"]), "192.0.2.9");
        // Nothing usable: the peer.
        assert_eq!(xff("10.0.0.2", &[]), "10.0.0.2");
        assert_eq!(xff("10.0.0.2", &["192.0.2.1, unknown"]), "10.0.0.2");
        assert_eq!(xff("10.0.0.2", &["192.0.2.1,"]), "10.0.0.2", "an empty entry");
    }

    #[test]
    fn the_last_untrusted_for_of_forwarded_from_a_trusted_peer_is_the_client() {
        let fwd = |peer, fields: &[&str]| client("forwarded", peer, fields);
        assert_eq!(fwd("10.0.0.2", &["for=192.0.2.1"]), "192.0.2.1");
        assert_eq!(fwd("10.0.0.2", &["for=6.6.6.6, for=192.0.2.1;proto=https, For=10.1.1.1"]), "192.0.2.1");
        assert_eq!(fwd("10.0.0.2", &["for=6.6.6.6", "proto=http;for=\"[2001:db8::1]:4711\""]), "2001:db8::1");
        // What a client wrote before the proxies' elements does not change how they read.
        assert_eq!(fwd("10.0.0.2", &["for=\"6.6.6.6, for=192.0.2.1"]), "192.0.2.1", "an open quote");
        assert_eq!(fwd("10.0.0.2", &["for=192.0.2.1;by=10.0.0.2;host=a.test"]), "192.0.2.1");
        // Nothing usable: an unknown or hidden hop, an element without `for`, an escape.
        assert_eq!(fwd("10.0.0.2", &["for=192.0.2.1, for=unknown"]), "10.0.0.2");
        assert_eq!(fwd("10.0.0.2", &["for=192.0.2.1, for=_hidden"]), "10.0.0.2");
        assert_eq!(fwd("10.0.0.2", &["for=192.0.2.1, proto=http"]), "10.0.0.2");
        assert_eq!(fwd("10.0.0.2", &["for=\"192.0.2\\.1\""]), "10.0.0.2");
        assert_eq!(fwd("192.0.2.9", &["for=192.0.2.1"]), "192.0.2.9", "an untrusted peer");
    }

    #[test]
    fn a_field_of_one_address_from_a_trusted_peer_is_the_client() {
        assert_eq!(client("x-real-ip", "10.0.0.2", &["192.0.2.1"]), "192.0.2.1");
        assert_eq!(client("x-real-ip", "10.0.0.2", &[" 2001:db8::1 "]), "2001:db8::1");
        assert_eq!(client("x-real-ip", "10.0.0.2", &["192.0.2.1, 192.0.2.2"]), "10.0.0.2");
        assert_eq!(client("x-real-ip", "192.0.2.9", &["192.0.2.1"]), "192.0.2.9");
        assert_eq!(client("x-real-ip", "10.0.0.2", &[]), "10.0.0.2");
    }
}
