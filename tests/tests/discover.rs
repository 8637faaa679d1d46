//! `Supervisor::discover`: every library of a directory inspected by a
//! sandboxed worker of its own; the host never opens one itself, so a
//! library that crashes while loading, or a file that is no library, is one
//! failed entry and nothing more.

use bulkhead_host::{LoadError, PluginSpec, Sandbox};
use bulkhead_tests::{fixtures, supervisor};

#[test]
fn a_directory_of_untrusted_files_is_listed_library_by_library() {
    let dir = std::env::temp_dir().join(format!("bulkhead-discover-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let copy = |fixture: &str, name: &str| {
        std::fs::copy(fixtures().lib(fixture), dir.join(name)).unwrap();
    };
    copy("fx-greeter", "a-greeter.so");
    copy("fx-dlopen-crash", "b-crash.so");
    copy("fx-basic", "c-basic.so");
    std::fs::write(dir.join("d-garbage.so"), b"\x7fELF but not really").unwrap();
    std::fs::write(dir.join("readme.txt"), b"skipped: not a .so").unwrap();
    std::fs::create_dir(dir.join("e-dir.so")).unwrap();

    let sup = supervisor();
    let found = sup.discover(&dir).unwrap();
    let names: Vec<String> = found
        .iter()
        .map(|d| d.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["a-greeter.so", "b-crash.so", "c-basic.so", "d-garbage.so"]);

    let greeters = found[0].plugins.as_ref().unwrap();
    let mut plugin_names: Vec<&str> = greeters.iter().map(|i| i.plugin_name.as_str()).collect();
    plugin_names.sort();
    assert_eq!(plugin_names, ["HelloGreeter", "ShoutGreeter"]);
    assert!(greeters
        .iter()
        .all(|i| i.interface_name == "Greeter" && i.method_count == 2));
    // Inspected under the default sandbox.
    assert!(greeters.iter().all(|i| i.sandbox.exposures().is_empty()));

    assert!(
        matches!(found[1].plugins, Err(LoadError::WorkerDied { .. })),
        "{:?}",
        found[1].plugins
    );
    let basic = found[2].plugins.as_ref().unwrap();
    assert_eq!(basic.len(), 1);
    assert_eq!(basic[0].plugin_name, "BasicPlugin");
    assert!(found[3].plugins.is_err(), "{:?}", found[3].plugins);

    // The host did not map any of them.
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    assert!(
        !maps.contains(dir.to_str().unwrap()),
        "a discovered library is mapped in the host"
    );

    // Specs per library: e.g. without the sandbox.
    let open = sup
        .discover_with(&dir, |p| PluginSpec::new(p).sandbox(Sandbox::none()))
        .unwrap();
    let report = &open[0].plugins.as_ref().unwrap()[0].sandbox;
    for layer in bulkhead_host::Layer::ALL {
        assert_eq!(report.state(layer), &bulkhead_host::LayerState::Off, "{layer}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
