//! The restart policy: a pure state machine. It never sleeps and never reads
//! the clock; every decision takes `now`.
//!
//! The default follows what services expect from Kubernetes' and Docker's
//! `always` policies: a dead worker is always replaced, with capped exponential
//! backoff between consecutive failures, and the backoff starts over once the
//! worker has served a call or stayed up for a healthy period. Giving up is
//! opt-in: a [`Budget`] (OTP's intensity and period) marks the plugin failed
//! when it is spent, optionally with a cool-down after which it may try again.
//!
//! **Pools.** Backoff is tracked per *slot* (one worker's place in a pool), so a
//! burst of failures across the pool costs each slot only its own first,
//! immediate restart. A budget is per worker too: a pool of `n` may restart
//! `n × max_restarts` times within the window before it gives up.

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

/// Delay between consecutive failures of one slot: the first restart after a
/// healthy period is immediate, then `initial`, `initial * factor`, ... capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay before the second consecutive restart. Default 100 ms.
    pub initial: Duration,
    /// Growth factor per further restart. Default 2.0.
    pub factor: f64,
    /// Upper bound. Default 30 s.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            factor: 2.0,
            max: Duration::from_secs(30),
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

/// A restart budget: at most `max_restarts` restarts per worker within
/// `window`, else the plugin is failed. A pool of `n` workers may restart
/// `n × max_restarts` times within the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Restarts allowed per worker within `window`.
    pub max_restarts: u32,
    /// The sliding window.
    pub window: Duration,
}

/// How a plugin's workers are restarted.
#[derive(Debug, Clone, PartialEq)]
#[must_use = "a RestartPolicy does nothing until passed to PluginSpec::restart"]
pub struct RestartPolicy {
    /// Whether to restart at all. Default [`RestartMode::OnFailure`].
    pub mode: RestartMode,
    /// When to give up. Default `None`: never; restarts continue with backoff.
    pub budget: Option<Budget>,
    /// Delay between consecutive failures of one slot. Default [`Backoff::default`]
    /// (0, then 100 ms doubling to 30 s).
    pub backoff: Backoff,
    /// A worker that has been up this long when it fails starts its slot's
    /// backoff over (as does a successful call). Default 10 s.
    pub healthy_after: Duration,
    /// After this long in the failed state, calls may restart the worker again.
    /// Default `None`: failed until [`Plugin::reset`](crate::Plugin::reset).
    pub cool_down: Option<Duration>,
}

/// Default of [`RestartPolicy::healthy_after`].
pub const DEFAULT_HEALTHY_AFTER: Duration = Duration::from_secs(10);

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            mode: RestartMode::OnFailure,
            budget: None,
            backoff: Backoff::default(),
            healthy_after: DEFAULT_HEALTHY_AFTER,
            cool_down: None,
        }
    }
}

