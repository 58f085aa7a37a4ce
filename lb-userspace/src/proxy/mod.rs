//! The L7 proxy: TLS termination and HTTP routing for VIPs that XDP passes up. Listeners accept
//! TLS or plain connections, serve HTTP/1.1 and HTTP/2, route by host/path/method/headers to a
//! pool (the same pools and health as L4), and forward with keep-alive upstream connections.
pub mod access_log;
pub mod acme;
pub mod auth;
pub mod backend_stream;
pub mod backend_tls;
pub mod basic_auth;
pub mod body;
pub mod boxed;
pub mod busy_poll;
pub mod byte_set;
pub mod cache;
pub mod client_cert;
pub mod client_limit;
pub mod clock;
pub mod cors_policy;
pub mod date;
pub mod deadline;
pub mod error_pages;
pub mod h1;
pub mod h2;
pub mod h3;
pub mod https_client;
pub mod idle;
pub mod interim;
pub mod jwks_fetch;
pub mod log_sink;
pub mod metrics;
pub mod ocsp;
pub mod own_fields;
pub mod phase;
pub mod pipeline;
pub mod pool;
pub mod proxy_protocol;
pub mod replay;
pub mod round_robin;
pub mod routes;
pub mod runtime;
pub mod server;
pub mod snapshot;
pub mod socket_option;
#[cfg(test)]
pub mod test_bed;
pub mod tls;
pub mod trim;
pub mod turn;
pub mod validity;
pub mod watched_file;
pub mod workers;

use std::{sync::Arc, time::Duration};

use log::{error, info};

use crate::{
    config::Listener,
    proxy::tls::{CertStore, TlsError},
};

/// Why a listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("listener {listener}: {error}")]
    Tls { listener: String, error: TlsError },
    #[error("binding {address}: {error}")]
    Bind { address: std::net::SocketAddr, error: std::io::Error },
    #[error("starting an L7 worker: {0}")]
    Runtime(std::io::Error),
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

/// Loads a listener's certificates (None for plain HTTP), its resolver answering the ACME
/// validations in `challenges` (lbd's, for every listener).
pub fn load_certs(
    listener: &Listener,
    challenges: &Arc<acme::Challenges>,
) -> Result<Option<Arc<tls::Resolver>>, ProxyError> {
    let Some(tls) = &listener.tls else { return Ok(None) };
    let store =
        CertStore::load(tls).map_err(|error| ProxyError::Tls { listener: listener.name.clone(), error })?;
    Ok(Some(Arc::new(tls::Resolver::new(store, challenges.clone()))))
}

/// Re-reads certificates; a bad file is refused with a log line and the old store kept.
pub fn reload_certs(listener: &Listener, resolver: &tls::Resolver) {
    let Some(tls) = &listener.tls else { return };
    match CertStore::load(tls) {
        Ok(store) => {
            resolver.store.store(Arc::new(store));
            info!("listener {}: certificates reloaded", listener.name);
        }
        Err(err) => {
            error!("listener {}: certificate reload refused, the old one keeps serving: {err}", listener.name)
        }
    }
}

/// Watches certificate files and reloads them when they change, or when a stapled OCSP
/// response goes stale.
pub async fn watch_certs(listener: Listener, resolver: Arc<tls::Resolver>) {
    let Some(tls) = listener.tls.clone() else { return };
    let mut seen = tls::files_stamp(&tls);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = tls::files_stamp(&tls);
        // A stapled OCSP response past its next update: read again (a fresh one, or none).
        let stale = resolver.store.load().stale_at.is_some_and(|at| std::time::SystemTime::now() >= at);
        if now != seen || stale {
            seen = now;
            reload_certs(&listener, &resolver);
        }
    }
}
