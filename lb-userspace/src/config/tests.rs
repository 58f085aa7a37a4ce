//! Config validation: every broken config gives the expected file:line message.
use super::*;

const BASE: &str = "[dataplane]\ninterface = \"eth0\"\n";

fn errors(text: &str) -> Vec<String> {
    Config::parse(Path::new("t.toml"), text).unwrap_err().0.iter().map(ToString::to_string).collect()
}

fn assert_error(text: &str, expected: &str) {
    let found = errors(text);
    assert!(found.iter().any(|e| e.starts_with(expected)), "expected `{expected}` in {found:?}");
}

#[test]
fn minimal_config_gets_defaults() {
    let config = Config::parse(Path::new("t.toml"), BASE).unwrap();
    assert_eq!(config.interface, "eth0");
    assert_eq!(config.xdp_mode, XdpModeSetting::Auto);
    assert_eq!(config.pin_dir, PathBuf::from(lb_common::PIN_DIR));
    assert_eq!(config.max_vips, 16);
    assert_eq!(config.next_hop_mac, NextHop::Unset);
}

#[test]
fn full_config_parses() {
    let text = format!(
        "{BASE}next_hop_mac = \"02:00:00:00:00:01\"\n\
         [[vip]]\nname = \"web\"\naddress = \"198.19.0.1\"\nport = 80\nprotocol = \"tcp\"\npool = \"web\"\n\
         [[pool]]\nname = \"web\"\nbackends = [{{ address = \"198.18.10.2\" }}, {{ address = \"198.18.11.2\", weight = 50 }}]\n\
         [deny]\nprefixes = [\"203.0.113.0/24\", \"2001:db8::1\"]\n"
    );
    let config = Config::parse(Path::new("t.toml"), &text).unwrap();
    assert_eq!(config.next_hop_mac, NextHop::Mac([2, 0, 0, 0, 0, 1]));
    assert_eq!(config.vips[0].port, 80);
    assert_eq!(config.pool_of(&config.vips[0]).backends[1].weight, 50);
    assert_eq!(config.pool_of(&config.vips[0]).backends[0].weight, DEFAULT_WEIGHT);
    assert_eq!(config.deny[1].to_string(), "2001:db8::1/128");
}

#[test]
fn unknown_key() {
    assert_error(&format!("{BASE}mtu = 1500\n"), "t.toml:3: unknown field `mtu`");
}

#[test]
fn bad_mode() {
    assert_error(&format!("{BASE}xdp_mode = \"fast\"\n"), "t.toml:3: unknown variant `fast`");
}

#[test]
fn empty_interface_and_bad_pin_dir_are_both_reported() {
    let found = errors("[dataplane]\ninterface = \"\"\npin_dir = \"/tmp/x\"\n");
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].starts_with("t.toml:2: interface name"));
    assert!(found[1].starts_with("t.toml:3: pin_dir must be under /sys/fs/bpf"));
}

#[test]
fn bad_mac() {
    assert_error(
        &format!("{BASE}next_hop_mac = \"02:00:00\"\n"),
        "t.toml:3: `02:00:00` is not \"auto\" or a MAC address",
    );
}

#[test]
fn dataplane_errors_come_in_the_order_of_the_file() {
    let text = "[dataplane]\ninterface = \"eth0\"\npin_dir = \"/tmp/x\"\nnext_hop_mac = \"02:00\"\n\
                encap_source_v4 = \"fd00::1\"\nmax_vips = 0\n";
    let lines: Vec<String> =
        errors(text).iter().map(|e| e.split(':').take(2).collect::<Vec<_>>().join(":")).collect();
    assert_eq!(lines, ["t.toml:3", "t.toml:4", "t.toml:5", "t.toml:6"]);
}

#[test]
fn encapsulation_sources_are_addresses_of_their_family() {
    let config = Config::parse(Path::new("t.toml"), BASE).unwrap();
    assert_eq!(config.encap_source_v4, Ipv4Addr::new(172, 16, 0, 0));
    let both = format!("{BASE}encap_source_v4 = \"fd00::1\"\nencap_source_v6 = \"10.0.0.1\"\n");
    assert_error(&both, "t.toml:3: `fd00::1` is not an IPv4 address");
    assert_error(&both, "t.toml:4: `10.0.0.1` is not an IPv6 address");
    let good = format!("{BASE}encap_source_v4 = \"10.9.0.1\"\nencap_source_v6 = \"fd00::9\"\n");
    let config = Config::parse(Path::new("t.toml"), &good).unwrap();
    assert_eq!(
        (config.encap_source_v4.to_string(), config.encap_source_v6.to_string()),
        ("10.9.0.1".into(), "fd00::9".into())
    );
}

#[test]
fn undefined_pool() {
    let text = format!(
        "{BASE}[[vip]]\nname = \"a\"\naddress = \"198.19.0.1\"\nprotocol = \"tcp\"\npool = \"nope\"\n"
    );
    assert_error(&text, "t.toml:7: VIP `a` uses pool `nope`, which is not defined");
}

#[test]
fn bad_vip_address() {
    let text = format!(
        "{BASE}[[vip]]\nname = \"a\"\naddress = \"198.19.0.300\"\nprotocol = \"tcp\"\npool = \"p\"\n"
    );
    assert_error(&text, "t.toml:5: `198.19.0.300` is not an IP address");
}

#[test]
fn duplicate_vip_and_duplicate_pool() {
    let vip =
        "[[vip]]\nname = \"a\"\naddress = \"198.19.0.1\"\nport = 80\nprotocol = \"tcp\"\npool = \"p\"\n";
    let pool = "[[pool]]\nname = \"p\"\n";
    let found = errors(&format!("{BASE}{vip}{vip}{pool}{pool}"));
    assert!(found.iter().any(|e| e.contains("VIP `a` is defined twice")), "{found:?}");
    assert!(found.iter().any(|e| e.contains("198.19.0.1 port 80 is already a VIP")), "{found:?}");
    assert!(found.iter().any(|e| e.contains("pool `p` is defined twice")), "{found:?}");
}

#[test]
fn a_vip_must_be_a_host_address_within_max_vips() {
    // Lines 1-2 BASE, 3 max_vips, then each VIP's `[[vip]]`, name, address, protocol, pool.
    let vip = |name: &str, address: &str| {
        format!("[[vip]]\nname = \"{name}\"\naddress = \"{address}\"\nprotocol = \"tcp\"\npool = \"p\"\n")
    };
    let pool = "[[pool]]\nname = \"p\"\n";
    for (address, why) in [
        ("224.0.0.1", "a multicast address is no host"),
        ("255.255.255.255", "the broadcast address is no host"),
        ("::", "the unspecified address is no host"),
    ] {
        let text = format!("{BASE}max_vips = 4\n{}{pool}", vip("a", address));
        assert_error(&text, &format!("t.toml:6: VIP `a`: {address}: {why}"));
    }
    let two = format!("{BASE}max_vips = 1\n{}{}{pool}", vip("a", "198.19.0.1"), vip("b", "198.19.0.2"));
    assert_error(&two, "t.toml:1: 2 VIPs configured but max_vips is 1");
    let one = format!("{BASE}max_vips = 1\n{}{pool}", vip("a", "198.19.0.1"));
    assert!(Config::parse(Path::new("t.toml"), &one).is_ok());
}

#[test]
fn duplicate_backend_and_heavy_weight() {
    let text = format!(
        "{BASE}[[pool]]\nname = \"p\"\nbackends = [{{ address = \"10.0.0.1\" }}, {{ address = \"10.0.0.1\", weight = 70000 }}]\n"
    );
    let found = errors(&text);
    assert!(found.iter().any(|e| e.contains("backend 10.0.0.1 is listed twice")), "{found:?}");
    assert!(found.iter().any(|e| e.contains("weight must be 0 (drained) to 65535")), "{found:?}");
}

#[test]
fn ipv6_vip_with_ipv4_backend() {
    let text = format!(
        "{BASE}[[vip]]\nname = \"v6\"\naddress = \"fd00::1\"\nprotocol = \"udp\"\npool = \"p\"\n\
         [[pool]]\nname = \"p\"\nbackends = [{{ address = \"10.0.0.1\" }}]\n"
    );
    assert_error(&text, "t.toml:7: IPv6 VIP `v6` cannot reach IPv4 backend 10.0.0.1");
}

#[test]
fn deny_prefix_with_host_bits() {
    assert_error(
        &format!("{BASE}[deny]\nprefixes = [\"203.0.113.7/24\"]\n"),
        "t.toml:4: `203.0.113.7/24` has host bits set; did you mean 203.0.113.0/24?",
    );
}

#[test]
fn max_vips_out_of_range() {
    assert_error(&format!("{BASE}max_vips = 5000\n"), "t.toml:3: max_vips must be 1 to 1024");
}

#[test]
fn syntax_error() {
    assert_error("[dataplane\ninterface = 1\n", "t.toml:1:");
}

#[test]
fn values_that_parse_but_cannot_work_are_refused() {
    let assert_says = |text: &str, expected: &str| {
        let found = errors(text);
        assert!(
            found.iter().any(|e| e.starts_with("t.toml:") && e.contains(expected)),
            "expected `{expected}` in {found:?}"
        );
    };
    let vip = |address: &str, extra: &str| {
        format!(
            "{BASE}{extra}[[vip]]\nname = \"web\"\naddress = \"{address}\"\nport = 80\nprotocol = \"tcp\"\npool = \"web\"\n\
             [[pool]]\nname = \"web\"\nbackends = [{{ address = \"198.18.10.2\" }}]\n"
        )
    };
    assert_says(&vip("0.0.0.0", ""), "VIP `web`: 0.0.0.0: the unspecified address is no host");
    assert_says(&vip("224.0.0.1", ""), "VIP `web`: 224.0.0.1: a multicast address");
    let broadcast = vip("198.19.0.1", "").replace("198.18.10.2", "255.255.255.255");
    assert_says(&broadcast, "backend 255.255.255.255 in pool `web`: the broadcast address");
    let long = vip("198.19.0.1", "")
        .replace("name = \"web\"\naddress", &format!("name = \"{}\"\naddress", "v".repeat(5000)));
    assert_says(&long, "VIP name must be 1 to 128 bytes (this one has 5000)");
    assert_says(
        &vip("198.19.0.1", "flow_grace_seconds = 18446744073\n"),
        "flow_grace_seconds must be at most 86400",
    );
    // One error for a bad max_vips, not a second about the VIP count.
    assert_eq!(errors(&vip("198.19.0.1", "max_vips = 1025\n")).len(), 1);
    // Listeners: port 0, no connections, a timeout of 0, the same address as an L4 VIP.
    let listener = |address: &str, extra: &str| {
        format!("{}[[listener]]\nname = \"l\"\naddress = \"{address}\"\n{extra}", vip("198.19.0.1", ""))
    };
    assert_says(&listener("127.0.0.1:0", ""), "listener `l`: port 0");
    assert_says(
        &listener("127.0.0.1:8080", "max_connections = 0\n"),
        "listener `l`: max_connections must be above 0",
    );
    assert_says(
        &listener("127.0.0.1:8080", "header_read_timeout_ms = 0\n"),
        "listener `l`: header_read_timeout_ms must be above 0",
    );
    assert_says(&listener("198.19.0.1:80", ""), "listener `l` on 198.19.0.1:80 is also L4 VIP `web`");
    // An L7 VIP needs a listener on its address and port.
    let l7 = vip("198.19.0.1", "").replace("pool = \"web\"\n\n", "pool = \"web\"\nmode = \"l7\"\n\n");
    let l7 = l7.replacen("pool = \"web\"\n[[pool]]", "pool = \"web\"\nmode = \"l7\"\n[[pool]]", 1);
    assert_says(&l7, "L7 VIP `web` (198.19.0.1 port 80) has no listener");
    assert!(
        Config::parse(
            Path::new("t.toml"),
            &format!("{l7}[[listener]]\nname = \"l\"\naddress = \"0.0.0.0:80\"\n")
        )
        .is_ok()
    );
}

#[test]
fn health_checks_show_their_durations_in_milliseconds() {
    let text = format!(
        "{BASE}[[pool]]\nname = \"web\"\nbackends = [{{ address = \"10.0.0.1\" }}]\n\
         health = {{ kind = \"tcp\", port = 80, interval_ms = 1500, timeout_ms = 500 }}\n"
    );
    let config = Config::parse(Path::new("t.toml"), &text).unwrap();
    let shown = serde_json::to_value(config.pools["web"].health.as_ref().unwrap()).unwrap();
    assert_eq!((shown["interval_ms"].as_u64(), shown["timeout_ms"].as_u64()), (Some(1500), Some(500)));
}

