//! The snapshot: everything a request needs (routes per listener, pools, error pages), rebuilt
//! on every State change and swapped in whole behind an ArcSwap, so requests take no lock.
//! What must outlive a rebuild (in-flight counts, streaks, buckets, budgets) lives in the
//! [`Runtime`] it is built with.
use std::{collections::HashMap, sync::Arc, time::Duration};

use hyper::Request;

use crate::{
    proxy::{
        backend_tls::BackendTls, clock, error_pages::ErrorPages, pool::L7Pool, routes::CompiledRoute,
        runtime::Runtime,
    },
    state::State,
};

/// A map looked up by name on every request (foldhash: SipHash's cost showed).
pub type ByName<V> = HashMap<String, V, foldhash::fast::RandomState>;

/// Everything a request needs, rebuilt on every State change.
pub struct Snapshot {
    /// Routes per listener name, in config order.
    pub routes: ByName<Vec<CompiledRoute>>,
    pub pools: ByName<L7Pool>,
    /// Whether a backend is in its slow start: the snapshot is built again every
    /// `REFRESH_EVERY` until none is.
    pub ramping: bool,
    /// Error pages per listener name (listeners with none are not here).
    error_pages: ByName<ErrorPages>,
}

/// How often lbd looks for what time changes in the snapshot (`Core::refresh`): a slow start's
/// next step, a pool's TLS files.
pub const REFRESH_EVERY: Duration = Duration::from_millis(500);

impl Snapshot {
    /// The snapshot of `state`, its runtime entries taken from (or added to) `runtime`.
    pub fn build(state: &State, runtime: &Runtime) -> Snapshot {
        runtime.retain(&state.config);
        let (first, now_ms) = (runtime.first_build(), clock::coarse_ms());
        let mut routes: ByName<Vec<CompiledRoute>> = ByName::default();
        for route in &state.config.routes {
            routes.entry(route.listener.clone()).or_default().push(CompiledRoute::compile(route, runtime));
        }
        let mut ramping = false;
        let pools = state
            .config
            .pools
            .values()
            .map(|pool| {
                let (l7, ramps) = L7Pool::build(pool, state, runtime, (first, now_ms));
                ramping |= ramps;
                (pool.name.clone(), l7)
            })
            .collect();
        let error_pages = state
            .config
            .listeners
            .iter()
            .filter(|l| !l.error_pages.is_empty())
            .map(|l| (l.name.clone(), runtime.error_pages(l)))
            .collect();
        Snapshot { routes, pools, ramping, error_pages }
    }

    /// `listener`'s error pages, if it has any.
    pub fn error_pages(&self, listener: &str) -> Option<&ErrorPages> {
        self.error_pages.get(listener)
    }

    /// The TLS client `pool`'s backends are reached with (None: plain, or no backend usable).
    pub fn backend_tls(&self, pool: &str) -> Option<&Arc<BackendTls>> {
        self.pools.get(pool)?.upstreams.first()?.tls.as_ref()
    }

    /// The first route of `listener` matching the request from `client`.
    pub fn route<B>(
        &self,
        listener: &str,
        host: &str,
        request: &Request<B>,
        client: std::net::IpAddr,
    ) -> Option<&CompiledRoute> {
        self.routes.get(listener)?.iter().find(|r| r.matches(host, request, client))
    }
}
