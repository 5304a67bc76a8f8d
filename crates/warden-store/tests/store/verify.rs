//! Verification: tampering is found at the right seq, and purges keep the chain verifiable.

use serde_json::json;
use warden_store::{
    BrokenLink, ChainProblem, PurgeReport, SYSTEM_TENANT, VerifyReport, event_hash, kind,
};

use crate::common::{
    TestDb, all_events, append_numbered, each_backend, event, plain, seqs, with_decision,
};

/// Tampers with a chain of six events `e1..=e6` and checks what verify reports.
async fn check_tamper(sql: &str, expected: BrokenLink) {
    each_backend(async |db| {
        append_numbered(&*db.store, 6).await;
        assert_eq!(db.store.verify().await.unwrap().first_broken, None);
        db.exec(sql).await;
        let report = db.store.verify().await.unwrap();
        assert_eq!(
            report.first_broken.as_ref(),
            Some(&expected),
            "after `{sql}`"
        );
    })
    .await;
}

fn broken(seq: i64, event_id: &str, problem: ChainProblem) -> BrokenLink {
    BrokenLink {
        seq,
        event_id: event_id.into(),
        problem,
    }
}

#[tokio::test]
async fn verify_names_an_edited_row() {
    check_tamper(
        "UPDATE audit_events SET effect = 'allow' WHERE seq = 3",
        broken(3, "e3", ChainProblem::HashMismatch),
    )
    .await;
    check_tamper(
        "UPDATE audit_events SET kept = '{\"action\":{\"target\":{\"id\":\"T-1\"}}}' WHERE seq = 5",
        broken(5, "e5", ChainProblem::HashMismatch),
    )
    .await;
    check_tamper(
        "UPDATE audit_events SET time_ms = 1 WHERE seq = 1",
        broken(1, "e1", ChainProblem::HashMismatch),
    )
    .await;
}

#[tokio::test]
async fn verify_names_the_row_after_an_edited_and_rehashed_one() {
    each_backend(async |db| {
        append_numbered(&*db.store, 6).await;
        let mut third = all_events(&*db.store).await.remove(2);
        third.event.effect = Some("allow".into());
        let forged = event_hash(3, &third.prev_hash, &third.event).unwrap();
        db.exec(&format!(
            "UPDATE audit_events SET effect = 'allow', hash = '{forged}' WHERE seq = 3"
        ))
        .await;
        let report = db.store.verify().await.unwrap();
        assert_eq!(
            report.first_broken,
            Some(broken(4, "e4", ChainProblem::PrevHashMismatch))
        );
        assert_eq!(report.events_checked, 4);
    })
    .await;
}

#[tokio::test]
async fn verify_names_the_gap_left_by_deleted_rows() {
    check_tamper(
        "DELETE FROM audit_events WHERE seq = 3",
        broken(4, "e4", ChainProblem::Missing { from: 3, to: 3 }),
    )
    .await;
    check_tamper(
        "DELETE FROM audit_events WHERE seq IN (2, 3, 4)",
        broken(5, "e5", ChainProblem::Missing { from: 2, to: 4 }),
    )
    .await;
    check_tamper(
        "DELETE FROM audit_events WHERE seq <= 2",
        broken(3, "e3", ChainProblem::Unanchored { missing_through: 2 }),
    )
    .await;
}

#[tokio::test]
async fn verify_names_reordered_rows() {
    check_tamper(
        "UPDATE audit_events SET seq = -4 WHERE seq = 4; \
         UPDATE audit_events SET seq = 4 WHERE seq = 3; \
         UPDATE audit_events SET seq = 3 WHERE seq = -4;",
        broken(3, "e4", ChainProblem::HashMismatch),
    )
    .await;
}

#[tokio::test]
async fn verify_reports_an_unreadable_row_as_broken() {
    check_tamper(
        "UPDATE audit_events SET rule_ids = 'not json' WHERE seq = 2",
        BrokenLink {
            seq: 2,
            event_id: "e2".into(),
            problem: ChainProblem::Unreadable("rule_ids: expected ident at line 1 column 2".into()),
        },
    )
    .await;
}

#[tokio::test]
async fn verify_of_an_empty_chain_is_clean() {
    each_backend(async |db| {
        let report = db.store.verify().await.unwrap();
        assert_eq!(
            report,
            VerifyReport {
                events_checked: 0,
                first_broken: None
            }
        );
    })
    .await;
}

async fn assert_intact(db: &TestDb, events_checked: u64) {
    let report = db.store.verify().await.unwrap();
    assert_eq!(
        report,
        VerifyReport {
            events_checked,
            first_broken: None
        }
    );
}

