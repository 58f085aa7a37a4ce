//! Writes operator commands back into the config file, so the file stays the single source of
//! truth: a restart or a reload serves what lbctl set. toml_edit keeps the operator's comments
//! and layout; the result is validated, then replaces the file atomically and durably: through
//! a symlink to its target, in a temporary file beside it with the target's owner and mode,
//! fsync, rename, fsync of the directory. A read-only config is reported, not an error.
use std::{
    io::Write as _,
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use toml_edit::{Array, DocumentMut, InlineTable, Item, Value};

use crate::{
    config::{Config, ConfigErrors},
    state::Command,
};

/// Why a change could not be written to the config file. The file is then as it was.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("parsing the config file: {0}")]
    Parse(#[from] toml_edit::TomlError),
    /// The file does not hold what the change edits (no `[[pool]]` named web, ...).
    #[error("{0}")]
    NotInFile(String),
    #[error("{0:?} is not written to the config file")]
    NotPersisted(Box<Command>),
    #[error("the edited config would be invalid:\n{0}")]
    Invalid(ConfigErrors),
    #[error("{doing} {path}: {source}")]
    Io { doing: &'static str, path: PathBuf, source: std::io::Error },
}

type Result<T, E = PersistError> = std::result::Result<T, E>;

fn missing(what: impl Into<String>) -> PersistError {
    PersistError::NotInFile(what.into())
}

fn io(doing: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PersistError {
    let path = path.to_path_buf();
    move |source| PersistError::Io { doing, path, source }
}

/// The `[[kind]]` table (`pool`, `route`) whose `name` is `name`.
fn named<'a>(doc: &'a mut DocumentMut, kind: &str, name: &str) -> Result<&'a mut toml_edit::Table> {
    doc.get_mut(kind)
        .and_then(Item::as_array_of_tables_mut)
        .ok_or_else(|| missing(format!("no [[{kind}]] in the file")))?
        .iter_mut()
        .find(|t| t.get("name").and_then(Item::as_str) == Some(name))
        .ok_or_else(|| missing(format!("no [[{kind}]] with `name = \"{name}\"` in the file")))
}

fn pool_backends<'a>(doc: &'a mut DocumentMut, pool: &str) -> Result<&'a mut Array> {
    let table = named(doc, "pool", pool)?;
    if !table.contains_key("backends") {
        table.insert("backends", Item::Value(Value::Array(Array::new())));
    }
    table
        .get_mut("backends")
        .and_then(Item::as_array_mut)
        .ok_or_else(|| missing("`backends` is not an array"))
}

fn backend<'a>(doc: &'a mut DocumentMut, pool: &str, address: &str) -> Result<&'a mut InlineTable> {
    pool_backends(doc, pool)?
        .iter_mut()
        .filter_map(Value::as_inline_table_mut)
        .find(|t| {
            t.get("address").and_then(Value::as_str).and_then(|a| a.parse::<std::net::IpAddr>().ok())
                == address.parse().ok()
        })
        .ok_or_else(|| missing(format!("no backend {address} in pool `{pool}` in the file")))
}

fn deny_prefixes(doc: &mut DocumentMut) -> Result<&mut Array> {
    if !doc.contains_key("deny") {
        doc.insert("deny", Item::Table(toml_edit::Table::new()));
    }
    let deny = doc
        .get_mut("deny")
        .and_then(Item::as_table_like_mut)
        .ok_or_else(|| missing("`deny` is not a table"))?;
    if !deny.contains_key("prefixes") {
        deny.insert("prefixes", Item::Value(Value::Array(Array::new())));
    }
    deny.get_mut("prefixes")
        .and_then(Item::as_array_mut)
        .ok_or_else(|| missing("`deny.prefixes` is not an array"))
}

/// A route's `split` with `pool`'s share made `percent` (0: its entry removed; no entry left:
/// no `split`).
fn set_split(route: &mut toml_edit::Table, pool: &str, percent: f64) {
    let mut split = route.get("split").and_then(Item::as_array).cloned().unwrap_or_default();
    let of =
        |v: &Value| v.as_inline_table().and_then(|t| t.get("pool")).and_then(Value::as_str) == Some(pool);
    let found = split.iter().position(of);
    match found {
        Some(index) if percent == 0.0 => {
            split.remove(index);
        }
        Some(index) => {
            if let Some(entry) = split.get_mut(index).and_then(Value::as_inline_table_mut) {
                entry.insert("percent", percent.into());
            }
        }
        None if percent == 0.0 => {}
        None => {
            let mut entry = InlineTable::new();
            entry.insert("pool", pool.into());
            entry.insert("percent", percent.into());
            split.push(entry);
        }
    }
    if split.is_empty() {
        route.remove("split");
    } else {
        route.insert("split", Item::Value(Value::Array(split)));
    }
}

