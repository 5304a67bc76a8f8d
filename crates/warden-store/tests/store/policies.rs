//! Policy versions: publishing only on top of the history the publisher saw, with its event,
//! and a signal for every replica.

use crate::common::*;
use serde_json::json;
use warden_store::{
    NewEvent, PolicyPublish, PolicySignal, PolicyVersionInfo, Published, StoreError, StoredPolicy,
    kind, policy_status,
};

fn publish(tenant: &str, revision: i64, parent: Option<i64>, version: &str) -> PolicyPublish {
    let source = format!("version: {version}\ndefault: deny\n");
    PolicyPublish {
        policy: StoredPolicy {
            info: PolicyVersionInfo {
                tenant: tenant.into(),
                revision,
                version: version.into(),
                hash: format!("hash-{version}"),
                parent,
                author: "k1".into(),
                comment: Some(format!("to {version}")),
                created_at_ms: 100 + revision,
                status: policy_status::ACTIVE.into(),
            },
            source,
        },
        previous_becomes: policy_status::SUPERSEDED,
        event: NewEvent {
            id: format!("e-{tenant}-{revision}"),
            time_ms: 100 + revision,
            tenant: tenant.into(),
            kind: kind::POLICY_PUBLISHED.into(),
            policy_version: Some(version.into()),
            policy_hash: Some(format!("hash-{version}")),
            detail: json!({"revision": revision}),
            ..NewEvent::default()
        },
        proposal: None,
    }
}

/// Sources are stored deflated (migration 0013) and read back byte for byte; a stored source
/// that no longer inflates is reported as corrupt, not returned garbled.
#[tokio::test]
async fn sources_are_stored_deflated_and_read_back_exactly() {
    each_backend(async |db| {
        let mut first = publish("acme", 1, None, "1.0.0");
        let rules: String = (0..2_000)
            .map(|n| format!("  - id: rule-{n}\n    when: 'target.id == \"tkt-{n}\"' # é ✓\n"))
            .collect();
        first.policy.source = format!("version: 1.0.0\nrules:\n{rules}");
        let source = first.policy.source.clone();
        db.store.publish_policy(first).await.unwrap();
        assert_eq!(
            db.replica().await.policy("acme", None).await.unwrap().unwrap().source,
            source
        );
        // Stored deflated, nothing in the text column.
        assert_eq!(
            db.scalar("SELECT COUNT(*) FROM policy_sources WHERE source <> '' OR deflated IS NULL")
                .await,
            0
        );
        let stored = db
            .scalar("SELECT CAST(LENGTH(deflated) AS BIGINT) FROM policy_sources")
            .await;
        assert!(
            stored * 10 < source.len() as i64,
            "{stored} bytes stored for {}",
            source.len()
        );
        db.exec("UPDATE policy_sources SET deflated = SUBSTR(deflated, 1, 64)")
            .await;
        let error = db.store.policy("acme", Some(1)).await.unwrap_err();
        assert!(
            matches!(&error, StoreError::Corrupt { what: "policy source", id, .. } if id == "acme@1"),
            "{error:?}"
        );
        // What is known of the version still reads: only its source is lost.
        assert!(db.store.policy_info("acme", Some(1)).await.unwrap().is_some());
    })
    .await;
}

