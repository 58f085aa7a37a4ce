//! Routes compiled once per config into a matcher: which route a request takes, by its host,
//! path, method, fields, cookies and query, and what the route then does with it.
use std::{net::IpAddr, sync::Arc, time::Duration};

use hyper::{Method, Request};
use ipnet::IpNet;
use regex::Regex;

use crate::{
    config::{CacheConfig, CompressConfig, Fallback, HeaderEdits, OwnAnswer, PathMatch, Route, Shadow},
    proxy::{
        cors_policy::CorsPolicy,
        metrics::Label,
        runtime::{RouteRuntime, Runtime},
    },
};

enum CompiledPath {
    Any,
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

pub struct CompiledRoute {
    /// Metrics and log label.
    pub name: Label,
    /// The metrics labels of its shadow copies (`NAME:shadow`) and cache fills (`NAME:fill`),
    /// made once: a label made per request would miss the per-thread series every time.
    pub shadow_label: Label,
    pub fill_label: Label,
    host: Option<String>,
    path: CompiledPath,
    method: Option<Method>,
    headers: Vec<(String, String)>,
    cookies: Vec<(String, String)>,
    query: Vec<(String, String)>,
    /// The client prefixes it takes (empty: any).
    clients: Vec<IpNet>,
    pub pool: Label,
    /// What the route answers by itself (then it has no pool).
    pub answer: Option<OwnAnswer>,
    /// Keep a client on the pool its split gave it (cookie `sluice_pool`).
    pub sticky: bool,
    /// The whole request, every try (`timeout_ms`).
    pub timeout: Duration,
    /// One try, until its answer's head (`try_timeout_ms`).
    pub try_timeout: Option<Duration>,
    /// The longest request body the route takes, when it says (else the listener's).
    pub max_body_bytes: Option<u64>,
    /// Other pools and their share (percent) of this route's requests.
    split: Vec<(Label, f64)>,
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    pub shadow: Option<Shadow>,
    pub cache: Option<CacheConfig>,
    pub compress: Option<CompressConfig>,
    pub retries: u32,
    /// What the retries retry: a broken exchange, these statuses.
    pub retry_on: crate::config::RetryOn,
    retry_budget_percent: f64,
    /// The longest request body kept for another try (0: none).
    pub retry_buffer_bytes: usize,
    pub fallback: Option<Fallback>,
    /// The path prefix the route matches and what replaces it for the backend.
    pub rewrite: Option<(String, String)>,
    /// Fields set on and removed from the upstream request and the client's answer.
    pub request_headers: HeaderEdits,
    pub response_headers: HeaderEdits,
    /// Whether gRPC-Web calls go to its pool as gRPC (`phase::grpc_web`).
    pub grpc_web: bool,
    /// Its CORS policy (`phase::cors`).
    pub cors: Option<Arc<CorsPolicy>>,
    /// Whether its requests are written to the access log.
    pub access_log: bool,
    /// Whether a backend's error answer is replaced by the listener's page for its status.
    pub intercept_errors: bool,
    /// A share of its requests held or refused before a backend sees them.
    pub fault: Option<crate::config::Fault>,
    /// Rate-limit buckets, the retry budget and credentials (kept across rebuilds).
    pub runtime: Arc<RouteRuntime>,
}

impl CompiledRoute {
    /// Whether the client may use this route (allow list, if any, then deny list).
    pub fn admits(&self, client: IpAddr) -> bool {
        (self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&client)))
            && !self.deny.iter().any(|n| n.contains(&client))
    }

    /// Takes one retry from the route's budget, if there is one left.
    pub fn take_retry(&self) -> bool {
        self.runtime.take_retry(self.retry_budget_percent)
    }

    /// This route's label of `pool`, if it is one this route sends to.
    pub fn serves(&self, pool: &str) -> Option<&Label> {
        std::iter::once(&self.pool).chain(self.split.iter().map(|(p, _)| p)).find(|p| &***p == pool)
    }

    /// The pool for a request, given a uniform draw in [0, 100).
    pub fn pool_for(&self, draw: f64) -> &Label {
        let mut edge = 0.0;
        for (pool, percent) in &self.split {
            edge += percent;
            if draw < edge {
                return pool;
            }
        }
        &self.pool
    }

    pub(super) fn compile(route: &Route, runtime: &Runtime) -> CompiledRoute {
        CompiledRoute {
            split: route.split.iter().map(|(p, share)| (Label::from(p.as_str()), *share)).collect(),
            allow: route.allow.clone(),
            deny: route.deny.clone(),
            shadow: route.shadow.clone(),
            cache: route.cache.clone(),
            compress: route.compress.clone(),
            retries: route.retries,
            retry_on: route.retry_on.clone(),
            retry_budget_percent: route.retry_budget_percent,
            retry_buffer_bytes: route.retry_buffer_bytes,
            runtime: runtime.route(route),
            fallback: route.fallback.clone(),
            rewrite: match (&route.path, &route.rewrite_prefix) {
                (PathMatch::Prefix(prefix), Some(with)) => Some((prefix.clone(), with.clone())),
                _ => None,
            },
            request_headers: route.request_headers.clone(),
            response_headers: route.response_headers.clone(),
            grpc_web: route.grpc_web,
            cors: route.cors.as_ref().map(|c| Arc::new(CorsPolicy::new(c))),
            access_log: route.access_log,
            intercept_errors: route.intercept_errors,
            fault: route.fault,
            name: route.name.as_str().into(),
            shadow_label: format!("{}:shadow", route.name).into(),
            fill_label: format!("{}:fill", route.name).into(),
            host: route.host.clone(),
            path: match &route.path {
                PathMatch::Any => CompiledPath::Any,
                PathMatch::Exact(p) => CompiledPath::Exact(p.clone()),
                PathMatch::Prefix(p) => CompiledPath::Prefix(p.clone()),
                // Validated when the config was read.
                PathMatch::Regex(r) => CompiledPath::Regex(Regex::new(r).expect("validated regex")),
            },
            method: route.method.as_deref().and_then(|m| Method::from_bytes(m.as_bytes()).ok()),
            headers: route.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            cookies: route.cookies.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            query: route.query.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            clients: route.clients.clone(),
            sticky: route.sticky,
            // A route that answers by itself has the label of no pool.
            pool: route.pool.as_deref().unwrap_or_default().into(),
            answer: route.answer.clone(),
            timeout: route.timeout,
            try_timeout: route.try_timeout,
            max_body_bytes: route.max_body_bytes,
        }
    }

    pub(super) fn matches<B>(&self, host: &str, request: &Request<B>, client: IpAddr) -> bool {
        let host_ok = match &self.host {
            None => true,
            Some(h) => match h.strip_prefix("*.") {
                Some(parent) => {
                    host.len() > parent.len() + 1
                        && host.ends_with(parent)
                        && host[..host.len() - parent.len()].ends_with('.')
                }
                None => host == h,
            },
        };
        let path = request.uri().path();
        let path_ok = match &self.path {
            CompiledPath::Any => true,
            CompiledPath::Exact(p) => path == p,
            CompiledPath::Prefix(p) => path.starts_with(p.as_str()),
            CompiledPath::Regex(r) => r.is_match(path),
        };
        host_ok
            && path_ok
            && self.method.as_ref().is_none_or(|m| m == request.method())
            && self
                .headers
                .iter()
                .all(|(k, v)| request.headers().get(k).is_some_and(|h| h.as_bytes() == v.as_bytes()))
            && self.cookies.iter().all(|(k, v)| cookie(request.headers(), k) == Some(v.as_str()))
            && self
                .query
                .iter()
                .all(|(k, v)| query_param(request.uri().query().unwrap_or_default(), k) == Some(v))
            && (self.clients.is_empty() || self.clients.iter().any(|n| n.contains(&client)))
    }
}

