//! The one canonical State of what lbd serves (the config plus probe results), the typed
//! Commands that change it, and the diff that turns a reload into Commands. The CLI, the admin
//! API, health checks and SIGHUP all go through [`State::apply`].
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnet::IpNet;
use lb_common::vip::{VIP_F_DROP_FRAGMENTS, VIP_F_L7, VIP_F_SYN_COOKIES, VipKey};
use serde::{Deserialize, Serialize};

use crate::{
    config::{BackendSpec, Config, MAX_SPLIT_PERCENT, MAX_WEIGHT, Pool, Vip, VipMode, is_split_share},
    dataplane::tables::{Desired, DesiredVip, addr_of},
    host::HostFacts,
    maglev::Weighted,
};

/// One change to the State.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    AddBackend {
        pool: String,
        address: IpAddr,
        weight: u32,
    },
    RemoveBackend {
        pool: String,
        address: IpAddr,
    },
    SetWeight {
        pool: String,
        address: IpAddr,
        weight: u32,
    },
    /// Drain (no new flows, established flows stay) or undrain a backend.
    SetDrain {
        pool: String,
        address: IpAddr,
        drain: bool,
    },
    /// Drain the node (withdraw every VIP from BGP) or undrain it; needs `[bgp]`.
    SetNodeDrain {
        drained: bool,
    },
    /// Send `percent` of a route's requests to `pool` instead of the route's own pool (a
    /// canary step, blue-green at 100; 0 ends the split to that pool).
    SetSplit {
        route: String,
        pool: String,
        percent: f64,
    },
    /// Inject these faults into a route's requests (`fault`: a chaos experiment), or stop
    /// (None).
    SetFault {
        route: String,
        fault: Option<crate::config::FaultSpec>,
    },
    AddDeny {
        prefix: IpNet,
    },
    RemoveDeny {
        prefix: IpNet,
    },
    /// A probe result (runtime only, never written to the config).
    SetHealth {
        pool: String,
        address: IpAddr,
        healthy: bool,
    },
    /// Passive outlier ejection by the proxy (runtime only, never written to the config, not on
    /// the admin API). Kept apart from probe health: probes neither end nor start an ejection.
    #[serde(skip)]
    SetEjected {
        pool: String,
        address: IpAddr,
        ejected: bool,
    },
    AddPool {
        pool: String,
    },
    RemovePool {
        pool: String,
    },
    AddVip {
        name: String,
    },
    RemoveVip {
        name: String,
    },
    /// Take everything else (data-plane settings, VIP definitions, health checks) from a
    /// reloaded config.
    #[serde(skip)]
    SetSettings(Box<Config>),
}

impl Command {
    /// Whether the command changes a pool's backend (what etcd holds with `[cluster]`).
    pub fn is_backend(&self) -> bool {
        matches!(
            self,
            Command::AddBackend { .. }
                | Command::RemoveBackend { .. }
                | Command::SetWeight { .. }
                | Command::SetDrain { .. }
        )
    }

    /// Whether the command is an operator's change that belongs in the config file.
    pub fn persists(&self) -> bool {
        self.is_backend()
            || matches!(
                self,
                Command::SetNodeDrain { .. }
                    | Command::SetSplit { .. }
                    | Command::SetFault { .. }
                    | Command::AddDeny { .. }
                    | Command::RemoveDeny { .. }
            )
    }
}

/// Why a command was refused; the State is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("no pool `{0}`")]
    NoPool(String),
    #[error("pool `{0}` has no backend {1}")]
    NoBackend(String, IpAddr),
    #[error("pool `{0}` already has backend {1}")]
    DuplicateBackend(String, IpAddr),
    #[error("weight {0} is above {MAX_WEIGHT}")]
    Weight(u32),
    #[error("pool `{0}` is used by VIP `{1}`")]
    PoolInUse(String, String),
    #[error("{0}")]
    Invalid(String),
}

/// What lbd serves.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub config: Config,
    /// Probe results by (pool, backend); a backend not yet probed counts as healthy.
    pub health: BTreeMap<(String, IpAddr), bool>,
    /// Backends the proxy's outlier detection has taken out, until it lets them back.
    pub ejected: BTreeSet<(String, IpAddr)>,
}

