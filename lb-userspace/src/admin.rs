//! The admin API: HTTP/JSON on a unix socket (mode 0600; each connection's peer uid is logged).
//!
//! - `GET /live`, `GET /ready`: 200 while lbd serves (it binds the socket once it is ready)
//! - `GET /status`: uptime, interface, pin directory, pools failing open, the last reload
//! - `GET /vips`, `GET /pools`, `GET /pools/NAME`: the State, with health and effective weights
//! - `GET /deny`: the deny list
//! - `GET /stats`: fast-path counters per verdict/reason, VIP and backend
//! - `POST /cache/purge {"route": NAME, "path": "/x"}`: empty a route's response cache
//! - `POST /reload`: re-read the config file, as SIGHUP does; 200 with the changes, 400 with
//!   why nothing changed
//! - `POST /flow`: which backend a 5-tuple goes to and why (runs the loaded program)
//! - `POST /plan`: what share of buckets and which live flows a change would move
//! - `POST /commands`: one [`Command`] or a list, applied all or nothing; 400 with the reason
//!   when refused, 500 when the maps or the config file could not be written. Only operator
//!   commands (`add_backend`, `remove_backend`, `set_weight`, `set_drain`, `add_deny`,
//!   `remove_deny`); the rest (`set_health`, `add_pool`, `remove_vip`, …) are 400.
//!
//! Bodies are bounded (1 MiB: 413), heads and bodies must arrive within 10 s, and at most 64
//! connections are open at once (the metrics server has the same limits).
use std::{convert::Infallible, os::unix::fs::PermissionsExt, path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use log::{debug, error, info, warn};
use serde_json::{Value, json};
use tokio::{net::UnixListener, sync::Semaphore};

#[cfg(test)]
mod mutations;
pub mod views;

use crate::{
    config::VipMode,
    daemon::{ExecError, Shared, lock},
    dataplane::{
        DataplaneError,
        counters::{Counters, protocol_name},
        tables::ip_of,
    },
    inspect::{self, InspectError},
    state::Command,
};

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string() + "\n")));
    *response.status_mut() = status;
    response.headers_mut().insert("content-type", "application/json".parse().expect("static header"));
    response
}

fn pool_view(core: &crate::daemon::Core, name: &str) -> Option<Value> {
    let pool = core.state.config.pools.get(name)?;
    let (weighted, fail_open) = core.state.effective_backends(pool);
    let backends: Vec<views::Backend> = pool
        .backends
        .iter()
        .zip(weighted)
        .map(|(b, w)| views::Backend {
            address: b.addr,
            weight: b.weight,
            drain: b.drain,
            healthy: core.state.healthy(name, b.addr),
            ejected: core.state.ejected.contains(&(name.to_owned(), b.addr)),
            effective_weight: w.weight,
        })
        .collect();
    Some(json!(views::Pool {
        name: name.to_owned(),
        backends,
        failing_open: fail_open,
        health_check: pool.health.as_ref().and_then(|h| serde_json::to_value(h).ok()),
    }))
}

