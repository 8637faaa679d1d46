//! Host callbacks (`#[fidius::host_interface]`): the plugin calls the host
//! during a call, from any of its threads; the host runs the registered handler.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bulkhead_host::{HostInterface, LoadError, LoadFailure, Plugin, PluginError, PluginSpec, Supervisor};
use bulkhead_tests::{spec, supervisor};
use fx_host_iface::__fidius_UsesHost as U;
use fx_host_iface::__fidius_host_Host as H;

fn host(counter: Arc<AtomicU64>) -> HostInterface {
    HostInterface::new(
        "Host",
        H::Host_HOST_INTERFACE_HASH,
        H::Host_HOST_INTERFACE_VERSION,
        H::Host_HOST_FN_COUNT,
    )
    .function(H::HOST_FN_LOOKUP, move |(key,): (String,)| {
        counter.fetch_add(1, Ordering::SeqCst);
        format!("value-of-{key}")
    })
    .fallible(H::HOST_FN_CHECK, |(n,): (u64,)| {
        if n % 2 == 1 {
            Err(PluginError {
                code: "ODD".into(),
                message: format!("{n} is odd"),
                details: None,
            })
        } else {
            Ok(n * 2)
        }
    })
    .function(H::HOST_FN_BOOM, |(): ()| -> u64 { panic!("handler exploded") })
}

fn load(sup: &Supervisor, s: PluginSpec) -> (Plugin, Arc<AtomicU64>) {
    let counter = Arc::new(AtomicU64::new(0));
    let p = sup.load(s.host_interface(host(counter.clone()))).unwrap();
    (p, counter)
}

#[test]
fn a_callback_during_a_call_returns_its_value_into_the_answer() {
    let sup = supervisor();
    let (p, counter) = load(&sup, spec("fx-host"));
    assert_eq!(p.info().host_imports, ["Host"]);
    assert!(p.call::<_, bool>(U::METHOD_BOUND, &()).unwrap());
    let s: String = p.call(U::METHOD_ASK, &("k1".to_string(),)).unwrap();
    assert_eq!(s, "got value-of-k1");
    assert_eq!(counter.load(Ordering::SeqCst), 1);
}

#[test]
fn callbacks_come_concurrently_from_several_plugin_threads() {
    let sup = supervisor();
    let (p, counter) = load(&sup, spec("fx-host"));
    let got: Vec<String> = p.call(U::METHOD_ASK_MANY, &(8u32, 50u32)).unwrap();
    let mut want: Vec<String> = (0..8)
        .flat_map(|t| (0..50).map(move |i| format!("value-of-{t}-{i}")))
        .collect();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(counter.load(Ordering::SeqCst), 400);
}

#[test]
fn handler_errors_reach_the_plugin_as_plugin_errors_and_panics_are_contained() {
    let sup = supervisor();
    let (p, _) = load(&sup, spec("fx-host"));
    assert_eq!(p.call::<_, String>(U::METHOD_CHECK, &(4u64,)).unwrap(), "ok 8");
    assert_eq!(
        p.call::<_, String>(U::METHOD_CHECK, &(3u64,)).unwrap(),
        "err ODD: 3 is odd"
    );
    let pid = p.info().worker_pid;
    let s: String = p.call(U::METHOD_BOOM, &()).unwrap();
    assert_eq!(s, "err host function panicked: handler exploded");
    // The host and the worker carry on.
    assert_eq!(
        p.call::<_, String>(U::METHOD_ASK, &("x".to_string(),)).unwrap(),
        "got value-of-x"
    );
    assert_eq!(p.worker_pids(), [pid]);
}

#[test]
fn a_flood_of_callbacks_stays_within_the_bound() {
    let sup = supervisor();
    let (p, _) = load(&sup, spec("fx-host").max_callbacks(1000));
    let (ok, err): (u64, String) = p.call(U::METHOD_FLOOD, &(1_000_000u64,)).unwrap();
    assert_eq!(ok, 1000);
    assert!(err.contains("CALLBACK_LIMIT"), "{err}");
    // The bound is per call: the next call starts afresh.
    let (ok, err): (u64, String) = p.call(U::METHOD_FLOOD, &(10u64,)).unwrap();
    assert_eq!((ok, err.as_str()), (10, ""));
}

