//! The connect path's state machine, as plain values: one pppd link through the phases
//! `pppgate.so` takes it (docs/ARCHITECTURE.md, "The connect path"), and the decisions on the
//! way — the apply window, the backoff between attempts, when the window is exhausted, how long
//! the cleanup waits for the apply lock — as pure functions. The plugin performs the [`Action`]s
//! these transitions return (schedule a pppd timer, end the link, log); nothing here touches
//! pppd, the kernel or SQL, so every transition is unit-tested.
//!
//! ```text
//!   Connecting ──ip-up──▶ Applying ──applied──▶ Applied
//!        │                 │  ▲ lock busy, within the window: retry from a pppd timer
//!        │                 │  └─┘
//!        └─ any failure ───┴──────▶ Ending ──ip-down/exit──▶ Cleaned
//!   (ip-down/exit from any phase cleans up; a pending retry is cancelled, never run)
//! ```
//!
//! `T` is the plugin's timer handle (`shim::TimerId`).

use std::time::{Duration, Instant};

use crate::config::APPLY_WINDOW_CAP;
use crate::metrics::events::Outcome;
use crate::policy::planner::DesiredSession;

/// The first backoff step; doubled per attempt up to [`BACKOFF_MAX`].
pub const BACKOFF_START: Duration = Duration::from_millis(10);
pub const BACKOFF_MAX: Duration = Duration::from_millis(250);
/// How long ip-down waits for the apply lock before cleaning up without it (removals only,
/// idempotent; the next reconcile converges whatever raced).
pub const CLEANUP_LOCK_WAIT: Duration = Duration::from_millis(1500);

/// The apply window: SQL's `settings.connect_apply_window_s` when it could be read, else the
/// configured fallback; never above [`APPLY_WINDOW_CAP`].
pub fn apply_window(from_sql: Option<Duration>, fallback: Duration) -> Duration {
    from_sql.unwrap_or(fallback).min(APPLY_WINDOW_CAP)
}

/// The pause after attempt number `attempts` (1-based) found the lock busy: 10 ms doubling per
/// attempt, at most 250 ms.
pub fn backoff(attempts: u32) -> Duration {
    (BACKOFF_START * (1u32 << attempts.min(6))).min(BACKOFF_MAX)
}

/// What a busy lock means at `now`: another attempt after a pause (never past the deadline, at
/// least 1 ms), or the window is used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    RetryAfter(Duration),
    Exhausted,
}

pub fn on_lock_busy(now: Instant, deadline: Instant, attempts: u32) -> Busy {
    if now >= deadline {
        return Busy::Exhausted;
    }
    Busy::RetryAfter(backoff(attempts).min(deadline - now).max(Duration::from_millis(1)))
}

/// What a connect does when it finds `inet pppgate` missing (the first connects after boot, or
/// after someone removed the table) and has just tried the apply lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableStep {
    /// It holds the lock: build the table, restoring every session's membership (not only its
    /// own) — after looking once more, since another writer may have finished meanwhile.
    Build,
    /// Another writer (a pppd, reconcile, the guard) holds the lock and is building the table:
    /// look again after this pause.
    LookAgainAfter(Duration),
    /// The connect window is used up: end the link (fail closed).
    Exhausted,
}

/// The decision of [`TableStep`]: with the lock, build; without it, wait for the writer that
/// has it — with the apply backoff, never past the connect window's `deadline` — instead of
/// ending the link after a fixed 2 s (issue 10: 4 of 8 simultaneous first dials were ended).
pub fn on_table_missing(lock_taken: bool, now: Instant, deadline: Instant, attempts: u32) -> TableStep {
    if lock_taken {
        return TableStep::Build;
    }
    match on_lock_busy(now, deadline, attempts) {
        Busy::RetryAfter(pause) => TableStep::LookAgainAfter(pause),
        Busy::Exhausted => TableStep::Exhausted,
    }
}