/// A command's line for the log: `line()` when it changed something, else "".
fn changed(changed: bool, line: impl FnOnce() -> String) -> String {
    if changed { line() } else { String::new() }
}

/// A pool's members from `before` to `after`: added ones (drained if they say so), weights and
/// drains changed, removed ones.
fn members_diff(pool: &str, before: &[BackendSpec], after: &[BackendSpec], commands: &mut Vec<Command>) {
    let before: BTreeMap<IpAddr, &BackendSpec> = before.iter().map(|b| (b.addr, b)).collect();
    let after: BTreeMap<IpAddr, &BackendSpec> = after.iter().map(|b| (b.addr, b)).collect();
    let pool = pool.to_owned();
    for (&address, b) in &after {
        let (old_weight, old_drain) = match before.get(&address) {
            None => {
                commands.push(Command::AddBackend { pool: pool.clone(), address, weight: b.weight });
                (b.weight, false)
            }
            Some(a) => (a.weight, a.drain),
        };
        if old_weight != b.weight {
            commands.push(Command::SetWeight { pool: pool.clone(), address, weight: b.weight });
        }
        if old_drain != b.drain {
            commands.push(Command::SetDrain { pool: pool.clone(), address, drain: b.drain });
        }
    }
    for &address in before.keys().filter(|a| !after.contains_key(*a)) {
        commands.push(Command::RemoveBackend { pool: pool.clone(), address });
    }
}

/// Whether anything but pool membership and deny prefixes (which commands of their own change)
/// differs: VIPs, listeners, routes, a pool's settings such as its health check, which of its
/// backends are backups (a setting of the file's, as the health check is).
fn settings_changed(old: &Config, new: &Config) -> bool {
    let mut rest = old.clone();
    rest.pools = new.pools.clone();
    rest.deny = new.deny.clone();
    let backups = |p: &Pool| p.backends.iter().filter(|b| b.backup).map(|b| b.addr).collect::<BTreeSet<_>>();
    let pool_settings_changed = old.pools.iter().any(|(n, p)| {
        new.pools.get(n).is_some_and(|q| {
            Pool { backends: Vec::new(), ..q.clone() } != Pool { backends: Vec::new(), ..p.clone() }
                || backups(p) != backups(q)
        })
    });
    rest != *new || pool_settings_changed
}

impl State {
    pub fn new(config: Config) -> State {
        State { config, health: BTreeMap::new(), ejected: BTreeSet::new() }
    }

    fn pool_mut(&mut self, pool: &str) -> Result<&mut Pool, CommandError> {
        self.config.pools.get_mut(pool).ok_or_else(|| CommandError::NoPool(pool.to_owned()))
    }

    fn route_mut(&mut self, route: &str) -> Result<&mut crate::config::Route, CommandError> {
        self.config
            .routes
            .iter_mut()
            .find(|r| r.name == route)
            .ok_or_else(|| CommandError::Invalid(format!("no route `{route}`")))
    }

    fn backend_mut(&mut self, pool: &str, address: IpAddr) -> Result<&mut BackendSpec, CommandError> {
        self.pool_mut(pool)?
            .backends
            .iter_mut()
            .find(|b| b.addr == address)
            .ok_or_else(|| CommandError::NoBackend(pool.to_owned(), address))
    }

    /// Whether a backend is healthy (not yet probed: yes).
    pub fn healthy(&self, pool: &str, address: IpAddr) -> bool {
        self.health.get(&(pool.to_owned(), address)).copied().unwrap_or(true)
    }

    /// Whether a backend takes new traffic as far as probes and ejection go (drain aside).
    pub fn usable(&self, pool: &str, address: IpAddr) -> bool {
        self.healthy(pool, address) && !self.ejected.contains(&(pool.to_owned(), address))
    }

