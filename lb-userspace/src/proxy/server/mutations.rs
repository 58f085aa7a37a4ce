//! Mutation tests of a listener, through its whole loop (`serve`): HTTP/2 client byte streams
//! (prior knowledge) and backends' HTTP/1.1 answers, valid ones changed a few bytes at a time.
//! Every connection ends by the listener's own timeouts, whatever a client or a backend leaves
//! half-sent; what reaches a client is well framed or an error; no task panics.
use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::{Shared, serve};
use crate::{
    config::Config,
    mutation::{Rng, mutate, panicked_here, record_panics},
    proxy::{pipeline::Forwarder, test_bed},
};

mod answers;
mod forwarded;
mod http1;
mod relayed;
mod tls;
mod tunnels;

/// Connections tried, and how many are open at once.
const CONNECTIONS: usize = 600;
const AT_ONCE: usize = 100;
/// The listener's timeouts (first byte, keep-alive, headers, a quiet stream): what ends a
/// connection the client leaves open.
const TIMEOUT_MS: u64 = 1000;
/// What one connection may take to end: well past the timeouts, well short of a hang.
const ENDS_WITHIN: Duration = Duration::from_secs(5);

pub(super) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub(super) const HEADERS: u8 = 1;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;

pub(super) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// What a raw test backend reads of a client's HTTP/2: the preface, then one frame at a time.
pub(super) struct FrameReader {
    read: Vec<u8>,
    /// The preface's bytes still ahead.
    preface: usize,
}

impl FrameReader {
    pub(super) fn new() -> FrameReader {
        FrameReader { read: Vec::new(), preface: PREFACE.len() }
    }

    /// The next whole frame's kind, flags and stream (its payload passed over); None once the
    /// stream ends or fails.
    pub(super) async fn next(&mut self, stream: &mut (impl AsyncReadExt + Unpin)) -> Option<(u8, u8, u32)> {
        let preface = self.preface;
        let frame_len = |read: &[u8]| {
            read.get(preface..preface + 9).map(|h| 9 + u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize)
        };
        while frame_len(&self.read).is_none_or(|len| self.read.len() < preface + len) {
            let mut chunk = [0; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.read.extend_from_slice(&chunk[..n]),
            }
        }
        let len = frame_len(&self.read)?;
        let head: Vec<u8> = self.read.drain(..preface + len).skip(preface).take(9).collect();
        self.preface = 0;
        Some((head[3], head[4], u32::from_be_bytes([head[5], head[6], head[7], head[8]])))
    }
}

/// An HPACK field written literally, not indexed, lengths without Huffman coding.
fn field(name: &str, value: &str) -> Vec<u8> {
    let mut f = vec![0, name.len() as u8];
    f.extend(name.as_bytes());
    f.push(value.len() as u8);
    f.extend(value.as_bytes());
    f
}

/// A request's pseudo-fields from HPACK's static table (method by index: GET 2, POST 3), the
/// scheme http and the path `/`, then `:authority` (name from the table, value literal).
fn pseudo(method: u8, authority: &str) -> Vec<u8> {
    let mut f = vec![0x80 | method, 0x86, 0x84, 0x01, authority.len() as u8];
    f.extend(authority.as_bytes());
    f
}

fn headers(stream: u32, flags: u8, block: &[u8]) -> Vec<u8> {
    frame(HEADERS, flags | END_HEADERS, stream, block)
}

/// A conversation: the client's frames, in order.
type Conversation = Vec<Vec<u8>>;

/// The client's half of valid conversations (after the `opening`): requests to every route (a
/// hash by cookie, a cache with a shadow and retries, gRPC to an h2c backend), bodies,
/// trailers, CONTINUATION, HPACK's dynamic table, and the connection-level frames.
fn conversations() -> Vec<Conversation> {
    let data = |stream, flags, body: &[u8]| frame(0, flags, stream, body);
    let get = |stream, authority: &str, extra: &[u8]| {
        let mut block = pseudo(2, authority);
        block.extend(extra);
        headers(stream, END_STREAM, &block)
    };
    let post = |stream, authority: &str, extra: &[u8]| {
        let mut block = pseudo(3, authority);
        block.extend(extra);
        headers(stream, 0, &block)
    };
    let mut split = pseudo(2, "a");
    let rest = split.split_off(3);
    // `:authority` and a field added to the dynamic table, then named by index (62, 63).
    let mut indexed = vec![0x82, 0x86, 0x84, 0x41, 1, b'a', 0x40, 3];
    indexed.extend(b"x-k\x01v");
    let grpc = [field("content-type", "application/grpc"), field("te", "trailers")].concat();
    vec![
        vec![get(1, "a", &[])],
        vec![post(1, "a", &field("content-length", "5")), data(1, END_STREAM, b"hello")],
        vec![post(1, "a", &[]), data(1, 0, b"abc"), headers(1, END_STREAM, &field("x-trailer", "t"))],
        vec![frame(HEADERS, END_STREAM, 1, &split), frame(9, END_HEADERS, 1, &rest)],
        vec![
            get(1, "hash.test", &field("cookie", "sid=abc; sluice_pool=p")),
            get(3, "cache.test", &[field("accept", "text/html"), field("x-request-id", "r")].concat()),
        ],
        vec![post(1, "grpc.test", &grpc), data(1, END_STREAM, b"\0\0\0\0\x02hi")],
        vec![headers(1, END_STREAM, &indexed), headers(3, END_STREAM, &[0x82, 0x86, 0x84, 0xbf, 0xbe])],
        vec![
            frame(6, 0, 0, b"pingpong"),
            frame(8, 0, 0, &1000u32.to_be_bytes()),
            frame(2, 0, 1, &[0, 0, 0, 0, 16]),
            get(1, "a", &[]),
            frame(3, 0, 1, &8u32.to_be_bytes()),
            get(3, "a", &field("connection", "keep-alive")),
            get(5, "a", &[]),
            frame(7, 0, 0, &[0, 0, 0, 5, 0, 0, 0, 0]),
        ],
    ]
}

