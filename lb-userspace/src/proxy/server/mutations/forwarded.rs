//! What a backend reads is what the client sent: mutated (and pipelined) client byte streams go
//! through a real listener loop (`serve`) to a backend that records every request it reads, and hyper's
//! own HTTP/1.1 server, reading the same bytes, is the reference. The requests forwarded for
//! a connection must be the reference's first ones (method, target, body), in order: a proxy
//! that frames a body differently from the backend would forward a request the client never
//! sent (request smuggling) or a body cut elsewhere.
use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, Uri, body::Incoming, server::conn::http1::Builder, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpSocket,
};

use super::{
    END_STREAM, ENDS_WITHIN, PREFACE, Shared, all_ended, field, frame, headers, opening, pseudo, start,
};
use crate::{
    mutation::Rng,
    proxy::{
        h1::mutations::{REQUESTS, mutate},
        phase::path,
        test_bed,
    },
};

/// Connections tried, each from an address of its own (127.1.x.y) by which the backend knows it.
const CONNECTIONS: usize = 3000;

/// One request as a server read it: method, target (path and query) and body.
type Read = (String, String, Vec<u8>);

/// The requests a server read, in order, by the client address they came for.
type Reads = Arc<Mutex<HashMap<Ipv4Addr, Vec<Read>>>>;

/// A request's target as origin form (an absolute-form target is forwarded as its path).
fn origin_form(uri: &Uri) -> String {
    uri.path_and_query().map_or_else(|| uri.to_string(), |p| p.as_str().to_owned())
}

/// The target the proxy forwards for a client's `target`: its path made canonical (`phase::path`,
/// tested on its own), the query as it came.
fn canonical(target: &str) -> String {
    let (path, query) = target.split_once('?').map_or((target, None), |(p, q)| (p, Some(q)));
    match (path::canonical(path), query) {
        (Ok(path), Some(query)) => format!("{path}?{query}"),
        (Ok(path), None) => path.into_owned(),
        (Err(_), _) => format!("(refused: {target})"),
    }
}

/// The body of a request whose body broke off, in the reference: a backend never reads it.
const BROKEN: &[u8] = b"\0(broken off)";

/// A request read by hyper, with `BROKEN` as its body when that broke off.
async fn read(request: Request<Incoming>) -> Read {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map_or_else(|_| BROKEN.to_vec(), |b| b.to_bytes().to_vec());
    (parts.method.to_string(), origin_form(&parts.uri), body)
}

/// hyper answering one client's bytes (half-closed after them): the requests it read.
async fn reference(input: &[u8]) -> Vec<Read> {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let reads = Arc::new(Mutex::new(Vec::new()));
    let recorded = reads.clone();
    let service = service_fn(move |request: Request<Incoming>| {
        let recorded = recorded.clone();
        async move {
            let (method, target, body) = read(request).await;
            recorded.lock().unwrap().push((method, canonical(&target), body));
            Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }
    });
    let serving = Builder::new().half_close(true).serve_connection(TokioIo::new(server), service);
    let talking = async {
        let _ = client.write_all(input).await;
        let _ = client.shutdown().await;
        let _ = client.read_to_end(&mut Vec::new()).await;
    };
    let both = async { tokio::join!(serving, talking) };
    // hyper's refusal of a malformed request is where the reference's list ends.
    let (_refused, ()) =
        tokio::time::timeout(ENDS_WITHIN, both).await.expect("hyper reads the bytes in time");
    Arc::try_unwrap(reads).unwrap().into_inner().unwrap()
}

/// A backend (hyper) that records each whole request by its client (X-Forwarded-For's last
/// address, the one the proxy adds) and answers `ok`.
async fn recording_backend(reads: Reads) -> SocketAddr {
    test_bed::listening(move |stream| {
        let reads = reads.clone();
        async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let reads = reads.clone();
                async move {
                    let client = request
                        .headers()
                        .get("x-forwarded-for")
                        .and_then(|v| v.to_str().ok()?.rsplit(',').next()?.trim().parse().ok());
                    let read = read(request).await;
                    if let Some(client) = client
                        && read.2 != BROKEN
                    {
                        reads.lock().unwrap().entry(client).or_default().push(read);
                    }
                    Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                }
            });
            let _ = Builder::new().serve_connection(TokioIo::new(stream), service).await;
        }
    })
    .await
}

/// What a proxy's listener forwarded to the recording backend, once every connection is over.
struct Recorded {
    reads: Reads,
    shared: Arc<Shared>,
}