/// The connect path's progress while the policy is being applied.
#[derive(Debug, Clone)]
pub struct Applying<T> {
    /// This session's desired state, computed at ip-up from SQL.
    pub desired: DesiredSession,
    /// When ip-up started: the window and the "gate released" figure count from here.
    pub started: Instant,
    /// Set when the lock was first found busy: `started` + the window.
    pub deadline: Option<Instant>,
    /// Attempts made so far.
    pub attempts: u32,
    /// The pppd timer of the next attempt, while one is scheduled.
    pub timer: Option<T>,
    /// Connect-path figures for the log (µs): SQL connect + lookup, mapping write.
    pub sql_us: u64,
    pub mapping_us: u64,
}

/// Where one link is.
#[derive(Debug, Clone, Default)]
pub enum Phase<T> {
    /// Before ip-up: at most the connect gate is set.
    #[default]
    Connecting,
    /// ip-up looked the user up and wrote the mapping; the policy is being applied (a retry may
    /// be scheduled).
    Applying(Box<Applying<T>>),
    /// The policy is in place and the gate released.
    Applied,
    /// The link is being ended through pppd (fail closed).
    Ending {
        reason: String,
        /// The apply lock stayed busy for the whole window: the cleanup does not wait for it again.
        lock_exhausted: bool,
    },
    /// ip-down or exit removed this session's state; nothing runs again. `reason`: why the link
    /// was ended, if it was.
    Cleaned { reason: Option<String> },
}

/// The outcome of one apply attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Applied,
    /// The apply lock is held by someone else (`holder`: who, for the log).
    LockBusy {
        holder: Option<String>,
    },
    /// Anything else: taking the lock, validating, applying or verifying failed.
    Failed(String),
}

/// What the plugin must do after a transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<T> {
    Nothing,
    /// Schedule the next attempt from a pppd timer after this long (then [`Phase::retry_scheduled`]).
    Retry(Duration),
    /// The policy is applied: log the connect-path figures.
    Applied {
        attempts: u32,
        sql_us: u64,
        mapping_us: u64,
        since_up: Duration,
    },
    /// End the link through pppd. `log`: the first failure of this link (log `reason` once);
    /// `cancel`: a scheduled retry to cancel first; `outcome`: how the connect ended, when this
    /// end is the end of a connect still in progress (Connecting or Applying) — the plugin
    /// records it once for `pppgate_connects_total`; `None` for a link already applied or ending.
    End {
        reason: String,
        log: bool,
        cancel: Option<T>,
        outcome: Option<Outcome>,
    },
}

/// What ip-down / exit must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cleanup<T> {
    /// A scheduled retry to cancel (it must never run after the cleanup).
    pub cancel: Option<T>,
    /// How long to wait for the apply lock before cleaning up without it.
    pub lock_wait: Duration,
}

impl<T> Phase<T> {
    /// ip-up found the session and wrote its mapping: the first attempt comes next.
    pub fn start_applying(&mut self, desired: DesiredSession, started: Instant, sql_us: u64, mapping_us: u64) {
        if matches!(self, Phase::Connecting) {
            *self = Phase::Applying(Box::new(Applying {
                desired,
                started,
                deadline: None,
                attempts: 0,
                timer: None,
                sql_us,
                mapping_us,
            }));
        }
    }

    /// The next attempt begins (from ip-up or its timer): counts it and returns the session to
    /// apply, or `None` when the link is no longer applying (ended or cleaned up meanwhile).
    pub fn begin_attempt(&mut self) -> Option<DesiredSession> {
        match self {
            Phase::Applying(a) => {
                a.timer = None;
                a.attempts += 1;
                Some(a.desired.clone())
            }
            _ => None,
        }
    }

    /// The retry [`Action::Retry`] asked for is scheduled as `timer`.
    pub fn retry_scheduled(&mut self, timer: T) {
        if let Phase::Applying(a) = self {
            a.timer = Some(timer);
        }
    }

