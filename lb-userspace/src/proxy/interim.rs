//! A backend's interim answers (103 Early Hints, 102 and the other 1xx but 100 and 101), held
//! for the client's connection to pass on before the final answer, as HAProxy and nginx 1.29
//! do.
//!
//! One per client connection (in its `ClientConn`, no allocation of its own). The HTTP/1.1
//! upstream puts them here as it reads them, and the request's side (the HTTP/1.1 exchange, or
//! the HTTP/2 stream) takes them right after each poll of its pipeline: both run in the
//! connection's task, in the same poll, so no waker is needed, and an HTTP/2 stream takes only
//! its own (the streams are polled one at a time).
//! 100 Continue is lbd's own to say (it answers `Expect: 100-continue` itself when it starts
//! reading the body), and 101 is a final answer to an upgrade.
use std::sync::{
    Mutex,
    atomic::{AtomicBool, Ordering},
};

use hyper::{HeaderMap, StatusCode};

/// The most interim answers one request may get from its backend (passed on or not); more
/// are the backend's error (502).
pub const MAX_PER_REQUEST: usize = 8;

/// Interim answers waiting to be passed on.
#[derive(Default)]
pub struct Interim {
    /// Set while `heads` holds any: read on every wait of the pipeline, without the lock.
    waiting: AtomicBool,
    heads: Mutex<Vec<(StatusCode, HeaderMap)>>,
}

impl Interim {
    /// Whether the client gets an interim answer with this status.
    pub fn relayed(status: StatusCode) -> bool {
        status.is_informational()
            && status != StatusCode::CONTINUE
            && status != StatusCode::SWITCHING_PROTOCOLS
    }

    /// Holds an interim answer for the client (its fields as the backend sent them: the
    /// client's side drops the hop-by-hop ones).
    pub fn put(&self, status: StatusCode, headers: HeaderMap) {
        self.heads.lock().unwrap_or_else(|p| p.into_inner()).push((status, headers));
        self.waiting.store(true, Ordering::Release);
    }

    /// Whether any interim answer waits.
    pub fn waiting(&self) -> bool {
        self.waiting.load(Ordering::Acquire)
    }

    /// The interim answers waiting, oldest first.
    pub fn take(&self) -> Vec<(StatusCode, HeaderMap)> {
        if !self.waiting() {
            return Vec::new();
        }
        self.waiting.store(false, Ordering::Release);
        std::mem::take(&mut *self.heads.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_hints_and_others_pass_but_continue_and_switching() {
        assert!(Interim::relayed(StatusCode::EARLY_HINTS));
        assert!(Interim::relayed(StatusCode::PROCESSING));
        assert!(Interim::relayed(StatusCode::from_u16(199).unwrap()));
        assert!(!Interim::relayed(StatusCode::CONTINUE));
        assert!(!Interim::relayed(StatusCode::SWITCHING_PROTOCOLS));
        assert!(!Interim::relayed(StatusCode::OK));
    }

    #[test]
    fn answers_are_taken_once_in_order() {
        let interim = Interim::default();
        assert!(!interim.waiting() && interim.take().is_empty());
        interim.put(StatusCode::PROCESSING, HeaderMap::new());
        interim.put(StatusCode::EARLY_HINTS, HeaderMap::new());
        assert!(interim.waiting());
        let taken: Vec<_> = interim.take().into_iter().map(|(status, _)| status).collect();
        assert_eq!(taken, [StatusCode::PROCESSING, StatusCode::EARLY_HINTS]);
        assert!(!interim.waiting() && interim.take().is_empty());
    }
}
