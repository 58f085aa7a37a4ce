//! A listener's HTTP/3: its UDP endpoint on each worker, its QUIC connections under the
//! listener's connection cap, per-client limit and timeouts, each request stream served by the
//! pipeline in a task of its own, and the drain on stop (GOAWAY at a quiet moment).
//!
//! A QUIC connection counts as one connection under `max_connections`, as a TCP one; an idle
//! one may be evicted for a new one. Its first-byte, keep-alive and stream idle limits are the
//! listener's, kept by the same watchdog as HTTP/2's, fed by the request streams' frames.
use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
};

use rustls_pki_types::CertificateDer;

use super::{Connection, Serving, Shared, Slot, answered, slot};
use crate::{
    config::Http3Retry,
    proxy::{
        access_log::{self, ClientConn},
        client_cert, h3,
        idle::{self, Closed},
        socket_option,
    },
};

/// How many bytes of datagrams a worker's UDP socket holds for its endpoint to read. The
/// kernel's default (`net.core.rmem_default`, 208 KiB) is about 170 full datagrams: a burst of
/// new connections, or one fast upload, overflows it and the kernel drops what comes next
/// (QUIC sends it again, later). HAProxy's and nginx's QUIC guides say to raise it; lbd asks for
/// this much itself, past `net.core.rmem_max` where it may (CAP_NET_ADMIN).
pub const RECEIVE_BUFFER: usize = 4 << 20;

/// A UDP socket for `address`, one of the workers' (`SO_REUSEPORT`: the kernel keeps a
/// client's datagrams on one socket by their addresses and ports), holding RECEIVE_BUFFER.
pub fn socket(address: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(address), Type::DGRAM, Some(Protocol::UDP))?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    receive_buffer(&socket, RECEIVE_BUFFER);
    socket.bind(&address.into())?;
    Ok(socket.into())
}

/// Asks for a receive buffer of `bytes`: past `net.core.rmem_max` with CAP_NET_ADMIN
/// (`SO_RCVBUFFORCE`), else as much as the limit lets (`SO_RCVBUF`). Neither failing is an
/// error: the socket works with the default, and the log says so.
fn receive_buffer(socket: &socket2::Socket, bytes: usize) {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    if socket_option::set(socket, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, value).is_ok() {
        return;
    }
    if let Err(err) = socket.set_recv_buffer_size(bytes) {
        log::warn!("HTTP/3: the UDP socket keeps its default receive buffer: {err}");
    }
}

/// A QUIC endpoint serving `socket` with the listener's TLS and transport.
pub fn endpoint(
    socket: std::net::UdpSocket,
    config: quinn::ServerConfig,
) -> std::io::Result<quinn::Endpoint> {
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
}

/// HTTP/3's codes for closing a connection (RFC 9114 §8.1).
const H3_NO_ERROR: u32 = 0x100;
const H3_EXCESSIVE_LOAD: u32 = 0x107;

