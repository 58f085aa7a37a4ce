//! HTTP/3 from clients (RFC 9114) on quinn and h3: a listener's QUIC settings, a request
//! stream's request as the pipeline takes it (`request`), and its answer sent back (`answer`).
//! The listener's UDP endpoint and its connections are served by `server::http3`.
mod answer;
mod request;

use std::{sync::Arc, time::Duration};

use bytes::Bytes;

pub use self::{answer::answer, request::request};
use crate::config::Listener;

/// A QUIC connection's HTTP/3 as h3 over quinn has it, and a request stream's before its head.
pub type ServerConnection = h3::server::Connection<h3_quinn::Connection, Bytes>;
pub type Resolver = h3::server::RequestResolver<h3_quinn::Connection, Bytes>;
/// A request stream's halves as h3 over quinn has them.
pub type SendHalf = h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
pub type RecvHalf = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;

/// Unidirectional streams a client may open: HTTP/3's control stream and QPACK's two (RFC 9114
/// §6.2), with room for a few more (GREASE ones, which h3 reads and drops).
const UNI_STREAMS: u32 = 8;
/// A stream's receive window, and the connection's (quinn's defaults are 1.25 MB per stream on
/// a 100 ms, 100 Mbit/s path; HTTP/2's here is 1 MiB per stream and connection).
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;

/// The most request streams an HTTP/3 client may have open at once (HAProxy's default;
/// nginx's is 128), whatever the listener's `http2_max_concurrent_streams` allows more: quinn
/// keeps an entry for every stream a client may open, about 46 bytes each, in every connection
/// (`bench l7`: 56.8 KiB per idle connection at 200, 52.2 at 100). A browser opens fewer.
const MAX_STREAMS: u32 = 100;

/// The QUIC transport of a listener: its HTTP/2 stream limit for request streams (at most
/// MAX_STREAMS), and an idle limit no shorter than any of its own (the listener's watchdog
/// closes a connection by them; QUIC's own limit only ends one whose client has gone without a
/// word).
pub fn transport(listener: &Listener) -> Arc<quinn::TransportConfig> {
    let idle = listener.idle_timeout.max(listener.first_byte_timeout).max(listener.stream_idle_timeout);
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(listener.http2_max_concurrent_streams.min(MAX_STREAMS).into())
        .max_concurrent_uni_streams(UNI_STREAMS.into())
        .stream_receive_window(STREAM_WINDOW.into())
        .receive_window(CONNECTION_WINDOW.into())
        // Past the range a QUIC idle timeout can say (2^62 ms), and so never, is not a config.
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(idle.min(Duration::from_secs(86_400))).expect("a day fits"),
        ));
    Arc::new(transport)
}

/// The h3 settings of a listener: its header limit as the field section limit its SETTINGS
/// tell clients (h3 answers a larger head with 431 itself; the guard counts fields, as for the
/// other protocols).
pub fn builder(listener: &Listener) -> h3::server::Builder {
    let mut builder = h3::server::builder();
    builder.max_field_section_size(listener.max_header_bytes as u64);
    builder
}