#[tokio::test]
async fn purges_keep_the_chain_verifiable() {
    each_backend(async |db| {
        let store = &*db.store;
        for i in 1..=10 {
            let item = with_decision(event(&format!("e{i}"), "acme", 1000 * i), Some(&format!("k{i}")));
            store.append(vec![item]).await.unwrap();
        }
        let hash_of_5 = all_events(store).await[4].hash.clone();
        let hash_of_10 = all_events(store).await[9].hash.clone();

        let report = store.purge(5500, 20_000).await.unwrap();
        assert_eq!(
            report,
            PurgeReport { purged: 5, decisions_purged: 5, checkpoint_seq: Some(11) }
        );
        let events = all_events(store).await;
        assert_eq!(seqs(&events), [6, 7, 8, 9, 10, 11]);
        let checkpoint = &events[5];
        assert_eq!(checkpoint.event.kind, kind::CHECKPOINT);
        assert_eq!(checkpoint.event.tenant, SYSTEM_TENANT);
        assert_eq!(checkpoint.event.time_ms, 20_000);
        assert_eq!(checkpoint.prev_hash, hash_of_10);
        assert_eq!(
            checkpoint.event.detail,
            json!({"purged_through_seq": 5, "anchor_hash": hash_of_5, "purged": 5, "older_than_ms": 5500})
        );
        assert_eq!(store.decision("acme", "d-e5").await.unwrap(), None);
        assert_eq!(store.decision_by_key("acme", "k5").await.unwrap(), None);
        assert!(store.decision("acme", "d-e6").await.unwrap().is_some());
        assert_intact(&db, 6).await;

        // A later purge, with events appended after the first checkpoint.
        store.append(vec![plain(event("e12", "acme", 12_000))]).await.unwrap();
        let report = store.purge(9500, 30_000).await.unwrap();
        assert_eq!(report, PurgeReport { purged: 4, decisions_purged: 4, checkpoint_seq: Some(13) });
        assert_eq!(seqs(&all_events(store).await), [10, 11, 12, 13]);
        assert_intact(&db, 4).await;

        // Nothing old enough: nothing deleted, no checkpoint.
        let report = store.purge(0, 40_000).await.unwrap();
        assert_eq!(report, PurgeReport { purged: 0, decisions_purged: 0, checkpoint_seq: None });
        assert_intact(&db, 4).await;

        // Everything, including both checkpoints: the new checkpoint anchors itself.
        let report = store.purge(i64::MAX, 50_000).await.unwrap();
        assert_eq!(report, PurgeReport { purged: 4, decisions_purged: 1, checkpoint_seq: Some(14) });
        assert_eq!(seqs(&all_events(store).await), [14]);
        assert_intact(&db, 1).await;

        // Appending after a purge continues the chain.
        store.append(vec![plain(event("e15", "acme", 60_000))]).await.unwrap();
        assert_intact(&db, 2).await;
    })
    .await;
}

#[tokio::test]
async fn purge_removes_only_a_prefix_of_the_chain() {
    each_backend(async |db| {
        let times = [1000, 9000, 2000, 3000];
        for (i, time) in times.into_iter().enumerate() {
            db.store
                .append(vec![plain(event(&format!("e{i}"), "acme", time))])
                .await
                .unwrap();
        }
        let report = db.store.purge(5000, 10_000).await.unwrap();
        assert_eq!((report.purged, report.checkpoint_seq), (1, Some(5)));
        assert_eq!(seqs(&all_events(&*db.store).await), [2, 3, 4, 5]);
        assert_intact(&db, 4).await;
    })
    .await;
}

#[tokio::test]
async fn purge_of_an_empty_chain_writes_nothing() {
    each_backend(async |db| {
        let report = db.store.purge(i64::MAX, 1).await.unwrap();
        assert_eq!(
            report,
            PurgeReport {
                purged: 0,
                decisions_purged: 0,
                checkpoint_seq: None
            }
        );
        assert!(all_events(&*db.store).await.is_empty());
    })
    .await;
}

#[tokio::test]
async fn verify_rejects_a_purge_whose_checkpoint_is_gone_or_forged() {
    each_backend(async |db| {
        append_numbered(&*db.store, 6).await;
        db.store.purge(3500, 10_000).await.unwrap();
        assert_intact(&db, 4).await;
        // Pretend the checkpoint covered one event more than it did.
        db.exec(
            "UPDATE audit_events SET detail = REPLACE(detail, '\"purged_through_seq\":3', \
             '\"purged_through_seq\":4') WHERE kind = 'checkpoint'",
        )
        .await;
        let report = db.store.verify().await.unwrap();
        assert_eq!(
            report.first_broken,
            Some(broken(
                4,
                "e4",
                ChainProblem::Unanchored { missing_through: 3 }
            ))
        );
        db.exec("DELETE FROM audit_events WHERE kind = 'checkpoint'")
            .await;
        let report = db.store.verify().await.unwrap();
        assert_eq!(
            report.first_broken,
            Some(broken(
                4,
                "e4",
                ChainProblem::Unanchored { missing_through: 3 }
            ))
        );
    })
    .await;
}
