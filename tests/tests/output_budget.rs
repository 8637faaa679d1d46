//! A plugin's output flood costs the host bounded CPU and bounded log volume:
//! lines beyond the plugin's `OutputBudget` are dropped and counted (a WARN
//! summary says how many), reading beyond its read rate pauses so the plugin
//! blocks in its writes, and plugin lines are logged at a level that does not
//! look like a host problem. The control (`OutputBudget::unlimited()`)
//! forwards every line. A capturing `tracing` subscriber is installed
//! process-wide, so this file holds a single test.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulkhead_host::OutputBudget;
use bulkhead_tests::{cpu_ticks, hog, spec, supervisor};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

const GENEROUS: Duration = Duration::from_secs(60);
/// How long the plugin floods.
const FLOOD: Duration = Duration::from_millis(1500);

/// What the subscriber saw from one worker (by pid).
#[derive(Default, Debug, Clone)]
struct Seen {
    /// Plugin lines, by level.
    lines: HashMap<Level, u64>,
    /// Summaries (WARN) and the lines they say were dropped.
    summaries: u64,
    dropped: u64,
}

#[derive(Default)]
struct Fields {
    pid: Option<u64>,
    dropped: Option<u64>,
}

impl Visit for Fields {
    fn record_debug(&mut self, _: &Field, _: &dyn Debug) {}
    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "pid" => self.pid = Some(value),
            "dropped_lines" => self.dropped = Some(value),
            _ => {}
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record_u64(field, value as u64);
    }
}

struct Sub(Arc<Mutex<HashMap<u64, Seen>>>);

impl Subscriber for Sub {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.target() == "bulkhead::plugin"
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut f = Fields::default();
        event.record(&mut f);
        let Some(pid) = f.pid else { return };
        let mut seen = self.0.lock().unwrap();
        let s = seen.entry(pid).or_default();
        match f.dropped {
            Some(n) => {
                assert_eq!(*event.metadata().level(), Level::WARN);
                s.summaries += 1;
                s.dropped += n;
            }
            None => *s.lines.entry(*event.metadata().level()).or_default() += 1,
        }
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// The host's output-loop thread.
fn output_thread() -> u32 {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| {
            let t = t.ok()?;
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            (comm.trim_end() == "bulkhead-output").then(|| t.file_name().to_str()?.parse().ok())?
        })
        .next()
        .expect("the output loop runs")
}

struct Run {
    written_lines: u64,
    seen: Seen,
    host_cpu: Duration,
    wall: Duration,
}

/// Floods `FLOOD` of empty lines to stderr from a worker under `budget`,
/// then ends the worker so every line is read.
fn flood(seen: &Arc<Mutex<HashMap<u64, Seen>>>, budget: OutputBudget) -> Run {
    let sup = supervisor();
    let p = sup.load(spec("fx-hog").output_budget(budget)).unwrap();
    let pid = p.worker_pids()[0] as u64;
    let thread = output_thread();
    let ticks = cpu_ticks(thread);
    let t = Instant::now();
    let written: i64 = p
        .call_with_timeout(hog::FLOOD, &(FLOOD.as_millis() as u64, 1u32), GENEROUS)
        .unwrap();
    // Ending the worker closes its pipes: whatever is left in them is read
    // (and counted) before shutdown returns.
    drop(p);
    sup.shutdown();
    let wall = t.elapsed();
    let ticks = cpu_ticks(thread) - ticks;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    let seen = seen.lock().unwrap().get(&pid).cloned().unwrap_or_default();
    Run {
        written_lines: written as u64,
        seen,
        host_cpu: Duration::from_millis(ticks * 1000 / hz),
        wall,
    }
}

#[test]
fn an_output_flood_costs_the_host_bounded_cpu_and_log() {
    let seen = Arc::new(Mutex::new(HashMap::new()));
    tracing::subscriber::set_global_default(Sub(seen.clone())).unwrap();

    let run = flood(&seen, OutputBudget::DEFAULT);
    eprintln!(
        "budget: {} lines written, {:?} seen, host output thread {:?} of {:?}",
        run.written_lines, run.seen, run.host_cpu, run.wall
    );
    let forwarded = run.seen.lines.get(&Level::INFO).copied().unwrap_or(0);
    // Every line is accounted for: forwarded (stderr at INFO) or dropped.
    assert_eq!(forwarded + run.seen.dropped, run.written_lines, "{:?}", run.seen);
    assert_eq!(run.seen.lines.get(&Level::WARN), None, "plugin lines are not WARN");
    // The log: at most a second's burst plus the rate over the run.
    let bound = 1_000 + (1_000.0 * run.wall.as_secs_f64()) as u64;
    assert!(forwarded <= bound, "{forwarded} lines forwarded; bound {bound}");
    assert!(run.seen.summaries >= 1 && run.seen.dropped > 0, "{:?}", run.seen);
    // At most one summary per second, plus one as each of the two streams ends.
    assert!(run.seen.summaries <= 3 + run.wall.as_secs(), "{:?}", run.seen);
    // The read budget slowed the plugin: at most a second's burst plus the
    // rate over the run (plus what the pipe holds).
    let read_bound = (32 << 20) as f64 * (1.0 + run.wall.as_secs_f64()) + (1 << 20) as f64;
    assert!(
        (run.written_lines as f64) <= read_bound,
        "{} bytes written",
        run.written_lines
    );
    // The host's draining: under a quarter of a core over the run.
    assert!(
        run.host_cpu <= run.wall / 4,
        "the output loop used {:?} in {:?}",
        run.host_cpu,
        run.wall
    );

    // Control: without a budget every line is forwarded — the log grows with
    // the flood.
    let run = flood(&seen, OutputBudget::unlimited());
    eprintln!(
        "unlimited: {} lines written, {:?} seen, host output thread {:?} of {:?}",
        run.written_lines, run.seen, run.host_cpu, run.wall
    );
    let forwarded = run.seen.lines.get(&Level::INFO).copied().unwrap_or(0);
    assert_eq!(forwarded, run.written_lines);
    assert_eq!(run.seen.dropped, 0);
    assert!(
        forwarded > 10 * (1_000 + (1_000.0 * run.wall.as_secs_f64()) as u64),
        "the control forwards far beyond the budget: {forwarded}"
    );
}
