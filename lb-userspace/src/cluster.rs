//! Pools from etcd (`[cluster]`): each pool's backends live under `PREFIX/pools/POOL/ADDRESS`
//! as `{"weight": W, "drain": D}`. lbd reads them through etcd's JSON gateway (`/v3/kv/range`),
//! waits for changes with `/v3/watch`, and applies the difference through the same Commands
//! lbctl's changes take (written back to the config file too, so a restart with etcd away
//! serves the last known pools). lbctl's backend changes are written to etcd instead, and every
//! host applies them from there. A view older than the one applied is never applied.
//! With `vips = true`, the VIPs come from etcd as well: `PREFIX/vips/NAME` holds a `[[vip]]`
//! table's keys as JSON; the follower writes etcd's set into the config file and reloads it,
//! so a VIP from etcd is checked exactly like one in the file.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Duration,
};

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, body::Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::{
    config::{Cluster, DEFAULT_WEIGHT},
    state::{Command, State},
};

/// Why an etcd request failed: the last endpoint tried, and why it failed there.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("no endpoints")]
    NoEndpoints,
    #[error("{endpoint}: {failed}")]
    At { endpoint: String, failed: Failed },
}

/// Why a request to one endpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum Failed {
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("no answer within {0:?}")]
    NoAnswer(Duration),
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("{0}")]
    Request(#[from] hyper::http::Error),
    #[error("{0}")]
    Body(Box<dyn std::error::Error + Send + Sync>),
    #[error("{status}: {error}")]
    Json { status: hyper::StatusCode, error: serde_json::Error },
    #[error("{status}: {message}")]
    Refused { status: hyper::StatusCode, message: String },
    #[error("watch answer too large")]
    WatchTooLarge,
    #[error("etcd closed the watch")]
    WatchClosed,
}

/// The longest an etcd request may take (the watch excepted).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest etcd answer read.
const MAX_ANSWER_BYTES: usize = 16 << 20;

/// One backend as etcd holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub drain: bool,
}

fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

/// Pools as etcd holds them: pool -> backend -> member.
pub type Pools = BTreeMap<String, BTreeMap<IpAddr, Member>>;

/// VIPs as etcd holds them: name -> the `[[vip]]` table's other keys.
pub type Vips = BTreeMap<String, serde_json::Map<String, Value>>;

/// Everything under the prefix at one revision.
#[derive(Debug, Default)]
pub struct View {
    pub revision: i64,
    pub pools: Pools,
    pub vips: Vips,
}

/// An etcd cluster, through its JSON gateway.
pub struct Etcd {
    /// `HOST:PORT` of each endpoint, tried in order.
    endpoints: Vec<String>,
    prefix: String,
}

impl Etcd {
    pub fn new(cluster: &Cluster) -> Etcd {
        Etcd { endpoints: cluster.endpoints.clone(), prefix: cluster.prefix.clone() }
    }

    fn pools_key(&self) -> String {
        format!("{}pools/", self.prefix)
    }

    fn vips_key(&self) -> String {
        format!("{}vips/", self.prefix)
    }

    fn member_key(&self, pool: &str, address: IpAddr) -> String {
        format!("{}pools/{pool}/{address}", self.prefix)
    }

    /// Every pool's members and every VIP, read at one revision.
    pub async fn view(&self) -> Result<View, EtcdError> {
        let answer = self
            .call(
                "/v3/kv/range",
                json!({ "key": B64.encode(&self.prefix), "range_end": B64.encode(prefix_end(&self.prefix)) }),
            )
            .await?;
        let (pools_key, vips_key) = (self.pools_key(), self.vips_key());
        let mut view = View { revision: revision(&answer), ..View::default() };
        for kv in answer["kvs"].as_array().into_iter().flatten() {
            let (Some(k), Some(v)) = (decode(&kv["key"]), decode(&kv["value"])) else { continue };
            let key = String::from_utf8_lossy(&k);
            if let Some(name) = key.strip_prefix(&vips_key) {
                match serde_json::from_slice::<serde_json::Map<String, Value>>(&v) {
                    Ok(table) if !name.is_empty() && !name.contains('/') => {
                        view.vips.insert(name.to_owned(), table);
                    }
                    Ok(_) => log::warn!("etcd: key {key} is not VIP NAME under {vips_key}: skipped"),
                    Err(err) => log::warn!("etcd: VIP {name}: {err}: skipped"),
                }
                continue;
            }
            let Some(rest) = key.strip_prefix(&pools_key) else { continue };
            let Some((pool, address)) = rest
                .split_once('/')
                .and_then(|(pool, address)| Some((pool.to_owned(), address.parse::<IpAddr>().ok()?)))
            else {
                log::warn!("etcd: key {key} is not POOL/ADDRESS under {pools_key}: skipped");
                continue;
            };
            match serde_json::from_slice::<Member>(&v) {
                Ok(member) => {
                    view.pools.entry(pool).or_default().insert(address, member);
                }
                Err(err) => log::warn!("etcd: {pool}/{address}: {err}: skipped"),
            }
        }
        Ok(view)
    }

