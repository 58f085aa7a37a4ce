//! Mutation tests of the admin API on an L7-only core: every route's valid request, changed a
//! few bytes at a time (method, path, fields, JSON body), through hyper's server as lbd runs it
//! (`spawn_connection`, over an in-memory stream). Each is answered or closed within 5 s, every
//! answer is one HTTP/1.1 response with a JSON body, nothing panics, and a refused command
//! leaves the State and the config file as they were.
use std::{path::Path, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::Semaphore,
};

use super::{MAX_CONNECTIONS, handle, spawn_connection};
use crate::{
    config::Config,
    daemon::{Core, Shared, lock},
    mutation::{Rng, mutate, panicked_here, record_panics},
};

/// Requests tried.
const CASES: usize = 2_000;
/// What one request may take: far more than an answer needs, far less than the read timeout
/// (10 s) that would end a hang instead (each client half-closes once it has written).
const ENDS_WITHIN: Duration = Duration::from_secs(5);

const CONFIG: &str = "[[pool]]\nname = \"web\"\nport = 18080\nbackends = [{ address = \"10.0.0.1\" }, { address = \"10.0.0.2\" }]\n\
     [[pool]]\nname = \"canary\"\nport = 18080\nbackends = [{ address = \"10.0.0.3\" }]\n\
     [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:8080\"\n\
     # the operators' commands keep this comment\n\
     [[route]]\nname = \"site\"\nlistener = \"l\"\npool = \"web\"\n";

