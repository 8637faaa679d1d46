//! What the host decodes: any frame body a worker could send.
#![no_main]
use bulkhead_shared::protocol::WorkerMsg;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let _ = WorkerMsg::decode(body);
});