    /// Writes one backend; the revision it was written at.
    pub async fn put(&self, pool: &str, address: IpAddr, member: Member) -> Result<i64, EtcdError> {
        let value = serde_json::to_vec(&member).expect("a member is two plain fields");
        let key = self.member_key(pool, address);
        let answer =
            self.call("/v3/kv/put", json!({ "key": B64.encode(key), "value": B64.encode(value) })).await?;
        Ok(revision(&answer))
    }

    /// Removes one backend; the revision it was removed at.
    pub async fn delete(&self, pool: &str, address: IpAddr) -> Result<i64, EtcdError> {
        let key = self.member_key(pool, address);
        let answer = self.call("/v3/kv/deleterange", json!({ "key": B64.encode(key) })).await?;
        Ok(revision(&answer))
    }

    /// Returns when anything under the prefix changes after `revision`, or after `at_most`.
    pub async fn changed_after(&self, revision: i64, at_most: Duration) -> Result<(), EtcdError> {
        let key = &self.prefix;
        let body = json!({ "create_request": {
            "key": B64.encode(key), "range_end": B64.encode(prefix_end(key)), "start_revision": (revision + 1).to_string()
        }});
        let mut last = EtcdError::NoEndpoints;
        for endpoint in &self.endpoints {
            let watch = async {
                let mut answer = send(endpoint, "/v3/watch", &body).await?;
                // The gateway streams one JSON object per message; the first names the watch.
                let mut seen = Vec::new();
                while let Some(frame) = answer.body_mut().frame().await {
                    if let Ok(data) = frame?.into_data() {
                        seen.extend_from_slice(&data);
                        if seen.len() > MAX_ANSWER_BYTES {
                            return Err(Failed::WatchTooLarge);
                        }
                        if String::from_utf8_lossy(&seen).contains("\"events\"") {
                            return Ok(());
                        }
                    }
                }
                Err(Failed::WatchClosed)
            };
            match tokio::time::timeout(at_most, watch).await {
                Err(_) => return Ok(()), // quiet: the caller reads again anyway
                Ok(Ok(())) => return Ok(()),
                Ok(Err(failed)) => last = EtcdError::At { endpoint: endpoint.clone(), failed },
            }
        }
        Err(last)
    }

    /// POSTs `body` to `path` on the first endpoint that answers.
    async fn call(&self, path: &str, body: Value) -> Result<Value, EtcdError> {
        let mut last = EtcdError::NoEndpoints;
        for endpoint in &self.endpoints {
            let exchange = async {
                let answer = send(endpoint, path, &body).await?;
                let status = answer.status();
                let bytes = http_body_util::Limited::new(answer.into_body(), MAX_ANSWER_BYTES)
                    .collect()
                    .await
                    .map_err(Failed::Body)?
                    .to_bytes();
                let value: Value =
                    serde_json::from_slice(&bytes).map_err(|error| Failed::Json { status, error })?;
                if !status.is_success() {
                    let message = value["message"].as_str().unwrap_or_default().to_owned();
                    return Err(Failed::Refused { status, message });
                }
                Ok(value)
            };
            let failed = match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(failed)) => failed,
                Err(_) => Failed::NoAnswer(REQUEST_TIMEOUT),
            };
            last = EtcdError::At { endpoint: endpoint.clone(), failed };
        }
        Err(last)
    }
}

/// Opens a connection to `endpoint` and sends one POST.
async fn send(endpoint: &str, path: &str, body: &Value) -> Result<hyper::Response<Incoming>, Failed> {
    let stream = tokio::time::timeout(REQUEST_TIMEOUT, tokio::net::TcpStream::connect(endpoint))
        .await
        .map_err(|_| Failed::ConnectTimeout)?
        .map_err(Failed::Connect)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = Request::post(path)
        .header(hyper::header::HOST, endpoint)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))?;
    Ok(sender.send_request(request).await?)
}

/// The end of the key range that holds every key starting with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

fn decode(value: &Value) -> Option<Vec<u8>> {
    B64.decode(value.as_str()?).ok()
}

/// The header's revision (etcd writes 64-bit numbers as strings).
fn revision(answer: &Value) -> i64 {
    answer["header"]["revision"].as_str().and_then(|r| r.parse().ok()).unwrap_or(0)
}

/// The commands that make the State's pools what etcd holds, one list per pool (a pool that
/// cannot take its list does not hold the others back). Pools the config does not define are
/// reported; a pool etcd says nothing about keeps what it has.
pub fn commands(state: &State, pools: &Pools) -> (Vec<Vec<Command>>, Vec<String>) {
    let mut per_pool = Vec::new();
    let mut unknown = Vec::new();
    for (name, members) in pools {
        let Some(pool) = state.config.pools.get(name) else {
            unknown.push(name.clone());
            continue;
        };
        // A DNS pool's members are its records' (`dns_pools`).
        if pool.dns.is_some() {
            continue;
        }
        let mut list = Vec::new();
        let now: BTreeMap<IpAddr, Member> =
            pool.backends.iter().map(|b| (b.addr, Member { weight: b.weight, drain: b.drain })).collect();
        for (&address, member) in members {
            match now.get(&address) {
                None => {
                    list.push(Command::AddBackend { pool: name.clone(), address, weight: member.weight });
                    if member.drain {
                        list.push(Command::SetDrain { pool: name.clone(), address, drain: true });
                    }
                }
                Some(was) => {
                    if was.weight != member.weight {
                        list.push(Command::SetWeight { pool: name.clone(), address, weight: member.weight });
                    }
                    if was.drain != member.drain {
                        list.push(Command::SetDrain { pool: name.clone(), address, drain: member.drain });
                    }
                }
            }
        }
        let keep: BTreeSet<IpAddr> = members.keys().copied().collect();
        for address in now.keys().filter(|a| !keep.contains(a)) {
            list.push(Command::RemoveBackend { pool: name.clone(), address: *address });
        }
        if !list.is_empty() {
            per_pool.push(list);
        }
    }
    (per_pool, unknown)
}

