//! A byte stream cut into frames under a small cap, each decoded both ways.
#![no_main]
use bulkhead_shared::frame::read_frame;
use bulkhead_shared::protocol::{HostMsg, WorkerMsg};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|stream: &[u8]| {
    let mut r = stream;
    let mut buf = Vec::new();
    while let Ok(true) = read_frame(&mut r, &mut buf, 4096) {
        assert!(buf.len() <= 4096);
        let _ = WorkerMsg::decode(&buf);
        let _ = HostMsg::decode(&buf);
    }
});