    /// `Command::SetFault`: the route's faults replaced (None: none), checked as the file's are;
    /// a route that answers by itself has none.
    fn set_fault(
        &mut self,
        route: &str,
        spec: Option<&crate::config::FaultSpec>,
    ) -> Result<String, CommandError> {
        let fault = spec
            .map(|s| s.check().map_err(|why| CommandError::Invalid(format!("fault: {why}"))))
            .transpose()?;
        let r = self.route_mut(route)?;
        if r.pool.is_none() && fault.is_some() {
            return Err(CommandError::Invalid(format!(
                "route `{route}` answers by itself: no backend to fault"
            )));
        }
        if r.fault == fault {
            return Ok(String::new());
        }
        r.fault = fault;
        Ok(match spec {
            Some(spec) => {
                format!("route {route}: faults {}", serde_json::to_string(spec).unwrap_or_default())
            }
            None => format!("route {route}: no faults"),
        })
    }

    /// `Command::SetSplit`: the route's share to `pool` replaced (0 removes it); the shares
    /// must stay within what the config accepts (0 to 100, at most 100 in all).
    fn set_split(&mut self, route: &str, pool: &str, percent: f64) -> Result<String, CommandError> {
        if !is_split_share(percent) {
            return Err(CommandError::Invalid(format!("a split percent is 0 to 100, not {percent}")));
        }
        if !self.config.pools.contains_key(pool) {
            return Err(CommandError::NoPool(pool.to_owned()));
        }
        let r = self.route_mut(route)?;
        if r.pool.is_none() {
            return Err(CommandError::Invalid(format!(
                "route `{route}` answers by itself (redirect or respond): it has no pool to split"
            )));
        }
        if r.pool.as_deref() == Some(pool) {
            return Err(CommandError::Invalid(format!(
                "`{pool}` is route `{route}`'s own pool: a split sends requests to other pools"
            )));
        }
        let old = r.split.iter().find(|(p, _)| p == pool).map_or(0.0, |(_, share)| *share);
        let others: f64 = r.split.iter().filter(|(p, _)| p != pool).map(|(_, share)| share).sum();
        if others + percent > MAX_SPLIT_PERCENT {
            return Err(CommandError::Invalid(format!(
                "route `{route}` already sends {others}% to other pools: {percent}% more is over 100"
            )));
        }
        if old == percent {
            return Ok(String::new());
        }
        match r.split.iter_mut().find(|(p, _)| p == pool) {
            Some(entry) if percent > 0.0 => entry.1 = percent,
            Some(_) => r.split.retain(|(p, _)| p != pool),
            None => r.split.push((pool.to_owned(), percent)),
        }
        Ok(format!("route {route}: {percent}% to pool {pool} (was {old}%)"))
    }

    /// Applies one command, returning a line describing the change ("" when nothing changed).
    /// A refused command changes nothing.
    pub fn apply(&mut self, command: &Command) -> Result<String, CommandError> {
        match command {
            Command::AddBackend { pool, address, weight } => self.add_backend(pool, *address, *weight),
            Command::RemoveBackend { pool, address } => self.remove_backend(pool, *address),
            Command::SetWeight { pool, address, weight } => self.set_weight(pool, *address, *weight),
            Command::SetDrain { pool, address, drain } => self.set_drain(pool, *address, *drain),
            Command::SetNodeDrain { drained } => self.set_node_drain(*drained),
            Command::SetSplit { route, pool, percent } => self.set_split(route, pool, *percent),
            Command::SetFault { route, fault } => self.set_fault(route, fault.as_ref()),
            Command::AddDeny { prefix } => self.add_deny(*prefix),
            Command::RemoveDeny { prefix } => self.remove_deny(*prefix),
            Command::SetHealth { pool, address, healthy } => self.set_health(pool, *address, *healthy),
            Command::SetEjected { pool, address, ejected } => self.set_ejected(pool, *address, *ejected),
            Command::AddPool { pool } => self.add_pool(pool),
            Command::RemovePool { pool } => self.remove_pool(pool),
            // VIP definitions arrive with SetSettings; these name the change for the log.
            Command::AddVip { name } => Ok(format!("VIP {name} added")),
            Command::RemoveVip { name } => Ok(format!("VIP {name} removed")),
            Command::SetSettings(new) => Ok(self.set_settings(new)),
        }
    }

