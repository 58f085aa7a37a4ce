//! Large futures boxed where they are made. `Box::pin(make())` makes the future on the stack
//! and copies all of it into the box, though only its arguments are written when it is made: a
//! request's exchange (~5 KB, the pipeline's future inside it) cost ~500 instructions of
//! `memcpy` a request (callgrind). Made into the box's room, only the arguments are written.
use std::{future::Future, pin::Pin};

/// The future `make` makes, in a box of its own.
pub fn boxed<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}
