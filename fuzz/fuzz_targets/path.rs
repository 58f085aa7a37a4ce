//! A request path made canonical (`phase::path`): canonical once and for all.
#![no_main]
use lb_userspace::proxy::phase::path::canonical_once;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(path) = std::str::from_utf8(data) {
        canonical_once(path);
    }
});
