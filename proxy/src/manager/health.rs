//! The health check's bookkeeping per daemon, kept free of I/O so it is testable with
//! made-up instants: whether the daemon should be running, how often it was restarted,
//! and the backoff of a crash loop.
//!
//! Rules: a daemon is *wanted* once it was started or ensured through the manager, or
//! seen running by a health check; `stop` un-wants it. A wanted daemon found dead is
//! restarted at once, unless it died soon after its last (re)start or its restart
//! failed: then each further attempt waits twice as long as the one before (starting at
//! one health interval, capped), and after [`CRASH_LOOP_AFTER`] such failures in a row
//! it is reported as `crash-loop`. Staying up for [`Policy::stable`] clears the count.

use std::time::{Duration, Instant};

/// Consecutive failures after which a daemon is reported as `crash-loop`.
pub const CRASH_LOOP_AFTER: u32 = 2;
const MAX_BACKOFF: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// The health check interval; also the first backoff step.
    pub interval: Duration,
    /// Up this long after a (re)start counts as a successful restart.
    pub stable: Duration,
    pub max_backoff: Duration,
}

impl Policy {
    pub fn for_interval(interval: Duration) -> Policy {
        Policy { interval, stable: interval * 2, max_backoff: MAX_BACKOFF.max(interval) }
    }

    /// The delay before the next attempt after `failures` failures in a row (>= 1).
    pub fn backoff(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(20));
        self.interval.saturating_mul(factor).min(self.max_backoff)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Nothing,
    Restart,
}

#[derive(Debug, Clone, Default)]
pub struct Watch {
    pub wanted: bool,
    /// Restarts by the health check since the manager started.
    pub restarts: u32,
    /// Failed or short-lived (re)starts in a row.
    pub failures: u32,
    /// A start (by anyone through the manager) is under way.
    pub starting: bool,
    pub last_error: Option<String>,
    next_attempt: Option<Instant>,
    last_start: Option<Instant>,
}

impl Watch {
    /// One health check. `alive`: the daemon answers; `coming_up`: its process lives but
    /// does not answer yet (someone else is starting it), which is left alone.
    pub fn on_tick(&mut self, alive: bool, coming_up: bool, now: Instant, policy: &Policy) -> Action {
        if alive {
            self.wanted = true;
            if self.last_start.is_none_or(|s| now.duration_since(s) >= policy.stable) {
                self.failures = 0;
                self.next_attempt = None;
            }
            return Action::Nothing;
        }
        if !self.wanted || self.starting || coming_up {
            return Action::Nothing;
        }
        if let Some(due) = self.next_attempt {
            // Ticks are not exact: half an interval early is on time.
            if now + policy.interval / 2 < due {
                return Action::Nothing;
            }
            self.next_attempt = None;
            return Action::Restart;
        }
        // Freshly found dead.
        let quick = self.last_start.is_some_and(|s| now.duration_since(s) < policy.stable);
        if !quick {
            self.failures = 0;
            return Action::Restart;
        }
        self.failures += 1;
        self.next_attempt = Some(now + policy.backoff(self.failures));
        Action::Nothing
    }

    /// The health check is about to restart it.
    pub fn begin_restart(&mut self, now: Instant) {
        self.restarts += 1;
        self.begin_start(now);
    }

    /// A start is about to happen (health check, or a user's start/ensure).
    pub fn begin_start(&mut self, now: Instant) {
        self.starting = true;
        self.last_start = Some(now);
    }

    /// A user asked for it to run: a fresh start, whatever the crash history.
    pub fn wanted_by_user(&mut self) {
        self.wanted = true;
        self.failures = 0;
        self.next_attempt = None;
    }

    /// The start finished; a failure grows the backoff.
    pub fn end_start(&mut self, result: Result<(), String>, now: Instant, policy: &Policy) {
        self.starting = false;
        match result {
            Ok(()) => self.last_error = None,
            Err(e) => {
                self.failures += 1;
                self.next_attempt = Some(now + policy.backoff(self.failures));
                self.last_error = Some(e);
            }
        }
    }

    /// A user stopped it: leave it down.
    pub fn stopped_by_user(&mut self) {
        self.wanted = false;
        self.failures = 0;
        self.next_attempt = None;
    }

