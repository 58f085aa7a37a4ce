//! The L7 proxy: TLS termination and HTTP routing for VIPs that XDP passes up. Listeners accept
//! TLS or plain connections, serve HTTP/1.1 and HTTP/2, route by host/path/method/headers to a
//! pool (the same pools and health as L4), and forward with keep-alive upstream connections.
pub mod auth;
pub mod cache;
pub mod forward;
pub mod metrics;
pub mod routes;
pub mod tls;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use log::{error, info, warn};
use tokio::{net::TcpListener, sync::Semaphore};

use crate::{
    config::Listener,
    proxy::{forward::Forwarder, routes::Snapshot, tls::CertStore},
};

/// Binds `listener` and serves it until `stop` fires, then drains in-flight requests for up to
/// the listener's drain timeout.
pub async fn serve(
    listener: Listener,
    socket: TcpListener,
    snapshot: Arc<ArcSwap<Snapshot>>,
    forwarder: Arc<Forwarder>,
    resolver: Option<Arc<tls::Resolver>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    let acceptor = match (&listener.tls, &resolver) {
        (Some(tls), Some(resolver)) => {
            Some(tokio_rustls::TlsAcceptor::from(tls::server_config(tls, resolver.clone())?))
        }
        _ => None,
    };
    let slots = Arc::new(Semaphore::new(listener.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(listener.header_read_timeout)
        .max_buf_size(listener.max_header_bytes.max(8192));
    builder.http2().timer(TokioTimer::new()).max_header_list_size(listener.max_header_bytes as u32);
    let builder = Arc::new(builder);
    let listener = Arc::new(listener);
    info!(
        "listener {} on {} ({})",
        listener.name,
        listener.address,
        if acceptor.is_some() { "tls" } else { "http" }
    );
    loop {
        let (stream, client) = tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    warn!("listener {}: accept: {err}", listener.name);
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            forwarder.metrics.refused(&listener.name);
            continue; // over max_connections: closed at once
        };
        let _ = stream.set_nodelay(true);
        let (snapshot, forwarder, listener, builder) =
            (snapshot.clone(), forwarder.clone(), listener.clone(), builder.clone());
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _permit = permit;
            forwarder.metrics.connection_opened(&listener.name);
            let tls = acceptor.is_some();
            let service = {
                let listener = listener.clone();
                let forwarder = forwarder.clone();
                service_fn(move |request| {
                    forwarder.clone().handle(request, snapshot.load_full(), listener.clone(), client, tls)
                })
            };
            let result = match acceptor {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(stream) => {
                        forwarder.metrics.handshake(&listener.name, true);
                        let connection =
                            builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                        watcher.watch(connection.into_owned()).await
                    }
                    Err(err) => {
                        forwarder.metrics.handshake(&listener.name, false);
                        log::debug!("listener {}: TLS handshake from {client}: {err}", listener.name);
                        Ok(())
                    }
                },
                None => {
                    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watcher.watch(connection.into_owned()).await
                }
            };
            if let Err(err) = result {
                log::debug!("listener {}: connection from {client}: {err}", listener.name);
            }
            forwarder.metrics.connection_closed(&listener.name);
        });
    }
    drop(socket);
    info!(
        "listener {}: draining {} connections (up to {:?})",
        listener.name,
        graceful.count(),
        listener.drain_timeout
    );
    if tokio::time::timeout(listener.drain_timeout, graceful.shutdown()).await.is_err() {
        warn!("listener {}: drain deadline passed, closing the rest", listener.name);
    }
    Ok(())
}

/// The comma-separated tokens of every `name` header, trimmed and lowercase (Connection, Vary).
pub fn header_tokens(headers: &hyper::HeaderMap, name: hyper::header::HeaderName) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Binds a listener's socket (so lbd reports a busy port before it says READY).
pub async fn bind(address: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(address).await.with_context(|| format!("binding {address}"))
}

/// Loads a listener's certificates (None for plain HTTP).
pub fn load_certs(listener: &Listener) -> Result<Option<Arc<tls::Resolver>>> {
    match &listener.tls {
        None => Ok(None),
        Some(tls) => Ok(Some(Arc::new(tls::Resolver(ArcSwap::from_pointee(
            CertStore::load(tls).with_context(|| format!("listener {}", listener.name))?,
        ))))),
    }
}

/// Re-reads certificates; a bad file is refused with a log line and the old store kept.
pub fn reload_certs(listener: &Listener, resolver: &tls::Resolver) {
    let Some(tls) = &listener.tls else { return };
    match CertStore::load(tls) {
        Ok(store) => {
            resolver.0.store(Arc::new(store));
            info!("listener {}: certificates reloaded", listener.name);
        }
        Err(err) => error!(
            "listener {}: certificate reload refused, the old one keeps serving: {err:#}",
            listener.name
        ),
    }
}

/// Watches certificate files and reloads them when they change.
pub async fn watch_certs(listener: Listener, resolver: Arc<tls::Resolver>) {
    let Some(tls) = listener.tls.clone() else { return };
    let mut seen = tls::files_mtime(&tls);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = tls::files_mtime(&tls);
        if now != seen {
            seen = now;
            reload_certs(&listener, &resolver);
        }
    }
}
