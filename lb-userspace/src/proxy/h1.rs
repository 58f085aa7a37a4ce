//! Sluice's own HTTP/1.1 engine, the hot path of the L7 proxy (HTTP/2 stays on hyper): heads
//! parsed with `httparse` (`head`), bodies framed by one state machine (`body`), heads and
//! chunks written by `encode` into `scratch` buffers, and `upstream`, the pooled connections to
//! backends, driven in the request's own task. A client's side of it is the server's
//! (`server::http1`, `server::answer`): the engine knows nothing of the pipeline.
pub mod body;
pub mod encode;
pub mod head;
#[cfg(test)]
pub(crate) mod mutations;
#[cfg(any(test, fuzzing))]
pub mod properties;
pub mod rewind;
pub mod scratch;
pub mod upstream;
