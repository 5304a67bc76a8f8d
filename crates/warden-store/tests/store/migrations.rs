//! Opening and migrating: URL forms, idempotent migrations, concurrent migrators, edits refused.

use warden_store::{Backend, EventFilter, StoreError, migrations};

use crate::common::{each_backend_unmigrated, event, plain};

fn all_names(backend: Backend) -> Vec<String> {
    migrations(backend)
        .iter()
        .map(|m| m.name.to_owned())
        .collect()
}

#[tokio::test]
async fn migrate_applies_pending_migrations_once() {
    each_backend_unmigrated(async |db| {
        let names = all_names(db.backend());
        assert!(!names.is_empty());
        db.store.ping().await.unwrap();
        assert_eq!(db.store.pending_migrations().await.unwrap(), names);
        assert_eq!(db.store.migrate().await.unwrap(), names);
        assert_eq!(
            db.store.pending_migrations().await.unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(db.store.migrate().await.unwrap(), Vec::<String>::new());
        assert_eq!(
            db.replica().await.migrate().await.unwrap(),
            Vec::<String>::new()
        );
        // The schema works once migrated.
        db.store
            .append(vec![plain(event("e1", "acme", 1))])
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_migrating_at_once_apply_each_migration_once() {
    each_backend_unmigrated(async |db| {
        let replica = db.replica().await;
        let (a, b) = tokio::join!(db.store.migrate(), replica.migrate());
        let mut applied = [a.unwrap(), b.unwrap()].concat();
        applied.sort();
        assert_eq!(applied, all_names(db.backend()));
        assert_eq!(
            db.store.pending_migrations().await.unwrap(),
            Vec::<String>::new()
        );
    })
    .await;
}

#[tokio::test]
async fn an_edited_applied_migration_is_refused() {
    each_backend_unmigrated(async |db| {
        db.store.migrate().await.unwrap();
        db.exec("UPDATE warden_migrations SET checksum = 'edited' WHERE name = '0001_init'")
            .await;
        for error in [
            db.store.pending_migrations().await.unwrap_err(),
            db.store.migrate().await.unwrap_err(),
        ] {
            assert!(
                matches!(&error, StoreError::MigrationChanged(name) if name == "0001_init"),
                "{error:?}"
            );
        }
    })
    .await;
}

/// Migration 0012 moves each version's source to `policy_sources`: a database published to
/// before it reads every version's source after it, and the old column is left empty. The
/// rows it moves stay plain text after 0013, which deflates only what is written after it.
#[tokio::test]
async fn sources_published_before_0012_still_read_after_it() {
    each_backend_unmigrated(async |db| {
        db.store.migrate().await.unwrap();
        // The database as 0011 left it: no sources table, each source in its version's row.
        db.exec("DROP TABLE policy_sources").await;
        db.exec(
            "DELETE FROM warden_migrations \
             WHERE name IN ('0012_policy_sources', '0013_deflated_policy_sources')",
        )
        .await;
        for (revision, status) in [(1, "superseded"), (2, "active")] {
            db.exec(&format!(
                "INSERT INTO policy_versions (tenant, revision, version, hash, source, parent, \
                 author, comment, created_at_ms, status) VALUES ('acme', {revision}, \
                 '1.0.{revision}', 'h{revision}', 'version: 1.0.{revision}', NULL, 'file', \
                 NULL, {revision}, '{status}')"
            ))
            .await;
        }
        assert_eq!(
            db.store.migrate().await.unwrap(),
            vec![
                "0012_policy_sources".to_owned(),
                "0013_deflated_policy_sources".to_owned()
            ]
        );
        let active = db.store.policy("acme", None).await.unwrap().unwrap();
        assert_eq!(
            (active.info.revision, active.source.as_str()),
            (2, "version: 1.0.2")
        );
        let first = db.store.policy("acme", Some(1)).await.unwrap().unwrap();
        assert_eq!(first.source, "version: 1.0.1");
        assert_eq!(
            db.scalar("SELECT COUNT(*) FROM policy_versions WHERE source <> ''")
                .await,
            0
        );
    })
    .await;
}

#[tokio::test]
async fn migrations_record_when_they_were_applied() {
    each_backend_unmigrated(async |db| {
        db.store.migrate().await.unwrap();
        // Between 2020 and 2100: the database clock, in milliseconds.
        let plausible = db
            .scalar(
                "SELECT COUNT(*) FROM warden_migrations \
                 WHERE applied_at_ms > 1600000000000 AND applied_at_ms < 4100000000000",
            )
            .await;
        assert_eq!(plausible, all_names(db.backend()).len() as i64);
    })
    .await;
}

#[tokio::test]
async fn urls_open_sqlite_files_and_memory() {
    let dir = tempfile::tempdir().unwrap();
    for (i, form) in ["sqlite://", "sqlite:", ""].into_iter().enumerate() {
        let path = dir.path().join(format!("w{i}.db"));
        let store = warden_store::open(&format!("{form}{}", path.display()))
            .await
            .unwrap();
        assert!(path.exists(), "{form} creates the file");
        assert_eq!(store.backend(), Backend::Sqlite);
        assert_eq!(
            store.pending_migrations().await.unwrap(),
            all_names(Backend::Sqlite)
        );
    }

    let memory = warden_store::open("sqlite::memory:").await.unwrap();
    memory.migrate().await.unwrap();
    memory
        .append(vec![plain(event("e1", "acme", 1))])
        .await
        .unwrap();
    let events = memory.events(&EventFilter::default()).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(memory.verify().await.unwrap().first_broken, None);
}

#[tokio::test]
async fn bad_urls_and_schemas_are_refused_before_connecting() {
    let error = warden_store::open("mysql://root:hunter2@localhost/db")
        .await
        .unwrap_err();
    assert!(
        matches!(&error, StoreError::UnsupportedScheme(s) if s == "mysql"),
        "{error:?}"
    );
    // Port 1 has no server: these must fail on the name, not on the connection.
    for schema in ["Bad", "x; DROP SCHEMA public", ""] {
        let error =
            warden_store::open_postgres_in_schema("postgres://nobody@127.0.0.1:1/x", schema)
                .await
                .unwrap_err();
        assert!(
            matches!(error, StoreError::InvalidSchema(_)),
            "{schema}: {error:?}"
        );
    }
    let error = warden_store::open_postgres_in_schema("sqlite://x.db", "ok")
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::InvalidUrl(_)), "{error:?}");
}
