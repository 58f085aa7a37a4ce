//! State: commands, validation, diff and effective weights.
use std::path::Path;

use super::*;
use crate::config::{Fault, FaultSpec};

fn config(backends: &str, deny: &str) -> Config {
    let text = format!(
        "[dataplane]\ninterface = \"eth0\"\n\
         [[vip]]\nname = \"web\"\naddress = \"198.19.0.1\"\nport = 80\nprotocol = \"tcp\"\npool = \"web\"\n\
         [[pool]]\nname = \"web\"\nbackends = [{backends}]\n[deny]\nprefixes = [{deny}]\n"
    );
    Config::parse(Path::new("t.toml"), &text).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn operator_commands_change_the_pool() {
    let mut state = State::new(config("{ address = \"10.0.0.1\" }", ""));
    let add = Command::AddBackend { pool: "web".into(), address: ip("10.0.0.2"), weight: 50 };
    assert_eq!(state.apply(&add).unwrap(), "pool web: backend 10.0.0.2 added with weight 50");
    assert_eq!(state.apply(&add), Err(CommandError::DuplicateBackend("web".into(), ip("10.0.0.2"))));
    let drain = Command::SetDrain { pool: "web".into(), address: ip("10.0.0.1"), drain: true };
    assert!(state.apply(&drain).unwrap().contains("draining"));
    let (weights, _) = state.effective_backends(&state.config.pools["web"]);
    assert_eq!(weights.iter().map(|w| w.weight).collect::<Vec<_>>(), [0, 50]);
    let remove = Command::RemoveBackend { pool: "web".into(), address: ip("10.0.0.9") };
    assert_eq!(state.apply(&remove), Err(CommandError::NoBackend("web".into(), ip("10.0.0.9"))));
    let nopool = Command::SetWeight { pool: "nope".into(), address: ip("10.0.0.1"), weight: 1 };
    assert_eq!(state.apply(&nopool), Err(CommandError::NoPool("nope".into())));
}

#[test]
fn down_backends_leave_and_all_down_fails_open() {
    let mut state = State::new(config("{ address = \"10.0.0.1\" }, { address = \"10.0.0.2\" }", ""));
    let down = |a| Command::SetHealth { pool: "web".into(), address: ip(a), healthy: false };
    state.apply(&down("10.0.0.1")).unwrap();
    let (weights, open) = state.effective_backends(&state.config.pools["web"]);
    assert_eq!((weights[0].weight, weights[1].weight, open), (0, 100, false));
    state.apply(&down("10.0.0.2")).unwrap();
    let (weights, open) = state.effective_backends(&state.config.pools["web"]);
    assert_eq!((weights[0].weight, weights[1].weight, open), (100, 100, true));
    assert_eq!(state.failing_open(), ["web"]);
}

#[test]
fn a_backup_takes_flows_only_while_no_other_backend_can() {
    let backends = "{ address = \"10.0.0.1\" }, { address = \"10.0.0.2\", weight = 50 }, \
                    { address = \"10.0.0.3\", backup = true, weight = 30 }";
    let mut state = State::new(config(backends, ""));
    let weights = |state: &State| {
        let (weights, open) = state.effective_backends(&state.config.pools["web"]);
        (weights.iter().map(|w| w.weight).collect::<Vec<_>>(), open)
    };
    let health = |a, healthy| Command::SetHealth { pool: "web".into(), address: ip(a), healthy };
    assert_eq!(weights(&state), (vec![100, 50, 0], false), "standing by");
    state.apply(&health("10.0.0.1", false)).unwrap();
    assert_eq!(weights(&state), (vec![0, 50, 0], false), "one other backend is enough");
    let drain = Command::SetDrain { pool: "web".into(), address: ip("10.0.0.2"), drain: true };
    state.apply(&drain).unwrap();
    assert_eq!(weights(&state), (vec![0, 0, 30], false), "the others down or drained: the backup serves");
    assert!(state.pool_usable(&state.config.pools["web"]));
    state.apply(&health("10.0.0.1", true)).unwrap();
    assert_eq!(weights(&state), (vec![100, 0, 0], false), "back to standing by");
    state.apply(&health("10.0.0.1", false)).unwrap();
    state.apply(&health("10.0.0.3", false)).unwrap();
    assert_eq!(
        weights(&state),
        (vec![100, 0, 0], true),
        "all down: failing open, the backup still standing by"
    );
    let ejected = Command::SetEjected { pool: "web".into(), address: ip("10.0.0.1"), ejected: true };
    state.apply(&health("10.0.0.3", true)).unwrap();
    state.apply(&ejected).unwrap();
    assert_eq!(weights(&state), (vec![0, 0, 30], false), "an ejection counts as down");
}

#[test]
fn a_reload_makes_backends_backups_or_not() {
    let mut state = State::new(config("{ address = \"10.0.0.1\" }, { address = \"10.0.0.2\" }", ""));
    let new = config(
        "{ address = \"10.0.0.1\" }, { address = \"10.0.0.2\", backup = true }, \
         { address = \"10.0.0.3\", backup = true }",
        "",
    );
    for c in state.diff(&new) {
        state.apply(&c).unwrap();
    }
    let backups = |state: &State| {
        let pool = &state.config.pools["web"];
        pool.backends.iter().filter(|b| b.backup).map(|b| b.addr.to_string()).collect::<Vec<_>>()
    };
    assert_eq!(backups(&state), ["10.0.0.2", "10.0.0.3"]);
    assert_eq!(state.config, new, "the reload reached the file's config");
    let old =
        config("{ address = \"10.0.0.1\" }, { address = \"10.0.0.2\" }, { address = \"10.0.0.3\" }", "");
    for c in state.diff(&old) {
        state.apply(&c).unwrap();
    }
    assert_eq!(backups(&state), Vec::<String>::new());
}

#[test]
fn diff_then_apply_reaches_the_new_config() {
    let old =
        config("{ address = \"10.0.0.1\" }, { address = \"10.0.0.2\", weight = 10 }", "\"203.0.113.0/24\"");
    let new = config(
        "{ address = \"10.0.0.2\", weight = 20 }, { address = \"10.0.0.3\", drain = true }",
        "\"198.51.100.0/24\"",
    );
    let mut state = State::new(old);
    let commands = state.diff(&new);
    for c in &commands {
        state.apply(c).unwrap();
    }
    assert_eq!(state.config.pools, new.pools);
    assert_eq!(state.config.deny, new.deny);
    assert!(state.diff(&new).is_empty(), "second diff: {:?}", state.diff(&new));
    assert!(commands.contains(&Command::RemoveBackend { pool: "web".into(), address: ip("10.0.0.1") }));
    assert!(commands.contains(&Command::SetWeight {
        pool: "web".into(),
        address: ip("10.0.0.2"),
        weight: 20
    }));
}

#[test]
fn a_pool_in_use_cannot_be_removed() {
    let mut state = State::new(config("", ""));
    assert_eq!(
        state.apply(&Command::RemovePool { pool: "web".into() }),
        Err(CommandError::PoolInUse("web".into(), "web".into()))
    );
}

#[test]
fn an_ejection_outlasts_good_probes() {
    let mut state = State::new(config("{ address = \"10.0.0.1\" }, { address = \"10.0.0.2\" }", ""));
    let eject = Command::SetEjected { pool: "web".into(), address: ip("10.0.0.1"), ejected: true };
    assert!(state.apply(&eject).unwrap().contains("ejected"));
    let up = Command::SetHealth { pool: "web".into(), address: ip("10.0.0.1"), healthy: true };
    state.apply(&up).unwrap();
    let (weights, open) = state.effective_backends(&state.config.pools["web"]);
    assert_eq!(
        weights.iter().map(|w| w.weight).collect::<Vec<_>>(),
        [0, 100],
        "a good probe ended the ejection"
    );
    assert!(!open);
    let back = Command::SetEjected { pool: "web".into(), address: ip("10.0.0.1"), ejected: false };
    assert!(state.apply(&back).unwrap().contains("back"));
    let (weights, _) = state.effective_backends(&state.config.pools["web"]);
    assert_eq!(weights.iter().map(|w| w.weight).collect::<Vec<_>>(), [100, 100]);
}

#[test]
fn only_an_ipv6_l4_vip_keeps_ipv4_backends_out_of_its_pool() {
    let text = |mode: &str| {
        format!(
            "[dataplane]\ninterface = \"eth0\"\n\
             [[vip]]\nname = \"web6\"\naddress = \"fd00::1\"\nport = 80\nprotocol = \"tcp\"\npool = \"web\"\nmode = \"{mode}\"\n\
             [[pool]]\nname = \"web\"\nbackends = [{{ address = \"fd00::10\" }}]\n\
             [[listener]]\nname = \"l\"\naddress = \"[fd00::1]:80\"\n"
        )
    };
    let add = Command::AddBackend { pool: "web".into(), address: ip("10.0.0.2"), weight: 50 };
    // The proxy connects to IPv4 backends of an IPv6 L7 VIP's pool.
    let mut l7 = State::new(Config::parse(Path::new("t.toml"), &text("l7")).unwrap());
    assert!(l7.apply(&add).is_ok());
    // XDP cannot put IPv6 in IPv4: refused for an IPv6 L4 VIP.
    let l4 = text("l4").replace("[[listener]]\nname = \"l\"\naddress = \"[fd00::1]:80\"\n", "");
    let mut l4 = State::new(Config::parse(Path::new("t.toml"), &l4).unwrap());
    assert!(matches!(l4.apply(&add), Err(CommandError::Invalid(why)) if why.contains("IPv6 L4 VIP")));
}

/// A canary step by command: the share to a pool set, changed, ended; refusals leave the route
/// as it was.
#[test]
fn a_route_split_changes_by_command_within_its_bounds() {
    let text = "[dataplane]\ninterface = \"eth0\"\n\
                [[pool]]\nname = \"stable\"\nbackends = [{ address = \"10.0.0.1\" }]\n\
                [[pool]]\nname = \"canary\"\nbackends = [{ address = \"10.0.0.2\" }]\n\
                [[pool]]\nname = \"other\"\nbackends = [{ address = \"10.0.0.3\" }]\n\
                [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\n\
                [[route]]\nname = \"site\"\nlistener = \"l\"\npool = \"stable\"\nsplit = [{ pool = \"other\", percent = 30 }]\n";
    let mut state = State::new(Config::parse(Path::new("t.toml"), text).unwrap());
    let split = |pool: &str, percent| Command::SetSplit { route: "site".into(), pool: pool.into(), percent };
    assert_eq!(state.apply(&split("canary", 10.0)).unwrap(), "route site: 10% to pool canary (was 0%)");
    assert_eq!(state.apply(&split("canary", 10.0)).unwrap(), "", "no change");
    assert_eq!(state.apply(&split("canary", 70.0)).unwrap(), "route site: 70% to pool canary (was 10%)");
    for (refused, why) in [
        (split("canary", 71.0), "over 100"),
        (split("stable", 5.0), "own pool"),
        (split("canary", -1.0), "0 to 100"),
        (split("nope", 5.0), "nope"),
        (Command::SetSplit { route: "x".into(), pool: "canary".into(), percent: 5.0 }, "no route"),
    ] {
        let err = state.apply(&refused).unwrap_err().to_string();
        assert!(err.contains(why), "{err}");
    }
    let shares = |state: &State| state.config.routes[0].split.clone();
    assert_eq!(shares(&state), [("other".to_owned(), 30.0), ("canary".to_owned(), 70.0)]);
    assert!(state.apply(&split("other", 0.0)).unwrap().contains("0% to pool other (was 30%)"));
    assert_eq!(shares(&state), [("canary".to_owned(), 70.0)]);
    assert!(split("canary", 1.0).persists(), "written to the config file");
}

#[test]
fn an_l7_only_host_refuses_a_deny_prefix_as_its_config_would() {
    let text = "[[pool]]\nname = \"web\"\nbackends = [{ address = \"10.0.0.1\" }]\n\
                [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:8080\"\n[[route]]\nlistener = \"l\"\npool = \"web\"\n";
    let mut state = State::new(Config::parse(Path::new("t.toml"), text).unwrap());
    let deny = Command::AddDeny { prefix: "198.51.100.0/24".parse().unwrap() };
    let refused = state.apply(&deny).unwrap_err().to_string();
    assert!(refused.contains("no [dataplane] section"), "{refused}");
    assert!(state.config.deny.is_empty());
    // With a dataplane it is taken.
    let mut state = State::new(config("{ address = \"10.0.0.1\" }", ""));
    assert_eq!(state.apply(&deny).unwrap(), "deny 198.51.100.0/24 added");
}

#[test]
fn a_route_s_faults_change_by_command_within_the_file_s_bounds() {
    let text = "[[pool]]\nname = \"web\"\nbackends = [{ address = \"10.0.0.1\" }]\n\
                [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\n\
                [[route]]\nname = \"site\"\nlistener = \"l\"\npool = \"web\"\n\
                [[route]]\nname = \"ok\"\nlistener = \"l\"\nrespond = { status = 200 }\n";
    let mut state = State::new(Config::parse(Path::new("t.toml"), text).unwrap());
    let fault = |route: &str, spec: Option<FaultSpec>| Command::SetFault { route: route.into(), fault: spec };
    let abort = FaultSpec { abort_status: Some(503), abort_percent: Some(5.0), ..Default::default() };
    let line = state.apply(&fault("site", Some(abort))).unwrap();
    assert_eq!(line, "route site: faults {\"abort_status\":503,\"abort_percent\":5.0}");
    assert_eq!(state.config.routes[0].fault, Some(Fault { delay: None, abort: Some((503, 5.0)) }));
    assert_eq!(state.apply(&fault("site", Some(abort))).unwrap(), "", "no change");
    for (refused, why) in [
        (
            fault("site", Some(FaultSpec { abort_status: Some(200), ..Default::default() })),
            "abort_status must be 400 to 599",
        ),
        (
            fault("site", Some(FaultSpec { delay_ms: Some(0), ..Default::default() })),
            "delay_ms must be 1 to 60000",
        ),
        (fault("site", Some(FaultSpec::default())), "give delay_ms, abort_status or both"),
        (fault("ok", Some(abort)), "answers by itself"),
        (fault("nope", None), "no route `nope`"),
    ] {
        let err = state.apply(&refused).unwrap_err().to_string();
        assert!(err.contains(why), "{err}");
    }
    assert_eq!(state.apply(&fault("site", None)).unwrap(), "route site: no faults");
    assert_eq!(state.config.routes[0].fault, None);
    assert!(fault("site", None).persists(), "written to the config file");
}
