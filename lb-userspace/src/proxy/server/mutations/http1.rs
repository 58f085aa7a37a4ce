//! Whole client connections: mutated (and pipelined) requests sent to a real listener loop and
//! a real backend on 127.0.0.1, the client's side then half-closed. Each connection must end,
//! answered or refused, within a few seconds (no hang), and its task must not panic.
use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::{
    config::Config,
    proxy::{
        access_log::ClientConn,
        idle::{Activity, Watched},
        server::http1::{self, Session},
        test_bed,
    },
};
use crate::{
    mutation::Rng,
    proxy::h1::mutations::{REQUESTS, mutate},
};

/// Connections tried: each is a connect, a few writes and reads on loopback.
const CONNECTIONS: usize = 600;
/// What one connection may take to end: far more than an answer needs, far less than any
/// timeout of the proxy's (they are minutes by default) that would end a hang instead.
const ENDS_WITHIN: Duration = Duration::from_secs(5);

/// The proxy's listener loop in miniature: each accepted connection served by
/// `http1::serve` in a task of its own, as a worker does. Returns its address and the
/// connections' tasks as they are accepted.
async fn proxy(
    backend: SocketAddr,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<tokio::task::JoinHandle<()>>) {
    // Every gateway step that reads the request: the client behind a trusted proxy (the
    // seeds' X-Forwarded-For), a hash by cookie, a sticky split, a rate
    // limit, a cache with a shadow and retries, a route's edits and gzip, a route's own
    // redirect, and a catch-all route.
    let port = backend.port();
    let text = format!(
        "[dataplane]\ninterface = \"lo\"\n\
         [[pool]]\nname = \"p\"\nport = {port}\nbackends = [{{ address = \"127.0.0.1\" }}]\n\
         [[pool]]\nname = \"h\"\nport = {port}\nbackends = [{{ address = \"127.0.0.1\" }}]\nbalance = \"hash\"\nhash_key = \"cookie:sid\"\n\
         [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\naccess_log = false\nmax_body_bytes = 4096\n\
         client_address = {{ header = \"x-forwarded-for\", trusted = [\"127.0.0.0/8\"] }}\n\
         [[route]]\nlistener = \"l\"\npool = \"h\"\nhost = \"hash.test\"\nsplit = [{{ pool = \"p\", percent = 50 }}]\nsticky = true\n\
         rate_limit = {{ requests_per_second = 100000, burst = 100000 }}\n\
         [[route]]\nlistener = \"l\"\npool = \"p\"\nhost = \"cache.test\"\ncache = {{ max_entries = 10 }}\n\
         shadow = {{ pool = \"h\", percent = 50 }}\nretries = 1\n\
         [[route]]\nlistener = \"l\"\npool = \"p\"\nhost = \"edits.test\"\npath_prefix = \"/z/\"\nrewrite_prefix = \"/\"\n\
         request_headers = {{ set = {{ \"x-a\" = \"1\" }}, remove = [\"cookie\"] }}\n\
         response_headers = {{ set = {{ \"x-b\" = \"2\" }}, remove = [\"vary\"] }}\n\
         compress = {{ min_bytes = 0, types = [\"text/plain\"] }}\n\
         [[route]]\nlistener = \"l\"\nhost = \"moved.test\"\npath_prefix = \"/y/\"\nrewrite_prefix = \"/w/\"\n\
         redirect = {{ prefix = \"https://a.test\" }}\nresponse_headers = {{ set = {{ \"x-b\" = \"2\" }} }}\n\
         [[route]]\nlistener = \"l\"\npool = \"p\"\n"
    );
    let config = Config::parse(Path::new("t.toml"), &text).unwrap();
    let listener = Arc::new(config.listeners[0].clone());
    let (snapshot, forwarder, ejections) = test_bed::forwarding(config);
    let (never_stops, stop) = tokio::sync::watch::channel(false);
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = socket.local_addr().unwrap();
    let (tasks, accepted) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        // Held while the loop runs: the listener never stops, outlier ejections go nowhere.
        let _held = (never_stops, ejections);
        while let Ok((stream, client)) = socket.accept().await {
            let activity = Arc::new(Activity::default());
            let session = Session {
                forwarder: forwarder.clone(),
                snapshot: snapshot.clone(),
                listener: listener.clone(),
                conn: Arc::new(ClientConn::new(client, None, None)),
                activity: activity.clone(),
                stop: stop.clone(),
            };
            let served = http1::serve(Watched::new(stream, activity), session);
            let _ = tasks.send(tokio::spawn(async move {
                served.await;
            }));
        }
    });
    (address, accepted)
}

#[tokio::test]
async fn every_mutated_connection_ends_without_a_panic() {
    let (address, mut tasks) = proxy(test_bed::http1().await).await;
    let mut rng = Rng(0x5eed_0004);
    let (mut answered, mut redirected) = (0, 0);
    for _ in 0..CONNECTIONS {
        // One to three requests back to back, the last one mutated.
        let mut input = Vec::new();
        for _ in 0..rng.below(3) {
            input.extend_from_slice(REQUESTS[rng.below(2)]);
        }
        let seed = REQUESTS[rng.below(REQUESTS.len())];
        input.extend(mutate(&mut rng, seed));
        let exchange = async {
            let mut client = TcpStream::connect(address).await.unwrap();
            // The proxy may refuse and close before it has read everything.
            let _ = client.write_all(&input).await;
            let _ = client.shutdown().await;
            let mut got = Vec::new();
            let _ = client.read_to_end(&mut got).await;
            got
        };
        let got = tokio::time::timeout(ENDS_WITHIN, exchange).await.unwrap_or_else(|_| {
            panic!("no end within {ENDS_WITHIN:?}: {:?}", String::from_utf8_lossy(&input))
        });
        answered += usize::from(got.starts_with(b"HTTP/1.1 200"));
        redirected += usize::from(got.windows(12).any(|w| w == b"HTTP/1.1 301"));
        let task = tasks.recv().await.unwrap();
        tokio::time::timeout(ENDS_WITHIN, task)
            .await
            .unwrap_or_else(|_| {
                panic!("the connection's task did not end: {:?}", String::from_utf8_lossy(&input))
            })
            .unwrap_or_else(|err| {
                panic!("the connection's task failed ({err}): {:?}", String::from_utf8_lossy(&input))
            });
    }
    // The mutations leave many requests whole: the test reaches the backend, not only the
    // parser's refusals.
    assert!(answered >= CONNECTIONS / 10, "only {answered} of {CONNECTIONS} answered");
    assert!(redirected > 0, "no request reached the route's own redirect");
}
