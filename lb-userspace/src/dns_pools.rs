//! Pools whose backends are a DNS name's addresses (`dns = { name = "app.internal" }`; Envoy's
//! `STRICT_DNS` clusters, HAProxy's `server-template` with `resolvers`, nginx's `resolve`).
//! Each such pool has a follower that asks for the name's A and AAAA records every `interval`
//! and applies the difference through the Commands lbctl's and etcd's changes take (written
//! back to the config file, so a restart while DNS is away serves the last known backends). An
//! answer with no address empties the pool only once it has lasted `empty_hold`; a failure to
//! get an answer (a timeout, SERVFAIL) changes nothing. Operators may weight and drain a DNS
//! pool's backends; which backends it has is the records' to say.
use std::{
    collections::{BTreeSet, HashSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use hickory_resolver::{
    TokioResolver,
    config::{LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig},
    net::runtime::TokioRuntimeProvider,
};
use log::{error, info, warn};

use crate::{
    config::{DEFAULT_WEIGHT, PoolDns, Resolver},
    daemon::{ExecError, Shared, lock},
    state::{Command, State},
};

/// How long one server may take to answer one question, and how long an ask may take in all
/// (both families, every server).
const SERVER_TIMEOUT: Duration = Duration::from_secs(2);
const ASK_TIMEOUT: Duration = Duration::from_secs(10);

/// The most addresses a pool takes from its name (the lowest, in address order): an answer
/// over TCP may hold thousands, and every backend costs the data plane's tables and a health
/// check.
pub const MAX_ADDRESSES: usize = 512;

/// A DNS pool's last answer, as `lbctl pool show` and the metrics tell it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastAnswer {
    /// The addresses it named (0: none, NXDOMAIN or no record).
    pub addresses: usize,
    /// Why there was no answer (None: there was one).
    pub failure: Option<String>,
}

impl LastAnswer {
    fn of(answer: &Answer) -> LastAnswer {
        match answer {
            Answer::Addresses(found) => LastAnswer { addresses: found.len(), failure: None },
            Answer::NoAddress => LastAnswer { addresses: 0, failure: None },
            Answer::Failed(why) => LastAnswer { addresses: 0, failure: Some(why.clone()) },
        }
    }
}

/// What a name's records said.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Addresses(BTreeSet<IpAddr>),
    /// NXDOMAIN, or no A and no AAAA record.
    NoAddress,
    /// No answer (a timeout, a refusal, SERVFAIL): why.
    Failed(String),
}

/// A stub resolver asking `servers` (None: /etc/resolv.conf's) for both families, with no
/// cache (each ask goes to a server, whatever the TTL) and no hosts file.
pub fn resolver(servers: Option<&Resolver>) -> Result<TokioResolver, String> {
    let mut builder = match servers {
        Some(servers) => {
            let nameservers = servers
                .nameservers
                .iter()
                .map(|address| {
                    let mut server = NameServerConfig::udp_and_tcp(address.ip());
                    for connection in &mut server.connections {
                        connection.port = address.port();
                    }
                    server
                })
                .collect();
            let config = ResolverConfig::from_parts(None, Vec::new(), nameservers);
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        }
        None => TokioResolver::builder_tokio().map_err(|e| format!("reading /etc/resolv.conf: {e}"))?,
    };
    let options = builder.options_mut();
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    options.cache_size = 0;
    options.use_hosts_file = ResolveHosts::Never;
    options.timeout = SERVER_TIMEOUT;
    options.attempts = 1;
    builder.build().map_err(|e| format!("making the resolver: {e}"))
}

/// Asks for `name`'s addresses (as a fully qualified name: no search domain is tried).
pub async fn ask(resolver: &TokioResolver, name: &str) -> Answer {
    match tokio::time::timeout(ASK_TIMEOUT, resolver.lookup_ip(format!("{name}."))).await {
        Err(_) => Answer::Failed(format!("no answer within {ASK_TIMEOUT:?}")),
        Ok(Ok(found)) => match found.iter().collect::<BTreeSet<IpAddr>>() {
            addresses if addresses.is_empty() => Answer::NoAddress,
            addresses => Answer::Addresses(addresses),
        },
        Ok(Err(err)) if err.is_no_records_found() => Answer::NoAddress,
        Ok(Err(err)) => Answer::Failed(err.to_string()),
    }
}

