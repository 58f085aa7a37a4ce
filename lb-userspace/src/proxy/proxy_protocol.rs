//! The PROXY protocol's header (v1 text or v2 binary) that a balancer in front writes before a
//! connection's first byte, read off the socket exactly: the header's source address is then
//! the connection's client. The parsing is the `ppp` crate's.
//!
//! A listener with `proxy_protocol = true` requires the header on every connection (HAProxy's
//! `accept-proxy`, nginx's `listen … proxy_protocol`): anyone who can reach such a listener can
//! claim any address, so only the balancers should.
//!
//! A pool with `proxy_protocol = "v1"` or `"v2"` writes one to its backends (`header`; HAProxy's
//! `send-proxy`), and its health checks write the one that names no client (`local_header`).
//! A v2 header for a TLS client says so in TLVs, as HAProxy's `send-proxy-v2-ssl` with
//! `proxy-v2-options authority` does: the server name the client asked for, and the TLS
//! version and whether the client showed a verified certificate.
use std::net::{IpAddr, SocketAddr};

use crate::config::ProxyVersion;

use ppp::{v1, v2};
use tokio::{io::AsyncReadExt, net::TcpStream};

/// The longest header taken: v2's 16 fixed bytes and up to 2 KiB of addresses and TLVs (a
/// cloud balancer's TLVs are tens of bytes); v1's are 107 at most.
pub const MAX_HEADER: usize = 16 + 2048;

/// Why a connection's header was refused. The connection is then closed, and counted by
/// [`HeaderError::reason`].
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("closed before its PROXY protocol header was complete")]
    Closed,
    #[error("no PROXY protocol header (the connection began with {0:?})")]
    Missing(String),
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(String),
    #[error("PROXY protocol header longer than {MAX_HEADER} bytes")]
    TooLong,
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

impl HeaderError {
    /// The metric's `reason` label.
    pub fn reason(&self) -> &'static str {
        match self {
            HeaderError::Closed | HeaderError::Io(_) => "closed",
            HeaderError::Missing(_) => "missing",
            HeaderError::Malformed(_) | HeaderError::TooLong => "malformed",
        }
    }
}

/// What a whole header says.
#[derive(Debug, PartialEq, Eq)]
pub struct Header {
    /// Its length in bytes.
    pub length: usize,
    /// The client's address, or None when the header names none: v2's LOCAL command (the
    /// balancer's own health check), v1's UNKNOWN, a v2 family other than IPv4 and IPv6. The
    /// connection's own peer is then the client, as the protocol says.
    pub source: Option<SocketAddr>,
}

/// v2's signature, its first 12 bytes.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, its CRLF included (the protocol's own bound).
const V1_MAX: usize = 107;

/// The header at the start of `bytes`: Ok(None) when `bytes` may still grow into one.
///
/// Where a header ends is found here (v2's declared length, v1's CRLF) and only a whole header
/// is given to `ppp`: its v1 parser takes a line cut short for one still coming (a missing
/// port) even after the CRLF, and a line cut after a space for a malformed one.
pub fn parse(bytes: &[u8]) -> Result<Option<Header>, HeaderError> {
    let shown = || String::from_utf8_lossy(&bytes[..bytes.len().min(16)]).into_owned();
    let seen = bytes.len().min(V2_SIGNATURE.len());
    if bytes[..seen] == V2_SIGNATURE[..seen] {
        if bytes.len() < 16 {
            return Ok(None);
        }
        let length = 16 + u16::from_be_bytes([bytes[14], bytes[15]]) as usize;
        if length > MAX_HEADER {
            return Err(HeaderError::TooLong);
        }
        if bytes.len() < length {
            return Ok(None);
        }
        let header =
            v2::Header::try_from(&bytes[..length]).map_err(|e| HeaderError::Malformed(e.to_string()))?;
        let source = match (header.command, header.addresses) {
            (v2::Command::Local, _) => None,
            (_, v2::Addresses::IPv4(a)) => Some(SocketAddr::from((a.source_address, a.source_port))),
            (_, v2::Addresses::IPv6(a)) => Some(SocketAddr::from((a.source_address, a.source_port))),
            (_, v2::Addresses::Unspecified | v2::Addresses::Unix(_)) => None,
        };
        return Ok(Some(Header { length, source }));
    }
    let seen = bytes.len().min(6);
    if bytes[..seen] != b"PROXY "[..seen] {
        return Err(HeaderError::Missing(shown()));
    }
    let Some(end) = bytes.iter().take(V1_MAX).position(|&b| b == b'\n') else {
        return if bytes.len() >= V1_MAX {
            Err(HeaderError::Malformed(format!("no line end within {V1_MAX} bytes")))
        } else {
            Ok(None)
        };
    };
    if end == 0 || bytes[end - 1] != b'\r' {
        return Err(HeaderError::Malformed("a line not ended by CRLF".into()));
    }
    let header = v1::Header::try_from(&bytes[..=end]).map_err(|e| HeaderError::Malformed(e.to_string()))?;
    let source = match header.addresses {
        v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Unknown => None,
    };
    Ok(Some(Header { length: end + 1, source }))
}

