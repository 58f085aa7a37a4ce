//! `lbd run`, the composition root: checks and locks the pin directory, loads and attaches
//! the balancer, starts the core, the admin API, metrics, health checks, the dataplane watch
//! and the proxy's workers, says READY, then serves reloads (SIGHUP, `lbctl reload`) until
//! SIGTERM or SIGINT, and drains.
use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use log::{error, info, warn};
use sd_notify::NotifyState;

use crate::{
    admin,
    config::{Config, ConfigErrors},
    daemon::{Core, ExecError, Shared, lock},
    dataplane::{self, DataplaneError, Role},
    health,
    instance::{InstanceError, InstanceLock},
    proxy::{self, ProxyError},
    upgrade::{self, Handover, Inherited, UpgradeError},
};

/// Why lbd could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid config:\n{0}")]
    Config(ConfigErrors),
    #[error(transparent)]
    Instance(#[from] InstanceError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Core(#[from] ExecError),
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error(transparent)]
    Upgrade(#[from] UpgradeError),
    #[error("{doing}: {error}")]
    Io { doing: String, error: std::io::Error },
}

fn io(doing: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunError {
    let doing = doing.into();
    move |error| RunError::Io { doing, error }
}

/// Raises the soft descriptor limit to the hard one (every client connection and upstream
/// connection is a descriptor; the usual soft default of 1024 is far below `max_connections`).
fn raise_descriptor_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the rlimit we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    let soft = limit.rlim_cur;
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit reads the rlimit we own.
    let raised = soft == limit.rlim_max || unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } == 0;
    let now = if raised { limit.rlim_max } else { soft };
    info!("descriptor limit: soft {now} (was {soft}), hard {}", limit.rlim_max);
}

/// Runs lbd on the config at `path` until SIGTERM or SIGINT, or until a new lbd took over
/// (`upgrade.rs`).
pub fn run(path: &Path) -> Result<(), RunError> {
    // Started by an upgrade: the old lbd's sockets and lock, taken before anything else.
    let mut inherited = Inherited::receive()?;
    let exec = upgrade::Exec::current().map_err(io("finding lbd's own binary"))?;
    let config = Config::load(path).map_err(RunError::Config)?;
    raise_descriptor_limit();
    let mut handover = Handover::default();
    let (interface, pin_dir) = (config.interface.clone(), config.pin_dir.clone());
    let admin_socket = config.admin_socket.clone();
    let (_instance, core) = start_core(config, path, &mut inherited, &mut handover)?;
    let dataplane_on = _instance.is_some();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
        .enable_all()
        .build()
        .map_err(io("starting the runtime"))?;
    let handed_over = runtime.block_on(async {
        let mut signals = Signals::install()?;
        let (retiring, admin_slots) = open_api(&core, &mut inherited, &mut handover).await?;
        let withdraw_tx = start_followers(&core, dataplane_on.then_some((&pin_dir, &interface)));
        let mut checked = HashSet::new();
        health::spawn_missing(&core, &mut checked);
        let mut dns_followed = HashSet::new();
        crate::dns_pools::spawn_missing(&core, &mut dns_followed);
        let (serving, listeners) = start_proxy(&core, &mut inherited, &mut handover)?;
        // SIGHUP and `lbctl reload` share one reload path (crate::reload).
        let (reload_tx, reload_asks) = tokio::sync::mpsc::channel(4);
        lock(&core).reloads = Some(reload_tx);
        let reloader = crate::reload::Reloader {
            core: core.clone(),
            path: path.to_owned(),
            listeners,
            checked,
            dns_followed,
        };
        let (upgrade_tx, upgrade_asks) = tokio::sync::mpsc::channel(1);
        lock(&core).upgrades = Some(upgrade_tx);
        let handover = Arc::new(handover);
        match inherited.take() {
            // The old lbd stops accepting once told: this one is systemd's main process now.
            Some(inherited) => take_over(&core, inherited)?,
            None => notify(&[NotifyState::Ready]),
        }
        let asks = Asks { reloads: reload_asks, upgrades: upgrade_asks };
        let successor = serve_until_stopped(&mut signals, asks, reloader, &exec, &handover).await;
        if let Some(successor) = successor {
            // The new lbd owns the maps, the admin socket, the announcements and the config
            // file from now on: this one changes nothing more and only drains.
            lock(&core).retired = true;
            for task in retiring {
                task.abort();
            }
            serving.drain().await;
            hand_over_counters(&core, successor, &admin_slots).await;
            return Ok::<_, RunError>(true);
        }
        // Graceful stop: listeners stop accepting and drain in-flight requests.
        notify(&[NotifyState::Stopping]);
        withdraw(&core, withdraw_tx).await;
        serving.drain().await;
        Ok::<_, RunError>(false)
    })?;
    if handed_over {
        info!("handed over to the new lbd, drained: exiting");
        return Ok(());
    }
    let _ = std::fs::remove_file(&admin_socket);
    if dataplane_on {
        info!("stopping; the XDP program stays attached (lbd stop --detach removes it)");
    } else {
        info!("stopping");
    }
    Ok(())
}

