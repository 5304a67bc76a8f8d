//! Proposals: written with their events under the chain lock, superseding only what the
//! caller saw, decided once from an expected status, and applied in the transaction of the
//! version they publish — or not at all.

use serde_json::json;
use warden_store::{
    NewEvent, PolicyPublish, PolicyVersionInfo, ProposalFilter, ProposalLimit, ProposalRecord,
    ProposalWrite, ProposalWritten, Published, StoredPolicy, Supersede, kind, policy_status,
    proposal_status,
};

use crate::common::{all_events, each_backend};

fn record(id: &str, status: &str, subject: &str, at: i64) -> ProposalRecord {
    ProposalRecord {
        id: id.into(),
        tenant: "acme".into(),
        agent: "support-bot".into(),
        key_id: "k1".into(),
        status: status.into(),
        subject: subject.into(),
        change_hash: format!("hash-{subject}"),
        body: "{}".into(),
        review: "{}".into(),
        review_token: format!("token-{id}"),
        live_hash: "live".into(),
        created_at_ms: at,
        ..ProposalRecord::default()
    }
}

fn proposal_event(id: &str, kind: &str, at: i64) -> NewEvent {
    NewEvent {
        id: id.into(),
        time_ms: at,
        tenant: "acme".into(),
        kind: kind.into(),
        agent: Some("support-bot".into()),
        detail: json!({"proposal_id": id}),
        ..NewEvent::default()
    }
}

fn insert(record: ProposalRecord, supersede: Vec<Supersede>) -> ProposalWrite {
    let event = proposal_event(&format!("e-{}", record.id), kind::PROPOSAL_SUBMITTED, 1);
    ProposalWrite::Insert {
        record,
        events: vec![event],
        supersede,
        limit: None,
    }
}

fn publish(revision: i64, parent: Option<i64>, proposal: ProposalWrite) -> PolicyPublish {
    let version = format!("1.0.{revision}");
    PolicyPublish {
        policy: StoredPolicy {
            info: PolicyVersionInfo {
                tenant: "acme".into(),
                revision,
                version: version.clone(),
                hash: format!("hash-{version}"),
                parent,
                author: "k1".into(),
                comment: None,
                created_at_ms: 100 + revision,
                status: policy_status::ACTIVE.into(),
            },
            source: format!("version: {version}\ndefault: deny\n"),
        },
        previous_becomes: policy_status::SUPERSEDED,
        event: NewEvent {
            id: format!("published-{revision}"),
            time_ms: 100 + revision,
            tenant: "acme".into(),
            kind: kind::POLICY_PUBLISHED.into(),
            ..NewEvent::default()
        },
        proposal: Some(proposal),
    }
}

