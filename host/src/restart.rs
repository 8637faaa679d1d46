//! The restart policy: a pure state machine. It never sleeps and never reads
//! the clock; every decision takes `now`.
//!
//! Modelled on OTP supervisors (at most `max_restarts` within `window`, else give
//! up) plus systemd-style backoff between consecutive restarts (which OTP lacks),
//! and an optional cool-down after which a failed plugin may try again.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// When a dead worker is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RestartMode {
    /// Never: the first crash or timeout marks the plugin failed.
    Never,
    /// After a crash, timeout or protocol violation (the default).
    OnFailure,
}

/// Delay between consecutive restarts: the first restart after a healthy
/// period is immediate, then `initial`, `initial * factor`, ... capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay before the second consecutive restart. Default 50 ms.
    pub initial: Duration,
    /// Growth factor per further restart. Default 2.0.
    pub factor: f64,
    /// Upper bound. Default 5 s.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(50),
            factor: 2.0,
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// No delay at all between restarts.
    pub fn none() -> Self {
        Self {
            initial: Duration::ZERO,
            factor: 1.0,
            max: Duration::ZERO,
        }
    }

    /// Delay before the `n`th consecutive restart (1-based).
    pub fn delay(&self, n: u32) -> Duration {
        if n <= 1 {
            return Duration::ZERO;
        }
        let scaled = self.initial.as_secs_f64() * self.factor.max(1.0).powi((n - 2).min(64) as i32);
        Duration::from_secs_f64(scaled.min(self.max.as_secs_f64()))
    }
}

/// How a plugin's workers are restarted.
#[derive(Debug, Clone, PartialEq)]
#[must_use = "a RestartPolicy does nothing until passed to PluginSpec::restart"]
pub struct RestartPolicy {
    /// Whether to restart at all. Default [`RestartMode::OnFailure`].
    pub mode: RestartMode,
    /// Restarts allowed within `window` before the plugin is marked failed. Default 5.
    pub max_restarts: u32,
    /// The sliding window for `max_restarts`. Default 60 s.
    pub window: Duration,
    /// Delay between consecutive restarts. Default [`Backoff::default`].
    pub backoff: Backoff,
    /// After this long in the failed state, calls may restart the worker again.
    /// Default `None`: failed until [`Plugin::reset`](crate::Plugin::reset).
    pub cool_down: Option<Duration>,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            mode: RestartMode::OnFailure,
            max_restarts: 5,
            window: Duration::from_secs(60),
            backoff: Backoff::default(),
            cool_down: None,
        }
    }
}

impl RestartPolicy {
    /// Never restart.
    pub fn never() -> Self {
        Self {
            mode: RestartMode::Never,
            ..Self::default()
        }
    }
    /// Restart on failure, at most `max_restarts` times within `window`.
    pub fn on_failure(max_restarts: u32, window: Duration) -> Self {
        Self {
            mode: RestartMode::OnFailure,
            max_restarts,
            window,
            ..Self::default()
        }
    }
    /// Sets the backoff.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }
    /// Sets the cool-down after which a failed plugin may restart again.
    pub fn cool_down(mut self, d: Duration) -> Self {
        self.cool_down = Some(d);
        self
    }
}

/// What to do after a worker failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Start a replacement, not before this instant.
    Restart {
        /// Earliest start of the replacement.
        not_before: Instant,
    },
    /// The budget is spent: the plugin is now failed.
    GiveUp,
}

/// The failed state: why and since when.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Failed {
    /// The failure that spent the budget.
    pub reason: String,
    /// When.
    pub since: Instant,
    /// Restarts made within the window at that point.
    pub restarts: u32,
}

/// Restart bookkeeping for one plugin (all its workers).
#[derive(Debug, Clone)]
pub(crate) struct RestartState {
    policy: RestartPolicy,
    /// Start times of restarts within the window (at most `max_restarts`).
    recent: VecDeque<Instant>,
    consecutive: u32,
    not_before: Option<Instant>,
    failed: Option<Failed>,
    total_restarts: u64,
}

impl RestartState {
    /// A fresh state under `policy`.
    pub fn new(policy: RestartPolicy) -> Self {
        Self {
            policy,
            recent: VecDeque::new(),
            consecutive: 0,
            not_before: None,
            failed: None,
            total_restarts: 0,
        }
    }

    /// A worker failed at `now` for `reason`. Decides whether it is replaced.
    pub fn on_failure(&mut self, now: Instant, reason: &str) -> Decision {
        if self.failed.is_some() {
            return Decision::GiveUp;
        }
        self.prune(now);
        let over_budget = self.recent.len() as u32 >= self.policy.max_restarts;
        if self.policy.mode == RestartMode::Never || over_budget {
            self.failed = Some(Failed {
                reason: reason.to_string(),
                since: now,
                restarts: self.recent.len() as u32,
            });
            self.not_before = None;
            return Decision::GiveUp;
        }
        self.consecutive += 1;
        let not_before = now + self.policy.backoff.delay(self.consecutive);
        self.not_before = Some(not_before);
        Decision::Restart { not_before }
    }

    /// A replacement worker is being started at `now`; counts against the budget.
    pub fn on_restart(&mut self, now: Instant) {
        self.prune(now);
        self.recent.push_back(now);
        self.total_restarts += 1;
        self.not_before = None;
    }

