//! A small edge topology in network namespaces: client, router, lb and backends joined by veth.
//!
//! ```text
//!  client ──veth── router ──veth── lb (XDP on its one NIC)
//!                     ├──veth── backend1 (VIP on lo, decap)
//!                     └──veth── backend2 ...
//! ```
//! Links use 198.18.0.0/15 (RFC 2544, benchmarking) and fd00:5e::/32 addresses; VIPs are routed
//! by the router to the lb. Everything is removed on drop.
use std::{
    net::{Ipv4Addr, Ipv6Addr},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, Result, bail};

/// IPv4 VIP range routed to the lb.
pub const VIP4_NET: &str = "198.19.0.0/24";
/// IPv6 VIP range routed to the lb.
pub const VIP6_NET: &str = "fd00:5e:100::/64";

/// Runs a command, failing with its stderr if it exits non-zero.
pub fn run(program: &str, args: &[&str]) -> Result<Output> {
    let output = Command::new(program).args(args).output().with_context(|| format!("spawning {program}"))?;
    if !output.status.success() {
        bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(output)
}

/// One host of the topology: a named network namespace.
#[derive(Debug, Clone)]
pub struct Host {
    /// Namespace name (also under /run/netns).
    pub ns: String,
    /// Its address on its link to the router.
    pub addr4: Ipv4Addr,
    pub addr6: Ipv6Addr,
    /// Its end of the link to the router.
    pub dev: String,
    /// Its MAC on that link.
    pub mac: [u8; 6],
}

impl Host {
    /// A command that runs inside this host's network namespace (bpffs stays visible).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.ns)).arg("--").arg(program);
        cmd
    }

    /// Runs a command in this namespace and returns its output, failing on non-zero exit.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<Output> {
        let output = self.command(program).args(args).output()?;
        if !output.status.success() {
            bail!(
                "[{}] {program} {}: {}",
                self.ns,
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(output)
    }

    /// Makes this host a direct-server-return backend for `vips`: the VIPs on loopback, no
    /// reverse-path filter, and no ARP answers for them on its NIC.
    pub fn make_dsr_backend(&self, vips: &[&str]) -> Result<()> {
        for vip in vips {
            let prefix = if vip.contains(':') { format!("{vip}/128") } else { format!("{vip}/32") };
            self.run("ip", &["addr", "add", &prefix, "dev", "lo"])?;
        }
        for key in ["all", "eth0", "lo", "default"] {
            self.sysctl(&format!("net.ipv4.conf.{key}.rp_filter"), "0")?;
        }
        self.sysctl("net.ipv4.conf.eth0.arp_ignore", "1")?;
        self.sysctl("net.ipv4.conf.eth0.arp_announce", "2")?;
        Ok(())
    }

    /// Moves the calling thread into this host's network namespace.
    fn enter(&self) -> Result<()> {
        let path = format!("/run/netns/{}", self.ns);
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        // SAFETY: setns on this thread only, with a valid namespace fd.
        if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {path}: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Runs `f` on a thread that has entered this host's network namespace, and waits for it.
    pub fn within<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    self.enter()?;
                    f()
                })
                .join()
                .map_err(|_| anyhow::anyhow!("thread in {} panicked", self.ns))?
        })
    }

    /// Runs `f` on its own thread inside this host's network namespace (a server).
    pub fn spawn_within(
        &self,
        f: impl FnOnce() -> Result<()> + Send + 'static,
    ) -> std::thread::JoinHandle<Result<()>> {
        let host = self.clone();
        std::thread::spawn(move || {
            host.enter()?;
            f()
        })
    }

    fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.run("sysctl", &["-qw", &format!("{key}={value}")]).map(drop)
    }
}

/// The topology; dropping it deletes every namespace (and so every veth) it made.
pub struct Topology {
    /// Unique prefix of every namespace name.
    pub tag: String,
    pub client: Host,
    /// A second client on its own link (198.18.2.0/24), e.g. one to deny-list.
    pub client2: Host,
    pub router: Host,
    pub lb: Host,
    /// More balancer hosts (`with_lbs`): links 3, 4, ... The router routes VIPs to `lb` only.
    pub more_lbs: Vec<Host>,
    pub backends: Vec<Host>,
    /// Hosts added after the start (`add_service_host`), e.g. etcd's.
    pub services: Vec<Host>,
    /// The router's MAC on the lb link: the lb's next hop for encapsulated packets.
    pub router_mac_to_lb: [u8; 6],
}

static NEXT_TOPOLOGY: AtomicU32 = AtomicU32::new(0);

