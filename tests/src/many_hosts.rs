//! Many balancer hosts behind one router, for `root_bgp`, `root_cluster` and `scripts/demo
//! --cluster`: BIRD and etcd daemons; the edge bed (three balancers announcing a VIP over BGP to
//! a BIRD router doing L4-hashed ECMP, three DSR backends with Sluice's decap, optionally etcd
//! for the pools); long-lived flows that record which backend answered them.
use std::{
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use lb_userspace::dataplane::counters::Counters;

use crate::{
    netns::{Host, Topology, VIP4_NET, VIP6_NET, mac_text, read_mac},
    servers::{Decap, Lbd, Nginx, TempDir, wait_for},
};

/// Starts BIRD in `host`'s namespace with `conf` (checked first), in the foreground: a child
/// of this process, with its control socket `dir/NAME.ctl`.
pub fn bird(host: &Host, dir: &Path, name: &str, conf: &str) -> Result<Child> {
    let file = dir.join(format!("bird-{name}.conf"));
    std::fs::write(&file, conf)?;
    let socket = dir.join(format!("{name}.ctl"));
    let check = host.command("bird").args(["-p", "-c", file.to_str().context("path")?]).output()?;
    anyhow::ensure!(check.status.success(), "bird -p {name}: {}", String::from_utf8_lossy(&check.stderr));
    let child = host
        .command("bird")
        .args(["-f", "-c", file.to_str().context("path")?, "-s", socket.to_str().context("path")?])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting bird (apt install bird2)")?;
    wait_for("bird's control socket", Duration::from_secs(10), || socket.exists())?;
    Ok(child)
}

/// etcd in `host`'s namespace on its link address, data in `data`; answers before it returns.
pub fn etcd(host: &Host, data: &Path) -> Result<Child> {
    let client = format!("http://{}:2379", host.addr4);
    let child = host
        .command("etcd")
        .args(["--name", "sluice-test", "--data-dir", data.to_str().context("path")?])
        .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &format!("http://{}:2380", host.addr4)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting etcd (apt install etcd-server)")?;
    wait_for("etcd to answer", Duration::from_secs(20), || etcdctl(host, &["endpoint", "health"]).is_ok())?;
    Ok(child)
}

/// etcdctl against the etcd in `host`'s namespace.
pub fn etcdctl(host: &Host, args: &[&str]) -> Result<String> {
    let endpoint = format!("http://{}:2379", host.addr4);
    let mut all = vec!["--endpoints", &endpoint, "--command-timeout", "3s"];
    all.extend_from_slice(args);
    let out = host.command("etcdctl").env("ETCDCTL_API", "3").args(&all).output()?;
    anyhow::ensure!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The edge bed: client, router (BIRD, ECMP), three balancers (lbd and BIRD each), three
/// backends (nginx, decap), and with `cluster` etcd (in a namespace of its own) for the pools.
/// Everything stops and goes on drop.
pub struct Edge {
    pub vip: &'static str,
    /// The same service over IPv6 (its own VIP and pool of the backends' IPv6 addresses).
    pub vip6: &'static str,
    pub lbds: Vec<Lbd>,
    /// etcd, when the balancers follow it.
    pub etcd: Option<Child>,
    pub decaps: Vec<Decap>,
    pub servers: Vec<Nginx>,
    birds: Vec<Child>,
    /// Pin directories of balancers killed by [`Edge::kill`] (their lbd left them).
    killed_pins: Vec<std::path::PathBuf>,
    pub topology: Topology,
    pub dir: TempDir,
}

impl Drop for Edge {
    fn drop(&mut self) {
        for daemon in self.etcd.iter_mut().chain(&mut self.birds) {
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        for pins in &self.killed_pins {
            let _ = std::fs::remove_dir_all(pins);
        }
        // Then lbds, decaps and servers (fields in order), the namespaces, the files.
    }
}

impl Edge {
    /// Builds the bed and waits until the router holds a 3-way route to the VIP. The third
    /// balancer lists the pool in the opposite order (Maglev must not care).
    pub fn start(name: &str) -> Result<Edge> {
        Edge::start_with(name, false)
    }

    /// [`Edge::start`]; with `cluster`, etcd runs in a namespace of its own (router link 9)
    /// and every balancer follows it (`[cluster]`).
    pub fn start_with(name: &str, cluster: bool) -> Result<Edge> {
        let mut edge = Edge {
            vip: "198.19.0.1",
            vip6: "fd00:5e:100::1",
            lbds: Vec::new(),
            etcd: None,
            decaps: Vec::new(),
            servers: Vec::new(),
            birds: Vec::new(),
            killed_pins: Vec::new(),
            topology: Topology::with_lbs(3, 3)?,
            dir: TempDir::new(name)?,
        };
        let (dir, vip, vip6) = (edge.dir.0.clone(), edge.vip, edge.vip6);
        let lbs: Vec<Host> = edge.balancers().into_iter().cloned().collect();
        edge.birds.push(router_bgp(&edge.topology.router, &dir, &lbs)?);
        for (i, backend) in edge.topology.backends.iter().enumerate() {
            backend.make_dsr_backend(&[vip, vip6])?;
            edge.decaps.push(Decap::attach(backend, "generic")?);
            edge.servers.push(Nginx::start(backend, &format!("backend{}", i + 1))?);
        }
        let mut follow = String::new();
        if cluster {
            let host = edge.topology.add_service_host("etcd", 9)?;
            edge.etcd = Some(etcd(&host, &dir.join("etcd"))?);
            follow = format!("[cluster]\nendpoints = [\"http://{}:2379\"]\n\n", host.addr4);
        }
        for (n, lb) in lbs.iter().enumerate() {
            let k = link(lb);
            let routes = dir.join(format!("lb{k}-vips.conf"));
            // lbd rewrites this file; BIRD needs it to exist at start.
            std::fs::write(&routes, lb_userspace::announce::render(&Default::default()))?;
            edge.birds.push(balancer_bgp(lb, &dir, &routes)?);
            let config = dir.join(format!("lb{k}.toml"));
            std::fs::write(&config, edge.balancer_config(lb, n == 2, &follow, &routes)?)?;
            let log = dir.join(format!("lbd-lb{k}.log"));
            edge.lbds.push(Lbd::start_logging(lb, &config, Some(&log))?);
        }
        let hops: Vec<String> = lbs.iter().map(|lb| lb.addr4.to_string()).collect();
        wait_for("a 3-way ECMP route to the VIP", Duration::from_secs(20), || {
            hops.iter().all(|h| edge.route().contains(&format!("via {h} ")))
        })?;
        let links: Vec<String> = lbs.iter().map(|lb| format!("dev r{} ", link(lb))).collect();
        wait_for("a 3-way ECMP route to the IPv6 VIP", Duration::from_secs(20), || {
            let route = edge.route6();
            links.iter().all(|l| route.contains(l))
        })?;
        Ok(edge)
    }

    /// A balancer's lbd config: both VIPs over the backends (listed backwards with `reversed`),
    /// BGP through its BIRD, `follow` (the `[cluster]` section, or nothing).
    fn balancer_config(&self, lb: &Host, reversed: bool, follow: &str, routes: &Path) -> Result<String> {
        let k = link(lb);
        let mut pool: Vec<String> =
            self.topology.backends.iter().map(|b| format!("{{ address = \"{}\" }}", b.addr4)).collect();
        if reversed {
            pool.reverse();
        }
        let pool6: Vec<String> =
            self.topology.backends.iter().map(|b| format!("{{ address = \"{}\" }}", b.addr6)).collect();
        Ok(format!(
            "[dataplane]\ninterface = \"eth0\"\nxdp_mode = \"generic\"\npin_dir = \"/sys/fs/bpf/{tag}-lb{k}\"\n\
             next_hop_mac = \"{mac}\"\n\n{follow}[bgp]\nroutes_file = \"{routes}\"\ncontrol_socket = \"{d}/lb{k}.ctl\"\n\n\
             [[vip]]\nname = \"web\"\naddress = \"{vip}\"\nport = 80\nprotocol = \"tcp\"\npool = \"web\"\n\n\
             [[vip]]\nname = \"web6\"\naddress = \"{vip6}\"\nport = 80\nprotocol = \"tcp\"\npool = \"web6\"\n\n\
             [[pool]]\nname = \"web\"\nbackends = [{pool}]\n\n[[pool]]\nname = \"web6\"\nbackends = [{pool6}]\n\n\
             [admin]\nsocket = \"{d}/lb{k}.sock\"\n",
            tag = self.topology.tag,
            mac = mac_text(read_mac(&self.topology.router.ns, &format!("r{k}"))?),
            routes = routes.display(),
            d = self.dir.0.display(),
            vip = self.vip,
            vip6 = self.vip6,
            pool = pool.join(", "),
            pool6 = pool6.join(", "),
        ))
    }

    /// The balancer hosts, in order.
    pub fn balancers(&self) -> Vec<&Host> {
        std::iter::once(&self.topology.lb).chain(&self.topology.more_lbs).collect()
    }

    /// The router's route to the VIP, as `ip route` shows it.
    pub fn route(&self) -> String {
        let out = self.topology.router.run("ip", &["-4", "route", "show", self.vip]);
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    }

    /// The router's route to the IPv6 VIP (its next hops may be link-local: `dev rN` names the
    /// balancer).
    pub fn route6(&self) -> String {
        let out = self.topology.router.run("ip", &["-6", "route", "show", self.vip6]);
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    }

    /// Takes balancer `n`'s link down at the router (the host is lost); how long until the
    /// router's route no longer names it.
    pub fn lose(&self, n: usize) -> Result<Duration> {
        let lb = self.balancers()[n].clone();
        let cut = Instant::now();
        self.topology.router.run("ip", &["link", "set", &format!("r{}", link(&lb)), "down"])?;
        self.wait_gone(n)?;
        Ok(cut.elapsed())
    }

    /// Kills balancer `n`'s lbd and BIRD with SIGKILL (its XDP program stays attached and
    /// forwarding, as after any crash); returns how long the router took to drop its route. The
    /// pins are removed when the edge is dropped.
    pub fn kill(&mut self, n: usize) -> Result<Duration> {
        let cut = Instant::now();
        let bird = &mut self.birds[n + 1];
        let _ = bird.kill();
        let _ = bird.wait();
        let lbd = self.lbds.remove(n);
        self.killed_pins.push(lbd.pin_dir.clone());
        lbd.sigkill();
        self.wait_gone(n)?;
        Ok(cut.elapsed())
    }

    /// Waits until the router's route no longer names balancer `n`.
    pub fn wait_gone(&self, n: usize) -> Result<()> {
        let via = format!("via {} ", self.balancers()[n].addr4);
        wait_for(&format!("the router to drop balancer {}", n + 1), Duration::from_secs(20), || {
            !self.route().contains(&via)
        })
    }

    /// `n` new connections, half from each client namespace: the answers per backend
    /// (backend1..3).
    pub fn connections(&self, n: usize) -> Result<Vec<usize>> {
        self.connections_to(self.vip, n)
    }

    /// [`Edge::connections`] to the IPv6 VIP.
    pub fn connections6(&self, n: usize) -> Result<Vec<usize>> {
        self.connections_to(&format!("[{}]", self.vip6), n)
    }

    fn connections_to(&self, vip: &str, n: usize) -> Result<Vec<usize>> {
        let mut answers = String::new();
        for (client, count) in [(&self.topology.client, n / 2), (&self.topology.client2, n - n / 2)] {
            let out = client.run(
                "sh",
                &["-c", &format!("for i in $(seq {count}); do curl -gs --max-time 3 http://{vip}/; done")],
            )?;
            answers.push_str(&String::from_utf8_lossy(&out.stdout));
        }
        Ok((1..=3).map(|i| answers.lines().filter(|l| *l == format!("backend{i}")).count()).collect())
    }

    /// New flows each balancer has counted.
    pub fn new_flows(&self) -> Result<Vec<u64>> {
        self.lbds.iter().map(|l| new_flows(&l.pin_dir)).collect()
    }
}

/// The router's BGP: the VIPs reach the balancers through BGP only, hashed on the 5-tuple (a
/// nexthop whose link is down is not used); BIRD peers with every balancer and merges their
/// paths into one ECMP route.
fn router_bgp(router: &Host, dir: &Path, lbs: &[Host]) -> Result<Child> {
    router.run("ip", &["route", "del", VIP4_NET])?;
    router.run("ip", &["-6", "route", "del", VIP6_NET])?;
    router.run(
        "sysctl",
        &[
            "-qw",
            "net.ipv4.fib_multipath_hash_policy=1",
            "net.ipv6.fib_multipath_hash_policy=1",
            "net.ipv4.conf.all.ignore_routes_with_linkdown=1",
            "net.ipv6.conf.all.ignore_routes_with_linkdown=1",
        ],
    )?;
    let neighbors: String = lbs
        .iter()
        .map(|lb| {
            format!(
                "protocol bgp lb{k} from lb {{ neighbor {} as 65001; }}\n\
                 protocol bgp lb{k}v6 from lb6 {{ neighbor {} as 65001; }}\n",
                lb.addr4,
                lb.addr6,
                k = link(lb)
            )
        })
        .collect();
    bird(router, dir, "router", &router_bird_config("198.18.0.1", &neighbors))
}

/// A router's BIRD config: AS 65000, every path of the balancers' (AS 65001, templates `lb` and
/// `lb6` for `neighbors`) merged into one ECMP route in the kernel.
pub fn router_bird_config(router_id: &str, neighbors: &str) -> String {
    format!(
        "router id {router_id};\nprotocol device {{ scan time 1; }}\n\
         protocol kernel {{ ipv4 {{ import none; export all; }}; merge paths on; }}\n\
         protocol kernel {{ ipv6 {{ import none; export all; }}; merge paths on; }}\n\
         template bgp lb {{ local as 65000; hold time 6; connect retry time 1; \
         ipv4 {{ import all; export none; }}; }}\n\
         template bgp lb6 {{ local as 65000; hold time 6; connect retry time 1; \
         ipv6 {{ import all; export none; }}; }}\n{neighbors}"
    )
}

/// A balancer's BIRD: it announces what lbd writes into `routes` to the router, next hop self.
fn balancer_bgp(lb: &Host, dir: &Path, routes: &Path) -> Result<Child> {
    let k = link(lb);
    bird(
        lb,
        dir,
        &format!("lb{k}"),
        &format!(
            "router id {a};\nprotocol device {{ scan time 1; }}\ninclude \"{routes}\";\n\
             protocol bgp uplink {{ local {a} as 65001; neighbor 198.18.{k}.1 as 65000; hold time 6; \
             connect retry time 1; ipv4 {{ import none; export where proto = \"sluice_vips4\"; next hop self; }}; }}\n\
             protocol bgp uplink6 {{ local {a6} as 65001; neighbor fd00:5e:{k}::1 as 65000; hold time 6; \
             connect retry time 1; ipv6 {{ import none; export where proto = \"sluice_vips6\"; next hop self; }}; }}\n",
            a = lb.addr4,
            a6 = lb.addr6,
            routes = routes.display()
        ),
    )
}

/// The router link number of a balancer (its address's third byte).
fn link(lb: &Host) -> u8 {
    lb.addr4.octets()[2]
}

/// Long-lived flows, each a kept-alive connection making a request every 200 ms on its own
/// thread for a while; each remembers the backends that answered, whether it broke, and the
/// longest gap between two answers.
pub struct Flows {
    threads: Vec<std::thread::JoinHandle<Flow>>,
}

/// One flow's backends that answered, its error if it broke, its longest gap between answers.
type Flow = (Vec<String>, Option<String>, Duration);

/// What long-lived flows saw.
pub struct Seen {
    /// The errors of the flows that broke.
    pub broken: Vec<String>,
    /// Flows answered by more than one backend.
    pub switched: usize,
    /// The longest gap between two answers on one flow.
    pub gap: Duration,
}

impl Flows {
    pub fn start(client: &Host, vip: &str, n: usize, lasting: Duration) -> Result<Flows> {
        let streams: Vec<TcpStream> = client.within(|| {
            (0..n)
                .map(|_| {
                    let s = TcpStream::connect((vip, 80))?;
                    s.set_read_timeout(Some(Duration::from_secs(5)))?;
                    Ok(s)
                })
                .collect()
        })?;
        let started = Instant::now();
        let threads = streams
            .into_iter()
            .map(|mut stream| {
                std::thread::spawn(move || {
                    let (mut seen, mut broken, mut gap, mut last) =
                        (Vec::new(), None, Duration::ZERO, Instant::now());
                    while started.elapsed() < lasting {
                        match get(&mut stream) {
                            Ok(name) => {
                                gap = gap.max(last.elapsed());
                                last = Instant::now();
                                seen.push(name);
                            }
                            Err(err) => {
                                broken = Some(err.to_string());
                                break;
                            }
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    (seen, broken, gap)
                })
            })
            .collect();
        Ok(Flows { threads })
    }

    /// Waits for every flow to end.
    pub fn finish(self) -> Seen {
        let results: Vec<Flow> = self.threads.into_iter().map(|t| t.join().expect("flow thread")).collect();
        let stalled = results.iter().filter(|(seen, broken, _)| broken.is_none() && seen.len() < 5).count();
        assert_eq!(stalled, 0, "flows stalled");
        Seen {
            broken: results.iter().filter_map(|(_, b, _)| b.clone()).collect(),
            switched: results.iter().filter(|(seen, _, _)| seen.windows(2).any(|w| w[0] != w[1])).count(),
            gap: results.iter().map(|(_, _, g)| *g).max().unwrap_or_default(),
        }
    }
}

/// New flows of every VIP counted by the balancer pinned at `pin_dir`.
pub fn new_flows(pin_dir: &Path) -> Result<u64> {
    Ok(Counters::open(pin_dir)?.vips()?.iter().map(|(_, c)| c.new_flows).sum())
}

/// One HTTP/1.1 exchange on a kept-alive connection: the body (nginx answers with its name).
pub fn get(stream: &mut TcpStream) -> Result<String> {
    stream.write_all(b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n")?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk)?;
        anyhow::ensure!(n > 0, "closed after {:?}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .context("no Content-Length")?;
            if body.len() >= length {
                return Ok(body.trim().to_owned());
            }
        }
    }
}
