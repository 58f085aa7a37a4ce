//! The admin API's answers that change something: operators' commands (into the State, or into
//! etcd with `[cluster]`), a reload and a binary upgrade (run by the signal loop, as SIGHUP and
//! SIGUSR2 are), and a purge of a route's response cache.
use std::time::Duration;

use hyper::StatusCode;
use log::{error, info};
use serde_json::json;

use super::{
    reply::{Answer, fail, reply},
    views,
};
use crate::{
    daemon::{ExecError, Shared, lock},
    state::Command,
};

/// `POST /cache/purge {"route": NAME, "path": "/x"}`.
pub fn purge(core: &Shared, body: &[u8]) -> Answer {
    match serde_json::from_slice::<views::Purge>(body) {
        Err(err) => fail(StatusCode::BAD_REQUEST, format!("expected {{route, path}}: {err}")),
        Ok(p) => {
            let purged = lock(core).cache.purge(&p.route, p.path.as_deref());
            let path = p.path.as_deref().unwrap_or("(all)");
            info!("cache purge of route {} {path}: {purged} entries", p.route);
            reply(StatusCode::OK, json!(views::Purged { purged }))
        }
    }
}

/// `POST /reload`: the same path as SIGHUP, run by the signal loop; the answer is its result.
pub async fn reload(core: &Shared) -> Answer {
    let (asked, answer) = tokio::sync::oneshot::channel();
    let reloads = lock(core).reloads.clone();
    let sent = match reloads {
        Some(reloads) => reloads.send(asked).await.is_ok(),
        None => false,
    };
    if !sent {
        return fail(StatusCode::SERVICE_UNAVAILABLE, "lbd is not ready to reload");
    }
    match tokio::time::timeout(Duration::from_secs(60), answer).await {
        Ok(Ok(Ok(lines))) => reply(StatusCode::OK, json!(views::Changes { changes: lines })),
        Ok(Ok(Err(why))) => fail(StatusCode::BAD_REQUEST, format!("reload refused, nothing changed: {why}")),
        _ => fail(StatusCode::INTERNAL_SERVER_ERROR, "the reload did not finish"),
    }
}

/// `POST /upgrade`: run by the signal loop, like SIGUSR2; answered once the new lbd serves or
/// failed.
pub async fn upgrade(core: &Shared) -> Answer {
    let (asked, answer) = tokio::sync::oneshot::channel();
    let upgrades = lock(core).upgrades.clone();
    let sent = match upgrades {
        Some(upgrades) => upgrades.try_send(asked).is_ok(),
        None => false,
    };
    if !sent {
        let why = "lbd is not ready to upgrade, or an upgrade is under way";
        return fail(StatusCode::SERVICE_UNAVAILABLE, why);
    }
    let waited = crate::upgrade::READY_TIMEOUT + Duration::from_secs(10);
    match tokio::time::timeout(waited, answer).await {
        Ok(Ok(Ok(pid))) => reply(StatusCode::OK, json!(views::Upgraded { pid })),
        Ok(Ok(Err(why))) => {
            fail(StatusCode::BAD_REQUEST, format!("upgrade refused, this lbd keeps serving: {why}"))
        }
        _ => fail(StatusCode::INTERNAL_SERVER_ERROR, "the upgrade did not finish"),
    }
}

/// `POST /commands`: one command or a list, applied all or nothing.
pub async fn commands(core: &Shared, body: &[u8]) -> Answer {
    let commands: Result<Vec<Command>, _> = serde_json::from_slice::<Vec<Command>>(body)
        .or_else(|_| serde_json::from_slice::<Command>(body).map(|c| vec![c]));
    let commands = match commands.map_err(|err| format!("not a command: {err}")).and_then(operator_only) {
        Ok(commands) => commands,
        Err(err) => return fail(StatusCode::BAD_REQUEST, err),
    };
    // A DNS pool's members are its records'.
    let refused = {
        let core = lock(core);
        commands.iter().find_map(|c| crate::dns_pools::refusal(&core.state, c))
    };
    if let Some(why) = refused {
        return fail(StatusCode::BAD_REQUEST, why);
    }
    // With [cluster], backends change in etcd; every host (this one too) applies the change
    // from there.
    let etcd = lock(core).etcd.clone();
    if let Some(etcd) = etcd
        && commands.iter().any(Command::is_backend)
    {
        return match to_etcd(core, &etcd, &commands).await {
            Ok(lines) => reply(StatusCode::OK, json!(views::Changes { changes: lines })),
            Err(err) => fail(StatusCode::BAD_REQUEST, err),
        };
    }
    // Executing writes the maps and the config file (fsync): off the async workers.
    let core = core.clone();
    match tokio::task::spawn_blocking(move || crate::daemon::execute_persisting(&core, &commands)).await {
        Ok(Ok(lines)) => reply(StatusCode::OK, json!(views::Changes { changes: lines })),
        Ok(Err(ExecError::Refused(err))) => fail(StatusCode::BAD_REQUEST, err),
        Ok(Err(err)) => {
            error!("command failed: {err}");
            fail(StatusCode::INTERNAL_SERVER_ERROR, err)
        }
        Err(err) => fail(StatusCode::INTERNAL_SERVER_ERROR, err),
    }
}

/// Writes backend commands to etcd, each checked against the State first; the lines say what
/// was written (the State changes when the change comes back from etcd, within a second).
async fn to_etcd(
    core: &Shared,
    etcd: &crate::cluster::Etcd,
    commands: &[Command],
) -> Result<Vec<String>, String> {
    if !commands.iter().all(Command::is_backend) {
        return Err("with [cluster], send backend commands apart from the others".to_owned());
    }
    let mut lines = Vec::new();
    let mut state = lock(core).state.clone();
    let mut known = etcd.view().await.map_err(|err| format!("etcd: {err} (nothing changed)"))?.pools;
    for command in commands {
        let (pool, address, member) = crate::cluster::write_for(&state, command)?;
        // The first change to a pool etcd knows nothing of writes the pool's backends first:
        // etcd then holds the whole pool, not this one backend alone.
        if !known.contains_key(&pool) {
            for b in &state.config.pools[&pool].backends {
                let seed = crate::cluster::Member { weight: b.weight, drain: b.drain };
                etcd.put(&pool, b.addr, seed).await.map_err(|err| format!("etcd: {err}"))?;
            }
            known.insert(pool.clone(), Default::default());
        }
        state.apply(command).map_err(|e| e.to_string())?;
        let revision = match member {
            Some(member) => etcd.put(&pool, address, member).await,
            None => etcd.delete(&pool, address).await,
        }
        .map_err(|err| format!("etcd: {err} (nothing changed)"))?;
        lines.push(format!(
            "pool {pool}: backend {address} written to etcd at revision {revision}; every host applies it"
        ));
    }
    Ok(lines)
}

/// The commands an operator may send: the ones written to the config file. Probe results,
/// pool and VIP additions and removals are the State's own (health checks, reloads) and are
/// refused here, whole request and all.
pub fn operator_only(commands: Vec<Command>) -> Result<Vec<Command>, String> {
    match commands.iter().find(|c| !c.persists()) {
        Some(other) => Err(format!(
            "{} is not an admin command (add_backend, remove_backend, set_weight, set_drain, \
             set_node_drain, set_split, add_deny, remove_deny; pools and VIPs change in the config \
             file and a reload)",
            serde_json::to_value(other)
                .ok()
                .and_then(|v| v["command"].as_str().map(str::to_owned))
                .unwrap_or_default()
        )),
        None => Ok(commands),
    }
}
