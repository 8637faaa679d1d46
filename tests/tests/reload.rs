//! Reloads keep what was set: `reload_library` and `reload_with` start from
//! the current spec, and an interface pin (a typed client's, or
//! `pin_interface`) survives every reload, whatever spec it is given.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bulkhead_host::{CallError, LoadError, LoadFailure, Plugin, PluginSpec, Sandbox};
use bulkhead_tests::{basic, fixtures, hostile, spec, supervisor};

bulkhead_host::client! {
    /// Part of `Basic`.
    pub struct BasicClient for fx_iface::Basic in fx_iface::__fidius_Basic
        (descriptor = Basic_WASM_DESCRIPTOR, optional = Basic_OPTIONAL_METHODS)
    {
        fn add(a: i64, b: i64) -> i64;
        fn pid() -> u32;
    }
}

struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("bulkhead-reload-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }

    /// A copy of fixture `name`'s library under a new file name: "version 2".
    fn copy_of(&self, name: &str, as_name: &str) -> PathBuf {
        let to = self.0.join(as_name);
        std::fs::copy(fixtures().lib(name), &to).unwrap();
        to
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sorted_pids(p: &Plugin) -> Vec<u32> {
    let mut v = p.worker_pids();
    v.sort_unstable();
    v
}

fn read(p: &Plugin, path: &Path) -> Result<Vec<u8>, CallError> {
    p.call(hostile::READ_FILE, &(path.display().to_string(),))
}

#[track_caller]
fn assert_mismatch(e: &LoadError, want_expected: u64, want_found: Option<u64>) {
    match e {
        LoadError::Rejected {
            reason: LoadFailure::InterfaceMismatch { expected, found, .. },
            ..
        } => {
            assert_eq!(*expected, want_expected, "{e}");
            assert_ne!(*found, want_expected, "{e}");
            if let Some(f) = want_found {
                assert_eq!(*found, f, "{e}");
            }
            let text = e.to_string();
            assert!(text.contains(&format!("{want_expected:#018x}")), "{text}");
        }
        other => panic!("expected InterfaceMismatch, got {other:?}"),
    }
}

#[test]
fn reload_library_keeps_workers_timeout_sandbox_and_grants() {
    let sup = supervisor();
    let dir = Scratch::new("keeps");
    let granted = dir.0.join("model.bin");
    let other = dir.0.join("other.bin");
    std::fs::write(&granted, b"weights").unwrap();
    std::fs::write(&other, b"private").unwrap();
    let v2 = dir.copy_of("fx-hostile", "libhostile-v2.so");

    let p = sup
        .load(
            spec("fx-hostile")
                .workers(3)
                .call_timeout(Duration::from_millis(500))
                .sandbox(Sandbox::strict().allow_read(&granted)),
        )
        .unwrap();
    let before = p.info();
    let old_pids = sorted_pids(&p);
    assert_eq!(old_pids.len(), 3);
    assert_eq!(read(&p, &granted).unwrap(), b"weights");

    let reports = p.reload_library(&v2).unwrap();
    assert_eq!(reports.len(), 3, "the three old workers were stopped");

    // The library changed ...
    let after = p.info();
    assert_eq!(after.path, v2);
    assert_eq!(p.spec().path(), v2);
    // ... and nothing else did.
    let new_pids = sorted_pids(&p);
    assert_eq!(new_pids.len(), 3, "workers: 3 before, 3 after");
    assert!(
        new_pids.iter().all(|pid| !old_pids.contains(pid)),
        "{old_pids:?} {new_pids:?}"
    );
    assert_eq!(p.call_timeout(), Duration::from_millis(500));
    assert_eq!(
        after.sandbox, before.sandbox,
        "the same sandbox layers, in the same states"
    );
    assert_eq!(read(&p, &granted).unwrap(), b"weights", "the grant survived the reload");
    assert!(
        matches!(read(&p, &other), Err(CallError::Plugin(_))),
        "and is still the only one"
    );
    match p.call::<_, u64>(hostile::SPIN, &()).unwrap_err() {
        CallError::Timeout { limit, .. } => assert_eq!(limit, Duration::from_millis(500)),
        other => panic!("expected Timeout, got {other:?}"),
    }

    // `reload_with` changes what it is told to and keeps the rest.
    p.reload_with(|s| s.library(fixtures().lib("fx-hostile")).workers(2))
        .unwrap();
    assert_eq!(p.worker_pids().len(), 2);
    assert_eq!(p.info().path, fixtures().lib("fx-hostile"));
    assert_eq!(p.call_timeout(), Duration::from_millis(500));
    assert_eq!(read(&p, &granted).unwrap(), b"weights");

    // `reload(spec)` replaces every setting, as documented.
    p.reload(PluginSpec::new(&v2).transport(bulkhead_tests::transport()))
        .unwrap();
    assert_eq!(p.worker_pids().len(), 1);
    assert_eq!(p.call_timeout(), bulkhead_host::DEFAULT_CALL_TIMEOUT);
    assert!(
        matches!(read(&p, &granted), Err(CallError::Plugin(_))),
        "no grant any more"
    );
}

#[test]
fn a_typed_clients_pin_survives_every_reload_and_the_old_generation_keeps_serving() {
    let sup = supervisor();
    let dir = Scratch::new("pin");
    let basic_v2 = dir.copy_of("fx-basic", "libbasic-v2.so");
    let client = BasicClient::load(&sup, spec("fx-basic").workers(2)).unwrap();
    let pin = BasicClient::INTERFACE_HASH;
    let plugin = client.plugin();
    assert_eq!(plugin.pinned_interface(), Some(pin));
    let pids = sorted_pids(plugin);

    // Another interface (Arena buffers, another hash), through every reload form.
    let arena = fixtures().lib("fx-arena");
    let e = plugin.reload_library(&arena).unwrap_err();
    assert_mismatch(&e, pin, None);
    let e = plugin.reload_with(|s| s.library(&arena)).unwrap_err();
    assert_mismatch(&e, pin, None);
    // A whole new spec that says nothing of the interface: still pinned.
    let e = plugin.reload(PluginSpec::new(&arena)).unwrap_err();
    assert_mismatch(&e, pin, None);
    // The older fidius interface the report's user reloaded to.
    let e = plugin.reload(PluginSpec::new(fixtures().lib("fx-old"))).unwrap_err();
    assert_mismatch(&e, pin, None);
    // A spec asking for another hash outright: refused before any worker starts.
    let other = fx_iface::__fidius_Greeter::Greeter_INTERFACE_HASH;
    let e = plugin.reload(PluginSpec::new(&basic_v2).interface(other)).unwrap_err();
    assert_mismatch(&e, pin, Some(other));

    // The old generation kept serving throughout, on the same workers.
    assert_eq!(sorted_pids(plugin), pids);
    assert_eq!(client.add(7, 35).unwrap(), 42);
    assert_eq!(client.add(i64::MAX, 1).unwrap(), i64::MIN);
    assert_eq!(plugin.info().path, fixtures().lib("fx-basic"));

    // The same interface reloads, keeps the pin and the two workers.
    plugin.reload_library(&basic_v2).unwrap();
    assert_eq!(plugin.info().path, basic_v2);
    assert_eq!(plugin.pinned_interface(), Some(pin));
    assert_eq!(plugin.worker_pids().len(), 2);
    assert!(sorted_pids(plugin).iter().all(|p| !pids.contains(p)));
    assert_eq!(client.add(2, 3).unwrap(), 5);
    assert!(client.pid().unwrap() > 0);
    let e = plugin.reload_library(&arena).unwrap_err();
    assert_mismatch(&e, pin, None);
    assert_eq!(client.add(2, 3).unwrap(), 5);
}

#[test]
fn pin_interface_on_an_untyped_plugin_and_through_client_new() {
    let sup = supervisor();
    let p = sup.load(spec("fx-basic")).unwrap();
    assert_eq!(p.pinned_interface(), None);
    // Unpinned: a reload may change the interface.
    p.reload_library(fixtures().lib("fx-arena")).unwrap();
    assert_ne!(p.info().interface_hash, BasicClient::INTERFACE_HASH);
    // Wrapping it in a Basic client is refused, and pins nothing.
    let e = BasicClient::new(p.clone()).unwrap_err();
    assert_mismatch(&e, BasicClient::INTERFACE_HASH, Some(p.info().interface_hash));
    assert_eq!(p.pinned_interface(), None);

    p.reload_library(fixtures().lib("fx-basic")).unwrap();
    let client = BasicClient::new(p.clone()).unwrap();
    assert_eq!(p.pinned_interface(), Some(BasicClient::INTERFACE_HASH));
    let e = p.reload_library(fixtures().lib("fx-arena")).unwrap_err();
    assert_mismatch(&e, BasicClient::INTERFACE_HASH, None);
    assert_eq!(client.add(1, 1).unwrap(), 2);
    // A second pin to another hash is refused; the same one is a no-op.
    let other = fx_iface::__fidius_Greeter::Greeter_INTERFACE_HASH;
    assert_mismatch(
        &p.pin_interface(other).unwrap_err(),
        other,
        Some(BasicClient::INTERFACE_HASH),
    );
    p.pin_interface(BasicClient::INTERFACE_HASH).unwrap();
    let sum: i64 = p.call(basic::ADD, &(1i64, 2i64)).unwrap();
    assert_eq!(sum, 3);
}

#[test]
fn reload_library_keeps_the_signature_requirement() {
    use bulkhead_host::ed25519_dalek::{Signer, SigningKey};
    let sup = supervisor();
    let dir = Scratch::new("signed");
    let key = SigningKey::from_bytes(&[7; 32]);
    let sign = |path: &Path| {
        let bytes = std::fs::read(path).unwrap();
        std::fs::write(bulkhead_host::signature_path(path), key.sign(&bytes).to_bytes()).unwrap();
    };
    let v1 = dir.copy_of("fx-basic", "libbasic-v1.so");
    let signed_v2 = dir.copy_of("fx-basic", "libbasic-v2.so");
    let unsigned_v3 = dir.copy_of("fx-basic", "libbasic-v3.so");
    sign(&v1);
    sign(&signed_v2);

    let p = sup
        .load(
            PluginSpec::new(&v1)
                .transport(bulkhead_tests::transport())
                .require_signature([key.verifying_key()])
                .workers(2),
        )
        .unwrap();
    let pids = sorted_pids(&p);
    // An unsigned library is refused: the requirement was kept.
    let e = p.reload_library(&unsigned_v3).unwrap_err();
    assert!(matches!(e, LoadError::SignatureRequired { .. }), "{e:?}");
    assert_eq!(sorted_pids(&p), pids, "the old workers keep serving");
    assert_eq!(p.call::<_, i64>(basic::ADD, &(40i64, 2i64)).unwrap(), 42);
    // A signed one loads, with the two workers.
    p.reload_library(&signed_v2).unwrap();
    assert_eq!(p.info().path, signed_v2);
    assert_eq!(p.worker_pids().len(), 2);
    assert_eq!(p.call::<_, i64>(basic::ADD, &(1i64, 2i64)).unwrap(), 3);
}

bulkhead_host::client! {
    /// The configured fixture.
    pub struct ConfiguredClient for fx_iface::Configured in fx_iface::__fidius_Configured
        (descriptor = Configured_WASM_DESCRIPTOR, optional = Configured_OPTIONAL_METHODS)
    {
        fn describe() -> String;
        fn scale(x: i64) -> i64;
    }
}

#[test]
fn reload_library_keeps_the_config_and_reload_with_changes_it_on_purpose() {
    use fx_iface::ScaleConfig;
    let sup = supervisor();
    let dir = Scratch::new("config");
    let v2 = dir.copy_of("fx-configured", "libconfigured-v2.so");
    let config = |factor| ScaleConfig {
        prefix: "p".into(),
        factor,
        crash: false,
    };
    let c = ConfiguredClient::load(&sup, spec("fx-configured").config(&config(3))).unwrap();
    assert_eq!(c.describe().unwrap(), "px3");

    c.plugin().reload_library(&v2).unwrap();
    assert_eq!(c.plugin().info().path, v2);
    assert_eq!(c.describe().unwrap(), "px3", "the config was kept");
    assert_eq!(c.scale(5).unwrap(), 15);

    c.plugin().reload_with(|s| s.config(&config(4))).unwrap();
    assert_eq!(c.plugin().info().path, v2, "the library was kept");
    assert_eq!(c.scale(5).unwrap(), 20);
    assert_eq!(c.plugin().pinned_interface(), Some(ConfiguredClient::INTERFACE_HASH));

    // A config the plugin refuses: the old generation keeps serving.
    let mut crash = config(5);
    crash.crash = true;
    let e = c.plugin().reload_with(|s| s.config(&crash)).unwrap_err();
    match &e {
        LoadError::WorkerDied { path, stderr, .. } => {
            assert_eq!(path, &v2);
            assert!(stderr.contains("configure refused: crash requested"), "{stderr}");
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    assert_eq!(c.scale(5).unwrap(), 20);
}

bulkhead_host::client! {
    /// `Streams`, with its optional method.
    pub struct StreamsClient for fx_iface::Streams in fx_iface::__fidius_Streams
        (descriptor = Streams_WASM_DESCRIPTOR, optional = Streams_OPTIONAL_METHODS)
    {
        fn extra(x: u64) -> u64;
        fn pid() -> u32;
        stream fn count(n: u64) -> u64;
    }
}

#[test]
fn a_pinned_reload_to_an_older_version_of_the_interface_answers_not_implemented_for_what_it_lacks() {
    let sup = supervisor();
    let c = StreamsClient::load(&sup, spec("fx-stream").plugin("StreamPlugin")).unwrap();
    assert_eq!(c.extra(41).unwrap(), 42);
    assert_eq!(c.plugin().info().method_count, 9);
    // Built against version 1 of the trait: the same required methods (the
    // same hash), one optional method fewer.
    c.plugin().reload_with(|s| s.plugin("OldStreamPlugin")).unwrap();
    let info = c.plugin().info();
    assert_eq!((info.plugin_name.as_str(), info.method_count), ("OldStreamPlugin", 8));
    let e = c.extra(41).unwrap_err();
    assert!(
        matches!(
            e,
            CallError::NotImplemented {
                index: 8,
                capabilities: 0,
                ..
            }
        ),
        "{e:?}"
    );
    let items: Vec<u64> = c.count(3).unwrap().map(Result::unwrap).collect();
    assert_eq!(items, [0, 1, 2]);
    // The stream slots the client declared stay refused by the plain path.
    let e = c
        .plugin()
        .call::<_, u64>(fx_iface::__fidius_Streams::METHOD_COUNT, &(1u64,))
        .unwrap_err();
    assert!(matches!(e, CallError::Unsupported { index: 0, .. }), "{e:?}");
    // A whole new spec that declares no stream: the client's stay declared.
    c.plugin().reload(spec("fx-stream").plugin("StreamPlugin")).unwrap();
    let e = c
        .plugin()
        .call::<_, u64>(fx_iface::__fidius_Streams::METHOD_COUNT, &(1u64,))
        .unwrap_err();
    assert!(matches!(e, CallError::Unsupported { index: 0, .. }), "{e:?}");
    assert_eq!(c.extra(1).unwrap(), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn async_reloads_keep_settings_and_pins_too() {
    let sup = supervisor();
    let dir = Scratch::new("async");
    let v2 = dir.copy_of("fx-basic", "libbasic-v2.so");
    let c = BasicClient::load_async(&sup, spec("fx-basic").workers(2).call_timeout(Duration::from_secs(3)))
        .await
        .unwrap();
    let p = c.plugin();
    let reports = p.reload_library_async(&v2).await.unwrap();
    assert_eq!(reports.len(), 2);
    assert_eq!(
        (p.info().path, p.worker_pids().len(), p.call_timeout()),
        (v2.clone(), 2, Duration::from_secs(3))
    );
    p.reload_with_async(|s| s.workers(1)).await.unwrap();
    assert_eq!(p.worker_pids().len(), 1);
    let e = p
        .reload_async(PluginSpec::new(fixtures().lib("fx-arena")))
        .await
        .unwrap_err();
    assert_mismatch(&e, BasicClient::INTERFACE_HASH, None);
    assert_eq!(p.call_async::<_, i64>(basic::ADD, &(2i64, 2i64)).await.unwrap(), 4);
}