#[test]
fn callbacks_count_against_the_call_deadline() {
    let sup = supervisor();
    let (p, _) = load(
        &sup,
        spec("fx-host")
            .max_callbacks(u32::MAX)
            .call_timeout(Duration::from_millis(300)),
    );
    let e = p.call::<_, (u64, String)>(U::METHOD_FLOOD, &(u64::MAX,)).unwrap_err();
    assert!(matches!(e, bulkhead_host::CallError::Timeout { .. }), "{e:?}");
}

#[test]
fn unregistered_or_mismatched_imports_are_load_errors() {
    let sup = supervisor();
    let e = sup.load(spec("fx-host")).unwrap_err();
    assert!(
        matches!(&e, LoadError::Rejected { reason: LoadFailure::ImportNotProvided { name, hash, version: 3 }, .. }
            if name == "Host" && *hash == H::Host_HOST_INTERFACE_HASH),
        "{e:?}"
    );
    let wrong = HostInterface::new("Host", 0xdead_beef, 3, H::Host_HOST_FN_COUNT);
    let e = sup.load(spec("fx-host").host_interface(wrong)).unwrap_err();
    assert!(
        matches!(
            &e,
            LoadError::Rejected {
                reason: LoadFailure::ImportMismatch {
                    host_hash: 0xdead_beef,
                    plugin_version: 3,
                    ..
                },
                ..
            }
        ),
        "{e:?}"
    );
    let old = HostInterface::new("Host", H::Host_HOST_INTERFACE_HASH, 2, H::Host_HOST_FN_COUNT);
    let e = sup.load(spec("fx-host").host_interface(old)).unwrap_err();
    assert!(
        matches!(
            &e,
            LoadError::Rejected {
                reason: LoadFailure::ImportMismatch {
                    host_version: 2,
                    plugin_version: 3,
                    ..
                },
                ..
            }
        ),
        "{e:?}"
    );
    // The plugin's bind shim checks the function count too.
    let short = HostInterface::new("Host", H::Host_HOST_INTERFACE_HASH, 3, 2);
    let e = sup.load(spec("fx-host").host_interface(short)).unwrap_err();
    assert!(
        matches!(
            &e,
            LoadError::Rejected {
                reason: LoadFailure::ImportBind { code: -6, .. },
                ..
            }
        ),
        "{e:?}"
    );
}

/// The host's implementation of fidius' generated `Host` trait, as a fidius
/// host would write it.
struct TestHost {
    lookups: Arc<AtomicU64>,
}

impl fx_host_iface::Host for TestHost {
    fn lookup(&self, key: String) -> String {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        format!("impl-{key}")
    }

    fn check(&self, n: u64) -> Result<u64, fx_host_iface::PluginError> {
        if n == 0 {
            Err(fx_host_iface::PluginError::new("ZERO", "zero is not allowed"))
        } else {
            Ok(n + 1)
        }
    }

    fn boom(&self) -> u64 {
        panic!("trait impl exploded")
    }
}

fn bound_host(lookups: Arc<AtomicU64>) -> HostInterface {
    bulkhead_host::host_interface! {
        fx_host_iface::Host in fx_host_iface::__fidius_host_Host
            (hash = Host_HOST_INTERFACE_HASH, version = Host_HOST_INTERFACE_VERSION, count = Host_HOST_FN_COUNT)
        for TestHost { lookups } => {
            fn lookup(key) = HOST_FN_LOOKUP;
            fn check(n) = HOST_FN_CHECK;
            fn boom() = HOST_FN_BOOM;
        }
    }
}