/// The value of cookie `name` in a request's Cookie headers.
pub fn cookie<'a>(headers: &'a hyper::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The value of the first parameter `name` of a query, as sent (`a` in `x=1&name=a`; empty in
/// `x=1&name`); None if there is none.
pub fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| match pair.split_once('=') {
        Some((key, value)) if key == name => Some(value),
        None if pair == name => Some(""),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{
        config::Config,
        proxy::{runtime::Runtime, snapshot::Snapshot},
        state::State,
    };

    #[test]
    fn a_route_may_match_query_parameters_as_sent() {
        let text = "[dataplane]\ninterface = \"lo\"\n[[pool]]\nname = \"p\"\nbackends = [{ address = \"10.0.0.1\" }]\n\
             [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\n\
             [[route]]\nname = \"v2\"\nlistener = \"l\"\npool = \"p\"\nquery = { version = \"2\", beta = \"\" }\n\
             [[route]]\nname = \"rest\"\nlistener = \"l\"\npool = \"p\"\n";
        let s = Snapshot::build(
            &State::new(Config::parse(Path::new("t.toml"), text).unwrap()),
            &Runtime::default(),
        );
        let routed = |target: &str| {
            let request = Request::get(target).body(()).unwrap();
            s.route("l", "a.test", &request, [192, 0, 2, 1].into()).map(|r| r.name.to_string())
        };
        for target in ["/?version=2&beta", "/a/b?beta=&x=1&version=2", "/?version=2&beta&version=3"] {
            assert_eq!(routed(target).as_deref(), Some("v2"), "{target}");
        }
        for target in
            ["/?version=2", "/?version=3&beta", "/?version=3&version=2&beta", "/?beta&version=%32", "/"]
        {
            assert_eq!(routed(target).as_deref(), Some("rest"), "{target}");
        }
    }

    #[test]
    fn a_query_parameter_is_its_first_value_as_sent() {
        assert_eq!(query_param("a=1&b=2&a=3", "a"), Some("1"));
        assert_eq!(query_param("ab=1&b=%20x", "b"), Some("%20x"));
        assert_eq!(query_param("b&a=1", "b"), Some(""));
        assert_eq!(query_param("ab=1", "b"), None);
        assert_eq!(query_param("", "b"), None);
    }

    #[test]
    fn a_route_may_match_its_clients_by_prefix_of_either_family() {
        let text = "[[pool]]\nname = \"p\"\nbackends = [{ address = \"10.0.0.1\" }]\n\
             [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\n\
             [[route]]\nname = \"inside\"\nlistener = \"l\"\npool = \"p\"\nclients = [\"10.0.0.0/8\", \"fd00::/8\", \"192.0.2.7\"]\n\
             [[route]]\nname = \"rest\"\nlistener = \"l\"\npool = \"p\"\n";
        let s = Snapshot::build(
            &State::new(Config::parse(Path::new("t.toml"), text).unwrap()),
            &Runtime::default(),
        );
        let request = Request::get("/").body(()).unwrap();
        let routed = |client: &str| {
            s.route("l", "a.test", &request, client.parse().unwrap()).unwrap().name.to_string()
        };
        for client in ["10.1.2.3", "fd00::1", "192.0.2.7"] {
            assert_eq!(routed(client), "inside", "{client}");
        }
        for client in ["11.0.0.1", "2001:db8::1", "192.0.2.8"] {
            assert_eq!(routed(client), "rest", "{client}");
        }
        let bad = text.replace("\"10.0.0.0/8\"", "\"ten\"");
        let found = Config::parse(Path::new("t.toml"), &bad).unwrap_err().to_string();
        assert!(found.contains("a prefix like 10.0.0.0/8"), "{found}");
    }
}
