//! `[[listener]]`: addresses, TLS, limits and timeouts, trusted proxies; every L7 VIP needs one.
use super::*;

/// IPv6 clients counted by their /64 (one client's network, as Cloudflare groups them): an
/// address of its own per connection costs such a client nothing.
const DEFAULT_CLIENT_IPV6_PREFIX: u8 = 64;

/// The listeners, each checked in steps (its address, its limits, its TLS) and given its
/// defaults; then every L7 VIP must have one listening.
pub(in crate::config) fn check(
    raw_listeners: Vec<RawListener>,
    vips: &[Vip],
    resolve: &impl Fn(Spanned<PathBuf>) -> Spanned<PathBuf>,
    errors: &mut Errors,
) -> Vec<Listener> {
    let mut listeners = Vec::new();
    // Listeners whose ACME orders are validated over HTTP (the name, where it is defined).
    let mut http01 = Vec::new();
    for raw in raw_listeners {
        let name = raw.name.get_ref().clone();
        if listeners.iter().any(|l: &Listener| l.name == name) {
            errors.at(raw.name.span(), format!("listener `{name}` is defined twice"));
        }
        errors.name(&raw.name, "listener");
        let Some(address) = address(&raw, vips, errors) else {
            continue;
        };
        limits(&raw, errors);
        let tls = raw.tls.map(|t| tls(t, &raw.name, address.port(), resolve, errors));
        if raw.proxy_protocol && tls.as_ref().is_some_and(|tls| tls.http3.is_some()) {
            // A balancer's PROXY header comes over TCP; QUIC's datagrams would come from it
            // with no client address, or straight from clients the listener does not expect.
            errors.at(
                raw.name.span(),
                format!("listener `{name}`: http3 and proxy_protocol: QUIC carries no PROXY header"),
            );
        }
        // Listeners whose ACME certificates share a folder (the least of their names) share the
        // certificate, so they must ask for the same one.
        if let Some(acme) = tls.as_ref().and_then(|tls| tls.acme.as_ref()) {
            let same_folder = listeners.iter().find(|l: &&Listener| {
                l.tls
                    .as_ref()
                    .and_then(|tls| tls.acme.as_ref())
                    .is_some_and(|other| other.folder == acme.folder && other != acme)
            });
            if let Some(other) = same_folder {
                errors.at(
                    raw.name.span(),
                    format!(
                        "listener `{name}`: acme: the same least name as listener `{}`'s, whose certificate it would share (its folder {}), but other settings",
                        other.name,
                        acme.folder.display()
                    ),
                );
            }
        }
        if tls
            .as_ref()
            .and_then(|tls| tls.acme.as_ref())
            .is_some_and(|a| a.challenge == AcmeChallenge::Http01)
        {
            http01.push(raw.name.clone());
        }
        let client_address = raw.client_address.map(|c| client_address(c, errors));
        let error_pages = raw.error_pages.map_or_else(Vec::new, |pages| error_pages(pages, resolve, errors));
        listeners.push(Listener {
            name,
            address,
            tls,
            redirect_https: raw.redirect_https,
            access_log: raw.access_log,
            access_log_format: raw.access_log_format,
            access_log_filter: raw.access_log_filter.map(|f| log_filter(f, errors)),
            max_connections: raw.max_connections.unwrap_or(10_000),
            max_connections_per_client: raw.max_connections_per_client,
            client_ipv6_prefix: raw.client_ipv6_prefix.unwrap_or(DEFAULT_CLIENT_IPV6_PREFIX),
            header_read_timeout: Duration::from_millis(raw.header_read_timeout_ms.unwrap_or(10_000)),
            handshake_timeout: Duration::from_millis(raw.handshake_timeout_ms.unwrap_or(10_000)),
            first_byte_timeout: Duration::from_millis(raw.first_byte_timeout_ms.unwrap_or(10_000)),
            defer_accept: raw.defer_accept,
            idle_timeout: Duration::from_millis(raw.idle_timeout_ms.unwrap_or(60_000)),
            stream_idle_timeout: Duration::from_millis(raw.stream_idle_timeout_ms.unwrap_or(300_000)),
            max_connection_age: raw.max_connection_age_ms.map(Duration::from_millis),
            http2_max_concurrent_streams: raw.http2_max_concurrent_streams.unwrap_or(200),
            max_body_bytes: raw.max_body_bytes.unwrap_or(10 << 20),
            max_header_bytes: raw.max_header_bytes.unwrap_or(16 << 10),
            drain_timeout: Duration::from_millis(raw.drain_timeout_ms.unwrap_or(10_000)),
            client_address,
            proxy_protocol: raw.proxy_protocol,
            error_pages,
        });
    }
    every_l7_vip_heard(vips, &listeners, errors);
    http01_heard(&listeners, &http01, errors);
    listeners
}

