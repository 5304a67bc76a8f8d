//! Permit uses: counted atomically with their audit event, also between replicas.

use crate::common::{each_backend, event};
use serde_json::json;
use std::sync::Arc;
use tokio::task::JoinSet;
use warden_store::{EventFilter, PermitConsumed, PermitUse, Store, kind};

fn permit_use(id: &str, decision: &str, max_uses: u32) -> PermitUse {
    let mut event = event(id, "acme", 5_000);
    event.kind = kind::PERMIT_VERIFIED.into();
    event.decision_id = Some(decision.into());
    event.detail = json!({"key_id": "k1", "kid": "sig1"});
    PermitUse {
        tenant: "acme".into(),
        decision_id: decision.into(),
        max_uses,
        expires_at_ms: 60_000,
        now_ms: 5_000,
        event,
    }
}

#[tokio::test]
async fn uses_count_down_to_used_up_and_every_check_is_chained() {
    each_backend(async |db| {
        let store = &db.store;
        let answers = [
            store.consume_permit_use(permit_use("v1", "d1", 2)).await.unwrap(),
            store.consume_permit_use(permit_use("v2", "d1", 2)).await.unwrap(),
            store.consume_permit_use(permit_use("v3", "d1", 2)).await.unwrap(),
            // Another decision's permit has its own count.
            store.consume_permit_use(permit_use("v4", "d2", 1)).await.unwrap(),
        ];
        assert_eq!(
            answers,
            [
                PermitConsumed::Used { uses_left: 1 },
                PermitConsumed::Used { uses_left: 0 },
                PermitConsumed::UsedUp,
                PermitConsumed::Used { uses_left: 0 },
            ]
        );
        let events = store
            .events(&EventFilter {
                kind: Some(kind::PERMIT_VERIFIED.into()),
                ..EventFilter::default()
            })
            .await
            .unwrap();
        let details: Vec<_> = events.iter().map(|e| e.event.detail.clone()).collect();
        assert_eq!(
            details[2],
            json!({"key_id": "k1", "kid": "sig1", "valid": false, "reason": "used_up", "uses_left": 0})
        );
        assert_eq!(details[0]["reason"], "valid");
        assert_eq!(details[0]["uses_left"], 1);
        assert_eq!(store.verify().await.unwrap().first_broken, None);
        assert_eq!(
            db.scalar("SELECT uses FROM permit_uses WHERE decision_id = 'd1'")
                .await,
            2
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_uses_of_a_single_use_permit_from_two_replicas_count_once() {
    each_backend(async |db| {
        let replica = db.replica().await;
        for round in 0..5 {
            let decision = format!("d{round}");
            let mut tasks = JoinSet::new();
            for task in 0..8 {
                let store: Arc<dyn Store> = if task % 2 == 0 {
                    db.store.clone()
                } else {
                    replica.clone()
                };
                let permit = permit_use(&format!("r{round}-t{task}"), &decision, 1);
                tasks.spawn(async move { store.consume_permit_use(permit).await.unwrap() });
            }
            let mut valid = 0;
            while let Some(answer) = tasks.join_next().await {
                if matches!(answer.unwrap(), PermitConsumed::Used { .. }) {
                    valid += 1;
                }
            }
            assert_eq!(valid, 1, "round {round}: exactly one use wins");
        }
        let report = replica.verify().await.unwrap();
        assert_eq!(report.first_broken, None);
        assert_eq!(report.events_checked, 40);
    })
    .await;
}

#[tokio::test]
async fn a_failed_use_counts_nothing() {
    each_backend(async |db| {
        let store = &db.store;
        store
            .consume_permit_use(permit_use("same", "d1", 3))
            .await
            .unwrap();
        // The event id is taken: the whole transaction rolls back, the use included.
        assert!(
            store
                .consume_permit_use(permit_use("same", "d1", 3))
                .await
                .is_err()
        );
        assert_eq!(
            db.scalar("SELECT uses FROM permit_uses WHERE decision_id = 'd1'")
                .await,
            1
        );
        let mut bad = permit_use("bad", "d1", 3);
        bad.event.detail = json!([1]);
        assert!(store.consume_permit_use(bad).await.is_err());
    })
    .await;
}
