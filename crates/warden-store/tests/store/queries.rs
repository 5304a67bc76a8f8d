//! Reading back: the audit query filters, decision lookups and API keys.

use serde_json::json;
use warden_store::{EventFilter, KeyRecord, NewKey, Store, StoreError, kind};

use crate::common::{each_backend, event, plain, with_decision};

/// Seeds six events varied along every filterable field.
async fn seed(store: &dyn Store) {
    let mut items = Vec::new();
    for (id, tenant, time, kind_, agent, action, effect) in [
        (
            "a1",
            "acme",
            1000,
            kind::DECISION,
            "support-bot",
            "ticket.resolve",
            Some("deny"),
        ),
        (
            "a2",
            "acme",
            2000,
            kind::DECISION,
            "support-bot",
            "email.send",
            Some("allow"),
        ),
        (
            "a3",
            "acme",
            3000,
            kind::OUTCOME,
            "support-bot",
            "email.send",
            None,
        ),
        (
            "g1",
            "globex",
            4000,
            kind::DECISION,
            "triage-bot",
            "ticket.resolve",
            Some("allow"),
        ),
        (
            "a4",
            "acme",
            5000,
            kind::DECISION,
            "triage-bot",
            "ticket.escalate",
            Some("require_approval"),
        ),
        (
            "g2",
            "globex",
            6000,
            kind::AUTH_FAILURE,
            "triage-bot",
            "ticket.resolve",
            None,
        ),
    ] {
        let mut e = event(id, tenant, time);
        e.kind = kind_.into();
        e.agent = Some(agent.into());
        e.action_type = Some(action.into());
        e.effect = effect.map(Into::into);
        items.push(plain(e));
    }
    store.append(items).await.unwrap();
}

#[tokio::test]
async fn event_filters_combine() {
    let text = |s: &str| Some(s.to_owned());
    let cases: Vec<(&str, EventFilter, Vec<&str>)> = vec![
        (
            "everything",
            EventFilter::default(),
            vec!["a1", "a2", "a3", "g1", "a4", "g2"],
        ),
        (
            "tenant",
            EventFilter {
                tenant: text("globex"),
                ..Default::default()
            },
            vec!["g1", "g2"],
        ),
        (
            "kind",
            EventFilter {
                kind: text("outcome"),
                ..Default::default()
            },
            vec!["a3"],
        ),
        (
            "agent and tenant",
            EventFilter {
                tenant: text("acme"),
                agent: text("triage-bot"),
                ..Default::default()
            },
            vec!["a4"],
        ),
        (
            "action type",
            EventFilter {
                action_type: text("ticket.resolve"),
                ..Default::default()
            },
            vec!["a1", "g1", "g2"],
        ),
        (
            "effect",
            EventFilter {
                effect: text("allow"),
                ..Default::default()
            },
            vec!["a2", "g1"],
        ),
        (
            "since inclusive, until exclusive",
            EventFilter {
                since_ms: Some(2000),
                until_ms: Some(5000),
                ..Default::default()
            },
            vec!["a2", "a3", "g1"],
        ),
        (
            "after seq",
            EventFilter {
                after_seq: Some(4),
                ..Default::default()
            },
            vec!["a4", "g2"],
        ),
        (
            "newest first with a cursor and a limit",
            EventFilter {
                before_seq: Some(5),
                newest_first: true,
                limit: 2,
                ..Default::default()
            },
            vec!["g1", "a3"],
        ),
        (
            "no match",
            EventFilter {
                tenant: text("acme"),
                effect: text("nope"),
                ..Default::default()
            },
            vec![],
        ),
    ];
    each_backend(async |db| {
        seed(&*db.store).await;
        for (name, filter, expected) in &cases {
            let events = db.store.events(filter).await.unwrap();
            let ids: Vec<_> = events.iter().map(|e| e.event.id.as_str()).collect();
            assert_eq!(&ids, expected, "{name}");
        }
    })
    .await;
}