#[tokio::test]
async fn a_proposal_is_written_with_its_event_and_supersedes_only_what_was_seen() {
    each_backend(async |db| {
        let store = &*db.store;
        let first = record("P1", proposal_status::NEEDS_HUMAN, "crm.export", 10);
        let written = store
            .write_proposal(insert(first.clone(), vec![]))
            .await
            .unwrap();
        assert_eq!(written, ProposalWritten::Written(first.clone()));
        assert_eq!(store.proposal("acme", "P1").await.unwrap(), Some(first));
        assert_eq!(store.proposal("globex", "P1").await.unwrap(), None);

        // A newer one that does not name the pending one writes nothing.
        let second = record("P2", proposal_status::NEEDS_HUMAN, "crm.export", 20);
        assert_eq!(
            store
                .write_proposal(insert(second.clone(), vec![]))
                .await
                .unwrap(),
            ProposalWritten::Stale(None)
        );
        let supersede = vec![Supersede {
            id: "P1".into(),
            event: proposal_event("e-sup", kind::PROPOSAL_SUPERSEDED, 20),
        }];
        store
            .write_proposal(insert(second, supersede))
            .await
            .unwrap();
        let old = store.proposal("acme", "P1").await.unwrap().unwrap();
        assert_eq!(old.status, proposal_status::SUPERSEDED);
        assert_eq!(old.superseded_by.as_deref(), Some("P2"));
        let kinds: Vec<String> = all_events(store)
            .await
            .into_iter()
            .map(|e| e.event.kind)
            .collect();
        assert_eq!(
            kinds,
            [
                kind::PROPOSAL_SUBMITTED,
                kind::PROPOSAL_SUBMITTED,
                kind::PROPOSAL_SUPERSEDED
            ]
        );
        // Listing and counting: newest first, per agent and status.
        let listed = store
            .proposals(&ProposalFilter {
                tenant: "acme".into(),
                status: Some(proposal_status::NEEDS_HUMAN.into()),
                ..ProposalFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(
            listed.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
            ["P2"]
        );
        assert_eq!(
            store
                .count_proposals("acme", "support-bot", 0)
                .await
                .unwrap(),
            2
        );
        assert_eq!(
            store
                .count_proposals("acme", "support-bot", 15)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            store
                .count_proposals("acme", "billing-bot", 0)
                .await
                .unwrap(),
            0
        );
        // The limit is counted in the insert's own transaction.
        let limited = |id: &str, max: u64| ProposalWrite::Insert {
            record: record(id, proposal_status::REJECTED, "", 30),
            events: vec![],
            supersede: vec![],
            limit: Some(ProposalLimit { since_ms: 0, max }),
        };
        assert_eq!(
            store.write_proposal(limited("P3", 2)).await.unwrap(),
            ProposalWritten::OverLimit
        );
        assert_eq!(store.proposal("acme", "P3").await.unwrap(), None);
        assert!(matches!(
            store.write_proposal(limited("P3", 3)).await.unwrap(),
            ProposalWritten::Written(_)
        ));
    })
    .await;
}

#[tokio::test]
async fn two_replicas_deciding_one_proposal_change_it_once() {
    each_backend(async |db| {
        let store = &*db.store;
        let replica = db.replica().await;
        store
            .write_proposal(insert(record("P1", proposal_status::NEEDS_HUMAN, "", 10), vec![]))
            .await
            .unwrap();
        let decide = |by: &str| {
            let mut r = record("P1", proposal_status::REJECTED, "", 10);
            r.decided_by = Some(by.into());
            r.reason = Some("no".into());
            ProposalWrite::Update {
                record: r,
                expected: vec![proposal_status::NEEDS_HUMAN.into()],
                events: vec![proposal_event(&format!("d-{by}"), kind::PROPOSAL_DECIDED, 30)],
            }
        };
        let (one, two) = tokio::join!(
            store.write_proposal(decide("alice")),
            replica.write_proposal(decide("bob")),
        );
        let (one, two) = (one.unwrap(), two.unwrap());
        let written = [&one, &two]
            .iter()
            .filter(|w| matches!(w, ProposalWritten::Written(_)))
            .count();
        assert_eq!(written, 1, "{one:?} {two:?}");
        assert!(
            [&one, &two]
                .iter()
                .any(|w| matches!(w, ProposalWritten::Stale(Some(r)) if r.status == proposal_status::REJECTED)),
            "{one:?} {two:?}"
        );
        let decided = all_events(store)
            .await
            .into_iter()
            .filter(|e| e.event.kind == kind::PROPOSAL_DECIDED)
            .count();
        assert_eq!(decided, 1);
        let missing = ProposalWrite::Update {
            record: record("nope", proposal_status::REJECTED, "", 10),
            expected: vec![proposal_status::NEEDS_HUMAN.into()],
            events: vec![],
        };
        assert_eq!(store.write_proposal(missing).await.unwrap(), ProposalWritten::NotFound);
    })
    .await;
}

#[tokio::test]
async fn an_applied_proposal_and_its_version_are_written_together_or_not_at_all() {
    each_backend(async |db| {
        let store = &*db.store;
        let pending = record("P1", proposal_status::NEEDS_HUMAN, "", 10);
        store
            .write_proposal(insert(pending.clone(), vec![]))
            .await
            .unwrap();
        let mut approved = pending.clone();
        approved.status = proposal_status::APPROVED.into();
        let approve = |expected: &str| ProposalWrite::Update {
            record: approved.clone(),
            expected: vec![expected.into()],
            events: vec![proposal_event("d-1", kind::PROPOSAL_DECIDED, 30)],
        };
        // Expecting another status: no version, no event, no change.
        let stale = store
            .publish_policy(publish(1, None, approve(proposal_status::REVISE_REQUESTED)))
            .await
            .unwrap();
        assert!(
            matches!(&stale, Published::ProposalStale(found)
                if matches!(**found, ProposalWritten::Stale(Some(_)))),
            "{stale:?}"
        );
        assert_eq!(store.policy("acme", None).await.unwrap(), None);
        assert_eq!(all_events(store).await.len(), 1);

        let written = store
            .publish_policy(publish(1, None, approve(proposal_status::NEEDS_HUMAN)))
            .await
            .unwrap();
        assert_eq!(written, Published::Written);
        let now = store.proposal("acme", "P1").await.unwrap().unwrap();
        assert_eq!(now.status, proposal_status::APPROVED);
        assert_eq!(now.applied_revision, Some(1));
        assert_eq!(now.applied_version.as_deref(), Some("1.0.1"));
        let events = all_events(store).await;
        let kinds: Vec<&str> = events.iter().map(|e| e.event.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                kind::PROPOSAL_SUBMITTED,
                kind::PROPOSAL_DECIDED,
                kind::POLICY_PUBLISHED
            ]
        );

        // An insert that applies at once: the row carries the version it published.
        let auto = record("P2", proposal_status::AUTO_APPROVED, "", 40);
        assert_eq!(
            store
                .publish_policy(publish(2, Some(1), insert(auto, vec![])))
                .await
                .unwrap(),
            Published::Written
        );
        let auto = store.proposal("acme", "P2").await.unwrap().unwrap();
        assert_eq!(auto.applied_revision, Some(2));
        // A publish on a history that moved on writes neither.
        let late = record("P3", proposal_status::AUTO_APPROVED, "", 50);
        assert!(matches!(
            store
                .publish_policy(publish(2, Some(1), insert(late, vec![])))
                .await
                .unwrap(),
            Published::Conflict { .. }
        ));
        assert_eq!(store.proposal("acme", "P3").await.unwrap(), None);
    })
    .await;
}
