//! CORS (the Fetch standard's protocol, Envoy's `cors` policy): a route's preflights answered
//! by the proxy, and every answer it gives told which other origin's page may read it.
//!
//! A browser sends `Origin` with a call from another site's page. It first asks with a
//! preflight (OPTIONS with `Access-Control-Request-Method`) when the call is more than a
//! plain GET or form POST. The proxy answers a preflight from an allowed origin itself, before
//! the route's gates: a preflight carries no credentials, so an API key, JWT or password gate
//! would refuse it. An allowed origin's answers (a backend's, the cache's, the route's own, and
//! the proxy's refusals once routed) get `Access-Control-Allow-Origin` and the rest. An origin
//! not allowed gets nothing added, so the browser keeps the answer from its page; its preflight
//! goes on to the backend, which may know better.
use std::sync::Arc;

use hyper::{
    Method, Response, StatusCode,
    header::{self, HeaderMap, HeaderValue},
};

use crate::proxy::{
    body::{Body, empty},
    cors_policy::CorsPolicy,
    phase::{Refusal, headers::vary_by},
};

/// What a request on a route with a policy gets of it: nothing when every origin may read its
/// answers and it came from none, else a [`Reply`], which says whether it is a preflight the
/// proxy answers.
pub fn see(cors: &Arc<CorsPolicy>, method: &Method, headers: &HeaderMap) -> Option<Reply> {
    let origin = headers.get(header::ORIGIN);
    if origin.is_none() && cors.any_origin() {
        return None;
    }
    let allowed = origin.filter(|origin| cors.allows(origin.as_bytes()));
    let preflight = allowed.is_some()
        && method == Method::OPTIONS
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    Some(Reply { cors: cors.clone(), origin: allowed.cloned(), preflight })
}

/// A request's share of its route's policy, kept until its answer is made, whatever makes it.
pub struct Reply {
    cors: Arc<CorsPolicy>,
    /// The request's origin, when the policy allows it.
    origin: Option<HeaderValue>,
    /// An allowed origin's preflight: the proxy answers it ([`Reply::preflight`]).
    pub preflight: bool,
}

