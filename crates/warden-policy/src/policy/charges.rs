//! Which counters an allowed action charges: the budgets and rate limits it falls under,
//! what it adds to each, and each ceiling, as plain integers the store can check and update
//! atomically with the decision's audit append.
//!
//! Key decision: the core decides everything about counting (which counters, their keys,
//! units, windows, expiry, the deny message) and the store only adds integers under the
//! chain lock. Money is counted in millionths of a dollar so that a sum is exact: a $5
//! budget never lets $5.000001 through because of floating-point rounding. Rate limits use
//! fixed windows keyed by the window's start: a window is one counter, exact under any
//! concurrency, and it resets at a time the caller can be told (`resets_at`).

use std::time::Duration;

use super::Policy;
use super::model::{Budget, Per};
use crate::action::{Action, Env, Timestamp};

/// How long a run's counters outlive the run's `duration` before they are pruned, so an
/// action that arrives just after the end is still told the run is over.
pub const RUN_GRACE: Duration = Duration::from_secs(3600);

/// How long the counters of a run without a `duration` limit are kept after its last
/// allowed action. A run idle for this long is over; its counters are pruned.
pub const RUN_IDLE: Duration = Duration::from_secs(24 * 3600);

/// Whether a charge comes from a budget or a rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    /// A `budgets:` entry.
    Budget,
    /// A `rate_limits:` entry.
    RateLimit,
}

impl LimitKind {
    /// The name used in counters and on the wire: `budget` or `rate_limit`.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Budget => "budget",
            LimitKind::RateLimit => "rate_limit",
        }
    }

    /// The reason code of a deny by this kind of limit.
    pub fn reason_code(self) -> &'static str {
        match self {
            LimitKind::Budget => "budget_exceeded",
            LimitKind::RateLimit => "rate_limited",
        }
    }
}

/// What a counter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Counter {
    /// `usage.tool_calls` (1 when the action does not say).
    ToolCalls,
    /// `usage.tokens`.
    Tokens,
    /// `usage.cost_usd`, in millionths of a dollar.
    CostUsd,
    /// One per allowed action.
    Turns,
    /// Milliseconds since the run's first allowed action; the counter holds that start.
    Duration,
    /// Allowed actions matching a budget's `count` or a rate limit's `actions`.
    Actions,
}

impl Counter {
    /// Every counter.
    pub const ALL: [Counter; 6] = [
        Counter::ToolCalls,
        Counter::Tokens,
        Counter::CostUsd,
        Counter::Turns,
        Counter::Duration,
        Counter::Actions,
    ];

    /// The counter's name, as in the policy's limits (`actions` for `count` and rate limits).
    pub fn as_str(self) -> &'static str {
        match self {
            Counter::ToolCalls => "tool_calls",
            Counter::Tokens => "tokens",
            Counter::CostUsd => "cost_usd",
            Counter::Turns => "turns",
            Counter::Duration => "duration",
            Counter::Actions => "actions",
        }
    }

    /// The counter named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// A stored amount in the unit callers see: dollars for `cost_usd`, seconds for
    /// `duration`, a count otherwise.
    pub fn display(self, amount: i64) -> f64 {
        match self {
            Counter::CostUsd => amount as f64 / MICROS_PER_USD,
            Counter::Duration => amount as f64 / 1000.0,
            _ => amount as f64,
        }
    }

    /// How much of its limit a counter holding `stored` has used at `now_ms`, in stored
    /// units: the time since the start for `duration`, the stored sum otherwise.
    pub fn used(self, stored: i64, now_ms: i64) -> i64 {
        if self.is_elapsed() {
            return now_ms.saturating_sub(stored).max(0);
        }
        stored
    }

    /// Whether the stored value is a start time and the limit a span (only `duration`).
    pub fn is_elapsed(self) -> bool {
        self == Counter::Duration
    }
}

const MICROS_PER_USD: f64 = 1_000_000.0;

/// When a counter may be pruned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expiry {
    /// At this time (unix ms), fixed when the counter is created.
    FromFirstUse(i64),
    /// At this time (unix ms), moved on by every charge.
    FromLastUse(i64),
}

