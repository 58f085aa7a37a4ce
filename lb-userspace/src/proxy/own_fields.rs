//! The fields the proxy writes as itself, both ways and in both protocols: the request's ID
//! and Via.
use hyper::{Version, header::HeaderName};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const VIA: HeaderName = HeaderName::from_static("via");

/// What the proxy says in Via of a message it received in `version`: the protocol it came in,
/// then the proxy's name (RFC 9110 §7.6.3). A request says the client's protocol, an answer
/// its backend's.
pub fn via(version: Version) -> &'static str {
    match version {
        Version::HTTP_2 => "2 sluice",
        Version::HTTP_3 => "3 sluice",
        Version::HTTP_10 => "1.0 sluice",
        _ => "1.1 sluice",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_says_the_protocol_a_message_came_in() {
        assert_eq!(via(Version::HTTP_11), "1.1 sluice");
        assert_eq!(via(Version::HTTP_10), "1.0 sluice");
        assert_eq!(via(Version::HTTP_2), "2 sluice");
        assert_eq!(via(Version::HTTP_3), "3 sluice");
    }
}
