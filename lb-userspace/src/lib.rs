//! Sluice userspace: config, the XDP data plane's loader and its counters.
pub mod admin;
pub mod announce;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod generate;
pub mod health;
pub mod host;
pub mod inspect;
pub mod instance;
pub mod live_view;
pub mod maglev;
pub mod metrics;
#[cfg(test)]
mod mutation;
pub mod persist;
pub mod proxy;
pub mod reload;
pub mod run;
pub mod state;
pub mod upgrade;
