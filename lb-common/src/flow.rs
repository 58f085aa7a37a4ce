//! The connection table: 5-tuple -> backend, so established flows stay put when pools change.

use crate::addr::Addr;

/// LRU hash [`FlowKey`] -> [`FlowValue`].
pub const CONN_TABLE_MAP: &str = "CONN_TABLE";
/// Default capacity of [`CONN_TABLE_MAP`].
pub const CONN_TABLE_ENTRIES: u32 = 1 << 20;

/// A flow as the client sent it: addresses IPv4-mapped for IPv4, ports in network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

/// Where a flow goes, and its flow hash (kept so a table hit need not hash again).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    pub backend: u32,
    pub hash: u32,
}
const _: () = assert!(core::mem::size_of::<FlowValue>() == 8);

crate::pod!(FlowKey, FlowValue);