/// The tasks that follow the world outside: the XDP attachment (`watch_dataplane`), etcd's
/// pools (`follow`, applied like lbctl's changes) and BGP (`announce`, while the program is
/// attached). `dataplane`: the pin directory and interface, if lbd has a data plane. Returns
/// what withdraws the announcements on SIGTERM.
fn start_followers(
    core: &Shared,
    dataplane: Option<(&PathBuf, &String)>,
) -> tokio::sync::oneshot::Sender<tokio::sync::oneshot::Sender<()>> {
    if let Some((pin_dir, interface)) = dataplane {
        tokio::spawn(watch_dataplane(core.clone(), pin_dir.join("link"), interface.clone()));
    }
    let cluster = lock(core).state.config.cluster.clone();
    if let Some(cluster) = cluster {
        let etcd = Arc::new(crate::cluster::Etcd::new(&cluster));
        lock(core).etcd = Some(etcd.clone());
        tokio::spawn(follow(core.clone(), etcd));
        info!("pools follow etcd at {:?} under {}", cluster.endpoints, cluster.prefix);
    }
    let (withdraw_tx, withdraw_rx) = tokio::sync::oneshot::channel();
    if let Some((pin_dir, _)) = dataplane {
        tokio::spawn(announce(core.clone(), pin_dir.join("link"), withdraw_rx));
    }
    withdraw_tx
}

/// The core (State, maps, proxy snapshot) from `config`. With a data plane: the pin directory
/// checked and locked first (one lbd per pin directory, which only root may change: before
/// anything, maps or admin socket, is touched), the balancer loaded, the maps programmed, then
/// the program attached, so the first packet already sees the pools. An L7-only host (no
/// `[dataplane]`) has no lock and no program.
fn start_core(
    config: Config,
    path: &Path,
    inherited: &mut Option<Inherited>,
    handover: &mut Handover,
) -> Result<(Option<InstanceLock>, Shared), RunError> {
    if !config.dataplane {
        info!("no [dataplane]: L7 only, no XDP program");
        return Ok((None, Arc::new(Mutex::new(Core::start(config, path.to_owned(), None)?))));
    }
    let (interface, mode, pin_dir) = (config.interface.clone(), config.xdp_mode, config.pin_dir.clone());
    crate::instance::prepare_pin_dir(&pin_dir)?;
    let instance = match inherited.as_mut().and_then(|i| i.lock.take()) {
        Some(held) => crate::instance::adopt(&pin_dir, held)?,
        None => crate::instance::lock(&pin_dir)?,
    };
    handover.lock = Some(instance.keep().map_err(io("keeping the pin directory's lock"))?);
    // Keeps the program loaded while lbd runs; the pinned link keeps it attached after.
    let ebpf = dataplane::load(&pin_dir, Role::Balancer { max_vips: config.max_vips })?;
    let core: Shared = Arc::new(Mutex::new(Core::start(config, path.to_owned(), Some(ebpf))?));
    let attached = {
        let mut core = lock(&core);
        let ebpf = core.ebpf.as_mut().ok_or(DataplaneError::Unexpected("no loaded program".into()))?;
        dataplane::attach(ebpf, dataplane::BALANCER_PROGRAM, &interface, mode, &pin_dir)?
    };
    info!("balancer on {interface} ({attached:?}); maps pinned under {}", pin_dir.display());
    Ok((Some(instance), core))
}

