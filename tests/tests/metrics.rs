//! The `metrics` feature: counters and the call-latency histogram reach the
//! installed recorder with the plugin's label. Run with
//! `cargo test -p bulkhead-tests --features metrics --test metrics`.
#![cfg(feature = "metrics")]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulkhead_host::{CallError, EventKind};
use bulkhead_tests::{basic, spec, supervisor};
use metrics::{Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit};

#[derive(Default)]
struct Samples(Mutex<Vec<f64>>);

impl HistogramFn for Samples {
    fn record(&self, value: f64) {
        self.0.lock().unwrap().push(value);
    }
}

/// Keeps every counter and histogram by `name{label=value,...}`.
#[derive(Default)]
struct Rec {
    /// Described metrics and their units.
    described: Mutex<BTreeMap<String, Option<String>>>,
    counters: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
    histograms: Mutex<BTreeMap<String, Arc<Samples>>>,
}

fn id(key: &Key) -> String {
    let labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

impl Recorder for &'static Rec {
    fn describe_counter(&self, name: KeyName, unit: Option<Unit>, _: SharedString) {
        let unit = unit.map(|u| u.as_str().to_string());
        self.described.lock().unwrap().insert(name.as_str().to_string(), unit);
    }
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, name: KeyName, unit: Option<Unit>, _: SharedString) {
        let unit = unit.map(|u| u.as_str().to_string());
        self.described.lock().unwrap().insert(name.as_str().to_string(), unit);
    }
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let c = self.counters.lock().unwrap().entry(id(key)).or_default().clone();
        Counter::from_arc(c)
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let h = self.histograms.lock().unwrap().entry(id(key)).or_default().clone();
        Histogram::from_arc(h)
    }
}

impl Rec {
    fn counter(&self, id: &str) -> u64 {
        self.counters
            .lock()
            .unwrap()
            .get(id)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

#[test]
fn counters_and_latency_histogram() {
    let rec: &'static Rec = Box::leak(Box::default());
    metrics::set_global_recorder(rec).unwrap();

    let sup = supervisor();
    let events = sup.events();
    let plugin = sup.load(spec("fx-basic").plugin("BasicPlugin")).unwrap();
    for i in 0..5i64 {
        let x: i64 = plugin.call(basic::ADD, &(i, 1i64)).unwrap();
        assert_eq!(x, i + 1);
    }
    let err = plugin.call::<_, u32>(basic::SEGFAULT, &()).unwrap_err();
    assert!(matches!(err, CallError::WorkerDied { .. }), "{err:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(
        events.recv_deadline(deadline).expect("restart").kind,
        EventKind::Restarted { .. }
    ) {}
    let err = plugin
        .call_with_timeout::<_, u64>(basic::SPIN, &(), Duration::from_millis(300))
        .unwrap_err();
    assert!(matches!(err, CallError::Timeout { .. }), "{err:?}");

    let p = "plugin=BasicPlugin";
    assert_eq!(rec.counter(&format!("bulkhead_loads_total{{{p},outcome=ok}}")), 1);
    assert_eq!(rec.counter(&format!("bulkhead_calls_total{{{p},outcome=ok}}")), 5);
    assert_eq!(
        rec.counter(&format!("bulkhead_calls_total{{{p},outcome=worker_died}}")),
        1
    );
    assert_eq!(rec.counter(&format!("bulkhead_calls_total{{{p},outcome=timeout}}")), 1);
    assert_eq!(rec.counter(&format!("bulkhead_worker_crashes_total{{{p}}}")), 1);
    // Failures per method.
    assert_eq!(
        rec.counter(&format!(
            "bulkhead_call_errors_total{{{p},method={},outcome=worker_died}}",
            basic::SEGFAULT
        )),
        1
    );
    assert_eq!(
        rec.counter(&format!(
            "bulkhead_call_errors_total{{{p},method={},outcome=timeout}}",
            basic::SPIN
        )),
        1
    );
    assert_eq!(rec.counter(&format!("bulkhead_call_timeouts_total{{{p}}}")), 1);
    assert!(rec.counter(&format!("bulkhead_worker_restarts_total{{{p}}}")) >= 1);
    assert!(rec.counter(&format!("bulkhead_workers_started_total{{{p}}}")) >= 2);
    let hist = rec.histograms.lock().unwrap();
    let samples = hist[&format!("bulkhead_call_duration_seconds{{{p}}}")]
        .0
        .lock()
        .unwrap();
    assert_eq!(samples.len(), 7, "{samples:?}");
    // The timed-out call took at least its limit.
    assert!(samples.iter().any(|&s| s >= 0.3), "{samples:?}");
    assert!(samples.iter().all(|&s| s > 0.0 && s < 60.0), "{samples:?}");
    drop(samples);
    drop(hist);

    // Every metric is described, with its unit.
    let described = rec.described.lock().unwrap().clone();
    assert_eq!(
        described.get("bulkhead_call_duration_seconds").map(|u| u.as_deref()),
        Some(Some("seconds"))
    );
    assert_eq!(
        described.get("bulkhead_calls_total").map(|u| u.as_deref()),
        Some(Some("count"))
    );
    for name in rec.counters.lock().unwrap().keys() {
        let name = name.split('{').next().unwrap();
        assert!(described.contains_key(name), "{name} is not described");
    }

    // A label set on the spec is the metrics' `plugin` label.
    let labelled = sup.load(spec("fx-basic").label("billing")).unwrap();
    let _: i64 = labelled.call(basic::ADD, &(1i64, 1i64)).unwrap();
    assert_eq!(rec.counter("bulkhead_calls_total{plugin=billing,outcome=ok}"), 1);
}
