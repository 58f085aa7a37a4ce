//! The XDP data plane from lbd's side. This file loads the embedded XDP object, attaches a
//! program to a NIC and pins link and maps; its children write and read the pinned maps:
//! `tables` (the writer: backends, VIPs, settings; with `rings` and `deny`), `vip_table`,
//! `conn_table`, `mapped` (mmap'ed arrays), `counters` (per-CPU counters), `nic` (the NIC's own
//! XDP error counters).
pub mod conn_table;
pub mod counters;
mod deny;
pub mod mapped;
pub mod nic;
mod rings;
pub mod tables;
pub mod vip_table;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use lb_common::{
    flow::{CONN_SLOTS_MAP, CONN_TAGS_MAP},
    ring::{RINGS_MAP, ring_entries},
};
use log::{info, warn};

use crate::config::XdpModeSetting;

/// The balancer program's name in the object.
pub const BALANCER_PROGRAM: &str = "sluice_balancer";
/// The backends' decapsulation program's name in the object.
pub const DECAP_PROGRAM: &str = "sluice_decap";
/// The pass-everything program for a veth peer of a native-XDP interface.
pub const PASS_PROGRAM: &str = "sluice_pass";
/// File name of the pinned XDP link inside a pin directory.
pub const LINK_PIN: &str = "link";

/// The compiled lb-ebpf object, built by build.rs.
fn ebpf_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"))
}

/// Which program of the object to load, and how big its maps are.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    /// The edge balancer with rings for this many VIPs.
    Balancer { max_vips: u32 },
    /// A backend's decapsulation (balancer maps shrunk to nothing).
    Decap,
    /// The pass-everything program (balancer maps shrunk to nothing).
    Pass,
}

/// Loads the object with every map pinned under `pin_dir` (existing pins are re-adopted), and
/// loads the role's program into the kernel.
pub fn load(pin_dir: &Path, role: Role) -> Result<Ebpf> {
    std::fs::create_dir_all(pin_dir)
        .with_context(|| format!("creating pin directory {} (is bpffs mounted?)", pin_dir.display()))?;
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(pin_dir);
    let program = match role {
        Role::Balancer { max_vips } => {
            loader.map_max_entries(RINGS_MAP, ring_entries(max_vips));
            BALANCER_PROGRAM
        }
        Role::Decap | Role::Pass => {
            loader
                .map_max_entries(RINGS_MAP, 1)
                .map_max_entries(CONN_TAGS_MAP, 1)
                .map_max_entries(CONN_SLOTS_MAP, 1);
            if matches!(role, Role::Decap) { DECAP_PROGRAM } else { PASS_PROGRAM }
        }
    };
    let mut ebpf = loader.load(ebpf_object()).context("loading the XDP object")?;
    xdp_program(&mut ebpf, program)?.load().with_context(|| format!("verifying {program}"))?;
    Ok(ebpf)
}

/// A program of a loaded object.
pub fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    let program =
        ebpf.program_mut(name).with_context(|| format!("program {name} missing from the object"))?;
    Ok(program.try_into()?)
}

/// How the program ended up on the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    /// A pinned link from an earlier lbd was found and its program replaced atomically.
    Adopted,
    /// Freshly attached in native (driver) mode.
    Native,
    /// Freshly attached in generic (skb) mode.
    Generic,
}

/// Attaches program `name` to `iface` and pins the link at `pin_dir/link`; if a link is already
/// pinned there, swaps the new program into it without a gap in forwarding.
pub fn attach(
    ebpf: &mut Ebpf,
    name: &str,
    iface: &str,
    mode: XdpModeSetting,
    pin_dir: &Path,
) -> Result<Attached> {
    let link_path = pin_dir.join(LINK_PIN);
    let if_name = std::ffi::CString::new(iface).context("interface name contains NUL")?;
    let program = xdp_program(ebpf, name)?;
    if link_path.exists() {
        let pinned = PinnedLink::from_pin(&link_path)
            .with_context(|| format!("opening pinned link {}", link_path.display()))?;
        let link = XdpLink::try_from(FdLink::from(pinned)).context("pinned link is not an XDP link")?;
        let id = program.attach_to_link(link).context("replacing the program in the pinned link")?;
        // Dropping the program's handle would detach it: the pin keeps the link alive.
        std::mem::forget(program.take_link(id)?);
        return Ok(Attached::Adopted);
    }
    let (id, attached) = match mode {
        XdpModeSetting::Native => (program.attach(if_name.as_c_str(), XdpMode::Driver), Attached::Native),
        XdpModeSetting::Generic => (program.attach(if_name.as_c_str(), XdpMode::Skb), Attached::Generic),
        XdpModeSetting::Auto => match program.attach(if_name.as_c_str(), XdpMode::Driver) {
            Ok(id) => (Ok(id), Attached::Native),
            Err(err) => {
                warn!("native XDP on {iface} failed ({err}); falling back to generic mode");
                (program.attach(if_name.as_c_str(), XdpMode::Skb), Attached::Generic)
            }
        },
    };
    let id = id.with_context(|| format!("attaching XDP to {iface}"))?;
    let link = program.take_link(id)?;
    let fd_link = FdLink::try_from(link).context("XDP link is not an fd link (kernel < 5.9?)")?;
    fd_link.pin(&link_path).with_context(|| format!("pinning the link at {}", link_path.display()))?;
    info!("attached {name} to {iface} ({attached:?})");
    Ok(attached)
}

/// Detaches the program and removes every pinned object under `pin_dir`.
pub fn detach(pin_dir: &Path) -> Result<()> {
    if !pin_dir.exists() {
        bail!("nothing pinned at {}", pin_dir.display());
    }
    let link_path = pin_dir.join(LINK_PIN);
    if link_path.exists() {
        // Unpinning drops the last reference to the link: the program leaves the interface.
        PinnedLink::from_pin(&link_path)?.unpin()?;
    }
    for entry in std::fs::read_dir(pin_dir)? {
        let path: PathBuf = entry?.path();
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    std::fs::remove_dir(pin_dir)?;
    Ok(())
}

/// Where `lbd decap` pins its link and maps for `iface`.
pub fn decap_pin_dir(iface: &str) -> PathBuf {
    PathBuf::from(format!("{}-decap-{iface}", lb_common::PIN_DIR))
}
