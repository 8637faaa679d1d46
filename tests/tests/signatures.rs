//! Signed plugins: fidius' `.sig` convention, verified on a sealed memfd that
//! every worker loads, so the file on disk can change without effect.

use std::path::PathBuf;
use std::time::Duration;

use bulkhead_host::ed25519_dalek::{Signer, SigningKey};
use bulkhead_host::{signature_path, CallError, LoadError, PluginSpec, RestartPolicy};
use bulkhead_tests::{basic, fixtures, supervisor, transport, workspace_root};

/// A fresh directory for one test.
fn dir(name: &str) -> PathBuf {
    let d = workspace_root()
        .join("target")
        .join("bulkhead-signature-tests")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Copies fixture `fixture` to `dir/libplugin.so`, signed by `key` if given.
fn library(dir: &std::path::Path, fixture: &str, key: Option<&SigningKey>) -> PathBuf {
    let path = dir.join("libplugin.so");
    std::fs::copy(fixtures().lib(fixture), &path).unwrap();
    if let Some(key) = key {
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(signature_path(&path), key.sign(&bytes).to_bytes()).unwrap();
    }
    path
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn spec(path: &std::path::Path) -> PluginSpec {
    PluginSpec::new(path).transport(transport())
}

#[test]
fn the_signature_file_sits_beside_the_library() {
    assert_eq!(signature_path("/a/libx.so".as_ref()), PathBuf::from("/a/libx.so.sig"));
    // Exactly fidius' rule (`with_extension(ext + ".sig")`), quirk included.
    assert_eq!(signature_path("/a/plugin".as_ref()), PathBuf::from("/a/plugin..sig"));
}

#[test]
fn a_signed_plugin_loads_and_runs() {
    let d = dir("signed");
    let k = key(1);
    let path = library(&d, "fx-basic", Some(&k));
    let sup = supervisor();
    let p = sup
        .load(spec(&path).require_signature([key(9).verifying_key(), k.verifying_key()]))
        .unwrap();
    assert_eq!(p.call::<_, i64>(basic::ADD, &(40i64, 2i64)).unwrap(), 42);
    assert_eq!(p.info().path, path);
}

#[test]
fn unsigned_wrongly_signed_and_tampered_plugins_are_refused() {
    let d = dir("refused");
    let k = key(2);
    let sup = supervisor();
    let trusted = [k.verifying_key()];

    let unsigned = library(&d, "fx-basic", None);
    let e = sup.load(spec(&unsigned).require_signature(trusted)).unwrap_err();
    assert!(
        matches!(&e, LoadError::SignatureRequired { sig, .. } if *sig == signature_path(&unsigned)),
        "{e:?}"
    );

    let wrong = library(&d, "fx-basic", Some(&key(3)));
    let e = sup.load(spec(&wrong).require_signature(trusted)).unwrap_err();
    assert!(matches!(e, LoadError::SignatureInvalid { .. }), "{e:?}");

    let tampered = library(&d, "fx-basic", Some(&k));
    let mut bytes = std::fs::read(&tampered).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&tampered, &bytes).unwrap();
    let e = sup.load(spec(&tampered).require_signature(trusted)).unwrap_err();
    assert!(matches!(e, LoadError::SignatureInvalid { .. }), "{e:?}");

    let garbled = library(&d, "fx-basic", None);
    std::fs::write(signature_path(&garbled), b"not a signature").unwrap();
    let e = sup.load(spec(&garbled).require_signature(trusted)).unwrap_err();
    assert!(
        matches!(&e, LoadError::SignatureInvalid { reason, .. } if reason.contains("15 bytes")),
        "{e:?}"
    );
}

#[test]
fn a_library_swapped_after_verification_is_not_the_one_that_runs() {
    let d = dir("swapped");
    let k = key(4);
    let path = library(&d, "fx-basic", Some(&k));
    let sup = supervisor();
    let p = sup
        .load(
            spec(&path)
                .require_signature([k.verifying_key()])
                .restart(RestartPolicy::on_failure(5, Duration::from_secs(60))),
        )
        .unwrap();
    let first = p.info().worker_pid;
    assert_eq!(p.call::<_, i64>(basic::ADD, &(1i64, 2i64)).unwrap(), 3);

    // Replace the library on disk (in place) with another one, then make the
    // worker crash: its replacement must still run the verified bytes.
    std::fs::write(&path, std::fs::read(fixtures().lib("fx-greeter")).unwrap()).unwrap();
    let e = p.call::<_, u32>(basic::SEGFAULT, &()).unwrap_err();
    assert!(matches!(e, CallError::WorkerDied { .. }), "{e:?}");
    assert_eq!(p.call::<_, i64>(basic::ADD, &(20i64, 22i64)).unwrap(), 42);
    assert_ne!(p.info().worker_pid, first);
    assert_eq!(p.info().plugin_name, "BasicPlugin");

    // A fresh load verifies the new bytes, which the signature does not cover.
    let e = sup
        .load(spec(&path).require_signature([k.verifying_key()]))
        .unwrap_err();
    assert!(matches!(e, LoadError::SignatureInvalid { .. }), "{e:?}");
}
