//! Tunnels after `101 Switching Protocols` through a listener, drawn at random from a seed:
//! bytes sent ahead of the 101 both ways, streams up to 256 KiB echoed in random pieces, a
//! backend that pushes while the client is silent, closes at once or holds, a client that
//! half-closes, closes or holds. Every byte comes back in order, a tunnel that moves bytes
//! outlives the listener's stream idle timeout and the route's timeout, one that moves none
//! ends by that timeout, and every connection gives its slot back.
use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::{ENDS_WITHIN, TIMEOUT_MS, all_ended, start};
use crate::{mutation::Rng, proxy::test_bed};

/// Tunnels tried, and how many are open at once.
const TUNNELS: usize = 200;
const AT_ONCE: usize = 50;
/// The backend's pushes: one every `PUSH_EVERY`, past the listener's stream idle timeout (and
/// the route's timeout) in all.
const PUSHES: usize = 5;
const PUSH_EVERY: Duration = Duration::from_millis(TIMEOUT_MS * 3 / 10);
/// What the backend answers an upgrade with (`GREETING` after it in the same write, for the
/// paths that ask for it).
const SWITCHED: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
const GREETING: &[u8] = b"hello from the backend";

/// What the backend does after its 101, named by the request's path.
#[derive(Clone, Copy, Debug)]
enum Backend {
    /// Echoes every byte until the client's end, then closes.
    Echo,
    /// The same, its first bytes sent with the 101.
    GreetThenEcho,
    /// Sends a byte every `PUSH_EVERY`, `PUSHES` times, reads nothing, then closes.
    Push,
    /// Closes at once.
    Close,
    /// Sends nothing and never closes.
    Hold,
}

const BACKENDS: [Backend; 5] =
    [Backend::Echo, Backend::GreetThenEcho, Backend::Push, Backend::Close, Backend::Hold];

/// A backend that answers each upgrade with a 101 and then does what the path says.
async fn upgrading_backend() -> SocketAddr {
    test_bed::listening(|mut stream| async move {
        let mut read = Vec::new();
        let Some(end) = test_bed::head_read(&mut stream, &mut read).await else { return };
        let head = String::from_utf8_lossy(&read[..end]).into_owned();
        let ahead = read[end..].to_vec();
        let Some(backend) = BACKENDS.into_iter().find(|b| head.starts_with(&format!("GET /{b:?} "))) else {
            return;
        };
        let greeting = if matches!(backend, Backend::GreetThenEcho) { GREETING } else { b"" };
        if stream.write_all(&[SWITCHED, greeting].concat()).await.is_err() {
            return;
        }
        match backend {
            Backend::Echo | Backend::GreetThenEcho => {
                let _ = stream.write_all(&ahead).await;
                let mut chunk = vec![0; 16 * 1024];
                loop {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) if stream.write_all(&chunk[..n]).await.is_err() => return,
                        Ok(_) => {}
                    }
                }
            }
            Backend::Push => {
                for _ in 0..PUSHES {
                    tokio::time::sleep(PUSH_EVERY).await;
                    if stream.write_all(b"!").await.is_err() {
                        return;
                    }
                }
            }
            Backend::Close => {}
            Backend::Hold => std::future::pending().await,
        }
    })
    .await
}

/// What the client does after its upgrade.
#[derive(Clone, Copy, Debug)]
enum Client {
    /// Half-closes once it has sent everything (and reads to the end).
    HalfClose,
    /// Holds its side open and reads to the end.
    Hold,
}