    /// An attempt's outcome at `now`. `window` is asked once, the first time the lock is busy
    /// (the plugin reads it from SQL then).
    pub fn attempted(&mut self, outcome: Attempt, now: Instant, window: impl FnOnce() -> Duration) -> Action<T> {
        let Phase::Applying(a) = self else { return Action::Nothing };
        match outcome {
            Attempt::Applied => {
                let done = Action::Applied {
                    attempts: a.attempts,
                    sql_us: a.sql_us,
                    mapping_us: a.mapping_us,
                    since_up: now.saturating_duration_since(a.started),
                };
                *self = Phase::Applied;
                done
            }
            Attempt::LockBusy { holder } => {
                let started = a.started;
                let deadline = *a.deadline.get_or_insert_with(|| started + window());
                match on_lock_busy(now, deadline, a.attempts) {
                    Busy::RetryAfter(wait) => Action::Retry(wait),
                    Busy::Exhausted => {
                        let by = holder.map(|h| format!(" by {h}")).unwrap_or_default();
                        let reason = format!(
                            "policy not applied: the apply lock stayed busy{by} for the whole window ({} attempts)",
                            a.attempts
                        );
                        self.end(reason, Outcome::EndedWindow)
                    }
                }
            }
            Attempt::Failed(reason) => self.end(reason, Outcome::EndedError),
        }
    }

    /// Fail closed: the link is ended for `reason` (SQL error, mapping, apply, ...).
    pub fn fail(&mut self, reason: impl Into<String>) -> Action<T> {
        self.end(reason.into(), Outcome::EndedError)
    }

    /// Fail closed because the lookup refused the login (no usable row, several rows, not
    /// allowed online, no authenticated name): the same end, counted as `refused_lookup`.
    pub fn refuse(&mut self, reason: impl Into<String>) -> Action<T> {
        self.end(reason.into(), Outcome::RefusedLookup)
    }

    fn end(&mut self, reason: String, why: Outcome) -> Action<T> {
        let lock_exhausted = why == Outcome::EndedWindow;
        match std::mem::take(self) {
            Phase::Connecting => {
                *self = Phase::Ending { reason: reason.clone(), lock_exhausted };
                Action::End { reason, log: true, cancel: None, outcome: Some(why) }
            }
            // Counted as applied already.
            Phase::Applied => {
                *self = Phase::Ending { reason: reason.clone(), lock_exhausted };
                Action::End { reason, log: true, cancel: None, outcome: None }
            }
            Phase::Applying(a) => {
                *self = Phase::Ending { reason: reason.clone(), lock_exhausted };
                Action::End { reason, log: true, cancel: a.timer, outcome: Some(why) }
            }
            // Already ending: pppd is asked again, the reason is not logged twice.
            Phase::Ending { reason: first, lock_exhausted: was } => {
                *self = Phase::Ending { reason: first, lock_exhausted: was || lock_exhausted };
                Action::End { reason, log: false, cancel: None, outcome: None }
            }
            Phase::Cleaned { reason: first } => {
                let log = first.is_none();
                *self = Phase::Cleaned { reason: first.or_else(|| Some(reason.clone())) };
                Action::End { reason, log, cancel: None, outcome: None }
            }
        }
    }

    /// ip-down or exit: `None` when the cleanup already ran. Otherwise the phase becomes
    /// `Cleaned`, a scheduled retry is handed back for cancelling (it never runs), and the lock
    /// wait is zero after a window the lock stayed busy for — pppd runs ip-down before it sends
    /// the LCP Terminate-Request, so waiting again would only delay the end of the session.
    pub fn cleanup(&mut self) -> Option<Cleanup<T>> {
        let (cancel, reason, lock_wait) = match std::mem::take(self) {
            Phase::Cleaned { reason } => {
                *self = Phase::Cleaned { reason };
                return None;
            }
            Phase::Connecting | Phase::Applied => (None, None, CLEANUP_LOCK_WAIT),
            Phase::Applying(a) => (a.timer, None, CLEANUP_LOCK_WAIT),
            Phase::Ending { reason, lock_exhausted } => {
                (None, Some(reason), if lock_exhausted { Duration::ZERO } else { CLEANUP_LOCK_WAIT })
            }
        };
        *self = Phase::Cleaned { reason };
        Some(Cleanup { cancel, lock_wait })
    }

