//! A backend's response head to a GET or a HEAD (the first byte's low bit), read whole and in
//! two reads (the first byte's other bits say where to split).
#![no_main]
use hyper::Method;
use lb_userspace::proxy::h1::properties::{response, whole_and_in_two};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, input)) = data.split_first() else { return };
    let method = if first & 1 == 1 { Method::HEAD } else { Method::GET };
    let split = (first >> 1) as usize % (input.len() + 1);
    let _ = whole_and_in_two(input, split, |buf| response(buf, &method));
});