/// The file's text with `command` applied.
pub fn edit(text: &str, command: &Command) -> Result<String> {
    let mut doc: DocumentMut = text.parse()?;
    match command {
        Command::AddBackend { pool, address, weight } => {
            let mut entry = InlineTable::new();
            entry.insert("address", address.to_string().into());
            entry.insert("weight", (*weight as i64).into());
            let backends = pool_backends(&mut doc, pool)?;
            let mut value = Value::InlineTable(entry);
            // A one-per-line list stays one per line.
            if let Some(prefix) = backends.iter().last().and_then(|v| v.decor().prefix()).cloned() {
                value.decor_mut().set_prefix(prefix);
            }
            backends.push_formatted(value);
        }
        Command::RemoveBackend { pool, address } => {
            let backends = pool_backends(&mut doc, pool)?;
            let index = backends
                .iter()
                .position(|v| {
                    v.as_inline_table()
                        .and_then(|t| t.get("address"))
                        .and_then(Value::as_str)
                        .and_then(|a| a.parse().ok())
                        == Some(*address)
                })
                .ok_or_else(|| missing(format!("no backend {address} in pool `{pool}` in the file")))?;
            backends.remove(index);
        }
        Command::SetWeight { pool, address, weight } => {
            backend(&mut doc, pool, &address.to_string())?.insert("weight", (*weight as i64).into());
        }
        Command::SetDrain { pool, address, drain } => {
            let entry = backend(&mut doc, pool, &address.to_string())?;
            if *drain {
                entry.insert("drain", true.into());
            } else {
                entry.remove("drain");
            }
        }
        Command::SetNodeDrain { drained } => {
            let bgp = doc
                .get_mut("bgp")
                .and_then(Item::as_table_mut)
                .ok_or_else(|| missing("no [bgp] in the file"))?;
            if *drained {
                bgp.insert("drained", toml_edit::value(true));
            } else {
                bgp.remove("drained");
            }
        }
        Command::SetSplit { route, pool, percent } => {
            set_split(named(&mut doc, "route", route)?, pool, *percent)
        }
        Command::SetFault { route, fault } => {
            let route = named(&mut doc, "route", route)?;
            match fault {
                None => {
                    route.remove("fault");
                }
                Some(spec) => {
                    let mut table = InlineTable::new();
                    if let Some(ms) = spec.delay_ms {
                        table.insert("delay_ms", (ms as i64).into());
                    }
                    if let Some(percent) = spec.delay_percent {
                        table.insert("delay_percent", percent.into());
                    }
                    if let Some(status) = spec.abort_status {
                        table.insert("abort_status", i64::from(status).into());
                    }
                    if let Some(percent) = spec.abort_percent {
                        table.insert("abort_percent", percent.into());
                    }
                    route.insert("fault", Item::Value(Value::InlineTable(table)));
                }
            }
        }
        Command::AddDeny { prefix } => deny_prefixes(&mut doc)?.push(prefix.to_string()),
        Command::RemoveDeny { prefix } => {
            let prefixes = deny_prefixes(&mut doc)?;
            let index = prefixes
                .iter()
                .position(|v| v.as_str().and_then(|s| s.parse::<ipnet::IpNet>().ok()) == Some(*prefix))
                .ok_or_else(|| missing(format!("{prefix} is not in the file's deny list")))?;
            prefixes.remove(index);
        }
        other => return Err(PersistError::NotPersisted(Box::new(other.clone()))),
    }
    Ok(doc.to_string())
}

/// The file's text with its `[[vip]]` tables made `vips` (etcd's, `[cluster] vips = true`): a
/// table that already says the same is left as it is, with its comments; one that differs is
/// rewritten; the others are removed or appended.
pub fn with_vips(text: &str, vips: &crate::cluster::Vips) -> Result<String> {
    let mut doc: DocumentMut = text.parse()?;
    let mut tables = match doc.remove("vip") {
        None => toml_edit::ArrayOfTables::new(),
        Some(item) => item.into_array_of_tables().map_err(|_| missing("`vip` is not [[vip]] tables"))?,
    };
    let mut kept = toml_edit::ArrayOfTables::new();
    let mut seen = std::collections::BTreeSet::new();
    for table in tables.iter_mut() {
        let Some(name) = table.get("name").and_then(Item::as_str).map(str::to_owned) else { continue };
        let Some(fields) = vips.get(&name) else { continue };
        seen.insert(name.clone());
        let same = table.len() == fields.len() + 1
            && fields
                .iter()
                .all(|(k, v)| table.get(k).and_then(Item::as_value).is_some_and(|t| same_value(t, v)));
        if same {
            kept.push(table.clone());
        } else {
            kept.push(vip_table(&name, fields)?);
        }
    }
    for (name, fields) in vips.iter().filter(|(name, _)| !seen.contains(*name)) {
        kept.push(vip_table(name, fields)?);
    }
    if !kept.is_empty() {
        doc.insert("vip", Item::ArrayOfTables(kept));
    }
    Ok(doc.to_string())
}