/// A CA's HTTP-01 validation asks on port 80: listeners whose `acme` uses it need a plain
/// listener on port 80 to answer (any address: the names' addresses are the DNS's to say).
fn http01_heard(listeners: &[Listener], http01: &[Spanned<String>], errors: &mut Errors) {
    if listeners.iter().any(|l| l.tls.is_none() && l.address.port() == 80) {
        return;
    }
    for name in http01 {
        errors.at(
            name.span(),
            format!(
                "listener `{}`: acme: http-01 needs a plain listener on port 80, where the CA asks",
                name.get_ref()
            ),
        );
    }
}

/// A listener's `access_log_filter`: a status of 100 to 599, a time of 1 ms to an hour, a share
/// of 0 to 100; one at least.
fn log_filter(raw: Spanned<RawLogFilter>, errors: &mut Errors) -> LogFilter {
    let at = raw.span();
    let raw = raw.into_inner();
    if raw.status_at_least.is_some_and(|s| !(100..=599).contains(&s)) {
        errors.at(at.clone(), "access_log_filter: status_at_least must be 100 to 599");
    }
    if raw.slower_than_ms.is_some_and(|ms| !(1..=3_600_000).contains(&ms)) {
        errors.at(at.clone(), "access_log_filter: slower_than_ms must be 1 to 3600000");
    }
    if raw.sample_percent.is_some_and(|p| !(0.0..=100.0).contains(&p)) {
        errors.at(at.clone(), "access_log_filter: sample_percent must be 0 to 100");
    }
    if raw.status_at_least.is_none() && raw.slower_than_ms.is_none() && raw.sample_percent.is_none() {
        errors.at(at, "access_log_filter: give status_at_least, slower_than_ms or sample_percent");
    }
    LogFilter {
        status_at_least: raw.status_at_least,
        slower_than: raw.slower_than_ms.map(Duration::from_millis),
        sample_percent: raw.sample_percent,
    }
}

/// The types of the files an error page may be, by extension.
const ERROR_PAGE_TYPES: [(&str, &str); 5] = [
    ("html", "text/html; charset=utf-8"),
    ("htm", "text/html; charset=utf-8"),
    ("json", "application/json"),
    ("txt", "text/plain; charset=utf-8"),
    ("xml", "application/xml"),
];

/// A listener's error pages: statuses 400 to 599, each a readable file (when files are
/// checked) of a known type and at most `MAX_ERROR_PAGE_BYTES`.
fn error_pages(
    raw: Spanned<BTreeMap<String, PathBuf>>,
    resolve: &impl Fn(Spanned<PathBuf>) -> Spanned<PathBuf>,
    errors: &mut Errors,
) -> Vec<ErrorPage> {
    let at = raw.span();
    let mut pages = Vec::new();
    for (status, file) in raw.into_inner() {
        let Some(status) = status.parse::<u16>().ok().filter(|s| (400..=599).contains(s)) else {
            errors.at(at.clone(), format!("error_pages: `{status}` is not a status from 400 to 599"));
            continue;
        };
        let extension = file.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
        let Some(&(_, content_type)) = ERROR_PAGE_TYPES.iter().find(|(e, _)| *e == extension) else {
            errors.at(
                at.clone(),
                format!(
                    "error_pages: {status}: {} is not a .html, .htm, .json, .txt or .xml file (its type is told by its name)",
                    file.display()
                ),
            );
            continue;
        };
        let file = resolve(Spanned::new(at.clone(), file)).into_inner();
        if errors.open_files {
            match files::read_file(&file).map_err(|e| e.to_string()).and_then(|t| error_page_body(&t)) {
                Ok(_) => {}
                Err(err) => {
                    errors.at(at.clone(), format!("error_pages: {status}: {}: {err}", file.display()))
                }
            }
        }
        pages.push(ErrorPage { status, file, content_type });
    }
    pages
}

/// Where the listener reads a request's client address behind trusted proxies: a field name
/// and at least one trusted prefix.
fn client_address(raw: Spanned<RawClientAddress>, errors: &mut Errors) -> ClientAddress {
    let at = raw.span();
    let raw = raw.into_inner();
    let header = hyper::header::HeaderName::from_bytes(raw.header.to_ascii_lowercase().as_bytes());
    if header.is_err() {
        errors.at(at.clone(), format!("client_address: `{}` is not a field name", raw.header));
    }
    if raw.trusted.is_empty() {
        errors.at(at, "client_address: trusted names no proxy (a prefix like 10.0.0.0/8)");
    }
    ClientAddress {
        header: header.unwrap_or(hyper::header::HeaderName::from_static("x-forwarded-for")),
        trusted: nets(raw.trusted, errors),
    }
}