impl Reply {
    /// The answer to a preflight: 204 with the methods, fields and lifetime the policy allows;
    /// [`Reply::apply`] adds the origin's fields, as on every answer.
    pub fn preflight(&self) -> Refusal {
        let mut response = Response::new(empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let fields = response.headers_mut();
        let cors = &self.cors;
        for (name, value) in [
            (header::ACCESS_CONTROL_ALLOW_METHODS, &cors.methods),
            (header::ACCESS_CONTROL_ALLOW_HEADERS, &cors.headers),
            (header::ACCESS_CONTROL_MAX_AGE, &cors.max_age),
        ] {
            if let Some(value) = value {
                fields.insert(name, value.clone());
            }
        }
        Refusal::with(response, "preflight")
    }

    /// Tells the browser which origin may read `response` (replacing what the backend said
    /// of it), and caches that the answer depends on the origin.
    pub fn apply(&self, response: &mut Response<Body>) {
        let headers = response.headers_mut();
        let cors = &self.cors;
        if let Some(origin) = &self.origin {
            let reflected = if cors.any_origin() { HeaderValue::from_static("*") } else { origin.clone() };
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, reflected);
            if cors.credentials {
                headers.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
            }
            if let Some(expose) = &cors.expose {
                headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
            }
        }
        // An answer that names its origin, or leaves it out, differs by origin: a shared cache
        // must not give one origin's answer to another (the Fetch standard, "CORS protocol
        // and HTTP caches").
        if !cors.any_origin() {
            vary_by(headers, "origin");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(origins: &[&str], credentials: bool) -> Arc<CorsPolicy> {
        Arc::new(CorsPolicy::new(&crate::config::CorsConfig {
            allow_origins: origins.iter().map(|o| o.to_string()).collect(),
            allow_methods: vec!["GET".into(), "PUT".into()],
            allow_headers: vec!["content-type".into(), "x-grpc-web".into()],
            expose_headers: vec!["grpc-status".into(), "grpc-message".into()],
            max_age_s: Some(600),
            allow_credentials: credentials,
        }))
    }

    fn request(method: Method, fields: &[(&str, &str)]) -> (Method, HeaderMap) {
        let mut headers = HeaderMap::new();
        for (name, value) in fields {
            headers.append(
                hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        (method, headers)
    }

    fn answered(reply: Option<Reply>, mut response: Response<Body>) -> HeaderMap {
        if let Some(reply) = reply {
            reply.apply(&mut response);
        }
        response.headers().clone()
    }

    fn field<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
        headers.get(name).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn a_listed_origin_is_reflected_with_credentials_and_exposed_fields() {
        let cors = policy(&["https://app.example.com", "https://*.example.org:8443"], true);
        for origin in ["https://app.example.com", "HTTPS://APP.example.com", "https://a.b.example.org:8443"] {
            let (method, headers) = request(Method::POST, &[("origin", origin)]);
            let reply = see(&cors, &method, &headers).unwrap();
            assert!(!reply.preflight);
            let got = answered(Some(reply), Response::new(empty()));
            assert_eq!(field(&got, "access-control-allow-origin"), Some(origin));
            assert_eq!(field(&got, "access-control-allow-credentials"), Some("true"));
            assert_eq!(field(&got, "access-control-expose-headers"), Some("grpc-status, grpc-message"));
            assert_eq!(field(&got, "vary"), Some("origin"));
            assert_eq!(
                field(&got, "access-control-allow-methods"),
                None,
                "only a preflight's answer says them"
            );
        }
    }

    #[test]
    fn another_origin_gets_nothing_but_vary() {
        let cors = policy(&["https://app.example.com", "https://*.example.org"], false);
        for origin in [
            "https://app.example.com.evil.test",
            "http://app.example.com",
            "https://example.org",
            "https://evil.test/.example.org",
            "https://a:b@x.example.org",
            "null",
        ] {
            let (method, headers) =
                request(Method::OPTIONS, &[("origin", origin), ("access-control-request-method", "PUT")]);
            let reply = see(&cors, &method, &headers).unwrap();
            assert!(!reply.preflight, "{origin}: its preflight goes on to the backend");
            let mut response = Response::new(empty());
            response
                .headers_mut()
                .insert("access-control-allow-origin", "https://backend-said".parse().unwrap());
            let got = answered(Some(reply), response);
            assert_eq!(field(&got, "access-control-allow-origin"), Some("https://backend-said"), "{origin}");
            assert_eq!(field(&got, "vary"), Some("origin"));
        }
        // No Origin at all: Vary still, since the answer would differ with one.
        let (method, headers) = request(Method::GET, &[]);
        let got = answered(see(&cors, &method, &headers), Response::new(empty()));
        assert_eq!((field(&got, "vary"), got.len()), (Some("origin"), 1));
    }

    #[test]
    fn any_origin_is_told_star_and_needs_no_vary() {
        let cors = policy(&["*"], false);
        let (method, headers) = request(Method::GET, &[]);
        assert!(see(&cors, &method, &headers).is_none(), "no origin, nothing to do");
        let (method, headers) = request(Method::GET, &[("origin", "https://anyone.test")]);
        let got = answered(see(&cors, &method, &headers), Response::new(empty()));
        assert_eq!(field(&got, "access-control-allow-origin"), Some("*"));
        assert_eq!(field(&got, "vary"), None);
    }

    #[test]
    fn an_allowed_preflight_is_answered_with_what_the_policy_allows() {
        let cors = policy(&["https://app.example.com"], false);
        let (method, headers) = request(
            Method::OPTIONS,
            &[("origin", "https://app.example.com"), ("access-control-request-method", "PUT")],
        );
        let reply = see(&cors, &method, &headers).unwrap();
        assert!(reply.preflight);
        let refusal = reply.preflight();
        assert_eq!((refusal.response.status(), refusal.reason), (StatusCode::NO_CONTENT, "preflight"));
        let got = answered(Some(reply), *refusal.response);
        assert_eq!(field(&got, "access-control-allow-origin"), Some("https://app.example.com"));
        assert_eq!(field(&got, "access-control-allow-methods"), Some("GET, PUT"));
        assert_eq!(field(&got, "access-control-allow-headers"), Some("content-type, x-grpc-web"));
        assert_eq!(field(&got, "access-control-max-age"), Some("600"));
        assert_eq!(field(&got, "access-control-allow-credentials"), None);
        // A plain OPTIONS (no Access-Control-Request-Method) is the backend's.
        let (method, headers) = request(Method::OPTIONS, &[("origin", "https://app.example.com")]);
        assert!(!see(&cors, &method, &headers).unwrap().preflight);
    }

    #[test]
    fn vary_is_added_once() {
        let cors = policy(&["https://app.example.com"], false);
        for (vary, want) in [("Accept-Encoding, Origin", "Accept-Encoding, Origin"), ("*", "*")] {
            let (method, headers) = request(Method::GET, &[("origin", "https://app.example.com")]);
            let mut response = Response::new(empty());
            response.headers_mut().insert("vary", vary.parse().unwrap());
            let got = answered(see(&cors, &method, &headers), response);
            assert_eq!(got.get_all("vary").iter().collect::<Vec<_>>(), [want]);
        }
        let (method, headers) = request(Method::GET, &[("origin", "https://app.example.com")]);
        let mut response = Response::new(empty());
        response.headers_mut().insert("vary", "accept-encoding".parse().unwrap());
        let got = answered(see(&cors, &method, &headers), response);
        assert_eq!(got.get_all("vary").iter().collect::<Vec<_>>(), ["accept-encoding", "origin"]);
    }
}
