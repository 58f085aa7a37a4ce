//! Fault: a share of a route's requests held for a while, or answered with an error, before a
//! backend sees them (Envoy's fault injection): to see how clients, retries and timeouts bear
//! a slow or failing service, on the real path, without touching the backends.
use hyper::StatusCode;

use crate::{config::Fault, proxy::phase::Refusal};

/// The reason a request answered by the fault is logged with (and its answer's text).
pub const ABORTED: &str = "fault injected";

/// Holds the request for the fault's delay if a draw (`draw`: uniform in [0, 100)) falls in
/// its share, then refuses it with the fault's status if another does.
pub async fn inject(fault: &Fault, mut draw: impl FnMut() -> f64) -> Result<(), Refusal> {
    if let Some((delay, percent)) = fault.delay
        && draw() < percent
    {
        tokio::time::sleep(delay).await;
    }
    match fault.abort {
        Some((status, percent)) if draw() < percent => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            Err(Refusal::new(status, ABORTED))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[tokio::test]
    async fn a_request_is_held_or_refused_only_when_its_draw_falls_in_the_share() {
        let fault = Fault { delay: Some((Duration::from_millis(100), 50.0)), abort: Some((503, 25.0)) };
        // Draws of 10: delayed (under 50), refused (under 25).
        let started = Instant::now();
        let refused = inject(&fault, || 10.0).await.unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert_eq!((refused.response.status().as_u16(), refused.reason), (503, ABORTED));
        // Draws of 40: delayed, let through; of 60: neither.
        let started = Instant::now();
        assert!(inject(&fault, || 40.0).await.is_ok());
        assert!(started.elapsed() >= Duration::from_millis(100));
        let started = Instant::now();
        assert!(inject(&fault, || 60.0).await.is_ok());
        assert!(started.elapsed() < Duration::from_millis(100));
    }
}