impl RestartPolicy {
    /// Always restart, never give up (the default), with capped exponential backoff.
    pub fn always() -> Self {
        Self::default()
    }
    /// Never restart.
    pub fn never() -> Self {
        Self {
            mode: RestartMode::Never,
            ..Self::default()
        }
    }
    /// Restart on failure, at most `max_restarts` times per worker within
    /// `window`; then the plugin is failed.
    pub fn on_failure(max_restarts: u32, window: Duration) -> Self {
        Self {
            mode: RestartMode::OnFailure,
            budget: Some(Budget { max_restarts, window }),
            ..Self::default()
        }
    }
    /// Sets the backoff.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }
    /// Sets the healthy period after which a slot's backoff starts over.
    pub fn healthy_after(mut self, d: Duration) -> Self {
        self.healthy_after = d;
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

/// Backoff bookkeeping of one slot.
#[derive(Debug, Clone, Copy, Default)]
struct SlotState {
    consecutive: u32,
    not_before: Option<Instant>,
    /// When the slot's current worker was started by a restart.
    started: Option<Instant>,
}

/// Restart bookkeeping for one plugin: a budget for the pool, backoff per slot.
#[derive(Debug, Clone)]
pub(crate) struct RestartState {
    policy: RestartPolicy,
    /// Start times of restarts within the budget's window.
    recent: VecDeque<Instant>,
    slots: Vec<SlotState>,
    failed: Option<Failed>,
    total_restarts: u64,
}

impl RestartState {
    /// A fresh state under `policy` for a pool of `slots` workers (at least 1).
    pub fn new(policy: RestartPolicy, slots: usize) -> Self {
        Self {
            policy,
            recent: VecDeque::new(),
            slots: vec![SlotState::default(); slots.max(1)],
            failed: None,
            total_restarts: 0,
        }
    }

    fn slot(&mut self, slot: usize) -> &mut SlotState {
        let last = self.slots.len() - 1;
        &mut self.slots[slot.min(last)]
    }

    /// Restarts the pool may make within the window (`None`: unlimited).
    fn allowance(&self) -> Option<u64> {
        self.policy
            .budget
            .map(|b| u64::from(b.max_restarts) * self.slots.len() as u64)
    }

    /// The worker in `slot` failed at `now` for `reason`. Decides whether it is replaced.
    pub fn on_failure(&mut self, slot: usize, now: Instant, reason: &str) -> Decision {
        if self.failed.is_some() {
            return Decision::GiveUp;
        }
        self.prune(now);
        if self.gives_up(now) {
            self.failed = Some(Failed {
                reason: reason.to_string(),
                since: now,
                restarts: self.recent.len() as u32,
            });
            for s in &mut self.slots {
                s.not_before = None;
            }
            return Decision::GiveUp;
        }
        let consecutive = self.consecutive_after_failure(slot, now);
        let not_before = now + self.policy.backoff.delay(consecutive);
        let s = self.slot(slot);
        s.consecutive = consecutive;
        s.not_before = Some(not_before);
        Decision::Restart { not_before }
    }

    /// Whether a failure at `now` fails the plugin: the policy never
    /// restarts, or the restarts made within the window spend the budget.
    fn gives_up(&self, now: Instant) -> bool {
        if self.policy.mode == RestartMode::Never {
            return true;
        }
        let (Some(allowance), Some(b)) = (self.allowance(), self.policy.budget) else {
            return false;
        };
        let recent = self
            .recent
            .iter()
            .filter(|&&t| now.saturating_duration_since(t) < b.window)
            .count();
        recent as u64 >= allowance
    }

    /// `slot`'s consecutive failures with one more at `now` (a slot whose
    /// worker stayed up `healthy_after` starts over).
    fn consecutive_after_failure(&self, slot: usize, now: Instant) -> u32 {
        let s = &self.slots[slot.min(self.slots.len() - 1)];
        let healthy = s
            .started
            .is_some_and(|t| now.saturating_duration_since(t) >= self.policy.healthy_after);
        if healthy { 0 } else { s.consecutive }.saturating_add(1)
    }

    /// Whether a failure of `slot` at `now` would be answered with a restart
    /// that need not wait (what [`on_failure`](Self::on_failure) would
    /// decide, with no backoff), recording nothing.
    pub fn would_restart_at_once(&self, slot: usize, now: Instant) -> bool {
        self.failed.is_none()
            && !self.gives_up(now)
            && self
                .policy
                .backoff
                .delay(self.consecutive_after_failure(slot, now))
                .is_zero()
    }

    /// A replacement worker for `slot` is being started at `now`; counts against the budget.
    pub fn on_restart(&mut self, slot: usize, now: Instant) {
        self.prune(now);
        if self.policy.budget.is_some() {
            self.recent.push_back(now);
        }
        self.total_restarts += 1;
        let s = self.slot(slot);
        s.not_before = None;
        s.started = Some(now);
    }

    /// A call on `slot`'s worker completed normally: its backoff starts over.
    pub fn on_success(&mut self, slot: usize) {
        self.slot(slot).consecutive = 0;
    }

    /// Whether nothing is pending: no failure, no backoff, no slot counting
    /// consecutive failures (the pool then skips the lock on healthy calls).
    pub fn is_quiet(&self) -> bool {
        self.failed.is_none() && self.slots.iter().all(|s| s.consecutive == 0 && s.not_before.is_none())
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

    /// Earliest instant `slot`'s replacement may start (backoff), if one is pending.
    pub fn not_before(&self, slot: usize) -> Option<Instant> {
        self.slots[slot.min(self.slots.len() - 1)].not_before
    }

    /// The earliest pending backoff of any slot.
    pub fn next_attempt(&self) -> Option<Instant> {
        self.slots.iter().filter_map(|s| s.not_before).min()
    }

    /// Clears the failed state, the window and every slot's backoff.
    pub fn reset(&mut self) {
        self.failed = None;
        self.recent.clear();
        for s in &mut self.slots {
            *s = SlotState::default();
        }
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
        let Some(b) = self.policy.budget else { return };
        while let Some(&t) = self.recent.front() {
            if now.saturating_duration_since(t) >= b.window {
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

    /// The look-ahead agrees with the decision it predicts, through budgets,
    /// backoffs and the failed state.
    #[test]
    fn would_restart_at_once_predicts_on_failure() {
        let t0 = Instant::now();
        let policies = [
            RestartPolicy::on_failure(3, Duration::from_secs(60)).backoff(Backoff::none()),
            RestartPolicy::on_failure(3, Duration::from_secs(60)),
            RestartPolicy::always(),
            RestartPolicy::never(),
        ];
        for policy in policies {
            let mut st = RestartState::new(policy.clone(), 2);
            for step in 0..8u32 {
                let now = t0 + Duration::from_millis(u64::from(step) * 10);
                let slot = (step % 2) as usize;
                let predicted = st.would_restart_at_once(slot, now);
                let decided = st.on_failure(slot, now, "test");
                let at_once = matches!(decided, Decision::Restart { not_before } if not_before <= now);
                assert_eq!(predicted, at_once, "{policy:?}, step {step}: {decided:?}");
                if let Decision::Restart { not_before } = decided {
                    st.on_restart(slot, not_before);
                }
            }
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Fail and restart immediately, as the pool does.
    fn crash(s: &mut RestartState, slot: usize, now: Instant) -> Decision {
        let d = s.on_failure(slot, now, "boom");
        if let Decision::Restart { not_before } = d {
            s.on_restart(slot, not_before.max(now));
        }
        d
    }

    #[test]
    fn budget_of_three_in_ten_seconds() {
        let t0 = Instant::now();
        let mut s = RestartState::new(
            RestartPolicy::on_failure(3, Duration::from_secs(10)).backoff(Backoff::none()),
            1,
        );
        for i in 0..3 {
            assert_eq!(
                crash(&mut s, 0, t0 + ms(i)),
                Decision::Restart { not_before: t0 + ms(i) }
            );
        }
        assert_eq!(crash(&mut s, 0, t0 + ms(3)), Decision::GiveUp);
        let f = s.check(t0 + ms(4)).unwrap_err();
        assert_eq!((f.reason.as_str(), f.since, f.restarts), ("boom", t0 + ms(3), 3));
        // Still failed much later: no cool-down configured.
        assert!(s.check(t0 + Duration::from_secs(3600)).is_err());
        s.reset();
        assert!(s.check(t0 + ms(5)).is_ok());
        assert!(matches!(crash(&mut s, 0, t0 + ms(6)), Decision::Restart { .. }));
        assert_eq!(s.total_restarts(), 4);
    }

    #[test]
    fn budget_scales_with_the_pool() {
        let t0 = Instant::now();
        let mut s = RestartState::new(RestartPolicy::on_failure(2, Duration::from_secs(10)), 4);
        // A burst: every slot fails twice; 8 restarts fit in 4 x 2.
        for round in 0..2 {
            for slot in 0..4 {
                let d = crash(&mut s, slot, t0 + ms(round * 1000 + slot as u64));
                assert!(matches!(d, Decision::Restart { .. }), "{round} {slot}: {d:?}");
            }
        }
        assert_eq!(crash(&mut s, 3, t0 + ms(3000)), Decision::GiveUp);
    }

    #[test]
    fn default_never_gives_up_and_backs_off_per_slot_up_to_the_cap() {
        let t0 = Instant::now();
        let mut s = RestartState::new(RestartPolicy::default(), 2);
        let mut now = t0;
        let mut last = Duration::ZERO;
        for _ in 0..1000 {
            match crash(&mut s, 0, now) {
                Decision::Restart { not_before } => {
                    last = not_before - now;
                    now = not_before;
                }
                Decision::GiveUp => panic!("the default policy gave up"),
            }
        }
        assert_eq!(last, Duration::from_secs(30), "capped at 30 s");
        // The other slot's first failure is immediate.
        assert_eq!(crash(&mut s, 1, now), Decision::Restart { not_before: now });
        assert!(s.check(now).is_ok());
        assert_eq!(s.total_restarts(), 1001);
    }

    #[test]
    fn window_slides() {
        let t0 = Instant::now();
        let mut s = RestartState::new(
            RestartPolicy::on_failure(2, Duration::from_secs(10)).backoff(Backoff::none()),
            1,
        );
        assert!(matches!(crash(&mut s, 0, t0), Decision::Restart { .. }));
        assert!(matches!(
            crash(&mut s, 0, t0 + Duration::from_secs(5)),
            Decision::Restart { .. }
        ));
        // The first restart left the window at t0+10s.
        assert!(matches!(
            crash(&mut s, 0, t0 + Duration::from_secs(11)),
            Decision::Restart { .. }
        ));
        assert_eq!(crash(&mut s, 0, t0 + Duration::from_secs(12)), Decision::GiveUp);
    }

    #[test]
    fn never_gives_up_at_once() {
        let t0 = Instant::now();
        let mut s = RestartState::new(RestartPolicy::never(), 1);
        assert_eq!(s.on_failure(0, t0, "segfault"), Decision::GiveUp);
        assert_eq!(s.check(t0).unwrap_err().reason, "segfault");
    }

    #[test]
    fn backoff_grows_and_caps_and_resets_on_success_or_healthy_period() {
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
        let mut s = RestartState::new(RestartPolicy::default().backoff(b).healthy_after(ms(1000)), 1);
        assert_eq!(crash(&mut s, 0, t0), Decision::Restart { not_before: t0 });
        assert_eq!(
            s.on_failure(0, t0 + ms(1), "x"),
            Decision::Restart {
                not_before: t0 + ms(101)
            }
        );
        assert_eq!(s.not_before(0), Some(t0 + ms(101)));
        assert_eq!(s.next_attempt(), Some(t0 + ms(101)));
        assert!(!s.is_quiet());
        s.on_restart(0, t0 + ms(101));
        assert_eq!(s.not_before(0), None);
        s.on_success(0);
        assert!(s.is_quiet());
        assert_eq!(
            s.on_failure(0, t0 + ms(200), "y"),
            Decision::Restart {
                not_before: t0 + ms(200)
            }
        );
        s.on_restart(0, t0 + ms(200));
        assert!(
            matches!(s.on_failure(0, t0 + ms(300), "z"), Decision::Restart { not_before } if not_before == t0 + ms(400))
        );
        s.on_restart(0, t0 + ms(400));
        // Up for the healthy period: the next failure restarts at once.
        assert_eq!(
            s.on_failure(0, t0 + ms(1400), "w"),
            Decision::Restart {
                not_before: t0 + ms(1400)
            }
        );
    }

    #[test]
    fn cool_down_clears_failure() {
        let t0 = Instant::now();
        let mut s = RestartState::new(RestartPolicy::never().cool_down(Duration::from_secs(30)), 1);
        assert_eq!(s.on_failure(0, t0, "hang"), Decision::GiveUp);
        assert!(s.check(t0 + Duration::from_secs(29)).is_err());
        assert!(s.check(t0 + Duration::from_secs(30)).is_ok());
        assert!(s.failed().is_none());
    }
}
