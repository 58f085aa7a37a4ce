//! Shadow: a copy of a share of a route's bodiless requests goes to the shadow pool on a task of
//! its own (the backend is picked with the request's own headers, so hashing holds); its answer
//! is counted and dropped.
use std::{net::IpAddr, sync::Arc, time::Duration};

use http_body_util::BodyExt;
use hyper::http::request::Parts;

use crate::proxy::{
    metrics::{Label, ProxyMetrics},
    phase::{
        headers::Forwarding,
        upstream::{InFlight, Upstreams},
    },
    routes::{CompiledRoute, L7Pool, Snapshot},
};

/// How long a shadow copy may take before it is given up.
const SHADOW_TIMEOUT: Duration = Duration::from_secs(30);

/// The route's shadow pool when this request is in its share (`draw`: uniform in [0, 100),
/// called only when the route has a shadow).
pub fn chosen<'a>(
    route: &CompiledRoute,
    snapshot: &'a Snapshot,
    draw: impl FnOnce() -> f64,
) -> Option<&'a L7Pool> {
    let (pool, percent) = route.shadow.as_ref()?;
    if draw() >= *percent {
        return None;
    }
    snapshot.pools.get(pool)
}

/// Sends a copy of the request (`parts`, already rewritten for upstream, and the fields the
/// proxy adds) to `shadow`.
#[allow(clippy::too_many_arguments, reason = "the request's parts, where it goes, what counts it")]
pub fn send(
    upstreams: &Arc<Upstreams>,
    shadow: &L7Pool,
    parts: &Parts,
    forwarding: &Forwarding,
    host: &str,
    client: IpAddr,
    metrics: &ProxyMetrics,
    label: &Label,
) {
    let Some(target) = shadow.pick(parts, client, &[]) else { return };
    let mut copy = Parts::clone(parts);
    copy.extensions = Default::default();
    let (upstreams, metrics, host, forwarding) =
        (upstreams.clone(), metrics.clone(), host.to_owned(), forwarding.clone());
    let (label, pool, protocol) = (label.clone(), shadow.name.clone(), shadow.protocol);
    tokio::spawn(async move {
        let _in_flight = InFlight::start(&target);
        let (mut headers, mut no_body) = (std::mem::take(&mut copy.headers), None);
        let sent = upstreams.send(
            protocol,
            &target,
            &copy,
            &mut headers,
            true,
            &forwarding,
            &host,
            &mut no_body,
            false,
            None,
        );
        let status = match tokio::time::timeout(SHADOW_TIMEOUT, sent).await {
            Ok(Ok(response)) => {
                let status = response.status().as_u16();
                let _ = tokio::time::timeout(SHADOW_TIMEOUT, response.into_body().collect()).await;
                status
            }
            _ => 502,
        };
        metrics.request(label, pool, target.label.clone(), status, None);
    });
}