/// Reads a connection's header and nothing after it: the bytes are peeked at, and only those
/// known to be the header's are taken off the socket, so what follows (a request, a
/// ClientHello) is left for the next layer as it came. The caller bounds the wait.
///
/// A header that comes in pieces never spins: while it is incomplete, every byte peeked at is
/// the header's, so each is read off, and the next peek waits for new bytes.
pub async fn read(stream: &mut TcpStream) -> Result<Option<SocketAddr>, HeaderError> {
    let mut taken: Vec<u8> = Vec::new();
    let mut peeked = [0u8; 256];
    loop {
        let room = (MAX_HEADER - taken.len()).min(peeked.len());
        let n = stream.peek(&mut peeked[..room]).await?;
        if n == 0 {
            return Err(HeaderError::Closed);
        }
        let before = taken.len();
        taken.extend_from_slice(&peeked[..n]);
        match parse(&taken)? {
            Some(header) => {
                let mut rest = vec![0; header.length - before];
                stream.read_exact(&mut rest).await?;
                return Ok(header.source);
            }
            None => {
                let mut rest = vec![0; n];
                stream.read_exact(&mut rest).await?;
            }
        }
    }
}

/// What a v2 header tells of a client's TLS (TLVs; v1 has no room for it).
#[derive(Clone, Copy, Debug)]
pub struct ClientTls<'a> {
    /// rustls's name of the version (`TLSv1_3`), written as OpenSSL names it (`TLSv1.3`).
    pub version: &'a str,
    /// The server name the client asked for (SNI).
    pub sni: Option<&'a str>,
    /// The application protocol the handshake agreed (ALPN: `h2`, `http/1.1`).
    pub alpn: Option<&'a [u8]>,
    /// The client showed a certificate the listener verified (mTLS).
    pub verified: bool,
}

/// PP2_TYPE_SSL's client flags: the connection is TLS; the client showed a certificate on this
/// connection, in this session.
const PP2_CLIENT_SSL: u8 = 0x01;
const PP2_CLIENT_CERT_CONN: u8 = 0x02;
const PP2_CLIENT_CERT_SESS: u8 = 0x04;

/// PP2_TYPE_SSL's value: the client flags, `verify` (0: a certificate was shown and verified),
/// then the version as a sub-TLV.
fn ssl_tlv(tls: &ClientTls<'_>) -> Vec<u8> {
    let version = tls.version.replace('_', ".");
    let (flags, verify) = match tls.verified {
        true => (PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS, 0u32),
        false => (PP2_CLIENT_SSL, 1u32),
    };
    let mut value = vec![flags];
    value.extend(verify.to_be_bytes());
    value.push(v2::Type::SSLVersion as u8);
    value.extend((version.len() as u16).to_be_bytes());
    value.extend(version.as_bytes());
    value
}

/// The header for a connection made for `client`, which reached lbd at `local` (over `tls`, if
/// it did). Addresses of two families (an IPv4 client of a listener on an IPv6 socket) are both
/// written as IPv6.
pub fn header(
    version: ProxyVersion,
    client: SocketAddr,
    local: SocketAddr,
    tls: Option<ClientTls<'_>>,
) -> Vec<u8> {
    let (client_ip, local_ip) = (client.ip().to_canonical(), local.ip().to_canonical());
    let v6 = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let (source, destination) = match (client_ip, local_ip) {
        (IpAddr::V4(_), IpAddr::V4(_)) => {
            (SocketAddr::new(client_ip, client.port()), SocketAddr::new(local_ip, local.port()))
        }
        _ => (
            SocketAddr::new(IpAddr::V6(v6(client_ip)), client.port()),
            SocketAddr::new(IpAddr::V6(v6(local_ip)), local.port()),
        ),
    };
    match version {
        ProxyVersion::V1 => {
            let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                source.ip(),
                destination.ip(),
                source.port(),
                destination.port()
            )
            .into_bytes()
        }
        // Written into a `Vec` (a server name is at most 255 bytes): it does not fail.
        ProxyVersion::V2 => (|| {
            let mut builder = v2::Builder::with_addresses(
                v2::Version::Two | v2::Command::Proxy,
                v2::Protocol::Stream,
                (source, destination),
            );
            if let Some(tls) = tls {
                if let Some(alpn) = tls.alpn {
                    builder = builder.write_tlv(v2::Type::ALPN, alpn)?;
                }
                if let Some(sni) = tls.sni {
                    builder = builder.write_tlv(v2::Type::Authority, sni.as_bytes())?;
                }
                builder = builder.write_tlv(v2::Type::SSL, &ssl_tlv(&tls))?;
            }
            builder.build()
        })()
        .unwrap_or_default(),
    }
}

