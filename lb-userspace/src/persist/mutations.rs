//! Mutation tests of the operator's commands: valid `POST /commands` bodies changed a few bytes
//! at a time, taken as the daemon takes them (parse, apply to a copy of the State, write the
//! file, then keep the copy). A refused command changes neither the State nor the file; an
//! applied one leaves the file, read again, holding what the State holds.
use std::path::Path;

use super::edit;
use crate::{
    config::Config,
    mutation::{Rng, mutate},
    state::{Command, State},
};

const CASES: usize = 5_000;

const TEXT: &str = "# an edge host\n[dataplane]\ninterface = \"eth0\"\n\
    [bgp]\nroutes_file = \"/run/sluice/vips.conf\"\n\
    [deny]\nprefixes = [\"192.0.2.0/24\"]\n\
    [[pool]]\nname = \"web\" # the site\nbackends = [{ address = \"10.0.0.1\" }, { address = \"10.0.0.2\", weight = 3 }]\n\
    [[pool]]\nname = \"canary\"\nbackends = [\n  { address = \"10.0.0.3\" },\n]\n\
    [[pool]]\nname = \"v6\"\nbackends = [{ address = \"2001:db8::1\" }]\n\
    [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\n\
    [[route]]\nname = \"site\"\nlistener = \"l\"\npool = \"web\"\nsplit = [{ pool = \"canary\", percent = 10 }]\n\
    [[route]]\nname = \"api\"\nlistener = \"l\"\npool = \"canary\"\n\
    [[route]]\nlistener = \"l\"\npool = \"v6\"\n";

/// One of each operator command, valid against `TEXT`.
const COMMANDS: &[&str] = &[
    r#"{"command":"add_backend","pool":"web","address":"10.0.0.9","weight":2}"#,
    r#"{"command":"add_backend","pool":"v6","address":"2001:db8::2","weight":1}"#,
    r#"{"command":"remove_backend","pool":"web","address":"10.0.0.1"}"#,
    r#"{"command":"set_weight","pool":"web","address":"10.0.0.2","weight":5}"#,
    r#"{"command":"set_drain","pool":"canary","address":"10.0.0.3","drain":true}"#,
    r#"{"command":"set_node_drain","drained":true}"#,
    r#"{"command":"set_split","route":"site","pool":"canary","percent":25.5}"#,
    r#"{"command":"set_split","route":"api","pool":"web","percent":100}"#,
    r#"{"command":"set_fault","route":"site","fault":{"delay_ms":200,"delay_percent":10,"abort_status":503}}"#,
    r#"{"command":"set_fault","route":"api","fault":null}"#,
    r#"{"command":"add_deny","prefix":"198.51.100.0/24"}"#,
    r#"{"command":"remove_deny","prefix":"192.0.2.0/24"}"#,
];

/// What the mutations insert: JSON's punctuation, numbers at and past the bounds, addresses
/// and names the file has, and commands that do not persist.
const SPICE: &[&[u8]] = &[
    b"\"",
    b",",
    b":",
    b"-",
    b".",
    b"e",
    b"0",
    b"9",
    b"1e308",
    b"4294967295",
    b"100.0000001",
    b"::",
    b"/32",
    b"null",
    b"true",
    b"\"10.0.0.1\"",
    b"\"canary\"",
    b"\"site\"",
    b"set_health",
    b"add_pool",
];

/// What the file holds of the State: each pool's backends, each route's split, the deny list,
/// the node's drain.
fn persisted(config: &Config) -> String {
    let pools: Vec<_> = config
        .pools
        .iter()
        .map(|(name, pool)| {
            (name, pool.backends.iter().map(|b| (b.addr, b.weight, b.drain)).collect::<Vec<_>>())
        })
        .collect();
    let splits: Vec<_> = config.routes.iter().map(|r| (&r.name, &r.split)).collect();
    format!("{pools:?}\n{splits:?}\n{:?}\n{:?}", config.deny, config.bgp.as_ref().map(|b| b.drained))
}

#[test]
fn mutated_commands_keep_the_state_and_its_file_in_agreement() {
    let parse = |text: &str| Config::parse(Path::new("sluice.toml"), text);
    let (mut state, mut file) = (State::new(parse(TEXT).unwrap()), TEXT.to_owned());
    let mut rng = Rng(0x5eed_0008);
    let (mut unparsed, mut refused, mut applied) = (0, 0, 0);
    for _ in 0..CASES {
        let seed = COMMANDS[rng.below(COMMANDS.len())].as_bytes();
        let body = match rng.below(4) {
            0 => seed.to_vec(),
            _ => mutate(&mut rng, seed, SPICE),
        };
        // As `POST /commands` takes it: only what persists is an operator's command.
        let Some(command) = serde_json::from_slice::<Command>(&body).ok().filter(Command::persists) else {
            unparsed += 1;
            continue;
        };
        let mut next = state.clone();
        let written = next.apply(&command).map_err(|e| e.to_string()).and_then(|_| {
            // A command that changes nothing is not written (`daemon::execute_persisting`).
            if next == state {
                return Ok(file.clone());
            }
            let text = edit(&file, &command).map_err(|e| e.to_string())?;
            // What is written must read back, or the next start would fail.
            parse(&text).map(|_| text).map_err(|e| format!("{e:?}"))
        });
        match written {
            Ok(text) => {
                (state, file) = (next, text);
                applied += 1;
            }
            Err(_) => refused += 1,
        }
        let body = String::from_utf8_lossy(&body);
        let reread = parse(&file).unwrap_or_else(|e| panic!("after {body}: the file does not parse: {e:?}"));
        assert_eq!(persisted(&reread), persisted(&state.config), "after {body}:\n{file}");
        assert!(file.contains("# the site"), "after {body}: the file's comments are gone");
    }
    // The cases reach every outcome: the test is not passing on refusals alone.
    assert!(
        unparsed > CASES / 10 && refused > CASES / 20 && applied > CASES / 10,
        "{unparsed} {refused} {applied}"
    );
}