/// One counter an allowed action charges, with its ceiling. Amounts are integers in the
/// counter's stored unit (see [`Counter`]). It serializes so that an approval can hold the
/// charges of the action it waits on until it is granted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Charge {
    /// Budget or rate limit.
    pub kind: LimitKind,
    /// The budget's or rate limit's id.
    pub id: String,
    /// What it counts per.
    pub per: Per,
    /// The agent the counter belongs to; empty for `per: tenant`.
    pub agent: String,
    /// The run the counter belongs to; empty unless `per: run`.
    pub run: String,
    /// What is counted.
    pub counter: Counter,
    /// The start of the rate limit's window (unix ms); 0 for budgets.
    pub window_start_ms: i64,
    /// What the action adds; 0 for `duration`, whose counter holds the run's start.
    pub delta: i64,
    /// The ceiling: the counter may reach it, never pass it.
    pub limit: i64,
    /// The decision's time (unix ms).
    pub now_ms: i64,
    /// When the counter starts again from zero (a rate limit's window end).
    pub resets_at_ms: Option<i64>,
    /// When the counter may be pruned.
    pub expiry: Expiry,
}

impl Charge {
    /// Whether a counter at `current` (its stored value, or `None` when there is none) can
    /// take this charge; for `duration`, `current` is the run's start.
    pub fn fits(&self, current: Option<i64>) -> bool {
        if self.counter.is_elapsed() {
            let start = current.unwrap_or(self.now_ms);
            return self.now_ms.saturating_sub(start) <= self.limit;
        }
        current.unwrap_or(0).saturating_add(self.delta) <= self.limit
    }

    /// The counter's value after this charge (`current` as for [`Charge::fits`]).
    pub fn apply(&self, current: Option<i64>) -> i64 {
        if self.counter.is_elapsed() {
            return current.unwrap_or(self.now_ms);
        }
        current.unwrap_or(0).saturating_add(self.delta)
    }

    /// What the caller is shown as the counter's current value, in stored units: the time
    /// the run has lasted for `duration`, the stored sum otherwise.
    pub fn used(&self, current: Option<i64>) -> i64 {
        current.map_or(0, |v| self.counter.used(v, self.now_ms))
    }

    /// The same charge made at `now_ms` instead of at the decision: an approved action
    /// charges its counters when the approval is granted, in the window and run that are
    /// current then.
    pub fn at(&self, now_ms: i64) -> Charge {
        let mut charge = self.clone();
        let shift = now_ms.saturating_sub(self.now_ms);
        charge.now_ms = now_ms;
        match (self.kind, self.resets_at_ms) {
            (LimitKind::RateLimit, Some(end)) => {
                let window = end.saturating_sub(self.window_start_ms).max(1);
                let start = now_ms - now_ms.rem_euclid(window);
                let end = start.saturating_add(window);
                charge.window_start_ms = start;
                charge.resets_at_ms = Some(end);
                charge.expiry = Expiry::FromFirstUse(end);
            }
            _ => {
                let moved = |at: i64| {
                    if at == i64::MAX {
                        at
                    } else {
                        at.saturating_add(shift)
                    }
                };
                charge.expiry = match self.expiry {
                    Expiry::FromFirstUse(at) => Expiry::FromFirstUse(moved(at)),
                    Expiry::FromLastUse(at) => Expiry::FromLastUse(moved(at)),
                };
            }
        }
        charge
    }

    /// The message of the deny when the counter at `current` could not take this charge.
    /// It names the limit, the counter, the ceiling and the current value, never the run
    /// id or anything else from the action.
    pub fn deny_message(&self, current: Option<i64>) -> String {
        let c = self.counter;
        let used = self.used(current);
        let shown = |v: i64| trim(c.display(v));
        match (self.kind, c) {
            (LimitKind::Budget, Counter::Duration) => format!(
                "budget `{}` is used up: the run has lasted {}s of its {}s `duration`",
                self.id,
                shown(used),
                shown(self.limit),
            ),
            (LimitKind::Budget, _) => format!(
                "budget `{}` is used up: `{}` would reach {} of {} ({} used)",
                self.id,
                c.as_str(),
                shown(used.saturating_add(self.delta)),
                shown(self.limit),
                shown(used),
            ),
            (LimitKind::RateLimit, _) => {
                let resets = self
                    .resets_at_ms
                    .and_then(Timestamp::from_unix_millis)
                    .map(|t| format!("; the window resets at {t}"))
                    .unwrap_or_default();
                format!(
                    "rate limit `{}` reached: {} of {} actions in this window{}",
                    self.id,
                    shown(used),
                    shown(self.limit),
                    resets,
                )
            }
        }
    }
}