#[test]
fn the_hosts_implementation_of_the_fidius_trait_is_bound() {
    let sup = supervisor();
    let lookups = Arc::new(AtomicU64::new(0));
    let iface = bound_host(lookups.clone());
    assert_eq!(
        format!("{iface:?}"),
        format!(
            "HostInterface {{ name: \"Host\", hash: {:#018x}, version: 3, fn_count: 3 }}",
            H::Host_HOST_INTERFACE_HASH
        )
    );
    let p = sup.load(spec("fx-host").host_interface(iface)).unwrap();
    assert_eq!(p.info().host_imports, ["Host"]);
    assert_eq!(p.call::<_, String>(U::METHOD_ASK, &("k",)).unwrap(), "got impl-k");
    assert_eq!(lookups.load(Ordering::SeqCst), 1);
    // Fallible: Ok is the value, Err reaches the plugin as HostCallError::Host.
    assert_eq!(p.call::<_, String>(U::METHOD_CHECK, &(4u64,)).unwrap(), "ok 5");
    assert_eq!(
        p.call::<_, String>(U::METHOD_CHECK, &(0u64,)).unwrap(),
        "err ZERO: zero is not allowed"
    );
    // A panicking method is contained; the host and the worker carry on.
    let pid = p.info().worker_pid;
    assert_eq!(
        p.call::<_, String>(U::METHOD_BOOM, &()).unwrap(),
        "err host function panicked: trait impl exploded"
    );
    let got: Vec<String> = p.call(U::METHOD_ASK_MANY, &(4u32, 10u32)).unwrap();
    assert_eq!(got.len(), 40);
    assert!(got.iter().all(|s| s.starts_with("impl-")), "{got:?}");
    assert_eq!(lookups.load(Ordering::SeqCst), 41);
    assert_eq!(p.worker_pids(), [pid]);
}

#[test]
fn unbound_imports_on_request_answer_not_bound() {
    let sup = supervisor();
    let p = sup.load(spec("fx-host").allow_unbound_imports(true)).unwrap();
    assert!(p.info().host_imports.is_empty());
    assert_eq!(p.info().unbound_imports, ["Host"]);
    assert!(!p.call::<_, bool>(U::METHOD_BOUND, &()).unwrap());
    assert_eq!(
        p.call::<_, String>(U::METHOD_TRY_LOOKUP, &("k",)).unwrap(),
        "err host interface 'Host' is not bound — the host did not provide it"
    );
    // Offered, the same spec binds it.
    let lookups = Arc::new(AtomicU64::new(0));
    let p = sup
        .load(
            spec("fx-host")
                .allow_unbound_imports(true)
                .host_interface(bound_host(lookups)),
        )
        .unwrap();
    assert!(p.call::<_, bool>(U::METHOD_BOUND, &()).unwrap());
    assert_eq!(p.info().host_imports, ["Host"]);
    assert!(p.info().unbound_imports.is_empty());
    assert_eq!(p.call::<_, String>(U::METHOD_TRY_LOOKUP, &("k",)).unwrap(), "ok impl-k");
    // Offered under the name with another version: still refused.
    let old = HostInterface::new("Host", H::Host_HOST_INTERFACE_HASH, 2, H::Host_HOST_FN_COUNT);
    let e = sup
        .load(spec("fx-host").allow_unbound_imports(true).host_interface(old))
        .unwrap_err();
    assert!(
        matches!(
            &e,
            LoadError::Rejected {
                reason: LoadFailure::ImportMismatch {
                    host_version: 2,
                    plugin_version: 3,
                    ..
                },
                ..
            }
        ),
        "{e:?}"
    );
}

/// Over shared memory a callback's arguments and answer ride the region's
/// lines when small, the ends of its areas when larger, and the socket when
/// larger than the region; the plugin sees the same bytes every way.
#[test]
fn callback_arguments_and_answers_of_every_size_arrive_whole() {
    let sup = supervisor();
    // A 4 KiB region: keys up to a few KiB fit, the largest go by socket.
    let (p, counter) = load(&sup, spec("fx-host").shm_capacity(4096));
    let sizes = [0usize, 1, 20, 24, 25, 40, 100, 1000, 2000, 4000, 4100, 10_000, 100_000];
    for (n, &size) in sizes.iter().enumerate() {
        let key: String = (0..size).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        let s: String = p.call(U::METHOD_ASK, &(key.clone(),)).unwrap();
        assert_eq!(s, format!("got value-of-{key}"), "key of {size} bytes");
        assert_eq!(counter.load(Ordering::SeqCst), n as u64 + 1);
    }
    // Plain calls on the same worker still answer after every way was used.
    let s: String = p.call(U::METHOD_ASK, &("end".to_string(),)).unwrap();
    assert_eq!(s, "got value-of-end");
}