/// Why `/flow` or `/plan` was not answered (a 400 with this text).
#[derive(Debug, thiserror::Error)]
enum QueryError {
    #[error("expected {expected}: {error}")]
    Body { expected: &'static str, error: serde_json::Error },
    #[error("no [dataplane] on this host: no XDP program to run")]
    NoDataplane,
    #[error("{0}")]
    NotOperator(String),
    #[error("invalid config:\n{0}")]
    Config(crate::config::ConfigErrors),
    #[error(transparent)]
    Inspect(#[from] InspectError),
    #[error("encoding the answer: {0}")]
    Encode(#[from] serde_json::Error),
}

fn stats_view(counters: &Counters) -> Result<views::Stats, DataplaneError> {
    let verdicts = counters
        .verdicts()?
        .into_iter()
        .map(|(s, c)| views::Counter { name: s.name().to_owned(), packets: c.packets, bytes: c.bytes })
        .collect();
    let traffic = |c: lb_common::stats::TrafficCounter| views::Traffic {
        packets: c.packets,
        bytes: c.bytes,
        new_flows: c.new_flows,
        lru_hits: c.lru_hits,
        lru_misses: c.lru_misses,
    };
    let vips = counters
        .vips()?
        .into_iter()
        .map(|(k, c)| views::VipTraffic {
            address: ip_of(&k.addr),
            port: u16::from_be(k.port),
            protocol: protocol_name(k.proto),
            traffic: traffic(c),
        })
        .collect();
    let backends = counters
        .backends()?
        .into_iter()
        .map(|(address, c)| views::BackendTraffic { address, traffic: traffic(c) })
        .collect();
    Ok(views::Stats { counters: verdicts, vips, backends })
}

async fn handle(core: Shared, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let response = match (&method, path.as_str()) {
        // Liveness and readiness (linkerd's names): the admin API answers only once lbd has
        // applied its config, attached and bound its listeners.
        (&Method::GET, "/live") | (&Method::GET, "/ready") => reply(StatusCode::OK, json!({ "ok": true })),
        (&Method::GET, "/status") => {
            let core = lock(&core);
            let config = &core.state.config;
            let status = views::Status {
                interface: config.interface.clone(),
                pin_dir: config.pin_dir.clone(),
                config: core.config_path.clone(),
                uptime_seconds: core.started.elapsed().as_secs(),
                vips: config.vips.len(),
                pools: config.pools.len(),
                failing_open: core.state.failing_open(),
                last_reload: core.last_reload.map(|r| views::LastReload {
                    unix_seconds: r.at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                    applied: r.applied,
                }),
                cluster: config.cluster.as_ref().map(|c| views::Following {
                    endpoints: c.endpoints.clone(),
                    prefix: c.prefix.clone(),
                    revision: core.following.revision,
                    error: core.following.error.clone(),
                }),
                bgp: config.bgp.as_ref().map(|b| views::Announcing {
                    drained: b.drained,
                    announced: core.announcing.announced.clone(),
                    error: core.announcing.error.clone(),
                }),
            };
            reply(StatusCode::OK, json!(status))
        }
        (&Method::GET, "/vips") => {
            let core = lock(&core);
            let vips: Vec<Value> = core
                .state
                .config
                .vips
                .iter()
                .map(|v| {
                    json!(views::Vip {
                        name: v.name.clone(),
                        address: v.addr,
                        port: v.port,
                        protocol: format!("{:?}", v.protocol).to_lowercase(),
                        pool: v.pool.clone(),
                        mode: if v.mode == VipMode::L4 { "l4" } else { "l7" }.to_owned(),
                        syn_cookies: v.syn_cookies,
                    })
                })
                .collect();
            reply(StatusCode::OK, json!(vips))
        }
        (&Method::GET, "/routes") => {
            let core = lock(&core);
            let routes: Vec<views::Route> = core.state.config.routes.iter().map(route_view).collect();
            reply(StatusCode::OK, json!(routes))
        }
        (&Method::GET, "/pools") => {
            let core = lock(&core);
            let pools: Vec<Value> =
                core.state.config.pools.keys().filter_map(|n| pool_view(&core, n)).collect();
            reply(StatusCode::OK, json!(pools))
        }
        (&Method::GET, p) if p.starts_with("/pools/") => {
            let core = lock(&core);
            match pool_view(&core, &p["/pools/".len()..]) {
                Some(view) => reply(StatusCode::OK, view),
                None => reply(StatusCode::NOT_FOUND, json!({ "error": format!("no pool `{}`", &p[7..]) })),
            }
        }
        (&Method::GET, "/view") => {
            let core = core.clone();
            match tokio::task::spawn_blocking(move || crate::live_view::snapshot(&core)).await {
                Ok(live) => reply(StatusCode::OK, json!(live)),
                Err(err) => reply(StatusCode::INTERNAL_SERVER_ERROR, json!({ "error": err.to_string() })),
            }
        }
        (&Method::GET, "/deny") => {
            let core = lock(&core);
            let deny: Vec<String> = core.state.config.deny.iter().map(ToString::to_string).collect();
            reply(StatusCode::OK, json!(deny))
        }
        (&Method::GET, "/stats") => {
            let counters = lock(&core).counters.clone();
            let view = match counters {
                Some(counters) => stats_view(&counters.lock().unwrap_or_else(|p| p.into_inner())),
                None => Ok(views::Stats::default()),
            };
            match view {
                Ok(view) => reply(StatusCode::OK, json!(view)),
                Err(err) => reply(StatusCode::INTERNAL_SERVER_ERROR, json!({ "error": err.to_string() })),
            }
        }
        (&Method::POST, "/cache/purge") => {
            let body = match read_body(request).await {
                Ok(body) => body,
                Err(answer) => return Ok(*answer),
            };
            match serde_json::from_slice::<views::Purge>(&body) {
                Err(err) => reply(
                    StatusCode::BAD_REQUEST,
                    json!({ "error": format!("expected {{route, path}}: {err}") }),
                ),
                Ok(p) => {
                    let purged = lock(&core).cache.purge(&p.route, p.path.as_deref());
                    info!(
                        "cache purge of route {} {}: {purged} entries",
                        p.route,
                        p.path.as_deref().unwrap_or("(all)")
                    );
                    reply(StatusCode::OK, json!(views::Purged { purged }))
                }
            }
        }
        (&Method::POST, "/flow") | (&Method::POST, "/plan") => {
            let body = match read_body(request).await {
                Ok(body) => body,
                Err(answer) => return Ok(*answer),
            };
            let answer = if path == "/flow" { flow(&core, &body) } else { plan(&core, &body) };
            match answer {
                Ok(value) => reply(StatusCode::OK, value),
                Err(err) => reply(StatusCode::BAD_REQUEST, json!({ "error": err.to_string() })),
            }
        }
        (&Method::POST, "/reload") => {
            // The same path as SIGHUP, run by the signal loop; the answer is its result.
            let (asked, answer) = tokio::sync::oneshot::channel();
            let reloads = lock(&core).reloads.clone();
            let sent = match reloads {
                Some(reloads) => reloads.send(asked).await.is_ok(),
                None => false,
            };
            if !sent {
                return Ok(reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({ "error": "lbd is not ready to reload" }),
                ));
            }
            match tokio::time::timeout(Duration::from_secs(60), answer).await {
                Ok(Ok(Ok(lines))) => reply(StatusCode::OK, json!(views::Changes { changes: lines })),
                Ok(Ok(Err(why))) => reply(
                    StatusCode::BAD_REQUEST,
                    json!({ "error": format!("reload refused, nothing changed: {why}") }),
                ),
                _ => {
                    reply(StatusCode::INTERNAL_SERVER_ERROR, json!({ "error": "the reload did not finish" }))
                }
            }
        }
        (&Method::POST, "/upgrade") => {
            // Run by the signal loop, like SIGUSR2; answered once the new lbd serves or failed.
            let (asked, answer) = tokio::sync::oneshot::channel();
            let upgrades = lock(&core).upgrades.clone();
            let sent = match upgrades {
                Some(upgrades) => upgrades.try_send(asked).is_ok(),
                None => false,
            };
            if !sent {
                return Ok(reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({ "error": "lbd is not ready to upgrade, or an upgrade is under way" }),
                ));
            }
            let waited = crate::upgrade::READY_TIMEOUT + Duration::from_secs(10);
            match tokio::time::timeout(waited, answer).await {
                Ok(Ok(Ok(pid))) => reply(StatusCode::OK, json!(views::Upgraded { pid })),
                Ok(Ok(Err(why))) => reply(
                    StatusCode::BAD_REQUEST,
                    json!({ "error": format!("upgrade refused, this lbd keeps serving: {why}") }),
                ),
                _ => {
                    reply(StatusCode::INTERNAL_SERVER_ERROR, json!({ "error": "the upgrade did not finish" }))
                }
            }
        }
        (&Method::POST, "/commands") => {
            let body = match read_body(request).await {
                Ok(body) => body,
                Err(answer) => return Ok(*answer),
            };
            let commands: Result<Vec<Command>, _> = serde_json::from_slice::<Vec<Command>>(&body)
                .or_else(|_| serde_json::from_slice::<Command>(&body).map(|c| vec![c]));
            let commands = commands.map_err(|err| format!("not a command: {err}")).and_then(operator_only);
            let etcd = lock(&core).etcd.clone();
            match commands {
                Err(err) => reply(StatusCode::BAD_REQUEST, json!({ "error": err })),
                // With [cluster], backends change in etcd; every host (this one too) applies
                // the change from there.
                Ok(commands) if etcd.is_some() && commands.iter().any(Command::is_backend) => {
                    match to_etcd(&core, etcd.as_deref().unwrap_or_else(|| unreachable!()), &commands).await {
                        Ok(lines) => reply(StatusCode::OK, json!(views::Changes { changes: lines })),
                        Err(err) => reply(StatusCode::BAD_REQUEST, json!({ "error": err })),
                    }
                }
                // Executing writes the maps and the config file (fsync): off the async workers.
                Ok(commands) => {
                    let core = core.clone();
                    match tokio::task::spawn_blocking(move || {
                        crate::daemon::execute_persisting(&core, &commands)
                    })
                    .await
                    {
                        Ok(Ok(lines)) => reply(StatusCode::OK, json!(views::Changes { changes: lines })),
                        Ok(Err(ExecError::Refused(err))) => {
                            reply(StatusCode::BAD_REQUEST, json!({ "error": err.to_string() }))
                        }
                        Ok(Err(err)) => {
                            error!("command failed: {err}");
                            reply(StatusCode::INTERNAL_SERVER_ERROR, json!({ "error": err.to_string() }))
                        }
                        Err(err) => {
                            reply(StatusCode::INTERNAL_SERVER_ERROR, json!({ "error": err.to_string() }))
                        }
                    }
                }
            }
        }
        _ => reply(StatusCode::NOT_FOUND, json!({ "error": format!("no endpoint {method} {path}") })),
    };
    Ok(response)
}

/// Writes backend commands to etcd, each checked against the State first; the lines say what
/// was written (the State changes when the change comes back from etcd, within a second).
async fn to_etcd(
    core: &Shared,
    etcd: &crate::cluster::Etcd,
    commands: &[Command],
) -> Result<Vec<String>, String> {
    if !commands.iter().all(Command::is_backend) {
        return Err("with [cluster], send backend commands apart from the others".to_owned());
    }
    let mut lines = Vec::new();
    let mut state = lock(core).state.clone();
    let mut known = etcd.view().await.map_err(|err| format!("etcd: {err} (nothing changed)"))?.pools;
    for command in commands {
        let (pool, address, member) = crate::cluster::write_for(&state, command)?;
        // The first change to a pool etcd knows nothing of writes the pool's backends first:
        // etcd then holds the whole pool, not this one backend alone.
        if !known.contains_key(&pool) {
            for b in &state.config.pools[&pool].backends {
                let seed = crate::cluster::Member { weight: b.weight, drain: b.drain };
                etcd.put(&pool, b.addr, seed).await.map_err(|err| format!("etcd: {err}"))?;
            }
            known.insert(pool.clone(), Default::default());
        }
        state.apply(command).map_err(|e| e.to_string())?;
        let revision = match member {
            Some(member) => etcd.put(&pool, address, member).await,
            None => etcd.delete(&pool, address).await,
        }
        .map_err(|err| format!("etcd: {err} (nothing changed)"))?;
        lines.push(format!(
            "pool {pool}: backend {address} written to etcd at revision {revision}; every host applies it"
        ));
    }
    Ok(lines)
}

/// A route as `GET /routes` shows it.
fn route_view(route: &crate::config::Route) -> views::Route {
    use crate::config::PathMatch;
    views::Route {
        name: route.name.clone(),
        listener: route.listener.clone(),
        host: route.host.clone().unwrap_or_else(|| "*".to_owned()),
        path: match &route.path {
            PathMatch::Any => "*".to_owned(),
            PathMatch::Exact(p) => format!("={p}"),
            PathMatch::Prefix(p) => p.clone(),
            PathMatch::Regex(r) => format!("~{r}"),
        },
        pool: route.pool.clone(),
        split: route.split.clone(),
        sticky: route.sticky,
    }
}

/// The commands an operator may send: the ones written to the config file. Probe results,
/// pool and VIP additions and removals are the State's own (health checks, reloads) and are
/// refused here, whole request and all.
fn operator_only(commands: Vec<Command>) -> Result<Vec<Command>, String> {
    match commands.iter().find(|c| !c.persists()) {
        Some(other) => Err(format!(
            "{} is not an admin command (add_backend, remove_backend, set_weight, set_drain, \
             set_node_drain, set_split, add_deny, remove_deny; pools and VIPs change in the config \
             file and a reload)",
            serde_json::to_value(other)
                .ok()
                .and_then(|v| v["command"].as_str().map(str::to_owned))
                .unwrap_or_default()
        )),
        None => Ok(commands),
    }
}

/// The largest admin request body read (commands, plans with a whole config).
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// How long a client may take to send a request head (and to idle between requests) or a body.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections each of the admin and metrics servers holds at once; more are closed.
pub const MAX_CONNECTIONS: usize = 64;

/// A request's body, bounded in size and time; the answer to give instead when it is not.
async fn read_body(request: Request<Incoming>) -> Result<Bytes, Box<Response<Full<Bytes>>>> {
    let limited = Limited::new(request.into_body(), MAX_BODY_BYTES);
    match tokio::time::timeout(READ_TIMEOUT, limited.collect()).await {
        Ok(Ok(body)) => Ok(body.to_bytes()),
        Ok(Err(err)) if err.is::<LengthLimitError>() => Err(Box::new(reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({ "error": format!("request body over {MAX_BODY_BYTES} bytes") }),
        ))),
        Ok(Err(err)) => Err(Box::new(reply(StatusCode::BAD_REQUEST, json!({ "error": err.to_string() })))),
        Err(_) => {
            Err(Box::new(reply(StatusCode::REQUEST_TIMEOUT, json!({ "error": "request body timed out" }))))
        }
    }
}

