//! A route's CORS policy compiled once: which origins' pages may read its answers, and the
//! fields a preflight's answer says (`phase::cors` applies it to requests).
use hyper::header::HeaderValue;

use crate::config::CorsConfig;

/// A route's policy, its fields made once.
#[derive(Debug)]
pub struct CorsPolicy {
    origins: Origins,
    /// `Access-Control-Allow-Credentials: true` (cookies and Authorization).
    pub credentials: bool,
    pub methods: Option<HeaderValue>,
    pub headers: Option<HeaderValue>,
    pub expose: Option<HeaderValue>,
    pub max_age: Option<HeaderValue>,
}

#[derive(Debug)]
enum Origins {
    /// `*`: any page; its answers say `*` (the policy takes no credentials then).
    Any,
    Listed(Vec<Pattern>),
}

#[derive(Debug)]
enum Pattern {
    Exact(String),
    /// `https://*.example.com:8443`: `https://`, then one or more labels, then
    /// `.example.com:8443`.
    Subdomains {
        scheme: String,
        rest: String,
    },
}

impl Pattern {
    fn matches(&self, origin: &[u8]) -> bool {
        match self {
            Pattern::Exact(exact) => origin.eq_ignore_ascii_case(exact.as_bytes()),
            Pattern::Subdomains { scheme, rest } => {
                let (scheme, rest) = (scheme.as_bytes(), rest.as_bytes());
                origin.len() > scheme.len() + rest.len()
                    && origin[..scheme.len()].eq_ignore_ascii_case(scheme)
                    && origin[origin.len() - rest.len()..].eq_ignore_ascii_case(rest)
                    && origin[scheme.len()..origin.len() - rest.len()]
                        .iter()
                        .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(b))
            }
        }
    }
}

impl CorsPolicy {
    /// The policy of a validated config.
    pub fn new(config: &CorsConfig) -> CorsPolicy {
        let origins = match config.allow_origins.as_slice() {
            [any] if any == "*" => Origins::Any,
            listed => Origins::Listed(
                listed
                    .iter()
                    .map(|origin| match origin.split_once("://*") {
                        Some((scheme, rest)) => {
                            Pattern::Subdomains { scheme: format!("{scheme}://"), rest: rest.into() }
                        }
                        None => Pattern::Exact(origin.clone()),
                    })
                    .collect(),
            ),
        };
        // Validated: tokens and field names, joined with `, ` (always a field value).
        let list = |list: &[String]| {
            (!list.is_empty()).then(|| HeaderValue::try_from(list.join(", ")).expect("validated names"))
        };
        CorsPolicy {
            origins,
            credentials: config.allow_credentials,
            methods: list(&config.allow_methods),
            headers: list(&config.allow_headers),
            expose: list(&config.expose_headers),
            max_age: config.max_age_s.map(HeaderValue::from),
        }
    }

    /// Whether any origin may read the answers (`*`): they say `*`, and need no Vary.
    pub fn any_origin(&self) -> bool {
        matches!(self.origins, Origins::Any)
    }

    /// Whether a page of `origin` (as a browser sent it) may read the answers.
    pub fn allows(&self, origin: &[u8]) -> bool {
        match &self.origins {
            Origins::Any => true,
            Origins::Listed(patterns) => patterns.iter().any(|p| p.matches(origin)),
        }
    }
}