/// What every conversation opens with after the preface: SETTINGS (a window of 64 KiB) and
/// the acknowledgement of the server's.
fn opening() -> Vec<u8> {
    [frame(4, 0, 0, &[0, 4, 0, 1, 0, 0]), frame(4, 1, 0, &[])].concat()
}

/// The client's bytes after the preface, changed one of three ways: anywhere in the requests
/// (mostly the framing breaks), in the opening too, or inside one frame with its length made
/// right again (HPACK blocks, bodies and settings reach what reads them).
fn mutated(rng: &mut Rng, conversation: &Conversation) -> Vec<u8> {
    match rng.below(4) {
        0 => mutate(rng, &[opening(), conversation.concat()].concat(), SPICE),
        1 => [opening(), mutate(rng, &conversation.concat(), SPICE)].concat(),
        _ => {
            let mut frames = conversation.clone();
            let at = rng.below(frames.len());
            let (head, payload) = frames[at].split_at(9);
            let payload = mutate(rng, payload, SPICE);
            let length = (payload.len() as u32).min(0xff_ffff).to_be_bytes();
            frames[at] = [&length[1..], &head[3..], &payload].concat();
            [opening(), frames.concat()].concat()
        }
    }
}

/// Bytes the mutations insert: frame headers (SETTINGS, HEADERS, DATA, CONTINUATION, an
/// oversized length), HPACK's indexed and literal prefixes, flags.
const SPICE: &[&[u8]] = &[
    b"\0\0\0\x04\0\0\0\0\0",
    b"\0\0\x05\x01\x05\0\0\0\x03",
    b"\0\0\x03\0\x01\0\0\0\x01",
    b"\0\0\x01\x09\x04\0\0\0\x01",
    b"\xff\xff\xff",
    b"\x00",
    b"\x01",
    b"\x05",
    b"\x08",
    b"\x3f\xe1\x1f",
    b"\x7f",
    b"\x80",
    b"\xbe",
    b"\xff",
];

/// The listener's settings in every test: timeouts short enough that whatever a client or a
/// backend leaves half-done, the listener ends it well within `ENDS_WITHIN`.
fn listener_section() -> String {
    format!(
        "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\naccess_log = false\nmax_body_bytes = 4096\n\
         header_read_timeout_ms = {TIMEOUT_MS}\nfirst_byte_timeout_ms = {TIMEOUT_MS}\n\
         idle_timeout_ms = {TIMEOUT_MS}\nstream_idle_timeout_ms = {TIMEOUT_MS}\n"
    )
}

/// A listener loop (`serve`) over `pools_and_routes`, as a worker runs it; its address, what it
/// shares (the connection slots) and its forwarder (the metrics).
async fn start(pools_and_routes: &str) -> (SocketAddr, Arc<Shared>, Arc<Forwarder>) {
    start_listener(&listener_section(), pools_and_routes).await
}

/// `start` with the listener `listener` (its certificates loaded when it has TLS).
pub(super) async fn start_listener(
    listener: &str,
    pools_and_routes: &str,
) -> (SocketAddr, Arc<Shared>, Arc<Forwarder>) {
    let (address, _, shared, forwarder) = start_listening(listener, pools_and_routes).await;
    (address, shared, forwarder)
}