/// A `[[vip]]` table from etcd's JSON.
fn vip_table(name: &str, fields: &serde_json::Map<String, serde_json::Value>) -> Result<toml_edit::Table> {
    let mut table = toml_edit::Table::new();
    table.insert("name", toml_edit::value(name));
    for (key, value) in fields {
        if key == "name" {
            continue;
        }
        let value = toml_value(value).ok_or_else(|| {
            missing(format!("VIP {name}: `{key}` is not a string, number, bool or list of them"))
        })?;
        table.insert(key, Item::Value(value));
    }
    Ok(table)
}

fn toml_value(value: &serde_json::Value) -> Option<Value> {
    use serde_json::Value as Json;
    Some(match value {
        Json::String(s) => s.as_str().into(),
        Json::Bool(b) => (*b).into(),
        Json::Number(n) => match n.as_i64() {
            Some(i) => i.into(),
            None => n.as_f64()?.into(),
        },
        Json::Array(items) => Value::Array(items.iter().map(toml_value).collect::<Option<Array>>()?),
        Json::Null | Json::Object(_) => return None,
    })
}

fn same_value(toml: &Value, json: &serde_json::Value) -> bool {
    let mut bare = toml.clone();
    bare.decor_mut().clear();
    toml_value(json).is_some_and(|v| v.to_string() == bare.to_string())
}

/// What became of a change to the config file.
#[derive(Debug, PartialEq, Eq)]
pub enum Persisted {
    /// Written; what the file said before.
    Written(Replaced),
    /// The file or its directory cannot be written (a read-only mount, say): the change is
    /// applied but lasts until lbd restarts.
    ReadOnly(String),
    /// The change left the text as it was: nothing written.
    Unchanged,
}

/// Applies `commands` to the config file at `path` in one edit: edit, validate, write a
/// temporary file beside the real file (through a symlink), rename over. On any error the file
/// is untouched. `Written` carries what it replaced, for [`restore`].
pub fn persist(path: &Path, commands: &[Command]) -> Result<Persisted> {
    rewrite(path, |text| commands.iter().try_fold(text.to_owned(), |text, command| edit(&text, command)))
}

/// The file at `path` with `change` applied to its text, validated and written as [`persist`]
/// writes; a change that leaves the text as it was writes nothing (`Unchanged`).
pub fn rewrite(path: &Path, change: impl FnOnce(&str) -> Result<String>) -> Result<Persisted> {
    let target = std::fs::canonicalize(path).map_err(io("resolving", path))?;
    let text = crate::config::read_file(&target).map_err(io("reading", &target))?;
    let edited = change(&text)?;
    if edited == text {
        return Ok(Persisted::Unchanged);
    }
    Config::parse(path, &edited).map_err(PersistError::Invalid)?;
    match replace(&target, edited.as_bytes()) {
        Ok(()) => Ok(Persisted::Written(Replaced { target, text })),
        Err(err) if matches!(err.raw_os_error(), Some(libc::EROFS | libc::EACCES | libc::EPERM)) => {
            Ok(Persisted::ReadOnly(format!("{}: {err}", target.display())))
        }
        Err(err) => Err(io("replacing", &target)(err)),
    }
}

/// Puts back the text a [`persist`] replaced (the change could not be applied after all).
pub fn restore(replaced: &Replaced) -> Result<()> {
    replace(&replaced.target, replaced.text.as_bytes()).map_err(io("putting back", &replaced.target))
}

/// The file a change was written to (symlinks resolved) and the text it replaced.
#[derive(Debug, PartialEq, Eq)]
pub struct Replaced {
    target: PathBuf,
    text: String,
}

