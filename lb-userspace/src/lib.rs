//! Sluice userspace: config, the XDP data plane's loader and its counters.
pub mod config;
pub mod dataplane;
pub mod host;
pub mod maglev;
pub mod stats;
pub mod tables;
