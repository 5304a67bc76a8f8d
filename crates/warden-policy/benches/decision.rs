//! `cargo bench -p warden-policy`: the cost of one decision on the Nexus policy plus N rules
//! on other actions, against cedar-policy on the equivalent policy set and against the `cel`
//! crate's interpreter on a single condition.
//!
//! Then replaying a candidate policy over a stored decision snapshot (issue 11), per replay and
//! as a batch's throughput, with and without reading the snapshot's bytes first.
//!
//! Each decision is timed on its own (two `Instant::now()` calls around it), so the median
//! and p99 are of single decisions, including the timer's own overhead, which is printed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::str::FromStr;
use std::time::{Duration, Instant};
use warden_policy::{Action, Env, Policy, Replayed, Snapshot, Timestamp, Verdict};

mod common;

use common::warden_policy;
const SIZES: [usize; 5] = [0, 10, 100, 1_000, 10_000];
/// Per measurement: at most this many samples, and about this much time.
const MAX_SAMPLES: usize = 200_000;
const BUDGET: Duration = Duration::from_secs(2);

const ACTION: &str = r#"{
  "type": "ticket.resolve", "target": {"type": "ticket", "id": "T-1042"}, "confidence": 0.92,
  "mode": "auto", "agent": "support-bot", "on_behalf_of": "user-991", "app": "helpdesk",
  "run_id": "run-77", "payload": {"resolution": "refund issued", "external": false, "amount": 40},
  "context": {"ticket": {"flags": ["vip"], "priority": "high"}, "user": {"role": "agent"}},
  "usage": {"tokens": 1200, "cost_usd": 0.004, "tool_calls": 1}
}"#;

/// The Nexus policy plus one more candidate rule for `ticket.resolve` whose condition reads
/// the hour in Berlin (false at the benchmark's `now`, so the decision is unchanged).
fn with_berlin_hours() -> String {
    warden_policy(0).replace(
        "\nbudgets:",
        "\n  - id: no-late-resolves\n    actions: [ticket.resolve]\n    when: now.getHours(\"Europe/Berlin\") == 3\n    effect: deny\nbudgets:",
    )
}

/// The same decisions in Cedar. Cedar has no globs, obligations or require_approval, so
/// prefix rules become explicit action lists and approvals become forbids; conditions and
/// the per-rule work are the same.
fn cedar_policies(n: usize) -> String {
    let mut text = String::from(
        r#"
forbid(principal, action == Action::"ticket.resolve", resource)
  when { context.confidence.lessThan(decimal("0.85")) };
forbid(principal, action == Action::"email.send", resource)
  when { context.user.role == "restricted" && context.payload.external == true };
forbid(principal, action == Action::"ticket.escalate", resource)
  when { context.ticket.flags.contains("legal_sensitive") };
forbid(principal, action == Action::"billing.refund", resource)
  when { context.app == "helpdesk" && context.payload.amount > 500 };
permit(principal in Group::"support",
  action in [Action::"ticket.resolve", Action::"ticket.escalate", Action::"ticket.get", Action::"email.send", Action::"billing.refund"],
  resource);
permit(principal == Agent::"triage-bot", action in [Action::"ticket.get", Action::"ticket.list"], resource);
"#,
    );
    for i in 0..n {
        let action = if i % 4 == 3 {
            format!("other{i}.run")
        } else {
            format!("svc{i}.op")
        };
        text.push_str(&format!(
            "forbid(principal, action == Action::\"{action}\", resource) when {{ context.payload.amount > {i} }};\n"
        ));
    }
    text
}

struct Stats {
    median: Duration,
    p99: Duration,
}

fn measure(mut f: impl FnMut()) -> Stats {
    // Warm up, and size the run so slow engines still finish in about BUDGET.
    let t = Instant::now();
    for _ in 0..100 {
        f();
    }
    let each = t.elapsed() / 100;
    let n = (BUDGET.as_nanos() / each.as_nanos().max(1)).clamp(2_000, MAX_SAMPLES as u128) as usize;
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f();
        samples.push(t.elapsed());
    }
    samples.sort_unstable();
    Stats {
        median: samples[n / 2],
        p99: samples[n * 99 / 100],
    }
}

