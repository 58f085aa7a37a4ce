//! A route's `cors`: its origins, the methods and fields its callers may use, and the rule
//! that a policy letting in cookies names its origins.
use super::*;

/// The route's policy with its lists lowercased (methods kept as written: they are
/// case-sensitive), each entry checked.
pub(in crate::config) fn check(raw: Spanned<RawCors>, errors: &mut Errors) -> CorsConfig {
    let at = raw.span();
    let raw = raw.into_inner();
    let mut error = |message: String| errors.at(at.clone(), format!("cors: {message}"));
    let allow_origins: Vec<String> = raw.allow_origins.iter().map(|o| o.to_ascii_lowercase()).collect();
    if allow_origins.is_empty() {
        error("allow_origins names no origin (`*` is any)".into());
    }
    if allow_origins.len() > 1 && allow_origins.iter().any(|o| o == "*") {
        error("`*` in allow_origins is every origin: list no others beside it".into());
    }
    for origin in allow_origins.iter().filter(|o| *o != "*" && !is_origin_pattern(o)) {
        error(format!(
            "`{origin}` is not an origin (`https://app.example.com`, `https://*.example.com:8443`)"
        ));
    }
    for method in raw.allow_methods.iter().filter(|m| *m != "*") {
        if hyper::Method::from_bytes(method.as_bytes()).is_err() {
            error(format!("`{method}` is not an HTTP method"));
        }
    }
    let names = |list: Vec<String>, what: &str, error: &mut dyn FnMut(String)| -> Vec<String> {
        let list: Vec<String> = list.iter().map(|n| n.to_ascii_lowercase()).collect();
        for name in list.iter().filter(|n| *n != "*") {
            if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                error(format!("{what}: `{name}` is not a field name"));
            }
        }
        list
    };
    let allow_headers = names(raw.allow_headers, "allow_headers", &mut error);
    let expose_headers = names(raw.expose_headers, "expose_headers", &mut error);
    if raw.allow_credentials {
        let lists = [
            ("allow_origins", &allow_origins),
            ("allow_methods", &raw.allow_methods),
            ("allow_headers", &allow_headers),
            ("expose_headers", &expose_headers),
        ];
        for (what, _) in lists.iter().filter(|(_, list)| list.iter().any(|e| e == "*")) {
            error(format!(
                "{what} has `*` beside allow_credentials: answers made with a user's cookies go only to \
                 the origins and with the fields listed by name"
            ));
        }
    }
    CorsConfig {
        allow_origins,
        allow_methods: raw.allow_methods,
        allow_headers,
        expose_headers,
        max_age_s: raw.max_age_s,
        allow_credentials: raw.allow_credentials,
    }
}

/// `scheme://host[:port]` as a browser serializes an origin (lowercase, no path, no trailing
/// slash), its host a DNS name, an IPv4 address or a bracketed IPv6 one, or `*.` and a name.
fn is_origin_pattern(origin: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else { return false };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_lowercase())
        && scheme.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, Some(port)),
        _ => (authority, None),
    };
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0) && !p.starts_with('0'));
    let name = host.strip_prefix("*.").unwrap_or(host);
    let name_ok = match name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        Some(v6) => name.len() == host.len() && v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !name.is_empty()
                && name.split('.').all(|label| {
                    !label.is_empty()
                        && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                })
        }
    };
    scheme_ok && port_ok && name_ok
}

#[cfg(test)]
mod tests {
    use super::is_origin_pattern;

    #[test]
    fn origins_are_a_scheme_a_host_and_a_port() {
        for good in [
            "https://app.example.com",
            "http://localhost:8080",
            "https://*.example.com",
            "https://*.example.com:8443",
            "http://127.0.0.1:3000",
            "http://[::1]:8080",
            "chrome-extension://abcdef",
        ] {
            assert!(is_origin_pattern(good), "{good}");
        }
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "https://",
            "https://a..b",
            "https://app.example.com:0",
            "https://app.example.com:080",
            "https://app.example.com:99999",
            "https://*",
            "https://a.*.example.com",
            "https://*.[::1]",
            "https://user@app.example.com",
            "1http://a",
            "https://[zz]",
        ] {
            assert!(!is_origin_pattern(bad), "{bad}");
        }
    }
}
