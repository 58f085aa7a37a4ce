//! HTTP/2 from clients on the h2 crate: one task drives a connection and all of its streams'
//! requests (no task per stream), and writes each answer's body under the stream's flow control.
//!
//! hyper's HTTP/2 server spawns a task for every stream and wraps each request and answer in
//! its own types; here a stream is a future in the connection's `FuturesUnordered`, polled
//! before the connection so that the answers it finishes go out in the connection's next write.
//! A request comes in through `request`, a connection is driven by `connection`, and a stream's
//! answer goes out through `answer`. HTTP/2 to backends (h2c and h2 pools) is `upstream`, on
//! hyper's client.
mod answer;
mod connection;
mod request;
#[cfg(test)]
mod tests;
pub mod upstream;

use h2::server::Builder;

pub use self::{
    answer::{Answered, answer, head_fields},
    connection::{Ended, Served},
    request::marked,
};
use crate::config::Listener;

/// The connection's settings (hyper's defaults for its server, which Sluice used before).
const WINDOW: u32 = 1024 * 1024;
const MAX_FRAME: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 400 * 1024;
const MAX_LOCAL_RESETS: usize = 1024;
/// h2's own default, said here: streams reset before they are taken up.
const MAX_PENDING_ACCEPT_RESETS: usize = 20;

/// The h2 settings of a listener.
pub fn builder(listener: &Listener) -> Builder {
    let mut builder = Builder::new();
    builder
        .initial_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_header_list_size(listener.max_header_bytes as u32)
        .max_local_error_reset_streams(Some(MAX_LOCAL_RESETS))
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_concurrent_streams(listener.http2_max_concurrent_streams);
    builder
}