    /// A call completed normally: the plugin is healthy, backoff starts over.
    pub fn on_success(&mut self) {
        self.consecutive = 0;
    }

    /// Whether calls may proceed at `now`: `Err` while failed. A configured
    /// cool-down that has passed clears the failed state (and the window).
    pub fn check(&mut self, now: Instant) -> Result<(), Failed> {
        if let Some(f) = &self.failed {
            match self.policy.cool_down {
                Some(cd) if now.saturating_duration_since(f.since) >= cd => self.reset(),
                _ => return Err(f.clone()),
            }
        }
        Ok(())
    }

    /// Earliest instant a replacement may start (backoff), if one is pending.
    pub fn not_before(&self) -> Option<Instant> {
        self.not_before
    }

    /// Clears the failed state, the window and the backoff.
    pub fn reset(&mut self) {
        self.failed = None;
        self.recent.clear();
        self.consecutive = 0;
        self.not_before = None;
    }

    /// Restarts performed since creation.
    pub fn total_restarts(&self) -> u64 {
        self.total_restarts
    }

    /// The failed state, if any (without applying the cool-down).
    pub fn failed(&self) -> Option<&Failed> {
        self.failed.as_ref()
    }

    fn prune(&mut self, now: Instant) {
        while let Some(&t) = self.recent.front() {
            if now.saturating_duration_since(t) >= self.policy.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Fail and restart immediately, as the pool does.
    fn crash(s: &mut RestartState, now: Instant) -> Decision {
        let d = s.on_failure(now, "boom");
        if let Decision::Restart { not_before } = d {
            s.on_restart(not_before.max(now));
        }
        d
    }

    #[test]
    fn budget_of_three_in_ten_seconds() {
        let t0 = Instant::now();
        let mut s = RestartState::new(RestartPolicy::on_failure(3, Duration::from_secs(10)).backoff(Backoff::none()));
        for i in 0..3 {
            assert_eq!(crash(&mut s, t0 + ms(i)), Decision::Restart { not_before: t0 + ms(i) });
        }
        assert_eq!(crash(&mut s, t0 + ms(3)), Decision::GiveUp);
        let f = s.check(t0 + ms(4)).unwrap_err();
        assert_eq!((f.reason.as_str(), f.since, f.restarts), ("boom", t0 + ms(3), 3));
        // Still failed much later: no cool-down configured.
        assert!(s.check(t0 + Duration::from_secs(3600)).is_err());
        s.reset();
        assert!(s.check(t0 + ms(5)).is_ok());
        assert!(matches!(crash(&mut s, t0 + ms(6)), Decision::Restart { .. }));
        assert_eq!(s.total_restarts(), 4);
    }

    #[test]
    fn window_slides() {
        let t0 = Instant::now();
        let mut s = RestartState::new(RestartPolicy::on_failure(2, Duration::from_secs(10)).backoff(Backoff::none()));
        assert!(matches!(crash(&mut s, t0), Decision::Restart { .. }));
        assert!(matches!(
            crash(&mut s, t0 + Duration::from_secs(5)),
            Decision::Restart { .. }
        ));
        // The first restart left the window at t0+10s.
        assert!(matches!(
            crash(&mut s, t0 + Duration::from_secs(11)),
            Decision::Restart { .. }
        ));
        assert_eq!(crash(&mut s, t0 + Duration::from_secs(12)), Decision::GiveUp);
    }

    #[test]
    fn never_gives_up_at_once() {
        let t0 = Instant::now();
        let mut s = RestartState::new(RestartPolicy::never());
        assert_eq!(s.on_failure(t0, "segfault"), Decision::GiveUp);
        assert_eq!(s.check(t0).unwrap_err().reason, "segfault");
    }

    #[test]
    fn backoff_grows_and_caps_and_resets_on_success() {
        let b = Backoff {
            initial: ms(100),
            factor: 2.0,
            max: ms(350),
        };
        assert_eq!(
            [b.delay(1), b.delay(2), b.delay(3), b.delay(4), b.delay(50)],
            [Duration::ZERO, ms(100), ms(200), ms(350), ms(350)]
        );
        let t0 = Instant::now();
        let mut s = RestartState::new(RestartPolicy::on_failure(10, Duration::from_secs(60)).backoff(b));
        assert_eq!(crash(&mut s, t0), Decision::Restart { not_before: t0 });
        assert_eq!(
            s.on_failure(t0 + ms(1), "x"),
            Decision::Restart {
                not_before: t0 + ms(101)
            }
        );
        assert_eq!(s.not_before(), Some(t0 + ms(101)));
        s.on_restart(t0 + ms(101));
        assert_eq!(s.not_before(), None);
        s.on_success();
        assert_eq!(
            s.on_failure(t0 + ms(200), "y"),
            Decision::Restart {
                not_before: t0 + ms(200)
            }
        );
    }

    #[test]
    fn cool_down_clears_failure() {
        let t0 = Instant::now();
        let mut s = RestartState::new(RestartPolicy::never().cool_down(Duration::from_secs(30)));
        assert_eq!(s.on_failure(t0, "hang"), Decision::GiveUp);
        assert!(s.check(t0 + Duration::from_secs(29)).is_err());
        assert!(s.check(t0 + Duration::from_secs(30)).is_ok());
        assert!(s.failed().is_none());
    }
}