/// The signals lbd serves: SIGTERM and SIGINT stop it, SIGHUP reloads, SIGUSR2 upgrades.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, RunError> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).map_err(io("installing a SIGTERM handler"))?,
            int: signal(SignalKind::interrupt()).map_err(io("installing a SIGINT handler"))?,
            hup: signal(SignalKind::hangup()).map_err(io("installing a SIGHUP handler"))?,
            usr2: signal(SignalKind::user_defined2()).map_err(io("installing a SIGUSR2 handler"))?,
        })
    }
}

/// The admin API and the metrics server, on the sockets an upgrade handed over or on new ones
/// (kept for the next upgrade). Their tasks, which a retiring lbd stops, and the admin API's
/// connection slots.
async fn open_api(
    core: &Shared,
    inherited: &mut Option<Inherited>,
    handover: &mut Handover,
) -> Result<(Vec<tokio::task::JoinHandle<()>>, Arc<tokio::sync::Semaphore>), RunError> {
    use std::os::fd::AsFd as _;
    let (admin_socket, metrics) = {
        let core = lock(core);
        (core.state.config.admin_socket.clone(), core.state.config.metrics)
    };
    let admin = match inherited.as_mut().and_then(|i| i.admin.take()) {
        Some(fd) => tokio::net::UnixListener::from_std(std::os::unix::net::UnixListener::from(fd)),
        None => admin::bind(&admin_socket),
    }
    .map_err(io(format!("binding the admin socket {}", admin_socket.display())))?;
    handover.admin = Some(upgrade::keep(admin.as_fd()).map_err(io("keeping the admin socket"))?);
    let admin_slots = Arc::new(tokio::sync::Semaphore::new(admin::MAX_CONNECTIONS));
    let mut tasks = vec![tokio::spawn(admin::serve(admin, core.clone(), admin_slots.clone()))];
    info!("admin API on {}", admin_socket.display());
    if let Some(address) = metrics {
        let handed = inherited.as_mut().and_then(|i| i.metrics.take()).map(std::net::TcpListener::from);
        let listener = match handed.filter(|l| l.local_addr().is_ok_and(|a| a == address)) {
            Some(listener) => tokio::net::TcpListener::from_std(listener),
            None => crate::metrics::bind(address).await,
        }
        .map_err(io(format!("binding metrics on {address}")))?;
        handover.metrics = Some(upgrade::keep(listener.as_fd()).map_err(io("keeping the metrics socket"))?);
        tasks.push(tokio::spawn(crate::metrics::serve(listener, core.clone())));
        info!("metrics on http://{address}/metrics");
    }
    Ok((tasks, admin_slots))
}

/// The L7 proxy: its listeners bound (before READY, so a busy port fails the start), its
/// workers started, the outlier ejections it reports applied to the State like health results.
fn start_proxy(
    core: &Shared,
    inherited: &mut Option<Inherited>,
    handover: &mut Handover,
) -> Result<(Workers, crate::reload::ServedListeners), RunError> {
    let (ejections, mut ejected) = tokio::sync::mpsc::unbounded_channel();
    let ejecting = core.clone();
    tokio::spawn(async move {
        while let Some(command) = ejected.recv().await {
            if let Err(err) = lock(&ejecting).execute(&[command]) {
                error!("outlier ejection: {err}");
            }
        }
    });
    // The snapshot built again as time changes it: slow starts' steps, pools' TLS files.
    let ramping = core.clone();
    tokio::spawn(async move {
        let mut step = tokio::time::interval(proxy::snapshot::REFRESH_EVERY);
        loop {
            step.tick().await;
            let core = lock(&ramping);
            if core.retired {
                return;
            }
            core.refresh();
        }
    });
    let (snapshot, forwarder, busy_poll) = {
        let core = lock(core);
        let forwarder = proxy::pipeline::Forwarder::new(
            core.proxy_metrics.clone(),
            ejections,
            core.cache.clone(),
            core.acme_challenges.clone(),
        );
        (core.l7.clone(), Arc::new(forwarder), core.state.config.busy_poll)
    };
    let (handed, handed_datagrams) = inherited
        .as_mut()
        .map(|i| (std::mem::take(&mut i.listeners), std::mem::take(&mut i.datagrams)))
        .unwrap_or_default();
    let (bound, listeners) = bind_listeners(core, handed, handed_datagrams, handover)?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // Access-log lines go through a writer thread of their own (`proxy::log_sink`).
    if let Err(err) = proxy::log_sink::start() {
        warn!("access log: no writer thread ({err}); workers write their lines themselves");
    }
    let threads = proxy::workers::start(bound, snapshot, forwarder, stopped, busy_poll)?;
    Ok((Workers { stop, threads }, listeners))
}