/// Replaces `target` with `bytes`, keeping its owner and mode (a new file: 0644, lbd's
/// owner), durably: a temporary file beside it, fsync, rename, fsync of the directory. A reader
/// never sees a half-written file.
pub fn replace(target: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let meta = std::fs::metadata(target).ok();
    let dir = target.parent().unwrap_or(Path::new("/"));
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp: PathBuf = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    let written = (|| {
        if let Some(meta) = &meta {
            std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid()))?;
        }
        let mode = meta.as_ref().map_or(0o644, |m| m.mode() & 0o7777);
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, target)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod mutations;

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# edge\n[dataplane]\ninterface = \"eth0\"\n\n[[pool]]\nname = \"web\" # the web pool\n\
                        backends = [{ address = \"10.0.0.1\" }]\n";

    #[test]
    fn edits_keep_comments_and_round_trip_through_the_parser() {
        let add = Command::AddBackend { pool: "web".into(), address: "10.0.0.2".parse().unwrap(), weight: 7 };
        let text = edit(TEXT, &add).unwrap();
        assert!(text.contains("# edge") && text.contains("# the web pool"), "{text}");
        let drain =
            Command::SetDrain { pool: "web".into(), address: "10.0.0.1".parse().unwrap(), drain: true };
        let text = edit(&text, &drain).unwrap();
        let deny = Command::AddDeny { prefix: "203.0.113.0/24".parse().unwrap() };
        let text = edit(&text, &deny).unwrap();
        let config = Config::parse(Path::new("t.toml"), &text).unwrap();
        let web = &config.pools["web"];
        assert_eq!((web.backends.len(), web.backends[0].drain, web.backends[1].weight), (2, true, 7));
        assert_eq!(config.deny[0].to_string(), "203.0.113.0/24");
        let remove = Command::RemoveBackend { pool: "web".into(), address: "10.0.0.1".parse().unwrap() };
        let config = Config::parse(Path::new("t.toml"), &edit(&text, &remove).unwrap()).unwrap();
        assert_eq!(config.pools["web"].backends.len(), 1);
    }

    #[test]
    fn a_fault_set_and_ended_in_the_file() {
        let text = "[[pool]]\nname = \"web\"\nbackends = [{ address = \"10.0.0.1\" }]\n\
                    [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\n\
                    [[route]] # the site\nname = \"site\"\nlistener = \"l\"\npool = \"web\"\n";
        let spec =
            crate::config::FaultSpec { delay_ms: Some(250), delay_percent: Some(12.5), ..Default::default() };
        let set = Command::SetFault { route: "site".into(), fault: Some(spec) };
        let with = edit(text, &set).unwrap();
        assert!(
            with.contains("# the site") && with.contains("fault = { delay_ms = 250, delay_percent = 12.5 }"),
            "{with}"
        );
        let config = Config::parse(Path::new("t.toml"), &with).unwrap();
        assert_eq!(config.routes[0].fault, Some(spec.check().unwrap()));
        let ended = edit(&with, &Command::SetFault { route: "site".into(), fault: None }).unwrap();
        assert_eq!(Config::parse(Path::new("t.toml"), &ended).unwrap().routes[0].fault, None);
        assert!(!ended.contains("fault"), "{ended}");
    }

    #[test]
    fn a_split_set_changed_and_ended_in_the_file() {
        let text = "[dataplane]\ninterface = \"eth0\"\n\
                    [[pool]]\nname = \"stable\"\nbackends = [{ address = \"10.0.0.1\" }]\n\
                    [[pool]]\nname = \"canary\"\nbackends = [{ address = \"10.0.0.2\" }]\n\
                    [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\n\
                    [[route]] # the site\nname = \"site\"\nlistener = \"l\"\npool = \"stable\"\n\
                    [[route]]\nlistener = \"l\"\npool = \"stable\"\n";
        let split =
            |route: &str, percent| Command::SetSplit { route: route.into(), pool: "canary".into(), percent };
        let routes = |text: &str| Config::parse(Path::new("t.toml"), text).unwrap().routes;
        let text = edit(text, &split("site", 10.0)).unwrap();
        assert!(text.contains("# the site"), "{text}");
        assert_eq!(routes(&text)[0].split, [("canary".to_owned(), 10.0)]);
        let text = edit(&text, &split("site", 25.5)).unwrap();
        assert_eq!(routes(&text)[0].split, [("canary".to_owned(), 25.5)]);
        let text = edit(&text, &split("site", 0.0)).unwrap();
        assert!(routes(&text)[0].split.is_empty() && !text.contains("split"), "{text}");
        // A route without a name in the file cannot be found there.
        let unnamed = routes(&text)[1].name.clone();
        assert!(matches!(edit(&text, &split(&unnamed, 5.0)), Err(PersistError::NotInFile(_))));
    }

    #[test]
    fn a_backend_added_to_a_list_one_per_line_gets_its_own_line() {
        let text = "[dataplane]\ninterface = \"eth0\"\n[[pool]]\nname = \"web\"\nbackends = [\n  { address = \"10.0.0.1\" },\n  { address = \"10.0.0.2\" },\n]\n";
        let add = Command::AddBackend { pool: "web".into(), address: "10.0.0.3".parse().unwrap(), weight: 1 };
        let edited = edit(text, &add).unwrap();
        assert!(
            edited.contains("\n  { address = \"10.0.0.2\" },\n  { address = \"10.0.0.3\", weight = 1 }"),
            "{edited}"
        );
    }

    #[test]
    fn writes_go_through_a_symlink_and_keep_owner_and_mode() {
        let dir = std::env::temp_dir().join(format!("sluice-persist-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("real")).unwrap();
        let real = dir.join("real/sluice.toml");
        std::fs::write(&real, TEXT).unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o640)).unwrap();
        let link = dir.join("sluice.toml");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let add = Command::AddBackend { pool: "web".into(), address: "10.0.0.2".parse().unwrap(), weight: 7 };
        assert!(matches!(persist(&link, std::slice::from_ref(&add)).unwrap(), Persisted::Written(_)));
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link was replaced");
        assert_eq!(std::fs::metadata(&real).unwrap().mode() & 0o777, 0o640);
        assert!(std::fs::read_to_string(&real).unwrap().contains("10.0.0.2"));
        let leftovers = std::fs::read_dir(dir.join("real")).unwrap().count();
        assert_eq!(leftovers, 1, "a temporary file was left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_pool_is_an_error() {
        let add =
            Command::AddBackend { pool: "nope".into(), address: "10.0.0.2".parse().unwrap(), weight: 7 };
        assert!(edit(TEXT, &add).unwrap_err().to_string().contains("no [[pool]] with `name = \"nope\"`"));
    }

    #[test]
    fn vips_from_etcd_replace_the_files_and_keep_what_is_unchanged() {
        let text = "[dataplane]\ninterface = \"eth0\"\n\n[[pool]]\nname = \"web\"\nbackends = []\n\n\
                    # the first VIP\n[[vip]]\nname = \"a\"\naddress = \"198.19.0.1\" # kept\nport = 80\nprotocol = \"tcp\"\npool = \"web\"\n\n\
                    [[vip]]\nname = \"b\"\naddress = \"198.19.0.2\"\nport = 80\nprotocol = \"tcp\"\npool = \"web\"\n";
        let json = |address: &str| -> serde_json::Map<String, serde_json::Value> {
            serde_json::from_str(&format!(
                r#"{{"address": "{address}", "port": 80, "protocol": "tcp", "pool": "web"}}"#
            ))
            .unwrap()
        };
        let vips: crate::cluster::Vips =
            [("a".into(), json("198.19.0.1")), ("c".into(), json("198.19.0.3"))].into();
        let edited = with_vips(text, &vips).unwrap();
        assert!(edited.contains("# the first VIP") && edited.contains("# kept"), "{edited}");
        let config = Config::parse(Path::new("t.toml"), &edited).unwrap();
        let got: Vec<(String, String)> =
            config.vips.iter().map(|v| (v.name.clone(), v.addr.to_string())).collect();
        assert_eq!(got, [("a".into(), "198.19.0.1".into()), ("c".into(), "198.19.0.3".into())]);
        // The same set again: the same text.
        assert_eq!(with_vips(&edited, &vips).unwrap(), edited);
        let mut nested = json("198.19.0.4");
        nested.insert("port".into(), serde_json::json!({ "x": 1 }));
        assert!(with_vips(text, &[("d".into(), nested)].into()).is_err());
    }

    #[test]
    fn node_drain_is_written_under_bgp() {
        let text = "[dataplane]\ninterface = \"eth0\"\n\n[bgp]\n# the routes BIRD includes\nroutes_file = \"/run/sluice/vips.conf\"\n";
        let drained = edit(text, &Command::SetNodeDrain { drained: true }).unwrap();
        let config = Config::parse(Path::new("t.toml"), &drained).unwrap();
        assert!(config.bgp.unwrap().drained && drained.contains("# the routes BIRD includes"), "{drained}");
        let undrained = edit(&drained, &Command::SetNodeDrain { drained: false }).unwrap();
        assert!(!Config::parse(Path::new("t.toml"), &undrained).unwrap().bgp.unwrap().drained);
        assert!(
            edit("[dataplane]\ninterface = \"eth0\"\n", &Command::SetNodeDrain { drained: true }).is_err()
        );
    }
}
