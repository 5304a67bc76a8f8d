//! Approvals: created with their decision's append, changed only under the chain lock and
//! only while pending, with their events chained in the same transaction.

use serde_json::json;
use warden_store::{
    ApprovalChanged, ApprovalFilter, ApprovalRecord, ApprovalUpdate, NewEvent, OutboxMessage,
    StoreError, Vote, approval_kind, kind, status,
};

use crate::common::{each_backend, event, with_decision};

fn approval(id: &str, decision_id: &str) -> ApprovalRecord {
    ApprovalRecord {
        id: id.into(),
        tenant: "acme".into(),
        kind: approval_kind::APPROVAL.into(),
        status: status::PENDING.into(),
        decision_id: Some(decision_id.into()),
        action_digest: Some("hmac-sha256:ab".into()),
        policy_version: Some("1.0.0".into()),
        rule_id: Some("legal".into()),
        groups: vec!["legal".into(), "risk".into()],
        quorum: 2,
        requested_by_key: "k1".into(),
        agent: Some("support-bot".into()),
        on_behalf_of: Some("user-991".into()),
        action_type: Some("ticket.escalate".into()),
        options: vec![],
        created_at_ms: 10,
        expires_at_ms: 1_000,
        ..ApprovalRecord::default()
    }
}

fn outcome(id: &str) -> NewEvent {
    NewEvent {
        id: id.into(),
        time_ms: 20,
        tenant: "acme".into(),
        kind: kind::APPROVAL_OUTCOME.into(),
        decision_id: Some("d-e1".into()),
        detail: json!({"status": "approved"}),
        ..NewEvent::default()
    }
}

#[tokio::test]
async fn an_approval_is_written_with_its_decision_and_changes_once() {
    each_backend(async |db| {
        let store = &*db.store;
        let mut item = with_decision(event("e1", "acme", 1), Some("k1"));
        item.approval = Some(approval("a1", "d-e1"));
        item.outbox = vec![OutboxMessage {
            id: "o1".into(),
            tenant: "acme".into(),
            url: "http://127.0.0.1:9/hook".into(),
            body: "{}".into(),
            created_at_ms: 10,
        }];
        store.append(vec![item]).await.unwrap();
        assert_eq!(
            store.approval("acme", "a1").await.unwrap(),
            Some(approval("a1", "d-e1"))
        );
        assert_eq!(store.approval("globex", "a1").await.unwrap(), None);
        // A replay of the same key writes no second approval.
        let mut replay = with_decision(event("e2", "acme", 2), Some("k1"));
        replay.approval = Some(approval("a2", "d-e2"));
        store.append(vec![replay]).await.unwrap();
        assert_eq!(store.approval("acme", "a2").await.unwrap(), None);
        let listed = store
            .approvals(&ApprovalFilter {
                tenant: "acme".into(),
                status: Some(status::PENDING.into()),
                ..ApprovalFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            store.expired_approvals(1_000, 10).await.unwrap(),
            [("acme".to_owned(), "a1".to_owned())]
        );
        assert_eq!(store.claim_webhooks(10, 1_000, 10).await.unwrap().len(), 1);
        assert!(
            store
                .claim_webhooks(10, 1_000, 10)
                .await
                .unwrap()
                .is_empty(),
            "claimed"
        );

        // A decider that writes nothing changes nothing.
        let seen = store
            .update_approval("acme", "a1", Box::new(|_, _| None))
            .await
            .unwrap();
        assert_eq!(seen, ApprovalChanged::Unchanged(approval("a1", "d-e1")));
        let missing = store
            .update_approval("acme", "nope", Box::new(|_, _| None))
            .await
            .unwrap();
        assert_eq!(missing, ApprovalChanged::NotFound);

        let decide = |event_id: &'static str| {
            Box::new(
                move |row: &ApprovalRecord, _: Option<&warden_store::OverLimit>| {
                    let mut after = row.clone();
                    after.status = status::APPROVED.into();
                    after.decided_at_ms = Some(20);
                    after.votes.push(Vote {
                        user: "alice".into(),
                        key_id: "k2".into(),
                        verdict: "approve".into(),
                        reason: None,
                        at_ms: 20,
                    });
                    Some(ApprovalUpdate {
                        record: after,
                        events: vec![outcome(event_id)],
                        decision_body: Some(json!({"effect": "allow"}).to_string()),
                        ..ApprovalUpdate::default()
                    })
                },
            ) as warden_store::ApprovalDecider
        };
        let ApprovalChanged::Written { after } = store
            .update_approval("acme", "a1", decide("e3"))
            .await
            .unwrap()
        else {
            panic!("not written")
        };
        assert_eq!(after.status, status::APPROVED);
        assert_eq!(store.approval("acme", "a1").await.unwrap(), Some(after));
        let decision = store.decision("acme", "d-e1").await.unwrap().unwrap();
        assert_eq!(decision.body, json!({"effect": "allow"}));
        // Once decided, even a decider that would write again writes nothing.
        let again = store
            .update_approval("acme", "a1", decide("e4"))
            .await
            .unwrap();
        assert!(matches!(again, ApprovalChanged::Unchanged(row) if row.status == status::APPROVED));
        let outcomes = crate::common::all_events(store)
            .await
            .into_iter()
            .filter(|e| e.event.kind == kind::APPROVAL_OUTCOME)
            .count();
        assert_eq!(outcomes, 1);
        assert_eq!(store.verify().await.unwrap().first_broken, None);

        // An approval that is not pending, or of another tenant, is refused.
        let mut bad = with_decision(event("e5", "acme", 5), None);
        bad.approval = Some(ApprovalRecord {
            status: status::APPROVED.into(),
            ..approval("a5", "d-e5")
        });
        let refused = store.append(vec![bad]).await;
        assert!(
            matches!(refused, Err(StoreError::InvalidEvent { .. })),
            "{refused:?}"
        );
    })
    .await;
}