    fn add_backend(&mut self, pool: &str, address: IpAddr, weight: u32) -> Result<String, CommandError> {
        if weight > MAX_WEIGHT {
            return Err(CommandError::Weight(weight));
        }
        if self.pool_mut(pool)?.backends.iter().any(|b| b.addr == address) {
            return Err(CommandError::DuplicateBackend(pool.to_owned(), address));
        }
        // XDP cannot put IPv6 in IPv4; lbd's proxy connects to either family.
        let l4_v6 = |v: &Vip| v.pool == pool && v.addr.is_ipv6() && v.mode == VipMode::L4;
        if address.is_ipv4() && self.config.vips.iter().any(l4_v6) {
            return Err(CommandError::Invalid(format!(
                "pool `{pool}` serves an IPv6 L4 VIP: it cannot take IPv4 backend {address}"
            )));
        }
        self.pool_mut(pool)?.backends.push(BackendSpec {
            addr: address,
            weight,
            drain: false,
            backup: false,
        });
        Ok(format!("pool {pool}: backend {address} added with weight {weight}"))
    }

    /// A backend removed, with what probes and ejection said of it.
    fn remove_backend(&mut self, pool: &str, address: IpAddr) -> Result<String, CommandError> {
        self.backend_mut(pool, address)?;
        self.pool_mut(pool)?.backends.retain(|b| b.addr != address);
        let key = (pool.to_owned(), address);
        self.health.remove(&key);
        self.ejected.remove(&key);
        Ok(format!("pool {pool}: backend {address} removed"))
    }

    fn set_weight(&mut self, pool: &str, address: IpAddr, weight: u32) -> Result<String, CommandError> {
        if weight > MAX_WEIGHT {
            return Err(CommandError::Weight(weight));
        }
        let old = std::mem::replace(&mut self.backend_mut(pool, address)?.weight, weight);
        Ok(changed(old != weight, || format!("pool {pool}: backend {address} weight {old} -> {weight}")))
    }

    fn set_drain(&mut self, pool: &str, address: IpAddr, drain: bool) -> Result<String, CommandError> {
        let old = std::mem::replace(&mut self.backend_mut(pool, address)?.drain, drain);
        let what = if drain { "draining" } else { "ready" };
        Ok(changed(old != drain, || format!("pool {pool}: backend {address} {what}")))
    }

    /// The whole host drained from BGP (every VIP withdrawn) or announced again.
    fn set_node_drain(&mut self, drained: bool) -> Result<String, CommandError> {
        let bgp = self.config.bgp.as_mut().ok_or_else(|| {
            CommandError::Invalid("no [bgp] in the config: nothing is announced to drain".into())
        })?;
        let old = std::mem::replace(&mut bgp.drained, drained);
        let what = if drained {
            "node drained: every VIP is withdrawn"
        } else {
            "node undrained: VIPs are announced again"
        };
        Ok(changed(old != drained, || what.to_owned()))
    }

    fn add_deny(&mut self, prefix: IpNet) -> Result<String, CommandError> {
        // As the config says of `[deny]` (the file written after would be refused).
        if !self.config.dataplane {
            return Err(CommandError::Invalid(
                "the deny list drops sources in XDP: this host has no [dataplane] section".into(),
            ));
        }
        if prefix.trunc() != prefix {
            return Err(CommandError::Invalid(format!("`{prefix}` has host bits set")));
        }
        if self.config.deny.contains(&prefix) {
            return Ok(String::new());
        }
        self.config.deny.push(prefix);
        Ok(format!("deny {prefix} added"))
    }

    fn remove_deny(&mut self, prefix: IpNet) -> Result<String, CommandError> {
        if !self.config.deny.contains(&prefix) {
            return Err(CommandError::Invalid(format!("{prefix} is not in the deny list")));
        }
        self.config.deny.retain(|p| *p != prefix);
        Ok(format!("deny {prefix} removed"))
    }

