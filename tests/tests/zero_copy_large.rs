//! Large PluginAllocated outputs on the shared-memory transport: from 12 MiB
//! the worker copies them into the response area with cache-bypassing
//! stores. Exact bytes on both sides of that size and of the region's edge,
//! and the output limit still applies to them.

use bulkhead_host::{CallError, CallFault, Transport};
use bulkhead_tests::{basic, spec, supervisor, transport};

const MIB: usize = 1 << 20;

fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + seed) % 251) as u8).collect()
}

#[test]
fn large_outputs_keep_every_byte() {
    let sup = supervisor();
    let shm = transport() == Transport::SharedMemory;
    let p = sup.load(spec("fx-basic")).unwrap();
    for (seed, len) in [12 * MIB - 1, 12 * MIB, 12 * MIB + 3, 16 * MIB + 5]
        .into_iter()
        .enumerate()
    {
        let data = pattern(len, seed);
        let reply = p
            .call_raw_filled(basic::ECHO_RAW, len, |buf| buf.copy_from_slice(&data))
            .unwrap();
        assert_eq!(reply.in_shared_memory(), shm, "{len} bytes");
        assert!(*reply == *data, "bytes of a {len}-byte echo differ");
        drop(reply);
        let mut out = Vec::new();
        p.call_raw_into(basic::ECHO_RAW, &data, &mut out).unwrap();
        assert!(out == data, "bytes of a {len}-byte copied echo differ");
    }
}

#[test]
fn large_outputs_at_the_edge_of_the_region() {
    let sup = supervisor();
    let shm = transport() == Transport::SharedMemory;
    const CAP: usize = 13 * MIB;
    let p = sup.load(spec("fx-basic").shm_capacity(CAP as u32)).unwrap();
    for len in [CAP, CAP + 1, CAP - 1] {
        let data = pattern(len, len);
        let reply = p
            .call_raw_filled(basic::ECHO_RAW, len, |buf| buf.copy_from_slice(&data))
            .unwrap();
        // What does not fit the region travels on the socket.
        assert_eq!(reply.in_shared_memory(), shm && len <= CAP, "{len} bytes");
        assert!(*reply == *data, "bytes of a {len}-byte echo differ");
    }
}

#[test]
fn large_outputs_over_the_limit_are_refused_in_the_worker() {
    let sup = supervisor();
    const MAX: u32 = 13 * MIB as u32;
    let p = sup.load(spec("fx-basic").max_message_size(MAX)).unwrap();
    let pid = p.info().worker_pid;
    // Input fits; "Hello, {name}!" does not.
    let name = "n".repeat(MAX as usize - 12);
    let err = p.call::<_, String>(basic::GREET, &(name,)).unwrap_err();
    assert!(
        matches!(err, CallError::Contract(CallFault::OutputTooLarge { max: MAX, len }) if len > u64::from(MAX)),
        "{err:?}"
    );
    assert_eq!(p.info().worker_pid, pid);
    let data = pattern(12 * MIB, 1);
    assert_eq!(p.call_raw(basic::ECHO_RAW, &data).unwrap(), data);
}
