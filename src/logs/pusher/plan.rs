//! When the flusher sends, waits or retries: full batches at once, a
//! partial one after `linger` (or, when it began after a quiet spell of
//! `linger` and the plan settles, as soon as no event came for `settle`:
//! a line after a pause goes at once, a burst is batched), a failed one
//! after a jittered exponential backoff. Pure: time and the jitter's random number come in as
//! arguments, so every rule is tested without sleeping. It must not do
//! I/O or read the clock.

use std::time::{Duration, Instant};

use super::PushOptions;

/// The durations and sizes [`Plan`] works with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub batch_events: u64,
    pub batch_bytes: u64,
    pub linger: Duration,
    pub idle_tick: Duration,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub flush_retry_max: Duration,
}

impl From<&PushOptions> for Timing {
    fn from(o: &PushOptions) -> Timing {
        Timing {
            batch_events: o.batch_events,
            batch_bytes: o.batch_bytes as u64,
            linger: o.linger,
            idle_tick: o.idle_tick,
            retry_base: o.retry_base,
            retry_max: o.retry_max,
            flush_retry_max: o.flush_retry_max,
        }
    }
}

/// What the flusher does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    Send,
    /// Sleep until `until`, or until this many more events / bytes are
    /// pending (relative to what the server has), whichever comes first.
    Wait {
        until: Instant,
        wake: Option<(u64, u64)>,
    },
    /// Draining and nothing is left.
    Done,
}

/// How a send went, as far as scheduling cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Accepted,
    /// 401 and a new token: worth one immediate retry.
    Refreshed,
    Failed,
}

/// When to send: full batches at once, partial ones after `linger`,
/// failed ones after a jittered exponential backoff. Pure: time and
/// randomness come in as arguments.
#[derive(Debug)]
pub(crate) struct Plan {
    t: Timing,
    failures: u32,
    refreshes_in_row: u32,
    failed_at: Option<Instant>,
    retry_at: Option<Instant>,
    pending_since: Option<Instant>,
    /// Send a batch that began after a quiet spell once no event came for
    /// this long; `None`: partial batches always linger.
    settle: Option<Duration>,
    /// Since when nothing was pending (a quiet spell), if it still is or
    /// the pending batch has not been looked at yet.
    idle_since: Option<Instant>,
    /// The pending batch began after a quiet spell of at least `linger`.
    after_quiet: bool,
    /// When the newest pending event came (see [`Plan::note_event`]).
    last_event: Option<Instant>,
}

impl Plan {
    pub(crate) fn new(t: Timing) -> Plan {
        Plan {
            t,
            failures: 0,
            refreshes_in_row: 0,
            failed_at: None,
            retry_at: None,
            pending_since: None,
            settle: None,
            idle_since: None,
            after_quiet: false,
            last_event: None,
        }
    }

    /// The same plan, sending a batch that began after a quiet spell as
    /// soon as it settles (no event for `settle`). The first batch after
    /// the start is not after a quiet spell: a job's first events are
    /// batched with what follows.
    pub(crate) fn settling(self, settle: Duration) -> Plan {
        Plan {
            settle: Some(settle),
            ..self
        }
    }

    /// When the newest event was emitted (the flusher tells before each
    /// decision).
    pub(crate) fn note_event(&mut self, at: Option<Instant>) {
        self.last_event = at;
    }

    pub(crate) fn decide(
        &mut self,
        now: Instant,
        pending_events: u64,
        pending_bytes: u64,
        draining: bool,
    ) -> Step {
        if pending_events == 0 {
            self.pending_since = None;
            self.retry_at = None;
            self.idle_since.get_or_insert(now);
            return if draining {
                Step::Done
            } else {
                Step::Wait {
                    until: now + self.t.idle_tick,
                    wake: Some((1, 1)),
                }
            };
        }
        if let Some(mut at) = self.retry_at {
            if draining {
                // A long backoff set while the job ran must not eat the
                // drain's time.
                if let Some(failed) = self.failed_at {
                    at = at.min(failed + self.t.flush_retry_max);
                }
            }
            return if now >= at {
                Step::Send
            } else {
                Step::Wait {
                    until: at,
                    wake: None,
                }
            };
        }
        if draining || pending_events >= self.t.batch_events || pending_bytes >= self.t.batch_bytes
        {
            return Step::Send;
        }
        let since = match self.pending_since {
            Some(since) => since,
            None => {
                let quiet = self.idle_since.take();
                self.after_quiet =
                    quiet.is_some_and(|t| now.saturating_duration_since(t) >= self.t.linger);
                *self.pending_since.insert(now)
            }
        };
        let mut due = since + self.t.linger;
        if let (Some(settle), Some(last), true) = (self.settle, self.last_event, self.after_quiet) {
            due = due.min(last + settle);
        }
        if now >= due {
            Step::Send
        } else {
            Step::Wait {
                until: due,
                wake: Some((self.t.batch_events, self.t.batch_bytes)),
            }
        }
    }