impl Recorded {
    async fn all_read(self) -> HashMap<Ipv4Addr, Vec<Read>> {
        all_ended(&self.shared).await;
        // A request forwarded as its client's connection ended reaches the backend a moment later.
        tokio::time::sleep(Duration::from_millis(200)).await;
        std::mem::take(&mut *self.reads.lock().unwrap())
    }
}

/// The plain route to the recording backend's pool `p`.
const PLAIN: &str = "[[route]]\nlistener = \"l\"\npool = \"p\"\n";

/// A listener (`serve`) whose pool `p` is a recording backend, with `routes`: its address, and
/// what it forwarded.
async fn proxy_to_recording_backend(routes: &str) -> (SocketAddr, Recorded) {
    let reads = Reads::default();
    let port = recording_backend(reads.clone()).await.port();
    let other = test_bed::http1().await.port();
    let (proxy, shared, _) = start(&format!(
        "[[pool]]\nname = \"p\"\nport = {port}\nbackends = [{{ address = \"127.0.0.1\" }}]\n\
         [[pool]]\nname = \"h\"\nport = {port}\nbackends = [{{ address = \"127.0.0.1\" }}]\nbalance = \"hash\"\nhash_key = \"cookie:sid\"\n\
         [[pool]]\nname = \"o\"\nport = {other}\nbackends = [{{ address = \"127.0.0.1\" }}]\n{routes}"
    ))
    .await;
    (proxy, Recorded { reads, shared })
}

/// The `i`th connection's own source address.
fn client_address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8)
}

/// `input` sent from `from` through the proxy, the client's side then half-closed; the
/// connection read to its end.
async fn through_proxy(proxy: SocketAddr, from: Ipv4Addr, input: &[u8]) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    let mut client = socket.connect(proxy).await.unwrap();
    let _ = client.write_all(input).await;
    let _ = client.shutdown().await;
    let _ = client.read_to_end(&mut Vec::new()).await;
}

/// Whether `got` is `expected` with some left out, in order (a cache answered them), where a
/// GET or HEAD may have come without its body (a cache fills without one, and does not wait
/// for it: the client's body is read and dropped).
fn within(got: &[Read], expected: &[Read]) -> bool {
    let filled = |read: &Read, sent: &Read| {
        matches!(read.0.as_str(), "GET" | "HEAD")
            && read.2.is_empty()
            && (&read.0, &read.1) == (&sent.0, &sent.1)
    };
    let mut expected = expected.iter();
    got.iter().all(|read| expected.any(|sent| sent == read || filled(read, sent)))
}

/// `CONNECTIONS` clients, each one to three requests back to back with the last one mutated,
/// through a listener with `routes`; what the backend read for each must be what hyper reads
/// from the same bytes: its first requests (`all`), or some of them in order (`within`: a
/// cache answers some itself). How many requests were forwarded.
async fn forwarded_as_sent(routes: &str, seed: u64, all: bool) -> usize {
    let (proxy, recorded) = proxy_to_recording_backend(routes).await;
    let mut rng = Rng(seed);
    let mut sent = Vec::new();
    for i in 0..CONNECTIONS {
        let mut input = Vec::new();
        for _ in 0..rng.below(3) {
            input.extend_from_slice(REQUESTS[rng.below(REQUESTS.len())]);
        }
        let seed = REQUESTS[rng.below(REQUESTS.len())];
        input.extend(mutate(&mut rng, seed));
        let from = client_address(i);
        tokio::time::timeout(ENDS_WITHIN, through_proxy(proxy, from, &input)).await.unwrap_or_else(|_| {
            panic!("no end within {ENDS_WITHIN:?}: {:?}", String::from_utf8_lossy(&input))
        });
        sent.push((from, input));
    }
    let forwarded = recorded.all_read().await;
    let mut matched = 0;
    for (from, input) in sent {
        let expected = reference(&input).await;
        let got = forwarded.get(&from).cloned().unwrap_or_default();
        let alike = match all {
            true => got.len() <= expected.len() && got[..] == expected[..got.len()],
            false => within(&got, &expected),
        };
        let text = String::from_utf8_lossy(&input);
        assert!(
            alike,
            "the backend read {got:?}\nfrom a client whose bytes hyper reads as {expected:?}\n{text:?}"
        );
        matched += got.len();
    }
    matched
}

