//! BGP announcements through BIRD. lbd decides what this host announces; BIRD speaks BGP. An
//! address is announced while lbd runs, its XDP program is attached, the node is not drained
//! and a VIP on the address has a usable backend (ready, not drained, weight above 0). The
//! wanted set is written as two BIRD static protocols (`sluice_vips4`, `sluice_vips6`) into the
//! file bird.conf includes, then `birdc configure` applies it; withdrawing is the same with
//! fewer routes.
use std::{collections::BTreeSet, net::IpAddr, path::Path, time::Duration};

use crate::{config::Bgp, state::State};

/// The longest birdc may take.
const BIRDC_TIMEOUT: Duration = Duration::from_secs(5);

/// The addresses `state` wants announced; `attached`: the XDP program is attached.
pub fn wanted(state: &State, attached: bool) -> BTreeSet<IpAddr> {
    let config = &state.config;
    let drained = config.bgp.as_ref().is_none_or(|b| b.drained);
    if drained || !attached {
        return BTreeSet::new();
    }
    config.vips.iter().filter(|vip| state.pool_usable(config.pool_of(vip))).map(|vip| vip.addr).collect()
}

/// The routes file for `addresses`: host routes BIRD originates (blackhole locally: the XDP
/// program takes the packets before any route is looked up).
pub fn render(addresses: &BTreeSet<IpAddr>) -> String {
    let mut text = String::from("# Written by lbd: the VIPs this host announces now. Do not edit.\n");
    for (name, family, v6) in [("sluice_vips4", "ipv4", false), ("sluice_vips6", "ipv6", true)] {
        text.push_str(&format!("protocol static {name} {{\n  {family};\n"));
        for address in addresses.iter().filter(|a| a.is_ipv6() == v6) {
            let length = if v6 { 128 } else { 32 };
            text.push_str(&format!("  route {address}/{length} blackhole;\n"));
        }
        text.push_str("}\n");
    }
    text
}

/// Keeps BIRD announcing what lbd wants.
/// Why BIRD was not told: the routes file not written, or `birdc configure` failed.
#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    #[error("writing {file}: {error}")]
    Write { file: String, error: String },
    #[error("{birdc} did not answer within {BIRDC_TIMEOUT:?}")]
    Silent { birdc: String },
    #[error("running {birdc}: {error}")]
    Run { birdc: String, error: std::io::Error },
    #[error("birdc configure: {0}")]
    Refused(String),
}

pub struct Announcer {
    bgp: Bgp,
    /// What BIRD was last told (None: nothing yet).
    announced: Option<BTreeSet<IpAddr>>,
}

impl Announcer {
    pub fn new(bgp: Bgp) -> Announcer {
        Announcer { bgp, announced: None }
    }

    /// Follows a reload's `[bgp]` (a changed file or socket is written on the next sync).
    pub fn configure(&mut self, bgp: &Bgp) {
        if (&bgp.routes_file, &bgp.control_socket) != (&self.bgp.routes_file, &self.bgp.control_socket) {
            self.announced = None;
        }
        self.bgp = bgp.clone();
    }

    /// Makes BIRD announce `wanted` if it does not already; Ok(true) when something changed.
    pub async fn sync(&mut self, wanted: &BTreeSet<IpAddr>) -> Result<bool, AnnounceError> {
        if self.announced.as_ref() == Some(wanted) {
            return Ok(false);
        }
        let (file, text) = (self.bgp.routes_file.clone(), render(wanted));
        let written = tokio::task::spawn_blocking(move || crate::persist::replace(&file, text.as_bytes()))
            .await
            .map_err(|err| err.to_string())
            .and_then(|written| written.map_err(|err| err.to_string()));
        if let Err(error) = written {
            return Err(AnnounceError::Write { file: self.bgp.routes_file.display().to_string(), error });
        }
        birdc_configure(&self.bgp.birdc, &self.bgp.control_socket).await?;
        self.announced = Some(wanted.clone());
        Ok(true)
    }

    /// What BIRD was last told to announce.
    pub fn announced(&self) -> Vec<IpAddr> {
        self.announced.iter().flatten().copied().collect()
    }
}

