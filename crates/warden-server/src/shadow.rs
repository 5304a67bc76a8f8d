//! Shadow mode: a candidate policy evaluated beside a tenant's active version on every
//! decision, off the request's path, with the disagreements counted by kind.
//!
//! Key decision: a decision only *offers* its action to a bounded queue (one `try_send`);
//! a thread of its own evaluates the candidate and tallies. A slow or failing candidate
//! therefore never changes a live answer or its latency — when the queue is full the
//! action is dropped from the shadow's sample and counted as such.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use warden_policy::{Action, Decision, Env, Policy, Verdict};
use warden_store::PolicyVersionInfo;

/// How many actions may wait for shadow evaluation; past it they are dropped and counted.
const QUEUE: usize = 4096;

/// Sampled examples kept per kind of disagreement.
pub const EXAMPLES: usize = 20;

/// A candidate running beside one tenant's active version on this replica.
#[derive(Debug)]
pub struct Shadow {
    /// The stored shadow version.
    pub info: PolicyVersionInfo,
    policy: Policy,
    tally: Mutex<Tally>,
    dropped: AtomicU64,
}

/// What the shadow found: on one replica since it started there, or (merged) on all.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Tally {
    /// Decisions evaluated under both.
    pub decisions: u64,
    /// Of those, the ones with the same effect.
    pub agreed: u64,
    /// Disagreements by kind: `allow→deny`, `deny→allow`, `allow→require_approval`, …
    /// (live first).
    pub disagreements: BTreeMap<String, Disagreement>,
    /// Actions not evaluated because the queue was full.
    pub dropped: u64,
}

/// One kind of disagreement.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Disagreement {
    /// How many.
    pub count: u64,
    /// Up to [`EXAMPLES`] of them, the first ones seen.
    pub examples: Vec<Example>,
}

/// A disagreement, described without the action's values (as `GET /v1/policy/shadow`
/// shows it, too).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Example {
    /// The decision it shadowed.
    pub decision_id: String,
    /// The action type.
    pub action_type: String,
    /// The agent, if the action named one.
    pub agent: Option<String>,
    /// Rules that matched under the active version.
    pub live_rules: Vec<String>,
    /// Rules that matched under the candidate.
    pub shadow_rules: Vec<String>,
}

impl Tally {
    /// Adds `other`'s counts to these; examples up to [`EXAMPLES`] per kind.
    pub fn merge(&mut self, other: Tally) {
        self.decisions += other.decisions;
        self.agreed += other.agreed;
        self.dropped += other.dropped;
        for (kind, theirs) in other.disagreements {
            let ours = self.disagreements.entry(kind).or_default();
            ours.count += theirs.count;
            let room = EXAMPLES.saturating_sub(ours.examples.len());
            ours.examples.extend(theirs.examples.into_iter().take(room));
        }
    }
}

impl Shadow {
    /// A shadow of `policy`, the stored version `info`, with an empty tally.
    pub fn new(info: PolicyVersionInfo, policy: Policy) -> Self {
        Self {
            info,
            policy,
            tally: Mutex::new(Tally::default()),
            dropped: AtomicU64::new(0),
        }
    }

    /// The tally so far.
    pub fn tally(&self) -> Tally {
        let mut tally = self.tally.lock().map(|t| t.clone()).unwrap_or_default();
        tally.dropped = self.dropped.load(Ordering::Relaxed);
        tally
    }

    fn record(&self, offer: &Offer) {
        let decision = self.policy.evaluate(&offer.action, &offer.env);
        let Ok(mut tally) = self.tally.lock() else {
            return;
        };
        tally.decisions += 1;
        if decision.verdict == offer.live {
            tally.agreed += 1;
            return;
        }
        let kind = format!("{}→{}", offer.live.as_str(), decision.verdict.as_str());
        let entry = tally.disagreements.entry(kind).or_default();
        entry.count += 1;
        if entry.examples.len() < EXAMPLES {
            entry.examples.push(Example {
                decision_id: offer.decision_id.clone(),
                action_type: offer.action.kind.as_str().to_owned(),
                agent: offer.action.agent.clone(),
                live_rules: offer.live_rules.clone(),
                shadow_rules: rule_ids(&decision),
            });
        }
    }
}

fn rule_ids(decision: &Decision) -> Vec<String> {
    decision
        .matched_rules()
        .map(|r| r.as_str().to_owned())
        .collect()
}

/// An action waiting for its shadow evaluation.
struct Offer {
    shadow: Arc<Shadow>,
    action: Action,
    env: Env,
    live: Verdict,
    live_rules: Vec<String>,
    decision_id: String,
}

