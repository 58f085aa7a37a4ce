//! Sluice userspace: config, the XDP data plane's loader and its counters.
pub mod admin;
pub mod config;
pub mod conn_table;
pub mod daemon;
pub mod dataplane;
pub mod health;
pub mod host;
pub mod inspect;
pub mod maglev;
pub mod mapped;
pub mod metrics;
pub mod persist;
pub mod proxy;
pub mod state;
pub mod stats;
pub mod tables;
pub mod vip_table;
