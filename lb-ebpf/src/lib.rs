//! Helper-free pieces of Sluice's XDP programs (packet access and parsing, checksums), testable on the host.
#![no_std]
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

pub mod csum;
pub mod parse;
pub mod synack;
pub mod wire;
pub mod words;
