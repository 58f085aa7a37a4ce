//! One balancer carrying both kinds of VIP on the namespace topology: an L4 VIP balanced in
//! XDP to two nginx backends (DSR, Sluice's decap) and an L7 VIP on lbd's HTTP and HTTPS
//! listeners over the same pool (and an IPv6 L7 VIP on a plain listener). Used by the upgrade,
//! live-view and SYN flood tests.
use std::{path::PathBuf, time::Duration};

use anyhow::Result;

use crate::{
    netns::{Topology, mac_text},
    pki::TestCa,
    servers::{Decap, Lbd, Nginx, TempDir, wait_for},
};

/// The L4 VIP (DSR to the backends) and the L7 VIP (lbd's listeners).
pub const VIP4: &str = "198.19.0.1";
pub const L7: &str = "198.19.0.3";
/// An IPv6 L7 VIP (plain HTTP on lbd's `http6` listener).
pub const L7_V6: &str = "fd00:5e:100::3";

/// The bed; fields drop in order, lbd first and the topology last.
pub struct MixedBed {
    pub lbd: Lbd,
    pub config: PathBuf,
    _decaps: Vec<Decap>,
    _servers: Vec<Nginx>,
    pub ca: TestCa,
    pub dir: TempDir,
    pub topology: Topology,
}

impl MixedBed {
    /// Starts the bed; `admin_extra` is appended to lbd's `[admin]` section.
    pub fn start(name: &str, admin_extra: &str) -> Result<MixedBed> {
        let topology = Topology::new(2)?;
        let dir = TempDir::new(name)?;
        let ca = TestCa::new(&dir.0)?;
        let mut servers = Vec::new();
        let mut decaps = Vec::new();
        for (i, backend) in topology.backends.iter().enumerate() {
            backend.make_dsr_backend(&[VIP4])?;
            servers.push(Nginx::start(backend, &format!("backend{}", i + 1))?);
            decaps.push(Decap::attach(backend, "generic")?);
        }
        topology.lb.run("ip", &["addr", "add", &format!("{L7}/32"), "dev", "lo"])?;
        topology.lb.run("ip", &["addr", "add", &format!("{L7_V6}/128"), "dev", "lo"])?;
        let (cert, key) = ca.leaf("site", &["example.test"], false)?;
        let b = &topology.backends;
        let text = format!(
            "[dataplane]\ninterface = \"eth0\"\nxdp_mode = \"generic\"\npin_dir = \"/sys/fs/bpf/{tag}\"\nnext_hop_mac = \"{mac}\"\n\n\
             [[vip]]\nname = \"l4\"\naddress = \"{VIP4}\"\nport = 80\nprotocol = \"tcp\"\npool = \"web\"\n\n\
             [[vip]]\nname = \"http\"\naddress = \"{L7}\"\nport = 80\nprotocol = \"tcp\"\npool = \"web\"\nmode = \"l7\"\n\n\
             [[vip]]\nname = \"https\"\naddress = \"{L7}\"\nport = 443\nprotocol = \"tcp\"\npool = \"web\"\nmode = \"l7\"\n\n\
             [[vip]]\nname = \"http6\"\naddress = \"{L7_V6}\"\nport = 80\nprotocol = \"tcp\"\npool = \"web\"\nmode = \"l7\"\n\n\
             [[pool]]\nname = \"web\"\nbackends = [{{ address = \"{a}\" }}, {{ address = \"{b}\" }}]\n\n\
             [[listener]]\nname = \"http\"\naddress = \"{L7}:80\"\n\n\
             [[listener]]\nname = \"https\"\naddress = \"{L7}:443\"\ntls = {{ certificates = [{{ cert = \"{cert}\", key = \"{key}\" }}] }}\n\n\
             [[listener]]\nname = \"http6\"\naddress = \"[{L7_V6}]:80\"\n\n\
             [[route]]\nlistener = \"http\"\npool = \"web\"\n\n[[route]]\nlistener = \"https\"\npool = \"web\"\n\n\
             [[route]]\nlistener = \"http6\"\npool = \"web\"\n\n\
             [admin]\nsocket = \"{dir}/lbd.sock\"\n{admin_extra}\n",
            tag = topology.tag,
            mac = mac_text(topology.router_mac_to_lb),
            a = b[0].addr4,
            b = b[1].addr4,
            cert = cert.display(),
            key = key.display(),
            dir = dir.0.display(),
        );
        let config = dir.0.join("sluice.toml");
        std::fs::write(&config, text)?;
        let lbd = Lbd::start(&topology.lb, &config)?;
        wait_for("the https listener", Duration::from_secs(5), || {
            topology.lb.run("ss", &["-Htln", "sport = :443"]).map(|o| !o.stdout.is_empty()).unwrap_or(false)
        })?;
        Ok(MixedBed { lbd, config, _decaps: decaps, _servers: servers, ca, dir, topology })
    }
}
