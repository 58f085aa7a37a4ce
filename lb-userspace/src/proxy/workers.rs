//! Per-core workers (nginx's model): one thread per usable core, each a single-threaded tokio
//! runtime serving every L7 listener on a socket of its own (`SO_REUSEPORT`, so the kernel
//! spreads new connections), so a connection, its requests and its upstream connections never
//! cross threads. The control path (admin, health, metrics) stays on lbd's main runtime.
use std::{net::SocketAddr, sync::Arc, thread::JoinHandle};

use arc_swap::ArcSwap;
use log::{error, info};
use tokio::net::TcpSocket;

use crate::{
    config::Listener,
    proxy::{
        ProxyError, busy_poll, log_sink,
        pipeline::Forwarder,
        server::{self, Shared},
        snapshot::Snapshot,
        socket_option, tls, trim,
    },
};

/// How many workers: one per core lbd may run on (its CPU affinity, e.g. `taskset`).
pub fn count() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// One listener's sockets, one per worker, bound and listening.
pub struct Bound {
    pub listener: Listener,
    pub certs: Option<Arc<tls::Resolver>>,
    sockets: Vec<std::net::TcpListener>,
    /// HTTP/3's UDP sockets, one per worker, on a listener with `http3`.
    datagrams: Vec<std::net::UdpSocket>,
}

fn socket(address: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    let socket = if address.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(reuse_port)?;
    socket.bind(address)?;
    socket.listen(4096)?.into_std()
}

/// How long the kernel holds a connection that has sent nothing before handing it over anyway
/// (`TCP_DEFER_ACCEPT`, in seconds; the kernel counts it in SYN-ACK retransmissions).
const DEFER_ACCEPT_SECONDS: libc::c_int = 1;

/// `TCP_DEFER_ACCEPT` on or off. On, a client's connection is accepted with its first bytes (a
/// request, a ClientHello: HTTP and TLS clients speak first), so the worker takes both in one
/// wake-up instead of accepting, reading nothing and waiting again. Measured on new TLS
/// handshakes: 11–16% less CPU per handshake, the rate unchanged (docs/performance.md). A
/// connection that sends nothing is handed over after about a second and then has its
/// first-byte timeout.
fn defer_accept(socket: &std::net::TcpListener, on: bool) -> std::io::Result<()> {
    let seconds = if on { DEFER_ACCEPT_SECONDS } else { 0 };
    socket_option::set(socket, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, seconds)
}

/// Binds `workers` sockets for `listener` (must run inside a tokio runtime), or takes the
/// ones an old lbd `handed` over (`upgrade.rs`): TCP ones, and UDP ones for HTTP/3. A port
/// another process holds fails here, before READY: the first socket is bound without
/// `SO_REUSEPORT` to find out, then let go.
pub fn bind(
    listener: Listener,
    certs: Option<Arc<tls::Resolver>>,
    workers: usize,
    handed: Option<Vec<std::os::fd::OwnedFd>>,
    handed_datagrams: Option<Vec<std::os::fd::OwnedFd>>,
) -> Result<Bound, ProxyError> {
    let address = listener.address;
    let bind_error = |error| ProxyError::Bind { address, error };
    let sockets: Vec<std::net::TcpListener> = match handed {
        Some(handed) => handed.into_iter().map(std::net::TcpListener::from).collect(),
        None if workers == 1 => vec![socket(address, false).map_err(bind_error)?],
        None => {
            drop(socket(address, false).map_err(bind_error)?);
            (0..workers).map(|_| socket(address, true).map_err(bind_error)).collect::<Result<_, _>>()?
        }
    };
    // Handed-over sockets too: the new config may have turned it on or off.
    for socket in &sockets {
        defer_accept(socket, listener.defer_accept).map_err(bind_error)?;
    }
    let datagrams = match (listener.tls.as_ref().and_then(|tls| tls.http3.as_ref()), handed_datagrams) {
        (None, _) => Vec::new(),
        (Some(_), Some(handed)) => handed.into_iter().map(std::net::UdpSocket::from).collect(),
        (Some(_), None) => (0..sockets.len())
            .map(|_| server::http3::socket(address).map_err(bind_error))
            .collect::<Result<_, _>>()?,
    };
    Ok(Bound { listener, certs, sockets, datagrams })
}

impl Bound {
    /// Duplicates of the sockets (TCP, then UDP), kept for an upgrade's handover.
    pub fn keep(&self) -> std::io::Result<(Vec<std::os::fd::OwnedFd>, Vec<std::os::fd::OwnedFd>)> {
        let tcp = self.sockets.iter().map(|s| std::os::fd::AsFd::as_fd(s).try_clone_to_owned());
        let udp = self.datagrams.iter().map(|s| std::os::fd::AsFd::as_fd(s).try_clone_to_owned());
        Ok((tcp.collect::<Result<_, _>>()?, udp.collect::<Result<_, _>>()?))
    }
}

/// Starts the workers; each serves every listener until `stop` fires and its connections
/// have drained.
pub fn start(
    bound: Vec<Bound>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    forwarder: Arc<Forwarder>,
    stop: tokio::sync::watch::Receiver<bool>,
    busy_poll: std::time::Duration,
) -> Result<Vec<JoinHandle<()>>, ProxyError> {
    let per_worker = by_worker(bound)?;
    if !busy_poll.is_zero() {
        info!(
            "L7 workers poll busily for {} µs after their last work before they sleep",
            busy_poll.as_micros()
        );
    }
    let mut threads = Vec::new();
    for (worker, listeners) in per_worker.into_iter().enumerate() {
        let (snapshot, forwarder, stop) = (snapshot.clone(), forwarder.clone(), stop.clone());
        let mut builder = tokio::runtime::Builder::new_current_thread();
        builder.enable_all();
        // Busy polling (`[proxy] busy_poll_us`; zero: none): see `busy_poll`.
        if !busy_poll.is_zero() {
            builder.on_thread_park(busy_poll::before_park).on_thread_unpark(busy_poll::after_unpark);
        }
        let runtime = builder.build().map_err(ProxyError::Runtime)?;
        let thread = std::thread::Builder::new()
            .name(format!("l7-worker-{worker}"))
            .spawn(move || {
                log_sink::buffer_here();
                runtime.block_on(work(worker, listeners, snapshot, forwarder, stop, busy_poll));
                // The lines of the worker's last requests.
                log_sink::flush();
            })
            .map_err(ProxyError::Runtime)?;
        threads.push(thread);
    }
    Ok(threads)
}

