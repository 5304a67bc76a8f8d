//! Budget and rate-limit counters: checked and charged with the append, under its lock.

use warden_policy::{Action, Charge, Env, Policy, Timestamp};
use warden_store::{Append, Appended, CounterFilter, Store};

use crate::common::{each_backend, event, with_decision};

const POLICY: &str = r#"
version: 1.0.0
budgets:
  - {id: per-run, per: run, limits: {cost_usd: 5, duration: 1h}}
rate_limits:
  - {id: burst, actions: ["*"], per: agent, limit: 2, window: 1m}
"#;

/// The charges of an allowed action by `agent` in `run` costing `usd`, at `ms`.
fn charges(agent: &str, run: &str, usd: f64, ms: i64) -> Vec<Charge> {
    let policy = Policy::parse(POLICY).unwrap();
    let action = Action::from_json(
        format!(
            r#"{{"type": "x.y", "agent": "{agent}", "run_id": "{run}", "usage": {{"cost_usd": {usd}}}}}"#
        )
        .as_bytes(),
    )
    .unwrap();
    policy.charges(
        &action,
        &Env::new("acme", Timestamp::from_unix_millis(ms).unwrap()),
    )
}

fn charged(id: &str, key: Option<&str>, charges: Vec<Charge>, ms: i64) -> Append {
    let mut item = with_decision(event(id, "acme", ms), key);
    item.charges = charges;
    item
}

async fn value(store: &dyn Store, agent: &str, counter: &str, now_ms: i64) -> Option<i64> {
    let rows = store
        .counters(&CounterFilter {
            tenant: "acme".into(),
            agent: Some(agent.into()),
            run_id: None,
            now_ms,
        })
        .await
        .unwrap();
    rows.iter()
        .find_map(|r| r.values.get(counter))
        .map(|v| v.value)
}

#[tokio::test]
async fn a_charge_over_its_limit_writes_nothing_and_later_items_see_earlier_ones() {
    each_backend(async |db| {
        let store = &*db.store;
        let t = 120_000;
        // Three of a limit of two in one batch: the third sees the first two.
        let results = store
            .append(vec![
                charged("e1", None, charges("a", "r", 1.0, t), t),
                charged("e2", None, charges("a", "r", 1.0, t), t),
                charged("e3", None, charges("a", "r", 1.0, t), t),
            ])
            .await
            .unwrap();
        assert!(matches!(results[0], Appended::Written { .. }));
        assert!(matches!(results[1], Appended::Written { .. }));
        let Appended::OverLimit { charge, current } = &results[2] else {
            panic!("expected over limit, got {:?}", results[2]);
        };
        assert_eq!((charge.id.as_str(), *current), ("burst", Some(2)));
        assert_eq!(db.scalar("SELECT COUNT(*) FROM audit_events").await, 2);
        assert_eq!(value(store, "a", "actions", t).await, Some(2));
        assert_eq!(value(store, "a", "cost_usd", t).await, Some(2_000_000));

        // $5 never lets $5.13 through: 2 + 2.99 fits, then 0.14 does not.
        let t2 = 180_000;
        let r = store
            .append(vec![
                charged("e4", None, charges("a", "r", 2.99, t2), t2),
                charged("e5", None, charges("a", "r", 0.14, t2), t2),
            ])
            .await
            .unwrap();
        assert!(matches!(r[0], Appended::Written { .. }));
        let Appended::OverLimit { charge, current } = &r[1] else {
            panic!("expected over limit, got {:?}", r[1]);
        };
        assert_eq!(charge.id, "per-run");
        assert_eq!(*current, Some(4_990_000));
        assert_eq!(value(store, "a", "cost_usd", t2).await, Some(4_990_000));
        // The rate limit's new window started from zero and took only the allowed one.
        assert_eq!(value(store, "a", "actions", t2).await, Some(1));
    })
    .await;
}

#[tokio::test]
async fn a_replay_does_not_charge_twice_and_runs_are_per_agent() {
    each_backend(async |db| {
        let store = &*db.store;
        let t = 60_000;
        let first = store
            .append(vec![charged("e1", Some("k"), charges("a", "r", 1.0, t), t)])
            .await
            .unwrap();
        assert!(matches!(first[0], Appended::Written { .. }));
        let again = store
            .append(vec![charged("e2", Some("k"), charges("a", "r", 1.0, t), t)])
            .await
            .unwrap();
        assert!(matches!(again[0], Appended::Duplicate(_)));
        assert_eq!(value(store, "a", "cost_usd", t).await, Some(1_000_000));
        // Agent b naming a's run has counters of its own.
        store
            .append(vec![charged("e3", None, charges("b", "r", 4.5, t), t)])
            .await
            .unwrap();
        assert_eq!(value(store, "a", "cost_usd", t).await, Some(1_000_000));
        assert_eq!(value(store, "b", "cost_usd", t).await, Some(4_500_000));
    })
    .await;
}

#[tokio::test]
async fn expired_counters_count_as_absent_and_are_pruned() {
    each_backend(async |db| {
        let store = &*db.store;
        let t = 60_000;
        store
            .append(vec![charged("e1", None, charges("a", "r", 1.0, t), t)])
            .await
            .unwrap();
        assert_eq!(
            db.scalar("SELECT COUNT(*) FROM budget_counters").await,
            2,
            "the run's budget and the window"
        );
        // The window ended at 120 s: pruning then removes it and only it.
        assert_eq!(store.prune_counters(120_000).await.unwrap(), 1);
        assert_eq!(db.scalar("SELECT COUNT(*) FROM budget_counters").await, 1);
        // After the run's hour and its grace, the run is gone too.
        let after = t + 2 * 3_600_000;
        assert_eq!(value(store, "a", "cost_usd", after).await, None);
        assert_eq!(store.prune_counters(after).await.unwrap(), 1);
        assert_eq!(db.scalar("SELECT COUNT(*) FROM budget_counters").await, 0);
    })
    .await;
}

#[tokio::test]
async fn a_run_past_its_duration_is_over_limit() {
    each_backend(async |db| {
        let store = &*db.store;
        store
            .append(vec![charged("e1", None, charges("a", "r", 0.0, 0), 0)])
            .await
            .unwrap();
        let late = 3_600_001;
        let r = store
            .append(vec![charged(
                "e2",
                None,
                charges("a", "r", 0.0, late),
                late,
            )])
            .await
            .unwrap();
        let Appended::OverLimit { charge, current } = &r[0] else {
            panic!("expected over limit, got {:?}", r[0]);
        };
        assert_eq!((charge.counter.as_str(), *current), ("duration", Some(0)));
    })
    .await;
}
