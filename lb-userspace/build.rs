//! Builds lb-ebpf for bpfel-unknown-none with the toolchain pinned in lb-ebpf/rust-toolchain.toml.
use std::path::Path;

fn main() -> aya_build::Result<()> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let ebpf_dir = workspace.join("lb-ebpf");
    let pin = ebpf_dir.join("rust-toolchain.toml");
    println!("cargo:rerun-if-changed={}", pin.display());
    println!("cargo:rerun-if-changed={}", workspace.join("lb-common/src").display());
    let pin_text = std::fs::read_to_string(&pin)?;
    let toolchain = pin_text
        .lines()
        .find_map(|line| line.strip_prefix("channel = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .ok_or_else(|| anyhow::anyhow!("no channel = \"...\" line in {}", pin.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "lb-ebpf",
            root_dir: ebpf_dir.to_str().expect("UTF-8 workspace path"),
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(toolchain),
    )
}
