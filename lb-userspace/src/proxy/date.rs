//! The `Date` every answer gets when its own has none.
use std::{
    cell::RefCell,
    time::{Duration, SystemTime},
};

use hyper::header::HeaderValue;

/// The `Date` value for an answer that has none, made once a second per worker thread (a clone
/// is a reference count, not a copy).
pub fn date() -> HeaderValue {
    thread_local! {
        static DATE: RefCell<(u64, HeaderValue)> = const { RefCell::new((0, HeaderValue::from_static(""))) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs();
    DATE.with_borrow_mut(|(at, value)| {
        if *at != second {
            let text = httpdate::fmt_http_date(now);
            *value = HeaderValue::from_str(&text).expect("an HTTP date is a valid field value");
            *at = second;
        }
        value.clone()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn date_is_an_http_date() {
        let value = super::date();
        assert!(httpdate::parse_http_date(value.to_str().unwrap()).is_ok());
    }
}
