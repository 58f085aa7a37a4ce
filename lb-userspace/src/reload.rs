//! One reload path, for SIGHUP and `lbctl reload` alike: the config file re-read off the async
//! workers and outside the core lock, applied through `Core::reload` (all or nothing), then
//! health checks and DNS followers started for new pools and listeners' certificates re-read. Its result and
//! time are kept for `lbctl status` and the metrics.
use std::{collections::HashSet, path::PathBuf, sync::Arc, time::SystemTime};

use log::{error, info};

use crate::{
    config::{Config, Listener},
    daemon::{LastReload, Shared, lock},
    health, host, proxy,
};

/// The L7 listeners being served, each with its certificates (re-read on a reload).
pub type ServedListeners = Vec<(Listener, Option<Arc<proxy::tls::Resolver>>)>;

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("\n{0}")]
    Config(#[from] crate::config::ConfigErrors),
    #[error("resolving the host's interface and next hop: {0}")]
    Host(crate::host::HostError),
    #[error("{0}")]
    Refused(#[from] crate::daemon::ExecError),
    #[error("the reload's reading task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Everything a reload touches.
pub struct Reloader {
    pub core: Shared,
    pub path: PathBuf,
    pub listeners: ServedListeners,
    /// Pools with a running health checker.
    pub checked: HashSet<String>,
    /// Pools with a running DNS follower.
    pub dns_followed: HashSet<String>,
}

impl Reloader {
    /// Re-reads and applies the config file; Err says why nothing changed.
    pub async fn reload(&mut self) -> Result<Vec<String>, ReloadError> {
        // No operator change writes the file while it is read and applied.
        let _file = crate::daemon::FILE_WRITER.lock().await;
        let file = self.path.clone();
        // Reading the file and resolving the next hop (ARP: up to 2 s) block: off the workers,
        // and before the core lock is taken.
        let loaded = tokio::task::spawn_blocking(move || {
            let config = Config::load(&file)?;
            let host = host::facts(&config).map_err(ReloadError::Host)?;
            Ok::<_, ReloadError>((config, host))
        })
        .await;
        let applied = match loaded {
            Err(err) => Err(err.into()),
            Ok(Err(err)) => Err(err),
            Ok(Ok((new, host))) => lock(&self.core).reload(new, host).map_err(ReloadError::from),
        };
        lock(&self.core).last_reload = Some(LastReload { at: SystemTime::now(), applied: applied.is_ok() });
        match &applied {
            Ok(lines) => {
                for line in lines {
                    info!("{line}");
                }
                info!("reload applied ({} changes)", lines.len());
                health::spawn_missing(&self.core, &mut self.checked);
                crate::dns_pools::spawn_missing(&self.core, &mut self.dns_followed);
                // Certificates follow an applied reload only.
                for (listener, certs) in &self.listeners {
                    if let Some(resolver) = certs {
                        proxy::reload_certs(listener, resolver);
                    }
                }
            }
            Err(err) => error!("reload refused, nothing changed: {err}"),
        }
        applied
    }
}
