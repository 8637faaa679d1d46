//! What the worker decodes: any frame body a host could send.
#![no_main]
use bulkhead_shared::protocol::HostMsg;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let _ = HostMsg::decode(body);
});