/// The listener's address, if it parses: a port to listen on, not an L4 VIP's.
fn address(raw: &RawListener, vips: &[Vip], errors: &mut Errors) -> Option<std::net::SocketAddr> {
    let name = raw.name.get_ref();
    let address =
        errors.parse(&raw.address, "an address:port", |s| s.parse::<std::net::SocketAddr>().ok())?;
    if address.port() == 0 {
        errors
            .at(raw.address.span(), format!("listener `{}`: port 0 is not a port to listen on", short(name)));
    }
    // An L4 VIP on the same address and port would take the listener's packets in XDP.
    if let Some(vip) = vips.iter().find(|v: &&Vip| {
        v.mode == VipMode::L4
            && v.port == address.port()
            && (v.addr == address.ip() || address.ip().is_unspecified())
    }) {
        errors.at(
            raw.address.span(),
            format!(
                "listener `{}` on {address} is also L4 VIP `{}`: XDP would take its packets",
                short(name),
                vip.name
            ),
        );
    }
    Some(address)
}

/// The listener's TLS: its files resolved against the config's folder (and readable, when
/// files are checked), at least one certificate, the cipher suites named.
fn tls(
    raw: RawTls,
    listener: &Spanned<String>,
    port: u16,
    resolve: &impl Fn(Spanned<PathBuf>) -> Spanned<PathBuf>,
    errors: &mut Errors,
) -> Tls {
    let name = listener.get_ref();
    let cipher_suites =
        raw.cipher_suites.as_ref().map(|listed| cipher_suites(listed, name, errors)).unwrap_or_default();
    let http3 = http3(&raw, listener, port, &cipher_suites, errors);
    let certificates: Vec<RawCertificate> = raw
        .certificates
        .into_iter()
        .map(|c| RawCertificate { cert: resolve(c.cert), key: resolve(c.key), ocsp: c.ocsp.map(resolve) })
        .collect();
    let client_ca = raw.client_ca.map(resolve);
    let acme = raw.acme.map(|acme| self::acme(acme, name, resolve, errors));
    if certificates.is_empty() && acme.is_none() {
        errors
            .at(listener.span(), format!("listener `{name}`: tls needs at least one certificate (or acme)"));
    }
    if acme.as_ref().is_some_and(|(acme, _)| acme.challenge == AcmeChallenge::TlsAlpn01)
        && client_ca.is_some()
    {
        errors.at(
            listener.span(),
            format!("listener `{name}`: acme and client_ca: the CA's validation shows no client certificate"),
        );
    }
    let mut readable = |file: &Spanned<PathBuf>| {
        if !errors.open_files {
            return;
        }
        if let Err(err) = open_regular(file.get_ref()) {
            errors.at(file.span(), format!("cannot read {}: {err}", file.get_ref().display()));
        }
    };
    for c in &certificates {
        readable(&c.cert);
        readable(&c.key);
        if let Some(ocsp) = &c.ocsp {
            readable(ocsp);
        }
    }
    if let Some(ca) = &client_ca {
        readable(ca);
    }
    if let Some(ca) = acme.as_ref().and_then(|(_, ca)| ca.as_ref()) {
        readable(ca);
    }
    if let Some((acme, _)) = acme.as_ref().filter(|_| errors.open_files)
        && let Err(err) = writable_folder(&acme.folder)
    {
        errors.at(listener.span(), format!("listener `{name}`: acme: cannot keep its state: {err}"));
    }
    let mut forward_client_cert_details = ClientCertDetails::default();
    if let Some(listed) = &raw.forward_client_cert_details {
        if !raw.forward_client_cert {
            errors.at(
                listed.span(),
                format!("listener `{name}`: forward_client_cert_details needs forward_client_cert"),
            );
        }
        for detail in listed.get_ref() {
            match detail.as_str() {
                "cert" => forward_client_cert_details.cert = true,
                "chain" => forward_client_cert_details.chain = true,
                other => errors.at(
                    listed.span(),
                    format!(
                        "listener `{name}`: forward_client_cert_details: {other:?} is not `cert` or `chain`"
                    ),
                ),
            }
        }
    }
    if raw.forward_client_cert && client_ca.is_none() {
        errors.at(
            listener.span(),
            format!(
                "listener `{name}`: forward_client_cert needs client_ca (no client certificate to forward)"
            ),
        );
    }
    Tls {
        certificates: certificates
            .into_iter()
            .map(|c| CertFiles {
                cert: c.cert.into_inner(),
                key: c.key.into_inner(),
                ocsp: c.ocsp.map(Spanned::into_inner),
            })
            .collect(),
        client_ca: client_ca.map(Spanned::into_inner),
        cipher_suites,
        forward_client_cert: raw.forward_client_cert,
        forward_client_cert_details,
        acme: acme.map(|(acme, _)| acme),
        http3,
    }
}