/// The queue decisions offer their actions to, and the thread that evaluates them.
#[derive(Debug)]
pub struct ShadowQueue {
    offers: SyncSender<Offer>,
}

impl std::fmt::Debug for Offer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offer")
            .field("decision_id", &self.decision_id)
            .finish_non_exhaustive()
    }
}

impl ShadowQueue {
    /// Starts the evaluating thread; it ends when the queue is dropped.
    pub fn start() -> std::io::Result<Self> {
        let (offers, queue) = std::sync::mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("warden-shadow".to_owned())
            .spawn(move || evaluate(&queue))?;
        Ok(Self { offers })
    }

    /// Offers a decided action to `shadow`: never blocks; a full queue drops it (counted).
    pub fn offer(
        &self,
        shadow: Arc<Shadow>,
        action: Action,
        env: Env,
        live: &Decision,
        decision_id: &str,
    ) {
        let offer = Offer {
            live: live.verdict,
            live_rules: rule_ids(live),
            decision_id: decision_id.to_owned(),
            shadow,
            action,
            env,
        };
        if let Err(TrySendError::Full(offer) | TrySendError::Disconnected(offer)) =
            self.offers.try_send(offer)
        {
            offer.shadow.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// How long the evaluator sleeps when the queue is empty. It polls rather than blocks so
/// that offering never has to wake a thread: a wake-up per decision cost more than the
/// shadow's evaluation itself.
const IDLE: std::time::Duration = std::time::Duration::from_millis(5);

fn evaluate(queue: &Receiver<Offer>) {
    loop {
        match queue.try_recv() {
            Ok(offer) => offer.shadow.record(&offer),
            Err(std::sync::mpsc::TryRecvError::Empty) => std::thread::sleep(IDLE),
            Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> PolicyVersionInfo {
        PolicyVersionInfo {
            tenant: "acme".into(),
            revision: 2,
            version: "2.0.0".into(),
            hash: "h".into(),
            parent: Some(1),
            author: "k".into(),
            comment: None,
            created_at_ms: 0,
            status: "shadow".into(),
        }
    }

    #[test]
    fn disagreements_are_counted_by_kind_with_examples_and_no_values() {
        let live = Policy::parse(
            "version: 1.0.0\ndefault: deny\nrules:\n  - id: tickets\n    actions: [ticket.*]\n    effect: allow\n",
        )
        .unwrap();
        let candidate = Policy::parse(
            "version: 2.0.0\ndefault: deny\nrules:\n  - id: no-resolve\n    actions: [ticket.resolve]\n    effect: deny\n  - id: tickets\n    actions: [ticket.*]\n    effect: allow\n",
        )
        .unwrap();
        let shadow = Arc::new(Shadow::new(info(), candidate));
        let queue = ShadowQueue::start().unwrap();
        let env = Env::default();
        for (n, kind) in [
            "ticket.update",
            "ticket.resolve",
            "ticket.resolve",
            "email.send",
        ]
        .iter()
        .enumerate()
        {
            let action = Action::from_json(
                format!(
                    r#"{{"type": "{kind}", "agent": "bot", "payload": {{"secret": "s3cret"}}}}"#
                )
                .as_bytes(),
            )
            .unwrap();
            let decision = live.evaluate(&action, &env);
            queue.offer(
                Arc::clone(&shadow),
                action,
                env.clone(),
                &decision,
                &format!("d{n}"),
            );
        }
        drop(queue);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while shadow.tally().decisions < 4 {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let tally = shadow.tally();
        assert_eq!((tally.decisions, tally.agreed, tally.dropped), (4, 2, 0));
        let flips = &tally.disagreements["allow→deny"];
        assert_eq!(flips.count, 2);
        assert_eq!(flips.examples[0].decision_id, "d1");
        assert_eq!(flips.examples[0].live_rules, ["tickets"]);
        assert_eq!(flips.examples[0].shadow_rules[0], "no-resolve");
        assert!(!format!("{tally:?}").contains("s3cret"));

        // Two replicas' tallies add up; examples stay capped.
        let mut fleet = tally.clone();
        fleet.merge(tally.clone());
        assert_eq!((fleet.decisions, fleet.agreed), (8, 4));
        assert_eq!(fleet.disagreements["allow→deny"].count, 4);
        assert_eq!(fleet.disagreements["allow→deny"].examples.len(), 4);
        let mut many = Tally::default();
        for _ in 0..30 {
            many.merge(tally.clone());
        }
        assert_eq!(many.disagreements["allow→deny"].examples.len(), EXAMPLES);
    }
}