/// Started by an upgrade: READY as systemd's main process, the old lbd told to stop accepting;
/// its proxy counters, once it has drained, continue here.
fn take_over(core: &Shared, inherited: Inherited) -> Result<(), RunError> {
    notify(&[NotifyState::MainPid(std::process::id()), NotifyState::Ready]);
    let predecessor = inherited.ready()?;
    info!("took over from the old lbd: serving");
    let metrics = lock(core).proxy_metrics.clone();
    let core = core.clone();
    tokio::task::spawn_blocking(move || match predecessor.counters() {
        Ok(Some(text)) => {
            metrics.absorb(&text);
            let core = lock(&core);
            core.runtime.absorb_counters(&text, &core.state.config);
        }
        Ok(None) => warn!("upgrade: the old lbd ended without its counters"),
        Err(err) => warn!("upgrade: the old lbd's counters: {err}"),
    });
    Ok(())
}

/// What the admin API asks of the signal loop: reloads and upgrades.
struct Asks {
    reloads: tokio::sync::mpsc::Receiver<crate::daemon::ReloadAsked>,
    upgrades: tokio::sync::mpsc::Receiver<crate::upgrade::Asked>,
}

/// Serves reloads and upgrades until SIGTERM or SIGINT (None), or until an upgrade's new lbd
/// serves (its handle).
async fn serve_until_stopped(
    signals: &mut Signals,
    mut asks: Asks,
    mut reloader: crate::reload::Reloader,
    exec: &upgrade::Exec,
    handover: &Arc<Handover>,
) -> Option<upgrade::Successor> {
    loop {
        let asked: Option<crate::upgrade::Asked> = tokio::select! {
            _ = signals.term.recv() => return None,
            _ = signals.int.recv() => return None,
            _ = signals.usr2.recv() => None,
            Some(asked) = asks.upgrades.recv() => Some(asked),
            _ = signals.hup.recv() => {
                let _ = reload(&mut reloader).await;
                continue;
            }
            Some(asked) = asks.reloads.recv() => {
                let _ = asked.send(reload(&mut reloader).await);
                continue;
            }
        };
        // SIGUSR2 or `lbctl upgrade`: start the binary at lbd's path on the same sockets.
        if let Some(successor) = start_successor(exec, handover, asked).await {
            return Some(successor);
        }
    }
}

/// A reload (SIGHUP or `lbctl reload`), told to systemd as it starts and ends.
async fn reload(reloader: &mut crate::reload::Reloader) -> Result<Vec<String>, crate::reload::ReloadError> {
    notify(&[NotifyState::Reloading, NotifyState::monotonic_usec_now().unwrap_or(NotifyState::Ready)]);
    let result = reloader.reload().await;
    notify(&[NotifyState::Ready]);
    result
}

/// An upgrade (SIGUSR2, or `lbctl upgrade`, which hears the outcome): starts the binary at
/// lbd's path and hands it the sockets. None: it failed, and this lbd keeps serving.
async fn start_successor(
    exec: &upgrade::Exec,
    handover: &Arc<Handover>,
    asked: Option<upgrade::Asked>,
) -> Option<upgrade::Successor> {
    info!("upgrade: starting {} and handing it the sockets", exec.program.display());
    let (exec, handing) = (exec.clone(), handover.clone());
    let started = tokio::task::spawn_blocking(move || upgrade::start(&exec, &handing))
        .await
        .unwrap_or_else(|err| Err(UpgradeError::Failed { pid: 0, why: err.to_string() }));
    let (successor, answer) = match started {
        Ok(s) => {
            info!("upgrade: lbd {} serves; this one stops accepting and drains", s.pid);
            let pid = s.pid;
            (Some(s), Ok(pid))
        }
        Err(err) => {
            error!("upgrade refused, this lbd keeps serving: {err}");
            (None, Err(err))
        }
    };
    if let Some(asked) = asked {
        let _ = asked.send(answer);
    }
    successor
}

