//! Observability: spans around loads and calls carry plugin, method, worker pid
//! and outcome; crashes, timeouts and restarts are `warn` events. A capturing
//! `tracing` subscriber is installed process-wide (background restarts log from
//! their own threads), so this file holds a single test.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulkhead_host::{CallError, EventKind};
use bulkhead_tests::{basic, spec, supervisor};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

#[derive(Default)]
struct Fields(HashMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

#[derive(Clone, Debug)]
struct Captured {
    name: String,
    level: Level,
    fields: HashMap<String, String>,
}

#[derive(Default)]
struct Capture {
    spans: Mutex<Vec<Captured>>,
    events: Mutex<Vec<Captured>>,
}

struct Sub(Arc<Capture>);

impl std::ops::Deref for Sub {
    type Target = Capture;
    fn deref(&self) -> &Capture {
        &self.0
    }
}

impl Subscriber for Sub {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.target().starts_with("bulkhead")
    }
    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let mut f = Fields::default();
        attrs.record(&mut f);
        let mut spans = self.spans.lock().unwrap();
        spans.push(Captured {
            name: attrs.metadata().name().to_string(),
            level: *attrs.metadata().level(),
            fields: f.0,
        });
        Id::from_u64(spans.len() as u64)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut f = Fields::default();
        values.record(&mut f);
        let mut spans = self.spans.lock().unwrap();
        spans[span.into_u64() as usize - 1].fields.extend(f.0);
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut f = Fields::default();
        event.record(&mut f);
        let name = f.0.remove("message").unwrap_or_default();
        self.events.lock().unwrap().push(Captured {
            name,
            level: *event.metadata().level(),
            fields: f.0,
        });
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

fn one<'a>(items: &'a [Captured], what: &str, pred: impl Fn(&Captured) -> bool) -> &'a Captured {
    let found: Vec<&Captured> = items.iter().filter(|c| pred(c)).collect();
    assert_eq!(found.len(), 1, "expected one {what}, got {found:?}\nall: {items:?}");
    found[0]
}

#[test]
fn spans_and_warnings() {
    let capture = Arc::new(Capture::default());
    tracing::subscriber::set_global_default(Sub(capture.clone())).unwrap();

    let sup = supervisor();
    let events = sup.events();
    let plugin = sup.load(spec("fx-basic").plugin("BasicPlugin")).unwrap();
    let first = plugin.info().worker_pid;

    let spans = capture.spans.lock().unwrap().clone();
    let load = one(&spans, "load span", |s| s.name == "load");
    assert_eq!(load.level, Level::INFO);
    assert_eq!(load.fields["plugin"], "BasicPlugin");
    assert_eq!(load.fields["worker_pid"], first.to_string());
    assert_eq!(load.fields["outcome"], "ok");

    let s: String = plugin.call(basic::GREET, &("o11y".to_string(),)).unwrap();
    assert_eq!(s, "Hello, o11y!");
    let spans = capture.spans.lock().unwrap().clone();
    let call = one(&spans, "call span", |s| s.name == "call");
    assert_eq!(call.level, Level::DEBUG);
    assert_eq!(call.fields["plugin"], "BasicPlugin");
    assert_eq!(call.fields["method"], basic::GREET.to_string());
    assert_eq!(call.fields["worker_pid"], first.to_string());
    assert_eq!(call.fields["outcome"], "ok");

    // A crash: a warn event naming the worker, the span's outcome, then a restart.
    let err = plugin.call::<_, u32>(basic::SEGFAULT, &()).unwrap_err();
    assert!(matches!(err, CallError::WorkerDied { .. }), "{err:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let restarted = loop {
        let e = events.recv_deadline(deadline).expect("a restart event");
        if let EventKind::Restarted { pid, .. } = e.kind {
            break pid;
        }
    };
    let spans = capture.spans.lock().unwrap().clone();
    let crash_span = one(&spans, "crashing call span", |s| {
        s.name == "call" && s.fields["method"] == basic::SEGFAULT.to_string()
    });
    assert_eq!(crash_span.fields["outcome"], "worker_died");
    assert_eq!(crash_span.fields["worker_pid"], first.to_string());
    let evs = capture.events.lock().unwrap().clone();
    let died = one(&evs, "crash warning", |e| e.name == "worker died during a call");
    assert_eq!(died.level, Level::WARN);
    assert_eq!(died.fields["plugin"], "BasicPlugin");
    assert_eq!(died.fields["pid"], first.to_string());
    assert_eq!(died.fields["exit"], "signal 11 (SIGSEGV)");
    // With the worker's crash report.
    assert_eq!(
        died.fields["crash"],
        "signal 11 (SIGSEGV, code 1) at address 0x0 in method 7 (input 0 bytes)"
    );
    assert_eq!(died.fields["input_len"], "0");
    assert!(died.fields["frames"].starts_with("0x"), "{:?}", died.fields["frames"]);
    let restart = one(&evs, "restart warning", |e| e.name == "worker restarted");
    assert_eq!(restart.level, Level::WARN);
    assert_eq!(restart.fields["pid"], restarted.to_string());

    // A timeout.
    let err = plugin
        .call_with_timeout::<_, u64>(basic::SPIN, &(), Duration::from_millis(300))
        .unwrap_err();
    assert!(matches!(err, CallError::Timeout { .. }), "{err:?}");
    let evs = capture.events.lock().unwrap().clone();
    let timeout = one(&evs, "timeout warning", |e| e.name == "call timed out; worker killed");
    assert_eq!(timeout.level, Level::WARN);
    assert_eq!(timeout.fields["pid"], restarted.to_string());
    assert_eq!(timeout.fields["limit"], "300ms");

    // A system call the sandbox refuses: a warning naming the plugin, the
    // worker, the method in flight, the call and its gating arguments.
    let neighbour = sup.load(spec("fx-neighbour").plugin("NeighbourPlugin")).unwrap();
    let pid = neighbour.info().worker_pid;
    let got: i64 = neighbour
        .call(bulkhead_tests::neighbour::BIND_ABSTRACT, &("o11y".to_string(),))
        .unwrap();
    assert_eq!(got, -(libc::EPERM as i64));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(
        events.recv_deadline(deadline).expect("a violation event").kind,
        EventKind::SandboxViolation { .. }
    ) {}
    let evs = capture.events.lock().unwrap().clone();
    let denied = one(&evs, "violation warning", |e| {
        e.name == "socket(AF_UNIX, SOCK_STREAM, 0) denied by the sandbox"
    });
    assert_eq!(denied.level, Level::WARN);
    assert_eq!(denied.fields["plugin"], "NeighbourPlugin");
    assert_eq!(denied.fields["pid"], pid.to_string());
    assert_eq!(
        denied.fields["method"],
        bulkhead_tests::neighbour::BIND_ABSTRACT.to_string()
    );
    assert_eq!(denied.fields["syscall"], "socket");
    assert_eq!(denied.fields["count"], "1");
}