/// The commands that make `pool`'s backends `addresses` (the first `MAX_ADDRESSES`): a new
/// address added with the default weight, a gone one removed; an address the pool cannot take
/// (IPv4 in a pool of an IPv6 L4 VIP), and those past the bound, are left out, and said in the
/// second list.
pub fn commands(state: &State, pool: &str, addresses: &BTreeSet<IpAddr>) -> (Vec<Command>, Vec<String>) {
    let Some(now) = state.config.pools.get(pool) else {
        return (Vec::new(), Vec::new());
    };
    let mut next = state.clone();
    let (mut commands, mut refused) = (Vec::new(), Vec::new());
    if addresses.len() > MAX_ADDRESSES {
        let past = addresses.iter().nth(MAX_ADDRESSES).copied();
        refused.push(format!(
            "{} addresses from {} on: a pool takes at most {MAX_ADDRESSES} of its name's",
            addresses.len() - MAX_ADDRESSES,
            past.map_or_else(String::new, |a| a.to_string())
        ));
    }
    let addresses: BTreeSet<IpAddr> = addresses.iter().take(MAX_ADDRESSES).copied().collect();
    let addresses = &addresses;
    let gone = now.backends.iter().map(|b| b.addr).filter(|a| !addresses.contains(a));
    let new = addresses.iter().copied().filter(|a| !now.backends.iter().any(|b| b.addr == *a));
    let removes = gone.map(|address| Command::RemoveBackend { pool: pool.to_owned(), address });
    let adds =
        new.map(|address| Command::AddBackend { pool: pool.to_owned(), address, weight: DEFAULT_WEIGHT });
    for command in removes.chain(adds) {
        match next.apply(&command) {
            Ok(_) => commands.push(command),
            Err(err) => refused.push(err.to_string()),
        }
    }
    (commands, refused)
}

/// Why an operator's command may not change a DNS pool: adding or removing its backends (the
/// records say which it has).
pub fn refusal(state: &State, command: &Command) -> Option<String> {
    let (Command::AddBackend { pool, .. } | Command::RemoveBackend { pool, .. }) = command else {
        return None;
    };
    let dns = state.config.pools.get(pool)?.dns.as_ref()?;
    Some(format!(
        "pool `{pool}`'s backends are the addresses of DNS name {}: change its records (weights and drains may be set here)",
        dns.name
    ))
}

/// Starts a follower for each pool with `dns` that has none running.
pub fn spawn_missing(core: &Shared, running: &mut HashSet<String>) {
    crate::daemon::spawn_per_pool(core, running, |p| p.dns.is_some(), follow);
}

/// One pool's follower: asks, applies, sleeps `interval`; its settings and the resolver's are
/// read again each round, and it ends once the pool is gone or no longer has `dns`. What it
/// logs, it logs once until it changes.
async fn follow(core: Shared, pool: String) {
    let mut asking: Option<(Option<Resolver>, TokioResolver)> = None;
    let mut empty_since: Option<Instant> = None;
    let (mut said, mut left_out) = (String::new(), Vec::new());
    loop {
        let settings = {
            let core = lock(&core);
            let dns = core.state.config.pools.get(&pool).and_then(|p| p.dns.clone());
            dns.map(|dns| (dns, core.state.config.resolver.clone()))
        };
        let Some((dns, servers)) = settings else {
            info!("pool {pool}: no longer follows DNS");
            lock(&core).dns_answers.remove(&pool);
            return;
        };
        if asking.as_ref().is_none_or(|(made_for, _)| *made_for != servers) {
            match resolver(servers.as_ref()) {
                Ok(made) => asking = Some((servers, made)),
                Err(err) if err != said => {
                    error!("pool {pool}: DNS: {err}; its backends stay as they are");
                    said = err;
                }
                Err(_) => {}
            }
        }
        if let Some((_, resolver)) = &asking {
            let answer = ask(resolver, &dns.name).await;
            lock(&core).dns_answers.insert(pool.clone(), LastAnswer::of(&answer));
            if let Some(addresses) = to_apply(&pool, &dns, answer, &mut empty_since, &mut said) {
                match apply(&core, &pool, &dns, addresses).await {
                    Err(ExecError::Retired) => return,
                    Err(err) => error!("pool {pool}: DNS {}: not applied: {err}", dns.name),
                    Ok(refused) if refused != left_out => {
                        for why in &refused {
                            warn!("pool {pool}: DNS {}: an address left out: {why}", dns.name);
                        }
                        left_out = refused;
                    }
                    Ok(_) => {}
                }
            }
        }
        tokio::time::sleep(dns.interval).await;
    }
}

