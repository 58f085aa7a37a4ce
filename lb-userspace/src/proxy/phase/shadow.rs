//! Shadow: a copy of a share of a route's requests goes to the shadow pool on a task of its own
//! (the backend is picked with the request's own parts, so hashing holds); its answer is counted
//! and dropped. A request's body goes with its copy once the backend has read it whole, if it
//! is no longer than the route's `shadow.max_body_bytes` (a copy of the bytes as they pass).
use std::{
    net::IpAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::{
    body::{Body as HttpBody, Frame, SizeHint},
    http::request::Parts,
};
use tokio::sync::oneshot;

use crate::proxy::{
    body::{self, Body, Error},
    metrics::{Label, ProxyMetrics},
    phase::{
        headers::Forwarding,
        upstream::{InFlight, Upstreams},
    },
    pool::L7Pool,
    routes::CompiledRoute,
    snapshot::Snapshot,
};

/// How long a shadow copy may take before it is given up (its body's wait included).
const SHADOW_TIMEOUT: Duration = Duration::from_secs(30);

/// The route's shadow pool, and the longest body it copies, when this request is in its share
/// (`draw`: uniform in [0, 100), called only when the route has a shadow) and its body can go
/// with it: none, or one not declared longer than the route's bound.
pub fn chosen<'a>(
    route: &CompiledRoute,
    snapshot: &'a Snapshot,
    body: &Body,
    draw: impl FnOnce() -> f64,
) -> Option<(&'a L7Pool, usize)> {
    let shadow = route.shadow.as_ref()?;
    if draw() >= shadow.percent || body.size_hint().lower() > shadow.max_body_bytes as u64 {
        return None;
    }
    Some((snapshot.pools.get(&shadow.pool)?, shadow.max_body_bytes))
}

/// Sends a copy of the request (`parts`, already rewritten for upstream, and the fields the
/// proxy adds) to `shadow`. Its body: none if `body` has ended, else a copy of it, up to
/// `max_body_bytes`, made as the backend reads it; the client's body wrapped so is given back.
/// A body that grows past the bound, fails, or is not read to its end sends no copy.
#[allow(clippy::too_many_arguments, reason = "the request's parts, where it goes, what counts it")]
pub fn send(
    upstreams: &Arc<Upstreams>,
    (shadow, max_body_bytes): (&L7Pool, usize),
    (parts, body): (&Parts, Body),
    forwarding: &Forwarding,
    host: &str,
    client: IpAddr,
    metrics: &ProxyMetrics,
    label: &Label,
) -> Body {
    let Some(target) = shadow.pick(parts, client, &[]) else { return body };
    let (body, copied) = match body.is_end_stream() {
        true => (body, None),
        false => {
            let (whole, copied) = oneshot::channel();
            let copying =
                Copying { inner: body, copy: BytesMut::new(), limit: max_body_bytes, whole: Some(whole) };
            (copying.boxed(), Some(copied))
        }
    };
    let mut copy = Parts::clone(parts);
    copy.extensions = Default::default();
    let (upstreams, metrics, host, forwarding) =
        (upstreams.clone(), metrics.clone(), host.to_owned(), forwarding.clone());
    let (label, pool, protocol) = (label.clone(), shadow.name.clone(), shadow.protocol);
    tokio::spawn(async move {
        let copied = async {
            let body = match copied {
                None => None,
                Some(copied) => Some(body::full(copied.await.ok()?)),
            };
            Some(body)
        };
        let until = tokio::time::Instant::now() + SHADOW_TIMEOUT;
        // No copy of the body: the backend never read it whole, or it was too long.
        let Ok(Some(mut body)) = tokio::time::timeout_at(until, copied).await else { return };
        let _in_flight = InFlight::start(&target);
        let mut headers = std::mem::take(&mut copy.headers);
        let sent = upstreams.send(
            protocol,
            &target,
            &copy,
            &mut headers,
            true,
            &forwarding,
            &host,
            &mut body,
            false,
            None,
        );
        let status = match tokio::time::timeout_at(until, sent).await {
            Ok(Ok(response)) => {
                let status = response.status().as_u16();
                let _ = tokio::time::timeout_at(until, response.into_body().collect()).await;
                status
            }
            _ => 502,
        };
        metrics.request(label, pool, target.label.clone(), status, None);
    });
    body
}

/// The client's body as the backend reads it, its bytes copied for the shadow copy (up to
/// `limit`), which is given them once the body has ended.
struct Copying {
    inner: Body,
    copy: BytesMut,
    limit: usize,
    /// Where the whole copy goes; None once it is lost (too long, or the body failed).
    whole: Option<oneshot::Sender<Bytes>>,
}

impl HttpBody for Copying {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        let this = &mut *self;
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if this.copy.len() + data.len() > this.limit {
                        (this.whole, this.copy) = (None, BytesMut::new());
                    } else if this.whole.is_some() {
                        this.copy.extend_from_slice(data);
                    }
                }
            }
            Some(Err(_)) => (this.whole, this.copy) = (None, BytesMut::new()),
            None => {}
        }
        // A body may end with its last data, never yielding an end of its own.
        if (frame.is_none() || this.inner.is_end_stream())
            && let Some(whole) = this.whole.take()
        {
            let _ = whole.send(this.copy.split().freeze());
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
