//! Web inbox sessions: stored by the hash of their id, touched forward only, deleted one by
//! one or swept once ended — the same rows for every replica.

use warden_store::SessionRecord;

use crate::common::each_backend;

fn session(hash: &str, last_seen_ms: i64, expires_at_ms: i64) -> SessionRecord {
    SessionRecord {
        id_hash: hash.into(),
        key_id: "k1".into(),
        tenant: "acme".into(),
        created_at_ms: 10,
        last_seen_ms,
        expires_at_ms,
    }
}

#[tokio::test]
async fn sessions_are_shared_touched_forward_and_swept_once_ended() {
    each_backend(async |db| {
        let store = &*db.store;
        let other = db.replica().await;
        store
            .create_session(&session("h1", 10, 1_000))
            .await
            .unwrap();
        assert!(
            store
                .create_session(&session("h1", 10, 1_000))
                .await
                .is_err(),
            "an id hash is one session"
        );
        assert_eq!(
            other.session("h1").await.unwrap(),
            Some(session("h1", 10, 1_000)),
            "another replica reads it"
        );
        assert_eq!(store.session("h2").await.unwrap(), None);

        other.touch_session("h1", 50).await.unwrap();
        store.touch_session("h1", 40).await.unwrap();
        assert_eq!(store.session("h1").await.unwrap().unwrap().last_seen_ms, 50);

        // Ended: past its lifetime (h2), or unused since before the idle cut (h3).
        store.create_session(&session("h2", 90, 100)).await.unwrap();
        store
            .create_session(&session("h3", 20, 1_000))
            .await
            .unwrap();
        assert_eq!(store.prune_sessions(100, 30).await.unwrap(), 2);
        assert!(store.session("h2").await.unwrap().is_none());
        assert!(store.session("h3").await.unwrap().is_none());
        assert!(store.session("h1").await.unwrap().is_some());

        assert!(other.delete_session("h1").await.unwrap());
        assert!(!store.delete_session("h1").await.unwrap());
        assert_eq!(store.session("h1").await.unwrap(), None);
    })
    .await;
}