/// `start_listener`, serving HTTP/3 on a UDP socket of 127.0.0.1 too when the listener has
/// `http3`: that socket's address.
pub(super) async fn start_listening(
    listener: &str,
    pools_and_routes: &str,
) -> (SocketAddr, Option<SocketAddr>, Arc<Shared>, Arc<Forwarder>) {
    record_panics();
    let text = format!("[dataplane]\ninterface = \"lo\"\n{listener}{pools_and_routes}");
    let config = Config::parse(Path::new("t.toml"), &text).unwrap();
    let listener = config.listeners[0].clone();
    let certs = crate::proxy::load_certs(&listener, &Default::default()).unwrap();
    let shared = Shared::new(&listener, certs.as_ref(), 1).unwrap();
    let (snapshot, forwarder, ejections) = test_bed::forwarding(config);
    let (never_stops, stop) = tokio::sync::watch::channel(false);
    let http3 = shared.quic().map(|config| {
        let udp = super::http3::socket("127.0.0.1:0".parse().unwrap()).unwrap();
        let endpoint = super::http3::endpoint(udp, config.clone()).unwrap();
        let address = endpoint.local_addr().unwrap();
        let served = super::serve_http3(
            listener.clone(),
            endpoint,
            shared.clone(),
            snapshot.clone(),
            forwarder.clone(),
            stop.clone(),
        );
        (address, served)
    });
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = socket.local_addr().unwrap();
    let serving = serve(listener, socket, shared.clone(), snapshot, forwarder.clone(), stop);
    let udp_address = http3.as_ref().map(|(address, _)| *address);
    tokio::spawn(async move {
        // Held while the loop runs: the listener never stops, outlier ejections go nowhere.
        let _held = (never_stops, ejections);
        match http3 {
            Some((_, served)) => drop(tokio::join!(serving, served)),
            None => serving.await,
        }
    });
    (address, udp_address, shared, forwarder)
}

/// One client connection: `bytes` written (the client's side then shut when `half_close`), and
/// everything read back until the listener closes, which must come within `ENDS_WITHIN`.
pub(super) async fn exchange(address: SocketAddr, bytes: &[u8], half_close: bool) -> Vec<u8> {
    let exchange = async {
        let mut client = TcpStream::connect(address).await.unwrap();
        // The listener may refuse and close before it has read everything.
        let _ = client.write_all(bytes).await;
        if half_close {
            let _ = client.shutdown().await;
        }
        let mut got = Vec::new();
        let _ = client.read_to_end(&mut got).await;
        got
    };
    tokio::time::timeout(ENDS_WITHIN, exchange)
        .await
        .unwrap_or_else(|_| panic!("no end within {ENDS_WITHIN:?}: {bytes:?}"))
}

/// Every connection has given its slot back (none lingers on the listener's side), and no
/// task of the listener panicked.
pub(super) async fn all_ended(shared: &Shared) {
    let max = shared.max_connections as usize;
    let all_closed = async {
        while shared.slots.available_permits() < max {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(ENDS_WITHIN, all_closed)
        .await
        .unwrap_or_else(|_| panic!("{} connections still open", max - shared.slots.available_permits()));
    assert!(!panicked_here(), "a task of the listener panicked (its message is above)");
}

#[tokio::test]
async fn every_mutated_http2_connection_ends_by_the_listeners_timeouts_without_a_panic() {
    let (plain, grpc) = (test_bed::http1().await.port(), test_bed::h2c().await.port());
    let (address, shared, _) = start(&format!(
        "[[pool]]\nname = \"p\"\nport = {plain}\nbackends = [{{ address = \"127.0.0.1\" }}]\n\
         [[pool]]\nname = \"h\"\nport = {plain}\nbackends = [{{ address = \"127.0.0.1\" }}]\nbalance = \"hash\"\nhash_key = \"cookie:sid\"\n\
         [[pool]]\nname = \"g\"\nport = {grpc}\nprotocol = \"h2c\"\nbackends = [{{ address = \"127.0.0.1\" }}]\n\
         [[route]]\nlistener = \"l\"\npool = \"h\"\nhost = \"hash.test\"\nsplit = [{{ pool = \"p\", percent = 50 }}]\nsticky = true\n\
         rate_limit = {{ requests_per_second = 100000, burst = 100000 }}\n\
         [[route]]\nlistener = \"l\"\npool = \"p\"\nhost = \"cache.test\"\ncache = {{ max_entries = 10 }}\n\
         shadow = {{ pool = \"h\", percent = 50 }}\nretries = 1\n\
         [[route]]\nlistener = \"l\"\npool = \"g\"\nhost = \"grpc.test\"\n\
         [[route]]\nlistener = \"l\"\npool = \"p\"\n"
    ))
    .await;
    let conversations = conversations();
    let mut rng = Rng(0x5eed_0005);
    let mut answered = 0;
    for _ in 0..CONNECTIONS / AT_ONCE {
        let batch = (0..AT_ONCE).map(|_| {
            let conversation = &conversations[rng.below(conversations.len())];
            let mutated = [PREFACE, &mutated(&mut rng, conversation)].concat();
            let half_close = rng.below(2) == 0;
            async move { test_bed::answered_200(&exchange(address, &mutated, half_close).await) }
        });
        answered += futures_util::future::join_all(batch).await.into_iter().filter(|&a| a).count();
    }
    all_ended(&shared).await;
    // The mutations leave many conversations whole: the test reaches the backends, not only
    // the framing's refusals.
    assert!(answered >= CONNECTIONS / 10, "only {answered} of {CONNECTIONS} answered");
}