#[tokio::test]
async fn a_version_is_published_only_on_the_history_its_publisher_saw() {
    each_backend(async |db| {
        let store = &*db.store;
        let replica = db.replica().await;
        let mut signals = replica.policy_signals().await.unwrap();
        assert_eq!(store.policy("acme", None).await.unwrap(), None);
        assert_eq!(
            store
                .publish_policy(publish("acme", 1, None, "1.0.0"))
                .await
                .unwrap(),
            Published::Written
        );
        // A second publisher that also saw no history loses and learns where it stands.
        assert_eq!(
            replica
                .publish_policy(publish("acme", 1, None, "1.0.1"))
                .await
                .unwrap(),
            Published::Conflict {
                latest: 1,
                active: Some(1)
            }
        );
        assert_eq!(
            store
                .publish_policy(publish("acme", 2, Some(1), "1.1.0"))
                .await
                .unwrap(),
            Published::Written
        );
        // Another tenant's history is its own.
        store
            .publish_policy(publish("globex", 1, None, "9.0.0"))
            .await
            .unwrap();

        let active = replica.policy("acme", None).await.unwrap().unwrap();
        assert_eq!(
            (
                active.info.revision,
                active.info.version.as_str(),
                active.info.parent
            ),
            (2, "1.1.0", Some(1))
        );
        assert_eq!(active.source, "version: 1.1.0\ndefault: deny\n");
        let first = replica.policy("acme", Some(1)).await.unwrap().unwrap();
        assert_eq!(first.info.status, policy_status::SUPERSEDED);
        assert_eq!(replica.policy("acme", Some(3)).await.unwrap(), None);
        let listed = replica.policy_versions("acme", None, 10).await.unwrap();
        assert_eq!(
            listed.iter().map(|v| v.revision).collect::<Vec<_>>(),
            [2, 1]
        );
        let older = replica.policy_versions("acme", Some(2), 10).await.unwrap();
        assert_eq!(older.len(), 1);
        assert_eq!(older[0].comment.as_deref(), Some("to 1.0.0"));
        let heads = replica.policy_heads().await.unwrap();
        assert_eq!(
            heads
                .iter()
                .map(|h| (h.tenant.as_str(), h.revision))
                .collect::<Vec<_>>(),
            [("acme", 2), ("globex", 1)]
        );

        // A shadow runs beside the active version: it takes the next revision and leaves
        // the active one alone; ending it is chained once.
        let mut shadow = publish("acme", 3, Some(2), "2.0.0");
        shadow.policy.info.status = policy_status::SHADOW.into();
        assert_eq!(
            store.publish_policy(shadow).await.unwrap(),
            Published::Written
        );
        assert_eq!(
            store
                .policy("acme", None)
                .await
                .unwrap()
                .unwrap()
                .info
                .revision,
            2
        );
        let heads = store.policy_heads().await.unwrap();
        assert_eq!(
            heads
                .iter()
                .map(|h| (h.tenant.as_str(), h.revision, h.status.as_str()))
                .collect::<Vec<_>>(),
            [
                ("acme", 2, "active"),
                ("acme", 3, "shadow"),
                ("globex", 1, "active")
            ]
        );
        let end = |id: &str| NewEvent {
            id: id.into(),
            time_ms: 200,
            tenant: "acme".into(),
            kind: kind::POLICY_SHADOW_ENDED.into(),
            ..NewEvent::default()
        };
        let ended = replica
            .end_policy_shadow("acme", end("end-1"))
            .await
            .unwrap();
        assert_eq!(
            ended.map(|v| (v.revision, v.status)),
            Some((3, "superseded".into()))
        );
        assert_eq!(
            replica
                .end_policy_shadow("acme", end("end-2"))
                .await
                .unwrap(),
            None
        );
        assert_eq!(store.policy_heads().await.unwrap().len(), 2);

        // One event per publish, in the chain, with the version's hash; the lost race wrote none.
        let events = all_events(store).await;
        let published: Vec<_> = events
            .iter()
            .filter(|e| e.event.kind == kind::POLICY_PUBLISHED)
            .map(|e| e.event.policy_hash.clone().unwrap())
            .collect();
        assert_eq!(
            published,
            ["hash-1.0.0", "hash-1.1.0", "hash-9.0.0", "hash-2.0.0"]
        );
        let ends = events
            .iter()
            .filter(|e| e.event.kind == kind::POLICY_SHADOW_ENDED)
            .count();
        assert_eq!(ends, 1);
        assert_eq!(store.verify().await.unwrap().first_broken, None);

        // The replica hears of it: from its own database's notifications on PostgreSQL;
        // a SQLite file is heard by the process that wrote it, and replicas poll.
        if db.backend() == warden_store::Backend::Postgres {
            let mut heard = Vec::new();
            while heard.len() < 5 {
                match tokio::time::timeout(std::time::Duration::from_secs(5), signals.recv())
                    .await
                    .expect("a policy signal within 5 s")
                    .unwrap()
                {
                    PolicySignal::Changed(tenant) => heard.push(tenant),
                    PolicySignal::Resync => {}
                }
            }
            assert_eq!(heard, ["acme", "acme", "globex", "acme", "acme"]);
        }
    })
    .await;
}

#[tokio::test]
async fn snapshots_are_read_in_order_by_tenant_and_cleared_after_their_window() {
    each_backend(async |db| {
        let store = &*db.store;
        let mut batch = Vec::new();
        for (n, tenant) in ["acme", "acme", "globex", "acme"].iter().enumerate() {
            let time = 100 + n as i64;
            batch.push(with_decision(event(&format!("e{n}"), tenant, time), None));
        }
        store.append(batch).await.unwrap();
        let first = store.snapshots("acme", 0, None, 2).await.unwrap();
        assert_eq!(
            first
                .iter()
                .map(|s| s.decision_id.as_str())
                .collect::<Vec<_>>(),
            ["d-e0", "d-e1"]
        );
        assert_eq!(first[0].snapshot, "sealed at 100");
        let after = Some((first[1].created_at_ms, first[1].decision_id.clone()));
        let rest = store.snapshots("acme", 0, after, 2).await.unwrap();
        assert_eq!(
            rest.iter()
                .map(|s| s.decision_id.as_str())
                .collect::<Vec<_>>(),
            ["d-e3"]
        );
        assert_eq!(
            store.snapshots("acme", 102, None, 10).await.unwrap().len(),
            1
        );
        // Cleared before 102: the decisions stay, their snapshots go.
        assert_eq!(store.clear_snapshots(102).await.unwrap(), 2);
        assert_eq!(store.snapshots("acme", 0, None, 10).await.unwrap().len(), 1);
        assert!(store.decision("acme", "d-e0").await.unwrap().is_some());
        assert_eq!(store.clear_snapshots(102).await.unwrap(), 0);
    })
    .await;
}