/// How long a client is told HTTP/3 is there unless the listener says (nginx's and Caddy's
/// examples say a day: a browser that found it once keeps trying it for that long).
const ALT_SVC_MAX_AGE_S: u64 = 86_400;

/// A listener's HTTP/3: its Alt-Svc field for `port`. Its QUIC Initial packets need
/// TLS13_AES_128_GCM_SHA256 (RFC 9001 §5.2), so a list of suites must have it.
fn http3(
    raw: &RawTls,
    listener: &Spanned<String>,
    port: u16,
    suites: &[rustls::SupportedCipherSuite],
    errors: &mut Errors,
) -> Option<Http3> {
    let name = listener.get_ref();
    let (max_age_s, retry) = (&raw.alt_svc_max_age_s, &raw.http3_retry);
    if !raw.http3 {
        if let Some(age) = max_age_s {
            errors.at(age.span(), format!("listener `{name}`: alt_svc_max_age_s needs http3 = true"));
        }
        if let Some(retry) = retry {
            errors.at(retry.span(), format!("listener `{name}`: http3_retry needs http3 = true"));
        }
        return None;
    }
    let retry = match retry.as_ref().map(|r| r.get_ref().as_str()) {
        None | Some("under_load") => Http3Retry::UnderLoad,
        Some("always") => Http3Retry::Always,
        Some(other) => {
            let at = retry.as_ref().map(Spanned::span).unwrap_or_default();
            errors
                .at(at, format!("listener `{name}`: http3_retry: {other:?} is not `under_load` or `always`"));
            Http3Retry::UnderLoad
        }
    };
    let aes_128 = rustls::CipherSuite::TLS13_AES_128_GCM_SHA256;
    if !suites.is_empty() && !suites.iter().any(|s| s.suite() == aes_128) {
        errors.at(
            listener.span(),
            format!("listener `{name}`: http3 needs TLS13_AES_128_GCM_SHA256 in cipher_suites (QUIC's Initial packets use it)"),
        );
    }
    let age = max_age_s.as_ref().map_or(ALT_SVC_MAX_AGE_S, |age| *age.get_ref());
    let alt_svc = (age > 0).then(|| {
        hyper::header::HeaderValue::from_str(&format!("h3=\":{port}\"; ma={age}"))
            .expect("digits and quotes are a field value")
    });
    Some(Http3 { alt_svc, retry })
}

/// A listener's ACME settings: an https directory, the terms accepted, DNS names, the state
/// folder and the directory's CA resolved against the config's folder (the CA returned apart,
/// to be checked readable).
fn acme(
    raw: Spanned<RawAcme>,
    name: &str,
    resolve: &impl Fn(Spanned<PathBuf>) -> Spanned<PathBuf>,
    errors: &mut Errors,
) -> (Acme, Option<Spanned<PathBuf>>) {
    let span = raw.span();
    let raw = raw.into_inner();
    let mut error = |message: String| errors.at(span.clone(), format!("listener `{name}`: acme: {message}"));
    if !raw.accept_terms {
        error(
            "accept_terms = true is needed: ordering a certificate agrees to the CA's terms of service"
                .into(),
        );
    }
    if !raw.directory.starts_with("https://") || raw.directory.contains(char::is_whitespace) {
        error(format!("directory {:?} is not an https URL", raw.directory));
    }
    if raw.names.is_empty() {
        error("names lists none".into());
    }
    let names: Vec<String> = raw.names.iter().map(|n| n.to_ascii_lowercase()).collect();
    for n in &names {
        if n.starts_with("*.") {
            error(format!("{n}: a wildcard name needs DNS-01, which lbd does not do"));
        } else if !dns_name(n) {
            error(format!("{n:?} is not a DNS name"));
        }
    }
    for c in &raw.contact {
        if !c.contains(':') || c.contains(char::is_whitespace) {
            error(format!("contact {c:?} is not a URL (mailto:ops@example.com)"));
        }
    }
    let external_account = raw.external_account.and_then(|eab| {
        use base64::Engine as _;
        // base64url as the CAs give it, padded or not (some hand out standard base64).
        let key = eab.hmac_key.trim_end_matches('=');
        let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(key)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(key));
        match decoded {
            Ok(hmac_key) if !hmac_key.is_empty() && !eab.kid.is_empty() => {
                Some(ExternalAccount { kid: eab.kid, hmac_key })
            }
            _ => {
                error(
                    "external_account needs a kid and an hmac_key in base64url, as the CA gives them".into(),
                );
                None
            }
        }
    });
    let directory_ca = raw.directory_ca.map(resolve);
    let mut names = names;
    names.sort();
    names.dedup();
    // By the certificate, not the listener: the IPv4 and IPv6 listeners of one site share it
    // (a CA validates a name at either address).
    let folder = resolve(raw.state).into_inner().join(names.first().map_or("-", String::as_str));
    let acme = Acme {
        directory: raw.directory,
        contact: raw.contact,
        names,
        folder,
        directory_ca: directory_ca.as_ref().map(|ca| ca.get_ref().clone()),
        external_account,
        challenge: raw.challenge,
    };
    (acme, directory_ca)
}

