use bulkhead::{PluginSpec, Sandbox, Supervisor};
use std::time::{Duration, Instant};
fn main() {
    let fx = bulkhead_tests::build_fixtures(true);
    let lib = fx.lib("fx-basic");
    let sup = Supervisor::builder().worker_path(&fx.worker).build().unwrap();
    let sb = if std::env::args().any(|a| a == "--none") {
        Sandbox::none()
    } else {
        Sandbox::strict()
    };
    let p = sup.load(PluginSpec::new(&lib).sandbox(sb.clone())).unwrap();
    drop(p);
    eprintln!("fs pid {:?}", sup.fork_server_pid_for(&sb));
    std::thread::sleep(Duration::from_millis(1500));
    let mut v = vec![];
    for _ in 0..20 {
        let t = Instant::now();
        let p = sup.load(PluginSpec::new(&lib).sandbox(sb.clone())).unwrap();
        v.push(t.elapsed());
        drop(p);
    }
    v.sort();
    eprintln!("median {:?}", v[10]);
}
