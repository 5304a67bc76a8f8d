//! The database commands of the `warden` binary as an operator runs them (`keys`, `migrate`,
//! `audit`): against a SQLite file, and against PostgreSQL in a fresh schema per test when
//! `WARDEN_TEST_DATABASE_URL` is set.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use serde_json::{Value, json};
use sqlx::Connection;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::str::FromStr;
use std::sync::{Arc, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use warden_store::{Append, NewEvent, Store, kind};

/// The environment variable naming the PostgreSQL server to test against.
const PG_ENV: &str = "WARDEN_TEST_DATABASE_URL";

/// One fresh database, the `--db` URL that reaches it, and how to reach it behind the CLI.
struct Db {
    url: String,
    place: Place,
}

enum Place {
    Sqlite { _dir: tempfile::TempDir },
    Postgres { base: String, schema: String },
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

impl Db {
    /// A new SQLite file in its own folder; the CLI migrates it on first use.
    fn sqlite() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("warden.db").display().to_string();
        Db {
            url,
            place: Place::Sqlite { _dir: dir },
        }
    }

    /// A new, empty schema on the PostgreSQL server, or `None` (said loudly) without one.
    fn postgres_unmigrated() -> Option<Db> {
        let Ok(base) = std::env::var(PG_ENV) else {
            // Past the harness's capture, which only catches the print macros.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: {PG_ENV} is not set: the PostgreSQL half of this test did not run"
            );
            return None;
        };
        let schema = common::unique_name("warden_cli_test");
        runtime().block_on(async {
            warden_store::open_postgres_in_schema(&base, &schema)
                .await
                .unwrap();
        });
        // The CLI gets an ordinary URL; the schema travels as a startup option.
        let separator = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{separator}options=-c%20search_path%3D{schema}");
        Some(Db {
            url,
            place: Place::Postgres { base, schema },
        })
    }

    /// A new PostgreSQL schema, migrated with `warden migrate` as an operator would.
    fn postgres() -> Option<Db> {
        let db = Db::postgres_unmigrated()?;
        let out = db.warden(&["migrate"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        Some(db)
    }

    /// Runs `warden ARGS --db URL`.
    fn warden(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--db", &self.url]);
        warden(&all)
    }

    /// The store the CLI works on, opened directly: for writing many events quickly.
    async fn store(&self) -> Arc<dyn Store> {
        match &self.place {
            Place::Sqlite { .. } => warden_store::open(&self.url).await.unwrap(),
            Place::Postgres { base, schema } => warden_store::open_postgres_in_schema(base, schema)
                .await
                .unwrap(),
        }
    }

    /// Runs raw SQL behind the store's back: how the tests tamper.
    fn exec(&self, sql: &str) {
        runtime().block_on(async {
            match &self.place {
                Place::Sqlite { .. } => {
                    let url = format!("sqlite://{}", self.url);
                    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
                    sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
                    conn.close().await.unwrap();
                }
                Place::Postgres { base, schema } => {
                    let mut conn = pg_connection(base, Some(schema)).await;
                    sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
                    conn.close().await.unwrap();
                }
            }
        });
    }

    fn is_postgres(&self) -> bool {
        matches!(self.place, Place::Postgres { .. })
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        // A failed test's schema is left for inspection.
        if let (Place::Postgres { base, schema }, false) = (&self.place, std::thread::panicking()) {
            runtime().block_on(async {
                let mut conn = pg_connection(base, None).await;
                sqlx::raw_sql(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
                    .execute(&mut conn)
                    .await
                    .unwrap();
            });
        }
    }
}

async fn pg_connection(url: &str, schema: Option<&str>) -> sqlx::PgConnection {
    let mut options = sqlx::postgres::PgConnectOptions::from_str(url).unwrap();
    if let Some(schema) = schema {
        options = options.options([("search_path", schema)]);
    }
    sqlx::PgConnection::connect_with(&options).await.unwrap()
}

/// Runs `test` on a SQLite file, then on a migrated PostgreSQL schema if there is a server.
fn each_backend(test: impl Fn(&Db)) {
    test(&Db::sqlite());
    if let Some(db) = Db::postgres() {
        test(&db);
    }
}

fn warden(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(args)
        .env_remove("WARDEN_DB")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a command that must succeed and returns its standard output.
fn ok(db: &Db, args: &[&str]) -> String {
    let out = db.warden(args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "warden {args:?}\nstdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Creates a key and returns its token.
fn create_key(db: &Db, args: &[&str]) -> String {
    let mut all = vec!["keys", "create"];
    all.extend(args);
    ok(db, &all).lines().next().unwrap().to_owned()
}

fn key_id(token: &str) -> String {
    token.split('_').nth(1).unwrap().to_owned()
}

/// Whether the text holds anything shaped like a secret or its SHA-256: 64 hex digits.
fn has_64_hex(text: &str) -> bool {
    text.split(|c: char| !c.is_ascii_hexdigit())
        .any(|word| word.len() >= 64)
}

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// A decision event as the server would record it.
fn decision(n: usize, tenant: &str, effect: &str, time_ms: i64) -> Append {
    Append {
        event: NewEvent {
            id: format!("ev-{n}"),
            time_ms,
            tenant: tenant.into(),
            kind: kind::DECISION.into(),
            agent: Some("support-bot".into()),
            on_behalf_of: Some("user-991".into()),
            action_type: Some("ticket.resolve".into()),
            target_type: Some("ticket".into()),
            target_id: Some(format!("T-{n}")),
            mode: Some("auto".into()),
            confidence_initial: Some(0.82),
            confidence_adjusted: Some(0.72),
            effect: Some(effect.into()),
            rule_ids: vec!["low-confidence-resolve".into()],
            reasons: vec!["confidence 0.82 is below the 0.85 needed".into()],
            policy_version: Some("1.0.0".into()),
            policy_hash: None,
            payload_digest: Some("ab".repeat(32)),
            context_digest: Some("cd".repeat(32)),
            kept: json!({"action": {"target": {"id": format!("T-{n}")}}}),
            decision_id: Some(format!("d-{n}")),
            detail: Value::Null,
        },
        decision: None,
        ..Append::default()
    }
}

fn append(db: &Db, batch: Vec<Append>) {
    runtime().block_on(async {
        let store = db.store().await;
        // A SQLite file the CLI has not touched yet is still empty.
        store.migrate().await.unwrap();
        store.append(batch).await.unwrap();
    });
}

#[test]
fn keys_create_prints_the_token_once_and_listings_never_show_a_secret() {
    each_backend(|db| {
        let out = db.warden(&[
            "keys",
            "create",
            "--role",
            "controller,approver",
            "--tenant",
            "acme",
            "--agent",
            "support-*",
            "--group",
            "legal",
            "--user",
            "hal",
            "--label",
            "helpdesk",
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let text = stdout(&out);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "only the token goes to stdout: {text}");
        let token = lines[0];
        assert!(token.starts_with("wdn_"), "{token}");
        assert!(stderr(&out).contains("will not be shown again"));
        assert!(!stderr(&out).contains(token));
        let id = key_id(token);
        let secret = token.rsplit('_').next().unwrap();

        let created = db.warden(&[
            "keys", "create", "--role", "agent", "--agent", "bot-1", "--json",
        ]);
        let body: Value = serde_json::from_slice(&created.stdout).unwrap();
        let agent_token = body["token"].as_str().unwrap();
        assert!(agent_token.starts_with(&format!("wdn_{}_", body["id"].as_str().unwrap())));
        assert_eq!(body["tenant"], "default");
        assert_eq!(body["roles"], json!(["agent"]));
        assert_eq!(body["agent"], "bot-1");
        assert_eq!(body["groups"], json!([]));

        let table = ok(db, &["keys", "list"]);
        assert!(table.contains(&id), "{table}");
        assert!(table.contains("controller,approver"), "{table}");
        assert!(!table.contains(secret) && !has_64_hex(&table), "{table}");

        let listed = ok(db, &["keys", "list", "--json"]);
        assert!(!listed.contains(secret) && !has_64_hex(&listed), "{listed}");
        assert!(!listed.contains("secret"), "{listed}");
        let keys: Value = serde_json::from_str(&listed).unwrap();
        let key = keys
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == id.as_str())
            .unwrap();
        assert_eq!(key["tenant"], "acme");
        assert_eq!(key["roles"], json!(["controller", "approver"]));
        assert_eq!(key["agent"], "support-*");
        assert_eq!(key["groups"], json!(["legal"]));
        assert_eq!(key["label"], "helpdesk");
        assert_eq!(key["active"], true);
        let only_acme = ok(db, &["keys", "list", "--json", "--tenant", "acme"]);
        assert_eq!(
            serde_json::from_str::<Value>(&only_acme)
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            1
        );

        // Both creations are audited, without the secret.
        let events = ok(db, &["audit", "query", "--json", "--kind", "key_created"]);
        assert!(!events.contains(secret), "{events}");
        let events = json_lines(&events);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0]["tenant"], "acme");
        assert_eq!(events[0]["detail"]["key_id"], id.as_str());
        assert_eq!(
            events[0]["detail"]["roles"],
            json!(["controller", "approver"])
        );
        assert_eq!(events[0]["detail"]["agent"], "support-*");
        assert_eq!(events[0]["detail"]["groups"], json!(["legal"]));
        assert_eq!(events[0]["detail"]["label"], "helpdesk");
        assert_eq!(events[0]["detail"]["by"], "cli");
        assert_eq!(events[1]["detail"]["key_id"], body["id"]);
    });
}

#[test]
fn revoking_is_audited_and_an_unknown_or_revoked_key_exits_1() {
    each_backend(|db| {
        let id = key_id(&create_key(db, &["--role", "admin", "--tenant", "acme"]));
        assert_eq!(
            ok(db, &["keys", "revoke", &id]).trim(),
            format!("revoked key {id}")
        );

        let keys: Value = serde_json::from_str(&ok(db, &["keys", "list", "--json"])).unwrap();
        assert_eq!(keys[0]["active"], false);
        assert!(keys[0]["revoked_at"].is_string());

        let events = json_lines(&ok(
            db,
            &["audit", "query", "--json", "--kind", "key_revoked"],
        ));
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["tenant"], "acme");
        assert_eq!(events[0]["detail"], json!({"key_id": id, "by": "cli"}));

        let again = db.warden(&["keys", "revoke", &id]);
        assert_eq!(again.status.code(), Some(1));
        assert!(
            stderr(&again).contains(&format!("no active key `{id}`")),
            "{}",
            stderr(&again)
        );

        let unknown = db.warden(&["keys", "revoke", "nosuchkey123"]);
        assert_eq!(unknown.status.code(), Some(1));
        assert!(
            stderr(&unknown).contains("no active key `nosuchkey123`"),
            "{}",
            stderr(&unknown)
        );
        // Failed revocations record nothing.
        assert_eq!(json_lines(&ok(db, &["audit", "query", "--json"])).len(), 2);
    });
}

#[test]
fn keys_create_refuses_flags_that_do_not_fit_together() {
    let db = Db::sqlite();
    let cases: [(&[&str], &str); 4] = [
        (&["--role", "agent"], "an agent key names exactly one agent"),
        (
            &["--role", "agent", "--agent", "support-*"],
            "an agent key names exactly one agent: `--agent ID`, without `*`",
        ),
        (&["--role", "admni"], "unknown role `admni`"),
        (
            &["--role", "admin", "--tenant", ""],
            "the tenant must not be empty",
        ),
    ];
    for (args, message) in cases {
        let mut all = vec!["keys", "create"];
        all.extend(args);
        let out = db.warden(&all);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
        assert!(stdout(&out).is_empty());
    }
    assert_eq!(ok(&db, &["keys", "list", "--json"]).trim(), "[]");
}

#[test]
fn migrate_print_shows_the_sql_of_the_backend_the_url_names_without_connecting() {
    let sqlite = warden(&["migrate", "--print", "--db", "/nonexistent/dir/warden.db"]);
    assert_eq!(sqlite.status.code(), Some(0), "{}", stderr(&sqlite));
    let sqlite = stdout(&sqlite);
    assert!(sqlite.starts_with("-- 0001_init\n"), "{sqlite}");
    assert!(sqlite.contains("CREATE TABLE audit_events"));
    assert!(sqlite.contains("(SQLite)"));

    // Nothing listens on port 1: printing must not try.
    for url in [
        "postgres://warden:hunter2@127.0.0.1:1/w",
        "postgresql://127.0.0.1:1/w",
    ] {
        let pg = warden(&["migrate", "--print", "--db", url]);
        assert_eq!(pg.status.code(), Some(0), "{}", stderr(&pg));
        let pg = stdout(&pg);
        assert!(pg.starts_with("-- 0001_init\n"), "{pg}");
        assert!(pg.contains("CREATE TABLE audit_events"));
        assert!(pg.contains("(PostgreSQL)"));
    }

    let json: Value = serde_json::from_slice(
        &warden(&["migrate", "--print", "--json", "--db", "sqlite://x.db"]).stdout,
    )
    .unwrap();
    assert_eq!(json["backend"], "sqlite");
    assert_eq!(json["migrations"][0]["name"], "0001_init");

    let mysql = warden(&["migrate", "--print", "--db", "mysql://root:hunter2@h/db"]);
    assert_eq!(mysql.status.code(), Some(2));
    assert!(stderr(&mysql).contains("unsupported database url scheme `mysql`"));
    assert!(!stderr(&mysql).contains("hunter2"));
}

#[test]
fn migrate_applies_once_then_reports_up_to_date_on_sqlite() {
    let db = Db::sqlite();
    assert_eq!(
        ok(&db, &["migrate"]),
        "applied 0001_init\napplied 0002_hardening\napplied 0003_permits\napplied 0004_budgets\napplied 0005_approvals\napplied 0006_approval_grants\napplied 0007_policy_versions\napplied 0008_decision_snapshots\napplied 0009_proposals\napplied 0010_inbox_sessions\napplied 0011_observed_proposals\napplied 0012_policy_sources\napplied 0013_deflated_policy_sources\n"
    );
    assert_eq!(ok(&db, &["migrate"]), "up to date\n");
    let json: Value = serde_json::from_str(&ok(&db, &["migrate", "--json"])).unwrap();
    assert_eq!(json, json!({"backend": "sqlite", "applied": []}));
}

#[test]
fn sqlite_is_migrated_by_any_command() {
    let db = Db::sqlite();
    assert_eq!(ok(&db, &["audit", "query"]), "");
    assert_eq!(ok(&db, &["migrate"]), "up to date\n");
}

#[test]
fn postgres_is_migrated_only_when_asked() {
    let Some(db) = Db::postgres_unmigrated() else {
        return;
    };
    for args in [
        &["keys", "list"][..],
        &["audit", "verify"],
        &["keys", "create", "--role", "admin"],
    ] {
        let out = db.warden(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let error = stderr(&out);
        assert!(error.contains("missing migration `0001_init`"), "{error}");
        assert!(error.contains("warden migrate --db URL"), "{error}");
        assert_eq!(error.lines().count(), 1, "{error}");
    }
    assert_eq!(
        ok(&db, &["migrate"]),
        "applied 0001_init\napplied 0002_hardening\napplied 0003_permits\napplied 0004_budgets\napplied 0005_approvals\napplied 0006_approval_grants\napplied 0007_policy_versions\napplied 0008_decision_snapshots\napplied 0009_proposals\napplied 0010_inbox_sessions\napplied 0011_observed_proposals\napplied 0012_policy_sources\napplied 0013_deflated_policy_sources\n"
    );
    assert_eq!(ok(&db, &["migrate"]), "up to date\n");
    assert_eq!(ok(&db, &["keys", "list", "--json"]).trim(), "[]");

    // The URL's search_path option reached the server: the tables are in this test's
    // schema and nowhere else.
    let Place::Postgres { base, schema } = &db.place else {
        unreachable!()
    };
    let tables: Vec<String> = runtime().block_on(async {
        let mut conn = pg_connection(base, None).await;
        sqlx::query_scalar(
            "SELECT table_schema::text FROM information_schema.tables WHERE table_name = 'warden_migrations' AND table_schema = $1",
        )
        .bind(schema)
        .fetch_all(&mut conn)
        .await
        .unwrap()
    });
    assert_eq!(tables, vec![schema.clone()]);
}

#[test]
fn verify_passes_on_a_fresh_chain_and_names_the_first_tampered_seq() {
    each_backend(|db| {
        assert_eq!(
            ok(db, &["audit", "verify"]),
            "chain intact: 0 events checked\n"
        );
        for _ in 0..3 {
            create_key(db, &["--role", "admin"]);
        }
        assert_eq!(
            ok(db, &["audit", "verify"]),
            "chain intact: 3 events checked\n"
        );

        db.exec("UPDATE audit_events SET tenant = 'evil' WHERE seq = 2");
        let second = json_lines(&ok(db, &["audit", "query", "--json"]))[1]["id"].clone();
        let out = db.warden(&["audit", "verify"]);
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            stdout(&out),
            format!(
                "chain broken at seq 2 (event {}): stored hash does not match the event's contents\n",
                second.as_str().unwrap()
            )
        );
        let json = db.warden(&["audit", "verify", "--json"]);
        assert_eq!(json.status.code(), Some(1));
        let body: Value = serde_json::from_slice(&json.stdout).unwrap();
        assert_eq!(body["intact"], false);
        assert_eq!(body["first_broken"]["seq"], 2);
        assert_eq!(body["first_broken"]["event_id"], second);
    });
}

#[test]
fn export_pages_through_every_event_as_ocsf_or_warden_json_lines() {
    each_backend(|db| {
        // More than one page (EventFilter::MAX_LIMIT is 1000).
        let now = now_ms();
        let batch = (0..1003)
            .map(|n| {
                decision(
                    n,
                    "acme",
                    ["allow", "deny", "require_approval"][n % 3],
                    now - 1000,
                )
            })
            .collect();
        append(db, batch);
        let id = key_id(&create_key(db, &["--role", "admin"]));

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("audit.ocsf.jsonl");
        let out = db.warden(&[
            "audit",
            "export",
            "--format",
            "ocsf",
            "--output",
            file.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(stdout(&out).is_empty());
        assert!(
            stderr(&out).contains("exported 1004 events"),
            "{}",
            stderr(&out)
        );
        let records = json_lines(&std::fs::read_to_string(&file).unwrap());
        assert_eq!(records.len(), 1004);
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r["class_uid"], 6003);
            assert_eq!(r["category_uid"], 6);
            assert_eq!(
                r["type_uid"].as_i64().unwrap(),
                600_300 + r["activity_id"].as_i64().unwrap()
            );
            assert_eq!(r["metadata"]["sequence"], i + 1, "in seq order, none twice");
            assert_eq!(r["metadata"]["version"], "1.3.0");
        }
        let deny = &records[1];
        assert_eq!(deny["activity_id"], 99);
        assert_eq!(deny["status_id"], 2);
        assert_eq!(deny["actor"]["user"]["uid"], "support-bot");
        assert_eq!(deny["api"]["operation"], "ticket.resolve");
        assert_eq!(deny["resources"], json!([{"type": "ticket", "uid": "T-1"}]));
        assert_eq!(deny["metadata"]["tenant_uid"], "acme");
        assert_eq!(deny["metadata"]["correlation_uid"], "d-1");
        assert_eq!(deny["unmapped"]["effect"], "deny");
        assert_eq!(
            deny["unmapped"]["rule_ids"],
            json!(["low-confidence-resolve"])
        );
        assert_eq!(records[2]["status_id"], 99);
        assert_eq!(records[2]["status"], "require_approval");
        let key = &records[1003];
        assert_eq!(key["activity_id"], 1);
        assert_eq!(key["unmapped"]["detail"]["key_id"], id.as_str());

        // Warden's own lines are exactly what `audit query --json` prints.
        let jsonl = ok(db, &["audit", "export", "--format", "jsonl"]);
        assert_eq!(jsonl.lines().count(), 1004);
        let first_page = ok(db, &["audit", "query", "--json", "--limit", "1004"]);
        assert_eq!(jsonl, first_page);
        let event = &json_lines(&jsonl)[0];
        for field in [
            "seq",
            "id",
            "time",
            "tenant",
            "kind",
            "agent",
            "on_behalf_of",
            "action_type",
            "target_type",
            "target_id",
            "mode",
            "confidence_initial",
            "confidence_adjusted",
            "effect",
            "rule_ids",
            "reasons",
            "policy_version",
            "payload_digest",
            "context_digest",
            "kept",
            "decision_id",
            "detail",
            "prev_hash",
            "hash",
        ] {
            assert!(event.get(field).is_some(), "missing {field}: {event}");
        }

        let only_denials = ok(
            db,
            &["audit", "export", "--format", "ocsf", "--effect", "deny"],
        );
        assert_eq!(only_denials.lines().count(), 334);
    });
}

#[test]
fn query_filters_limits_and_continues_after_a_seq() {
    each_backend(|db| {
        let now = now_ms();
        let hour = 3_600_000;
        append(
            db,
            vec![
                decision(1, "acme", "deny", now - 3 * hour),
                decision(2, "acme", "allow", now - 30 * 60_000),
                decision(3, "globex", "deny", now - 20 * 60_000),
                decision(4, "acme", "deny", now - 10 * 60_000),
            ],
        );
        let seqs = |args: &[&str]| -> Vec<i64> {
            let mut all = vec!["audit", "query", "--json"];
            all.extend(args);
            json_lines(&ok(db, &all))
                .iter()
                .map(|e| e["seq"].as_i64().unwrap())
                .collect()
        };
        assert_eq!(seqs(&[]), [1, 2, 3, 4]);
        assert_eq!(seqs(&["--tenant", "acme"]), [1, 2, 4]);
        assert_eq!(seqs(&["--effect", "deny"]), [1, 3, 4]);
        assert_eq!(
            seqs(&["--tenant", "acme", "--effect", "deny", "--since", "1h"]),
            [4]
        );
        assert_eq!(seqs(&["--until", "1h"]), [1]);
        assert_eq!(
            seqs(&["--since", "2000-01-01", "--until", "2000-01-02"]),
            Vec::<i64>::new()
        );
        assert_eq!(
            seqs(&[
                "--kind",
                "decision",
                "--agent",
                "support-bot",
                "--action",
                "ticket.resolve"
            ])
            .len(),
            4
        );
        assert_eq!(seqs(&["--agent", "someone-else"]), Vec::<i64>::new());

        let limited = db.warden(&["audit", "query", "--limit", "2"]);
        assert_eq!(stdout(&limited).lines().count(), 2);
        assert!(
            stderr(&limited).contains("continue with --after-seq 2"),
            "{}",
            stderr(&limited)
        );
        assert_eq!(seqs(&["--after-seq", "2"]), [3, 4]);
        let all = db.warden(&["audit", "query"]);
        assert!(stderr(&all).is_empty(), "nothing more to continue from");

        let text = ok(db, &["audit", "query", "--tenant", "globex"]);
        let fields: Vec<&str> = text.trim().split(' ').collect();
        assert_eq!(fields.len(), 8, "{text}");
        assert_eq!(fields[0], "3");
        assert!(
            fields[1].ends_with('Z') && fields[1].contains('T'),
            "{text}"
        );
        assert_eq!(
            fields[2..],
            [
                "globex",
                "decision",
                "support-bot",
                "ticket.resolve",
                "deny",
                "low-confidence-resolve"
            ]
        );

        let bad = db.warden(&["audit", "query", "--since", "yesterday"]);
        assert_eq!(bad.status.code(), Some(2));
        assert!(stderr(&bad).contains("`yesterday` is neither a duration"));
    });
}

#[test]
fn tail_prints_the_last_events_oldest_first() {
    each_backend(|db| {
        let now = now_ms();
        append(
            db,
            (0..1005)
                .map(|n| decision(n, "acme", "allow", now))
                .collect(),
        );
        let seqs = |args: &[&str]| -> Vec<i64> {
            let mut all = vec!["audit", "tail", "--json"];
            all.extend(args);
            json_lines(&ok(db, &all))
                .iter()
                .map(|e| e["seq"].as_i64().unwrap())
                .collect()
        };
        assert_eq!(seqs(&[]), (996..=1005).collect::<Vec<_>>());
        assert_eq!(seqs(&["-n", "3"]), [1003, 1004, 1005]);
        // More than one page.
        let many = seqs(&["-n", "1002"]);
        assert_eq!(many, (4..=1005).collect::<Vec<_>>());
    });
}

#[test]
fn tail_follow_prints_new_events_until_interrupted() {
    let db = Db::sqlite();
    create_key(&db, &["--role", "admin"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["audit", "tail", "--follow", "--db", &db.url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, received) = mpsc::channel();
    let reader = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in reader.lines() {
            if lines.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let next = || received.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(next().contains(" key_created "), "the existing event first");
    create_key(
        &db,
        &["--role", "approver", "--user", "ann", "--group", "legal"],
    );
    create_key(&db, &["--role", "controller"]);
    assert!(next().starts_with("2 "));
    assert!(next().starts_with("3 "));

    let interrupt = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupt.success());
    let status = child.wait().unwrap();
    let mut errors = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut errors)
        .unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "Ctrl-C ends a follow normally: {errors}"
    );
}

#[test]
fn purge_writes_a_checkpoint_and_the_chain_still_verifies() {
    each_backend(|db| {
        create_key(db, &["--role", "admin"]);
        create_key(db, &["--role", "admin"]);
        // Nothing is 90 days old yet.
        let none = ok(db, &["audit", "purge", "--older-than", "90d"]);
        assert!(none.contains("purged 0 events"), "{none}");
        assert!(none.contains("no checkpoint"), "{none}");

        std::thread::sleep(Duration::from_millis(5));
        let purged = ok(db, &["audit", "purge", "--older-than", "0s"]);
        assert!(
            purged.starts_with("purged 2 events and 0 decisions older than "),
            "{purged}"
        );
        assert!(purged.contains("checkpoint recorded at seq 3"), "{purged}");
        assert_eq!(
            ok(db, &["audit", "verify"]),
            "chain intact: 1 events checked\n"
        );

        let events = json_lines(&ok(db, &["audit", "query", "--json"]));
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["kind"], "checkpoint");
        assert_eq!(events[0]["detail"]["purged"], 2);
        assert_eq!(events[0]["detail"]["purged_through_seq"], 2);

        // The chain goes on from the checkpoint.
        create_key(db, &["--role", "admin"]);
        assert_eq!(
            ok(db, &["audit", "verify"]),
            "chain intact: 2 events checked\n"
        );
        let json: Value =
            serde_json::from_str(&ok(db, &["audit", "purge", "--older-than", "1h", "--json"]))
                .unwrap();
        assert_eq!(json["purged"], 0);
        assert_eq!(json["checkpoint_seq"], Value::Null);
    });
}

#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    let db = Db::sqlite();
    append(
        &db,
        (0..1500)
            .map(|n| decision(n, "acme", "deny", now_ms()))
            .collect(),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["audit", "export", "--format", "jsonl", "--db", &db.url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(serde_json::from_str::<Value>(&first).unwrap()["seq"], 1);
    // The reader is gone now, like `| head -1`.
    let status = child.wait().unwrap();
    let mut errors = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut errors)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{errors}");
    assert!(!errors.contains("error"), "{errors}");
}

#[test]
fn the_database_comes_from_the_flag_the_environment_or_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let env_db = dir.path().join("from-env.db");
    let run = |args: &[&str], env: Option<&Path>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_warden"));
        command
            .args(args)
            .current_dir(dir.path())
            .env_remove("WARDEN_DB");
        if let Some(path) = env {
            command.env("WARDEN_DB", path);
        }
        let out = command.output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        stdout(&out)
    };
    run(&["keys", "create", "--role", "admin"], Some(&env_db));
    assert!(env_db.exists());
    assert!(!dir.path().join("warden.db").exists());

    run(&["keys", "create", "--role", "admin"], None);
    assert!(
        dir.path().join("warden.db").exists(),
        "the default is ./warden.db"
    );

    // The flag wins over the environment, before or after the subcommand.
    let flagged = dir.path().join("flag.db");
    let flagged = flagged.to_str().unwrap();
    run(&["keys", "--db", flagged, "list"], Some(&env_db));
    run(&["audit", "verify", "--db", flagged], Some(&env_db));
    assert_eq!(
        run(&["keys", "list", "--json", "--db", flagged], Some(&env_db)).trim(),
        "[]"
    );
    let help = run(
        &["keys", "list", "--help"],
        Some(Path::new("postgres://u:hunter2@h/db")),
    );
    assert!(help.contains("--db <URL>"), "{help}");
    assert!(
        !help.contains("hunter2"),
        "the environment's value is not shown: {help}"
    );
}

#[test]
fn every_database_command_has_an_example_in_its_help() {
    for command in [
        &["keys", "create"][..],
        &["keys", "list"],
        &["keys", "revoke"],
        &["migrate"],
        &["audit", "query"],
        &["audit", "tail"],
        &["audit", "verify"],
        &["audit", "export"],
        &["audit", "purge"],
    ] {
        let mut args = command.to_vec();
        args.push("--help");
        let out = warden(&args);
        assert_eq!(out.status.code(), Some(0), "{command:?}");
        assert!(
            stdout(&out).contains("Example"),
            "{command:?}: {}",
            stdout(&out)
        );
    }
}

#[test]
fn postgres_state_is_shared_between_commands_and_isolated_per_schema() {
    let (Some(a), Some(b)) = (Db::postgres(), Db::postgres()) else {
        return;
    };
    assert!(a.is_postgres() && b.is_postgres());
    create_key(&a, &["--role", "admin"]);
    assert_eq!(json_lines(&ok(&a, &["audit", "query", "--json"])).len(), 1);
    assert_eq!(ok(&b, &["audit", "query", "--json"]), "");
}