/// Binds every configured L7 listener, or takes the sockets an old lbd `handed` over (and
/// `handed_datagrams`, HTTP/3's UDP ones), keeping duplicates in `handover` for the next
/// upgrade; each listener's certificates are loaded and watched. After an upgrade there are as many workers as the old lbd had (one socket each).
fn bind_listeners(
    core: &Shared,
    mut handed: Handed,
    mut handed_datagrams: Handed,
    handover: &mut Handover,
) -> Result<(Vec<proxy::workers::Bound>, crate::reload::ServedListeners), RunError> {
    let workers = handed.values().map(Vec::len).find(|n| *n > 0).unwrap_or_else(proxy::workers::count);
    let configured = lock(core).state.config.listeners.clone();
    let (mut bound, mut listeners) = (Vec::new(), Vec::new());
    let challenges = lock(core).acme_challenges.clone();
    // One ACME order per certificate: listeners that share one (a site's IPv4 and IPv6
    // listeners) share its folder, and each serves it once written.
    let mut ordering = std::collections::HashSet::new();
    for listener in configured {
        let certs = proxy::load_certs(&listener, &challenges)?;
        if let Some(resolver) = &certs {
            tokio::spawn(proxy::watch_certs(listener.clone(), resolver.clone()));
            lock(core).certificates.push((listener.name.clone(), resolver.clone()));
        }
        if let Some(acme) = listener.tls.as_ref().and_then(|tls| tls.acme.clone())
            && ordering.insert(acme.folder.clone())
        {
            tokio::spawn(proxy::acme::keep(listener.name.clone(), acme, challenges.clone()));
        }
        let sockets = handed.remove(&listener.address).filter(|s| s.len() == workers);
        let datagrams = handed_datagrams.remove(&listener.address).filter(|s| s.len() == workers);
        let one = proxy::workers::bind(listener.clone(), certs.clone(), workers, sockets, datagrams)?;
        let (tcp, udp) = one.keep().map_err(io("keeping the listening sockets"))?;
        handover.listeners.push((listener.address, tcp));
        if !udp.is_empty() {
            handover.datagrams.push((listener.address, udp));
        }
        bound.push(one);
        listeners.push((listener, certs));
    }
    Ok((bound, listeners))
}

/// An old lbd's sockets by address, as an upgrade hands them over.
type Handed = std::collections::HashMap<std::net::SocketAddr, Vec<std::os::fd::OwnedFd>>;

/// The proxy's worker threads and the flag that stops their listeners.
struct Workers {
    stop: tokio::sync::watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// Stops accepting and waits until every worker has drained its connections (each within
    /// its listeners' drain timeout).
    async fn drain(self) {
        let _ = self.stop.send(true);
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for worker in threads {
                let _ = worker.join();
            }
            proxy::log_sink::finish();
        })
        .await;
    }
}

/// After an upgrade, once drained: sends the new lbd this one's proxy counters, so they
/// continue there, the drained requests included. The admin connection that asked for the
/// upgrade gets up to 2 s to send its answer first.
async fn hand_over_counters(
    core: &Shared,
    successor: upgrade::Successor,
    admin_slots: &tokio::sync::Semaphore,
) {
    let open = admin::MAX_CONNECTIONS as u32;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), admin_slots.acquire_many(open)).await;
    let counters = {
        let core = lock(core);
        core.proxy_metrics.text() + &core.runtime.counters_text()
    };
    if let Err(err) = tokio::task::spawn_blocking(move || successor.send_counters(&counters))
        .await
        .unwrap_or_else(|err| Err(UpgradeError::Failed { pid: 0, why: err.to_string() }))
    {
        warn!("upgrade: the proxy counters were not handed over: {err}");
    }
}