#[test]
fn access_log_format_is_logfmt_or_json() {
    let listener = |format: &str| {
        format!(
            "{BASE}[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:8080\"\naccess_log_format = \"{format}\"\n"
        )
    };
    let config = Config::parse(Path::new("t.toml"), &listener("json")).unwrap();
    assert_eq!(config.listeners[0].access_log_format, AccessLogFormat::Json);
    assert!(Config::parse(Path::new("t.toml"), &listener("xml")).is_err());
    let default = Config::parse(
        Path::new("t.toml"),
        &format!("{BASE}[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:8080\"\n"),
    )
    .unwrap();
    assert_eq!(default.listeners[0].access_log_format, AccessLogFormat::Logfmt);
}

#[test]
fn listeners_defer_accept_unless_told_not_to() {
    let listener = |extra: &str| {
        let text = format!("{BASE}[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:8080\"\n{extra}");
        Config::parse(Path::new("t.toml"), &text).unwrap().listeners.remove(0)
    };
    assert!(listener("").defer_accept);
    assert!(!listener("defer_accept = false\n").defer_accept);
}

#[test]
fn busy_polling_is_short_by_default_and_bounded() {
    let busy = |us: &str| format!("[proxy]\nbusy_poll_us = {us}\n{BASE}");
    assert_eq!(Config::parse(Path::new("t.toml"), BASE).unwrap().busy_poll, Duration::from_micros(40));
    assert_eq!(Config::parse(Path::new("t.toml"), &busy("0")).unwrap().busy_poll, Duration::ZERO);
    assert_eq!(
        Config::parse(Path::new("t.toml"), &busy("100")).unwrap().busy_poll,
        Duration::from_micros(100)
    );
    assert_error(&busy("20000"), "t.toml:2: busy_poll_us must be at most 10000 (10 ms)");
    assert!(Config::parse(Path::new("t.toml"), &busy("-1")).is_err());
}

#[test]
fn every_section_s_type_error_is_reported_at_once() {
    let text = format!(
        "{BASE}xdp_mode = \"fast\"\n\
         [[vip]]\nname = \"a\"\naddress = \"198.19.0.1\"\nport = \"eighty\"\nprotocol = \"tcp\"\npool = \"web\"\n\
         [[pool]]\nname = \"web\"\nbackendz = []\n\
         [[vip]]\nname = \"b\"\naddress = \"198.19.0.2\"\nport = 80\nprotocol = \"sctp\"\npool = \"web\"\n"
    );
    let found = errors(&text);
    assert_eq!(found.len(), 4, "{found:?}");
    let lines: Vec<&str> = found.iter().map(|e| e.split(':').nth(1).unwrap_or("")).collect();
    assert_eq!(lines, ["3", "7", "12", "17"], "{found:?}");
}

#[test]
fn a_host_without_dataplane_is_l7_only() {
    let l7 = "[[pool]]\nname = \"web\"\nbackends = [{ address = \"10.0.0.1\" }]\n\
              [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:8080\"\n[[route]]\nlistener = \"l\"\npool = \"web\"\n";
    let config = Config::parse(Path::new("t.toml"), l7).unwrap();
    assert!(!config.dataplane && config.interface.is_empty());
    assert!(crate::host::check(&config, Path::new("t.toml")).is_ok());
    let with_vip = format!(
        "{l7}[[vip]]\nname = \"v\"\naddress = \"198.19.0.1\"\nport = 80\nprotocol = \"tcp\"\npool = \"web\"\n"
    );
    assert!(
        errors(&with_vip)
            .iter()
            .any(|e| e.contains("VIPs are balanced in XDP: they need a [dataplane] section"))
    );
    let with_deny = format!("{l7}[deny]\nprefixes = [\"192.0.2.0/24\"]\n");
    assert!(errors(&with_deny).iter().any(|e| e.contains("[deny] drops sources in XDP")));
}

#[test]
fn a_hash_key_names_a_header_cookie_query_parameter_the_path_the_uri_or_the_client() {
    let name = |n: &str| hyper::header::HeaderName::from_bytes(n.as_bytes()).unwrap();
    for (text, key) in [
        ("client_ip", Some(HashKey::ClientIp)),
        ("header:x-user", Some(HashKey::Header(name("x-user")))),
        ("cookie:session", Some(HashKey::Cookie("session".into()))),
        ("path", Some(HashKey::Path)),
        ("uri", Some(HashKey::Uri)),
        ("query:user_id", Some(HashKey::Query("user_id".into()))),
        ("query:", None),
        ("query:a=b", None),
        ("query:a&b", None),
        ("query:a b", None),
        ("cookie:", None),
        ("header:x y", None),
        ("url", None),
    ] {
        assert_eq!(HashKey::parse(text), key, "{text}");
    }
}

#[test]
fn a_routes_query_match_is_parameters_as_a_query_carries_them() {
    let query =
        |extra: &str| Config::parse(Path::new("t.toml"), &route(extra)).unwrap().routes[0].query.clone();
    assert!(query("").is_empty());
    let q = query("query = { version = \"2\", beta = \"\", \"a%20b\" = \"x=y\" }\n");
    assert_eq!(q.len(), 3);
    assert_eq!((q["version"].as_str(), q["beta"].as_str(), q["a%20b"].as_str()), ("2", "", "x=y"));
    for bad in ["\"a=b\" = \"1\"", "\"\" = \"1\"", "a = \"1&b=2\"", "a = \"x y\"", "a = \"#\""] {
        let found = errors(&route(&format!("query = {{ {bad} }}\n")));
        assert!(found.iter().any(|e| e.contains("t.toml:12: query: ")), "{bad}: {found:?}");
    }
}

#[test]
fn jwt_algorithm_hash_key_and_secret_are_checked_at_their_lines() {
    let l7 = "[[pool]]\nname = \"p\"\nbalance = \"hash\"\nhash_key = \"header:X Bad\"\nbackends = [{ address = \"10.0.0.1\" }]\n\
              [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:8080\"\n";
    let found = errors(&format!("{BASE}{l7}"));
    assert!(found.iter().any(|e| e.contains("t.toml:4: pool `p`: hash_key must be")), "{found:?}");
    let route =
        |jwt: &str| format!("{BASE}{l7}[[route]]\nlistener = \"l\"\npool = \"p\"\njwt = {{ {jwt} }}\n");
    let found = errors(&route("algorithm = \"none\""));
    assert!(found.iter().any(|e| e.contains("unknown variant `none`")), "{found:?}");
    let found = errors(&route("algorithm = \"HS256\""));
    assert!(
        found.iter().any(|e| e.contains("jwt: an HMAC algorithm (HS256, HS384, HS512) needs a secret")),
        "{found:?}"
    );
    // A key file is opened where the config is a file (Config::parse): named, readable, a key.
    let found = errors(&route("algorithm = \"RS256\""));
    assert!(found.iter().any(|e| e.contains("jwt: key_file required")), "{found:?}");
    let found = errors(&route("algorithm = \"ES256\", key_file = \"/nonexistent/pub.pem\""));
    assert!(found.iter().any(|e| e.contains("jwt: cannot read /nonexistent/pub.pem")), "{found:?}");
    let found = errors(&route("algorithm = \"HS256\", secret = \"s\", subject_header = \"X-Forwarded-For\""));
    assert!(
        found.iter().any(|e| e.contains("subject_header `X-Forwarded-For` is a field lbd reads or sets")),
        "{found:?}"
    );
    let not_a_key = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let found = errors(&route(&format!("algorithm = \"RS256\", key_file = \"{not_a_key}\"")));
    assert!(found.iter().any(|e| e.contains("jwt: key_file: ")), "{found:?}");
    let ok = format!(
        "{BASE}[[pool]]\nname = \"p\"\nbalance = \"hash\"\nhash_key = \"cookie:session\"\nbackends = [{{ address = \"10.0.0.1\" }}]\n"
    );
    let config = Config::parse(Path::new("t.toml"), &ok).unwrap();
    assert_eq!(config.pools["p"].hash_key, HashKey::Cookie("session".into()));
}