#[tokio::test]
async fn event_queries_are_capped() {
    each_backend(async |db| {
        let items = (1..=1005)
            .map(|i| plain(event(&format!("e{i}"), "acme", i)))
            .collect();
        db.store.append(items).await.unwrap();
        let count = async |limit: u32| {
            let filter = EventFilter {
                limit,
                ..EventFilter::default()
            };
            db.store.events(&filter).await.unwrap().len()
        };
        assert_eq!(count(0).await, EventFilter::DEFAULT_LIMIT as usize);
        assert_eq!(count(7).await, 7);
        assert_eq!(count(5000).await, EventFilter::MAX_LIMIT as usize);
        let tail = db
            .store
            .events(&EventFilter {
                after_seq: Some(1000),
                limit: 1000,
                ..EventFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(
            tail.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1001, 1002, 1003, 1004, 1005]
        );
    })
    .await;
}

#[tokio::test]
async fn decisions_are_found_by_id_and_by_key_within_their_tenant() {
    each_backend(async |db| {
        let store = &*db.store;
        let mut item = with_decision(event("e1", "acme", 42), Some("retry-1"));
        let body = json!({"decision_id": "d-e1", "effect": "deny", "reasons": [{"rule": "r", "message": "m"}]});
        if let Some(decision) = &mut item.decision {
            decision.body = body.to_string();
        }
        store.append(vec![item, with_decision(event("e2", "acme", 43), None)]).await.unwrap();

        let found = store.decision("acme", "d-e1").await.unwrap().unwrap();
        assert_eq!(found.body, body);
        assert_eq!(found.idempotency_key.as_deref(), Some("retry-1"));
        assert_eq!((found.tenant.as_str(), found.created_at_ms), ("acme", 42));
        assert_eq!(store.decision_by_key("acme", "retry-1").await.unwrap(), Some(found));
        assert_eq!(store.decision("acme", "d-e2").await.unwrap().unwrap().idempotency_key, None);

        assert_eq!(store.decision("globex", "d-e1").await.unwrap(), None);
        assert_eq!(store.decision_by_key("globex", "retry-1").await.unwrap(), None);
        assert_eq!(store.decision("acme", "d-missing").await.unwrap(), None);
        assert_eq!(store.decision_by_key("acme", "missing").await.unwrap(), None);
    })
    .await;
}

fn new_key(id: &str, created_at_ms: i64) -> NewKey {
    NewKey {
        id: id.into(),
        secret_hash: "5e".repeat(32),
        tenant: "acme".into(),
        roles: vec!["controller".into(), "approver".into()],
        agent: Some("support-*".into()),
        groups: vec!["legal".into()],
        user: Some("alice".into()),
        label: Some("helpdesk controller".into()),
        created_at_ms,
    }
}

#[tokio::test]
async fn keys_are_created_read_listed_and_revoked() {
    each_backend(async |db| {
        let store = &*db.store;
        let first = store.create_key(new_key("wk_b", 10)).await.unwrap();
        let bare = NewKey {
            agent: None,
            groups: vec![],
            user: None,
            label: None,
            ..new_key("wk_a", 20)
        };
        let second = store.create_key(bare).await.unwrap();
        assert_eq!(first.revoked_at_ms, None);
        assert_eq!(store.key("wk_b").await.unwrap().as_ref(), Some(&first));
        assert_eq!(store.key("wk_a").await.unwrap().as_ref(), Some(&second));
        assert_eq!(store.key("wk_missing").await.unwrap(), None);

        let error = store
            .create_key(NewKey {
                tenant: "globex".into(),
                ..new_key("wk_b", 30)
            })
            .await;
        assert!(
            matches!(&error, Err(StoreError::DuplicateKey(id)) if id == "wk_b"),
            "{error:?}"
        );
        assert_eq!(
            error.unwrap_err().to_string(),
            "api key `wk_b` already exists"
        );
        assert_eq!(store.key("wk_b").await.unwrap().unwrap().tenant, "acme");

        assert!(store.revoke_key("wk_b", 100).await.unwrap());
        assert!(
            !store.revoke_key("wk_b", 200).await.unwrap(),
            "already revoked"
        );
        assert!(!store.revoke_key("wk_missing", 200).await.unwrap());
        let revoked = KeyRecord {
            revoked_at_ms: Some(100),
            ..first
        };
        assert_eq!(store.keys().await.unwrap(), vec![revoked, second]);
    })
    .await;
}