/// A request with a JSON body and its length.
fn post(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: lbd\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Every route the admin API has, with a valid request each.
fn requests() -> Vec<String> {
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: lbd\r\n\r\n");
    let mut all: Vec<String> = [
        "/live",
        "/ready",
        "/status",
        "/vips",
        "/routes",
        "/listeners",
        "/pools",
        "/pools/web",
        "/view",
        "/deny",
        "/stats",
    ]
    .into_iter()
    .map(get)
    .collect();
    all.extend([
        post("/cache/purge", r#"{"route":"site","path":"/a"}"#),
        post("/flow", r#"{"protocol":"tcp","source":"10.0.0.9:5","vip":"198.19.0.1:80"}"#),
        post(
            "/plan",
            r#"{"commands":[{"command":"set_weight","pool":"web","address":"10.0.0.2","weight":5}]}"#,
        ),
        post(
            "/plan",
            "{\"config_text\":\"[[pool]]\\nname = \\\"x\\\"\\nbackends = []\\n\",\"config_name\":\"n\"}",
        ),
        post("/commands", r#"{"command":"add_backend","pool":"web","address":"10.0.0.9","weight":2}"#),
        post("/commands", r#"[{"command":"set_drain","pool":"canary","address":"10.0.0.3","drain":true}]"#),
        post("/commands", r#"{"command":"set_split","route":"site","pool":"canary","percent":25.5}"#),
        post(
            "/commands",
            r#"{"command":"set_fault","route":"site","fault":{"abort_status":503,"abort_percent":5}}"#,
        ),
        post("/commands", r#"{"command":"add_deny","prefix":"198.51.100.0/24"}"#),
        post("/commands", r#"{"command":"set_node_drain","drained":true}"#),
        post("/reload", ""),
        post("/upgrade", ""),
    ]);
    all
}

/// Bytes the mutations insert: HTTP's separators and JSON's, digits, a long length, a UTF-8
/// character split in two.
const SPICE: &[&[u8]] = &[
    b"\r\n",
    b" ",
    b":",
    b"/",
    b"%",
    b"\0",
    b"0",
    b"9",
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b"-1",
    b"1e999",
    b"Content-Length: 99999999\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"\xc3",
    b"\xa9",
];

/// One exchange over an in-memory stream; what came back.
async fn exchange(core: &Shared, slots: &Arc<Semaphore>, request: &[u8]) -> Vec<u8> {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    spawn_connection(server, "admin", slots, core.clone(), handle);
    // hyper may answer and close before it has read everything.
    let _ = client.write_all(request).await;
    let _ = client.shutdown().await;
    let mut got = Vec::new();
    let _ = client.read_to_end(&mut got).await;
    got
}

/// The status of the first response in `got` (None for no answer), each response checked: a
/// head that parses and a body of exactly its length that is JSON. A mutation can leave bytes
/// after the request, which hyper reads as a second one and refuses with a 400 of its own.
fn checked(got: &[u8]) -> Result<Option<u16>, String> {
    let mut first = None;
    let mut rest = got;
    while !rest.is_empty() {
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut head = httparse::Response::new(&mut fields);
        let Ok(httparse::Status::Complete(length)) = head.parse(rest) else {
            return Err(format!("not a whole response head: {:?}", String::from_utf8_lossy(rest)));
        };
        let status = head.code.unwrap_or(0);
        let declared = head.headers.iter().find(|f| f.name.eq_ignore_ascii_case("content-length"));
        let declared = declared.and_then(|f| std::str::from_utf8(f.value).ok()?.parse::<usize>().ok());
        let Some(body) = declared.and_then(|n| rest.get(length..length + n)) else {
            return Err(format!(
                "{status}: {declared:?} bytes declared, {} after the head",
                rest.len() - length
            ));
        };
        // hyper's own refusals (a head it cannot parse) come with no body.
        if !body.is_empty() && serde_json::from_slice::<serde_json::Value>(body).is_err() {
            return Err(format!("{status}: a body that is not JSON: {:?}", String::from_utf8_lossy(body)));
        }
        first.get_or_insert(status);
        rest = &rest[length + body.len()..];
    }
    Ok(first)
}

#[tokio::test]
async fn every_mutated_admin_request_is_answered_or_closed_and_a_refused_command_changes_nothing() {
    record_panics();
    let dir = std::env::temp_dir().join(format!("sluice-admin-mutations-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sluice.toml");
    std::fs::write(&path, CONFIG).unwrap();
    let config = Config::parse(Path::new("sluice.toml"), CONFIG).unwrap();
    let core: Shared = Arc::new(std::sync::Mutex::new(Core::start(config, path.clone(), None).unwrap()));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let requests = requests();
    let mut rng = Rng(0x5eed_000a);
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..CASES {
        let seed = &requests[rng.below(requests.len())];
        let request = match rng.below(4) {
            0 => seed.as_bytes().to_vec(),
            _ => mutate(&mut rng, seed.as_bytes(), SPICE),
        };
        let before = (lock(&core).state.config.clone(), std::fs::read(&path).unwrap());
        let got =
            tokio::time::timeout(ENDS_WITHIN, exchange(&core, &slots, &request)).await.unwrap_or_else(|_| {
                panic!("no end within {ENDS_WITHIN:?}: {:?}", String::from_utf8_lossy(&request))
            });
        let status = checked(&got)
            .unwrap_or_else(|err| panic!("{err}\nrequest: {:?}", String::from_utf8_lossy(&request)));
        *statuses.entry(status).or_insert(0) += 1;
        // Only an answered 200 may have changed what the State and the file hold.
        if status != Some(200) {
            let after = (lock(&core).state.config.clone(), std::fs::read(&path).unwrap());
            assert!(
                after == before,
                "a refused request changed the State or the file: {:?}",
                String::from_utf8_lossy(&request)
            );
        }
        // A client's bad request is a 4xx: nothing here fails on lbd's side.
        assert!(status != Some(500), "500: {:?}", String::from_utf8_lossy(&got));
        assert!(!panicked_here(), "a panic (its message is above): {:?}", String::from_utf8_lossy(&request));
    }
    // Every connection gave its slot back.
    tokio::time::timeout(ENDS_WITHIN, async {
        while slots.available_permits() < MAX_CONNECTIONS {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("every admin connection closes");
    let _ = std::fs::remove_dir_all(&dir);
    // Both what is answered and what is refused were reached.
    let count = |s: u16| statuses.get(&Some(s)).copied().unwrap_or(0);
    assert!(count(200) >= CASES / 10 && count(400) >= CASES / 20, "{statuses:?}");
}
