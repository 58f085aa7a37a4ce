//! Helper-free pieces of Sluice's XDP programs (packet parsing, checksums), testable on the host.
#![no_std]

pub mod csum;
pub mod parse;
pub mod words;