/// One worker's listeners: each listener's socket of that worker (and its UDP one, with
/// `http3`), with the state its workers share.
type Listeners = Vec<(Listener, std::net::TcpListener, Option<std::net::UdpSocket>, Arc<Shared>)>;

/// The bound listeners dealt out to the workers: worker N gets every listener's Nth socket.
fn by_worker(bound: Vec<Bound>) -> Result<Vec<Listeners>, ProxyError> {
    let workers = bound.first().map_or(0, |b| b.sockets.len());
    let mut per_worker: Vec<Listeners> = (0..workers).map(|_| Vec::new()).collect();
    for Bound { listener, certs, sockets, datagrams } in bound {
        let http3 = listener.tls.as_ref().is_some_and(|tls| tls.http3.is_some());
        info!(
            "listener {} on {} ({}, {workers} workers)",
            listener.name,
            listener.address,
            match (&listener.tls, http3) {
                (None, _) => "http",
                (Some(_), false) => "tls",
                (Some(_), true) => "tls, and HTTP/3 on UDP",
            }
        );
        let shared = Shared::new(&listener, certs.as_ref(), sockets.len())
            .map_err(|error| ProxyError::Tls { listener: listener.name.clone(), error })?;
        let mut datagrams = datagrams.into_iter();
        for (worker, socket) in sockets.into_iter().enumerate() {
            per_worker[worker].push((listener.clone(), socket, datagrams.next(), shared.clone()));
        }
    }
    Ok(per_worker)
}

/// What a worker's runtime runs: its housekeeping tasks (busy polling, memory trim, upstream
/// sweep, log flush) and a server per listener, until every server has drained.
async fn work(
    worker: usize,
    listeners: Listeners,
    snapshot: Arc<ArcSwap<Snapshot>>,
    forwarder: Arc<Forwarder>,
    stop: tokio::sync::watch::Receiver<bool>,
    busy_poll: std::time::Duration,
) {
    if !busy_poll.is_zero() {
        tokio::spawn(busy_poll::spinner(busy_poll));
    }
    tokio::spawn(trim::trimmer());
    tokio::spawn(forwarder.clone().sweep_upstreams());
    tokio::spawn(log_sink::flusher());
    let mut serving = Vec::new();
    for (listener, socket, datagrams, shared) in listeners {
        let name = listener.name.clone();
        if let Some(datagrams) = datagrams {
            let config = shared.quic().cloned().expect("a listener with UDP sockets has HTTP/3's config");
            match server::http3::endpoint(datagrams, config) {
                Ok(endpoint) => {
                    let served = server::serve_http3(
                        listener.clone(),
                        endpoint,
                        shared.clone(),
                        snapshot.clone(),
                        forwarder.clone(),
                        stop.clone(),
                    );
                    serving.push(tokio::spawn(served));
                }
                Err(err) => error!("listener {name}: worker {worker}: HTTP/3: {err}"),
            }
        }
        let socket =
            match socket.set_nonblocking(true).and_then(|()| tokio::net::TcpListener::from_std(socket)) {
                Ok(socket) => socket,
                Err(err) => {
                    error!("listener {name}: worker {worker}: {err}");
                    shared.stopped_accepting();
                    continue;
                }
            };
        let served =
            server::serve(listener, socket, shared, snapshot.clone(), forwarder.clone(), stop.clone());
        serving.push(tokio::spawn(served));
    }
    for task in serving {
        let _ = task.await;
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    /// The socket's `TCP_DEFER_ACCEPT`, as the kernel reports it.
    fn deferred(socket: &std::net::TcpListener) -> libc::c_int {
        let (mut value, mut size): (libc::c_int, libc::socklen_t) = (0, 4);
        // SAFETY: getsockopt on an open socket into a c_int with its size.
        let got = unsafe {
            libc::getsockopt(
                std::os::fd::AsRawFd::as_raw_fd(socket),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                (&raw mut value).cast(),
                &mut size,
            )
        };
        assert_eq!(got, 0, "{}", std::io::Error::last_os_error());
        value
    }

    fn listener(port: u16, extra: &str) -> Listener {
        let text = format!(
            "[dataplane]\ninterface = \"lo\"\n[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:{port}\"\n{extra}"
        );
        Config::parse(Path::new("t.toml"), &text).unwrap().listeners.remove(0)
    }

    #[tokio::test]
    async fn listeners_defer_accept_as_configured_handed_over_ones_too() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let bound = bind(listener(port, ""), None, 2, None, None).unwrap();
        assert!(bound.sockets.iter().all(|s| deferred(s) > 0), "not deferred by default");
        // An upgrade hands the sockets to a config that turns it off.
        let (handed, _) = bound.keep().unwrap();
        let rebound = bind(listener(port, "defer_accept = false\n"), None, 2, Some(handed), None).unwrap();
        assert!(rebound.sockets.iter().all(|s| deferred(s) == 0), "still deferred");
    }
}
