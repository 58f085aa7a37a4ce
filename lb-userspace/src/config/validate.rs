//! From the raw structs to the typed model: every error collected with its file and line
//! (nothing stops at the first). This file has the error collector, the shared helpers and the
//! order of the sections; each section's checks are in `validate/` (dataplane, pools, vips and
//! deny, listeners, routes and their cors, cluster for `[bgp]` and `[cluster]`).
mod cluster;
mod cors;
mod dataplane;
mod listeners;
mod pools;
mod routes;
mod vips;

use super::raw::*;
use super::*;

/// Collects errors against one source text, turning byte spans into line numbers.
pub(super) struct Errors<'a> {
    pub(super) file: &'a Path,
    pub(super) text: &'a str,
    pub(super) found: Vec<ConfigError>,
    /// Whether files the config names (certificates, keys, key lists) are checked for
    /// readability; not for a config an admin client sent (lbd opens no path a client names).
    pub(super) open_files: bool,
}

/// `text` with the section (from its `[header]` line to the next header) around byte `at`
/// replaced by empty lines; None when there is no header to cut at (a syntax error, or one in
/// the top-level keys), since nothing more can be read then.
pub(super) fn blank_section(text: &str, at: usize) -> Option<String> {
    let is_header = |line: &str| line.trim_start().starts_with('[');
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut offset = 0;
    let mut line_of_error = lines.len().saturating_sub(1);
    for (i, line) in lines.iter().enumerate() {
        if at < offset + line.len() {
            line_of_error = i;
            break;
        }
        offset += line.len();
    }
    let start = (0..=line_of_error).rev().find(|&i| is_header(lines[i]))?;
    let end = (line_of_error + 1..lines.len()).find(|&i| is_header(lines[i])).unwrap_or(lines.len());
    let blanked: String = lines
        .iter()
        .enumerate()
        .map(|(i, line)| if (start..end).contains(&i) { "\n" } else { line })
        .collect();
    // A section that blanks to the same text (an error toml reports again) ends the search.
    (blanked != text).then_some(blanked)
}

/// Why `addr` cannot be a VIP's or a backend's address, if it cannot.
pub(super) fn not_a_host(addr: IpAddr) -> Option<&'static str> {
    if addr.is_unspecified() {
        Some("the unspecified address is no host")
    } else if addr.is_multicast() {
        Some("a multicast address is no host")
    } else if addr == IpAddr::V4(Ipv4Addr::BROADCAST) {
        Some("the broadcast address is no host")
    } else {
        None
    }
}

/// A name cut short for a message.
pub(super) fn short(name: &str) -> String {
    match name.char_indices().nth(40) {
        Some((at, _)) => format!("{}…", &name[..at]),
        None => name.to_owned(),
    }
}

impl Errors<'_> {
    /// A name must be 1 to `MAX_NAME_BYTES` bytes.
    pub(super) fn name(&mut self, name: &Spanned<String>, what: &str) {
        let n = name.get_ref().len();
        if n == 0 || n > MAX_NAME_BYTES {
            self.at(
                name.span(),
                format!("{what} name must be 1 to {MAX_NAME_BYTES} bytes (this one has {n})"),
            );
        }
    }

    pub(super) fn line_of(&self, span: Range<usize>) -> usize {
        self.text[..span.start.min(self.text.len())].matches('\n').count() + 1
    }

    pub(super) fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        let line = self.line_of(span);
        self.found.push(ConfigError { file: self.file.to_owned(), line, message: message.into() });
    }

    /// Parses a spanned string with `parse`, reporting `what` on failure.
    pub(super) fn parse<T>(
        &mut self,
        value: &Spanned<String>,
        what: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Option<T> {
        let parsed = parse(value.get_ref());
        if parsed.is_none() {
            self.at(value.span(), format!("`{}` is not {what}", value.get_ref()));
        }
        parsed
    }
}

/// `[proxy] busy_poll_us`: at most `MAX_BUSY_POLL_US` (a longer spin only burns the core).
fn busy_poll(raw: RawProxy, errors: &mut Errors<'_>) -> Duration {
    let Some(us) = raw.busy_poll_us else { return Duration::from_micros(DEFAULT_BUSY_POLL_US) };
    if *us.get_ref() > MAX_BUSY_POLL_US {
        errors.at(us.span(), format!("busy_poll_us must be at most {MAX_BUSY_POLL_US} (10 ms)"));
        return Duration::ZERO;
    }
    Duration::from_micros(*us.get_ref())
}

/// The longest busy poll `[proxy] busy_poll_us` takes.
const MAX_BUSY_POLL_US: u64 = 10_000;
/// The default: short enough that a lightly loaded worker spends little on it (at most 40 µs
/// after each burst of work), long enough to catch a backend's answer or a client's next
/// packet in a busy exchange (docs/performance.md: against 25 µs, TLS keep-alive 80.9k → 82.7–83.1k
/// req/s, new handshakes +3%, CPU per handshake 0.81–0.83× → 0.86–0.87× nginx's).
const DEFAULT_BUSY_POLL_US: u64 = 40;

/// An allow or deny list, or trusted proxies: prefixes, or addresses (a prefix of their full length).
pub(super) fn nets(list: Vec<Spanned<String>>, errors: &mut Errors) -> Vec<IpNet> {
    list.iter()
        .filter_map(|n| {
            errors.parse(n, "a prefix like 10.0.0.0/8", |s| {
                s.parse::<IpNet>().ok().or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
            })
        })
        .collect()
}

pub(super) fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

pub(super) fn validate(mut raw: RawConfig, errors: &mut Errors) -> Config {
    let dp = dataplane::check(&mut raw, errors);
    // Relative paths (certificates, key files) are relative to the config file's directory.
    let base = errors.file.parent().map(Path::to_path_buf).unwrap_or_default();
    let resolve = |p: Spanned<PathBuf>| {
        let span = p.span();
        let path = p.into_inner();
        Spanned::new(span, if path.is_relative() { base.join(path) } else { path })
    };
    let pools = pools::check(raw.pool, &resolve, errors);
    let vips = vips::check(raw.vip, &pools, dp.max_vips, errors);
    let deny = vips::deny(raw.deny, errors);
    let listeners = listeners::check(raw.listener, &vips, &resolve, errors);
    let routes = routes::check(raw.route, &pools, &listeners, &base, &resolve, errors);
    let (bgp, cluster) = cluster::check(raw.bgp, raw.cluster, dp.present, errors);
    let resolver = raw.resolver.map(|r| cluster::resolver(r, errors));
    Config {
        dataplane: dp.present,
        interface: dp.interface,
        interface_line: dp.interface_line,
        xdp_mode: dp.xdp_mode,
        pin_dir: dp.pin_dir,
        next_hop_mac: dp.next_hop_mac,
        encap_source_v4: dp.encap_source_v4,
        encap_source_v6: dp.encap_source_v6,
        max_vips: dp.max_vips,
        flow_grace: dp.flow_grace,
        syn_limit: dp.syn_limit,
        redirect_interface: dp.redirect_interface,
        admin_socket: raw.admin.socket.unwrap_or_else(|| PathBuf::from(DEFAULT_ADMIN_SOCKET)),
        metrics: raw
            .admin
            .metrics
            .and_then(|m| errors.parse(&m, "an address:port like 127.0.0.1:9100", |s| s.parse().ok())),
        listeners,
        routes,
        busy_poll: busy_poll(raw.proxy, errors),
        vips,
        pools,
        deny,
        bgp,
        cluster,
        resolver,
    }
}
