//! A chunked body decoded whole and in reads of up to 15 bytes (the first 4 bytes, a nibble
//! a read).
#![no_main]
use lb_userspace::proxy::h1::properties::chunked_alike;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (reads, input) = data.split_at(data.len().min(4));
    let reads: Vec<usize> = reads.iter().flat_map(|b| [(b & 15) as usize, (b >> 4) as usize]).collect();
    let _ = chunked_alike(input, &reads);
});
