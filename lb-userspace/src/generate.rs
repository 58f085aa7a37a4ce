//! Man pages and shell completions from a binary's clap definition: `lbd generate man|bash|zsh
//! DIR` and the same for lbctl (hidden subcommands, as ripgrep's `--generate`), which `cargo
//! xtask deb` puts into the package.
use std::path::Path;

/// What `generate` writes into its directory.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Generated {
    /// Man pages (section 1), one per subcommand too: NAME.1, NAME-SUBCOMMAND.1.
    Man,
    /// The bash completion script: NAME.
    Bash,
    /// The zsh completion script: _NAME.
    Zsh,
}

/// Writes `what` for `command` (the binary's `Cli::command()`) into `dir`.
pub fn generate(mut command: clap::Command, what: Generated, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let name = command.get_name().to_owned();
    let (shell, file) = match what {
        Generated::Man => return clap_mangen::generate_to(command, dir),
        Generated::Bash => (clap_complete::Shell::Bash, name.clone()),
        Generated::Zsh => (clap_complete::Shell::Zsh, format!("_{name}")),
    };
    let mut out = std::fs::File::create(dir.join(file))?;
    clap_complete::generate(shell, &mut command, name, &mut out);
    Ok(())
}