/// One tunnel: the upgrade (with `ahead` sent in the same write), then `sent` in pieces of up
/// to `piece` bytes. Checks what came back, and returns how long the tunnel lasted.
async fn tunnel(
    address: SocketAddr,
    backend: Backend,
    client: Client,
    ahead: Vec<u8>,
    sent: Vec<u8>,
    piece: usize,
) -> Result<Duration, String> {
    let started = tokio::time::Instant::now();
    let stream = TcpStream::connect(address).await.map_err(|e| e.to_string())?;
    let (mut from, mut to) = stream.into_split();
    let upgrade =
        format!("GET /{backend:?} HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    to.write_all(&[upgrade.as_bytes(), &ahead].concat()).await.map_err(|e| e.to_string())?;
    let echoes = matches!(backend, Backend::Echo | Backend::GreetThenEcho);
    let writing = async {
        if echoes {
            for part in sent.chunks(piece) {
                to.write_all(part).await.map_err(|e| e.to_string())?;
            }
        }
        if matches!(client, Client::HalfClose) {
            to.shutdown().await.map_err(|e| e.to_string())?;
        }
        // Held until the reading ends, so that a client that holds does not close.
        Ok::<_, String>(to)
    };
    let reading = async {
        let mut got = Vec::new();
        let read = from.read_to_end(&mut got).await;
        (got, read.err())
    };
    let (written, (got, read_error)) = tokio::join!(writing, reading);
    drop(written?);
    let lasted = started.elapsed();
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").map(|at| at + 4);
    let Some(head_end) = head_end.filter(|_| got.starts_with(b"HTTP/1.1 101")) else {
        return Err(format!(
            "no 101 ({read_error:?} after {:?}): {:?}",
            started.elapsed(),
            String::from_utf8_lossy(&got[..got.len().min(200)])
        ));
    };
    let after = &got[head_end..];
    let expected: Vec<u8> = match backend {
        Backend::Echo => [&ahead[..], &sent].concat(),
        Backend::GreetThenEcho => [GREETING, &ahead, &sent].concat(),
        Backend::Push => vec![b'!'; PUSHES],
        Backend::Close | Backend::Hold => Vec::new(),
    };
    // An echo the client held open ends by the idle timeout after the last byte: all of it
    // came back. A half-closed one ends with the backend's close: all of it too.
    if after != expected.as_slice() {
        return Err(format!("{} bytes came back after the 101, {} expected", after.len(), expected.len()));
    }
    Ok(lasted)
}

#[tokio::test]
async fn every_tunnel_carries_its_bytes_and_ends_when_a_side_closes_or_goes_quiet() {
    let port = upgrading_backend().await.port();
    // The route's timeout covers a request until its answer's head: not the tunnel after it.
    let (address, shared, _) = start(&format!(
        "[[pool]]\nname = \"p\"\nport = {port}\nbackends = [{{ address = \"127.0.0.1\" }}]\n\
         [[route]]\nlistener = \"l\"\npool = \"p\"\ntimeout_ms = {}\n",
        TIMEOUT_MS / 2
    ))
    .await;
    let mut rng = Rng(0x5eed_0009);
    for _ in 0..TUNNELS / AT_ONCE {
        let batch: Vec<_> = (0..AT_ONCE)
            .map(|_| {
                let backend = BACKENDS[rng.below(BACKENDS.len())];
                let client = [Client::HalfClose, Client::Hold][rng.below(2)];
                let byte = |rng: &mut Rng| rng.below(256) as u8;
                let ahead: Vec<u8> = (0..[0, 1, 100][rng.below(3)]).map(|_| byte(&mut rng)).collect();
                let size = [0, 1, 1000, 256 * 1024][rng.below(4)];
                let sent: Vec<u8> = (0..size).map(|_| byte(&mut rng)).collect();
                // One byte at a time only for short streams: every test runs on one thread, and
                // 256 KiB a byte at a time starves the other tunnels past their timeouts.
                let piece = [1, 100, 16 * 1024, 256 * 1024][rng.below(4)].max(size / 1000);
                async move {
                    let case = format!("{backend:?}, {client:?}, {} ahead, {size} sent", ahead.len());
                    let lasted = tokio::time::timeout(
                        ENDS_WITHIN,
                        tunnel(address, backend, client, ahead, sent, piece),
                    )
                    .await
                    .unwrap_or_else(|_| panic!("{case}: no end within {ENDS_WITHIN:?}"))
                    .unwrap_or_else(|err| panic!("{case}: {err}"));
                    // The backend's pushes kept the tunnel open past both timeouts.
                    if matches!(backend, Backend::Push) {
                        assert!(lasted >= PUSH_EVERY * PUSHES as u32, "{case}: cut after {lasted:?}");
                    }
                }
            })
            .collect();
        // Each client a task of its own: one client's flood cannot hold back another's request
        // past the listener's first-byte timeout.
        for case in futures_util::future::join_all(batch.into_iter().map(tokio::spawn)).await {
            if let Err(failed) = case {
                std::panic::resume_unwind(failed.into_panic());
            }
        }
    }
    all_ended(&shared).await;
}
