//! Stale answers (RFC 5861; RFC 9111 §4.2.4): how long past its lifetime a stored answer may
//! still be served while one request fetches it again (`stale-while-revalidate`) or when
//! fetching it fails (`stale-if-error`).
//!
//! An answer's own Cache-Control says it first: `stale-while-revalidate=N`, `stale-if-error=N`.
//! Else the route's `stale_while_revalidate_s` and `stale_if_error_s` apply, unless the answer
//! asks every cache to check with it once stale: `must-revalidate`, `proxy-revalidate`, or
//! `s-maxage` (which implies `proxy-revalidate` for a shared cache, RFC 9111 §5.2.2.10). An
//! answer that names both `s-maxage` and `stale-while-revalidate` (as CDNs are told by Next.js
//! and others) means the second: an explicit window wins. `must-revalidate` and
//! `proxy-revalidate` forbid serving before the check (`stale-while-revalidate`) but not after a
//! failed one, which `stale-if-error` allows "regardless of other freshness information" (RFC
//! 5861 §4).
use std::time::Duration;

use hyper::{HeaderMap, header};

use crate::config::CacheConfig;

/// How one window of an answer is decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// The answer's own directive: this long.
    Stated(Duration),
    /// The route's setting.
    Route,
    /// Never served stale this way.
    Never,
}

/// An answer's two windows, read once when it is stored; the route's settings are applied when
/// it is served, so a reload that changes them applies to answers already stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grace {
    while_revalidating: Window,
    if_error: Window,
}

impl Grace {
    /// For answers that are not stored.
    pub const NONE: Grace = Grace { while_revalidating: Window::Never, if_error: Window::Never };

    /// The windows an answer's Cache-Control gives it.
    pub fn of(answer: &HeaderMap) -> Grace {
        let mut stated = (None, None);
        let (mut must_revalidate, mut s_maxage) = (false, false);
        for directive in crate::proxy::header_tokens(answer, header::CACHE_CONTROL) {
            let (name, value) = match directive.split_once('=') {
                Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
                None => (directive.as_str(), None),
            };
            let seconds = || value.and_then(delta_seconds);
            match name {
                "stale-while-revalidate" => stated.0 = seconds().or(stated.0),
                "stale-if-error" => stated.1 = seconds().or(stated.1),
                "must-revalidate" | "proxy-revalidate" => must_revalidate = true,
                "s-maxage" => s_maxage = true,
                _ => {}
            }
        }
        let window = |stated: Option<Duration>, forbidden: bool| match stated {
            Some(duration) => Window::Stated(duration),
            None if forbidden => Window::Never,
            None => Window::Route,
        };
        Grace {
            while_revalidating: match must_revalidate {
                true => Window::Never,
                false => window(stated.0, s_maxage),
            },
            if_error: window(stated.1, must_revalidate || s_maxage),
        }
    }

    /// Whether an answer `stale_for` past its lifetime may be served while it is fetched again.
    pub fn while_revalidating(&self, stale_for: Duration, config: &CacheConfig) -> bool {
        within(self.while_revalidating, stale_for, config.stale_while_revalidate_s)
    }

    /// Whether an answer `stale_for` past its lifetime may be served when fetching it failed.
    pub fn if_error(&self, stale_for: Duration, config: &CacheConfig) -> bool {
        within(self.if_error, stale_for, config.stale_if_error_s)
    }
}

fn within(window: Window, stale_for: Duration, route_s: u32) -> bool {
    match window {
        Window::Stated(limit) => stale_for < limit,
        Window::Route => stale_for < Duration::from_secs(route_s.into()),
        Window::Never => false,
    }
}

/// RFC 9111 §1.2.2's delta-seconds: digits only; a value past u32 counts as the largest.
fn delta_seconds(value: &str) -> Option<Duration> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(Duration::from_secs(value.parse::<u32>().unwrap_or(u32::MAX).into()))
}

/// Whether a status is an error that `stale-if-error` covers (RFC 5861 §4: 500, 502, 503, 504).
pub fn is_error(status: hyper::StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;

    use super::*;

    fn grace(cache_control: &str) -> Grace {
        let mut answer = HeaderMap::new();
        answer.insert(header::CACHE_CONTROL, HeaderValue::from_str(cache_control).unwrap());
        Grace::of(&answer)
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn the_answers_own_directives_come_first_then_the_routes_settings() {
        let route = CacheConfig { stale_while_revalidate_s: 30, stale_if_error_s: 600, ..Default::default() };
        let stated = grace("max-age=60, stale-while-revalidate=5, stale-if-error=\"100\"");
        assert!(stated.while_revalidating(S(4), &route) && !stated.while_revalidating(S(5), &route));
        assert!(stated.if_error(S(99), &route) && !stated.if_error(S(100), &route));
        let silent = grace("max-age=60");
        assert!(silent.while_revalidating(S(29), &route) && !silent.while_revalidating(S(30), &route));
        assert!(silent.if_error(S(599), &route) && !silent.if_error(S(600), &route));
        assert!(!silent.if_error(S(0), &CacheConfig::default()), "no window by default");
        assert_eq!(grace("MAX-AGE=60, Stale-If-Error=7"), Grace { if_error: Window::Stated(S(7)), ..silent });
        // A value that is not delta-seconds is not a window: the route's applies.
        for bad in ["stale-if-error", "stale-if-error=-1", "stale-if-error=1.5", "stale-if-error=x"] {
            assert_eq!(grace(bad).if_error, Window::Route, "{bad}");
        }
        assert_eq!(grace("stale-if-error=99999999999").if_error, Window::Stated(S(u32::MAX.into())));
    }

    #[test]
    fn revalidation_directives_keep_the_routes_windows_off() {
        for word in ["must-revalidate", "proxy-revalidate"] {
            let g = grace(&format!("max-age=60, {word}"));
            assert_eq!(g, Grace::NONE, "{word}");
            // stale-if-error applies after a failed check whatever else the answer says;
            // stale-while-revalidate would serve before one.
            let g = grace(&format!("max-age=60, {word}, stale-while-revalidate=9, stale-if-error=9"));
            assert_eq!((g.while_revalidating, g.if_error), (Window::Never, Window::Stated(S(9))), "{word}");
        }
        assert_eq!(grace("s-maxage=60"), Grace::NONE);
        let cdn = grace("public, s-maxage=60, stale-while-revalidate=30");
        assert_eq!((cdn.while_revalidating, cdn.if_error), (Window::Stated(S(30)), Window::Never));
    }
}