/// Keeps BIRD announcing what the State wants (checked every second, so health flips, drains
/// and reloads are followed within a second); on `withdraw`, withdraws everything, answers and
/// ends.
async fn announce(
    core: Shared,
    link: PathBuf,
    mut withdraw: tokio::sync::oneshot::Receiver<tokio::sync::oneshot::Sender<()>>,
) {
    let mut announcer: Option<crate::announce::Announcer> = None;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        let done = tokio::select! {
            _ = tick.tick() => None,
            asked = &mut withdraw => Some(asked.ok()),
        };
        let (bgp, mut wanted) = {
            let core = lock(&core);
            if core.retired {
                return; // a new lbd announces now
            }
            let attached = link.exists();
            (core.state.config.bgp.clone(), crate::announce::wanted(&core.state, attached))
        };
        if done.is_some() {
            wanted.clear();
        }
        let result = match (&mut announcer, bgp) {
            (None, None) => Ok(false),
            (Some(announcer), None) => announcer.sync(&wanted).await, // [bgp] removed: withdraw
            (Some(announcer), Some(bgp)) => {
                announcer.configure(&bgp);
                announcer.sync(&wanted).await
            }
            (slot @ None, Some(bgp)) => slot.insert(crate::announce::Announcer::new(bgp)).sync(&wanted).await,
        };
        {
            let mut core = lock(&core);
            let state = &mut core.announcing;
            match result {
                Ok(changed) => {
                    if changed {
                        let announced = announcer.as_ref().map(|a| a.announced()).unwrap_or_default();
                        info!("BGP: announcing {announced:?}");
                        state.announced = announced;
                    }
                    state.error = None;
                }
                Err(err) => {
                    // Kept as its text: status shows it, and the log says it once until it changes.
                    let err = err.to_string();
                    if state.error.as_ref() != Some(&err) {
                        error!("BGP: {err}");
                    }
                    state.failures += 1;
                    state.error = Some(err);
                }
            }
        }
        if let Some(reply) = done {
            if let Some(reply) = reply {
                let _ = reply.send(());
            }
            return;
        }
    }
}

/// Keeps the pools what etcd holds: reads them, applies the difference (pool by pool), then
/// waits for the next change (or 30 s, then reads again anyway). etcd away: the last known
/// pools keep serving, and status, metrics and the log say so; a view older than the one
/// applied is never applied.
async fn follow(core: Shared, etcd: Arc<crate::cluster::Etcd>) {
    let mut applied = 0;
    let follows_vips = lock(&core).state.config.cluster.as_ref().is_some_and(|c| c.vips);
    loop {
        let wait = match etcd.view().await {
            Ok(view) if view.revision < applied => {
                warn!("etcd: revision {} is older than the applied {applied}: ignored", view.revision);
                Err(())
            }
            Ok(crate::cluster::View { revision, pools, vips }) => {
                // Applying writes the maps and the config file: off the async workers.
                let applying = core.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    let (lists, unknown, seen) = {
                        let mut core = lock(&applying);
                        if core.following.error.take().is_some() {
                            info!("etcd: reachable again at revision {revision}");
                        }
                        let (lists, unknown) = crate::cluster::commands(&core.state, &pools);
                        (lists, unknown, core.following.revision)
                    };
                    for list in lists {
                        match crate::daemon::execute_persisting(&applying, &list) {
                            Ok(lines) => lines.iter().for_each(|l| info!("etcd revision {revision}: {l}")),
                            Err(err) => error!("etcd revision {revision}: not applied: {err}"),
                        }
                    }
                    if !unknown.is_empty() && revision != seen {
                        warn!("etcd names pools this config does not define: {unknown:?}");
                    }
                })
                .await;
                if follows_vips {
                    follow_vips(&core, revision, &vips).await;
                }
                lock(&core).following.revision = revision;
                applied = revision;
                etcd.changed_after(revision, std::time::Duration::from_secs(30)).await.map_err(|err| {
                    warn!("etcd watch: {err}");
                })
            }
            Err(err) => {
                // Kept as its text: status shows it, and the log says it once until it changes.
                let err = err.to_string();
                let mut core = lock(&core);
                if core.following.error.as_ref() != Some(&err) {
                    error!("etcd unreachable ({err}): the last known pools keep serving");
                }
                core.following.error = Some(err);
                Err(())
            }
        };
        if wait.is_err() {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }
}