/// The addresses an answer makes the pool's, if it makes any: a found set at once, no address
/// once none has been found for `empty_hold`, a failure never. Logged when it changes (`said`
/// keeps the last line).
fn to_apply(
    pool: &str,
    dns: &PoolDns,
    answer: Answer,
    empty_since: &mut Option<Instant>,
    said: &mut String,
) -> Option<BTreeSet<IpAddr>> {
    let name = &dns.name;
    let line = match &answer {
        Answer::Addresses(_) => String::new(),
        Answer::NoAddress => format!("{name} has no address"),
        Answer::Failed(why) => format!("asking for {name}: {why}"),
    };
    if line != *said {
        match &answer {
            Answer::Addresses(_) => info!("pool {pool}: DNS {name} answers again"),
            Answer::NoAddress => warn!(
                "pool {pool}: DNS {line}; its backends stay for {:?}, then it is emptied",
                dns.empty_hold
            ),
            Answer::Failed(_) => error!("pool {pool}: DNS {line}; its backends stay as they are"),
        }
        *said = line;
    }
    match answer {
        Answer::Addresses(addresses) => {
            *empty_since = None;
            Some(addresses)
        }
        Answer::NoAddress => {
            let since = *empty_since.get_or_insert_with(Instant::now);
            (since.elapsed() >= dns.empty_hold).then(BTreeSet::new)
        }
        Answer::Failed(_) => None,
    }
}

/// Makes the pool's backends `addresses` (off the async workers: applying writes the maps and
/// the config file); the addresses left out, and why.
async fn apply(
    core: &Shared,
    pool: &str,
    dns: &PoolDns,
    addresses: BTreeSet<IpAddr>,
) -> Result<Vec<String>, ExecError> {
    let (core, pool, name) = (core.clone(), pool.to_owned(), dns.name.clone());
    let applied = tokio::task::spawn_blocking(move || {
        let (commands, refused) = commands(&lock(&core).state, &pool, &addresses);
        if !commands.is_empty() {
            let lines = crate::daemon::execute_persisting(&core, &commands)?;
            lines.iter().for_each(|line| info!("DNS {name}: {line}"));
        }
        Ok(refused)
    })
    .await;
    applied.unwrap_or_else(|err| Ok(vec![format!("the applying task failed: {err}")]))
}

#[cfg(test)]
mod tests {
    use std::{
        net::SocketAddr,
        sync::{Arc, Mutex},
    };

    use hickory_resolver::proto::{
        op::{Message, ResponseCode},
        rr::{
            RData, Record, RecordType,
            rdata::{A, AAAA},
        },
    };

    use super::*;
    use crate::config::Config;

