//! Every way loading can fail gives a precise `LoadError`; none of them hurts the host.

use std::io::Write;
use std::time::{Duration, Instant};

use bulkhead_host::{LoadError, LoadFailure, PluginSpec};
use bulkhead_tests::{fixtures, spec, supervisor};

#[track_caller]
fn rejected(spec: PluginSpec) -> LoadFailure {
    match supervisor().load(spec) {
        Err(LoadError::Rejected { reason, .. }) => reason,
        other => panic!("expected Rejected, got {other:?}"),
    }
}

fn liar(mode: &str) -> PluginSpec {
    spec("fx-liar").env("BULKHEAD_LIAR", mode)
}

/// A scratch directory for one test's files, removed when it is dropped
/// (copies of a fixture library are tens of MiB; left behind, they added up
/// in `/tmp` run after run).
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("bulkhead-load-errors-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn file(&self, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = self.0.join(name);
        std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn missing_file() {
    let r = rejected(PluginSpec::new("/nonexistent/libnothing.so"));
    assert!(
        matches!(&r, LoadFailure::FileUnreadable { message } if message.contains("No such file")),
        "{r:?}"
    );
}

#[test]
fn directory() {
    assert_eq!(rejected(PluginSpec::new(std::env::temp_dir())), LoadFailure::NotAFile);
}

#[test]
fn empty_and_text_files() {
    let scratch = Scratch::new("text");
    let r = rejected(PluginSpec::new(scratch.file("empty.so", b"")));
    assert!(
        matches!(&r, LoadFailure::NotElf { reason } if reason.contains("0 bytes")),
        "{r:?}"
    );
    let r = rejected(PluginSpec::new(
        scratch.file("text.so", b"#!/bin/sh\necho this is not a library at all\n"),
    ));
    assert!(
        matches!(&r, LoadFailure::NotElf { reason } if reason.contains("magic")),
        "{r:?}"
    );
}

#[test]
fn foreign_architecture() {
    let mut elf = std::fs::read(fixtures().lib("fx-basic")).unwrap();
    elf[18..20].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
    let scratch = Scratch::new("arch");
    let r = rejected(PluginSpec::new(scratch.file("aarch64.so", &elf)));
    assert!(
        matches!(
            r,
            LoadFailure::WrongArchitecture {
                found: 183,
                class: 2,
                ..
            }
        ),
        "{r:?}"
    );
}

#[test]
fn truncated_library() {
    let elf = std::fs::read(fixtures().lib("fx-basic")).unwrap();
    // dlopen itself would die of SIGBUS mapping past the end of the file; the
    // worker checks the ELF tables against the file size first.
    let scratch = Scratch::new("truncated");
    for cut in [100, 4096, elf.len() / 2, elf.len() - 1] {
        let r = rejected(PluginSpec::new(
            scratch.file(&format!("truncated-{cut}.so"), &elf[..cut]),
        ));
        assert!(
            matches!(&r, LoadFailure::NotElf { reason } if reason.contains("truncated")),
            "{cut}: {r:?}"
        );
    }
}

#[test]
fn library_without_registry_symbol() {
    let r = rejected(spec("fx-noregistry"));
    assert!(
        matches!(&r, LoadFailure::SymbolMissing { symbol, .. } if symbol == "fidius_get_registry"),
        "{r:?}"
    );
}

#[test]
fn registry_lies() {
    assert_eq!(
        rejected(liar("bad_magic")),
        LoadFailure::BadMagic { found: *b"NOTFIDUS" }
    );
    assert_eq!(
        rejected(liar("bad_registry_version")),
        LoadFailure::RegistryVersion {
            found: 99,
            supported: 1
        }
    );
    assert_eq!(rejected(liar("zero_plugins")), LoadFailure::NoPlugins);
}

#[test]
fn descriptor_lies() {
    let r = rejected(liar("abi_600"));
    assert!(
        matches!(&r, LoadFailure::AbiVersion { found: 600, supported, .. } if supported == &[500, 400]),
        "{r:?}"
    );
    assert_eq!(
        rejected(liar("small_descriptor")),
        LoadFailure::DescriptorTooSmall {
            index: 0,
            size: 40,
            minimum: 120
        }
    );
    for (mode, needle) in [
        ("huge_method_count", "method_count 4294967295"),
        ("null_vtable", "vtable is NULL"),
        ("bad_utf8", "not UTF-8"),
        ("bad_strategy", "buffer_strategy 9"),
    ] {
        let r = rejected(liar(mode).plugin(if mode == "bad_utf8" { "BadUtf8" } else { "LiarAlloc" }));
        assert!(
            matches!(&r, LoadFailure::BadDescriptor { reason, .. } if reason.contains(needle)),
            "{mode}: {r:?}"
        );
    }
    let r = rejected(liar("construct_null").plugin("LiarArena"));
    assert!(matches!(r, LoadFailure::ConstructFailed { .. }), "{r:?}");
}

#[test]
fn bad_config_bytes_make_construct_fail() {
    let r = rejected(spec("fx-configured").config_bytes(vec![1, 2, 3]));
    assert_eq!(
        r,
        LoadFailure::ConstructFailed {
            plugin: "ConfiguredPlugin".into()
        }
    );
}

#[test]
fn plugin_selection() {
    // Registry order is the linker's (unspecified): compare sorted names.
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let both = vec!["HelloGreeter".to_string(), "ShoutGreeter".to_string()];
    match rejected(spec("fx-greeter")) {
        LoadFailure::Ambiguous { available } => assert_eq!(sorted(available), both),
        other => panic!("expected Ambiguous, got {other:?}"),
    }
    match rejected(spec("fx-greeter").plugin("Nope")) {
        LoadFailure::PluginNotFound { requested, available } => {
            assert_eq!(requested, "Nope");
            assert_eq!(sorted(available), both);
        }
        other => panic!("expected PluginNotFound, got {other:?}"),
    }
}

#[test]
fn hanging_library_constructor_is_bounded_by_the_load_timeout() {
    let start = Instant::now();
    let err = supervisor()
        .load(spec("fx-dlopen-hang").load_timeout(Duration::from_millis(500)))
        .unwrap_err();
    assert!(
        matches!(err, LoadError::Timeout { limit, .. } if limit == Duration::from_millis(500)),
        "{err:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(20), "took {:?}", start.elapsed());
}