/// `birdc -s SOCKET configure`, within its timeout; Err with BIRD's words when it refuses.
async fn birdc_configure(birdc: &Path, socket: &Path) -> Result<(), AnnounceError> {
    let run = tokio::process::Command::new(birdc)
        .arg("-s")
        .arg(socket)
        .arg("configure")
        .kill_on_drop(true)
        .output();
    let output = match tokio::time::timeout(BIRDC_TIMEOUT, run).await {
        Err(_) => return Err(AnnounceError::Silent { birdc: birdc.display().to_string() }),
        Ok(Err(error)) => return Err(AnnounceError::Run { birdc: birdc.display().to_string(), error }),
        Ok(Ok(output)) => output,
    };
    let said = String::from_utf8_lossy(&output.stdout);
    // birdc prints "Reconfigured" (or "Reconfiguration in progress") when BIRD took the file.
    if output.status.success() && said.contains("Reconfigur") {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(AnnounceError::Refused(format!("{}{}", said.trim(), stderr.trim())))
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::{config::Config, state::Command};

    /// Each way BIRD may not be told says which, in the words the log and status show.
    #[tokio::test]
    async fn a_failed_sync_says_what_failed() {
        let dir = std::env::temp_dir().join(format!("sluice-announce-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bgp = |routes_file: PathBuf, birdc: &str| Bgp {
            routes_file,
            control_socket: dir.join("bird.ctl"),
            birdc: PathBuf::from(birdc),
            drained: false,
            withdraw_wait: Duration::ZERO,
        };
        let wanted: BTreeSet<IpAddr> = ["198.19.0.1".parse().unwrap()].into();
        let said = |bgp: Bgp| async {
            let mut announcer = Announcer::new(bgp);
            let err = announcer.sync(&wanted).await.unwrap_err().to_string();
            assert!(announcer.announced().is_empty(), "announced after {err}");
            err
        };
        let unwritable = dir.join("no-such-dir").join("routes.conf");
        let err = said(bgp(unwritable.clone(), "/bin/true")).await;
        assert!(err.starts_with(&format!("writing {}: ", unwritable.display())), "{err}");
        let err = said(bgp(dir.join("routes.conf"), "/nonexistent/birdc")).await;
        assert!(err.starts_with("running /nonexistent/birdc: "), "{err}");
        let err = said(bgp(dir.join("routes.conf"), "/bin/false")).await;
        assert_eq!(err, "birdc configure: ");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn state(bgp: &str) -> State {
        let text = format!(
            "[dataplane]\ninterface = \"eth0\"\n{bgp}\
             [[pool]]\nname = \"web\"\nbackends = [{{ address = \"10.0.0.1\" }}, {{ address = \"10.0.0.2\" }}]\n\
             [[pool]]\nname = \"dns\"\nbackends = [{{ address = \"2001:db8::10\" }}]\n\
             [[vip]]\nname = \"web\"\naddress = \"198.19.0.1\"\nport = 80\nprotocol = \"tcp\"\npool = \"web\"\n\
             [[vip]]\nname = \"dns\"\naddress = \"2001:db8::1\"\nport = 53\nprotocol = \"udp\"\npool = \"dns\"\n"
        );
        State::new(Config::parse(Path::new("t.toml"), &text).unwrap())
    }

    const BGP: &str = "[bgp]\nroutes_file = \"/run/sluice/vips.conf\"\n";

    #[test]
    fn vips_are_announced_while_usable_attached_and_undrained() {
        let mut s = state(BGP);
        let all: BTreeSet<IpAddr> = ["198.19.0.1".parse().unwrap(), "2001:db8::1".parse().unwrap()].into();
        assert_eq!(wanted(&s, true), all);
        assert!(wanted(&s, false).is_empty(), "detached: nothing");
        // A pool with nothing usable withdraws its VIP; the other stays.
        for address in ["10.0.0.1", "10.0.0.2"] {
            let drain =
                Command::SetDrain { pool: "web".into(), address: address.parse().unwrap(), drain: true };
            s.apply(&drain).unwrap();
        }
        assert_eq!(wanted(&s, true), ["2001:db8::1".parse().unwrap()].into());
        s.apply(&Command::SetNodeDrain { drained: true }).unwrap();
        assert!(wanted(&s, true).is_empty(), "drained node: nothing");
        assert!(wanted(&state(""), true).is_empty(), "no [bgp]: nothing");
    }

    #[test]
    fn the_routes_file_is_two_static_protocols() {
        let text = render(&["198.19.0.1".parse().unwrap(), "2001:db8::1".parse().unwrap()].into());
        assert!(
            text.contains("protocol static sluice_vips4 {\n  ipv4;\n  route 198.19.0.1/32 blackhole;\n}")
        );
        assert!(
            text.contains("protocol static sluice_vips6 {\n  ipv6;\n  route 2001:db8::1/128 blackhole;\n}")
        );
        let empty = render(&BTreeSet::new());
        assert!(empty.contains("sluice_vips4 {\n  ipv4;\n}") && !empty.contains("route"));
    }
}