/// A MAC address as config files write it (`02:00:00:00:00:fe`).
pub fn mac_text(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The MAC of `dev` in namespace `host_ns`.
pub fn read_mac(host_ns: &str, dev: &str) -> Result<[u8; 6]> {
    let out = run("ip", &["-n", host_ns, "-br", "link", "show", dev])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mac = text.split_whitespace().nth(2).context("no MAC in ip link output")?;
    let mut bytes = [0u8; 6];
    for (byte, part) in bytes.iter_mut().zip(mac.split(':')) {
        *byte = u8::from_str_radix(part, 16)?;
    }
    Ok(bytes)
}

impl Topology {
    /// Builds client, client2, router, lb and `backends` backend namespaces. Link `i` (client
    /// 0, lb 1, client2 2, backend k at 10+k) uses 198.18.i.0/24 and fd00:5e:i::/64; the router is .1 / ::1.
    pub fn new(backends: usize) -> Result<Topology> {
        Topology::with_lbs(1, backends)
    }

    /// [`Topology::new`] with `lbs` balancer hosts: `lb` and `more_lbs` (`lb2`, `lb3`, ... on
    /// links 3, 4, ...).
    pub fn with_lbs(lbs: usize, backends: usize) -> Result<Topology> {
        crate::require_root();
        let n = NEXT_TOPOLOGY.fetch_add(1, Ordering::Relaxed);
        let tag = format!("sl{}x{n}", std::process::id() % 100_000);
        let router_ns = format!("{tag}-router");
        run("ip", &["netns", "add", &router_ns])?;
        let mut topology = Topology {
            tag: tag.clone(),
            client: placeholder(),
            client2: placeholder(),
            router: Host {
                ns: router_ns.clone(),
                addr4: Ipv4Addr::UNSPECIFIED,
                addr6: Ipv6Addr::UNSPECIFIED,
                dev: String::new(),
                mac: [0; 6],
            },
            lb: placeholder(),
            more_lbs: Vec::new(),
            backends: Vec::new(),
            services: Vec::new(),
            router_mac_to_lb: [0; 6],
        };
        topology.setup_router()?;
        topology.client = topology.add_host("client", 0, 1500)?;
        topology.lb = topology.add_host("lb", 1, 1600)?;
        topology.client2 = topology.add_host("client2", 2, 1500)?;
        for k in 1..lbs.max(1) {
            let host = topology.add_host(&format!("lb{}", k + 1), 2 + k as u8, 1600)?;
            topology.more_lbs.push(host);
        }
        for k in 0..backends {
            let host = topology.add_host(&format!("be{}", k + 1), 10 + k as u8, 1600)?;
            topology.backends.push(host);
        }
        topology.router_mac_to_lb = read_mac(&router_ns, "r1")?;
        // VIPs live behind the lb.
        let lb4 = topology.lb.addr4.to_string();
        let lb6 = topology.lb.addr6.to_string();
        topology.router.run("ip", &["route", "add", VIP4_NET, "via", &lb4])?;
        topology.router.run("ip", &["-6", "route", "add", VIP6_NET, "via", &lb6])?;
        Ok(topology)
    }

    fn setup_router(&self) -> Result<()> {
        let r = &self.router;
        r.run("ip", &["link", "set", "lo", "up"])?;
        r.sysctl("net.ipv4.ip_forward", "1")?;
        r.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        r.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
        r.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
        Ok(())
    }

    /// Makes namespace `{tag}-{name}` with a veth `eth0` to the router's `r{index}`.
    fn add_host(&self, name: &str, index: u8, mtu: u32) -> Result<Host> {
        let ns = format!("{}-{name}", self.tag);
        run("ip", &["netns", "add", &ns])?;
        let router_dev = format!("r{index}");
        let mtu = mtu.to_string();
        run(
            "ip",
            &[
                "-n",
                &self.router.ns,
                "link",
                "add",
                &router_dev,
                "mtu",
                &mtu,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &ns,
                "mtu",
                &mtu,
            ],
        )?;
        let host = Host {
            ns: ns.clone(),
            addr4: Ipv4Addr::new(198, 18, index, 2),
            addr6: format!("fd00:5e:{index}::2").parse()?,
            dev: "eth0".into(),
            mac: [0; 6],
        };
        let r = &self.router;
        r.run("ip", &["addr", "add", &format!("198.18.{index}.1/24"), "dev", &router_dev])?;
        r.run("ip", &["addr", "add", &format!("fd00:5e:{index}::1/64"), "dev", &router_dev, "nodad"])?;
        r.run("ip", &["link", "set", &router_dev, "up"])?;
        r.sysctl(&format!("net.ipv4.conf.{router_dev}.rp_filter"), "0")?;
        r.run("ethtool", &["-K", &router_dev, "tx", "off"])?;
        host.run("ip", &["link", "set", "lo", "up"])?;
        host.run("ip", &["addr", "add", &format!("{}/24", host.addr4), "dev", "eth0"])?;
        host.run("ip", &["addr", "add", &format!("{}/64", host.addr6), "dev", "eth0", "nodad"])?;
        host.run("ip", &["link", "set", "eth0", "up"])?;
        host.run("ip", &["route", "add", "default", "via", &format!("198.18.{index}.1")])?;
        host.run("ip", &["-6", "route", "add", "default", "via", &format!("fd00:5e:{index}::1")])?;
        host.run("ethtool", &["-K", "eth0", "tx", "off"])?;
        let mac = read_mac(&ns, "eth0")?;
        Ok(Host { mac, ..host })
    }

    /// Adds a namespace for a service the hosts use (etcd, ...) on router link `index` (below
    /// 10, not taken by a client or balancer).
    pub fn add_service_host(&mut self, name: &str, index: u8) -> Result<Host> {
        let host = self.add_host(name, index, 1500)?;
        self.services.push(host.clone());
        Ok(host)
    }

    /// Every namespace this topology made.
    pub fn namespaces(&self) -> Vec<String> {
        let mut all =
            vec![self.router.ns.clone(), self.client.ns.clone(), self.client2.ns.clone(), self.lb.ns.clone()];
        all.extend(self.more_lbs.iter().chain(&self.backends).chain(&self.services).map(|h| h.ns.clone()));
        all
    }
}

fn placeholder() -> Host {
    Host {
        ns: String::new(),
        addr4: Ipv4Addr::UNSPECIFIED,
        addr6: Ipv6Addr::UNSPECIFIED,
        dev: String::new(),
        mac: [0; 6],
    }
}

/// Deletes every namespace whose name starts with `tag-` (also used after a crash or Ctrl-C).
pub fn delete_namespaces(tag: &str) {
    let Ok(out) = run("ip", &["netns", "list"]) else {
        return;
    };
    let prefix = format!("{tag}-");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(name) = line.split_whitespace().next().filter(|n| n.starts_with(&prefix)) {
            let _ = run("ip", &["netns", "del", name]);
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        delete_namespaces(&self.tag);
    }
}
