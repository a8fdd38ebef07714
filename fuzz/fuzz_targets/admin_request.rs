//! The admin endpoint's request parser: any head is a request or a 400 reason, never a panic.
#![no_main]

use endpoint_metrics_agent::admin::parse_request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = parse_request(data) {
        assert!(request.path.starts_with('/'));
        assert!(!request.path.contains('?'));
        assert!(!request.path.bytes().any(|b| b.is_ascii_control()));
    }
});