/// The header of a connection lbd makes for itself (a health check): v2's LOCAL, v1's UNKNOWN.
/// The backend then takes the connection's own addresses.
pub fn local_header(version: ProxyVersion) -> Vec<u8> {
    match version {
        ProxyVersion::V1 => b"PROXY UNKNOWN\r\n".to_vec(),
        ProxyVersion::V2 => v2::Builder::new(
            v2::Version::Two | v2::Command::Local,
            v2::AddressFamily::Unspecified | v2::Protocol::Stream,
        )
        .build()
        .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_written_for_a_backend_reads_back_as_its_client() {
        let cases: [(&str, &str, &str); 3] = [
            ("192.0.2.7:40000", "198.19.0.4:80", "192.0.2.7:40000"),
            ("[2001:db8::7]:40000", "[2001:db8::1]:443", "[2001:db8::7]:40000"),
            // An IPv4 client on an IPv6 socket, to a listener's IPv4 address: one family.
            ("[::ffff:192.0.2.7]:40000", "198.19.0.4:80", "192.0.2.7:40000"),
        ];
        for version in [ProxyVersion::V1, ProxyVersion::V2] {
            for (client, local, read) in cases {
                let bytes = header(version, client.parse().unwrap(), local.parse().unwrap(), None);
                let parsed = parse(&bytes).unwrap().unwrap();
                assert_eq!(parsed.length, bytes.len(), "{version:?} {client}");
                assert_eq!(parsed.source, Some(read.parse().unwrap()), "{version:?} {client}");
            }
            // Two families: both written as IPv6, the IPv4 one mapped.
            let mixed = header(
                version,
                "192.0.2.7:40000".parse().unwrap(),
                "[2001:db8::1]:80".parse().unwrap(),
                None,
            );
            let source = parse(&mixed).unwrap().unwrap().source.unwrap();
            assert_eq!(source.ip().to_canonical().to_string(), "192.0.2.7", "{version:?}");
            // A health check's header names no client.
            let local = local_header(version);
            assert_eq!(parse(&local).unwrap(), Some(Header { length: local.len(), source: None }));
        }
        assert_eq!(
            header(
                ProxyVersion::V1,
                "192.0.2.7:40000".parse().unwrap(),
                "198.19.0.4:80".parse().unwrap(),
                None
            ),
            b"PROXY TCP4 192.0.2.7 198.19.0.4 40000 80\r\n"
        );
    }

    #[test]
    fn a_tls_client_s_v2_header_names_its_server_name_and_tls_in_tlvs() {
        let (client, local) = ("192.0.2.7:40000".parse().unwrap(), "198.19.0.4:443".parse().unwrap());
        let tlvs = |tls| {
            let bytes = header(ProxyVersion::V2, client, local, Some(tls));
            assert_eq!(parse(&bytes).unwrap().unwrap().source, Some(client), "the TLVs are skipped over");
            let parsed = v2::Header::try_from(&bytes[..]).unwrap();
            parsed.tlvs().map(|t| t.unwrap()).map(|t| (t.kind, t.value.to_vec())).collect::<Vec<_>>()
        };
        let shown = ClientTls {
            version: "TLSv1_3",
            sni: Some("api.example.test"),
            alpn: Some(b"h2"),
            verified: true,
        };
        assert_eq!(
            tlvs(shown),
            [
                (0x01, b"h2".to_vec()),
                (0x02, b"api.example.test".to_vec()),
                (0x20, [&[0x07, 0, 0, 0, 0, 0x21, 0, 7][..], b"TLSv1.3"].concat()),
            ]
        );
        let plain = ClientTls { version: "TLSv1_2", sni: None, alpn: None, verified: false };
        assert_eq!(tlvs(plain), [(0x20, [&[0x01, 0, 0, 0, 1, 0x21, 0, 7][..], b"TLSv1.2"].concat())]);
        // v1 has no room for it; without TLS there is nothing to say.
        assert_eq!(
            header(ProxyVersion::V1, client, local, Some(shown)),
            b"PROXY TCP4 192.0.2.7 198.19.0.4 40000 443\r\n"
        );
        assert_eq!(header(ProxyVersion::V2, client, local, None).len(), 16 + 12);
    }

    fn v2(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend(((addresses.len() + tlvs.len()) as u16).to_be_bytes());
        out.extend(addresses);
        out.extend(tlvs);
        out
    }

    fn v4_addresses() -> Vec<u8> {
        [192, 0, 2, 7, 10, 0, 0, 1]
            .iter()
            .copied()
            .chain(4242u16.to_be_bytes())
            .chain(443u16.to_be_bytes())
            .collect()
    }

    fn source(text: &str) -> Option<SocketAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn a_v1_header_gives_its_source_and_its_length() {
        let line = b"PROXY TCP4 192.0.2.7 10.0.0.1 4242 80\r\n";
        let mut bytes = line.to_vec();
        bytes.extend(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            parse(&bytes).unwrap(),
            Some(Header { length: line.len(), source: source("192.0.2.7:4242") })
        );
        let line = b"PROXY TCP6 2001:db8::7 2001:db8::1 4242 443\r\n";
        assert_eq!(
            parse(line).unwrap(),
            Some(Header { length: line.len(), source: source("[2001:db8::7]:4242") })
        );
        let line = b"PROXY UNKNOWN\r\n";
        assert_eq!(parse(line).unwrap(), Some(Header { length: line.len(), source: None }));
    }

    #[test]
    fn a_v2_header_gives_its_source_skipping_its_tlvs() {
        let tlvs = [0x05, 0, 3, b'a', b'b', b'c'];
        let bytes = v2(1, 0x11, &v4_addresses(), &tlvs);
        let mut more = bytes.clone();
        more.extend(b"\x16\x03\x01");
        assert_eq!(
            parse(&more).unwrap(),
            Some(Header { length: bytes.len(), source: source("192.0.2.7:4242") })
        );
        let mut v6 = [0u8; 36];
        v6[..16].copy_from_slice(&"2001:db8::7".parse::<std::net::Ipv6Addr>().unwrap().octets());
        v6[32..34].copy_from_slice(&4242u16.to_be_bytes());
        let bytes = v2(1, 0x21, &v6, &[]);
        assert_eq!(parse(&bytes).unwrap().unwrap().source, source("[2001:db8::7]:4242"));
    }

    /// LOCAL (a balancer's own health check) and families with no IP address leave the
    /// connection's peer as the client.
    #[test]
    fn a_header_that_names_no_client_leaves_the_peer() {
        let local = v2(0, 0x11, &v4_addresses(), &[]);
        assert_eq!(parse(&local).unwrap(), Some(Header { length: local.len(), source: None }));
        let unspec = v2(1, 0x00, &[], &[]);
        assert_eq!(parse(&unspec).unwrap(), Some(Header { length: 16, source: None }));
    }

    /// Every prefix of a valid header waits for more; none is taken for a header, and none is
    /// refused.
    #[test]
    fn every_prefix_of_a_header_waits_for_more() {
        let headers = [
            b"PROXY TCP4 192.0.2.7 10.0.0.1 4242 80\r\n".to_vec(),
            v2(1, 0x11, &v4_addresses(), &[1, 0, 1, 9]),
        ];
        for header in headers {
            for cut in 1..header.len() {
                assert!(matches!(parse(&header[..cut]), Ok(None)), "{:?}", &header[..cut]);
            }
            assert!(parse(&header).unwrap().is_some());
        }
    }

    #[test]
    fn bad_headers_are_refused_by_kind() {
        let missing = parse(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap_err();
        assert_eq!(missing.reason(), "missing", "{missing}");
        let tls = parse(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap_err();
        assert_eq!(tls.reason(), "missing", "{tls}");
        for bad in [
            b"PROXY TCP4 192.0.2.300 10.0.0.1 4242 80\r\n".to_vec(),
            b"PROXY TCP4 192.0.2.7 10.0.0.1 99999 80\r\n".to_vec(),
            b"PROXY TCP5 192.0.2.7 10.0.0.1 4242 80\r\n".to_vec(),
            b"PROXY TCP4 192.0.2.7\r\n".to_vec(),
            b"PROXY TCP4 192.0.2.7 10.0.0.1 4242 80\n".to_vec(),
            b"PROXY TCP4 192.0.2.7 10.0.0.1 4242 80 9\r\n".to_vec(),
            // A version other than 2, a command other than LOCAL and PROXY.
            v2(1, 0x11, &v4_addresses(), &[])
                .into_iter()
                .enumerate()
                .map(|(i, b)| if i == 12 { 0x31 } else { b })
                .collect(),
            v2(2, 0x11, &v4_addresses(), &[]),
            // Shorter than its family's addresses.
            v2(1, 0x21, &v4_addresses(), &[]),
        ] {
            let err = parse(&bad).unwrap_err();
            assert_eq!(err.reason(), "malformed", "{:?}: {err}", String::from_utf8_lossy(&bad));
        }
        // v1 with no line end within 107 bytes; v2 declaring more than MAX_HEADER.
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert!(matches!(parse(&long), Err(HeaderError::Malformed(_))), "{:?}", parse(&long));
        let mut huge = v2(1, 0x11, &v4_addresses(), &[]);
        huge[14..16].copy_from_slice(&60000u16.to_be_bytes());
        assert!(matches!(parse(&huge), Err(HeaderError::TooLong)));
    }

    /// What any input gives: no panic; a header no longer than its input and MAX_HEADER, that
    /// parses alike on its own bytes; an input still waiting is shorter than MAX_HEADER.
    fn holds(input: &[u8]) {
        match parse(input) {
            Ok(Some(header)) => {
                assert!(header.length <= input.len() && header.length <= MAX_HEADER, "{input:?}");
                assert_eq!(parse(&input[..header.length]).ok().flatten(), Some(header), "{input:?}");
            }
            Ok(None) => assert!(input.len() < MAX_HEADER, "{input:?}"),
            Err(_) => {}
        }
    }

    /// Valid headers of every kind, mutated a few bytes at a time (`mutation::mutate`).
    #[test]
    fn mutated_headers_hold_the_properties() {
        let mut v6 = [0u8; 36];
        v6[15] = 1;
        let seeds = [
            b"PROXY TCP4 192.0.2.7 10.0.0.1 4242 80\r\nGET / HTTP/1.1\r\n".to_vec(),
            b"PROXY TCP6 2001:db8::7 2001:db8::1 4242 443\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            v2(1, 0x11, &v4_addresses(), &[0x05, 0, 2, b'x', b'y']),
            v2(1, 0x21, &v6, &[]),
            v2(0, 0x00, &[], &[]),
        ];
        let spice: &[&[u8]] = &[b"\r\n", b" ", b"\0", b"\xff\xff", b"PROXY ", V2_SIGNATURE, b"65536", b"::"];
        let mut rng = crate::mutation::Rng(0x5eed_0bad_cafe_f00d);
        for _ in 0..20_000 {
            let seed = &seeds[rng.below(seeds.len())];
            holds(&crate::mutation::mutate(&mut rng, seed, spice));
        }
    }

    /// Over a socket: a header sent in pieces is read whole and not a byte past it, and
    /// nothing of it is left for the next layer.
    #[tokio::test]
    async fn a_header_in_pieces_is_read_to_its_end_and_no_further() {
        use tokio::io::AsyncWriteExt;
        let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = socket.local_addr().unwrap();
        let header = v2(1, 0x11, &v4_addresses(), &[0x05, 0, 2, b'x', b'y']);
        let sent = header.clone();
        let client = tokio::spawn(async move {
            let mut client = TcpStream::connect(address).await.unwrap();
            client.set_nodelay(true).unwrap();
            for piece in sent.chunks(5) {
                client.write_all(piece).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            client.write_all(b"after").await.unwrap();
            client
        });
        let (mut stream, _) = socket.accept().await.unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), read(&mut stream)).await.unwrap();
        assert_eq!(got.unwrap(), source("192.0.2.7:4242"));
        let _client = client.await.unwrap();
        let mut after = [0u8; 5];
        stream.read_exact(&mut after).await.unwrap();
        assert_eq!(&after, b"after");
    }

    #[tokio::test]
    async fn a_connection_closed_inside_its_header_is_refused() {
        use tokio::io::AsyncWriteExt;
        let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut client = TcpStream::connect(address).await.unwrap();
            client.write_all(b"PROXY TCP4 192.0.2.7").await.unwrap();
        });
        let (mut stream, _) = socket.accept().await.unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), read(&mut stream)).await.unwrap();
        assert!(matches!(got, Err(HeaderError::Closed)), "{got:?}");
    }
}
