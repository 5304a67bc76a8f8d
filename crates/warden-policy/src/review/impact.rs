//! Step 5: replaying recorded decisions under the live policy and the candidate, so a human
//! (and the outcome) sees whose decisions would change.

use super::{Flip, FlipExample, Impact, Recorded};
use crate::action::Env;
use crate::decision::Verdict;
use crate::policy::{Policy, Replayed};

/// Examples kept per kind of flip.
const EXAMPLES: usize = 5;

/// The replay, and whether any flipped decision was another agent's than `proposer`'s.
pub(super) fn replay(
    live: &Policy,
    cand: &Policy,
    tenant: &str,
    recent: &[Recorded],
    proposer: Option<&str>,
) -> (Impact, bool) {
    let mut impact = Impact {
        replayed: recent.len(),
        ..Impact::default()
    };
    let mut others = false;
    for r in recent {
        let env = Env::new(tenant, r.at);
        let (before, after) = match (
            live.replay(&r.snapshot, &env),
            cand.replay(&r.snapshot, &env),
        ) {
            (Replayed::Decided(b), Replayed::Decided(a)) => (b, a),
            _ => {
                impact.unknown += 1;
                continue;
            }
        };
        if before == after {
            impact.same += 1;
            continue;
        }
        others |= r.agent.as_deref() != proposer || proposer.is_none();
        let flip = match impact
            .flips
            .iter_mut()
            .position(|f| f.from == before && f.to == after)
        {
            Some(i) => &mut impact.flips[i],
            None => {
                impact.flips.push(Flip {
                    from: before,
                    to: after,
                    count: 0,
                    examples: Vec::new(),
                });
                let last = impact.flips.len() - 1;
                &mut impact.flips[last]
            }
        };
        flip.count += 1;
        if flip.examples.len() < EXAMPLES {
            flip.examples.push(FlipExample {
                decision_id: r.decision_id.clone(),
                agent: r.agent.clone(),
                action_type: r.snapshot.action_type().unwrap_or_default().to_owned(),
            });
        }
    }
    impact.flips.sort_by_key(|f| (rank(f.from), rank(f.to)));
    (impact, others)
}

fn rank(v: Verdict) -> u8 {
    match v {
        Verdict::Deny => 0,
        Verdict::RequireApproval => 1,
        Verdict::Allow => 2,
    }
}