/// `POST /flow {"protocol": "tcp", "source": "ADDR:PORT", "vip": "ADDR:PORT"}`.
fn flow(core: &Shared, body: &[u8]) -> Result<Value, QueryError> {
    let q: views::FlowQuery = serde_json::from_slice(body)
        .map_err(|error| QueryError::Body { expected: "{protocol, source, vip}", error })?;
    let mut core = lock(core);
    let core = &mut *core;
    let ebpf = core.ebpf.as_mut().ok_or(QueryError::NoDataplane)?;
    Ok(serde_json::to_value(inspect::flow(ebpf, &core.state, q.protocol, q.source, q.vip)?)?)
}

/// `POST /plan {"commands": [...]}` or `{"config_text": "...", "config_name": "NAME"}`: the
/// client sends a new config's text (lbd opens no path a client names; the name is for
/// messages only).
fn plan(core: &Shared, body: &[u8]) -> Result<Value, QueryError> {
    let q: views::PlanQuery = serde_json::from_slice(body)
        .map_err(|error| QueryError::Body { expected: "{commands} or {config_text, config_name}", error })?;
    let commands = operator_only(q.commands).map_err(QueryError::NotOperator)?;
    let config = match &q.config_text {
        Some(text) => {
            let name = std::path::PathBuf::from(q.config_name.as_deref().unwrap_or("sent config"));
            Some(crate::config::Config::parse_sent(&name, text).map_err(QueryError::Config)?)
        }
        None => None,
    };
    let core = lock(core);
    Ok(serde_json::to_value(inspect::plan(&core.state, &commands, config.as_ref())?)?)
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
