//! A route's JWK Set fetched from its identity provider (`jwt = { jwks_url = … }`, Envoy's
//! `remote_jwks`): fetched when the route's runtime is made, again every `jwks_refresh_s`, and
//! soon after a token names a key the set lacks (the provider rotated its keys: at most once per
//! `UNKNOWN_KEY_REFETCH`). A fetch is a task of its own that no request waits for; it is bounded
//! (`FETCH_TIMEOUT`, `MAX_SET_BYTES`), and one that fails keeps the set already held, logged,
//! and is tried again after `RETRY_AFTER_FAILURE`.
use std::{
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{StatusCode, Uri};

use crate::{
    jwk_set::KeySet,
    proxy::{
        clock,
        https_client::{self, HttpsClient},
    },
};

/// How long one fetch may take, its answer included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest set read: a provider's is a few KiB.
const MAX_SET_BYTES: usize = 1 << 20;
/// How soon a token naming an unknown key may make the set be fetched again.
const UNKNOWN_KEY_REFETCH: Duration = Duration::from_secs(30);
/// How soon a failed fetch is tried again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// A JWK Set kept from its URL.
pub struct RemoteKeys {
    url: Uri,
    client: HttpsClient<Empty<Bytes>>,
    refresh: Duration,
    /// Empty until the first fetch succeeds.
    keys: ArcSwap<KeySet>,
    /// When (`clock::coarse_ms`) the set is to be fetched next.
    due_ms: AtomicU64,
    /// When a token's unknown key last made a fetch start.
    unknown_at_ms: AtomicU64,
    fetching: AtomicBool,
    /// Whether a fetch has ever succeeded.
    fetched: AtomicBool,
}

/// Why the remote set could not be made (the config check makes the same checks).
#[derive(Debug, thiserror::Error)]
pub enum RemoteKeysError {
    #[error("jwks_url `{0}` is not a URL")]
    Url(String),
    #[error("jwks_ca: {0}")]
    Ca(String),
}

impl RemoteKeys {
    /// The set at `url` (its server checked against `ca`, else the system's roots); its first
    /// fetch starts now when a runtime runs (else at the first request).
    pub fn new(
        url: &str,
        ca: Option<&std::path::Path>,
        refresh: Duration,
    ) -> Result<Arc<RemoteKeys>, RemoteKeysError> {
        let client = https_client::build(ca).map_err(RemoteKeysError::Ca)?;
        let remote = Arc::new(RemoteKeys {
            url: url.parse().map_err(|_| RemoteKeysError::Url(url.to_owned()))?,
            client,
            refresh,
            keys: ArcSwap::from_pointee(KeySet::default()),
            due_ms: AtomicU64::new(0),
            unknown_at_ms: AtomicU64::new(0),
            fetching: AtomicBool::new(false),
            fetched: AtomicBool::new(false),
        });
        remote.fetch_if_due();
        Ok(remote)
    }

    /// The set as it is (empty before the first fetch); starts a fetch if one is due.
    pub fn current(self: &Arc<Self>) -> Arc<KeySet> {
        self.fetch_if_due();
        self.keys.load_full()
    }

    /// Whether a fetch has ever succeeded.
    pub fn fetched(&self) -> bool {
        self.fetched.load(Ordering::Relaxed)
    }

    /// A token named a key the set lacks: fetch again, unless that was done lately.
    pub fn unknown_key(self: &Arc<Self>) {
        let now = clock::coarse_ms();
        let last = self.unknown_at_ms.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= UNKNOWN_KEY_REFETCH.as_millis() as u64)
            && self.unknown_at_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.start();
        }
    }

    /// Starts a fetch whatever is due (tests).
    #[cfg(test)]
    pub fn fetch_now(self: &Arc<Self>) {
        self.start();
    }

    fn fetch_if_due(self: &Arc<Self>) {
        if clock::coarse_ms() >= self.due_ms.load(Ordering::Relaxed) {
            self.start();
        }
    }

    /// Starts a fetch on a task of its own, unless one runs. The task holds the set weakly: a
    /// route that goes away while it runs is not kept.
    fn start(self: &Arc<Self>) {
        if tokio::runtime::Handle::try_current().is_err() || self.fetching.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<RemoteKeys> = Arc::downgrade(self);
        let (client, url) = (self.client.clone(), self.url.clone());
        tokio::spawn(async move {
            let fetched = tokio::time::timeout(FETCH_TIMEOUT, fetch(&client, &url)).await;
            let Some(remote) = weak.upgrade() else { return };
            let fetched = fetched.unwrap_or_else(|_| Err(format!("no answer within {FETCH_TIMEOUT:?}")));
            let next = match fetched {
                Ok(keys) => {
                    log::info!("jwt: fetched the JWK Set at {url} ({} usable keys)", keys.len());
                    remote.keys.store(Arc::new(keys));
                    remote.fetched.store(true, Ordering::Relaxed);
                    remote.refresh
                }
                Err(err) => {
                    log::warn!("jwt: fetching the keys at {url}: {err}; keeping those held");
                    RETRY_AFTER_FAILURE.min(remote.refresh)
                }
            };
            remote.due_ms.store(clock::coarse_ms() + next.as_millis() as u64, Ordering::Relaxed);
            remote.fetching.store(false, Ordering::Release);
        });
    }
}

/// One fetch: a 200 whose body, at most `MAX_SET_BYTES`, is a JWK Set with a usable key.
async fn fetch(client: &HttpsClient<Empty<Bytes>>, url: &Uri) -> Result<KeySet, String> {
    let request = hyper::Request::get(url.clone())
        .header(hyper::header::ACCEPT, "application/jwk-set+json, application/json")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let answer = client.request(request).await.map_err(|e| e.to_string())?;
    if answer.status() != StatusCode::OK {
        return Err(format!("status {}", answer.status()));
    }
    let body = Limited::new(answer.into_body(), MAX_SET_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading the set: {e}"))?
        .to_bytes();
    let text = std::str::from_utf8(&body).map_err(|_| "the set is not UTF-8".to_owned())?;
    KeySet::parse(text)
}
