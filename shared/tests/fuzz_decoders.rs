//! Property-based fuzzing of every decoder that sees bytes from the other side:
//! frames, worker messages (decoded by the host), host messages (decoded by the
//! worker) and the bincode bodies inside them. Arbitrary input must yield a value
//! or an error — never a panic, never an allocation the input cannot justify.
//! Runs in `cargo test`; raise `PROPTEST_CASES` for a longer run.

use bulkhead_shared::frame::{self, FrameError, HEADER_LEN};
use bulkhead_shared::protocol::{
    CallFault, HostMsg, LoadFailure, LoadRequest, PluginInfoWire, WorkerMsg, PROTOCOL_VERSION,
};
use bulkhead_shared::wire;
use proptest::prelude::*;

fn tags() -> impl Strategy<Value = u8> {
    prop_oneof![
        Just(0x01u8),
        Just(0x02),
        Just(0x03),
        Just(0x81),
        Just(0x82),
        Just(0x83),
        Just(0x84),
        any::<u8>()
    ]
}

/// Bodies that start with a plausible tag, so decoding gets past the first byte.
fn bodies() -> impl Strategy<Value = Vec<u8>> {
    (tags(), proptest::collection::vec(any::<u8>(), 0..512)).prop_map(|(t, mut rest)| {
        rest.insert(0, t);
        rest
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn worker_msg_decode_never_panics(body in bodies()) {
        let _ = WorkerMsg::decode(&body);
    }

    #[test]
    fn host_msg_decode_never_panics(body in bodies()) {
        let _ = HostMsg::decode(&body);
    }

    #[test]
    fn bincode_bodies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = wire::decode::<LoadRequest>(&bytes);
        let _ = wire::decode::<PluginInfoWire>(&bytes);
        let _ = wire::decode::<LoadFailure>(&bytes);
        let _ = wire::decode::<CallFault>(&bytes);
        let _ = wire::decode::<(String, Vec<u8>, Option<String>)>(&bytes);
    }

    #[test]
    fn read_frame_is_bounded(stream in proptest::collection::vec(any::<u8>(), 0..2048), max in 1u32..4096) {
        let mut buf = Vec::new();
        let mut r = &stream[..];
        loop {
            match frame::read_frame(&mut r, &mut buf, max) {
                Ok(true) => {
                    prop_assert!(buf.len() <= max as usize);
                    let _ = WorkerMsg::decode(&buf);
                    let _ = HostMsg::decode(&buf);
                }
                Ok(false) => break,
                Err(FrameError::TooLarge { len, max: m }) => { prop_assert!(len > m); break }
                Err(_) => break,
            }
            // Never more than the stream could justify (read_to_end's growth aside).
            prop_assert!(buf.capacity() <= stream.len().max(32) * 2 + 64);
        }
    }

    #[test]
    fn reply_round_trips(id in any::<u64>(), status in any::<i32>(), payload in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let mut out = Vec::new();
        WorkerMsg::Reply { id, status, payload: &payload }.encode(&mut out);
        let decoded = WorkerMsg::decode(&out[HEADER_LEN..]).unwrap();
        prop_assert_eq!(decoded, WorkerMsg::Reply { id, status, payload: &payload });
    }

    #[test]
    fn load_request_round_trips(path in proptest::collection::vec(any::<u8>(), 0..64), plugin in proptest::option::of(".{0,16}"),
                                config in proptest::collection::vec(any::<u8>(), 0..64), arena in any::<u32>(), max in any::<u32>()) {
        let req = LoadRequest { protocol_version: PROTOCOL_VERSION, path, plugin, config, arena_capacity: arena, max_output: max, shm_capacity: arena / 2,
                                interface_hash: Some(u64::from(max)), library_fd: arena % 2 == 0, host_imports: Vec::new(), label: String::new(), allow_unbound_imports: max % 2 == 0,
                                sandbox: bulkhead_shared::sandbox::SandboxPolicy::none() };
        let mut out = Vec::new();
        HostMsg::Load(req.clone()).encode(&mut out);
        prop_assert_eq!(HostMsg::decode(&out[HEADER_LEN..]).unwrap(), HostMsg::Load(req));
    }

    /// Flipping any byte of a valid frame body gives a value or an error, never a panic.
    #[test]
    fn mutated_valid_messages(flip in any::<prop::sample::Index>(), to in any::<u8>()) {
        let info = PluginInfoWire {
            protocol_version: PROTOCOL_VERSION, abi_version: 500, plugin_name: "P".into(), interface_name: "I".into(),
            interface_hash: 1, interface_version: 1, capabilities: 0, buffer_strategy: bulkhead_shared::abi::BufferStrategy::Arena,
            method_count: 3, trait_metadata: vec![("k".into(), "v".into())], method_metadata: vec![vec![]; 3],
            plugins_in_library: vec!["P".into()],
            shm: false,
            sandbox: bulkhead_shared::sandbox::SandboxReport::off(0),
            bound_imports: vec![],
            unbound_imports: vec![],
        };
        for msg in [WorkerMsg::Loaded(Box::new(info.clone())), WorkerMsg::Fault { id: 1, fault: CallFault::EmptySlot { index: 2 } },
                    WorkerMsg::LoadFailed(LoadFailure::NoPlugins), WorkerMsg::Callback { import: 0, index: 1, payload: b"abc" }] {
            let mut out = Vec::new();
            msg.encode(&mut out);
            let body = &mut out[HEADER_LEN..];
            let i = flip.index(body.len());
            body[i] = to;
            let _ = WorkerMsg::decode(body);
        }
    }
}