/// `x` as Rust prints a float: `5` for 5.0, so counts read as counts.
fn trim(x: f64) -> String {
    format!("{x}")
}

/// Dollars as millionths, rounded to the nearest; a ceiling in dollars converts the same
/// way, so equal amounts compare equal.
fn micros(usd: f64) -> i64 {
    let m = (usd * MICROS_PER_USD).round();
    if m >= i64::MAX as f64 {
        i64::MAX
    } else {
        m as i64
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn whole(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Policy {
    /// The counters an allowed `action` charges at `env.now`, and their ceilings. The server
    /// calls this only for an allow: a denied action consumes nothing.
    ///
    /// Budgets charge every action (`count` only matching ones); `per: run` budgets only
    /// actions that carry a `run_id`. A charge whose delta is zero is left out: it could
    /// not take a counter past its ceiling.
    pub fn charges(&self, action: &Action, env: &Env) -> Vec<Charge> {
        let now = env.now.unix_millis();
        let agent = action.agent.as_deref().unwrap_or("");
        let mut out = Vec::new();
        for b in self.budgets() {
            let Some((agent, run)) = subject(b.per, agent, action.run_id.as_deref()) else {
                continue;
            };
            let expiry = budget_expiry(b, now);
            let mut push = |counter: Counter, delta: i64, limit: i64| {
                if delta == 0 && !counter.is_elapsed() {
                    return;
                }
                out.push(Charge {
                    kind: LimitKind::Budget,
                    id: b.id.clone(),
                    per: b.per,
                    agent: agent.to_owned(),
                    run: run.to_owned(),
                    counter,
                    window_start_ms: 0,
                    delta,
                    limit,
                    now_ms: now,
                    resets_at_ms: None,
                    expiry,
                });
            };
            let usage = action.usage.as_ref();
            let l = &b.limits;
            if let Some(limit) = l.tool_calls {
                let n = usage.and_then(|u| u.tool_calls).unwrap_or(1);
                push(Counter::ToolCalls, whole(n), whole(limit));
            }
            if let Some(limit) = l.tokens {
                let n = usage.and_then(|u| u.tokens).unwrap_or(0);
                push(Counter::Tokens, whole(n), whole(limit));
            }
            if let Some(limit) = l.cost_usd {
                let usd = usage.and_then(|u| u.cost_usd).unwrap_or(0.0);
                push(Counter::CostUsd, micros(usd), micros(limit));
            }
            if let Some(limit) = l.turns {
                push(Counter::Turns, 1, whole(limit));
            }
            if let Some(limit) = l.duration {
                push(Counter::Duration, 0, millis(limit));
            }
            if let Some(count) = &b.count
                && count
                    .actions
                    .iter()
                    .any(|g| g.matches(action.kind.as_str()))
            {
                push(Counter::Actions, 1, whole(count.limit));
            }
        }
        for r in self.rate_limits() {
            if !r.actions.iter().any(|g| g.matches(action.kind.as_str())) {
                continue;
            }
            let Some((agent, run)) = subject(r.per, agent, action.run_id.as_deref()) else {
                continue;
            };
            let window = millis(r.window).max(1);
            let start = now - now.rem_euclid(window);
            let end = start.saturating_add(window);
            out.push(Charge {
                kind: LimitKind::RateLimit,
                id: r.id.clone(),
                per: r.per,
                agent: agent.to_owned(),
                run: run.to_owned(),
                counter: Counter::Actions,
                window_start_ms: start,
                delta: 1,
                limit: whole(r.limit),
                now_ms: now,
                resets_at_ms: Some(end),
                expiry: Expiry::FromFirstUse(end),
            });
        }
        out
    }
}

/// The (agent, run) a counter of `per` belongs to; `None` for a run limit and an action
/// without a run. A run's counters are the agent's too, so one agent cannot spend (or
/// exhaust) another agent's run by naming it.
fn subject<'a>(per: Per, agent: &'a str, run: Option<&'a str>) -> Option<(&'a str, &'a str)> {
    match per {
        Per::Tenant => Some(("", "")),
        Per::Agent => Some((agent, "")),
        Per::Run => Some((agent, run?)),
    }
}

fn budget_expiry(b: &Budget, now: i64) -> Expiry {
    match (b.per, b.limits.duration) {
        (Per::Run, Some(d)) => Expiry::FromFirstUse(
            now.saturating_add(millis(d))
                .saturating_add(millis(RUN_GRACE)),
        ),
        (Per::Run, None) => Expiry::FromLastUse(now.saturating_add(millis(RUN_IDLE))),
        // An agent's or a tenant's budget lasts as long as the policy has it.
        _ => Expiry::FromFirstUse(i64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::parse(
            r#"
version: 1.0.0
budgets:
  - {id: per-run, per: run, limits: {tool_calls: 3, tokens: 100, cost_usd: 5, turns: 10, duration: 30m}}
  - {id: pipelines, per: run, count: {actions: ["ci.*"], limit: 2}}
  - {id: agent-spend, per: agent, limits: {cost_usd: 20}}
rate_limits:
  - {id: email-burst, actions: [email.send], per: tenant, limit: 2, window: 1m}
"#,
        )
        .unwrap()
    }

    fn action(json: &str) -> Action {
        Action::from_json(json.as_bytes()).unwrap()
    }

    fn env(ms: i64) -> Env {
        Env::new("t", Timestamp::from_unix_millis(ms).unwrap())
    }

    fn names(charges: &[Charge]) -> Vec<String> {
        charges
            .iter()
            .map(|c| format!("{}/{}", c.id, c.counter.as_str()))
            .collect()
    }

    #[test]
    fn an_action_charges_the_counters_of_its_budgets_and_rate_limits() {
        let p = policy();
        let a = action(
            r#"{"type": "email.send", "agent": "bot", "run_id": "r1",
                "usage": {"tokens": 40, "cost_usd": 0.13}}"#,
        );
        let c = p.charges(&a, &env(90_000));
        assert_eq!(
            names(&c),
            [
                "per-run/tool_calls",
                "per-run/tokens",
                "per-run/cost_usd",
                "per-run/turns",
                "per-run/duration",
                "agent-spend/cost_usd",
                "email-burst/actions",
            ]
        );
        assert_eq!((c[0].delta, c[1].delta, c[2].delta), (1, 40, 130_000));
        assert_eq!(c[2].limit, 5_000_000);
        assert_eq!((c[0].agent.as_str(), c[0].run.as_str()), ("bot", "r1"));
        assert_eq!((c[5].agent.as_str(), c[5].run.as_str()), ("bot", ""));
        let rate = &c[6];
        assert_eq!((rate.agent.as_str(), rate.window_start_ms), ("", 60_000));
        assert_eq!(rate.resets_at_ms, Some(120_000));
        assert_eq!(rate.expiry, Expiry::FromFirstUse(120_000));
        assert_eq!(
            c[0].expiry,
            Expiry::FromFirstUse(90_000 + 1_800_000 + 3_600_000)
        );
    }

    #[test]
    fn a_charge_made_later_falls_in_the_window_and_run_of_that_time() {
        let p = policy();
        let a = action(
            r#"{"type": "email.send", "agent": "bot", "run_id": "r1", "usage": {"cost_usd": 1}}"#,
        );
        let asked = p.charges(&a, &env(90_000));
        // Granted 20 minutes later: what the action would be charged had it been asked then.
        let granted: Vec<Charge> = asked.iter().map(|c| c.at(1_290_000)).collect();
        assert_eq!(granted, p.charges(&a, &env(1_290_000)));
        let rate = granted.last().unwrap();
        assert_eq!(rate.window_start_ms, 1_260_000);
        assert_eq!(rate.resets_at_ms, Some(1_320_000));
        // An agent's budget never expires, however late it is charged.
        let agent = granted.iter().find(|c| c.id == "agent-spend").unwrap();
        assert_eq!(agent.expiry, Expiry::FromFirstUse(i64::MAX));
        // What an approval stores reads back as the same charge.
        let text = serde_json::to_string(&asked).unwrap();
        assert_eq!(serde_json::from_str::<Vec<Charge>>(&text).unwrap(), asked);
    }

    #[test]
    fn run_budgets_need_a_run_and_count_only_matching_actions() {
        let p = policy();
        let without_run = p.charges(&action(r#"{"type": "ci.run", "agent": "bot"}"#), &env(0));
        assert!(without_run.is_empty(), "{:?}", names(&without_run));
        let c = p.charges(
            &action(r#"{"type": "ci.run", "agent": "bot", "run_id": "r"}"#),
            &env(0),
        );
        assert!(names(&c).contains(&"pipelines/actions".to_owned()));
    }

    #[test]
    fn ceilings_may_be_reached_never_passed() {
        let p = policy();
        let a = action(r#"{"type": "x", "run_id": "r", "usage": {"cost_usd": 0.01}}"#);
        let cost = p
            .charges(&a, &env(0))
            .into_iter()
            .find(|c| c.counter == Counter::CostUsd)
            .unwrap();
        // 499 charges of a cent plus this one reach $5 exactly; one more would pass it.
        assert!(cost.fits(Some(4_990_000)));
        assert!(!cost.fits(Some(5_000_000)));
        let big = action(r#"{"type": "x", "run_id": "r", "usage": {"cost_usd": 0.14}}"#);
        let cost = p
            .charges(&big, &env(0))
            .into_iter()
            .find(|c| c.counter == Counter::CostUsd)
            .unwrap();
        assert!(!cost.fits(Some(4_990_000)));
        assert_eq!(
            cost.deny_message(Some(4_990_000)),
            "budget `per-run` is used up: `cost_usd` would reach 5.13 of 5 (4.99 used)"
        );
    }

    #[test]
    fn a_run_lasts_its_duration_from_its_first_action() {
        let p = policy();
        let a = action(r#"{"type": "x", "run_id": "r"}"#);
        let at = |ms| {
            p.charges(&a, &env(ms))
                .into_iter()
                .find(|c| c.counter == Counter::Duration)
                .unwrap()
        };
        assert!(at(0).fits(None));
        assert_eq!(at(0).apply(None), 0);
        assert!(at(1_800_000).fits(Some(0)));
        let late = at(1_800_001);
        assert!(!late.fits(Some(0)));
        assert_eq!(
            late.deny_message(Some(0)),
            "budget `per-run` is used up: the run has lasted 1800.001s of its 1800s `duration`"
        );
    }

    #[test]
    fn rate_limit_messages_say_when_the_window_resets() {
        let p = policy();
        let c = p.charges(&action(r#"{"type": "email.send"}"#), &env(61_000));
        let rate = c.last().unwrap();
        assert_eq!(
            rate.deny_message(Some(2)),
            "rate limit `email-burst` reached: 2 of 2 actions in this window; the window \
             resets at 1970-01-01T00:02:00Z"
        );
    }

    #[test]
    fn duration_is_only_for_runs_and_count_needs_actions() {
        for (source, expected) in [
            (
                "version: 1.0.0\nbudgets:\n  - {id: b, per: agent, limits: {duration: 1h}}\n",
                "`duration` applies only to budgets with `per: run`",
            ),
            (
                "version: 1.0.0\nbudgets:\n  - {id: b, per: run}\n",
                "a budget needs `limits` or `count`",
            ),
            (
                "version: 1.0.0\nbudgets:\n  - {id: b, per: run, count: {actions: [], limit: 1}}\n",
                "`actions` must list at least one",
            ),
        ] {
            let e = Policy::parse(source).unwrap_err().to_string();
            assert!(e.contains(expected), "{source}: {e}");
        }
    }
}
