//! A PROXY protocol header (`proxy::proxy_protocol`): any input parses without a panic into a
//! header no longer than itself, or waits, or is refused.
#![no_main]
use lb_userspace::proxy::proxy_protocol::{MAX_HEADER, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(Some(header)) => {
            assert!(header.length <= data.len() && header.length <= MAX_HEADER);
            assert_eq!(parse(&data[..header.length]).ok().flatten(), Some(header));
        }
        Ok(None) => assert!(data.len() < MAX_HEADER),
        Err(_) => {}
    }
});
