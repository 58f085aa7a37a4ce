//! A listener behind a balancer that speaks the PROXY protocol, with raw clients: the header's
//! source is the client (the route's allow list, the backend's X-Forwarded-For), v1 and v2, a
//! header sent in pieces; a balancer's LOCAL health check is served as its own peer; a
//! connection with no header, a malformed one or one too late is closed unanswered, and counted.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::proxy::{pipeline::Forwarder, test_bed};

/// A backend that answers each request with the X-Forwarded-For it got.
async fn forwarded_echo() -> SocketAddr {
    test_bed::listening(|mut stream| async move {
        let mut read = Vec::new();
        while let Some(end) = test_bed::head_read(&mut stream, &mut read).await {
            let head = String::from_utf8_lossy(&read[..end]).to_ascii_lowercase();
            let forwarded = head
                .lines()
                .find_map(|l| l.strip_prefix("x-forwarded-for:"))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default();
            read.drain(..end);
            let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{forwarded}", forwarded.len());
            if stream.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await
}

/// A listener that requires the header; `gated.test` is open to 192.0.2.0/24 only, any other
/// host goes to the echo backend.
async fn listener() -> (SocketAddr, Arc<Forwarder>) {
    let backend = forwarded_echo().await;
    let listener = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\naccess_log = false\n\
                    proxy_protocol = true\nfirst_byte_timeout_ms = 400\n";
    let routes = format!(
        "[[pool]]\nname = \"p\"\nport = {}\nbackends = [{{ address = \"127.0.0.1\" }}]\n\
         [[route]]\nlistener = \"l\"\nhost = \"gated.test\"\nallow = [\"192.0.2.0/24\"]\nrespond = {{ status = 200 }}\n\
         [[route]]\nlistener = \"l\"\npool = \"p\"\n",
        backend.port()
    );
    let (address, _, forwarder) = super::mutations::start_listener(listener, &routes).await;
    (address, forwarder)
}

/// `pieces` written 20 ms apart, then what the listener sends back until it closes (or 3 s).
/// A listener that refused the connection may reset it before every piece is written.
async fn exchange(address: SocketAddr, pieces: &[&[u8]]) -> String {
    let mut client = TcpStream::connect(address).await.unwrap();
    client.set_nodelay(true).unwrap();
    for piece in pieces {
        if client.write_all(piece).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), client.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

/// A v2 header: PROXY (or LOCAL) over TCP/IPv4 from `source`, with one TLV.
fn v2(local: bool, source: [u8; 4], port: u16) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.extend([if local { 0x20 } else { 0x21 }, 0x11, 0, 12 + 5]);
    out.extend(source);
    out.extend([127, 0, 0, 1]);
    out.extend(port.to_be_bytes());
    out.extend(80u16.to_be_bytes());
    out.extend([0x05, 0, 2, b'i', b'd']);
    out
}

const GATED: &[u8] = b"GET / HTTP/1.1\r\nHost: gated.test\r\nConnection: close\r\n\r\n";
const ECHO: &[u8] =
    b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For: 203.0.113.9\r\nConnection: close\r\n\r\n";

fn refused(forwarder: &Forwarder, reason: &str) -> u64 {
    let text = forwarder.metrics.text();
    let series = format!("http_proxy_protocol_refused_total{{listener=\"l\",reason=\"{reason}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&series)).map_or(0, |n| n.parse().unwrap())
}

#[tokio::test]
async fn the_headers_source_is_the_client() {
    let (address, _) = listener().await;
    let v1 = b"PROXY TCP4 192.0.2.7 127.0.0.1 4242 80\r\n".as_slice();
    let got = exchange(address, &[&[v1, GATED].concat()]).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    // The backend gets the client's own X-Forwarded-For with the header's source after it.
    let got = exchange(address, &[&[v1, ECHO].concat()]).await;
    assert!(got.ends_with("\r\n\r\n203.0.113.9, 192.0.2.7"), "{got}");
    // v2 in pieces (the header cut mid-address, the request after it).
    let header = v2(false, [192, 0, 2, 8], 5555);
    let got = exchange(address, &[&header[..7], &header[7..20], &header[20..], GATED]).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    // Another source is outside the route's allow list.
    let header = v2(false, [198, 51, 100, 1], 5555);
    let got = exchange(address, &[&[&header, GATED].concat()]).await;
    assert!(got.starts_with("HTTP/1.1 403"), "{got}");
}

/// A balancer's own health check (v2 LOCAL, v1 UNKNOWN) is served as the connection's peer.
#[tokio::test]
async fn a_header_that_names_no_client_leaves_the_peer() {
    let (address, _) = listener().await;
    for header in [v2(true, [192, 0, 2, 7], 4242), b"PROXY UNKNOWN\r\n".to_vec()] {
        let got = exchange(address, &[&[&header, GATED].concat()]).await;
        assert!(got.starts_with("HTTP/1.1 403"), "{got}");
        let got = exchange(address, &[&[&header, ECHO].concat()]).await;
        assert!(got.ends_with("\r\n\r\n203.0.113.9, 127.0.0.1"), "{got}");
    }
}

#[tokio::test]
async fn a_connection_without_a_valid_header_in_time_is_closed_and_counted() {
    let (address, forwarder) = listener().await;
    // A request with no header; a malformed header; part of a header, then nothing.
    assert_eq!(exchange(address, &[ECHO]).await, "");
    assert_eq!(exchange(address, &[b"PROXY TCP4 192.0.2.999 127.0.0.1 1 80\r\n", ECHO]).await, "");
    let started = std::time::Instant::now();
    assert_eq!(exchange(address, &[b"PROXY TCP4 192.0.2.7 "]).await, "");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(300) && waited < Duration::from_millis(2500), "{waited:?}");
    // Nothing at all, then the end of the client's stream.
    let mut client = TcpStream::connect(address).await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), client.read_to_end(&mut got)).await;
    assert!(got.is_empty());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let counts: Vec<u64> =
        ["missing", "malformed", "timeout", "closed"].iter().map(|r| refused(&forwarder, r)).collect();
    assert_eq!(counts, [1, 1, 1, 1], "{}", forwarder.metrics.text());
}

/// Mutated headers (v1 and v2, the request after them left whole or mutated too) through the
/// whole listener: each connection ends, answered or closed, within a few seconds, every slot
/// comes back, and no task panics.
#[tokio::test]
async fn every_mutated_header_ends_its_connection_without_a_panic() {
    use crate::mutation::{Rng, mutate};
    const CONNECTIONS: usize = 400;
    const AT_ONCE: usize = 100;
    let backend = test_bed::http1().await;
    let listener = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\naccess_log = false\n\
                    proxy_protocol = true\nfirst_byte_timeout_ms = 1000\nheader_read_timeout_ms = 1000\n\
                    idle_timeout_ms = 1000\n";
    let routes = format!(
        "[[pool]]\nname = \"p\"\nport = {}\nbackends = [{{ address = \"127.0.0.1\" }}]\n\
         [[route]]\nlistener = \"l\"\npool = \"p\"\nrate_limit = {{ requests_per_second = 100000, burst = 100000 }}\n",
        backend.port()
    );
    let (address, shared, _) = super::mutations::start_listener(listener, &routes).await;
    let headers = [
        b"PROXY TCP4 192.0.2.7 127.0.0.1 4242 80\r\n".to_vec(),
        b"PROXY TCP6 2001:db8::7 ::1 4242 80\r\n".to_vec(),
        b"PROXY UNKNOWN\r\n".to_vec(),
        v2(false, [192, 0, 2, 8], 5555),
        v2(true, [192, 0, 2, 8], 5555),
    ];
    let spice: &[&[u8]] = &[b"\r\n", b" ", b"\0", b"\xff\xff", b"PROXY ", b"\r\n\r\n\0\r\nQUIT\n", b"65536"];
    let request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut rng = Rng(0x5eed_0bad_0001);
    let mut answered = 0;
    for _ in 0..CONNECTIONS / AT_ONCE {
        let batch = (0..AT_ONCE).map(|_| {
            let header = &headers[rng.below(headers.len())];
            // A quarter left whole: good connections among the bad ones.
            let bytes = match rng.below(4) {
                0 => [header.as_slice(), request].concat(),
                1 => mutate(&mut rng, &[header.as_slice(), request].concat(), spice),
                _ => [mutate(&mut rng, header, spice).as_slice(), request].concat(),
            };
            let half_close = rng.below(2) == 0;
            async move {
                super::mutations::exchange(address, &bytes, half_close).await.starts_with(b"HTTP/1.1 200")
            }
        });
        answered += futures_util::future::join_all(batch).await.into_iter().filter(|&a| a).count();
    }
    super::mutations::all_ended(&shared).await;
    // The whole headers, and some mutated ones, are answered.
    assert!(answered >= CONNECTIONS / 5, "only {answered} of {CONNECTIONS} answered");
}

/// A full listener makes room by closing the connection quiet the longest: one still waiting
/// for its header goes, and the new client is served (it was refused while that connection
/// ignored the eviction, though an idle keep-alive one could have gone).
#[tokio::test]
async fn a_connection_waiting_for_its_header_is_evicted_to_make_room() {
    let listener = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\naccess_log = false\n\
                    proxy_protocol = true\nmax_connections = 2\n";
    let routes = "[[route]]\nlistener = \"l\"\nrespond = { status = 200 }\n";
    let (address, _, forwarder) = super::mutations::start_listener(listener, routes).await;
    let mut stalled = TcpStream::connect(address).await.unwrap();
    stalled.write_all(b"PROXY TCP4 192.0.2.7 ").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A kept-alive connection, answered, then idle (quiet for less time than the stalled one).
    let mut idle = TcpStream::connect(address).await.unwrap();
    idle.write_all(b"PROXY TCP4 192.0.2.8 127.0.0.1 1 80\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut got = vec![0; 1024];
    let n = tokio::time::timeout(Duration::from_secs(2), idle.read(&mut got)).await.unwrap().unwrap();
    assert!(got[..n].starts_with(b"HTTP/1.1 200"));
    let third = [
        b"PROXY TCP4 192.0.2.9 127.0.0.1 1 80\r\n".as_slice(),
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    ];
    assert!(exchange(address, &third).await.starts_with("HTTP/1.1 200"), "the new client was refused");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(2), stalled.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the stalled connection is still open");
    let text = forwarder.metrics.text();
    assert!(
        text.contains("http_idle_closed_connections_total{listener=\"l\",reason=\"evicted_idle\"} 1"),
        "{text}"
    );
}