    /// What the health probes found (a backend never probed counts as up).
    fn set_health(&mut self, pool: &str, address: IpAddr, healthy: bool) -> Result<String, CommandError> {
        self.backend_mut(pool, address)?;
        let old = self.health.insert((pool.to_owned(), address), healthy).unwrap_or(true);
        let what = if healthy { "up" } else { "DOWN" };
        Ok(changed(old != healthy, || format!("pool {pool}: backend {address} is {what}")))
    }

    /// What the proxy's outlier detection decided.
    fn set_ejected(&mut self, pool: &str, address: IpAddr, ejected: bool) -> Result<String, CommandError> {
        self.backend_mut(pool, address)?;
        let key = (pool.to_owned(), address);
        let flipped = if ejected { self.ejected.insert(key) } else { self.ejected.remove(&key) };
        let what = if ejected { "ejected (outlier)" } else { "back from ejection" };
        Ok(changed(flipped, || format!("pool {pool}: backend {address} {what}")))
    }

    fn add_pool(&mut self, pool: &str) -> Result<String, CommandError> {
        if self.config.pools.contains_key(pool) {
            return Err(CommandError::Invalid(format!("pool `{pool}` exists")));
        }
        let new = Pool { name: pool.to_owned(), backends: Vec::new(), ..Pool::default() };
        self.config.pools.insert(pool.to_owned(), new);
        Ok(format!("pool {pool} added"))
    }

    /// A pool no VIP serves removed, with what probes and ejection said of its backends.
    fn remove_pool(&mut self, pool: &str) -> Result<String, CommandError> {
        if let Some(vip) = self.config.vips.iter().find(|v| v.pool == pool) {
            return Err(CommandError::PoolInUse(pool.to_owned(), vip.name.clone()));
        }
        self.config.pools.remove(pool).ok_or_else(|| CommandError::NoPool(pool.to_owned()))?;
        self.health.retain(|(p, _), _| p != pool);
        self.ejected.retain(|(p, _)| p != pool);
        Ok(format!("pool {pool} removed"))
    }

    /// Everything but pool membership and the deny list taken from `new` (a reload): those two
    /// stay as commands left them, and the reload's own commands change them.
    fn set_settings(&mut self, new: &Config) -> String {
        let mut config = new.clone();
        let mut pools = std::mem::take(&mut self.config.pools);
        for (name, pool) in pools.iter_mut() {
            if let Some(p) = config.pools.get(name) {
                let mut backends = std::mem::take(&mut pool.backends);
                for b in &mut backends {
                    b.backup = p.backends.iter().find(|q| q.addr == b.addr).map_or(b.backup, |q| q.backup);
                }
                *pool = Pool { backends, ..p.clone() };
            }
        }
        config.pools = pools;
        config.deny = std::mem::take(&mut self.config.deny);
        let changed = config != self.config;
        self.config = config;
        if changed { "settings, VIPs and health checks reloaded".into() } else { String::new() }
    }

    /// The commands that turn this State's config into `new` (a reload), in an order that is
    /// valid at every step: pools first, then members, deny prefixes, VIPs and settings, then
    /// pool removals.
    pub fn diff(&self, new: &Config) -> Vec<Command> {
        let old = &self.config;
        let mut commands = Vec::new();
        for name in new.pools.keys().filter(|n| !old.pools.contains_key(*n)) {
            commands.push(Command::AddPool { pool: name.clone() });
        }
        for (name, pool) in &new.pools {
            let before = old.pools.get(name).map_or(&[][..], |p| &p.backends[..]);
            members_diff(name, before, &pool.backends, &mut commands);
        }
        let old_deny: BTreeSet<&IpNet> = old.deny.iter().collect();
        let new_deny: BTreeSet<&IpNet> = new.deny.iter().collect();
        for prefix in new_deny.difference(&old_deny) {
            commands.push(Command::AddDeny { prefix: **prefix });
        }
        for prefix in old_deny.difference(&new_deny) {
            commands.push(Command::RemoveDeny { prefix: **prefix });
        }
        let old_vips: BTreeSet<&str> = old.vips.iter().map(|v| v.name.as_str()).collect();
        let new_vips: BTreeSet<&str> = new.vips.iter().map(|v| v.name.as_str()).collect();
        for name in new_vips.difference(&old_vips) {
            commands.push(Command::AddVip { name: (*name).to_owned() });
        }
        for name in old_vips.difference(&new_vips) {
            commands.push(Command::RemoveVip { name: (*name).to_owned() });
        }
        if settings_changed(old, new) {
            commands.push(Command::SetSettings(Box::new(new.clone())));
        }
        for name in old.pools.keys().filter(|n| !new.pools.contains_key(*n)) {
            commands.push(Command::RemovePool { pool: name.clone() });
        }
        commands
    }