    pub fn crash_loop(&self) -> bool {
        self.failures >= CRASH_LOOP_AFTER
    }

    /// The current backoff delay, while one is in effect.
    pub fn backoff(&self, policy: &Policy) -> Option<Duration> {
        (self.failures > 0 && self.wanted).then(|| policy.backoff(self.failures))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::for_interval(Duration::from_secs(10))
    }

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        let p = policy();
        let steps: Vec<u64> = (1..=8).map(|f| p.backoff(f).as_secs()).collect();
        assert_eq!(steps, [10, 20, 40, 80, 160, 320, 600, 600]);
        assert_eq!(p.backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn unwanted_daemons_are_left_alone_and_running_ones_become_wanted() {
        let (p, t0) = (policy(), Instant::now());
        let mut w = Watch::default();
        assert_eq!(w.on_tick(false, false, t0, &p), Action::Nothing);
        assert_eq!(w.on_tick(true, false, t0, &p), Action::Nothing);
        assert!(w.wanted);
        // Seen running once, then dead: restarted at once.
        assert_eq!(w.on_tick(false, false, t0 + p.interval, &p), Action::Restart);
        w.stopped_by_user();
        assert_eq!(w.on_tick(false, false, t0 + p.interval * 2, &p), Action::Nothing);
    }

    #[test]
    fn a_daemon_coming_up_is_not_restarted() {
        let (p, t0) = (policy(), Instant::now());
        let mut w = Watch { wanted: true, ..Watch::default() };
        assert_eq!(w.on_tick(false, true, t0, &p), Action::Nothing);
        w.begin_start(t0);
        assert_eq!(w.on_tick(false, false, t0, &p), Action::Nothing, "a start is under way");
    }

    #[test]
    fn a_crash_loop_backs_off_more_each_time() {
        let (p, t0) = (policy(), Instant::now());
        let mut w = Watch::default();
        w.wanted_by_user();
        w.begin_start(t0);
        w.end_start(Err("exited".into()), t0, &p);
        assert_eq!((w.failures, w.crash_loop()), (1, false));
        let mut now = t0;
        let mut gaps = Vec::new();
        let mut last_restart = t0;
        // Tick every interval for a while; record the gaps between restarts.
        for _ in 0..60 {
            now += p.interval;
            if w.on_tick(false, false, now, &p) == Action::Restart {
                gaps.push((now - last_restart).as_secs());
                last_restart = now;
                w.begin_restart(now);
                w.end_start(Err("exited".into()), now, &p);
            }
        }
        assert_eq!(gaps, [10, 20, 40, 80, 160], "{gaps:?}");
        assert_eq!(w.restarts, 5);
        assert!(w.crash_loop());
        assert_eq!(w.backoff(&p), Some(Duration::from_secs(320)));
        assert_eq!(w.last_error.as_deref(), Some("exited"));
        // A user's start clears the history.
        w.wanted_by_user();
        assert!(!w.crash_loop());
    }

    #[test]
    fn dying_soon_after_a_restart_counts_as_a_failure() {
        let (p, t0) = (policy(), Instant::now());
        let mut w = Watch { wanted: true, ..Watch::default() };
        assert_eq!(w.on_tick(false, false, t0, &p), Action::Restart);
        w.begin_restart(t0);
        w.end_start(Ok(()), t0, &p);
        // Dead again one tick later: wait a backoff step instead of restarting.
        assert_eq!(w.on_tick(false, false, t0 + p.interval, &p), Action::Nothing);
        assert_eq!(w.failures, 1);
        assert_eq!(w.on_tick(false, false, t0 + p.interval * 2, &p), Action::Restart);
        w.begin_restart(t0 + p.interval * 2);
        w.end_start(Ok(()), t0 + p.interval * 2, &p);
        // This time it stays up past the stable period: the history is cleared.
        assert_eq!(w.on_tick(true, false, t0 + p.interval * 3, &p), Action::Nothing);
        assert_eq!(w.failures, 1);
        assert_eq!(w.on_tick(true, false, t0 + p.interval * 5, &p), Action::Nothing);
        assert_eq!(w.failures, 0);
        // And a later death is restarted at once.
        assert_eq!(w.on_tick(false, false, t0 + p.interval * 20, &p), Action::Restart);
    }
}