    /// A DNS server on 127.0.0.1 (UDP) answering every name with `records` (NXDOMAIN when there
    /// are none), or, with `silent`, never answering.
    async fn dns_server(records: Arc<Mutex<Vec<IpAddr>>>, silent: bool) -> SocketAddr {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buffer = [0u8; 1500];
            while let Ok((n, from)) = socket.recv_from(&mut buffer).await {
                let Ok(query) = Message::from_vec(&buffer[..n]) else { continue };
                let (Some(question), false) = (query.queries.first(), silent) else { continue };
                let mut answer = Message::response(query.metadata.id, query.metadata.op_code);
                answer.metadata.recursion_desired = query.metadata.recursion_desired;
                answer.metadata.recursion_available = true;
                answer.add_query(question.clone());
                let records = records.lock().unwrap().clone();
                if records.is_empty() {
                    answer.metadata.response_code = ResponseCode::NXDomain;
                }
                for ip in records {
                    let data = match (ip, question.query_type()) {
                        (IpAddr::V4(v4), RecordType::A) => RData::A(A(v4)),
                        (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(v6)),
                        _ => continue,
                    };
                    answer.add_answer(Record::from_rdata(question.name().clone(), 1, data));
                }
                let _ = socket.send_to(&answer.to_vec().unwrap(), from).await;
            }
        });
        address
    }

    fn servers(address: SocketAddr) -> Resolver {
        Resolver { nameservers: vec![address] }
    }

    fn set(addresses: &[&str]) -> BTreeSet<IpAddr> {
        addresses.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[tokio::test]
    async fn a_name_s_addresses_of_both_families_none_or_no_answer() {
        let records = Arc::new(Mutex::new(vec!["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()]));
        let resolver = resolver(Some(&servers(dns_server(records.clone(), false).await))).unwrap();
        assert_eq!(ask(&resolver, "app.test").await, Answer::Addresses(set(&["10.0.0.1", "fd00::1"])));
        records.lock().unwrap().clear();
        assert_eq!(ask(&resolver, "app.test").await, Answer::NoAddress, "NXDOMAIN");
        let silent = resolver_for_silent().await;
        let started = Instant::now();
        assert!(matches!(ask(&silent, "app.test").await, Answer::Failed(_)));
        assert!(started.elapsed() < ASK_TIMEOUT + Duration::from_secs(1), "bounded: {:?}", started.elapsed());
    }

    async fn resolver_for_silent() -> TokioResolver {
        resolver(Some(&servers(dns_server(Arc::default(), true).await))).unwrap()
    }

    fn state(extra: &str) -> State {
        let text = format!(
            "[[pool]]\nname = \"app\"\nbackends = [{{ address = \"10.0.0.1\", weight = 7 }}, {{ address = \"10.0.0.2\" }}]\n\
             dns = {{ name = \"app.test\" }}\n{extra}"
        );
        State::new(Config::parse(std::path::Path::new("t.toml"), &text).unwrap())
    }

    #[test]
    fn records_become_adds_and_removes_and_an_operator_may_only_weight_and_drain() {
        let state = state("");
        let (commands, refused) = commands(&state, "app", &set(&["10.0.0.1", "10.0.0.3"]));
        assert_eq!(
            commands,
            [
                Command::RemoveBackend { pool: "app".into(), address: "10.0.0.2".parse().unwrap() },
                Command::AddBackend {
                    pool: "app".into(),
                    address: "10.0.0.3".parse().unwrap(),
                    weight: DEFAULT_WEIGHT
                },
            ],
            "10.0.0.1 stays as it is, its weight of 7 too"
        );
        assert!(refused.is_empty());
        assert_eq!(commands_of(&state, &[]).len(), 2, "an empty set removes every backend");
        let address = "10.0.0.1".parse().unwrap();
        let add = Command::AddBackend { pool: "app".into(), address: "10.0.0.9".parse().unwrap(), weight: 1 };
        let remove = Command::RemoveBackend { pool: "app".into(), address };
        for command in [add, remove] {
            let why = refusal(&state, &command).unwrap();
            assert!(why.contains("addresses of DNS name app.test: change its records"), "{why}");
        }
        assert_eq!(refusal(&state, &Command::SetWeight { pool: "app".into(), address, weight: 5 }), None);
        assert_eq!(refusal(&state, &Command::SetDrain { pool: "app".into(), address, drain: true }), None);
    }

    fn commands_of(state: &State, addresses: &[&str]) -> Vec<Command> {
        commands(state, "app", &set(addresses)).0
    }

    #[test]
    fn a_pool_takes_at_most_its_bound_of_a_name_s_addresses() {
        let state = state("");
        let many: BTreeSet<IpAddr> =
            (0..600u32).map(|i| IpAddr::from(std::net::Ipv4Addr::from(0x0a01_0000 + i))).collect();
        let (commands, refused) = commands(&state, "app", &many);
        let adds = commands.iter().filter(|c| matches!(c, Command::AddBackend { .. })).count();
        assert_eq!(adds, MAX_ADDRESSES, "the lowest 512");
        assert_eq!(refused, ["88 addresses from 10.1.2.0 on: a pool takes at most 512 of its name's"]);
    }

    #[test]
    fn an_address_the_pool_cannot_take_is_left_out_and_said() {
        let text = "[dataplane]\ninterface = \"lo\"\n[[pool]]\nname = \"app\"\nbackends = [{ address = \"fd00::1\" }]\n\
                    dns = { name = \"app.test\" }\n\
                    [[vip]]\nname = \"v6\"\naddress = \"fd00:1::1\"\nport = 80\nprotocol = \"tcp\"\npool = \"app\"\n";
        let state = State::new(Config::parse(std::path::Path::new("t.toml"), text).unwrap());
        let (commands, refused) = commands(&state, "app", &set(&["fd00::1", "fd00::2", "10.0.0.1"]));
        assert_eq!(
            commands,
            [Command::AddBackend {
                pool: "app".into(),
                address: "fd00::2".parse().unwrap(),
                weight: DEFAULT_WEIGHT
            }]
        );
        assert_eq!(refused.len(), 1);
        assert!(refused[0].contains("cannot take IPv4 backend 10.0.0.1"), "{refused:?}");
    }

    /// Polls `check` every 50 ms for up to 5 s.
    async fn eventually(what: &str, check: impl Fn() -> bool) {
        for _ in 0..100 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("not within 5 s: {what}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pool_follows_its_records_into_the_state_and_the_file_and_empties_after_the_hold() {
        let records = Arc::new(Mutex::new(vec!["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()]));
        let server = dns_server(records.clone(), false).await;
        let dir = std::env::temp_dir().join(format!("sluice-dns-pools-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sluice.toml");
        let text = format!(
            "[resolver]\nnameservers = [\"{server}\"]\n\
             [[pool]]\nname = \"app\"\nbackends = []\ndns = {{ name = \"app.test\", interval_ms = 1000, empty_hold_ms = 1500 }}\n\
             [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:18081\"\n[[route]]\nlistener = \"l\"\npool = \"app\"\n"
        );
        std::fs::write(&path, text).unwrap();
        let config = Config::load(&path).unwrap();
        let core: Shared =
            Arc::new(std::sync::Mutex::new(crate::daemon::Core::start(config, path.clone(), None).unwrap()));
        let mut followed = HashSet::new();
        spawn_missing(&core, &mut followed);
        assert!(followed.contains("app"));
        let backends = || -> Vec<String> {
            lock(&core).state.config.pools["app"].backends.iter().map(|b| b.addr.to_string()).collect()
        };
        eventually("both records served", || backends() == ["10.0.0.1", "10.0.0.2"]).await;
        let last = lock(&core).dns_answers["app"].clone();
        assert_eq!(last, LastAnswer { addresses: 2, failure: None });
        let file = std::fs::read_to_string(&path).unwrap();
        assert!(file.contains("10.0.0.1") && file.contains("10.0.0.2"), "written back: {file}");

        *records.lock().unwrap() = vec!["10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap()];
        eventually("the records' change", || backends() == ["10.0.0.2", "10.0.0.3"]).await;
        // Gone from DNS: kept for the hold (1.5 s), then emptied.
        records.lock().unwrap().clear();
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(backends(), ["10.0.0.2", "10.0.0.3"], "within the hold");
        eventually("emptied after the hold", || backends().is_empty()).await;
        assert_eq!(lock(&core).dns_answers["app"], LastAnswer { addresses: 0, failure: None }, "answered");
        *records.lock().unwrap() = vec!["10.0.0.4".parse().unwrap()];
        eventually("back", || backends() == ["10.0.0.4"]).await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