#[test]
fn basic_auth_files_realms_and_headers_are_checked_at_their_lines() {
    let dir = std::env::temp_dir().join(format!("sluice-config-basic-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // htpasswd -nbB -C 4 ann 'open sesame', and htpasswd's default (-m) for dee.
    let ann = "ann:$2y$04$o2bVFVIz.Iqlx6PNV0I.qOGGW6y7kqYhqXMCrf2OkVxyZOmEg/qBa\n";
    std::fs::write(dir.join("good"), ann).unwrap();
    std::fs::write(dir.join("md5"), format!("{ann}dee:$apr1$eIqTXKib$2x6sHaEyNNQrYxnTr0KKA1\n")).unwrap();
    let file = dir.join("t.toml");
    let route = |auth: &str| {
        format!(
            "[[pool]]\nname = \"p\"\nbackends = [{{ address = \"10.0.0.1\" }}]\n[[listener]]\nname = \"l\"\n\
             address = \"127.0.0.1:8080\"\n[[route]]\nlistener = \"l\"\npool = \"p\"\n{auth}\n"
        )
    };
    let found = |auth: &str| -> Vec<String> {
        Config::parse(&file, &route(auth)).unwrap_err().0.iter().map(ToString::to_string).collect()
    };
    let config =
        Config::parse(&file, &route("basic_auth = { file = \"good\", user_header = \"X-User\" }")).unwrap();
    let auth = config.routes[0].basic_auth.as_ref().unwrap();
    assert_eq!((auth.file.clone(), auth.realm.as_str()), (dir.join("good"), "sluice"), "beside the config");
    assert_eq!(auth.user_header.as_deref(), Some("x-user"));
    let weak = found("basic_auth = { file = \"md5\" }");
    assert!(
        weak.iter()
            .any(|e| e.contains("t.toml:10: basic_auth:")
                && e.contains("md5: line 2: user `dee`'s hash is MD5")),
        "{weak:?}"
    );
    let missing = found("basic_auth = { file = \"gone\" }");
    assert!(
        missing.iter().any(|e| e.contains("t.toml:10: cannot read") && e.contains("gone")),
        "{missing:?}"
    );
    let realm = found("basic_auth = { file = \"good\", realm = \"say \\\"hi\\\"\" }");
    assert!(realm.iter().any(|e| e.contains("t.toml:10: basic_auth: realm must be")), "{realm:?}");
    let header = found("basic_auth = { file = \"good\", user_header = \"x user\" }");
    assert!(header.iter().any(|e| e.contains("user_header `x user` is not a header name")), "{header:?}");
    let host = found("basic_auth = { file = \"good\", user_header = \"Host\" }");
    assert!(host.iter().any(|e| e.contains("user_header `Host` is a field lbd reads or sets")), "{host:?}");
    let both = found("basic_auth = { file = \"good\" }\njwt = { algorithm = \"HS256\", secret = \"s\" }");
    assert!(both.iter().any(|e| e.contains("jwt and basic_auth both read Authorization")), "{both:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn ipv6_clients_are_counted_by_their_listener_s_prefix() {
    let l7 = |prefix: &str| {
        format!(
            "{BASE}[[pool]]\nname = \"p\"\nbackends = [{{ address = \"10.0.0.1\" }}]\n[[listener]]\nname = \"l\"\n\
             address = \"127.0.0.1:8080\"\n{prefix}[[route]]\nlistener = \"l\"\npool = \"p\"\n\
             rate_limit = {{ requests_per_second = 5 }}\n"
        )
    };
    let config = Config::parse(Path::new("t.toml"), &l7("")).unwrap();
    assert_eq!(config.listeners[0].client_ipv6_prefix, 64, "a /64 by default");
    assert_eq!(config.routes[0].rate_limit.as_ref().unwrap().ipv6_prefix, 64);
    let config = Config::parse(Path::new("t.toml"), &l7("client_ipv6_prefix = 128\n")).unwrap();
    assert_eq!(config.routes[0].rate_limit.as_ref().unwrap().ipv6_prefix, 128, "the route's listener's");
    assert_error(
        &l7("client_ipv6_prefix = 8\n"),
        "t.toml:7: listener `l`: client_ipv6_prefix must be 16 to 128",
    );
}

#[test]
fn syn_limit_is_checked_and_defaults_its_burst_to_the_rate() {
    let config = Config::parse(Path::new("t.toml"), &format!("{BASE}syn_rate_per_prefix = 500\n")).unwrap();
    assert_eq!(config.syn_limit, Some(SynLimit { rate: 500, burst: 500 }));
    assert_eq!(Config::parse(Path::new("t.toml"), BASE).unwrap().syn_limit, None);
    assert_error(&format!("{BASE}syn_rate_per_prefix = 0\n"), "t.toml:3: syn_rate_per_prefix must be 1 to");
    assert_error(&format!("{BASE}syn_burst = 10\n"), "t.toml:3: syn_burst needs syn_rate_per_prefix");
    assert_error(
        &format!("{BASE}syn_rate_per_prefix = 5\nsyn_burst = 0\n"),
        "t.toml:4: syn_burst must be 1 to",
    );
}

#[test]
fn syn_cookies_are_for_l7_tcp_vips() {
    let vip = |mode: &str| {
        format!(
            "{BASE}[[vip]]\nname = \"web\"\naddress = \"198.19.0.1\"\nport = 80\nprotocol = \"tcp\"\npool = \"web\"\n\
             mode = \"{mode}\"\nsyn_cookies = true\n[[pool]]\nname = \"web\"\nbackends = [{{ address = \"10.0.0.1\" }}]\n\
             [[listener]]\nname = \"l\"\naddress = \"198.19.0.1:80\"\n"
        )
    };
    let l4 = vip("l4").replace("[[listener]]\nname = \"l\"\naddress = \"198.19.0.1:80\"\n", "");
    assert_error(&l4, "t.toml:10: VIP `web`: syn_cookies is for L7 TCP VIPs");
    let config = Config::parse(Path::new("t.toml"), &vip("l7")).expect("an L7 VIP with SYN cookies");
    assert!(config.vips[0].syn_cookies);
    let v6 =
        vip("l7").replace("198.19.0.1", "fd00:5e:100::1").replace("fd00:5e:100::1:80", "[fd00:5e:100::1]:80");
    let config = Config::parse(Path::new("t.toml"), &v6).expect("an IPv6 L7 VIP with SYN cookies");
    assert!(config.vips[0].syn_cookies);
}

#[test]
fn cipher_suites_are_known_names_in_the_servers_order() {
    let listener = |suites: &str| {
        format!(
            "{BASE}[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:8443\"\n\
             tls = {{ certificates = [{{ cert = \"c.pem\", key = \"k.pem\" }}]{suites} }}\n"
        )
    };
    let config = Config::parse_sent(Path::new("t.toml"), &listener("")).unwrap();
    assert!(config.listeners[0].tls.as_ref().unwrap().cipher_suites.is_empty(), "the default order");
    let listed = ", cipher_suites = [\"TLS13_AES_256_GCM_SHA384\", \"TLS13_AES_128_GCM_SHA256\"]";
    let config = Config::parse_sent(Path::new("t.toml"), &listener(listed)).unwrap();
    let suites = &config.listeners[0].tls.as_ref().unwrap().cipher_suites;
    let names: Vec<String> = suites.iter().map(|s| format!("{:?}", s.suite())).collect();
    assert_eq!(names, ["TLS13_AES_256_GCM_SHA384", "TLS13_AES_128_GCM_SHA256"]);
    assert_error(
        &listener(", cipher_suites = [\"TLS_AES_256_GCM_SHA384\"]"),
        "t.toml:6: listener `l`: unknown cipher suite `TLS_AES_256_GCM_SHA384` (known: TLS13_AES_256_GCM_SHA384,",
    );
    assert_error(&listener(", cipher_suites = []"), "t.toml:6: listener `l`: cipher_suites lists none");
}

#[test]
fn outlier_ejection_needs_a_streak_and_a_time_and_is_capped() {
    let pool = |outlier: &str| {
        format!(
            "{BASE}[[pool]]\nname = \"web\"\nbackends = [{{ address = \"198.18.10.2\" }}]\noutlier = {outlier}\n"
        )
    };
    let refused = "pool `web` outlier: consecutive_failures and ejection_ms must be at least 1";
    for bad in [
        "{ consecutive_failures = 0, ejection_ms = 1000 }",
        "{ consecutive_failures = 5, ejection_ms = 0 }",
        "{ consecutive_failures = 5, ejection_ms = 1000, max_ejection_ms = 999 }",
    ] {
        let found = errors(&pool(bad));
        assert!(found.iter().any(|e| e.starts_with("t.toml:6:") && e.contains(refused)), "{bad}: {found:?}");
    }
    let config =
        Config::parse(Path::new("t.toml"), &pool("{ consecutive_failures = 5, ejection_ms = 10000 }"))
            .unwrap();
    let outlier = config.pools["web"].outlier.unwrap();
    assert_eq!(outlier.max_ejection_ms, 300_000, "Envoy's default");
    assert_eq!(outlier.ejection_time(3), Duration::from_secs(30));
    assert_eq!(outlier.ejection_time(1000), Duration::from_secs(300), "not capped");
}

/// The shipped example configs, changed a few bytes at a time: every change parses or gives
/// errors that say where (never a panic, even in a multi-byte character or past the end).
#[test]
fn mutated_configs_parse_or_say_where() {
    const SPICE: &[&[u8]] = &[
        b"\"",
        b"'",
        b"[",
        b"]",
        b"[[",
        b"{",
        b"}",
        b"=",
        b",",
        b"\n",
        b"#",
        b"\\",
        b"0",
        b"-1",
        b"99999999999999999999",
        b"1.5",
        b"true",
        b"\xc3\xa9",
        b"\xe2\x82\xac",
        b"\xff",
        b"[[pool]]\n",
        b"[[route]]\n",
        b"name = \"x\"\n",
        b"address = \"::1\"\n",
        b"port = 70000\n",
    ];
    let seeds = [include_str!("../../../config/sluice.toml"), include_str!("../../../config/demo.toml")];
    let mut rng = crate::mutation::Rng(0x5eed_0005);
    let (mut parsed, mut refused) = (0, 0);
    for _ in 0..3_000 {
        let seed = seeds[rng.below(seeds.len())];
        let text = crate::mutation::mutate(&mut rng, seed.as_bytes(), SPICE);
        let text = String::from_utf8_lossy(&text);
        match Config::parse_sent(Path::new("m.toml"), &text) {
            Ok(_) => parsed += 1,
            Err(errors) => {
                refused += 1;
                for error in errors.0 {
                    assert!(error.to_string().starts_with("m.toml"), "{error} for {text}");
                }
            }
        }
    }
    assert!(parsed >= 300 && refused >= 300, "{parsed} parsed, {refused} refused: the mutations miss");
}

#[test]
fn a_split_takes_what_setsplit_takes() {
    let split = |shares: &str| {
        format!(
            "{BASE}[[pool]]\nname = \"web\"\nbackends = [{{ address = \"10.0.0.1\" }}]\n\
             [[pool]]\nname = \"a\"\nbackends = [{{ address = \"10.0.0.2\" }}]\n\
             [[pool]]\nname = \"b\"\nbackends = [{{ address = \"10.0.0.3\" }}]\n\
             [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:8080\"\n\
             [[route]]\nlistener = \"l\"\npool = \"web\"\nsplit = [{shares}]\n"
        )
    };
    let parsed = |shares: &str| Config::parse(Path::new("t.toml"), &split(shares));
    assert!(parsed("{ pool = \"a\", percent = 100 }").is_ok());
    assert!(parsed("{ pool = \"a\", percent = 60 }, { pool = \"b\", percent = 40 }").is_ok());
    for refused in [
        "{ pool = \"a\", percent = 60 }, { pool = \"b\", percent = 41 }",
        "{ pool = \"a\", percent = 101 }",
        "{ pool = \"a\", percent = -1 }",
        "{ pool = \"a\", percent = nan }",
    ] {
        let found = errors(&split(refused));
        assert!(
            found.iter().any(|e| e.ends_with("split percents must be 0 to 100 and add up to at most 100")),
            "{refused}: {found:?}"
        );
    }
}

/// A config of one pool, one listener and one route with `extra` lines: lines 1-2 BASE, 3-5 the
/// pool, 6-8 the listener, 9 `[[route]]`, 10 listener, 11 pool, `extra` from 12.
fn route(extra: &str) -> String {
    format!(
        "{BASE}[[pool]]\nname = \"p\"\nbackends = [{{ address = \"10.0.0.1\" }}]\n\
         [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:8080\"\n\
         [[route]]\nlistener = \"l\"\npool = \"p\"\n{extra}"
    )
}

/// The route with `extra` is refused with an error that starts with `expected`.
fn says(extra: &str, expected: &str) {
    let found = errors(&route(extra));
    assert!(found.iter().any(|e| e.starts_with(expected)), "`{extra}`: expected `{expected}` in {found:?}");
}

#[test]
fn grpc_web_needs_http2_pools_split_included() {
    says("grpc_web = true\n", "t.toml:11: grpc_web needs h2 or h2c pools: pool `p` speaks HTTP/1.1");
    let h2c = |split: &str| {
        format!(
            "{BASE}[[pool]]\nname = \"g\"\nprotocol = \"h2c\"\nbackends = [{{ address = \"10.0.0.1\" }}]\n\
             [[pool]]\nname = \"p\"\nbackends = [{{ address = \"10.0.0.2\" }}]\n\
             [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:8080\"\n\
             [[route]]\nlistener = \"l\"\npool = \"g\"\ngrpc_web = true\n{split}"
        )
    };
    assert!(Config::parse(Path::new("t.toml"), &h2c("")).unwrap().routes[0].grpc_web);
    let found = errors(&h2c("split = [{ pool = \"p\", percent = 10.0 }]\n"));
    assert!(found.iter().any(|e| e.contains("pool `p` speaks HTTP/1.1")), "{found:?}");
}

#[test]
fn cors_names_origins_and_lists_them_when_it_lets_cookies_in() {
    let cors =
        |extra: &str| Config::parse(Path::new("t.toml"), &route(extra)).unwrap().routes[0].cors.clone();
    assert_eq!(cors(""), None);
    assert_eq!(
        cors(
            "cors = { allow_origins = [\"https://App.Example.com\", \"https://*.example.org:8443\"], \
             allow_methods = [\"GET\", \"PUT\"], allow_headers = [\"Content-Type\"], \
             expose_headers = [\"grpc-status\"], max_age_s = 600, allow_credentials = true }\n"
        ),
        Some(CorsConfig {
            allow_origins: vec!["https://app.example.com".into(), "https://*.example.org:8443".into()],
            allow_methods: vec!["GET".into(), "PUT".into()],
            allow_headers: vec!["content-type".into()],
            expose_headers: vec!["grpc-status".into()],
            max_age_s: Some(600),
            allow_credentials: true,
        })
    );
    assert!(cors("cors = { allow_origins = [\"*\"], allow_headers = [\"*\"] }\n").is_some());
    for (line, error) in [
        ("cors = { allow_origins = [] }", "cors: allow_origins names no origin"),
        (
            "cors = { allow_origins = [\"*\", \"https://a.test\"] }",
            "cors: `*` in allow_origins is every origin",
        ),
        ("cors = { allow_origins = [\"https://a.test/\"] }", "cors: `https://a.test/` is not an origin"),
        ("cors = { allow_origins = [\"a.test\"] }", "cors: `a.test` is not an origin"),
        (
            "cors = { allow_origins = [\"*\"], allow_methods = [\"G T\"] }",
            "cors: `G T` is not an HTTP method",
        ),
        (
            "cors = { allow_origins = [\"*\"], expose_headers = [\"a b\"] }",
            "cors: expose_headers: `a b` is not",
        ),
        (
            "cors = { allow_origins = [\"*\"], allow_credentials = true }",
            "cors: allow_origins has `*` beside allow_credentials",
        ),
        (
            "cors = { allow_origins = [\"https://a.test\"], allow_headers = [\"*\"], allow_credentials = true }",
            "cors: allow_headers has `*` beside allow_credentials",
        ),
        ("cors = { allow_origins = [\"*\"], origins = [] }", "t.toml:"),
    ] {
        let found = errors(&route(&format!("{line}\n")));
        assert!(found.iter().any(|e| e.starts_with("t.toml:12: ") && e.contains(error)), "{line}: {found:?}");
    }
}

#[test]
fn a_routes_retry_buffer_is_64_kib_by_default_and_at_most_16_mib() {
    let bytes =
        |extra: &str| Config::parse(Path::new("t.toml"), &route(extra)).unwrap().routes[0].retry_buffer_bytes;
    assert_eq!(bytes(""), 65536);
    assert_eq!(bytes("retry_buffer_bytes = 0\n"), 0, "no body kept");
    assert_eq!(bytes("retry_buffer_bytes = 16777216\n"), 16 << 20);
    says(
        "retry_buffer_bytes = 16777217\n",
        "t.toml:11: retry_buffer_bytes must be at most 16777216 (16 MiB)",
    );
}

#[test]
fn a_jwts_keys_have_one_source_and_its_claim_headers_are_fields_of_its_own() {
    let dir = std::env::temp_dir().join(format!("sluice-config-jwks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jwk = r#"{"kty":"EC","kid":"e1","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;
    std::fs::write(dir.join("keys.json"), format!(r#"{{"keys":[{jwk}]}}"#)).unwrap();
    std::fs::write(dir.join("broken.json"), "{\"keys\": 1}").unwrap();
    let file = |name: &str| dir.join(name).display().to_string();
    let jwt = |fields: &str| route(&format!("jwt = {{ {fields} }}\n"));
    let parsed = Config::parse(
        Path::new("t.toml"),
        &jwt(&format!("algorithm = \"ES256\", jwks_file = \"{}\"", file("keys.json"))),
    );
    assert!(parsed.unwrap().routes[0].jwt.as_ref().unwrap().jwks_file.is_some());
    let refused = |fields: String, expected: &str| {
        let found = errors(&jwt(&fields));
        assert!(found.iter().any(|e| e.contains(expected)), "`{fields}`: expected `{expected}` in {found:?}");
    };
    refused(format!("algorithm = \"RS256\", jwks_file = \"{}\"", file("keys.json")), "has no RS256 key");
    refused(
        format!("algorithm = \"ES256\", jwks_file = \"{}\"", file("broken.json")),
        "broken.json: not a JWK Set",
    );
    refused(format!("algorithm = \"ES256\", jwks_file = \"{}\"", file("gone.json")), "gone.json: ");
    refused(
        format!("algorithm = \"HS256\", secret = \"s\", jwks_file = \"{}\"", file("keys.json")),
        "jwt: one of secret, key_file, jwks_file and jwks_url, not secret and jwks_file",
    );
    let url = "jwks_url = \"https://idp.example.com/.well-known/jwks.json\"";
    let ok = Config::parse(
        Path::new("t.toml"),
        &jwt(&format!("algorithm = \"RS256\", {url}, jwks_refresh_s = 60")),
    );
    let ok = ok.unwrap().routes[0].jwt.clone().unwrap();
    assert_eq!((ok.jwks_refresh(), ok.jwks_url.is_some()), (std::time::Duration::from_secs(60), true));
    for bad in ["http://idp.example.com/jwks", "https:///jwks", "idp.example.com", "https://bad host/"] {
        refused(
            format!("algorithm = \"RS256\", jwks_url = \"{bad}\""),
            &format!("jwks_url `{bad}` is not an https URL"),
        );
    }
    refused(
        format!("algorithm = \"RS256\", {url}, jwks_refresh_s = 5"),
        "jwks_refresh_s must be 10 to 86400",
    );
    refused(
        format!("algorithm = \"RS256\", {url}, jwks_ca = \"{}\"", file("keys.json")),
        "no PEM certificate to read",
    );
    refused(
        "algorithm = \"HS256\", secret = \"s\", jwks_refresh_s = 60".into(),
        "jwks_ca and jwks_refresh_s go with jwks_url",
    );
    let hs = "algorithm = \"HS256\", secret = \"s\"";
    let audiences = |list: &str| {
        let parsed = Config::parse(Path::new("t.toml"), &jwt(&format!("{hs}, audience = {list}")));
        parsed.unwrap().routes[0].jwt.as_ref().unwrap().audience.clone()
    };
    assert_eq!(audiences("\"api\""), ["api"]);
    assert_eq!(audiences("[\"api\", \"admin\"]"), ["api", "admin"]);
    refused(format!("{hs}, audience = [\"api\", \"\"]"), "jwt: an audience is empty");
    let claims =
        Config::parse(Path::new("t.toml"), &jwt(&format!("{hs}, claim_headers = {{ email = \"X-Email\" }}")));
    assert_eq!(claims.unwrap().routes[0].jwt.as_ref().unwrap().claim_headers["email"], "X-Email");
    refused(
        format!("{hs}, claim_headers = {{ email = \"Host\" }}"),
        "claim_headers: `Host` is a field lbd reads or sets",
    );
    refused(
        format!("{hs}, claim_headers = {{ email = \"x y\" }}"),
        "claim_headers: `x y` is not a header name",
    );
    refused(
        format!("{hs}, subject_header = \"X-Sub\", claim_headers = {{ email = \"x-sub\" }}"),
        "claim_headers: `x-sub` carries another claim already",
    );
    refused(format!("{hs}, claim_headers = {{ \"\" = \"x-a\" }}"), "claim_headers: a claim's name is empty");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_rate_limit_by_header_names_its_header() {
    let limit =
        |extra: &str| Config::parse(Path::new("t.toml"), &route(extra)).unwrap().routes[0].rate_limit.clone();
    let by_tenant =
        limit("rate_limit = { requests_per_second = 5, key = \"header\", header = \"X-Tenant\" }\n");
    assert_eq!(by_tenant.unwrap().header.unwrap().as_str(), "x-tenant");
    says(
        "rate_limit = { requests_per_second = 5, key = \"header\" }\n",
        "t.toml:11: rate_limit key = \"header\" needs header",
    );
    says(
        "rate_limit = { requests_per_second = 5, header = \"x-a\" }\n",
        "t.toml:11: rate_limit header goes with key = \"header\"",
    );
    says(
        "rate_limit = { requests_per_second = 5, key = \"header\", header = \"x a\" }\n",
        "t.toml:11: rate_limit header `x a` is not a header name",
    );
}

#[test]
fn a_routes_cache_serves_nothing_stale_by_default_and_at_most_a_year() {
    let cache =
        |extra: &str| Config::parse(Path::new("t.toml"), &route(extra)).unwrap().routes[0].cache.clone();
    assert_eq!(cache("cache = {}\n"), Some(CacheConfig::default()));
    let stale = cache("cache = { stale_while_revalidate_s = 30, stale_if_error_s = 31536000 }\n").unwrap();
    assert_eq!(
        (stale.stale_while_revalidate_s, stale.stale_if_error_s, stale.max_entries),
        (30, 31_536_000, 10_000)
    );
    says(
        "cache = { stale_if_error_s = 31536001 }\n",
        "t.toml:11: cache: stale_if_error_s is at most 31536000 (a year)",
    );
    says("cache = { stale_while_revalidate_s = -1 }\n", "t.toml:12: invalid value: integer `-1`");
}

#[test]
fn retry_on_names_resets_and_statuses_and_needs_retries() {
    let retry_on =
        |extra: &str| Config::parse(Path::new("t.toml"), &route(extra)).unwrap().routes[0].retry_on.clone();
    assert_eq!(retry_on("retries = 1\n"), RetryOn { reset: true, statuses: vec![502, 503, 504] });
    assert_eq!(
        retry_on("retries = 1\nretry_on = [\"503\", \"gateway-error\", \"409\"]\n"),
        RetryOn { reset: false, statuses: vec![409, 502, 503, 504] }
    );
    let all = retry_on("retries = 2\nretry_on = [\"reset\", \"5xx\"]\n");
    assert!(all.reset && all.statuses == (500..=599).collect::<Vec<_>>());
    says("retry_on = [\"reset\"]\n", "t.toml:12: retry_on needs retries");
    for bad in ["\"399\"", "\"600\"", "\"4xx\"", "\"timeout\""] {
        let word = bad.trim_matches('"');
        says(
            &format!("retries = 1\nretry_on = [{bad}]\n"),
            &format!(
                "t.toml:13: retry_on: `{word}` is not reset, gateway-error, 5xx or a status from 400 to 599"
            ),
        );
    }
}

#[test]
fn a_tries_timeout_is_1_ms_to_the_routes_whole_timeout() {
    let try_timeout =
        |extra: &str| Config::parse(Path::new("t.toml"), &route(extra)).unwrap().routes[0].try_timeout;
    assert_eq!(try_timeout(""), None);
    assert_eq!(try_timeout("try_timeout_ms = 250\n"), Some(Duration::from_millis(250)));
    assert_eq!(try_timeout("timeout_ms = 500\ntry_timeout_ms = 500\n"), Some(Duration::from_millis(500)));
    says(
        "try_timeout_ms = 0\n",
        "t.toml:12: try_timeout_ms must be 1 to the route's timeout_ms (30000), not 0",
    );
    says(
        "timeout_ms = 500\ntry_timeout_ms = 501\n",
        "t.toml:13: try_timeout_ms must be 1 to the route's timeout_ms (500), not 501",
    );
}

#[test]
fn each_route_check_says_what_is_wrong_at_its_line() {
    assert!(Config::parse(Path::new("t.toml"), &route("")).is_ok());
    says(
        "path = \"/a\"\npath_prefix = \"/b\"\n",
        "t.toml:11: a route takes one of path, path_prefix and path_regex",
    );
    says("path_regex = \"(\"\n", "t.toml:12: path_regex does not compile");
    says("method = \"G T\"\n", "t.toml:12: `G T` is not an HTTP method");
    says(
        "split = [{ pool = \"q\", percent = 10.0 }]\n",
        "t.toml:12: split uses pool `q`, which is not defined",
    );
    says(
        "split = [{ pool = \"p\", percent = 60.0 }, { pool = \"p\", percent = 60.0 }]\n",
        "t.toml:11: split percents must be 0 to 100",
    );
    says("allow = [\"10.0.0.0/33\"]\n", "t.toml:12: ");
    says(
        "rate_limit = { requests_per_second = 10.0, key = \"api_key\" }\n",
        "t.toml:11: rate_limit key = \"api_key\" needs the route's api_key",
    );
    says(
        "rate_limit = { requests_per_second = 10.0, key = \"jwt_subject\" }\n",
        "t.toml:11: rate_limit key = \"jwt_subject\" needs the route's jwt",
    );
    says(
        "rate_limit = { requests_per_second = 0.0 }\n",
        "t.toml:11: rate_limit needs requests_per_second above 0",
    );
    says("fallback = { status = 700, body = \"x\" }\n", "t.toml:11: fallback status must be 200 to 599");
    says("api_key = { file = \"k\" }\n", "t.toml:12: api_key takes one of header and query");
    says(
        "shadow = { pool = \"q\", percent = 5.0 }\n",
        "t.toml:12: shadow uses pool `q`, which is not defined",
    );
    says("shadow = { pool = \"p\", percent = 101.0 }\n", "t.toml:12: shadow percent must be 0 to 100");
    says(
        "shadow = { pool = \"p\", percent = 1.0, max_body_bytes = 16777217 }\n",
        "t.toml:12: shadow max_body_bytes must be at most 16777216 (16 MiB)",
    );
    let shadow =
        |line: &str| Config::parse(Path::new("t.toml"), &route(line)).unwrap().routes[0].shadow.clone();
    assert_eq!(shadow("shadow = { pool = \"p\", percent = 5.0 }\n").unwrap().max_body_bytes, 65536);
    let bound = shadow("shadow = { pool = \"p\", percent = 5.0, max_body_bytes = 0 }\n").unwrap();
    assert_eq!((bound.pool.as_str(), bound.percent, bound.max_body_bytes), ("p", 5.0, 0));
    says("rewrite_prefix = \"/v2/\"\n", "t.toml:12: rewrite_prefix needs the route's path_prefix");
    for bad in ["v2/", "/a b", "/a?x=1", "/a//b", "/a/./b", "/a/..", "/%zz", "/a%2"] {
        says(
            &format!("path_prefix = \"/api/\"\nrewrite_prefix = \"{bad}\"\n"),
            &format!("t.toml:13: rewrite_prefix `{bad}` is not a canonical path"),
        );
    }
    for good in ["/", "/v2/", "/v2", "/a%2Fb/", "/~u/x.y"] {
        let ok = route(&format!("path_prefix = \"/api/\"\nrewrite_prefix = \"{good}\"\n"));
        let config = Config::parse(Path::new("t.toml"), &ok).unwrap();
        assert_eq!(config.routes[0].rewrite_prefix.as_deref(), Some(good));
    }
    // A method is matched upper-cased; a split keeps its pools and shares in order.
    let ok =
        route("method = \"get\"\nsplit = [{ pool = \"p\", percent = 30.0 }]\nmax_body_bytes = 1048576\n");
    let config = Config::parse(Path::new("t.toml"), &ok).unwrap();
    assert_eq!(config.routes[0].method.as_deref(), Some("GET"));
    assert_eq!(config.routes[0].max_body_bytes, Some(1 << 20));
    assert_eq!(config.routes[0].split, vec![("p".to_string(), 30.0)]);
}

#[test]
fn a_pool_s_connect_timeout_is_a_millisecond_to_a_minute() {
    let config = Config::parse(Path::new("t.toml"), &one_pool("connect_timeout_ms = 250")).unwrap();
    assert_eq!(config.pools["p"].connect_timeout, Some(Duration::from_millis(250)));
    assert_eq!(Config::parse(Path::new("t.toml"), &one_pool("")).unwrap().pools["p"].connect_timeout, None);
    refuses_ms_outside("connect_timeout_ms", 60_000);
}

/// A config with one pool `p`, its section ending with `line` (line 6).
fn one_pool(line: &str) -> String {
    format!("{BASE}[[pool]]\nname = \"p\"\nbackends = [{{ address = \"10.0.0.1\" }}]\n{line}\n")
}

/// A pool's `setting` in milliseconds refuses 0 and anything above `max`, saying so.
fn refuses_ms_outside(setting: &str, max: u64) {
    for bad in [0, max + 1] {
        assert_eq!(
            errors(&one_pool(&format!("{setting} = {bad}"))),
            [format!("t.toml:6: pool `p`: {setting} must be 1 to {max}")]
        );
    }
}

#[test]
fn a_pool_s_keep_alive_is_bounded() {
    let config = Config::parse(
        Path::new("t.toml"),
        &one_pool("keepalive_timeout_ms = 4000\nmax_requests_per_connection = 100"),
    )
    .unwrap();
    let want = KeepAlive { idle_timeout: Duration::from_secs(4), max_requests: Some(100) };
    assert_eq!(config.pools["p"].keep_alive, want);
    assert_eq!(
        Config::parse(Path::new("t.toml"), &one_pool("")).unwrap().pools["p"].keep_alive,
        KeepAlive::default()
    );
    refuses_ms_outside("keepalive_timeout_ms", 3_600_000);
    assert_eq!(
        errors(&one_pool("max_requests_per_connection = 0")),
        ["t.toml:6: pool `p`: max_requests_per_connection must be at least 1"]
    );
    let h2c = "protocol = \"h2c\"\nkeepalive_timeout_ms = 4000\nmax_requests_per_connection = 9";
    let h2c = Config::parse(Path::new("t.toml"), &one_pool(h2c)).unwrap();
    assert_eq!(h2c.pools["p"].keep_alive.max_requests, Some(9), "HTTP/2 pools count streams");
}

#[test]
fn an_http2_pool_s_streams_a_connection_are_bounded_and_for_http2_pools() {
    let streams = |extra: &str| {
        let text = one_pool(&format!("protocol = \"h2c\"\n{extra}"));
        Config::parse(Path::new("t.toml"), &text).unwrap().pools["p"].http2.max_streams
    };
    assert_eq!((streams(""), streams("http2_max_concurrent_streams = 8")), (100, 8));
    for bad in [0, 10_001] {
        assert_eq!(
            errors(&one_pool(&format!("protocol = \"h2c\"\nhttp2_max_concurrent_streams = {bad}"))),
            ["t.toml:7: pool `p`: http2_max_concurrent_streams must be 1 to 10000"]
        );
    }
    assert_eq!(
        errors(&one_pool("http2_max_concurrent_streams = 8")),
        ["t.toml:6: pool `p`: http2_max_concurrent_streams is for h2 and h2c pools"]
    );
}

#[test]
fn an_http2_pool_s_pings_are_bounded_and_for_http2_pools() {
    let keepalive = |extra: &str| {
        let text = one_pool(&format!("protocol = \"h2c\"\n{extra}"));
        Config::parse(Path::new("t.toml"), &text).unwrap().pools["p"].http2.keepalive
    };
    assert_eq!(keepalive(""), None);
    let every = |interval, timeout| {
        Some(Http2Keepalive {
            interval: Duration::from_millis(interval),
            timeout: Duration::from_millis(timeout),
        })
    };
    assert_eq!(keepalive("http2_keepalive = { interval_ms = 30000 }"), every(30_000, 20_000));
    assert_eq!(keepalive("http2_keepalive = { interval_ms = 500, timeout_ms = 250 }"), every(500, 250));
    let bounds =
        "t.toml:7: pool `p`: http2_keepalive needs interval_ms 100 to 3600000, timeout_ms 1 to 600000";
    for bad in ["interval_ms = 99", "interval_ms = 3600001", "interval_ms = 1000, timeout_ms = 0"] {
        assert_eq!(
            errors(&one_pool(&format!("protocol = \"h2c\"\nhttp2_keepalive = {{ {bad} }}"))),
            [bounds]
        );
    }
    assert_eq!(
        errors(&one_pool("http2_keepalive = { interval_ms = 1000 }")),
        ["t.toml:6: pool `p`: http2_keepalive is for h2 and h2c pools"]
    );
}

#[test]
fn a_pool_s_slow_start_is_up_to_an_hour_and_not_on_a_hash_pool() {
    let config = Config::parse(Path::new("t.toml"), &one_pool("slow_start_ms = 30000")).unwrap();
    assert_eq!(config.pools["p"].slow_start, Some(Duration::from_secs(30)));
    assert_eq!(Config::parse(Path::new("t.toml"), &one_pool("")).unwrap().pools["p"].slow_start, None);
    refuses_ms_outside("slow_start_ms", 3_600_000);
    let hashed = errors(&one_pool("balance = \"hash\"\nhash_key = \"client_ip\"\nslow_start_ms = 1000"));
    assert_eq!(hashed.len(), 1, "{hashed:?}");
    assert!(hashed[0].contains("slow_start_ms is for round_robin and least_requests"), "{hashed:?}");
}

#[test]
fn a_grpc_health_check_is_for_http2_pools_and_may_name_a_service() {
    // Lines 1-2 BASE, 3-5 the pool, its health on 6, its protocol on 7.
    let pool = |health: &str, protocol: &str| {
        format!(
            "{BASE}[[pool]]\nname = \"p\"\nbackends = [{{ address = \"10.0.0.1\" }}]\nhealth = {health}\n\
             protocol = \"{protocol}\"\n"
        )
    };
    let grpc = "{ kind = \"grpc\", port = 50051, service = \"pkg.Echo\" }";
    let config = Config::parse(Path::new("t.toml"), &pool(grpc, "h2c")).unwrap();
    let health = config.pools["p"].health.as_ref().unwrap();
    assert_eq!((health.kind, health.service.as_deref()), (HealthKind::Grpc, Some("pkg.Echo")));
    assert_eq!(
        errors(&pool(grpc, "http1")),
        ["t.toml:6: pool `p` health: kind = \"grpc\" is for h2 and h2c pools"]
    );
    assert_eq!(
        errors(&pool("{ kind = \"http\", port = 80, service = \"a\" }", "h2c")),
        ["t.toml:6: pool `p` health: service is for kind = \"grpc\""]
    );
}

#[test]
fn a_pools_backend_cookie_is_a_cookie_name_kept_at_most_400_days() {
    // Lines 1-2 BASE, 3-5 the pool, its cookie on 6.
    let pool = |cookie: &str| {
        format!(
            "{BASE}[[pool]]\nname = \"p\"\nbackends = [{{ address = \"10.0.0.1\" }}]\nsticky_cookie = {cookie}\n"
        )
    };
    let config = Config::parse(Path::new("t.toml"), &pool("{ name = \"SERVERID\" }")).unwrap();
    let cookie = config.pools["p"].sticky_cookie.clone().unwrap();
    assert_eq!((cookie.name.as_str(), cookie.max_age_s), ("SERVERID", None));
    for (cookie, error) in [
        ("{ name = \"a b\" }", "t.toml:6: pool `p`: sticky_cookie name `a b` is not a cookie name"),
        ("{ name = \"\" }", "t.toml:6: pool `p`: sticky_cookie name `` is not a cookie name"),
        (
            "{ name = \"sluice_pool\" }",
            "t.toml:6: pool `p`: sticky_cookie `sluice_pool` is the routes' own cookie",
        ),
        (
            "{ name = \"s\", max_age_s = 0 }",
            "t.toml:6: pool `p`: sticky_cookie max_age_s must be 1 to 34560000 (400 days)",
        ),
    ] {
        assert_eq!(errors(&pool(cookie)), [error], "{cookie}");
    }
}

#[test]
fn an_http_health_check_may_want_text_in_its_answer() {
    // Lines 1-2 BASE, 3-5 the pool, its health on 6.
    let pool = |health: &str| {
        format!(
            "{BASE}[[pool]]\nname = \"p\"\nbackends = [{{ address = \"10.0.0.1\" }}]\nhealth = {health}\n"
        )
    };
    let config =
        Config::parse(Path::new("t.toml"), &pool("{ kind = \"http\", port = 80, expect_body = \"ok\" }"));
    assert_eq!(config.unwrap().pools["p"].health.as_ref().unwrap().expect_body.as_deref(), Some("ok"));
    assert_eq!(
        errors(&pool("{ kind = \"tcp\", port = 80, expect_body = \"ok\" }")),
        ["t.toml:6: pool `p` health: expect_body is for kind = \"http\""]
    );
    assert_eq!(
        errors(&pool("{ kind = \"http\", port = 80, expect_body = \"\" }")),
        ["t.toml:6: pool `p` health: expect_body must be 1 to 65536 bytes"]
    );
}

#[test]
fn an_http_health_check_may_name_its_host() {
    // Lines 1-2 BASE, 3-5 the pool, its health on 6.
    let pool = |health: &str| {
        format!(
            "{BASE}[[pool]]\nname = \"p\"\nbackends = [{{ address = \"10.0.0.1\" }}]\nhealth = {health}\n"
        )
    };
    let config =
        Config::parse(Path::new("t.toml"), &pool("{ kind = \"http\", port = 80, host = \"app.test:8080\" }"))
            .unwrap();
    let health = config.pools["p"].health.as_ref().unwrap();
    assert_eq!(health.host.as_deref(), Some("app.test:8080"));
    for (health, expected) in [
        (
            "{ kind = \"tcp\", port = 80, host = \"app.test\" }",
            "t.toml:6: pool `p` health: host is for kind = \"http\"",
        ),
        (
            "{ kind = \"http\", port = 80, host = \"a b\" }",
            "t.toml:6: pool `p` health: host `a b` is not a host name",
        ),
        (
            "{ kind = \"http\", port = 80, host = \"u@a.test\" }",
            "t.toml:6: pool `p` health: host `u@a.test` is not",
        ),
        ("{ kind = \"http\", port = 80, host = \"\" }", "t.toml:6: pool `p` health: host `` is not"),
    ] {
        let found = errors(&pool(health));
        assert!(found.iter().any(|e| e.starts_with(expected)), "{health}: {found:?}");
    }
}

#[test]
fn trusted_proxies_are_prefixes_and_their_field_a_field_name() {
    // Lines 1-2 BASE, 3-5 the listener, `client_address` on 6.
    let listener = |client_address: &str| {
        format!(
            "{BASE}[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:8080\"\nclient_address = {client_address}\n"
        )
    };
    let config = Config::parse(
        Path::new("t.toml"),
        &listener("{ header = \"X-Real-IP\", trusted = [\"10.0.0.0/8\", \"2001:db8::1\"] }"),
    )
    .unwrap();
    let from = config.listeners[0].client_address.as_ref().unwrap();
    assert_eq!((from.header.as_str(), from.trusted.len()), ("x-real-ip", 2));
    assert_eq!(
        errors(&listener("{ header = \"x y\", trusted = [\"10.0.0.0/8\"] }")),
        ["t.toml:6: client_address: `x y` is not a field name"]
    );
    assert_eq!(
        errors(&listener("{ header = \"x-forwarded-for\", trusted = [] }")),
        ["t.toml:6: client_address: trusted names no proxy (a prefix like 10.0.0.0/8)"]
    );
    let found = errors(&listener("{ header = \"x-forwarded-for\", trusted = [\"10.0.0.0/33\"] }"));
    assert!(found.len() == 1 && found[0].starts_with("t.toml:6: "), "{found:?}");
}

#[test]
fn a_listener_takes_the_proxy_protocol_when_told() {
    let listener =
        |extra: &str| format!("{BASE}[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:8080\"\n{extra}");
    let config = Config::parse(Path::new("t.toml"), &listener("")).unwrap();
    assert!(!config.listeners[0].proxy_protocol);
    let config = Config::parse(Path::new("t.toml"), &listener("proxy_protocol = true\n")).unwrap();
    assert!(config.listeners[0].proxy_protocol);
    let found = errors(&listener("proxy_protocol = \"v2\"\n"));
    assert!(found.len() == 1 && found[0].starts_with("t.toml:6"), "{found:?}");
}

#[test]
fn a_per_client_connection_limit_is_above_0() {
    let listener =
        |extra: &str| format!("{BASE}[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:8080\"\n{extra}");
    let config = Config::parse(Path::new("t.toml"), &listener("max_connections_per_client = 20\n")).unwrap();
    assert_eq!(config.listeners[0].max_connections_per_client, Some(20));
    let config = Config::parse(Path::new("t.toml"), &listener("")).unwrap();
    assert_eq!(config.listeners[0].max_connections_per_client, None);
    assert_eq!(
        errors(&listener("max_connections_per_client = 0\n")),
        ["t.toml:4: listener `l`: max_connections_per_client must be above 0"]
    );
}

#[test]
fn a_route_may_leave_the_access_log() {
    let logged =
        |extra: &str| Config::parse(Path::new("t.toml"), &route(extra)).unwrap().routes[0].access_log;
    assert!(logged(""));
    assert!(!logged("access_log = false\n"));
}

#[test]
fn http2_streams_per_connection_are_1_to_10000() {
    let listener =
        |extra: &str| format!("{BASE}[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:8080\"\n{extra}");
    let streams = |extra: &str| {
        Config::parse(Path::new("t.toml"), &listener(extra)).unwrap().listeners[0]
            .http2_max_concurrent_streams
    };
    assert_eq!((streams(""), streams("http2_max_concurrent_streams = 100\n")), (200, 100));
    for bad in ["0", "10001"] {
        assert_eq!(
            errors(&listener(&format!("http2_max_concurrent_streams = {bad}\n"))),
            ["t.toml:4: listener `l`: http2_max_concurrent_streams must be 1 to 10000"]
        );
    }
}

#[test]
fn a_connection_age_is_above_0() {
    let listener =
        |extra: &str| format!("{BASE}[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:8080\"\n{extra}");
    let config = Config::parse(Path::new("t.toml"), &listener("max_connection_age_ms = 3600000\n")).unwrap();
    assert_eq!(config.listeners[0].max_connection_age, Some(std::time::Duration::from_secs(3600)));
    assert_eq!(
        Config::parse(Path::new("t.toml"), &listener("")).unwrap().listeners[0].max_connection_age,
        None
    );
    assert_eq!(
        errors(&listener("max_connection_age_ms = 0\n")),
        ["t.toml:4: listener `l`: max_connection_age_ms must be above 0"]
    );
}

/// A route with `extra` and no pool line: lines 1-8 as `route`'s, 9 `[[route]]`, 10 listener,
/// `extra` from 11.
fn answering(extra: &str) -> String {
    route(extra).replace("listener = \"l\"\npool = \"p\"\n", "listener = \"l\"\n")
}

#[test]
fn a_route_that_answers_by_itself_takes_no_pool_and_nothing_that_needs_one() {
    let answers =
        |extra: &str| Config::parse(Path::new("t.toml"), &answering(extra)).unwrap().routes.remove(0);
    let r = answers("redirect = { prefix = \"https://www.a.test\" }\n");
    assert_eq!(r.pool, None);
    assert_eq!(
        r.answer,
        Some(OwnAnswer::Redirect { status: 301, to: "https://www.a.test".into(), prefix: true })
    );
    let r = answers(
        "path_prefix = \"/old/\"\nrewrite_prefix = \"/new/\"\nredirect = { prefix = \"\", status = 308 }\n",
    );
    assert_eq!(
        r.answer,
        Some(OwnAnswer::Redirect { status: 308, to: String::new(), prefix: true }),
        "a path-only prefix"
    );
    let r = answers("redirect = { location = \"/maintenance.html\", status = 302 }\n");
    assert_eq!(
        r.answer,
        Some(OwnAnswer::Redirect { status: 302, to: "/maintenance.html".into(), prefix: false })
    );
    let r =
        answers("respond = { status = 200, body = \"ok\", content_type = \"text/plain; charset=utf-8\" }\n");
    let fixed =
        Fallback { status: 200, body: "ok".into(), content_type: Some("text/plain; charset=utf-8".into()) };
    assert_eq!(r.answer, Some(OwnAnswer::Respond(fixed)));

    let refused = |extra: &str, expected: &str| {
        let found = errors(&answering(extra));
        assert!(
            found.iter().any(|e| e.starts_with(expected)),
            "`{extra}`: expected `{expected}` in {found:?}"
        );
    };
    refused("", "t.toml:10: a route needs a pool, or a redirect or respond of its own");
    says("redirect = { location = \"/x\" }\n", "t.toml:11: a route takes one of pool, redirect and respond");
    refused(
        "redirect = { location = \"/x\" }\nrespond = { status = 200 }\n",
        "t.toml:10: a route takes one of pool, redirect and respond",
    );
    refused("redirect = { status = 301 }\n", "t.toml:11: redirect takes one of location and prefix");
    refused(
        "redirect = { location = \"/a\", prefix = \"/b\" }\n",
        "t.toml:11: redirect takes one of location and prefix",
    );
    refused(
        "redirect = { location = \"/x\", status = 200 }\n",
        "t.toml:11: redirect: status 200 is not a redirect (301, 302, 303, 307, 308)",
    );
    refused(
        "redirect = { location = \"/a b\" }\n",
        "t.toml:11: redirect: `/a b` must be visible ASCII with no space",
    );
    refused(
        "redirect = { location = \"\" }\n",
        "t.toml:11: redirect: `` must be visible ASCII with no space",
    );
    refused(
        "redirect = { prefix = \"https://a.test/\" }\n",
        "t.toml:11: redirect: prefix `https://a.test/` ends in `/`",
    );
    refused("respond = { status = 101 }\n", "t.toml:11: respond: status must be 200 to 599");
    refused("respond = { status = 204, body = \"x\" }\n", "t.toml:11: respond: a 204 has no body");
    refused(
        "respond = { status = 200, content_type = \"text/plain\\r\\nx: 1\" }\n",
        "t.toml:11: respond: content_type `text/plain\r\nx: 1` is not a field value",
    );
    for (line, name) in [
        ("split = [{ pool = \"p\", percent = 10.0 }]", "split"),
        ("sticky = true", "sticky"),
        ("timeout_ms = 5", "timeout_ms"),
        ("try_timeout_ms = 5", "try_timeout_ms"),
        ("max_body_bytes = 5", "max_body_bytes"),
        ("retries = 1", "retries"),
        ("retries = 1\nretry_on = [\"reset\"]", "retry_on"),
        ("retry_budget_percent = 5.0", "retry_budget_percent"),
        ("retry_buffer_bytes = 5", "retry_buffer_bytes"),
        ("grpc_web = true", "grpc_web"),
        ("fallback = { status = 503 }", "fallback"),
        ("shadow = { pool = \"p\", percent = 5.0 }", "shadow"),
        ("cache = {}", "cache"),
        ("compress = {}", "compress"),
        ("request_headers = { set = { \"x-a\" = \"1\" } }", "request_headers"),
        ("path_prefix = \"/a/\"\nrewrite_prefix = \"/b/\"", "rewrite_prefix"),
    ] {
        refused(
            &format!("{line}\nrespond = {{ status = 200 }}\n"),
            &format!("t.toml:10: {name} needs a pool: this route answers by itself"),
        );
    }
    // Gates, matches and the answer's own fields stay.
    let r = answers(
        "host = \"a.test\"\nallow = [\"10.0.0.0/8\"]\nresponse_headers = { set = { \"x-a\" = \"1\" } }\n\
         respond = { status = 200 }\n",
    );
    assert_eq!((r.allow.len(), r.response_headers.set.len()), (1, 1));
}

#[test]
fn header_edits_and_compression_are_checked_at_their_line() {
    says(
        "request_headers = { set = { \"x y\" = \"1\" } }\n",
        "t.toml:12: request_headers: `x y` is not a field name",
    );
    says(
        "response_headers = { remove = [\"Transfer-Encoding\"] }\n",
        "t.toml:12: response_headers: `Transfer-Encoding` frames the message or names its target; lbd keeps it",
    );
    says(
        "request_headers = { set = { host = \"a.test\" } }\n",
        "t.toml:12: request_headers: `host` frames the message or names its target; lbd keeps it",
    );
    says(
        "request_headers = { remove = [\"X-Forwarded-For\"] }\n",
        "t.toml:12: request_headers: `X-Forwarded-For` is set by lbd itself",
    );
    says(
        "request_headers = { set = { \"x-a\" = \"1\" }, remove = [\"X-A\"] }\n",
        "t.toml:12: request_headers: `x-a` is named more than once",
    );
    for value in ["a\\r\\nx-b: 1", " padded", "café", "tab\\t"] {
        says(
            &format!("response_headers = {{ set = {{ \"x-a\" = \"{value}\" }} }}\n"),
            "t.toml:12: response_headers: the value of `x-a` must be visible ASCII, spaces and tabs, none around it",
        );
    }
    says(
        "compress = { types = [\"html\"] }\n",
        "t.toml:12: compress: `html` is not a media type (`type/subtype`)",
    );
    says("compress = { level = 10 }\n", "t.toml:12: compress: level must be 1 to 9");
    let config = Config::parse(Path::new("t.toml"), &route("compress = {}\n")).unwrap();
    let compress = config.routes[0].compress.clone().unwrap();
    assert!(
        compress.types.contains(&"text/html".to_string()) && compress.min_bytes == 256 && compress.level == 1
    );
    let config =
        Config::parse(Path::new("t.toml"), &route("compress = { types = [\"Text/CSV\"] }\n")).unwrap();
    assert_eq!(config.routes[0].compress.as_ref().unwrap().types, ["text/csv"]);
    says(
        "request_headers = { add = { \"x-a\" = \"1\" } }\n",
        "t.toml:12: unknown field `add`, expected `set` or `remove`",
    );

    // Names are kept lowercase; a value may be empty or hold inner spaces.
    let ok = route(
        "request_headers = { set = { \"X-Env\" = \"prod a\", \"x-empty\" = \"\" }, remove = [\"Cookie\"] }\n\
         response_headers = { set = { server = \"sluice\" } }\n",
    );
    let config = Config::parse(Path::new("t.toml"), &ok).unwrap();
    let edits = &config.routes[0].request_headers;
    let set: Vec<_> = edits.set.iter().map(|(n, v)| (n.as_str(), v.to_str().unwrap())).collect();
    assert_eq!(set, [("x-env", "prod a"), ("x-empty", "")]);
    assert_eq!(edits.remove, ["cookie"]);
    assert_eq!(config.routes[0].response_headers.set[0].0, "server");
    assert!(Config::parse(Path::new("t.toml"), &route("")).unwrap().routes[0].request_headers.is_empty());
}

#[test]
fn a_listener_may_take_its_certificate_from_an_acme_ca() {
    let listener = |acme: &str, extra: &str| {
        format!(
            "{BASE}[[listener]]\nname = \"shop\"\naddress = \"127.0.0.1:8443\"\ntls = {{ acme = {{ {acme} }}{extra} }}\n"
        )
    };
    let good = "directory = \"https://acme.test/dir\", contact = [\"mailto:ops@example.test\"], names = [\"Shop.example.test\", \"www.example.test\"], state = \"acme\", accept_terms = true";
    let config = Config::parse_sent(Path::new("/etc/sluice/t.toml"), &listener(good, "")).unwrap();
    let tls = config.listeners[0].tls.as_ref().unwrap();
    assert!(tls.certificates.is_empty());
    let acme = tls.acme.as_ref().unwrap();
    assert_eq!(acme.names, ["shop.example.test", "www.example.test"]);
    assert_eq!(
        acme.folder,
        Path::new("/etc/sluice/acme/shop.example.test"),
        "the state folder, the listener's own below it"
    );
    assert_eq!(acme.files().cert, Path::new("/etc/sluice/acme/shop.example.test/cert.pem"));
    // Another listener asking for the same certificate (its names in another order) shares it;
    // one with the same least name but other names would share its folder: refused.
    let second = |names: &str| {
        format!(
            "{}[[listener]]\nname = \"alt\"\naddress = \"127.0.0.1:9443\"\ntls = {{ acme = {{ {} }} }}\n",
            listener(good, ""),
            good.replace("[\"Shop.example.test\", \"www.example.test\"]", names)
        )
    };
    let config = Config::parse_sent(
        Path::new("/etc/sluice/t.toml"),
        &second("[\"www.example.test\", \"shop.example.test\"]"),
    )
    .unwrap();
    let folders: Vec<_> = config
        .listeners
        .iter()
        .map(|l| l.tls.as_ref().unwrap().acme.as_ref().unwrap().folder.clone())
        .collect();
    assert_eq!(folders[0], folders[1]);
    let refused =
        Config::parse_sent(Path::new("/etc/sluice/t.toml"), &second("[\"shop.example.test\"]")).unwrap_err();
    assert!(
        refused
            .0
            .iter()
            .any(|e| e.message.starts_with("listener `alt`: acme: the same least name as listener `shop`'s")),
        "{refused:?}"
    );
    assert_eq!(acme.directory_ca, None);
    assert_eq!(acme.external_account, None);
    let bound = format!(
        "{good}, external_account = {{ kid = \"kid-1\", hmac_key = \"zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W\" }}"
    );
    let config = Config::parse_sent(Path::new("/etc/sluice/t.toml"), &listener(&bound, "")).unwrap();
    let eab =
        config.listeners[0].tls.as_ref().unwrap().acme.as_ref().unwrap().external_account.clone().unwrap();
    assert_eq!((eab.kid.as_str(), eab.hmac_key.len()), ("kid-1", 48));
    assert!(!format!("{eab:?}").contains("zWND"), "the key in a debug dump");
    let found = |acme: &str, extra: &str| {
        Config::parse_sent(Path::new("/etc/sluice/t.toml"), &listener(acme, extra))
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.message)
            .collect::<Vec<_>>()
    };
    let has = |messages: Vec<String>, start: &str| {
        assert!(messages.iter().any(|m| m.starts_with(start)), "{start}: {messages:?}");
    };
    // Each edit of the good settings, and the error it makes.
    for (from, to, error) in [
        (", accept_terms = true", "", "accept_terms = true is needed"),
        ("https://", "http://", "directory \"http://acme.test/dir\" is not an https URL"),
        ("Shop.example.test", "*.example.test", "*.example.test: a wildcard name needs DNS-01"),
        ("Shop.example.test", "shop_1.test", "\"shop_1.test\" is not a DNS name"),
        ("Shop.example.test", "localhost", "\"localhost\" is not a DNS name"),
        ("mailto:ops@example.test", "ops@example.test", "contact \"ops@example.test\" is not a URL"),
        ("[\"Shop.example.test\", \"www.example.test\"]", "[]", "names lists none"),
    ] {
        has(found(&good.replace(from, to), ""), &format!("listener `shop`: acme: {error}"));
    }
    has(found(good, ", client_ca = \"ca.pem\""), "listener `shop`: acme and client_ca");
    // Where files are looked at (`lbd check`), the state folder must be one lbd can make: not
    // below a file. A folder that does not exist yet is made when the first order is.
    let file = std::env::temp_dir().join(format!("sluice-acme-state-file-{}", std::process::id()));
    std::fs::write(&file, "").unwrap();
    let below_a_file = good.replace("state = \"acme\"", &format!("state = \"{}/acme\"", file.display()));
    let refused = errors(&listener(&below_a_file, ""));
    assert!(
        refused
            .iter()
            .any(|e| e.contains("listener `shop`: acme: cannot keep its state: ")
                && e.contains("is not a folder")),
        "{refused:?}"
    );
    let writable =
        good.replace("state = \"acme\"", &format!("state = \"{}/not/yet\"", std::env::temp_dir().display()));
    assert!(Config::parse(Path::new("t.toml"), &listener(&writable, "")).is_ok());
    std::fs::remove_file(&file).unwrap();
    has(
        found(&format!("{good}, external_account = {{ kid = \"k\", hmac_key = \"not base64!\" }}"), ""),
        "listener `shop`: acme: external_account needs a kid and an hmac_key",
    );
    // HTTP-01: asked on port 80, so a plain listener must be there; with it, client
    // certificates may be asked on the TLS listener (the validation does not reach it).
    let http01 = format!("{good}, challenge = \"http-01\"");
    has(found(&http01, ""), "listener `shop`: acme: http-01 needs a plain listener on port 80");
    has(found(&format!("{good}, challenge = \"dns-01\""), ""), "unknown variant `dns-01`");
    let plain = "[[listener]]\nname = \"plain\"\naddress = \"127.0.0.1:80\"\n";
    let both = format!("{}{plain}", listener(&http01, ", client_ca = \"/etc/ca.pem\""));
    let config = Config::parse_sent(Path::new("/etc/sluice/t.toml"), &both).unwrap();
    let acme = config.listeners[0].tls.as_ref().unwrap().acme.clone().unwrap();
    assert_eq!(acme.challenge, AcmeChallenge::Http01);
    let config = Config::parse_sent(Path::new("/etc/sluice/t.toml"), &listener(good, "")).unwrap();
    assert_eq!(
        config.listeners[0].tls.as_ref().unwrap().acme.as_ref().unwrap().challenge,
        AcmeChallenge::TlsAlpn01
    );
}

#[test]
fn a_listener_s_tls_needs_a_certificate_and_readable_files_beside_the_config() {
    let listener = |tls: &str| {
        format!("{BASE}[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:8443\"\ntls = {{ {tls} }}\n")
    };
    assert_error(
        &listener("certificates = []"),
        "t.toml:4: listener `l`: tls needs at least one certificate (or acme)",
    );
    // Files are looked for beside the config (here the current folder), and must be readable.
    let found = errors(&listener("certificates = [{ cert = \"no-such-c.pem\", key = \"no-such-k.pem\" }]"));
    assert!(found.iter().any(|e| e.starts_with("t.toml:6: cannot read no-such-c.pem")), "{found:?}");
    assert!(found.iter().any(|e| e.starts_with("t.toml:6: cannot read no-such-k.pem")), "{found:?}");
    // A config a client sent names no file lbd opens: not read, but still resolved.
    let sent =
        listener("certificates = [{ cert = \"/etc/c.pem\", key = \"k.pem\" }], client_ca = \"ca.pem\"");
    let config = Config::parse_sent(Path::new("/etc/sluice/t.toml"), &sent).unwrap();
    let tls = config.listeners[0].tls.as_ref().unwrap();
    let files = |ocsp: Option<&str>| CertFiles {
        cert: PathBuf::from("/etc/c.pem"),
        key: PathBuf::from("/etc/sluice/k.pem"),
        ocsp: ocsp.map(PathBuf::from),
    };
    assert_eq!(tls.certificates, [files(None)]);
    let stapled = listener("certificates = [{ cert = \"/etc/c.pem\", key = \"k.pem\", ocsp = \"c.ocsp\" }]");
    let config = Config::parse_sent(Path::new("/etc/sluice/t.toml"), &stapled).unwrap();
    assert_eq!(config.listeners[0].tls.as_ref().unwrap().certificates, [files(Some("/etc/sluice/c.ocsp"))]);
    assert_eq!(tls.client_ca, Some(PathBuf::from("/etc/sluice/ca.pem")));
    assert!(!tls.forward_client_cert);
    let forwarded = listener(
        "certificates = [{ cert = \"/etc/c.pem\", key = \"k.pem\" }], client_ca = \"ca.pem\", forward_client_cert = true",
    );
    let config = Config::parse_sent(Path::new("/etc/sluice/t.toml"), &forwarded).unwrap();
    assert!(config.listeners[0].tls.as_ref().unwrap().forward_client_cert);
    assert_eq!(config.listeners[0].tls.as_ref().unwrap().forward_client_cert_details, Default::default());
    let detailed = format!(
        "{}, forward_client_cert_details = [\"chain\", \"cert\"] }}\n",
        forwarded.trim_end().trim_end_matches('}').trim_end()
    );
    let config = Config::parse_sent(Path::new("/etc/sluice/t.toml"), &detailed).unwrap();
    let details = config.listeners[0].tls.as_ref().unwrap().forward_client_cert_details;
    assert!(details.cert && details.chain);
    for (listed, error) in [
        (
            "forward_client_cert = true, forward_client_cert_details = [\"pem\"]",
            "forward_client_cert_details: \"pem\" is not `cert` or `chain`",
        ),
        ("forward_client_cert_details = [\"cert\"]", "forward_client_cert_details needs forward_client_cert"),
    ] {
        let text = listener(&format!(
            "certificates = [{{ cert = \"/etc/c.pem\", key = \"k.pem\" }}], client_ca = \"ca.pem\", {listed}"
        ));
        let found = Config::parse_sent(Path::new("/etc/sluice/t.toml"), &text).unwrap_err();
        assert!(found.0.iter().any(|e| e.message == format!("listener `l`: {error}")), "{found:?}");
    }
    let without_ca =
        listener("certificates = [{ cert = \"/etc/c.pem\", key = \"k.pem\" }], forward_client_cert = true");
    let found = Config::parse_sent(Path::new("/etc/sluice/t.toml"), &without_ca).unwrap_err();
    assert!(
        found.0.iter().any(
            |e| e.line == 4 && e.message.starts_with("listener `l`: forward_client_cert needs client_ca")
        ),
        "{found:?}"
    );
}

#[test]
fn each_pool_backend_and_health_check_says_what_is_wrong_at_its_line() {
    // Lines 1-2 BASE, 3 `[[pool]]`, 4 name, 5 backends, 6 health.
    let pool = |backends: &str, health: &str| {
        format!(
            "{BASE}[[pool]]\nname = \"p\"\nbackends = [{backends}]\nhealth = {{ kind = \"tcp\", {health} }}\n"
        )
    };
    let one = "{ address = \"10.0.0.1\" }";
    let says = |text: String, expected: &str| {
        let found = errors(&text);
        assert!(found.iter().any(|e| e.starts_with(expected)), "expected `{expected}` in {found:?}");
    };
    assert!(Config::parse(Path::new("t.toml"), &pool(one, "port = 80")).is_ok());
    says(
        pool(&format!("{one}, {one}"), "port = 80"),
        "t.toml:5: backend 10.0.0.1 is listed twice in pool `p`",
    );
    says(pool(one, "port = 0"), "t.toml:6: pool `p` health: port, rise and fall must be at least 1");
    says(
        pool(one, "port = 80, fall = 0"),
        "t.toml:6: pool `p` health: port, rise and fall must be at least 1",
    );
    says(
        pool(one, "port = 80, interval_ms = 500, timeout_ms = 500"),
        "t.toml:6: pool `p` health: timeout_ms must be above 0 and below interval_ms",
    );
    says(
        pool(one, "port = 80, timeout_ms = 0"),
        "t.toml:6: pool `p` health: timeout_ms must be above 0 and below interval_ms",
    );
    says(pool(one, "port = 80, path = \"health\""), "t.toml:6: pool `p` health: path must start with /");
}

#[test]
fn a_pool_s_tls_needs_a_ca_unless_unverified_and_h2_needs_tls() {
    // Lines 1-2 BASE, 3-6 the pool (its name on 4), its TLS on 7.
    let pool = |protocol: &str, tls: &str| {
        format!(
            "{BASE}[[pool]]\nname = \"p\"\nbackends = [{{ address = \"10.0.0.1\" }}]\nprotocol = \"{protocol}\"\n{tls}"
        )
    };
    let sent = |text: &str| Config::parse_sent(Path::new("/etc/sluice/t.toml"), text);
    let config = sent(&pool("h2", "tls = { ca = \"ca.pem\", server_name = \"app.internal\" }\n")).unwrap();
    let tls = config.pools["p"].tls.as_ref().unwrap();
    assert_eq!(tls.ca.as_deref(), Some(Path::new("/etc/sluice/ca.pem")), "relative to the config");
    assert!(tls.verify);
    assert_eq!(tls.server_name.as_deref(), Some("app.internal"));
    assert_eq!(config.pools["p"].protocol, UpstreamProtocol::H2);
    let config =
        sent(&pool("http1", "tls = { verify = false, cert = \"c.pem\", key = \"k.pem\" }\n")).unwrap();
    let tls = config.pools["p"].tls.as_ref().unwrap();
    assert!(!tls.verify && tls.ca.is_none());
    assert_eq!(tls.client_cert, Some(("/etc/sluice/c.pem".into(), "/etc/sluice/k.pem".into())));
    let config = sent(&pool("http1", "proxy_protocol = \"v2\"\n")).unwrap();
    assert_eq!(config.pools["p"].proxy_protocol, Some(ProxyVersion::V2));
    assert!(sent(&pool("http1", "")).unwrap().pools["p"].proxy_protocol.is_none());
    let config = sent(&pool("http1", "tls = { ca = \"ca.pem\", sni_from_host = true }\n")).unwrap();
    assert!(config.pools["p"].tls.as_ref().unwrap().sni_from_host);
    assert!(sent(&pool("http1", "")).unwrap().pools["p"].tls.is_none());
    let errors = |text: &str| -> Vec<String> {
        sent(text).unwrap_err().0.iter().map(|e| e.to_string().replace("/etc/sluice/t.toml", "t")).collect()
    };
    for (protocol, tls, expected) in [
        ("h2", "", "t:4: pool `p`: protocol = \"h2\" is HTTP/2 over TLS and needs `tls`"),
        ("h2c", "tls = { verify = false }", "t:7: pool `p`: protocol = \"h2c\" is cleartext"),
        (
            "http1",
            "tls = {}",
            "t:7: pool `p` tls: `ca` (the CA that signed the backends' certificates) is needed",
        ),
        (
            "http1",
            "tls = { ca = \"ca.pem\", verify = false }",
            "t:7: pool `p` tls: `ca` is unused with verify = false",
        ),
        (
            "http1",
            "tls = { ca = \"ca.pem\", server_name = \"a b\" }",
            "t:7: pool `p` tls: server_name `a b` is not",
        ),
        (
            "http1",
            "tls = { ca = \"ca.pem\", cert = \"c.pem\" }",
            "t:7: pool `p` tls: `cert` and `key` go together",
        ),
        ("h2c", "proxy_protocol = \"v1\"", "t:7: pool `p`: proxy_protocol is for HTTP/1.1 pools"),
        (
            "http1",
            "tls = { ca = \"ca.pem\", server_name = \"a.test\", sni_from_host = true }",
            "t:7: pool `p` tls: server_name and sni_from_host = true both name the server",
        ),
    ] {
        let found = errors(&pool(protocol, &format!("{tls}\n")));
        assert!(found.iter().any(|e| e.starts_with(expected)), "expected `{expected}` in {found:?}");
    }
}

#[test]
fn a_pool_s_tls_files_must_hold_certificates_and_a_key() {
    let dir = std::env::temp_dir().join(format!("sluice-backend-tls-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("empty.pem"), "no certificate here\n").unwrap();
    let text = format!(
        "{BASE}[[pool]]\nname = \"p\"\nbackends = [{{ address = \"10.0.0.1\" }}]\n\
         tls = {{ ca = \"empty.pem\", cert = \"missing.pem\", key = \"empty.pem\" }}\n"
    );
    let found: Vec<String> = Config::parse(&dir.join("t.toml"), &text)
        .unwrap_err()
        .0
        .iter()
        .map(|e| e.to_string().replace(&format!("{}/", dir.display()), ""))
        .collect();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        found,
        [
            "t.toml:6: empty.pem holds no PEM certificate",
            "t.toml:6: cannot read certificates from missing.pem: No such file or directory (os error 2)",
            "t.toml:6: cannot read a private key from empty.pem: no items found",
        ],
    );
}

#[test]
fn http3_is_told_by_alt_svc_and_needs_quic_s_suite_and_no_proxy_protocol() {
    let listener = |tls: &str, extra: &str| {
        format!(
            "{BASE}[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:8443\"\n{extra}\
             tls = {{ certificates = [{{ cert = \"/etc/c.pem\", key = \"/etc/k.pem\" }}], {tls} }}\n"
        )
    };
    let http3 = |text: &str| {
        let config = Config::parse_sent(Path::new("/etc/sluice/t.toml"), text).unwrap();
        config.listeners[0].tls.as_ref().unwrap().http3.clone()
    };
    assert_eq!(http3(&listener("forward_client_cert = false", "")), None);
    let alt_svc = |text: &str| http3(text).unwrap().alt_svc.map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(alt_svc(&listener("http3 = true", "")).as_deref(), Some("h3=\":8443\"; ma=86400"));
    assert_eq!(
        alt_svc(&listener("http3 = true, alt_svc_max_age_s = 300", "")).as_deref(),
        Some("h3=\":8443\"; ma=300")
    );
    assert_eq!(alt_svc(&listener("http3 = true, alt_svc_max_age_s = 0", "")), None);
    assert_eq!(http3(&listener("http3 = true", "")).unwrap().retry, Http3Retry::UnderLoad);
    assert_eq!(
        http3(&listener("http3 = true, http3_retry = \"always\"", "")).unwrap().retry,
        Http3Retry::Always
    );
    for (tls, extra, error) in [
        ("http3_retry = \"always\"", "", "http3_retry needs http3 = true"),
        (
            "http3 = true, http3_retry = \"sometimes\"",
            "",
            "http3_retry: \"sometimes\" is not `under_load` or `always`",
        ),
        ("alt_svc_max_age_s = 60", "", "alt_svc_max_age_s needs http3 = true"),
        ("http3 = true", "proxy_protocol = true\n", "http3 and proxy_protocol: QUIC carries no PROXY header"),
        (
            "http3 = true, cipher_suites = [\"TLS13_AES_256_GCM_SHA384\"]",
            "",
            "http3 needs TLS13_AES_128_GCM_SHA256 in cipher_suites (QUIC's Initial packets use it)",
        ),
    ] {
        let found = Config::parse_sent(Path::new("/etc/sluice/t.toml"), &listener(tls, extra)).unwrap_err();
        assert!(found.0.iter().any(|e| e.message == format!("listener `l`: {error}")), "{tls}: {found:?}");
    }
}

#[test]
fn error_pages_are_statuses_of_400_to_599_in_readable_files_of_known_types() {
    let dir = std::env::temp_dir().join(format!("sluice-config-pages-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("502.html"), "<h1>down</h1>").unwrap();
    std::fs::write(dir.join("429.JSON"), "{}").unwrap();
    std::fs::write(dir.join("big.html"), "x".repeat(MAX_ERROR_PAGE_BYTES + 1)).unwrap();
    std::fs::write(dir.join("logo.png"), "png").unwrap();
    let file = dir.join("t.toml");
    let listener = |pages: &str| {
        format!(
            "[dataplane]\ninterface = \"eth0\"\n[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:8080\"\n\
             error_pages = {{ {pages} }}\n"
        )
    };
    let found = |pages: &str| -> Vec<String> {
        Config::parse(&file, &listener(pages)).unwrap_err().0.iter().map(ToString::to_string).collect()
    };
    let config = Config::parse(&file, &listener("502 = \"502.html\", 429 = \"429.JSON\"")).unwrap();
    let pages = &config.listeners[0].error_pages;
    assert_eq!(
        pages.iter().map(|p| (p.status, p.file.clone(), p.content_type)).collect::<Vec<_>>(),
        [
            (429, dir.join("429.JSON"), "application/json"),
            (502, dir.join("502.html"), "text/html; charset=utf-8")
        ],
        "beside the config, in status order, typed by extension"
    );
    for (pages, expected) in [
        ("302 = \"502.html\"", "t.toml:6: error_pages: `302` is not a status from 400 to 599"),
        ("fivehundred = \"502.html\"", "error_pages: `fivehundred` is not a status"),
        ("500 = \"logo.png\"", "error_pages: 500: logo.png is not a .html, .htm, .json, .txt or .xml file"),
        ("503 = \"gone.html\"", "error_pages: 503:"),
        ("504 = \"big.html\"", "bytes, over the 65536 an error page may have"),
    ] {
        let errors = found(pages);
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "`{pages}`: expected `{expected}` in {errors:?}"
        );
    }
    // A sent config (`lbctl plan -c`) names files lbd does not open.
    Config::parse_sent(&file, &listener("503 = \"gone.html\"")).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_dns_pool_names_a_host_asked_every_second_to_an_hour_and_has_no_backup() {
    let pool = |dns: &str| format!("[[pool]]\nname = \"app\"\nbackends = []\ndns = {dns}\n");
    let config = Config::parse(Path::new("t.toml"), &pool("{ name = \"App.Internal.\" }")).unwrap();
    let dns = config.pools["app"].dns.clone().unwrap();
    assert_eq!(
        (dns.name.as_str(), dns.interval, dns.empty_hold),
        ("app.internal", Duration::from_secs(5), Duration::from_secs(30)),
        "lowercase, no trailing dot, Envoy's 5 s, HAProxy's hold nx"
    );
    assert_eq!(config.resolver, None, "/etc/resolv.conf's servers");
    for (dns, expected) in [
        ("{ name = \"10.0.0.1\" }", "dns: `10.0.0.1` is not a host name"),
        ("{ name = \"a..b\" }", "dns: `a..b` is not a host name"),
        ("{ name = \"a b\" }", "dns: `a b` is not a host name"),
        ("{ name = \"a\", interval_ms = 999 }", "dns: interval_ms must be 1000 to 3600000"),
        ("{ name = \"a\", empty_hold_ms = 86400001 }", "dns: empty_hold_ms must be at most 86400000"),
        ("{ name = \"a\", ttl = 5 }", "unknown field `ttl`"),
    ] {
        let found = errors(&pool(dns));
        assert!(found.iter().any(|e| e.contains(expected)), "expected `{expected}` in {found:?}");
    }
    assert_error(
        "[[pool]]\nname = \"app\"\nbackends = [{ address = \"10.0.0.1\", backup = true }]\ndns = { name = \"a\" }\n",
        "t.toml:4: pool `app`: dns: its backends come and go with the name's records, so none is a backup",
    );
    let servers = |list: &str| format!("[resolver]\nnameservers = {list}\n{}", pool("{ name = \"a\" }"));
    let config =
        Config::parse(Path::new("t.toml"), &servers("[\"10.0.0.53\", \"[fd00::53]:5353\"]")).unwrap();
    assert_eq!(
        config.resolver.unwrap().nameservers,
        ["10.0.0.53:53".parse().unwrap(), "[fd00::53]:5353".parse().unwrap()]
    );
    assert_error(&servers("[\"dns.example\"]"), "t.toml:2: resolver: `dns.example` is not IP or IP:PORT");
    assert_error(&servers("[]"), "t.toml:2: resolver: nameservers must name 1 to 8 servers");
}

#[test]
fn a_route_intercepts_errors_only_with_pages_to_send_and_a_pool() {
    let config = |pages: &str, route: &str| {
        format!(
            "[[pool]]\nname = \"p\"\nbackends = [{{ address = \"10.0.0.1\" }}]\n\
             [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:8080\"\n{pages}\
             [[route]]\nlistener = \"l\"\n{route}\nintercept_errors = true\n"
        )
    };
    let found = errors(&config("", "pool = \"p\""));
    assert!(
        found.iter().any(|e| e.contains("intercept_errors: listener `l` has no error_pages to send")),
        "{found:?}"
    );
    let pages = "error_pages = { 404 = \"/nonexistent/404.html\" }\n";
    let found = errors(&config(pages, "respond = { status = 200 }"));
    assert!(found.iter().any(|e| e.contains("intercept_errors needs a pool")), "{found:?}");
    let config = Config::parse_sent(Path::new("t.toml"), &config(pages, "pool = \"p\"")).unwrap();
    assert!(config.routes[0].intercept_errors);
}

#[test]
fn a_fault_is_a_delay_of_up_to_a_minute_or_an_error_status_each_with_its_share() {
    let route = |fault: &str| {
        format!(
            "[[pool]]\nname = \"p\"\nbackends = [{{ address = \"10.0.0.1\" }}]\n\
             [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:8080\"\n\
             [[route]]\nlistener = \"l\"\npool = \"p\"\nfault = {fault}\n"
        )
    };
    let parsed = |fault: &str| Config::parse(Path::new("t.toml"), &route(fault)).unwrap().routes[0].fault;
    assert_eq!(
        parsed("{ delay_ms = 250, delay_percent = 10, abort_status = 503 }"),
        Some(Fault { delay: Some((Duration::from_millis(250), 10.0)), abort: Some((503, 100.0)) }),
        "a share not given is every request"
    );
    for (fault, expected) in [
        ("{ delay_ms = 0 }", "fault: delay_ms must be 1 to 60000"),
        ("{ delay_ms = 60001 }", "fault: delay_ms must be 1 to 60000"),
        ("{ abort_status = 302 }", "fault: abort_status must be 400 to 599"),
        ("{ abort_status = 503, abort_percent = 101 }", "fault: abort_percent must be 0 to 100"),
        ("{ delay_ms = 5, abort_percent = 5 }", "fault: abort_percent needs abort_status"),
        ("{ delay_percent = 5 }", "fault: delay_percent needs delay_ms"),
        ("{}", "fault: give delay_ms, abort_status or both"),
    ] {
        let found = errors(&route(fault));
        assert!(found.iter().any(|e| e.contains(expected)), "`{fault}`: expected `{expected}` in {found:?}");
    }
    let own = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:8080\"\n\
               [[route]]\nlistener = \"l\"\nrespond = { status = 200 }\nfault = { abort_status = 503 }\n";
    assert!(errors(own).iter().any(|e| e.contains("fault needs a pool")));
}

#[test]
fn an_access_log_filter_names_a_status_a_time_or_a_share() {
    let listener = |filter: &str| {
        format!("[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:8080\"\naccess_log_filter = {filter}\n")
    };
    let config = Config::parse(
        Path::new("t.toml"),
        &listener("{ status_at_least = 500, slower_than_ms = 1000, sample_percent = 0.5 }"),
    )
    .unwrap();
    assert_eq!(
        config.listeners[0].access_log_filter,
        Some(LogFilter {
            status_at_least: Some(500),
            slower_than: Some(Duration::from_secs(1)),
            sample_percent: Some(0.5)
        })
    );
    for (filter, expected) in [
        ("{ status_at_least = 99 }", "access_log_filter: status_at_least must be 100 to 599"),
        ("{ slower_than_ms = 0 }", "access_log_filter: slower_than_ms must be 1 to 3600000"),
        ("{ sample_percent = 101 }", "access_log_filter: sample_percent must be 0 to 100"),
        ("{}", "access_log_filter: give status_at_least, slower_than_ms or sample_percent"),
        ("{ status = 500 }", "unknown field `status`"),
    ] {
        let found = errors(&listener(filter));
        assert!(found.iter().any(|e| e.contains(expected)), "`{filter}`: expected `{expected}` in {found:?}");
    }
}