#[tokio::test]
async fn a_backend_reads_the_requests_the_client_sent_and_no_others() {
    let matched = forwarded_as_sent(PLAIN, 0x5eed_0010, true).await;
    // The mutations leave many requests whole: most connections reach the backend.
    assert!(matched >= CONNECTIONS, "only {matched} requests forwarded for {CONNECTIONS} connections");
}

/// Every gateway step that reads the request on the way: a hash by cookie, a sticky split, a
/// rate limit; a cache with a shadow (to another backend) and retries.
#[tokio::test]
async fn through_every_gateway_step_a_backend_reads_only_what_the_client_sent() {
    let routes = format!(
        "[[route]]\nlistener = \"l\"\npool = \"h\"\nhost = \"hash.test\"\nsplit = [{{ pool = \"p\", percent = 50 }}]\nsticky = true\n\
         rate_limit = {{ requests_per_second = 100000, burst = 100000 }}\n\
         [[route]]\nlistener = \"l\"\npool = \"p\"\nhost = \"cache.test\"\ncache = {{ max_entries = 10 }}\n\
         shadow = {{ pool = \"o\", percent = 50 }}\nretries = 1\n{PLAIN}"
    );
    let matched = forwarded_as_sent(&routes, 0x5eed_0012, false).await;
    assert!(matched >= CONNECTIONS / 2, "only {matched} requests forwarded for {CONNECTIONS} connections");
}

/// The request a smuggling attempt hides.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";

/// HTTP/2 requests made to pass a second request to an HTTP/1.1 backend (the downgrade's known
/// ways: a length that says less than the DATA, a chunked coding, line breaks in a field's name
/// or value, in `:path` or `:method`). A backend reads at most the request itself, never the
/// hidden one, as a request or inside a body.
#[tokio::test]
async fn no_http2_request_passes_a_hidden_one_to_an_http1_backend() {
    let (proxy, recorded) = proxy_to_recording_backend(PLAIN).await;
    let post = |extra: &[u8]| [&pseudo(3, "a")[..], extra].concat();
    let data = |body: &str| frame(0, END_STREAM, 1, body.as_bytes());
    // GET, scheme http, then `:path` and `:authority` as literals.
    let get_with = |path: &str, method: Option<&str>| {
        let mut block = match method {
            Some(method) => field(":method", method),
            None => vec![0x82],
        };
        block.extend([0x86]);
        block.extend(field(":path", path));
        block.extend(field(":authority", "a"));
        headers(1, END_STREAM, &block)
    };
    let attempts: Vec<Vec<Vec<u8>>> = vec![
        vec![headers(1, 0, &post(&field("content-length", "0"))), data(SMUGGLED)],
        vec![headers(1, 0, &post(&field("content-length", "5"))), data(&format!("hello{SMUGGLED}"))],
        vec![
            headers(1, 0, &post(&field("transfer-encoding", "chunked"))),
            data(&format!("0\r\n\r\n{SMUGGLED}")),
        ],
        vec![headers(1, 0, &post(&field("x", &format!("v\r\n\r\n{SMUGGLED}")))), data("")],
        vec![headers(1, 0, &post(&field(&format!("x\r\n\r\n{SMUGGLED}"), "v"))), data("")],
        vec![get_with(&format!("/ HTTP/1.1\r\nHost: a\r\n\r\n{SMUGGLED}"), None)],
        vec![get_with("/", Some(&format!("GET / HTTP/1.1\r\nHost: a\r\n\r\n{}", SMUGGLED.trim_end())))],
        // The control: a request the backend must read.
        vec![headers(1, 0, &post(&field("content-length", "5"))), data("hello")],
    ];
    for (i, attempt) in attempts.iter().enumerate() {
        let input = [PREFACE, &opening(), &attempt.concat()].concat();
        tokio::time::timeout(ENDS_WITHIN, through_proxy(proxy, client_address(i), &input))
            .await
            .unwrap_or_else(|_| panic!("attempt {i}: no end within {ENDS_WITHIN:?}"));
    }
    let forwarded = recorded.all_read().await;
    for (i, _) in attempts.iter().enumerate() {
        let got = forwarded.get(&client_address(i)).cloned().unwrap_or_default();
        let hidden = got.iter().any(|(_, target, body)| target == "/smuggled" || body.ends_with(b"\r\n\r\n"));
        assert!(got.len() <= 1 && !hidden, "attempt {i}: the backend read {got:?}");
    }
    let control = forwarded.get(&client_address(attempts.len() - 1)).cloned().unwrap_or_default();
    assert_eq!(control.len(), 1, "the control request reached the backend");
}