/// Makes the config file's VIPs etcd's (`[cluster] vips = true`) and reloads it, so a VIP from
/// etcd is checked and applied exactly like one an operator writes into the file. A set that
/// would make the config invalid is refused with the reason, and the running VIPs stay.
async fn follow_vips(core: &Shared, revision: i64, vips: &crate::cluster::Vips) {
    // No VIP in etcd: not managed there yet; the file's VIPs stay.
    if vips.is_empty() {
        return;
    }
    // The reload path exists once lbd has started its listeners.
    let mut reloads = None;
    for _ in 0..100 {
        reloads = lock(core).reloads.clone();
        if reloads.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let Some(reloads) = reloads else {
        error!("etcd revision {revision}: VIPs not applied: lbd has not started");
        return;
    };
    let path = lock(core).config_path.clone();
    let written = {
        let _file = crate::daemon::FILE_WRITER.lock().await;
        let vips = vips.clone();
        tokio::task::spawn_blocking(move || {
            crate::persist::rewrite(&path, |text| crate::persist::with_vips(text, &vips))
                .map_err(|err| err.to_string())
        })
        .await
        .unwrap_or_else(|err| Err(err.to_string()))
    };
    match written {
        Ok(crate::persist::Persisted::Unchanged) => {}
        Ok(crate::persist::Persisted::ReadOnly(why)) => {
            error!("etcd revision {revision}: VIPs not applied: the config file cannot be written ({why})")
        }
        Ok(crate::persist::Persisted::Written(_)) => {
            let (asked, answer) = tokio::sync::oneshot::channel();
            if reloads.send(asked).await.is_err() {
                return;
            }
            match answer.await {
                Ok(Ok(lines)) => info!("etcd revision {revision}: VIPs applied ({} changes)", lines.len()),
                Ok(Err(err)) => error!("etcd revision {revision}: VIPs not applied: {err}"),
                Err(_) => {}
            }
        }
        Err(err) => error!("etcd revision {revision}: VIPs not applied: {err}"),
    }
}

/// On SIGTERM with `[bgp]`: withdraws every VIP, then keeps serving for `withdraw_wait` so the
/// router moves traffic to the other hosts before the listeners stop.
async fn withdraw(core: &Shared, announcer: tokio::sync::oneshot::Sender<tokio::sync::oneshot::Sender<()>>) {
    let Some(wait) = lock(core).state.config.bgp.as_ref().map(|b| b.withdraw_wait) else { return };
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    if announcer.send(done_tx).is_err() {
        return;
    }
    if tokio::time::timeout(std::time::Duration::from_secs(10), done_rx).await.is_err() {
        warn!("BGP: the withdrawal did not finish within 10 s");
        return;
    }
    info!("BGP: every VIP withdrawn; serving {wait:?} more while the router moves traffic");
    tokio::time::sleep(wait).await;
}

/// Watches what can silently stop the fast path, every 5 s: the pinned XDP link disappearing
/// (someone ran `bpftool` or removed the pins), and the NIC's own XDP transmit error counters
/// growing (native XDP_TX frames the driver drops; on veth, a peer without an XDP program).
async fn watch_dataplane(core: Shared, link: PathBuf, interface: String) {
    let mut present = true;
    let mut errors = crate::dataplane::nic::xdp_tx_errors(&interface).map(|(n, _)| n);
    lock(&core).nic_xdp_tx_errors = errors;
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        let now = link.exists();
        if present && !now {
            error!(
                "the XDP link pin {} is gone: the fast path is detached; restart lbd to attach it",
                link.display()
            );
        } else if !present && now {
            info!("the XDP link pin {} is back", link.display());
        }
        present = now;
        let iface = interface.clone();
        let read = tokio::task::spawn_blocking(move || crate::dataplane::nic::xdp_tx_errors(&iface))
            .await
            .ok()
            .flatten();
        if let (Some((total, names)), Some(before)) = (&read, errors)
            && *total > before
        {
            warn!(
                "{interface}: {} XDP transmit errors in the last 5 s ({}): the driver drops frames the \
                 balancer sends back out; on veth, the peer needs an XDP program (`lbd pass --iface PEER`)",
                total - before,
                names.join(", ")
            );
        }
        errors = read.map(|(n, _)| n);
        lock(&core).nic_xdp_tx_errors = errors;
    }
}

/// Tells systemd (when lbd runs under it) where the daemon is.
fn notify(states: &[NotifyState]) {
    let _ = sd_notify::notify(states);
}
