//! The admin API: HTTP/JSON on a unix socket (mode 0600; each connection's peer uid is logged).
//! This file serves it and routes each request; `queries` answers what changes nothing,
//! `actions` what changes something, `views` names every body's shape (shared with lbctl).
//!
//! - `GET /live`, `GET /ready`: 200 while lbd serves (it binds the socket once it is ready)
//! - `GET /status`: uptime, interface, pin directory, pools failing open, the last reload
//! - `GET /vips`, `GET /routes`, `GET /pools`, `GET /pools/NAME`: the State, with health and
//!   effective weights
//! - `GET /listeners`: the L7 listeners, their limits, open connections and the certificates
//!   they serve
//! - `GET /deny`: the deny list
//! - `GET /stats`: fast-path counters per verdict/reason, VIP and backend
//! - `GET /view`: what `lbctl top` and the live page draw
//! - `POST /flow`: which backend a 5-tuple goes to and why (runs the loaded program)
//! - `POST /plan`: what share of buckets and which live flows a change would move
//! - `POST /cache/purge {"route": NAME, "path": "/x"}`: empty a route's response cache
//! - `POST /reload`: re-read the config file, as SIGHUP does; 200 with the changes, 400 with
//!   why nothing changed
//! - `POST /upgrade`: hand the listeners to a new lbd binary, as SIGUSR2 does
//! - `POST /commands`: one [`Command`](crate::state::Command) or a list, applied all or nothing;
//!   400 with the reason when refused, 500 when the maps or the config file could not be
//!   written. Only operator commands (`add_backend`, `remove_backend`, `set_weight`,
//!   `set_drain`, `add_deny`, `remove_deny`, …); the rest (`set_health`, `add_pool`,
//!   `remove_vip`, …) are 400.
//!
//! Bodies are bounded (1 MiB: 413), heads and bodies must arrive within 10 s, and at most 64
//! connections are open at once (the metrics server has the same limits).
use std::{convert::Infallible, os::unix::fs::PermissionsExt, path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use log::{debug, warn};
use serde_json::json;
use tokio::{net::UnixListener, sync::Semaphore};

mod actions;
#[cfg(test)]
mod mutations;
mod queries;
mod reply;
pub mod views;

use crate::daemon::Shared;
use reply::{Answer, fail, reply};

/// Routes a request to its endpoint. A `POST`'s body is read first (bounded in size and time).
async fn handle(core: Shared, request: Request<Incoming>) -> Result<Answer, Infallible> {
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let body = match method {
        Method::POST => match read_body(request).await {
            Ok(body) => body,
            Err(answer) => return Ok(*answer),
        },
        _ => Bytes::new(),
    };
    let answer = match (&method, path.as_str()) {
        // Liveness and readiness (linkerd's names): the admin API answers only once lbd has
        // applied its config, attached and bound its listeners.
        (&Method::GET, "/live" | "/ready") => reply(StatusCode::OK, json!({ "ok": true })),
        (&Method::GET, "/status") => queries::status(&core),
        (&Method::GET, "/vips") => queries::vips(&core),
        (&Method::GET, "/listeners") => queries::listeners(&core),
        (&Method::GET, "/routes") => queries::routes(&core),
        (&Method::GET, "/pools") => queries::pools(&core),
        (&Method::GET, p) if let Some(name) = p.strip_prefix("/pools/") => queries::pool(&core, name),
        (&Method::GET, "/view") => queries::live(&core).await,
        (&Method::GET, "/deny") => queries::deny(&core),
        (&Method::GET, "/stats") => queries::stats(&core),
        (&Method::POST, "/flow") => queries::flow(&core, &body),
        (&Method::POST, "/plan") => queries::plan(&core, &body),
        (&Method::POST, "/cache/purge") => actions::purge(&core, &body),
        (&Method::POST, "/reload") => actions::reload(&core).await,
        (&Method::POST, "/upgrade") => actions::upgrade(&core).await,
        (&Method::POST, "/commands") => actions::commands(&core, &body).await,
        _ => fail(StatusCode::NOT_FOUND, format!("no endpoint {method} {path}")),
    };
    Ok(answer)
}

/// The largest admin request body read (commands, plans with a whole config).
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// How long a client may take to send a request head (and to idle between requests) or a body.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections each of the admin and metrics servers holds at once; more are closed.
pub const MAX_CONNECTIONS: usize = 64;

/// A request's body, bounded in size and time; the answer to give instead when it is not.
async fn read_body(request: Request<Incoming>) -> Result<Bytes, Box<Answer>> {
    let limited = Limited::new(request.into_body(), MAX_BODY_BYTES);
    match tokio::time::timeout(READ_TIMEOUT, limited.collect()).await {
        Ok(Ok(body)) => Ok(body.to_bytes()),
        Ok(Err(err)) if err.is::<LengthLimitError>() => Err(Box::new(fail(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over {MAX_BODY_BYTES} bytes"),
        ))),
        Ok(Err(err)) => Err(Box::new(fail(StatusCode::BAD_REQUEST, err))),
        Err(_) => Err(Box::new(fail(StatusCode::REQUEST_TIMEOUT, "request body timed out"))),
    }
}

/// Binds the admin socket (replacing a stale one), mode 0600.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves one HTTP/1.1 connection with `handler` on its own task (admin API and metrics),
/// holding one of `slots` (none left: the connection is closed at once). A head must arrive
/// within `READ_TIMEOUT`, which also bounds the idle time between requests.
pub fn spawn_connection<S, F, Fut>(
    stream: S,
    what: &'static str,
    slots: &Arc<Semaphore>,
    core: Shared,
    handler: F,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn(Shared, Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    let Ok(permit) = slots.clone().try_acquire_owned() else {
        // At most one line a second, however many are refused.
        static LOGGED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if LOGGED.swap(now, std::sync::atomic::Ordering::Relaxed) != now {
            warn!("{what}: {MAX_CONNECTIONS} connections open, more are closed");
        }
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let service = service_fn(move |request| handler(core.clone(), request));
        // half_close: a client that sends its request and then its end (`nc -U -N`, socat)
        // is answered; hyper's default takes the end for a close and drops the answer.
        let served = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .half_close(true)
            .header_read_timeout(READ_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service)
            .await;
        if let Err(err) = served {
            debug!("{what} connection: {err}");
        }
    });
}

/// Serves the admin API until the task is dropped.
/// `slots` bounds the open connections (MAX_CONNECTIONS); holding them all means none is open.
pub async fn serve(listener: UnixListener, core: Shared, slots: Arc<Semaphore>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let uid = stream.peer_cred().map(|c| c.uid().to_string()).unwrap_or_else(|_| "?".into());
        debug!("admin connection from uid {uid}");
        spawn_connection(stream, "admin", &slots, core.clone(), handle);
    }
}
