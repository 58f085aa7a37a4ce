//! The XDP data plane from lbd's side. This file loads the embedded XDP object, attaches a
//! program to a NIC and pins link and maps; its children write and read the pinned maps:
//! `tables` (the writer: backends, VIPs, settings; with `rings` and `deny`), `vip_table`,
//! `conn_table`, `mapped` (mmap'ed arrays), `counters` (per-CPU counters), `nic` (the NIC's own
//! XDP error counters); `synproxy` keeps the netfilter rules SYN cookies need.
pub mod conn_table;
pub mod counters;
mod deny;
pub mod mapped;
pub mod nic;
mod rings;
pub mod synproxy;
pub mod tables;
pub mod vip_table;

use std::path::{Path, PathBuf};

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

/// What went wrong with the XDP object, the interface or the pinned maps.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// A kernel call failed: loading, verifying, attaching, pinning, a map read or write.
    #[error("{doing}: {cause}")]
    Kernel { doing: String, cause: String },
    /// A file in the pin directory.
    #[error("{doing}: {error}")]
    Io { doing: String, error: std::io::Error },
    /// The pinned objects are not what this lbd expects, or a table is full.
    #[error("{0}")]
    Unexpected(String),
}

pub type Result<T, E = DataplaneError> = std::result::Result<T, E>;

/// Says what was being done when a kernel call failed; the cause keeps its whole chain (aya
/// puts the errno in a source).
pub(crate) trait Doing<T> {
    fn doing(self, doing: impl std::fmt::Display) -> Result<T>;
}

impl<T, E: std::error::Error> Doing<T> for std::result::Result<T, E> {
    fn doing(self, doing: impl std::fmt::Display) -> Result<T> {
        self.map_err(|err| DataplaneError::Kernel { doing: doing.to_string(), cause: chain(&err) })
    }
}

/// An error and its sources, as one line: `a: b: c`.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}

impl From<aya::maps::MapError> for DataplaneError {
    fn from(err: aya::maps::MapError) -> Self {
        DataplaneError::Kernel { doing: "a map call".into(), cause: chain(&err) }
    }
}

fn io(doing: String) -> impl FnOnce(std::io::Error) -> DataplaneError {
    move |error| DataplaneError::Io { doing, error }
}

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
        .map_err(io(format!("creating pin directory {} (is bpffs mounted?)", pin_dir.display())))?;
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
    let mut ebpf = loader.load(ebpf_object()).doing("loading the XDP object")?;
    xdp_program(&mut ebpf, program)?.load().doing(format_args!("verifying {program}"))?;
    Ok(ebpf)
}

/// A program of a loaded object.
pub fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| DataplaneError::Unexpected(format!("program {name} missing from the object")))?;
    program.try_into().doing(format_args!("program {name}"))
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
    let if_name = std::ffi::CString::new(iface)
        .map_err(|_| DataplaneError::Unexpected("interface name contains NUL".into()))?;
    let program = xdp_program(ebpf, name)?;
    if link_path.exists() {
        let pinned = PinnedLink::from_pin(&link_path)
            .doing(format_args!("opening pinned link {}", link_path.display()))?;
        let link = XdpLink::try_from(FdLink::from(pinned)).doing("pinned link is not an XDP link")?;
        let id = program.attach_to_link(link).doing("replacing the program in the pinned link")?;
        // Dropping the program's handle would detach it: the pin keeps the link alive.
        std::mem::forget(program.take_link(id).doing("taking the link")?);
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
    let id = id.doing(format_args!("attaching XDP to {iface}"))?;
    let link = program.take_link(id).doing("taking the link")?;
    let fd_link = FdLink::try_from(link).doing("XDP link is not an fd link (kernel < 5.9?)")?;
    fd_link.pin(&link_path).doing(format_args!("pinning the link at {}", link_path.display()))?;
    info!("attached {name} to {iface} ({attached:?})");
    Ok(attached)
}

/// Detaches the program and removes every pinned object under `pin_dir`.
pub fn detach(pin_dir: &Path) -> Result<()> {
    if !pin_dir.exists() {
        return Err(DataplaneError::Unexpected(format!("nothing pinned at {}", pin_dir.display())));
    }
    let link_path = pin_dir.join(LINK_PIN);
    if link_path.exists() {
        // Unpinning drops the last reference to the link: the program leaves the interface.
        PinnedLink::from_pin(&link_path)
            .doing("opening the pinned link")?
            .unpin()
            .doing("unpinning the link")?;
    }
    let listing = || format!("listing {}", pin_dir.display());
    for entry in std::fs::read_dir(pin_dir).map_err(io(listing()))? {
        let path: PathBuf = entry.map_err(io(listing()))?.path();
        std::fs::remove_file(&path).map_err(io(format!("removing {}", path.display())))?;
    }
    std::fs::remove_dir(pin_dir).map_err(io(format!("removing {}", pin_dir.display())))?;
    Ok(())
}

/// Where `lbd decap` pins its link and maps for `iface`.
pub fn decap_pin_dir(iface: &str) -> PathBuf {
    PathBuf::from(format!("{}-decap-{iface}", lb_common::PIN_DIR))
}