/// Serves HTTP/3 on `endpoint` until `stop` fires; then lets its connections finish their
/// requests (each sends GOAWAY at a quiet moment) for up to the listener's drain timeout.
///
/// After an upgrade the new lbd reads the same UDP sockets (handed over), and each datagram
/// goes to whichever lbd reads first: nothing steers a QUIC connection's datagrams to the lbd
/// that holds it (that takes a BPF program choosing the socket by connection ID, as nginx's
/// `quic_bpf`). Each side drops what it gets for the other (the new lbd's stateless resets
/// carry tokens the clients do not know), and QUIC sends it again: the draining connections
/// finish, more slowly, and new handshakes that reach the old lbd first are retried within a
/// few hundred milliseconds (docs/operations.md).
pub(super) async fn serve(serving: Serving, shared: Arc<Shared>, endpoint: quinn::Endpoint) {
    let (listener, metrics) = (serving.listener.clone(), serving.forwarder.metrics.clone());
    let retry = Retry(
        listener.tls.as_ref().and_then(|tls| tls.http3.as_ref()).map(|h3| h3.retry).unwrap_or_default(),
    );
    let mut stop = serving.stop.clone();
    loop {
        let incoming = tokio::select! {
            biased;
            _ = stop.changed() => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        if !incoming.remote_address_validated() && retry.wanted(&shared) {
            match incoming.retry() {
                Ok(()) => metrics.quic_retry(&listener.name),
                // The Initial cannot get a Retry (it carried one's token, which did not hold).
                Err(err) => err.into_incoming().refuse(),
            }
            continue;
        }
        let Some(permit) = slot(&shared.slots, &shared.registry).await else {
            metrics.refused(&listener.name);
            incoming.refuse();
            continue;
        };
        let mut permit = Slot { _permit: permit, _client: None };
        let client = incoming.remote_address();
        if !permit.admit(shared.per_client.as_ref(), client.ip()) {
            metrics.client_limited(&listener.name);
            incoming.refuse();
            continue;
        }
        let conn = Arc::new(ClientConn::new(client, None, None));
        let connection = Connection::new(&serving, conn, shared.registry.register(), permit);
        tokio::spawn(connection.http3(incoming, Handshaking::new(&shared)));
    }
    // New connections are refused from here; those open finish (`Connection::http3`).
    endpoint.set_server_config(None);
    if tokio::time::timeout(listener.drain_timeout, endpoint.wait_idle()).await.is_err() {
        endpoint.close(H3_NO_ERROR.into(), b"stopping");
    }
}

/// More QUIC handshakes in progress on a listener (all its workers) than this, and new ones
/// get a Retry first (`http3_retry = "under_load"`): each holds a connection slot until it
/// ends or times out, and a flood of Initials from spoofed addresses would take them all.
/// HAProxy's `tune.quic.retry-threshold` is 100 too.
pub const RETRY_THRESHOLD: usize = 100;

/// A listener's Retry policy.
struct Retry(Http3Retry);

impl Retry {
    /// Whether a new connection whose address is not proved must prove it first.
    fn wanted(&self, shared: &Shared) -> bool {
        match self.0 {
            Http3Retry::Always => true,
            Http3Retry::UnderLoad => shared.quic_handshaking.load(Ordering::Relaxed) >= RETRY_THRESHOLD,
        }
    }
}

/// A QUIC handshake in progress, counted on its listener until dropped.
struct Handshaking(Arc<Shared>);

impl Handshaking {
    fn new(shared: &Arc<Shared>) -> Handshaking {
        shared.quic_handshaking.fetch_add(1, Ordering::Relaxed);
        Handshaking(shared.clone())
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.quic_handshaking.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What ended a connection's wait for its next request.
enum Next {
    Request(Box<h3::Resolver>),
    Done,
    Idle(Closed),
    Stop,
    Drained,
}

impl Connection {
    /// One QUIC connection: its handshake within the listener's timeout, then its requests,
    /// until either side closes it, its watchdog does, or the listener stops.
    async fn http3(mut self, incoming: quinn::Incoming, handshaking: Handshaking) {
        self.opened();
        let (listener, metrics) = (self.session.listener.clone(), self.session.forwarder.metrics.clone());
        let client = self.session.conn.address;
        let activity = self.registered.activity.clone();
        let handshake = async move { incoming.accept()?.await };
        let handshake = idle::unless_evicted(activity.clone(), handshake);
        let handshake = tokio::time::timeout(listener.handshake_timeout, handshake).await;
        drop(handshaking);
        let quic = match handshake {
            Ok(Some(Ok(quic))) => {
                metrics.handshake(&listener.name, "ok");
                quic
            }
            Ok(Some(Err(err))) => {
                metrics.handshake(&listener.name, "failed");
                log::debug!("listener {}: QUIC handshake from {client}: {err}", listener.name);
                return self.closed();
            }
            Ok(None) => {
                metrics.closed_idle(&listener.name, Closed::Evicted.label());
                return self.closed();
            }
            Err(_) => {
                metrics.handshake(&listener.name, "timeout");
                log::debug!("listener {}: QUIC handshake from {client} timed out", listener.name);
                return self.closed();
            }
        };
        self.session.conn = Arc::new(client_conn(&quic, &listener, client));
        // Boxed: a task keeps room for the largest of its steps for its whole life, and h3's
        // start (its SETTINGS exchanged) was one: the connection's task measured 6,792 bytes
        // with it unboxed, 5,728 boxed (`size_of_val`, release build).
        let built = tokio::time::timeout(
            listener.handshake_timeout,
            Box::pin(h3::builder(&listener).build(h3_quinn::Connection::new(quic.clone()))),
        )
        .await;
        let mut h3 = match built {
            Ok(Ok(h3)) => h3,
            Ok(Err(err)) => {
                log::debug!("listener {}: HTTP/3 connection from {client}: {err}", listener.name);
                return self.closed();
            }
            Err(_) => {
                log::debug!(
                    "listener {}: HTTP/3 connection from {client}: no SETTINGS in time",
                    listener.name
                );
                quic.close(H3_EXCESSIVE_LOAD.into(), b"");
                return self.closed();
            }
        };
        self.serve_requests(&mut h3, &quic).await;
        quic.close(H3_NO_ERROR.into(), b"");
        self.closed();
    }

    /// A connection's requests, each in a task of its own; GOAWAY once the listener stops or
    /// the connection is past its age, at a quiet moment, then the close once none is in flight.
    async fn serve_requests(&self, h3: &mut h3::ServerConnection, quic: &quinn::Connection) {
        let s = &self.session;
        let activity = &self.registered.activity;
        let limits = idle::Limits {
            first_byte: s.listener.first_byte_timeout,
            keep_alive: s.listener.idle_timeout,
            stream: s.listener.stream_idle_timeout,
        };
        let mut watchdog = std::pin::pin!(idle::watchdog(activity, limits));
        let mut stop = s.stop.clone();
        let mut stopping = *stop.borrow();
        let mut retire = activity.retires_in().map(|after| Box::pin(tokio::time::sleep(after)));
        // Armed once stopping: GOAWAY at a quiet moment, or shortly before the drain deadline.
        let mut goaway = None;
        let mut drained = None;
        loop {
            if stopping && goaway.is_none() && drained.is_none() {
                let latest = tokio::time::Instant::now()
                    + s.listener.drain_timeout.saturating_sub(idle::GOAWAY_BEFORE_DEADLINE);
                goaway = Some(Box::pin(activity.quiet(idle::GOAWAY_QUIET, latest)));
            }
            let next = tokio::select! {
                accepted = h3.accept() => match accepted {
                    Ok(Some(resolver)) => Next::Request(Box::new(resolver)),
                    Ok(None) => Next::Done,
                    Err(err) => {
                        log::debug!("listener {}: HTTP/3 connection from {}: {err}", s.listener.name, s.conn.address);
                        Next::Done
                    }
                },
                closed = watchdog.as_mut() => Next::Idle(closed),
                _ = stop.changed(), if !stopping => Next::Stop,
                _ = async { retire.as_mut().expect("armed").await }, if retire.is_some() && !stopping => {
                    retire = None;
                    Next::Stop
                }
                _ = async { goaway.as_mut().expect("armed").await }, if goaway.is_some() => {
                    goaway = None;
                    // In-flight requests finish; the client opens no more.
                    let _ = h3.shutdown(0).await;
                    drained = Some(Box::pin(activity.quiet(std::time::Duration::ZERO, tokio::time::Instant::now() + idle::GOAWAY_BEFORE_DEADLINE)));
                    continue;
                }
                _ = async { drained.as_mut().expect("armed").await }, if drained.is_some() => Next::Drained,
                _ = quic.closed() => Next::Done,
            };
            match next {
                Next::Request(resolver) => {
                    tokio::spawn(request(s.clone(), *resolver));
                }
                Next::Done | Next::Drained => return,
                Next::Idle(closed) => {
                    s.forwarder.metrics.closed_idle(&s.listener.name, closed.label());
                    return;
                }
                Next::Stop => stopping = true,
            }
        }
    }
}

/// The client as a QUIC handshake shows it: TLS 1.3, its server name, its certificate (on a
/// listener with `client_ca`), ALPN h3.
fn client_conn(
    quic: &quinn::Connection,
    listener: &crate::config::Listener,
    client: SocketAddr,
) -> ClientConn {
    let sni = quic
        .handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.server_name);
    let chain = quic.peer_identity().and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok());
    let tls = listener.tls.as_ref();
    let forward_cert = tls.is_some_and(|tls| tls.forward_client_cert);
    let details = tls.map(|tls| tls.forward_client_cert_details).unwrap_or_default();
    ClientConn {
        client_cert: forward_cert.then(|| client_cert::details(chain.as_deref()?, details)).flatten(),
        client_verified: chain.is_some(),
        alpn: Some(b"h3"),
        ..ClientConn::new(client, rustls::ProtocolVersion::TLSv1_3.as_str(), sni)
    }
}

/// One request stream: its head within the listener's header timeout, the pipeline, its answer.
async fn request(s: super::Session, resolver: h3::Resolver) {
    let (listener, metrics) = (&s.listener, &s.forwarder.metrics);
    let (head, stream) =
        match tokio::time::timeout(listener.header_read_timeout, resolver.resolve_request()).await {
            Ok(Ok(resolved)) => resolved,
            Ok(Err(err)) => {
                // h3 has answered 431 or reset the stream (a malformed head): counted and logged
                // as the HTTP/1.1 parser's refusals are.
                let refused = match err {
                    ::h3::error::StreamError::HeaderTooBig { .. } => Some((431, "head too large")),
                    ::h3::error::StreamError::StreamError { code, .. }
                        if code == ::h3::error::Code::H3_MESSAGE_ERROR =>
                    {
                        Some((400, "malformed HTTP/3 head"))
                    }
                    _ => None,
                };
                if let Some((status, reason)) = refused {
                    metrics.parser_refused(&listener.name, status);
                    if listener.access_log {
                        let filter = listener.access_log_filter.as_ref();
                        access_log::refused(&s.conn, status, reason, listener.access_log_format, filter);
                    }
                }
                log::debug!("listener {}: HTTP/3 request from {}: {err}", listener.name, s.conn.address);
                return;
            }
            Err(_) => {
                log::debug!(
                    "listener {}: HTTP/3 request from {}: no head within {:?}",
                    listener.name,
                    s.conn.address,
                    listener.header_read_timeout
                );
                return;
            }
        };
    let (send, recv) = stream.split();
    let request = h3::request(head, recv, s.activity.clone());
    h3::answer(answered(&s, request), send, s.conn.clone(), s.activity.clone()).await;
}

#[cfg(test)]
mod tests;