/// Calls per second of `f`, on one core, timed as one batch (no per-call timer).
fn per_second(mut f: impl FnMut()) -> f64 {
    const BATCH: u32 = 1_000_000;
    for _ in 0..10_000 {
        f();
    }
    let t = Instant::now();
    for _ in 0..BATCH {
        f();
    }
    f64::from(BATCH) / t.elapsed().as_secs_f64()
}

fn ns(d: Duration) -> String {
    format!("{:>7} ns", d.as_nanos())
}

fn main() {
    // cargo passes `--bench`; any other argument is a filter we do not support, so ignore.
    let env = Env::new(
        "nexus",
        Timestamp::from_unix_seconds(1_700_000_000).unwrap(),
    );
    let action = Action::from_json(ACTION.as_bytes()).unwrap();
    let timer = measure(|| {});
    println!(
        "timer overhead (empty closure): median {}, p99 {}",
        ns(timer.median),
        ns(timer.p99)
    );
    println!();
    println!(
        "{:>6} | {:>21} | {:>21} | {:>7} | {:>10}",
        "N", "warden median / p99", "cedar median / p99", "ratio", "compile"
    );
    println!("{}", "-".repeat(80));

    let authorizer = cedar_policy::Authorizer::new();
    let entities = cedar_policy::Entities::from_json_str(
        r#"[{"uid": {"type": "Agent", "id": "support-bot"}, "attrs": {}, "parents": [{"type": "Group", "id": "support"}]},
            {"uid": {"type": "Group", "id": "support"}, "attrs": {}, "parents": []}]"#,
        None,
    )
    .unwrap();
    let context = cedar_policy::Context::from_json_value(
        serde_json::json!({
            "confidence": {"__extn": {"fn": "decimal", "arg": "0.92"}},
            "app": "helpdesk",
            "payload": {"resolution": "refund issued", "external": false, "amount": 40},
            "ticket": {"flags": ["vip"], "priority": "high"},
            "user": {"role": "agent"}
        }),
        None,
    )
    .unwrap();
    let request = cedar_policy::Request::new(
        cedar_policy::EntityUid::from_str(r#"Agent::"support-bot""#).unwrap(),
        cedar_policy::EntityUid::from_str(r#"Action::"ticket.resolve""#).unwrap(),
        cedar_policy::EntityUid::from_str(r#"Ticket::"T-1042""#).unwrap(),
        context,
        None,
    )
    .unwrap();

    for n in SIZES {
        let source = warden_policy(n);
        let t = Instant::now();
        let policy = Policy::parse(&source).unwrap_or_else(|e| panic!("{e}"));
        let compile = t.elapsed();
        let decision = policy.evaluate(&action, &env);
        assert_eq!(decision.verdict, Verdict::Allow, "{:?}", decision.reasons);
        let warden = measure(|| {
            black_box(policy.evaluate(black_box(&action), black_box(&env)));
        });

        let cedar_set = cedar_policy::PolicySet::from_str(&cedar_policies(n)).unwrap();
        let answer = authorizer.is_authorized(&request, &cedar_set, &entities);
        assert_eq!(answer.decision(), cedar_policy::Decision::Allow);
        let cedar = measure(|| {
            black_box(authorizer.is_authorized(black_box(&request), &cedar_set, &entities));
        });
        let ratio = cedar.median.as_nanos() as f64 / warden.median.as_nanos().max(1) as f64;
        println!(
            "{n:>6} | {} / {} | {} / {} | {ratio:>6.1}x | {:>7.1} ms",
            ns(warden.median),
            ns(warden.p99),
            ns(cedar.median),
            ns(cedar.p99),
            compile.as_secs_f64() * 1e3
        );
    }

    // The cost of a time-zone accessor: the same decision with one more candidate rule
    // reading `now.getHours("Europe/Berlin")`, against the plain N = 0 policy, interleaved
    // so machine noise hits both alike.
    let base = Policy::parse(&warden_policy(0)).unwrap();
    let berlin = Policy::parse(&with_berlin_hours()).unwrap();
    assert_eq!(berlin.evaluate(&action, &env).verdict, Verdict::Allow);
    assert_eq!(
        berlin.evaluate(&action, &env).reasons.len(),
        base.evaluate(&action, &env).reasons.len()
    );
    let mut pairs = Vec::new();
    for _ in 0..5 {
        let plain = measure(|| {
            black_box(base.evaluate(black_box(&action), black_box(&env)));
        });
        let zoned = measure(|| {
            black_box(berlin.evaluate(black_box(&action), black_box(&env)));
        });
        pairs.push((plain.median, zoned.median));
    }
    pairs.sort_by_key(|(p, z)| z.as_nanos() as i128 - p.as_nanos() as i128);
    let (plain, zoned) = pairs[pairs.len() / 2];
    println!();
    println!(
        "now.getHours(\"Europe/Berlin\"): N = 0 median {} -> {} with the extra condition ({:+} ns)",
        ns(plain),
        ns(zoned),
        zoned.as_nanos() as i128 - plain.as_nanos() as i128
    );

    // What one CEL condition costs in the cel crate's interpreter when the action has to be
    // handed to it per request: the reason conditions are compiled to our own form instead.
    let program = cel::Program::compile("action.confidence < 0.85").unwrap();
    let action_json: serde_json::Value = serde_json::from_str(ACTION).unwrap();
    let interpreted = measure(|| {
        let mut ctx = cel::Context::default();
        ctx.add_variable("action", black_box(&action_json)).unwrap();
        black_box(program.execute(&ctx).unwrap());
    });
    println!();
    println!(
        "cel crate interpreter, one condition incl. handing it the action: median {}, p99 {}",
        ns(interpreted.median),
        ns(interpreted.p99)
    );

    // Replaying a candidate over recorded traffic: Nexus records the snapshot, and the
    // candidate is Nexus with a stricter confidence bar, which flips this allow to a deny.
    let snapshot = base.snapshot(&action);
    let bytes = snapshot.to_json_bytes();
    assert_eq!(
        base.replay(&snapshot, &env),
        Replayed::Decided(Verdict::Allow)
    );
    println!();
    println!(
        "snapshot of the action ({} bytes): {}",
        bytes.len(),
        String::from_utf8_lossy(&bytes)
    );
    for n in [0, 10_000] {
        let stricter =
            warden_policy(n).replace("action.confidence < 0.85", "action.confidence < 0.95");
        let candidate = Policy::parse(&stricter).unwrap();
        assert_eq!(
            candidate.replay(&snapshot, &env),
            Replayed::Decided(Verdict::Deny)
        );
        let replay = measure(|| {
            black_box(candidate.replay(black_box(&snapshot), black_box(&env)));
        });
        let replays = per_second(|| {
            black_box(candidate.replay(black_box(&snapshot), black_box(&env)));
        });
        let read = |b: &[u8]| Snapshot::from_json_bytes(b).unwrap();
        let decoded = measure(|| {
            black_box(candidate.replay(&read(black_box(&bytes)), black_box(&env)));
        });
        let decodes = per_second(|| {
            black_box(candidate.replay(&read(black_box(&bytes)), black_box(&env)));
        });
        println!(
            "replay, candidate N = {n:>5}: median {}, p99 {}, {:>9.0}/s on one core; \
             with from_json_bytes: median {}, p99 {}, {:>9.0}/s",
            ns(replay.median),
            ns(replay.p99),
            replays,
            ns(decoded.median),
            ns(decoded.p99),
            decodes
        );
    }
    let recording = measure(|| {
        black_box(base.snapshot(black_box(&action)).to_json_bytes());
    });
    println!(
        "recording (snapshot + to_json_bytes, per decision): median {}, p99 {}",
        ns(recording.median),
        ns(recording.p99)
    );
}
