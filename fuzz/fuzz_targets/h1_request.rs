//! A client's request head, read whole and in two reads (the first byte says where to split).
#![no_main]
use lb_userspace::proxy::h1::properties::{request, whole_and_in_two};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else { return };
    let _ = whole_and_in_two(input, split as usize % (input.len() + 1), request);
});