    /// `unit` is a random number in [0, 1) for the jitter.
    pub(crate) fn on_result(&mut self, now: Instant, outcome: Outcome, unit: f64) {
        match outcome {
            Outcome::Accepted => {
                self.failures = 0;
                self.refreshes_in_row = 0;
                self.failed_at = None;
                self.retry_at = None;
                self.pending_since = None;
            }
            Outcome::Refreshed if self.refreshes_in_row == 0 => {
                self.refreshes_in_row = 1;
                self.failed_at = Some(now);
                self.retry_at = Some(now);
            }
            Outcome::Refreshed | Outcome::Failed => {
                if outcome == Outcome::Refreshed {
                    self.refreshes_in_row += 1;
                }
                self.failures = self.failures.saturating_add(1);
                self.failed_at = Some(now);
                self.retry_at = Some(now + backoff(&self.t, self.failures, unit));
            }
        }
    }
}

/// The delay before retry number `failures` (1-based): `retry_base`
/// doubled per failure, capped at `retry_max`, then jittered into its upper
/// half so many agents do not retry in step.
pub(crate) fn backoff(t: &Timing, failures: u32, unit: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    let full = t
        .retry_base
        .saturating_mul(1u32 << doublings)
        .min(t.retry_max);
    let half = full / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> Timing {
        Timing {
            batch_events: 2000,
            batch_bytes: 1_000_000,
            linger: Duration::from_millis(100),
            idle_tick: Duration::from_secs(1),
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(8),
            flush_retry_max: Duration::from_millis(400),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn idle_waits_a_tick_for_the_first_event_and_drain_of_nothing_is_done() {
        let t0 = Instant::now();
        let mut p = Plan::new(timing());
        assert_eq!(
            p.decide(t0, 0, 0, false),
            Step::Wait {
                until: t0 + ms(1000),
                wake: Some((1, 1))
            }
        );
        assert_eq!(p.decide(t0, 0, 0, true), Step::Done);
    }

    #[test]
    fn a_partial_batch_lingers_then_goes() {
        let t0 = Instant::now();
        let mut p = Plan::new(timing());
        assert_eq!(
            p.decide(t0, 5, 500, false),
            Step::Wait {
                until: t0 + ms(100),
                wake: Some((2000, 1_000_000))
            }
        );
        // More output does not push the deadline back.
        assert!(matches!(
            p.decide(t0 + ms(60), 50, 5000, false),
            Step::Wait { until, .. } if until == t0 + ms(100)
        ));
        assert_eq!(p.decide(t0 + ms(100), 50, 5000, false), Step::Send);
        p.on_result(t0 + ms(110), Outcome::Accepted, 0.5);
        // The next partial batch lingers from when it was first seen.
        assert!(matches!(
            p.decide(t0 + ms(120), 1, 10, false),
            Step::Wait { until, .. } if until == t0 + ms(220)
        ));
    }

    #[test]
    fn after_a_quiet_spell_a_settling_plan_sends_once_events_stop_coming() {
        let t0 = Instant::now();
        let mut p = Plan::new(timing()).settling(ms(5));
        // The first batch after the start lingers, as a job's first events
        // come with more.
        p.note_event(Some(t0));
        assert!(matches!(
            p.decide(t0, 1, 10, false),
            Step::Wait { until, .. } if until == t0 + ms(100)
        ));
        assert_eq!(p.decide(t0 + ms(100), 3, 30, false), Step::Send);
        p.on_result(t0 + ms(101), Outcome::Accepted, 0.5);
        // Nothing for 300 ms, then a line: it goes once nothing followed
        // it for 5 ms.
        assert!(matches!(
            p.decide(t0 + ms(102), 0, 0, false),
            Step::Wait { .. }
        ));
        let t1 = t0 + ms(400);
        p.note_event(Some(t1));
        assert_eq!(
            p.decide(t1, 1, 10, false),
            Step::Wait {
                until: t1 + ms(5),
                wake: Some((2000, 1_000_000))
            }
        );
        // Another event 3 ms later pushes that back; then it is sent.
        p.note_event(Some(t1 + ms(3)));
        assert!(matches!(
            p.decide(t1 + ms(5), 2, 20, false),
            Step::Wait { until, .. } if until == t1 + ms(8)
        ));
        assert_eq!(p.decide(t1 + ms(8), 2, 20, false), Step::Send);
        p.on_result(t1 + ms(9), Outcome::Accepted, 0.5);
        // Events during that send are a burst: they linger.
        p.note_event(Some(t1 + ms(9)));
        assert!(matches!(
            p.decide(t1 + ms(9), 4, 40, false),
            Step::Wait { until, .. } if until == t1 + ms(109)
        ));
        // A pause shorter than `linger` is no quiet spell either.
        assert_eq!(p.decide(t1 + ms(109), 4, 40, false), Step::Send);
        p.on_result(t1 + ms(110), Outcome::Accepted, 0.5);
        assert!(matches!(
            p.decide(t1 + ms(110), 0, 0, false),
            Step::Wait { .. }
        ));
        p.note_event(Some(t1 + ms(150)));
        assert!(matches!(
            p.decide(t1 + ms(150), 1, 10, false),
            Step::Wait { until, .. } if until == t1 + ms(250)
        ));
    }

    #[test]
    fn a_full_batch_or_a_drain_goes_at_once() {
        let t0 = Instant::now();
        let mut p = Plan::new(timing());
        assert_eq!(p.decide(t0, 2000, 10, false), Step::Send);
        assert_eq!(p.decide(t0, 3, 1_000_000, false), Step::Send);
        assert_eq!(p.decide(t0, 1, 10, true), Step::Send);
    }

    #[test]
    fn failures_back_off_exponentially_with_bounded_jitter() {
        let t = timing();
        assert_eq!(backoff(&t, 1, 0.0), ms(250));
        assert!(backoff(&t, 1, 0.999) <= ms(500));
        assert!(backoff(&t, 1, 0.999) > ms(499));
        assert_eq!(backoff(&t, 2, 0.0), ms(500));
        assert_eq!(backoff(&t, 3, 0.5), ms(1500));
        // Capped at retry_max however many failures.
        for n in [5, 6, 30, u32::MAX] {
            assert!(backoff(&t, n, 0.99) <= ms(8000));
            assert!(backoff(&t, n, 0.0) >= ms(4000));
        }
        let t0 = Instant::now();
        let mut p = Plan::new(t);
        p.on_result(t0, Outcome::Failed, 0.0);
        assert_eq!(
            p.decide(t0 + ms(10), 5, 5, false),
            Step::Wait {
                until: t0 + ms(250),
                wake: None
            }
        );
        assert_eq!(p.decide(t0 + ms(250), 5, 5, false), Step::Send);
        p.on_result(t0 + ms(260), Outcome::Failed, 0.0);
        assert!(matches!(
            p.decide(t0 + ms(261), 5, 5, false),
            Step::Wait { until, .. } if until == t0 + ms(760)
        ));
        p.on_result(t0 + ms(800), Outcome::Accepted, 0.0);
        assert_eq!(p.decide(t0 + ms(800), 2000, 5, false), Step::Send);
    }

    #[test]
    fn draining_shortens_a_long_backoff() {
        let t0 = Instant::now();
        let mut p = Plan::new(timing());
        for _ in 0..10 {
            p.on_result(t0, Outcome::Failed, 0.9);
        }
        assert!(matches!(
            p.decide(t0, 5, 5, false),
            Step::Wait { until, .. } if until >= t0 + ms(4000)
        ));
        assert_eq!(
            p.decide(t0, 5, 5, true),
            Step::Wait {
                until: t0 + ms(400),
                wake: None
            }
        );
    }

    #[test]
    fn one_refresh_retries_at_once_repeated_ones_back_off() {
        let t0 = Instant::now();
        let mut p = Plan::new(timing());
        p.on_result(t0, Outcome::Refreshed, 0.0);
        assert_eq!(p.decide(t0, 5, 5, false), Step::Send);
        p.on_result(t0, Outcome::Refreshed, 0.0);
        assert!(matches!(
            p.decide(t0, 5, 5, false),
            Step::Wait { wake: None, .. }
        ));
        p.on_result(t0 + ms(300), Outcome::Accepted, 0.0);
        p.on_result(t0 + ms(300), Outcome::Refreshed, 0.0);
        assert_eq!(p.decide(t0 + ms(300), 5, 5, false), Step::Send);
    }
}