/// A DNS name of letters, digits and hyphens in dot-separated labels of 1 to 63 bytes, with a
/// dot inside (as a CA issues for).
fn dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.contains('.')
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The cipher suites a listener lists, as rustls names them: the suites themselves here, once;
/// the TLS setup takes them as they are.
fn cipher_suites(
    listed: &Spanned<Vec<String>>,
    name: &str,
    errors: &mut Errors,
) -> Vec<rustls::SupportedCipherSuite> {
    let known = rustls::crypto::ring::ALL_CIPHER_SUITES;
    let name_of = |s: &rustls::SupportedCipherSuite| format!("{:?}", s.suite());
    if listed.get_ref().is_empty() {
        errors.at(listed.span(), format!("listener `{name}`: cipher_suites lists none"));
    }
    let mut suites = Vec::new();
    for wanted in listed.get_ref() {
        match known.iter().find(|s| name_of(s) == *wanted) {
            Some(suite) => suites.push(*suite),
            None => {
                let names: Vec<String> = known.iter().map(name_of).collect();
                errors.at(
                    listed.span(),
                    format!(
                        "listener `{name}`: unknown cipher suite `{wanted}` (known: {})",
                        names.join(", ")
                    ),
                );
            }
        }
    }
    suites
}

/// The listener's connection cap and timeouts: none of them 0.
fn limits(raw: &RawListener, errors: &mut Errors) {
    let name = raw.name.get_ref();
    if raw.max_connections == Some(0) {
        errors.at(raw.name.span(), format!("listener `{}`: max_connections must be above 0", short(name)));
    }
    if raw.http2_max_concurrent_streams.is_some_and(|n| !(1..=10_000).contains(&n)) {
        errors.at(
            raw.name.span(),
            format!("listener `{}`: http2_max_concurrent_streams must be 1 to 10000", short(name)),
        );
    }
    if raw.client_ipv6_prefix.is_some_and(|bits| !(16..=128).contains(&bits)) {
        errors
            .at(raw.name.span(), format!("listener `{}`: client_ipv6_prefix must be 16 to 128", short(name)));
    }
    if raw.max_connections_per_client == Some(0) {
        errors.at(
            raw.name.span(),
            format!("listener `{}`: max_connections_per_client must be above 0", short(name)),
        );
    }
    for (what, value) in [
        ("header_read_timeout_ms", raw.header_read_timeout_ms),
        ("handshake_timeout_ms", raw.handshake_timeout_ms),
        ("first_byte_timeout_ms", raw.first_byte_timeout_ms),
        ("idle_timeout_ms", raw.idle_timeout_ms),
        ("stream_idle_timeout_ms", raw.stream_idle_timeout_ms),
        ("max_connection_age_ms", raw.max_connection_age_ms),
    ] {
        if value == Some(0) {
            errors.at(raw.name.span(), format!("listener `{name}`: {what} must be above 0"));
        }
    }
}

/// An L7 VIP is passed up to the stack for a listener: one must listen there (on its port, or
/// on any port of a VIP with every port).
fn every_l7_vip_heard(vips: &[Vip], listeners: &[Listener], errors: &mut Errors) {
    for vip in vips.iter().filter(|v| v.mode == VipMode::L7) {
        let heard = listeners.iter().any(|l| {
            (vip.port == 0 || l.address.port() == vip.port)
                && (l.address.ip() == vip.addr || l.address.ip().is_unspecified())
        });
        if !heard {
            errors.at(
                0..0,
                format!(
                    "L7 VIP `{}` ({} port {}) has no listener on that address and port",
                    short(&vip.name),
                    vip.addr,
                    vip.port
                ),
            );
        }
    }
}
