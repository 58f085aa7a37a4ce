//! Sluice's own HTTP/1.1 engine, the hot path of the L7 proxy (HTTP/2 stays on hyper): heads
//! parsed with `httparse` (`head`), bodies framed by one state machine (`body`), heads and
//! chunks written by `encode` into `scratch` buffers; `downstream` drives a client's connection
//! (`answer` writes its answers) and `upstream` the pooled connections to backends, both in the
//! request's own task.
pub mod answer;
pub mod body;
pub mod downstream;
pub mod encode;
pub mod head;
#[cfg(test)]
pub(crate) mod mutations;
pub mod rewind;
pub mod scratch;
pub mod upstream;