    /// The reason the link is being ended, if it is.
    pub fn failure(&self) -> Option<&str> {
        match self {
            Phase::Ending { reason, .. } => Some(reason),
            Phase::Cleaned { reason } => reason.as_deref(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::{Policy, PolicyState, Reason, Speed};

    type P = Phase<u32>;

    fn desired() -> DesiredSession {
        DesiredSession {
            ifname: "ppp0".into(),
            ifindex: 3,
            client_ip: "100.64.0.2".parse().unwrap(),
            connection_id: 7,
            pppd_pid: Some(4242),
            policy: Policy {
                state: PolicyState::Full,
                reason: Reason::Active,
                speed: Speed::default(),
                routes: vec![],
                pbr: vec![],
            },
        }
    }

    const WINDOW: Duration = Duration::from_secs(10);

    fn applying(t0: Instant) -> P {
        let mut p = P::Connecting;
        p.start_applying(desired(), t0, 100, 20);
        p
    }

    #[test]
    fn window_and_backoff() {
        assert_eq!(apply_window(Some(Duration::from_secs(3)), WINDOW), Duration::from_secs(3));
        assert_eq!(apply_window(None, WINDOW), WINDOW, "SQL slow or down: the fallback at once");
        assert_eq!(apply_window(Some(Duration::from_secs(60)), WINDOW), APPLY_WINDOW_CAP);
        let steps: Vec<u64> = (1..=8).map(|n| backoff(n).as_millis() as u64).collect();
        assert_eq!(steps, [20, 40, 80, 160, 250, 250, 250, 250]);
        let t0 = Instant::now();
        let d = t0 + Duration::from_millis(30);
        assert_eq!(on_lock_busy(t0, d, 3), Busy::RetryAfter(Duration::from_millis(30)), "never past the deadline");
        assert_eq!(on_lock_busy(d, d, 3), Busy::Exhausted);
        assert_eq!(on_lock_busy(d + Duration::from_millis(1), d, 1), Busy::Exhausted);
    }

    #[test]
    fn a_missing_table_is_built_by_the_lock_holder_and_waited_for_by_everyone_else() {
        let t0 = Instant::now();
        let deadline = t0 + WINDOW;
        assert_eq!(on_table_missing(true, t0, deadline, 1), TableStep::Build);
        assert_eq!(on_table_missing(true, deadline, deadline, 9), TableStep::Build, "the lock is never wasted");
        // Eight simultaneous first connects: seven find the lock busy while the first builds.
        // Still waiting after 3 s (the old bound was 2 s), with the apply backoff.
        assert_eq!(on_table_missing(false, t0, deadline, 1), TableStep::LookAgainAfter(backoff(1)));
        assert_eq!(
            on_table_missing(false, t0 + Duration::from_secs(3), deadline, 20),
            TableStep::LookAgainAfter(BACKOFF_MAX)
        );
        // Never past the window, and ended once it is used up.
        assert_eq!(
            on_table_missing(false, deadline - Duration::from_millis(3), deadline, 20),
            TableStep::LookAgainAfter(Duration::from_millis(3))
        );
        assert_eq!(on_table_missing(false, deadline, deadline, 21), TableStep::Exhausted);
    }

    #[test]
    fn lock_busy_within_the_window_schedules_a_retry() {
        let t0 = Instant::now();
        let mut p = applying(t0);
        assert!(p.begin_attempt().is_some());
        let mut asked = 0;
        let a = p.attempted(Attempt::LockBusy { holder: None }, t0, || {
            asked += 1;
            WINDOW
        });
        assert_eq!(a, Action::Retry(backoff(1)));
        p.retry_scheduled(11);
        let Phase::Applying(ap) = &p else { panic!("{p:?}") };
        assert_eq!((ap.deadline, ap.timer, ap.attempts), (Some(t0 + WINDOW), Some(11), 1));
        // The timer fires: the next attempt clears it; a second busy reads no window again.
        assert!(p.begin_attempt().is_some());
        let a = p.attempted(Attempt::LockBusy { holder: None }, t0 + Duration::from_secs(1), || {
            asked += 1;
            WINDOW
        });
        assert_eq!(a, Action::Retry(backoff(2)));
        assert_eq!(asked, 1, "the window is read once");
        // Then the lock is free.
        p.begin_attempt();
        let a = p.attempted(Attempt::Applied, t0 + Duration::from_secs(2), || WINDOW);
        assert_eq!(a, Action::Applied { attempts: 3, sql_us: 100, mapping_us: 20, since_up: Duration::from_secs(2) });
        assert!(matches!(p, Phase::Applied));
        assert!(p.begin_attempt().is_none(), "nothing runs after the apply");
    }

    #[test]
    fn window_exhausted_ends_the_link() {
        let t0 = Instant::now();
        let mut p = applying(t0);
        p.begin_attempt();
        assert_eq!(p.attempted(Attempt::LockBusy { holder: None }, t0, || WINDOW), Action::Retry(backoff(1)));
        p.retry_scheduled(5);
        p.begin_attempt();
        let a = p.attempted(Attempt::LockBusy { holder: Some("pid 99 (reconcile)".into()) }, t0 + WINDOW, || {
            unreachable!("the window was read already")
        });
        let Action::End { reason, log: true, cancel: None, outcome: Some(Outcome::EndedWindow) } = a else {
            panic!("{a:?}")
        };
        assert!(reason.contains("stayed busy by pid 99 (reconcile) for the whole window (2 attempts)"), "{reason}");
        assert!(matches!(p, Phase::Ending { lock_exhausted: true, .. }));
        assert!(p.begin_attempt().is_none());
    }

    #[test]
    fn sql_error_ends_the_link() {
        // ip-up: the lookup fails before anything is applied.
        let mut p = P::Connecting;
        let a = p.fail("connection lookup failed: database unavailable");
        assert_eq!(
            a,
            Action::End {
                reason: "connection lookup failed: database unavailable".into(),
                log: true,
                cancel: None,
                outcome: Some(Outcome::EndedError)
            }
        );
        assert_eq!(p.failure(), Some("connection lookup failed: database unavailable"));
        assert!(p.begin_attempt().is_none(), "no apply after a failed lookup");
        // pppd asks again (e.g. the exit notifier): logged once.
        assert!(matches!(p.fail("again"), Action::End { log: false, outcome: None, .. }), "counted once");
        assert_eq!(p.cleanup(), Some(Cleanup { cancel: None, lock_wait: CLEANUP_LOCK_WAIT }));
    }

    #[test]
    fn apply_error_ends_the_link() {
        let t0 = Instant::now();
        let mut p = applying(t0);
        p.begin_attempt();
        let a = p.attempted(Attempt::Failed("policy apply failed: verify: set full_v4".into()), t0, || WINDOW);
        assert_eq!(
            a,
            Action::End {
                reason: "policy apply failed: verify: set full_v4".into(),
                log: true,
                cancel: None,
                outcome: Some(Outcome::EndedError)
            }
        );
        assert!(matches!(p, Phase::Ending { lock_exhausted: false, .. }));
        assert_eq!(p.cleanup().map(|c| c.lock_wait), Some(CLEANUP_LOCK_WAIT));
    }

    #[test]
    fn ip_down_during_retries_cancels_the_retry_and_cleans_up_once() {
        let t0 = Instant::now();
        let mut p = applying(t0);
        p.begin_attempt();
        assert!(matches!(p.attempted(Attempt::LockBusy { holder: None }, t0, || WINDOW), Action::Retry(_)));
        p.retry_scheduled(42);
        // ip-down while the retry is pending: the timer is cancelled, the cleanup runs.
        assert_eq!(p.cleanup(), Some(Cleanup { cancel: Some(42), lock_wait: CLEANUP_LOCK_WAIT }));
        assert!(p.begin_attempt().is_none(), "the cancelled retry never applies anything");
        assert_eq!(p.cleanup(), None, "exit after ip-down: nothing again");
        assert_eq!(p.failure(), None);
    }

    #[test]
    fn cleanup_after_an_exhausted_window_does_not_wait_for_the_lock_again() {
        let t0 = Instant::now();
        let mut p = applying(t0);
        p.begin_attempt();
        p.attempted(Attempt::LockBusy { holder: None }, t0, || WINDOW);
        p.retry_scheduled(1);
        p.begin_attempt();
        assert!(matches!(p.attempted(Attempt::LockBusy { holder: None }, t0 + WINDOW, || WINDOW), Action::End { .. }));
        assert_eq!(p.cleanup(), Some(Cleanup { cancel: None, lock_wait: Duration::ZERO }));
        assert!(p.failure().unwrap().contains("stayed busy"));
    }

    #[test]
    fn failing_while_a_retry_is_pending_cancels_it() {
        let t0 = Instant::now();
        let mut p = applying(t0);
        p.begin_attempt();
        p.attempted(Attempt::LockBusy { holder: None }, t0, || WINDOW);
        p.retry_scheduled(9);
        assert_eq!(
            p.fail("lcp down"),
            Action::End { reason: "lcp down".into(), log: true, cancel: Some(9), outcome: Some(Outcome::EndedError) }
        );
    }

    /// `pppgate_connects_total{outcome}`: every connect the plugin ends or applies is counted
    /// exactly once, with the outcome that decided it.
    #[test]
    fn each_connect_has_exactly_one_outcome() {
        let outcome = |a: &Action<u32>| match a {
            Action::End { outcome, .. } => *outcome,
            Action::Applied { .. } => Some(Outcome::Applied),
            _ => None,
        };
        let t0 = Instant::now();
        // The lookup refuses the login at ip-up (before anything is applied).
        let mut p = P::Connecting;
        assert_eq!(outcome(&p.refuse("no usable vpn_connections row")), Some(Outcome::RefusedLookup));
        assert_eq!(p.failure(), Some("no usable vpn_connections row"));
        assert_eq!(outcome(&p.fail("again")), None);
        p.cleanup();
        assert_eq!(outcome(&p.fail("after the cleanup")), None);
        // Applied, then something ends the link: counted as applied only.
        let mut p = applying(t0);
        p.begin_attempt();
        assert_eq!(outcome(&p.attempted(Attempt::Applied, t0, || WINDOW)), Some(Outcome::Applied));
        assert_eq!(outcome(&p.fail("later")), None);
        // The window used up.
        let mut p = applying(t0);
        p.begin_attempt();
        let a = p.attempted(Attempt::LockBusy { holder: None }, t0 + WINDOW, || WINDOW);
        assert_eq!(outcome(&a), Some(Outcome::EndedWindow));
        assert!(matches!(p, Phase::Ending { lock_exhausted: true, .. }));
        // A refusal while applying (SQL said Terminate) and an error while connecting.
        assert_eq!(outcome(&applying(t0).refuse("must not be online")), Some(Outcome::RefusedLookup));
        assert_eq!(outcome(&P::Connecting.fail("the nft table cannot be created")), Some(Outcome::EndedError));
    }
}
