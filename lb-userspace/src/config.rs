//! The TOML config: raw serde structs, validation that reports every error with file:line,
//! and the typed config the daemon runs with.
use std::{
    fmt,
    ops::Range,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use toml::Spanned;

/// How to attach XDP to the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeSetting {
    /// Driver mode; fail if the driver cannot do it.
    Native,
    /// Generic (skb) mode: works on every interface, slower.
    Generic,
    /// Native, falling back to generic with a logged reason.
    #[default]
    Auto,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    dataplane: RawDataplane,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDataplane {
    interface: Spanned<String>,
    #[serde(default)]
    xdp_mode: XdpModeSetting,
    pin_dir: Option<Spanned<PathBuf>>,
}

/// The validated config.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The edge NIC the balancer attaches to.
    pub interface: String,
    pub xdp_mode: XdpModeSetting,
    /// bpffs directory for the link and maps.
    pub pin_dir: PathBuf,
}

/// One thing wrong with a config file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

/// Every error found in a config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// Collects errors against one source text, turning byte spans into line numbers.
struct Errors<'a> {
    file: &'a Path,
    text: &'a str,
    found: Vec<ConfigError>,
}

impl Errors<'_> {
    fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        let line = self.text[..span.start.min(self.text.len())].matches('\n').count() + 1;
        self.found.push(ConfigError {
            file: self.file.to_owned(),
            line,
            message: message.into(),
        });
    }
}

impl Config {
    /// Reads and validates `file`.
    pub fn load(file: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(file).map_err(|err| {
            ConfigErrors(vec![ConfigError {
                file: file.to_owned(),
                line: 0,
                message: format!("cannot read: {err}"),
            }])
        })?;
        Config::parse(file, &text)
    }

    /// Validates `text` as the contents of `file`.
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigErrors> {
        let mut errors = Errors {
            file,
            text,
            found: Vec::new(),
        };
        let raw: RawConfig = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(err) => {
                errors.at(err.span().unwrap_or(0..0), err.message().to_owned());
                return Err(ConfigErrors(errors.found));
            }
        };
        let interface = raw.dataplane.interface;
        if interface.get_ref().is_empty() || interface.get_ref().len() >= libc::IFNAMSIZ {
            errors.at(
                interface.span(),
                format!("interface name must be 1 to {} bytes", libc::IFNAMSIZ - 1),
            );
        }
        let pin_dir = match raw.dataplane.pin_dir {
            Some(dir) if !dir.get_ref().starts_with("/sys/fs/bpf") => {
                errors.at(dir.span(), "pin_dir must be under /sys/fs/bpf (bpffs)");
                PathBuf::new()
            }
            Some(dir) => dir.into_inner(),
            None => PathBuf::from(lb_common::PIN_DIR),
        };
        if !errors.found.is_empty() {
            return Err(ConfigErrors(errors.found));
        }
        Ok(Config {
            interface: interface.into_inner(),
            xdp_mode: raw.dataplane.xdp_mode,
            pin_dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        Config::parse(Path::new("t.toml"), text)
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let config = Config::parse(Path::new("t.toml"), "[dataplane]\ninterface = \"eth0\"\n").unwrap();
        assert_eq!(config.interface, "eth0");
        assert_eq!(config.xdp_mode, XdpModeSetting::Auto);
        assert_eq!(config.pin_dir, PathBuf::from(lb_common::PIN_DIR));
    }

    #[test]
    fn unknown_key_is_reported_with_its_line() {
        let found = errors("[dataplane]\ninterface = \"eth0\"\nmtu = 1500\n");
        assert_eq!(found.len(), 1);
        assert!(found[0].starts_with("t.toml:3: unknown field `mtu`"), "{found:?}");
    }

    #[test]
    fn every_semantic_error_is_reported() {
        let found = errors("[dataplane]\ninterface = \"\"\npin_dir = \"/tmp/x\"\n");
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("t.toml:2: interface name"));
        assert!(found[1].starts_with("t.toml:3: pin_dir must be under /sys/fs/bpf"));
    }

    #[test]
    fn bad_mode_is_reported() {
        let found = errors("[dataplane]\ninterface = \"eth0\"\nxdp_mode = \"fast\"\n");
        assert!(
            found[0].starts_with("t.toml:3: unknown variant `fast`"),
            "{found:?}"
        );
    }
}
