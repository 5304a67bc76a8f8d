//! Automatic rollback: a newly activated policy version is watched over its first decisions
//! on each replica, and if too many of them fail to evaluate, its parent is published back.
//!
//! Key decision: counting is two relaxed atomic increments on the decision path, and only
//! while a watch is open; the decision to roll back is taken once per watch (a flag set by
//! the decision that closes it), and the rollback itself is an ordinary publish that loses
//! cleanly if another replica rolled back first.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// When a new version is rolled back for its evaluation errors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AutoRollback {
    /// Roll back when more than this fraction of the watched decisions failed to evaluate
    /// (0 < rate ≤ 1). `None` turns automatic rollback off.
    pub max_error_rate: Option<f64>,
    /// The watch covers a version's first this many decisions on a replica…
    pub decisions: u64,
    /// …or its first this long after activation, whichever ends first. A watch that ends
    /// by time with fewer than [`AutoRollback::MIN_DECISIONS`] decisions judges nothing.
    pub window: Duration,
}

impl AutoRollback {
    /// Fewer decisions than this say too little to roll back on.
    pub const MIN_DECISIONS: u64 = 10;
}

impl Default for AutoRollback {
    fn default() -> Self {
        Self {
            max_error_rate: Some(0.1),
            decisions: 100,
            window: Duration::from_secs(600),
        }
    }
}

/// The figures a rollback is decided on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// Decisions watched.
    pub decisions: u64,
    /// Of those, evaluation errors.
    pub errors: u64,
    /// The threshold that was passed.
    pub max_error_rate: f64,
}

/// One version under watch on this replica.
#[derive(Debug)]
pub struct Watch {
    /// The watched revision.
    pub revision: i64,
    /// The revision to restore.
    pub parent: i64,
    settings: AutoRollback,
    started: Instant,
    decisions: AtomicU64,
    errors: AtomicU64,
    closed: AtomicBool,
}

impl Watch {
    /// Opens a watch of `revision`, whose parent is `parent`.
    pub fn new(revision: i64, parent: i64, settings: AutoRollback) -> Self {
        Self {
            revision,
            parent,
            settings,
            started: Instant::now(),
            decisions: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        }
    }

    /// Whether the watch no longer counts.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Counts one decision of the watched revision. Returns the figures when this decision
    /// closes the watch over the threshold (exactly once per watch): roll back.
    pub fn observe(&self, failed: bool) -> Option<Verdict> {
        if self.is_closed() {
            return None;
        }
        let decisions = self.decisions.fetch_add(1, Ordering::Relaxed) + 1;
        let errors = if failed {
            self.errors.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.errors.load(Ordering::Relaxed)
        };
        let rate = self.settings.max_error_rate?;
        let by_time = self.started.elapsed() >= self.settings.window;
        if decisions < self.settings.decisions && !by_time {
            return None;
        }
        if self.closed.swap(true, Ordering::Relaxed) {
            return None;
        }
        let over =
            decisions >= AutoRollback::MIN_DECISIONS && errors as f64 > rate * decisions as f64;
        over.then_some(Verdict {
            decisions,
            errors,
            max_error_rate: rate,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(rate: f64, decisions: u64) -> Watch {
        Watch::new(
            2,
            1,
            AutoRollback {
                max_error_rate: Some(rate),
                decisions,
                window: Duration::from_secs(3600),
            },
        )
    }

    #[test]
    fn the_decision_that_closes_the_watch_over_the_threshold_says_roll_back_once() {
        let w = watch(0.1, 20);
        for n in 0..19 {
            assert_eq!(w.observe(n % 4 == 0), None);
        }
        let verdict = w.observe(false).unwrap();
        assert_eq!((verdict.decisions, verdict.errors), (20, 5));
        assert_eq!(w.observe(true), None, "once per watch");
        assert!(w.is_closed());
    }

    #[test]
    fn a_version_under_the_threshold_is_kept() {
        let w = watch(0.1, 20);
        for n in 0..30 {
            assert_eq!(w.observe(n == 3 || n == 7), None);
        }
        assert!(w.is_closed());
    }

    #[test]
    fn too_few_decisions_judge_nothing_and_off_means_off() {
        let w = Watch::new(
            2,
            1,
            AutoRollback {
                max_error_rate: Some(0.1),
                decisions: 100,
                window: Duration::ZERO,
            },
        );
        assert_eq!(w.observe(true), None, "one decision says too little");
        let off = Watch::new(
            2,
            1,
            AutoRollback {
                max_error_rate: None,
                ..AutoRollback::default()
            },
        );
        for _ in 0..200 {
            assert_eq!(off.observe(true), None);
        }
    }
}
