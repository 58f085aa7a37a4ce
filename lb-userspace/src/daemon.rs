//! lbd's running core: the State, the maps it is written to, and the one method every change
//! (CLI, admin API, health checks, reload) goes through.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::Instant,
};

use arc_swap::ArcSwap;
use log::{error, info, warn};

use crate::{
    config::{Config, Listener},
    dataplane::{
        DataplaneError,
        counters::Counters,
        synproxy::{self, Rules},
        tables::{Desired, Tables},
    },
    host::{self, HostError, HostFacts},
    persist::{self, PersistError},
    proxy::{cache::CacheStore, metrics::ProxyMetrics, runtime::Runtime, snapshot::Snapshot, tls::Resolver},
    state::{Command, CommandError, State},
};

/// Why a change was not made. Nothing changed in either case.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The command does not fit the State (unknown pool, duplicate backend, ...).
    #[error(transparent)]
    Refused(#[from] CommandError),
    #[error("writing the change to the config file: {0}")]
    File(#[from] PersistError),
    #[error("writing the maps: {0}")]
    Maps(#[from] DataplaneError),
    #[error(transparent)]
    Host(#[from] HostError),
    /// A new lbd has taken over; this one drains and changes nothing.
    #[error("this lbd has handed over to a new one and only drains")]
    Retired,
    /// A reload changes what only a restart changes.
    #[error("{0}: a restart is needed")]
    NeedsRestart(String),
}

/// What a reload refused for a restart says when an upgrade to the same binary applies it: the
/// new lbd reads the config and takes the listening sockets over by address.
const BY_UPGRADE: &str = "; `lbctl upgrade` (SIGUSR2) restarts with no failed request";

pub struct Core {
    pub state: State,
    /// The maps (None on an L7-only host).
    tables: Option<Tables>,
    /// The netfilter SYNPROXY rules of VIPs with SYN cookies.
    synproxy: Rules,
    /// The balancer's counters, read by the admin API and the metrics without the core lock
    /// (None on an L7-only host).
    pub counters: Option<Arc<Mutex<Counters>>>,
    host: HostFacts,
    /// The config file operator commands are written back to.
    pub config_path: PathBuf,
    pub started: Instant,
    /// The loaded object: keeps the program loaded, and runs it for `lbctl flow`.
    /// None on an L7-only host.
    pub ebpf: Option<aya::Ebpf>,
    /// Routes and pools as the L7 proxy reads them, republished on every change.
    pub l7: Arc<ArcSwap<Snapshot>>,
    /// The proxy's request metrics.
    pub proxy_metrics: ProxyMetrics,
    /// The proxy's response caches (purged through the admin API).
    pub cache: Arc<CacheStore>,
    /// The answers to ACME CAs' validations while orders wait for them (the TLS listeners'
    /// resolvers and the proxy's plain listeners answer from it).
    pub acme_challenges: Arc<crate::proxy::acme::Challenges>,
    /// What the proxy keeps across snapshots (in-flight counts, streaks, buckets, budgets).
    pub runtime: Arc<Runtime>,
    /// Where `lbctl reload` asks the signal loop for a reload (set once lbd runs it).
    pub reloads: Option<tokio::sync::mpsc::Sender<ReloadAsked>>,
    /// How the last reload went (none yet: None).
    pub last_reload: Option<LastReload>,
    /// The edge NIC's XDP transmit error counters, summed (None: the driver has none).
    pub nic_xdp_tx_errors: Option<u64>,
    /// What BIRD announces for this host, as the announcer last saw it.
    pub announcing: Announcing,
    /// etcd, where the pools' backends come from with `[cluster]`.
    pub etcd: Option<Arc<crate::cluster::Etcd>>,
    /// How following etcd goes.
    pub following: Following,
    /// Each DNS pool's last answer (`dns_pools`), by pool.
    pub dns_answers: BTreeMap<String, crate::dns_pools::LastAnswer>,
    /// Where `lbctl upgrade` asks the signal loop for an upgrade (set once lbd runs it).
    pub upgrades: Option<tokio::sync::mpsc::Sender<crate::upgrade::Asked>>,
    /// A new lbd took over (`upgrade.rs`): this one only drains and changes nothing.
    pub retired: bool,
    /// The TLS listeners' certificates by listener name, for their expiry in the metrics.
    pub certificates: Vec<(String, Arc<Resolver>)>,
}

/// What asks the signal loop for a reload (`reload.rs`), and hears its result.
pub type ReloadAsked = tokio::sync::oneshot::Sender<Result<Vec<String>, crate::reload::ReloadError>>;

/// How the last reload went.
#[derive(Debug, Clone, Copy)]
pub struct LastReload {
    pub at: std::time::SystemTime,
    pub applied: bool,
}

/// The etcd follower's last word (`[cluster]`).
#[derive(Debug, Clone, Default)]
pub struct Following {
    /// The etcd revision whose pools are applied (0: none yet).
    pub revision: i64,
    /// Why etcd could not be read (None: it was, at the last attempt).
    pub error: Option<String>,
}

/// The announcer's last word (`[bgp]`).
#[derive(Debug, Clone, Default)]
pub struct Announcing {
    pub announced: Vec<std::net::IpAddr>,
    /// Why BIRD could not be told (None: it was).
    pub error: Option<String>,
    /// Failed attempts to tell BIRD since lbd started.
    pub failures: u64,
}

/// The core, shared by the admin API, health checks and the signal loop.
pub type Shared = Arc<Mutex<Core>>;

/// One change to the config file at a time (operator commands, etcd changes, reloads): the file
/// is written while the core is free, and nothing else changes what the file says meanwhile.
pub static FILE_WRITER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Operator commands (admin API, etcd): checked against the State, written to the config file
/// in one edit with the core lock free (fsync can be slow), then applied to the maps and the
/// State under the lock; if that fails, the file is put back. Nothing is half applied. Blocks:
/// call from a blocking thread.
pub fn execute_persisting(core: &Shared, commands: &[Command]) -> Result<Vec<String>, ExecError> {
    let _file = FILE_WRITER.blocking_lock();
    let path = {
        let core = lock(core);
        if core.retired {
            return Err(ExecError::Retired);
        }
        let mut next = core.state.clone();
        for command in commands {
            next.apply(command)?;
        }
        // Only health and ejection results change the State until this returns, and they do
        // not change what these commands may do: they apply the same way below.
        (next != core.state).then(|| core.config_path.clone())
    };
    let persisting: Vec<Command> = commands.iter().filter(|c| c.persists()).cloned().collect();
    let mut notes = Vec::new();
    let mut replaced = None;
    if let Some(path) = path.filter(|_| !persisting.is_empty()) {
        match persist::persist(&path, &persisting) {
            Ok(persist::Persisted::Written(was)) => replaced = Some(was),
            Ok(persist::Persisted::Unchanged) => {}
            // A read-only config must not block a drain: applied, and said to be temporary.
            Ok(persist::Persisted::ReadOnly(why)) => {
                warn!("config not written ({why}): this change lasts until lbd restarts");
                notes.push(format!("config file is read-only: this change lasts until lbd restarts ({why})"));
            }
            Err(err) => return Err(err.into()),
        }
    }
    let applied = lock(core).execute(commands);
    match applied {
        Ok(mut lines) => {
            lines.extend(notes);
            Ok(lines)
        }
        Err(err) => {
            if let Some(was) = &replaced
                && let Err(back) = persist::restore(was)
            {
                error!("{back}: the config file holds a change that is not applied");
            }
            Err(err)
        }
    }
}

/// Locks the core; a panic elsewhere does not stop the daemon from serving.
pub fn lock(core: &Shared) -> MutexGuard<'_, Core> {
    core.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts `task` for each pool `wants` that has none running (`running`: the pools that have
/// one; pools gone, or no longer wanted, are forgotten there): the health checkers and the DNS
/// followers, each of which ends once its pool is gone.
pub fn spawn_per_pool<Task, Run>(
    core: &Shared,
    running: &mut std::collections::HashSet<String>,
    wants: impl Fn(&crate::config::Pool) -> bool,
    task: Task,
) where
    Task: Fn(Shared, String) -> Run,
    Run: std::future::Future<Output = ()> + Send + 'static,
{
    let pools: Vec<String> = {
        let core = lock(core);
        core.state.config.pools.values().filter(|p| wants(p)).map(|p| p.name.clone()).collect()
    };
    running.retain(|p| pools.contains(p));
    for pool in pools {
        if running.insert(pool.clone()) {
            tokio::spawn(task(core.clone(), pool));
        }
    }
}

/// Makes the maps (if this host has them) and the SYN cookie rules hold `desired`; one line
/// per change.
fn write_dataplane(
    tables: Option<&mut Tables>,
    synproxy: &mut Rules,
    desired: &Desired,
) -> Result<Vec<String>, DataplaneError> {
    let mut changes = match tables {
        Some(tables) => tables.apply(desired)?,
        None => Vec::new(),
    };
    let vips = synproxy::cookie_vips(desired.vips.iter().map(|v| (&v.key, v.flags)));
    changes.extend(synproxy.sync(&vips)?);
    Ok(changes)
}

impl Core {
    /// Makes the maps and the SYN cookie rules hold what `next` wants; when that fails, they
    /// go back to the running State's, so nothing is half-applied.
    fn write_next(&mut self, next: &State) -> Result<Vec<String>, DataplaneError> {
        let written = write_dataplane(self.tables.as_mut(), &mut self.synproxy, &next.desired(&self.host));
        if written.is_err() {
            let _ =
                write_dataplane(self.tables.as_mut(), &mut self.synproxy, &self.state.desired(&self.host));
        }
        written
    }

    /// Opens the pinned maps of `config` and writes the config into them.
    pub fn start(config: Config, config_path: PathBuf, ebpf: Option<aya::Ebpf>) -> Result<Core, ExecError> {
        let host = host::facts(&config)?;
        let mut tables = match ebpf {
            Some(_) => Some(Tables::open(&config.pin_dir)?),
            None => None,
        };
        let counters = match ebpf {
            Some(_) => Some(Arc::new(Mutex::new(Counters::open(&config.pin_dir)?))),
            None => None,
        };
        let state = State::new(config);
        let mut synproxy = Rules::default();
        let changes = write_dataplane(tables.as_mut(), &mut synproxy, &state.desired(&host))?;
        for change in changes {
            info!("{change}");
        }
        let runtime = Arc::new(Runtime::default());
        let l7 = Arc::new(ArcSwap::from_pointee(Snapshot::build(&state, &runtime)));
        let proxy_metrics = ProxyMetrics::default();
        let cache = Arc::new(CacheStore::default());
        let core = Core {
            state,
            tables,
            synproxy,
            counters,
            host,
            config_path,
            started: Instant::now(),
            ebpf,
            l7,
            proxy_metrics,
            cache,
            acme_challenges: Default::default(),
            runtime,
            reloads: None,
            last_reload: None,
            announcing: Announcing::default(),
            etcd: None,
            following: Following::default(),
            dns_answers: BTreeMap::new(),
            nic_xdp_tx_errors: None,
            upgrades: None,
            retired: false,
            certificates: Vec::new(),
        };
        core.warn_fail_open(&[]);
        Ok(core)
    }

    fn warn_fail_open(&self, before: &[String]) {
        for pool in self.state.failing_open() {
            if !before.contains(&pool) {
                warn!("pool {pool}: EVERY backend is down; failing open: traffic goes to all of them");
            }
        }
    }

    /// Applies `commands` to a copy of the State, writes the maps, and only then keeps the new
    /// State. Returns one line per change. The config file is not written here: operator
    /// commands go through [`execute_persisting`].
    pub fn execute(&mut self, commands: &[Command]) -> Result<Vec<String>, ExecError> {
        if self.retired {
            return Err(ExecError::Retired);
        }
        let mut next = self.state.clone();
        let mut lines = Vec::new();
        for command in commands {
            let line = next.apply(command)?;
            if !line.is_empty() {
                lines.push(line);
            }
        }
        if next == self.state {
            return Ok(lines);
        }
        self.write_next(&next)?;
        let before = self.state.failing_open();
        self.state = next;
        self.publish();
        for line in &lines {
            info!("{line}");
        }
        self.warn_fail_open(&before);
        Ok(lines)
    }

    /// Hands the proxy the State as it now is: a new snapshot, and no cache or request series
    /// of a route, pool or backend gone.
    fn publish(&self) {
        self.l7.store(Arc::new(Snapshot::build(&self.state, &self.runtime)));
        self.cache.retain(&self.state.config);
        self.proxy_metrics.retain(&self.state.config);
    }

    /// Builds the proxy's snapshot again when time has changed it: while a backend is in its
    /// slow start (its weight grows), and when a pool's TLS files changed (called every
    /// `snapshot::REFRESH_EVERY`).
    pub fn refresh(&self) {
        let snapshot = self.l7.load();
        // The runtime's client is made anew when its files change (whoever asks first: this, or
        // a health check); the snapshot's is then older.
        let tls_changed = self.state.config.pools.values().any(|pool| {
            match (self.runtime.backend_tls(pool), snapshot.backend_tls(&pool.name)) {
                (Some(now), Some(built)) => !Arc::ptr_eq(&now, built),
                _ => false,
            }
        });
        if snapshot.ramping || tls_changed {
            self.l7.store(Arc::new(Snapshot::build(&self.state, &self.runtime)));
        }
    }

    /// A reload: the difference between the running State and `config`, as commands.
    /// `host`: the new config's host facts, resolved off the core lock (ARP may take seconds).
    pub fn reload(&mut self, config: Config, host: HostFacts) -> Result<Vec<String>, ExecError> {
        if self.retired {
            return Err(ExecError::Retired);
        }
        if config.interface != self.state.config.interface || config.pin_dir != self.state.config.pin_dir {
            return Err(ExecError::NeedsRestart("interface or pin_dir changed".into()));
        }
        if config.busy_poll != self.state.config.busy_poll {
            return Err(ExecError::NeedsRestart(format!("[proxy] busy_poll_us changed{BY_UPGRADE}")));
        }
        // Listeners are bound and configured at start (one socket per worker); their error
        // pages are the snapshot's.
        let bound = |c: &Config| c.listeners.iter().map(Listener::bound_settings).collect::<Vec<_>>();
        if bound(&config) != bound(&self.state.config) {
            let names = |c: &Config| c.listeners.iter().map(|l| l.name.clone()).collect::<Vec<_>>();
            return Err(ExecError::NeedsRestart(format!(
                "listeners changed (now {:?}, running {:?}, or their settings){BY_UPGRADE}",
                names(&config),
                names(&self.state.config)
            )));
        }
        self.host = host;
        let commands = self.state.diff(&config);
        // The commands come from the file itself: nothing to write back.
        let mut next = self.state.clone();
        let mut lines = Vec::new();
        for command in &commands {
            let line = next.apply(command)?;
            if !line.is_empty() {
                lines.push(line);
            }
        }
        for line in self.write_next(&next)? {
            info!("{line}");
        }
        let before = self.state.failing_open();
        self.state = next;
        self.publish();
        self.warn_fail_open(&before);
        Ok(lines)
    }
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;

    use super::*;

    #[test]
    fn operator_commands_reach_the_file_and_the_state_together() {
        let dir = std::env::temp_dir().join(format!("sluice-daemon-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sluice.toml");
        let text = "[[pool]]\nname = \"web\"\nbackends = [{ address = \"10.0.0.1\" }]\n\
                    [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:18080\"\n";
        std::fs::write(&path, text).unwrap();
        let config = Config::load(&path).unwrap();
        let core: Shared = Arc::new(Mutex::new(Core::start(config, path.clone(), None).unwrap()));
        let add = Command::AddBackend { pool: "web".into(), address: "10.0.0.2".parse().unwrap(), weight: 5 };
        let lines = execute_persisting(&core, &[add]).unwrap();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(std::fs::read_to_string(&path).unwrap().contains("10.0.0.2"));
        assert_eq!(lock(&core).state.config.pools["web"].backends.len(), 2);
        // Refused: neither the file nor the State changes.
        let before = std::fs::read_to_string(&path).unwrap();
        let missing = Command::RemoveBackend { pool: "web".into(), address: "10.0.0.9".parse().unwrap() };
        assert!(matches!(execute_persisting(&core, &[missing]), Err(ExecError::Refused(_))));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_reload_applies_a_listeners_error_pages_and_refuses_its_other_settings() {
        let dir = std::env::temp_dir().join(format!("sluice-daemon-pages-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("502.html"), "<h1>down</h1>").unwrap();
        let path = dir.join("sluice.toml");
        let text = |extra: &str| {
            format!(
                "[[pool]]\nname = \"web\"\nbackends = [{{ address = \"10.0.0.1\" }}]\n\
                 [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:18080\"\n{extra}"
            )
        };
        let config = |extra: &str| Config::parse(&path, &text(extra)).unwrap();
        let mut core = Core::start(config(""), path.clone(), None).unwrap();
        let host = || host::facts(&config("")).unwrap();
        assert!(core.l7.load().error_pages("l").is_none());
        let pages = "error_pages = { 502 = \"502.html\" }\n";
        core.reload(config(pages), host()).unwrap();
        let page =
            core.l7.load().error_pages("l").unwrap().page(502).map(|(kind, body)| (kind.clone(), body));
        assert_eq!(
            page,
            Some((HeaderValue::from_static("text/html; charset=utf-8"), "<h1>down</h1>".into()))
        );
        let refused = core.reload(config(&format!("{pages}max_connections = 5\n")), host());
        assert!(matches!(refused, Err(ExecError::NeedsRestart(_))), "{refused:?}");
        core.reload(config(""), host()).unwrap();
        assert!(core.l7.load().error_pages("l").is_none(), "taken away by a reload too");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