/// The charges of an approved action by `support-bot` at `ms`, against a limit of one.
fn one_a_minute(ms: i64) -> Vec<warden_store::Charge> {
    let policy = warden_policy::Policy::parse(
        "version: 1.0.0\nrate_limits:\n  - {id: once, actions: [\"*\"], per: agent, limit: 1, window: 1m}\n",
    )
    .unwrap();
    let action =
        warden_policy::Action::from_json(br#"{"type": "ticket.escalate", "agent": "support-bot"}"#)
            .unwrap();
    policy.charges(
        &action,
        &warden_policy::Env::new(
            "acme",
            warden_policy::Timestamp::from_unix_millis(ms).unwrap(),
        ),
    )
}

#[tokio::test]
async fn a_grant_charges_its_counters_in_its_transaction_or_is_asked_again_over_the_limit() {
    each_backend(async |db| {
        let store = &*db.store;
        for (n, id) in ["a1", "a2"].into_iter().enumerate() {
            let mut item = with_decision(event(&format!("e{n}"), "acme", 1), None);
            let mut record = approval(id, &format!("d-e{n}"));
            record.on_grant.charges = one_a_minute(10);
            item.approval = Some(record);
            store.append(vec![item]).await.unwrap();
        }
        // What was held reads back as it was made.
        let held = store.approval("acme", "a1").await.unwrap().unwrap();
        assert_eq!(held.on_grant.charges, one_a_minute(10));
        let grant = || {
            Box::new(
                move |row: &ApprovalRecord, over: Option<&warden_store::OverLimit>| {
                    let mut after = row.clone();
                    after.status = status::APPROVED.into();
                    after.decided_at_ms = Some(20);
                    let (body, charges) = match over {
                        None => ("allow".to_owned(), row.on_grant.charges.clone()),
                        Some(o) => (format!("deny {} {:?}", o.charge.id, o.current), vec![]),
                    };
                    Some(ApprovalUpdate {
                        record: after,
                        decision_body: Some(json!({"effect": body}).to_string()),
                        charges,
                        ..ApprovalUpdate::default()
                    })
                },
            ) as warden_store::ApprovalDecider
        };
        store.update_approval("acme", "a1", grant()).await.unwrap();
        let first = store.decision("acme", "d-e0").await.unwrap().unwrap();
        assert_eq!(first.body, json!({"effect": "allow"}));
        assert_eq!(
            db.scalar("SELECT COUNT(*) FROM budget_counters").await,
            1,
            "charged with the grant"
        );
        // The second grant in the same minute finds the counter full: asked again, it
        // writes the deny, and the counter stays at one.
        store.update_approval("acme", "a2", grant()).await.unwrap();
        let second = store.decision("acme", "d-e1").await.unwrap().unwrap();
        assert_eq!(second.body, json!({"effect": "deny once Some(1)"}));
        let rows = store
            .counters(&warden_store::CounterFilter {
                tenant: "acme".into(),
                agent: Some("support-bot".into()),
                run_id: None,
                now_ms: 20,
            })
            .await
            .unwrap();
        assert_eq!(rows[0].values["actions"].value, 1);
        assert_eq!(store.verify().await.unwrap().first_broken, None);
    })
    .await;
}

/// The next approval signal within 10 s.
async fn next_signal(
    signals: &mut tokio::sync::broadcast::Receiver<warden_store::ApprovalSignal>,
) -> warden_store::ApprovalSignal {
    tokio::time::timeout(std::time::Duration::from_secs(10), signals.recv())
        .await
        .expect("a signal in time")
        .unwrap()
}

/// Ids the next signals name, skipping resyncs, until `n` are in.
async fn signalled(
    signals: &mut tokio::sync::broadcast::Receiver<warden_store::ApprovalSignal>,
    n: usize,
) -> Vec<String> {
    let mut ids = Vec::new();
    while ids.len() < n {
        if let warden_store::ApprovalSignal::Changed(id) = next_signal(signals).await {
            ids.push(id);
        }
    }
    ids.sort();
    ids
}

#[tokio::test]
async fn opening_approvals_is_signalled_to_this_store_and_on_postgres_every_replica() {
    each_backend(async |db| {
        let store = &*db.store;
        let replica = db.replica().await;
        let mut here = store.approval_signals().await.unwrap();
        let mut there = replica.approval_signals().await.unwrap();
        // PostgreSQL's listener says it (re)started listening before anything else.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let mut batch = Vec::new();
        for (n, id) in ["a1", "a2"].into_iter().enumerate() {
            let mut item = with_decision(event(&format!("e{n}"), "acme", 1), None);
            item.approval = Some(approval(id, &format!("d-e{n}")));
            batch.push(item);
        }
        store.append(batch).await.unwrap();
        assert_eq!(signalled(&mut here, 2).await, ["a1", "a2"]);
        if db.backend() == warden_store::Backend::Postgres {
            assert_eq!(
                signalled(&mut there, 2).await,
                ["a1", "a2"],
                "another replica"
            );
        }
    })
    .await;
}