/// An operator's backend command as the etcd write that makes it: the member to put (None:
/// delete). Checked against `state` first, so a bad command is refused as lbd would refuse it.
pub fn write_for(state: &State, command: &Command) -> Result<(String, IpAddr, Option<Member>), String> {
    let mut next = state.clone();
    next.apply(command).map_err(|e| e.to_string())?;
    let (pool, address) = match command {
        Command::AddBackend { pool, address, .. }
        | Command::SetWeight { pool, address, .. }
        | Command::SetDrain { pool, address, .. }
        | Command::RemoveBackend { pool, address } => (pool.clone(), *address),
        _ => return Err("only backend commands go to etcd".to_owned()),
    };
    let member = next.config.pools[&pool]
        .backends
        .iter()
        .find(|b| b.addr == address)
        .map(|b| Member { weight: b.weight, drain: b.drain });
    Ok((pool, address, member))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    /// An etcd that is not there: the error names the last endpoint tried and why, as the log
    /// and the admin API say it; an answer that is not etcd's JSON names its status.
    #[tokio::test]
    async fn a_failed_request_names_the_last_endpoint_and_why() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let not_etcd = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let not_etcd_at = not_etcd.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = not_etcd.accept().await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut request = [0; 4096];
                let _ = stream.read(&mut request).await;
                let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope").await;
            }
        });
        let etcd = |endpoints: Vec<String>| {
            Etcd::new(&Cluster { endpoints, prefix: "/sluice/".into(), vips: false })
        };
        let err = etcd(vec![]).view().await.unwrap_err();
        assert_eq!(err.to_string(), "no endpoints");
        let err = etcd(vec![not_etcd_at.to_string(), closed.to_string()]).view().await.unwrap_err();
        assert!(err.to_string().starts_with(&format!("{closed}: connect: ")), "{err}");
        let err = etcd(vec![not_etcd_at.to_string()]).view().await.unwrap_err();
        assert!(err.to_string().starts_with(&format!("{not_etcd_at}: 404 Not Found: ")), "{err}");
    }

    fn state() -> State {
        let text = "[dataplane]\ninterface = \"eth0\"\n\
                    [[pool]]\nname = \"web\"\nbackends = [{ address = \"10.0.0.1\" }, { address = \"10.0.0.2\", weight = 7 }]\n";
        State::new(Config::parse(Path::new("t.toml"), text).unwrap())
    }

    #[test]
    fn etcd_pools_become_commands_per_pool() {
        let mut pools = Pools::new();
        let web = pools.entry("web".into()).or_default();
        web.insert("10.0.0.2".parse().unwrap(), Member { weight: 9, drain: true });
        web.insert("10.0.0.3".parse().unwrap(), Member { weight: 1, drain: false });
        pools.entry("nope".into()).or_default();
        let (lists, unknown) = commands(&state(), &pools);
        assert_eq!(unknown, ["nope"]);
        let mut s = state();
        for c in &lists[0] {
            s.apply(c).unwrap();
        }
        let got: Vec<(String, u32, bool)> =
            s.config.pools["web"].backends.iter().map(|b| (b.addr.to_string(), b.weight, b.drain)).collect();
        assert_eq!(got, [("10.0.0.2".to_owned(), 9, true), ("10.0.0.3".to_owned(), 1, false)]);
        // Applied again, nothing to do.
        let (again, _) = commands(&s, &pools);
        assert!(again.is_empty());
    }

    #[test]
    fn operator_commands_become_the_member_to_write() {
        let s = state();
        let drain =
            Command::SetDrain { pool: "web".into(), address: "10.0.0.2".parse().unwrap(), drain: true };
        let (_, _, member) = write_for(&s, &drain).unwrap();
        assert_eq!(member, Some(Member { weight: 7, drain: true }));
        let remove = Command::RemoveBackend { pool: "web".into(), address: "10.0.0.1".parse().unwrap() };
        assert_eq!(write_for(&s, &remove).unwrap().2, None);
        let missing = Command::RemoveBackend { pool: "web".into(), address: "10.0.0.9".parse().unwrap() };
        assert!(write_for(&s, &missing).is_err(), "refused as lbd would refuse it");
        assert_eq!(prefix_end("/sluice/pools/"), b"/sluice/pools0".to_vec());
    }
}