    /// Effective Maglev weights of a pool: drained, down and ejected backends get 0, and backup
    /// backends too while a backend that is not one takes flows. If every backend that is not
    /// drained is down or ejected, all of them keep their weight (fail open): dropping all
    /// traffic is worse than sending some to backends the probes may be wrong about.
    pub fn effective_backends(&self, pool: &Pool) -> (Vec<Weighted>, bool) {
        let ready: Vec<&BackendSpec> = pool.backends.iter().filter(|b| !b.drain).collect();
        let fail_open = !ready.is_empty() && ready.iter().all(|b| !self.usable(&pool.name, b.addr));
        let standing_by =
            ready.iter().any(|b| !b.backup && b.weight > 0 && (fail_open || self.usable(&pool.name, b.addr)));
        let weighted = pool
            .backends
            .iter()
            .map(|b| {
                let usable =
                    !b.drain && (fail_open || self.usable(&pool.name, b.addr)) && !(b.backup && standing_by);
                Weighted { addr: addr_of(b.addr), weight: if usable { b.weight } else { 0 } }
            })
            .collect();
        (weighted, fail_open)
    }

    /// Whether the pool has a backend new flows can go to: ready (probes, no ejection), not
    /// drained, weight above 0. A pool failing open has none.
    pub fn pool_usable(&self, pool: &Pool) -> bool {
        pool.backends.iter().any(|b| !b.drain && b.weight > 0 && self.usable(&pool.name, b.addr))
    }

    /// The pools failing open (every ready backend down).
    pub fn failing_open(&self) -> Vec<String> {
        self.config.pools.values().filter(|p| self.effective_backends(p).1).map(|p| p.name.clone()).collect()
    }

    /// What the maps should hold: every VIP with its flags and, for L4, the backends Maglev
    /// spreads over (health, drain and weights applied), and the host's settings.
    pub fn desired(&self, host: &HostFacts) -> Desired {
        let config = &self.config;
        let vips = config
            .vips
            .iter()
            .map(|vip| {
                let mut flags = 0;
                if vip.mode == VipMode::L7 {
                    flags |= VIP_F_L7;
                }
                if vip.drop_fragments {
                    flags |= VIP_F_DROP_FRAGMENTS;
                }
                if vip.syn_cookies {
                    flags |= VIP_F_SYN_COOKIES;
                }
                let backends = match vip.mode {
                    VipMode::L7 => Vec::new(),
                    VipMode::L4 => self.effective_backends(config.pool_of(vip)).0,
                };
                let key = VipKey {
                    addr: addr_of(vip.addr),
                    port: vip.port.to_be(),
                    proto: vip.protocol.number(),
                    _pad: 0,
                };
                DesiredVip { key, flags, backends }
            })
            .collect();
        Desired {
            vips,
            deny: config.deny.clone(),
            next_hop_mac: host.next_hop_mac,
            encap_source_v4: config.encap_source_v4.octets(),
            encap_source_v6: config.encap_source_v6.octets(),
            max_encap_ip_len: host.mtu,
            flow_grace: config.flow_grace,
            syn_limit: config
                .syn_limit
                .map_or_else(Default::default, |l| lb_common::syn::SynLimit::new(l.rate, l.burst)),
            redirect_ifindex: host.redirect_ifindex,
        }
    }
}

#[cfg(test)]
mod tests;
