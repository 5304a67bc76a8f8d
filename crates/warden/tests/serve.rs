//! `warden serve` as the real binary under load and signals: what a client saw acknowledged
//! survives kill -9 and SIGTERM, payloads and contexts are referenced and never copied,
//! SIGHUP reloads policies, and the first start hands out exactly one admin key.
//!
//! Each test runs in its own folder with its own server on its own port; a [`Server`] guard
//! kills the child however the test ends. PostgreSQL runs only with
//! `WARDEN_TEST_DATABASE_URL`, in a database created for the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{free_port, healthy};

use serde_json::{Value, json};
use sqlx::Connection;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_warden");

/// The environment variable naming the PostgreSQL server to test against.
const PG_ENV: &str = "WARDEN_TEST_DATABASE_URL";

/// Variables the binary reads: the test decides them, not the shell it runs in.
const WARDEN_ENV: [&str; 9] = [
    "WARDEN_DB",
    "WARDEN_LISTEN",
    "WARDEN_POLICIES",
    "WARDEN_DATA_DIR",
    "WARDEN_AUDIT_KEY",
    "WARDEN_URL",
    "WARDEN_KEY",
    "WARDEN_SERVER",
    "RUST_LOG",
];

/// How long a server may take to answer `/healthz` after it is spawned.
const STARTUP: Duration = Duration::from_secs(15);
/// How long a CLI command may run.
const CLI_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a server may take to exit after SIGTERM: "within a few seconds".
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Fewer acknowledged decisions than this and a load test proves nothing.
const MIN_ACKED: usize = 300;
/// How long load runs at least before the signal, and at most while waiting for
/// [`MIN_ACKED`] on a slow or busy machine.
const LOAD_AT_LEAST: Duration = Duration::from_millis(1500);
const LOAD_AT_MOST: Duration = Duration::from_secs(8);

const CARD: &str = "4111 1111 1111 1111";
const EMAIL: &str = "jane.doe@example.com";

/// Allows tickets, denies unsure resolves: a mix of effects to compare after a restart.
const TICKETS_POLICY: &str = r#"version: 1.0.0
default: deny
on_error: deny
rules:
  - id: unsure-resolve
    actions: [ticket.resolve]
    when: action.confidence < 0.5
    effect: deny
    reason: too unsure to resolve
  - id: tickets
    actions: ["ticket.*"]
    effect: allow
    reason: tickets may be worked
"#;

/// Rules that read the payload and the context, one that fails on a missing field, and a
/// reason template that renders a redacted value.
const SECRETS_POLICY: &str = r#"version: 1.0.0
default: deny
on_error: deny
rules:
  - id: test-cards
    actions: [payment.charge]
    when: action.payload.card.startsWith("4111")
    effect: deny
    reason: test cards are refused
  - id: payments
    actions: ["payment.*"]
    effect: allow
    reason: payments may be made
  - id: vip-refunds
    actions: [payment.refund]
    when: context.customer.tier == "vip"
    effect: allow
    reason: vip customers get refunds
  - id: mail
    actions: [email.send]
    effect: allow
    reason: "mail to {{context.user.email}} may be sent"
audit:
  keep: [action.target.id]
  redact: [context.user.email]
"#;

// ---------------------------------------------------------------------------------------
// 1. kill -9 mid-load
// ---------------------------------------------------------------------------------------

/// DESIGN §6: "The decision is not returned until its event is durable." Run the server,
/// fire concurrent decisions, kill -9 it mid-load, restart, and every decision the client
/// saw acknowledged is in the audit log and the chain verifies.
#[test]
fn kill_9_mid_load_loses_no_acknowledged_decision_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("warden.db").display().to_string();
    kill_9_mid_load(dir.path(), &db, "sqlite", &[]);
}

/// The same against PostgreSQL, in a database of its own.
#[test]
fn kill_9_mid_load_loses_no_acknowledged_decision_postgres() {
    let Some(base) = pg_base_url() else { return };
    let database = PgDatabase::create(&base, "warden_crash");
    let dir = tempfile::tempdir().unwrap();
    let out = warden(dir.path(), &["migrate", "--db", &database.url]);
    assert_success(&out);
    kill_9_mid_load(dir.path(), &database.url, "postgres", &["--migrate"]);
}

fn kill_9_mid_load(dir: &Path, db: &str, label: &str, extra: &[&str]) {
    let started = Instant::now();
    write_policy(dir, TICKETS_POLICY);
    let token = controller_key(dir, db, "acme");
    let mut args = vec!["--db", db, "--policies", "policies", "--data-dir", "."];
    args.extend_from_slice(extra);

    let rt = runtime();
    let client = client();
    let (acks, cut_off, load_time) = {
        let _turn = load_turn();
        let mut server = Server::start(dir, "serve-1", &args, "info");
        let load = Load::start(&rt, &client, &server, &token, 32, "crash");
        load.run_until(MIN_ACKED);
        println!("{label}: {}", rt.block_on(audit_batches(&client, &server)));
        server.kill_9();
        let elapsed = load.started.elapsed();
        let tally = load.stop(&rt);
        (tally.acked, tally.cut_off, elapsed)
    };
    println!(
        "{label}: {} decisions acknowledged in {:.2} s before kill -9; {cut_off} requests cut off",
        acks.len(),
        load_time.as_secs_f64()
    );
    assert!(
        acks.len() >= MIN_ACKED,
        "only {} decisions were acknowledged: the test proves nothing",
        acks.len()
    );
    assert!(
        cut_off > 0,
        "no request was in flight when the server was killed"
    );

    let restart = Instant::now();
    let server = Server::start(dir, "serve-2", &args, "info");
    println!(
        "{label}: restarted in {:.2} s",
        restart.elapsed().as_secs_f64()
    );
    assert_chain_intact(dir, db);
    let logged = logged_decisions(dir, db);
    assert_all_logged(&acks, &logged);
    let served = rt.block_on(served_mismatches(&client, &server, &token, &acks));
    assert!(
        served.is_empty(),
        "{} acknowledged decisions are not served after the restart, e.g. {:?}",
        served.len(),
        &served[..served.len().min(5)]
    );

    // The chain goes on from the last durable event.
    let after = rt.block_on(async {
        let mut acked = 0;
        for n in 0..10 {
            let action = ticket_action(&format!("after-restart-{n}"), n);
            if let Ok((200, body)) = post_decision(&client, &server, &token, &action).await {
                acked += usize::from(body["decision_id"].is_string());
            }
        }
        acked
    });
    assert_eq!(after, 10, "decisions after the restart");
    assert_chain_intact(dir, db);
    println!(
        "{label}: {} events logged, all {} acknowledged found; whole test {:.1} s",
        logged.len(),
        acks.len(),
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------
// 2. Reference, don't copy
// ---------------------------------------------------------------------------------------

/// DESIGN §2 and §6: payload and context are never stored verbatim. A card number in the
/// payload and an email in the context, read by rules, failing a rule, rendered into a
/// reason and sent malformed, appear in no file the server leaves behind and in none of its
/// output, with debug logging on.
#[test]
fn payload_and_context_are_referenced_never_copied() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("warden.db").display().to_string();
    write_policy(dir.path(), SECRETS_POLICY);
    let token = controller_key(dir.path(), &db, "default");
    let rt = runtime();
    let client = client();
    let mut server = Server::start(
        dir.path(),
        "serve",
        &["--db", &db, "--policies", "policies", "--data-dir", "."],
        "debug",
    );

    let context = json!({"user": {"email": EMAIL, "role": "member"}});
    let payload = json!({"card": CARD, "amount": 12});
    let charge = rt.block_on(async {
        // A rule reads the payload.
        let (status, charge) = post_decision(
            &client,
            &server,
            &token,
            &json!({"id": "charge-1", "type": "payment.charge", "target": {"type": "order", "id": "O-1"},
                    "payload": payload, "context": context}),
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{charge}");
        assert_eq!(charge["effect"], "deny", "{charge}");
        assert_eq!(charge["reasons"][0]["rule"], "test-cards", "{charge}");

        // A rule fails on a field the context lacks.
        let (status, refund) = post_decision(
            &client,
            &server,
            &token,
            &json!({"type": "payment.refund", "payload": payload, "context": context}),
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{refund}");
        assert_eq!(refund["effect"], "deny", "{refund}");
        assert_eq!(refund["reasons"][0]["code"], "evaluation_error", "{refund}");

        // A reason renders the redacted email; the stored decision must not carry it.
        let (status, mail) = post_decision(
            &client,
            &server,
            &token,
            &json!({"type": "email.send", "payload": {"body": format!("card {CARD}")}, "context": context}),
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{mail}");
        assert_eq!(mail["effect"], "allow", "{mail}");
        let id = mail["decision_id"].as_str().unwrap();
        let stored = client
            .get(server.url(&format!("/v1/decisions/{id}")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(stored.status().as_u16(), 200);
        let stored = stored.text().await.unwrap();
        assert!(!stored.contains(EMAIL), "the stored decision: {stored}");

        // Malformed, with the secret where a number belongs.
        let bad = client
            .post(server.url("/v1/decisions"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"type": "payment.charge", "confidence": "{CARD}", "context": {context}}}"#
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status().as_u16(), 400);
        let bad: Value = bad.json().await.unwrap();
        assert!(
            bad["error"].as_str().unwrap().starts_with("invalid"),
            "{bad}"
        );

        // The secret as a key: an audited authentication failure.
        let unauthorized = client
            .post(server.url("/v1/decisions"))
            .bearer_auth(CARD)
            .json(&json!({"type": "payment.charge", "payload": payload}))
            .send()
            .await
            .unwrap();
        assert_eq!(unauthorized.status().as_u16(), 401);
        charge
    });

    server.sigterm();
    let status = server.wait_exit(EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", server.stderr_text());

    // The decision is logged with references, so nothing stored is not how this passes.
    let charge_id = charge["decision_id"].as_str().unwrap();
    let out = warden(dir.path(), &["audit", "query", "--json", "--db", &db]);
    let query = assert_success(&out);
    let event = query
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .find(|e| e["id"] == charge_id)
        .unwrap_or_else(|| panic!("no event for decision {charge_id} in:\n{query}"));
    assert_eq!(event["kind"], "decision", "{event}");
    for digest in ["payload_digest", "context_digest"] {
        assert!(
            event[digest]
                .as_str()
                .is_some_and(|d| d.starts_with("hmac-sha256:")),
            "{digest} of {event}"
        );
    }
    assert_eq!(event["kept"]["action.target.id"], "O-1", "{event}");
    assert!(
        !query.contains(CARD) && !query.contains(EMAIL),
        "audit query printed a secret:\n{query}"
    );

    let db_size = std::fs::metadata(dir.path().join("warden.db"))
        .unwrap()
        .len();
    assert!(db_size > 0, "the database is empty");
    let (scanned, leaks) = find_secrets(dir.path(), &[CARD, EMAIL]);
    let names: Vec<String> = scanned
        .iter()
        .map(|p| p.strip_prefix(dir.path()).unwrap().display().to_string())
        .collect();
    println!("secrets: scanned {}", names.join(", "));
    for file in [
        "warden.db",
        "warden-audit.key",
        "serve.stdout",
        "serve.stderr",
    ] {
        assert!(
            scanned.iter().any(|p| p.ends_with(file)),
            "{file} was not scanned: {scanned:?}"
        );
    }
    assert!(
        leaks.is_empty(),
        "a secret was copied:\n{}",
        leaks.join("\n")
    );
}

/// The evaluation error's detail goes to the server log (DESIGN §3), and decisions.rs
/// promises it names "the rule and the problem, not the action's values". Regression: a
/// failed `int()` of a payload string logged the string itself
/// (``detail=`4111 1111 1111 1111` is not an int``).
#[test]
fn an_evaluation_error_in_the_log_does_not_echo_the_payload() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("warden.db").display().to_string();
    write_policy(
        dir.path(),
        r#"version: 1.0.0
default: deny
on_error: deny
rules:
  - id: numeric-cards
    actions: [payment.verify]
    when: int(action.payload.card) > 0
    effect: allow
"#,
    );
    let token = controller_key(dir.path(), &db, "default");
    let rt = runtime();
    let client = client();
    let mut server = Server::start(
        dir.path(),
        "serve",
        &["--db", &db, "--policies", "policies", "--data-dir", "."],
        "info",
    );
    let (status, body) = rt
        .block_on(post_decision(
            &client,
            &server,
            &token,
            &json!({"type": "payment.verify", "payload": {"card": CARD}}),
        ))
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reasons"][0]["code"], "evaluation_error", "{body}");
    assert!(!body.to_string().contains(CARD), "{body}");
    server.sigterm();
    let exit = server.wait_exit(EXIT_TIMEOUT);
    assert_eq!(exit.code(), Some(0));
    let (_, leaks) = find_secrets(dir.path(), &[CARD]);
    assert!(
        leaks.is_empty(),
        "the payload value was copied:\n{}",
        leaks.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// 3. Graceful shutdown
// ---------------------------------------------------------------------------------------

/// SIGTERM under load: the server stops within a few seconds with exit code 0, and every
/// decision answered 200 is in the audit log.
#[test]
fn sigterm_under_load_drains_and_loses_no_acknowledged_decision() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("warden.db").display().to_string();
    write_policy(dir.path(), TICKETS_POLICY);
    let token = controller_key(dir.path(), &db, "acme");
    let rt = runtime();
    let client = client();
    let (acks, exit_time) = {
        let _turn = load_turn();
        let mut server = Server::start(
            dir.path(),
            "serve",
            &["--db", &db, "--policies", "policies", "--data-dir", "."],
            "info",
        );
        let load = Load::start(&rt, &client, &server, &token, 16, "drain");
        load.run_until(MIN_ACKED);
        let signalled = Instant::now();
        server.sigterm();
        let status = server.wait_exit(EXIT_TIMEOUT);
        let exit_time = signalled.elapsed();
        let tally = load.stop(&rt);
        assert_eq!(status.code(), Some(0), "{}", server.stderr_text());
        (tally.acked, exit_time)
    };
    println!(
        "sigterm: {} decisions acknowledged; exited {} ms after SIGTERM",
        acks.len(),
        exit_time.as_millis()
    );
    assert!(
        acks.len() >= MIN_ACKED,
        "only {} decisions were acknowledged: the test proves nothing",
        acks.len()
    );
    assert_chain_intact(dir.path(), &db);
    assert_all_logged(&acks, &logged_decisions(dir.path(), &db));
}

// ---------------------------------------------------------------------------------------
// 4. First start
// ---------------------------------------------------------------------------------------

/// DESIGN §10: `warden serve` with no flags creates an operator key on first start and
/// prints it once. The key operates and is refused where a controller is needed.
#[test]
fn first_start_prints_one_operator_key_and_later_starts_none() {
    let dir = tempfile::tempdir().unwrap();
    write_policy(dir.path(), TICKETS_POLICY);
    let rt = runtime();
    let client = client();

    let mut first = Server::start(dir.path(), "first", &[], "info");
    let stdout = first.stdout_text();
    const PREFIX: &str = "operator key, shown only now: ";
    let keys: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix(PREFIX))
        .collect();
    assert_eq!(keys.len(), 1, "stdout: {stdout}");
    let key = keys[0].trim().to_owned();
    assert!(key.starts_with("wdn_"), "{key}");
    assert_eq!(stdout.matches("wdn_").count(), 1, "stdout: {stdout}");
    assert!(
        !first.stderr_text().contains(&key),
        "the operator key is in the log"
    );
    for file in ["warden.db", "warden-audit.key"] {
        assert!(dir.path().join(file).exists(), "{file} in the working dir");
    }

    rt.block_on(async {
        let reload = client
            .post(first.url("/v1/policy/reload"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(reload.status().as_u16(), 200);
        let reload: Value = reload.json().await.unwrap();
        assert_eq!(reload["status"], "reloaded", "{reload}");

        let (status, refused) =
            post_decision(&client, &first, &key, &json!({"type": "ticket.get"}))
                .await
                .unwrap();
        assert_eq!(status, 403, "{refused}");
        assert_eq!(refused["error"], "forbidden", "{refused}");
        assert!(refused["detail"].is_string(), "{refused}");
    });
    first.sigterm();
    assert_eq!(first.wait_exit(EXIT_TIMEOUT).code(), Some(0));

    let mut second = Server::start(dir.path(), "second", &[], "info");
    let stdout = second.stdout_text();
    assert!(
        !stdout.contains("operator key") && !stdout.contains("wdn_"),
        "second start printed: {stdout}"
    );
    rt.block_on(async {
        let reload = client
            .post(second.url("/v1/policy/reload"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(reload.status().as_u16(), 200, "the first key still works");
    });
    second.sigterm();
    assert_eq!(second.wait_exit(EXIT_TIMEOUT).code(), Some(0));
}

/// `warden audit --server` reads, follows, verifies and exports through the API with the
/// operator key in WARDEN_KEY, showing what `--db` shows; it refuses purge, a missing key
/// and a wrong one with a clear message, and a tenant admin's `--tenant` of another.
/// `warden approvals list | show | approve | reject` through a running server, with the
/// approver's key in `WARDEN_KEY`: a table by default, JSON with `--json`.
#[test]
fn approvals_are_decided_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    write_policy(
        dir.path(),
        "version: 1.0.0\ndefault: deny\nrules:\n  - id: legal\n    actions: [ticket.escalate]\n    effect: require_approval\n    approval: {approvers: [legal]}\n",
    );
    let rt = runtime();
    let client = client();
    let server = Server::start(dir.path(), "approvals-cli", &[], "info");
    let controller = controller_key(dir.path(), "warden.db", "default");
    let approver = {
        let out = warden(
            dir.path(),
            &[
                "keys",
                "create",
                "--role",
                "approver",
                "--user",
                "alice",
                "--group",
                "legal",
                "--db",
                "warden.db",
            ],
        );
        assert_success(&out)
            .lines()
            .next()
            .unwrap()
            .trim()
            .to_owned()
    };
    let out = warden(
        dir.path(),
        &[
            "keys",
            "create",
            "--role",
            "approver",
            "--group",
            "legal",
            "--db",
            "warden.db",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "an approver key needs a user");
    let ids: Vec<String> = rt.block_on(async {
        let mut ids = Vec::new();
        for n in 0..2 {
            let action = json!({"type": "ticket.escalate", "target": {"type": "ticket", "id": format!("T-{n}")}});
            let (status, body) = post_decision(&client, &server, &controller, &action)
                .await
                .unwrap();
            assert_eq!(status, 200, "{body}");
            ids.push(body["approval"]["id"].as_str().unwrap().to_owned());
        }
        ids
    });
    let url = server.url("");
    let env = [
        ("WARDEN_KEY", approver.as_str()),
        ("WARDEN_URL", url.as_str()),
    ];
    let table = assert_success(&warden_with(dir.path(), &["approvals", "list"], &env));
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table.contains(&ids[0]) && table.contains("ticket.escalate"),
        "{table}"
    );
    let listed = assert_success(&warden_with(
        dir.path(),
        &["--json", "approvals", "list"],
        &env,
    ));
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);

    let shown = assert_success(&warden_with(
        dir.path(),
        &["approvals", "show", &ids[0]],
        &env,
    ));
    assert!(shown.contains("status      pending"), "{shown}");
    let approved = assert_success(&warden_with(
        dir.path(),
        &[
            "--json",
            "approvals",
            "approve",
            &ids[0],
            "--reason",
            "fine",
        ],
        &env,
    ));
    let approved: Value = serde_json::from_str(&approved).unwrap();
    assert_eq!(approved["status"], "approved");
    let out = warden_with(dir.path(), &["approvals", "reject", &ids[1]], &env);
    assert_eq!(out.status.code(), Some(2), "a rejection needs --reason");
    let rejected = assert_success(&warden_with(
        dir.path(),
        &["approvals", "reject", &ids[1], "--reason", "no"],
        &env,
    ));
    assert!(rejected.contains("status      rejected"), "{rejected}");
    // Deciding again is the server's 409, one line on stderr, exit 2.
    let out = warden_with(dir.path(), &["approvals", "approve", &ids[1]], &env);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("409") && stderr.contains("rejected"),
        "{stderr}"
    );
    let out = warden_with(
        dir.path(),
        &["approvals", "list"],
        &[("WARDEN_URL", url.as_str())],
    );
    assert_eq!(out.status.code(), Some(2), "no key");
    let help = assert_success(&warden(dir.path(), &["approvals", "approve", "--help"]));
    assert!(help.contains("Example"), "{help}");
}

/// `warden proposals list | show | approve | reject` through a running server: `show`
/// prints the diff, the classification and why, the counterexample as an action with both
/// sides, the findings and the impact; `approve` presents the review token it fetched.
#[test]
fn proposals_are_reviewed_and_decided_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    write_policy(dir.path(), "version: 1.0.0\ndefault: deny\n");
    std::fs::write(
        dir.path().join("policies/acme.yaml"),
        "version: 1.0.0\ndefault: deny\nproposals: on\nrules:\n  - {id: read, actions: [ticket.read], effect: allow}\n",
    )
    .unwrap();
    let rt = runtime();
    let client = client();
    let server = Server::start(dir.path(), "proposals-cli", &[], "info");
    let key = |args: &[&str]| {
        let mut all = vec!["keys", "create", "--tenant", "acme", "--db", "warden.db"];
        all.extend_from_slice(args);
        let out = warden(dir.path(), &all);
        assert_success(&out)
            .lines()
            .next()
            .unwrap()
            .trim()
            .to_owned()
    };
    let agent = key(&["--role", "agent", "--agent", "support-bot"]);
    let approver = key(&["--role", "approver", "--user", "alice", "--group", "policy"]);
    let propose = |rule: &str, action: &str| {
        let proposal = json!({
            "rationale": "support-bot must export the account it works on",
            "risks": ["customer data leaves the CRM"],
            "changes": [{"op": "add_rule", "rule": {"id": rule, "actions": [action], "agents": ["support-bot"], "effect": "allow"}}],
        });
        rt.block_on(async {
            let response = client
                .post(server.url("/v1/proposals"))
                .bearer_auth(&agent)
                .json(&proposal)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 201);
            let body: Value = response.json().await.unwrap();
            body["id"].as_str().unwrap().to_owned()
        })
    };
    let first = propose("allow-export", "crm.export");
    let url = server.url("");
    let env = [
        ("WARDEN_KEY", approver.as_str()),
        ("WARDEN_URL", url.as_str()),
    ];
    let table = assert_success(&warden_with(dir.path(), &["proposals", "list"], &env));
    assert!(table.starts_with("ID") && table.contains(&first), "{table}");
    assert!(
        table.contains("needs_human") && table.contains("broadening"),
        "{table}"
    );

    let shown = assert_success(&warden_with(
        dir.path(),
        &["proposals", "show", &first],
        &env,
    ));
    for part in [
        "status          needs_human",
        "+ rule allow-export",
        "classification  broadening",
        "counterexamples",
        "\"type\":\"crm.export\"",
        "live       deny (default)",
        "candidate  allow (allow-export)",
        "findings",
        "impact",
    ] {
        assert!(shown.contains(part), "`{part}` missing from:\n{shown}");
    }
    let approved = assert_success(&warden_with(
        dir.path(),
        &["--json", "proposals", "approve", &first],
        &env,
    ));
    let approved: Value = serde_json::from_str(&approved).unwrap();
    assert_eq!(approved["status"], "approved", "{approved}");
    assert_eq!(approved["version"], "1.0.1");

    let second = propose("allow-delete", "crm.delete");
    let out = warden_with(dir.path(), &["proposals", "reject", &second], &env);
    assert_eq!(out.status.code(), Some(2), "a rejection needs --reason");
    let rejected = assert_success(&warden_with(
        dir.path(),
        &[
            "proposals",
            "reject",
            &second,
            "--reason",
            "one export rule is enough",
        ],
        &env,
    ));
    assert!(rejected.contains("status          rejected"), "{rejected}");
    assert!(rejected.contains("one export rule is enough"), "{rejected}");
    let out = warden_with(dir.path(), &["proposals", "approve", &second], &env);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("409") && stderr.contains("already_decided"),
        "{stderr}"
    );
}

#[test]
fn audit_commands_work_through_the_server() {
    let dir = tempfile::tempdir().unwrap();
    write_policy(dir.path(), TICKETS_POLICY);
    let rt = runtime();
    let client = client();
    let mut server = Server::start(dir.path(), "audit-api", &[], "info");
    let admin = server
        .stdout_text()
        .lines()
        .find_map(|l| l.strip_prefix("operator key, shown only now: "))
        .unwrap()
        .trim()
        .to_owned();
    let controller = controller_key(dir.path(), "warden.db", "default");
    rt.block_on(async {
        for n in 1..=3 {
            let action = ticket_action(&format!("via-api-{n}"), n);
            let (status, body) = post_decision(&client, &server, &controller, &action)
                .await
                .unwrap();
            assert_eq!(status, 200, "{body}");
        }
    });
    let url = server.url("");
    let with_key = [("WARDEN_KEY", admin.as_str())];
    let api = |args: &[&str]| {
        let mut all = vec!["audit", "--server", url.as_str()];
        all.extend_from_slice(args);
        warden_with(dir.path(), &all, &with_key)
    };

    let decisions = ["query", "--kind", "decision", "--json"];
    let via_api = assert_success(&api(&decisions));
    let mut via_db = vec!["audit"];
    via_db.extend_from_slice(&decisions);
    let via_db = assert_success(&warden(dir.path(), &via_db));
    assert_eq!(via_api.lines().count(), 3, "{via_api}");
    assert_eq!(via_api, via_db, "the API shows what the database holds");
    let first: Value = serde_json::from_str(via_api.lines().next().unwrap()).unwrap();
    assert_eq!(first["kind"], "decision");
    assert_eq!(first["tenant"], "default");

    let last_two = assert_success(&api(&["tail", "-n", "2", "--kind", "decision"]));
    assert_eq!(last_two.lines().count(), 2, "{last_two}");

    let verified = assert_success(&api(&["verify"]));
    assert!(verified.starts_with("chain intact: "), "{verified}");

    let ocsf = assert_success(&api(&["export", "--format", "ocsf", "--kind", "decision"]));
    let records: Vec<Value> = ocsf
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 3, "{ocsf}");
    assert!(records.iter().all(|r| r["class_uid"] == 6003), "{ocsf}");

    let by_tenant = assert_success(&api(&["query", "--tenant", "default", "--json"]));
    let by_tenant_db = assert_success(&warden(
        dir.path(),
        &["audit", "query", "--tenant", "default", "--json"],
    ));
    assert_eq!(by_tenant, by_tenant_db);
    let tenant_admin = admin_key(dir.path(), "warden.db", "default");
    let admin_env = [("WARDEN_KEY", tenant_admin.as_str())];
    type Env<'a> = &'a [(&'a str, &'a str)];
    let refusals: [(&[&str], Env, &str); 4] = [
        (
            &["purge", "--older-than", "1d"],
            &with_key,
            "purge works on the database",
        ),
        (
            &["query", "--tenant", "acme"],
            &admin_env,
            "the server answered 403",
        ),
        (
            &["verify"],
            &[],
            "needs an admin or operator key in WARDEN_KEY",
        ),
        (
            &["verify"],
            &[("WARDEN_KEY", "wdn_nope_nope")],
            "the server answered 401",
        ),
    ];
    for (args, env, expected) in refusals {
        let mut all = vec!["audit", "--server", url.as_str()];
        all.extend_from_slice(args);
        let out = warden_with(dir.path(), &all, env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let controller_env = [("WARDEN_KEY", controller.as_str())];
    let out = warden_with(
        dir.path(),
        &["audit", "--server", &url, "verify"],
        &controller_env,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the server answered 403"), "{stderr}");
    assert!(
        !stderr.contains(&controller),
        "the key is not echoed: {stderr}"
    );

    server.sigterm();
    assert_eq!(server.wait_exit(EXIT_TIMEOUT).code(), Some(0));
}

// ---------------------------------------------------------------------------------------
// Two replicas on PostgreSQL (issue 4 §1, §2)
// ---------------------------------------------------------------------------------------

/// Two `warden serve` processes on one PostgreSQL database: an idempotency key used on one
/// cannot replay another action on the other, and a key revoked from the CLI stops working
/// on both within `--key-cache-ttl`, although it is used all the while.
#[test]
fn two_replicas_agree_on_idempotency_and_revocation() {
    let Some(base) = pg_base_url() else { return };
    let database = PgDatabase::create(&base, "warden_replicas");
    let dir = tempfile::tempdir().unwrap();
    assert_success(&warden(dir.path(), &["migrate", "--db", &database.url]));
    write_policy(dir.path(), TICKETS_POLICY);
    let token = controller_key(dir.path(), &database.url, "acme");
    let args = ["--db", database.url.as_str(), "--key-cache-ttl", "1s"];
    let a = Server::start(dir.path(), "replica-a", &args, "info");
    let b = Server::start(dir.path(), "replica-b", &args, "info");
    let rt = runtime();
    let client = client();
    let decide = |server: &Server, action: Value| {
        rt.block_on(post_decision(&client, server, &token, &action))
            .unwrap()
    };
    let (status, first) = decide(&a, json!({"id": "k1", "type": "ticket.get"}));
    assert_eq!(status, 200, "{first}");
    let (status, again) = decide(&b, json!({"id": "k1", "type": "ticket.get"}));
    assert_eq!(
        (status, &again["decision_id"]),
        (200, &first["decision_id"])
    );
    assert_eq!(again["replayed"], true);
    let (status, other) = decide(
        &b,
        json!({"id": "k1", "type": "billing.refund", "payload": {"amount": 99999}}),
    );
    assert_eq!(status, 409, "{other}");
    assert_eq!(other["error"], "idempotency_mismatch");

    let key_id = token.split('_').nth(1).unwrap();
    assert_success(&warden(
        dir.path(),
        &["keys", "revoke", key_id, "--db", &database.url],
    ));
    let revoked = Instant::now();
    let mut answered_after = Duration::ZERO;
    while revoked.elapsed() < Duration::from_secs(3) {
        for server in [&a, &b] {
            // When the request was sent: a loaded machine may answer it later.
            let sent = revoked.elapsed();
            if decide(server, json!({"type": "ticket.get"})).0 == 200 {
                answered_after = sent;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        answered_after <= Duration::from_millis(1200),
        "a revoked key was accepted {answered_after:?} after its revocation"
    );
    for server in [&a, &b] {
        assert_eq!(decide(server, json!({"type": "ticket.get"})).0, 401);
    }
}

// ---------------------------------------------------------------------------------------
// Slow, idle and hostile connections (issue 4 §7, §9)
// ---------------------------------------------------------------------------------------

/// Raw HTTP/1.1 over a socket: what a hostile or broken client sends.
fn raw(addr: SocketAddr, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// Bodies trickled a byte at a time hold no in-flight slot, so the service keeps deciding;
/// an idle connection is closed after the header timeout; a claimed 10 GB body is refused
/// at once; and a connection stuck halfway through its headers cannot hold up shutdown.
#[test]
fn slow_and_idle_clients_cannot_stop_the_service_or_its_shutdown() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("warden.db").display().to_string();
    write_policy(dir.path(), TICKETS_POLICY);
    let token = controller_key(dir.path(), &db, "default");
    let mut server = Server::start(
        dir.path(),
        "slow",
        &[
            "--db",
            &db,
            "--max-in-flight",
            "4",
            "--header-timeout",
            "2s",
            "--body-timeout",
            "30s",
            "--shutdown-grace",
            "1s",
        ],
        "info",
    );
    // Twelve clients, three times the in-flight bound, each stuck in its body.
    let mut trickling = Vec::new();
    for _ in 0..12 {
        let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
        let head = format!(
            "POST /v1/decisions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
             content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"ty"
        );
        stream.write_all(head.as_bytes()).unwrap();
        trickling.push(stream);
    }
    std::thread::sleep(Duration::from_millis(300));
    let rt = runtime();
    let client = client();
    let (status, body) = rt
        .block_on(post_decision(
            &client,
            &server,
            &token,
            &json!({"type": "ticket.update"}),
        ))
        .unwrap();
    assert_eq!(status, 200, "a normal decision still gets through: {body}");

    // A claimed huge body: 413 at once, nothing read.
    let started = Instant::now();
    let answer = raw(
        server.addr,
        format!(
            "POST /v1/decisions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
             content-type: application/json\r\ncontent-length: 10000000000\r\nconnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#""error":"body_too_large""#), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // An idle connection is closed by the server after the header timeout.
    let mut idle = std::net::TcpStream::connect(server.addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut buffer = [0u8; 64];
    let read = idle.read(&mut buffer).unwrap_or(0);
    assert_eq!(read, 0, "closed without an answer");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(8),
        "{waited:?}"
    );

    // Half-sent headers, then SIGTERM: the server exits within its grace period.
    let mut half = std::net::TcpStream::connect(server.addr).unwrap();
    half.write_all(b"POST /v1/decisions HTTP/1.1\r\nhost: x\r\n")
        .unwrap();
    let started = Instant::now();
    server.sigterm();
    assert_eq!(server.wait_exit(EXIT_TIMEOUT).code(), Some(0));
    assert!(started.elapsed() < EXIT_TIMEOUT);
    drop(trickling);
    assert_chain_intact(dir.path(), &db);
}

/// What hyper answers by itself (a broken request line, headers over its buffer) carries
/// the one JSON error body too.
#[test]
fn malformed_requests_get_the_json_error_body() {
    let dir = tempfile::tempdir().unwrap();
    write_policy(dir.path(), TICKETS_POLICY);
    let db = dir.path().join("warden.db").display().to_string();
    let server = Server::start(dir.path(), "malformed", &["--db", &db], "info");
    let answer = raw(server.addr, b"NOT HTTP AT ALL\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("content-type: application/json"),
        "{answer}"
    );
    assert!(
        answer.ends_with(
            r#"{"error":"invalid_request","detail":"the request is not valid HTTP/1.1"}"#
        ),
        "{answer}"
    );
    let huge = format!(
        "GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(500 * 1024)
    );
    let answer = raw(server.addr, huge.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(
        answer.contains(r#""error":"headers_too_large""#),
        "{answer}"
    );
    let answer = raw(
        server.addr,
        b"GET /v1/decisions/%ff%fe HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert!(
        answer.contains("content-type: application/json"),
        "{answer}"
    );
}

/// `/metrics` needs an operator key on the main address, and nothing on its own one.
#[test]
fn metrics_are_the_operators_or_on_their_own_address() {
    let dir = tempfile::tempdir().unwrap();
    write_policy(dir.path(), TICKETS_POLICY);
    let db = dir.path().join("warden.db").display().to_string();
    let metrics = free_port();
    let server = Server::start(
        dir.path(),
        "metrics",
        &["--db", &db, "--metrics-listen", &metrics.to_string()],
        "info",
    );
    let open = raw(
        server.addr,
        b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert!(open.starts_with("HTTP/1.1 401"), "{open}");
    let scraped = raw(
        metrics,
        b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert!(scraped.starts_with("HTTP/1.1 200"), "{scraped}");
    assert!(
        scraped.contains("warden_decision_duration_seconds"),
        "{scraped}"
    );
    let other = raw(
        metrics,
        b"GET /v1/audit HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert!(
        other.starts_with("HTTP/1.1 404"),
        "only metrics there: {other}"
    );
}

// ---------------------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------------------

/// SIGHUP reloads the policy folder without a restart; a folder that does not compile is
/// refused, said in the log, and the policy in force stays.
#[test]
fn sighup_reloads_good_policies_and_keeps_the_old_one_on_a_bad_edit() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("warden.db").display().to_string();
    write_policy(dir.path(), TICKETS_POLICY);
    let token = controller_key(dir.path(), &db, "default");
    let rt = runtime();
    let client = client();
    let server = Server::start(
        dir.path(),
        "serve",
        &["--db", &db, "--policies", "policies", "--data-dir", "."],
        "info",
    );
    let version = || {
        let action = json!({"type": "ticket.update"});
        let (status, body) = rt
            .block_on(post_decision(&client, &server, &token, &action))
            .unwrap();
        assert_eq!(status, 200, "{body}");
        body["policy_version"].as_str().unwrap().to_owned()
    };
    let hangup = || {
        let status = Command::new("kill")
            .args(["-HUP", &server.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -HUP failed");
    };
    let wait_for = |wanted: &str| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while version() != wanted {
            assert!(
                Instant::now() < deadline,
                "the policy never became {wanted}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert_eq!(version(), "1.0.0");

    let policy = dir.path().join("policies/default.yaml");
    std::fs::write(&policy, TICKETS_POLICY.replace("1.0.0", "1.1.0")).unwrap();
    hangup();
    wait_for("1.1.0");

    std::fs::write(&policy, "version: 1.2.0\ndefault: alow\n").unwrap();
    hangup();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.stderr_text().contains("policy reload refused") {
        assert!(
            Instant::now() < deadline,
            "no refusal in the log:\n{}",
            server.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(version(), "1.1.0", "the old policy stays in force");

    // A rotated permit key is picked up by SIGHUP and audited with the key ids it changed.
    let rotated = warden(dir.path(), &["keys", "rotate-permit", "--data-dir", "."]);
    let kid = String::from_utf8_lossy(&rotated.stdout).trim().to_owned();
    assert!(rotated.status.success() && !kid.is_empty(), "{rotated:?}");
    hangup();
    let deadline = Instant::now() + Duration::from_secs(5);
    let event = loop {
        let out = warden(
            dir.path(),
            &[
                "audit",
                "query",
                "--json",
                "--kind",
                "permit_keys_changed",
                "--db",
                &db,
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if let Some(line) = text.lines().find(|l| !l.trim().is_empty()) {
            break serde_json::from_str::<Value>(line).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no permit_keys_changed event: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let after = &event["detail"]["after"];
    assert_eq!(after.as_array().unwrap().len(), 2, "{event}");
    assert!(
        after
            .as_array()
            .unwrap()
            .contains(&json!({"kid": kid, "state": "signing"})),
        "{event}"
    );
    assert_eq!(
        event["detail"]["before"].as_array().unwrap().len(),
        1,
        "{event}"
    );
}

/// A running `warden serve`, killed when dropped however the test ends.
struct Server {
    child: Child,
    addr: SocketAddr,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Server {
    /// Spawns `warden serve --listen <free port> ARGS` in `dir`, with stdout and stderr in
    /// `dir/NAME.stdout` and `dir/NAME.stderr`, and waits until `/healthz` answers.
    fn start(dir: &Path, name: &str, args: &[&str], rust_log: &str) -> Server {
        let addr = free_port();
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        let mut command = Command::new(BIN);
        command
            .arg("serve")
            .args(["--listen", &addr.to_string()])
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap());
        for var in WARDEN_ENV {
            command.env_remove(var);
        }
        command.env("RUST_LOG", rust_log);
        let mut server = Server {
            child: command.spawn().unwrap(),
            addr,
            stdout,
            stderr,
        };
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!(
                    "warden serve exited with {status} before it was healthy:\n{}",
                    server.stderr_text()
                );
            }
            if healthy(addr) {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "warden serve was not healthy within {STARTUP:?}:\n{}",
                server.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// SIGKILL, and reap it.
    fn kill_9(&mut self) {
        // `Child::kill` sends SIGKILL on unix.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "warden serve did not exit within {timeout:?}:\n{}",
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap()
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Already gone after `kill_9` or an exit: nothing to do, and no error worth a panic.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Load phases take turns: on a small machine two servers under load at once would
/// measure the machine, not the server.
fn load_turn() -> MutexGuard<'static, ()> {
    static LOAD: Mutex<()> = Mutex::new(());
    LOAD.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// `POST /v1/decisions`: the status and the JSON body, or a transport error.
async fn post_decision(
    client: &reqwest::Client,
    server: &Server,
    token: &str,
    action: &Value,
) -> reqwest::Result<(u16, Value)> {
    let response = client
        .post(server.url("/v1/decisions"))
        .bearer_auth(token)
        .json(action)
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await?))
}

fn ticket_action(id: &str, n: u64) -> Value {
    let kind = if n.is_multiple_of(3) {
        "ticket.resolve"
    } else {
        "ticket.update"
    };
    json!({
        "id": id,
        "type": kind,
        "target": {"type": "ticket", "id": format!("T-{n}")},
        "confidence": (n % 10) as f64 / 10.0,
        "payload": {"n": n},
    })
}

/// A decision the client saw answered 200 with a body.
#[derive(Debug, Clone)]
struct Ack {
    decision_id: String,
    effect: String,
}

#[derive(Debug, Default)]
struct Tally {
    acked: Vec<Ack>,
    /// Answered with another status (503 overloaded, …).
    refused: usize,
    /// Sent, and the connection broke before the answer was complete.
    cut_off: usize,
    /// Not sent: the connection was refused (the server is gone).
    unsent: usize,
}

/// Tasks firing decisions, each with a unique idempotency key, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<Tally>>,
    started: Instant,
}

impl Load {
    fn start(
        rt: &tokio::runtime::Runtime,
        client: &reqwest::Client,
        server: &Server,
        token: &str,
        tasks: usize,
        prefix: &str,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let url = server.url("/v1/decisions");
        let tasks = (0..tasks)
            .map(|task| {
                let (client, url, token) = (client.clone(), url.clone(), token.to_owned());
                let (stop, acked, prefix) =
                    (Arc::clone(&stop), Arc::clone(&acked), prefix.to_owned());
                rt.spawn(async move {
                    let mut tally = Tally::default();
                    let mut n: u64 = 0;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let action = ticket_action(&format!("{prefix}-{task}-{n}"), n);
                        let sent = client.post(&url).bearer_auth(&token).json(&action).send();
                        let answer = match sent.await {
                            Ok(response) => {
                                let status = response.status().as_u16();
                                response.json::<Value>().await.map(|body| (status, body))
                            }
                            Err(e) => Err(e),
                        };
                        match answer {
                            Ok((200, body)) => {
                                tally.acked.push(Ack {
                                    decision_id: body["decision_id"].as_str().unwrap().to_owned(),
                                    effect: body["effect"].as_str().unwrap().to_owned(),
                                });
                                acked.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(_) => tally.refused += 1,
                            Err(e) => {
                                if e.is_connect() {
                                    tally.unsent += 1;
                                } else {
                                    tally.cut_off += 1;
                                }
                                // The server is gone: do not spin until told to stop.
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                        }
                    }
                    tally
                })
            })
            .collect();
        Load {
            stop,
            acked,
            tasks,
            started: Instant::now(),
        }
    }

    /// Lets the load run [`LOAD_AT_LEAST`], and on until `min` decisions are acknowledged
    /// or [`LOAD_AT_MOST`] has passed (the caller's assertion then reports it).
    fn run_until(&self, min: usize) {
        std::thread::sleep(LOAD_AT_LEAST);
        while self.acked.load(Ordering::Relaxed) < min && self.started.elapsed() < LOAD_AT_MOST {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(self, rt: &tokio::runtime::Runtime) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        rt.block_on(async {
            let mut total = Tally::default();
            for task in self.tasks {
                let tally = tokio::time::timeout(Duration::from_secs(15), task)
                    .await
                    .expect("a load task did not stop")
                    .unwrap();
                total.acked.extend(tally.acked);
                total.refused += tally.refused;
                total.cut_off += tally.cut_off;
                total.unsent += tally.unsent;
            }
            println!(
                "load: {} answered 200, {} answered otherwise, {} cut off in flight, {} unsent",
                total.acked.len(),
                total.refused,
                total.cut_off,
                total.unsent
            );
            total
        })
    }
}

/// The server's mean audit batch size and commit time so far, from `/metrics`.
async fn audit_batches(client: &reqwest::Client, server: &Server) -> String {
    let Ok(response) = client.get(server.url("/metrics")).send().await else {
        return "no metrics".to_owned();
    };
    let text = response.text().await.unwrap_or_default();
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(f64::NAN)
    };
    let batches = value("warden_audit_batch_size_count");
    format!(
        "{batches} audit batches, {:.1} events and {:.1} ms each on average",
        value("warden_audit_batch_size_sum") / batches,
        1000.0 * value("warden_audit_batch_duration_seconds_sum") / batches
    )
}

/// Acknowledged decisions that `GET /v1/decisions/{id}` does not return as answered.
async fn served_mismatches(
    client: &reqwest::Client,
    server: &Server,
    token: &str,
    acks: &[Ack],
) -> Vec<String> {
    let mut set = tokio::task::JoinSet::new();
    for chunk in acks.chunks(acks.len().div_ceil(16).max(1)) {
        let chunk = chunk.to_vec();
        let (client, token) = (client.clone(), token.to_owned());
        let base = server.url("/v1/decisions/");
        set.spawn(async move {
            let mut wrong = Vec::new();
            for ack in chunk {
                let url = format!("{base}{}", ack.decision_id);
                let found = match client.get(&url).bearer_auth(&token).send().await {
                    Ok(r) if r.status().as_u16() == 200 => r.json::<Value>().await.ok(),
                    Ok(r) => Some(json!({"status": r.status().as_u16()})),
                    Err(_) => None,
                };
                let matches = found.as_ref().is_some_and(|b| {
                    b["decision_id"] == ack.decision_id.as_str()
                        && b["effect"] == ack.effect.as_str()
                });
                if !matches {
                    wrong.push(format!("{} ({}): {found:?}", ack.decision_id, ack.effect));
                }
            }
            wrong
        });
    }
    let mut wrong = Vec::new();
    while let Some(chunk) = set.join_next().await {
        wrong.extend(chunk.unwrap());
    }
    wrong
}

// ---------------------------------------------------------------------------------------
// The CLI and the audit log
// ---------------------------------------------------------------------------------------

/// Runs `warden ARGS` in `dir`, killed if it outlives [`CLI_TIMEOUT`].
fn warden(dir: &Path, args: &[&str]) -> Output {
    warden_with(dir, args, &[])
}

/// Runs `warden ARGS` in `dir` with these environment variables set (and no other
/// `WARDEN_*` ones).
fn warden_with(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in WARDEN_ENV {
        command.env_remove(var);
    }
    command.envs(env.iter().copied());
    let mut child = command.spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        stdout.read_to_end(&mut bytes).unwrap();
        bytes
    });
    let err = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        stderr.read_to_end(&mut bytes).unwrap();
        bytes
    });
    let deadline = Instant::now() + CLI_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`warden {}` ran longer than {CLI_TIMEOUT:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Asserts exit code 0 and returns stdout.
fn assert_success(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn write_policy(dir: &Path, text: &str) {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("default.yaml"), text).unwrap();
    assert_success(&warden(dir, &["check", "policies"]));
}

/// `warden keys create --role controller`: the token on the first stdout line.
fn controller_key(dir: &Path, db: &str, tenant: &str) -> String {
    key_with_role(dir, db, tenant, "controller")
}

fn admin_key(dir: &Path, db: &str, tenant: &str) -> String {
    key_with_role(dir, db, tenant, "admin")
}

fn key_with_role(dir: &Path, db: &str, tenant: &str, role: &str) -> String {
    let out = warden(
        dir,
        &[
            "keys", "create", "--role", role, "--tenant", tenant, "--db", db,
        ],
    );
    let stdout = assert_success(&out);
    let token = stdout.lines().next().unwrap().trim().to_owned();
    assert!(token.starts_with("wdn_"), "{stdout}");
    token
}

fn assert_chain_intact(dir: &Path, db: &str) {
    let out = warden(dir, &["audit", "verify", "--db", db]);
    let stdout = assert_success(&out);
    assert!(stdout.contains("intact"), "{stdout}");
}

/// Every decision event in the log: its id and effect.
fn logged_decisions(dir: &Path, db: &str) -> HashMap<String, String> {
    let out = warden(
        dir,
        &[
            "audit", "query", "--json", "--kind", "decision", "--limit", "10000000", "--db", db,
        ],
    );
    let stdout = assert_success(&out);
    stdout
        .lines()
        .map(|line| {
            let event: Value = serde_json::from_str(line).unwrap();
            assert_eq!(event["decision_id"], event["id"], "{event}");
            (
                event["id"].as_str().unwrap().to_owned(),
                event["effect"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn assert_all_logged(acks: &[Ack], logged: &HashMap<String, String>) {
    let missing: Vec<&Ack> = acks
        .iter()
        .filter(|a| logged.get(&a.decision_id) != Some(&a.effect))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged decisions are not in the audit log as answered, e.g. {:?}",
        missing.len(),
        acks.len(),
        &missing[..missing.len().min(5)]
    );
}

/// Every file under `dir` (recursively) and, for each occurrence of a secret, where it is.
fn find_secrets(dir: &Path, secrets: &[&str]) -> (Vec<PathBuf>, Vec<String>) {
    let mut scanned = Vec::new();
    let mut leaks = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            for secret in secrets {
                let needle = secret.as_bytes();
                for (at, window) in bytes.windows(needle.len()).enumerate() {
                    if window == needle {
                        let from = at.saturating_sub(80);
                        let to = (at + needle.len() + 80).min(bytes.len());
                        leaks.push(format!(
                            "{} at byte {at}: …{}…",
                            path.display(),
                            String::from_utf8_lossy(&bytes[from..to])
                        ));
                    }
                }
            }
            scanned.push(path);
        }
    }
    (scanned, leaks)
}

// ---------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------

/// The PostgreSQL server's URL, or `None`, said loudly, without one.
fn pg_base_url() -> Option<String> {
    match std::env::var(PG_ENV) {
        Ok(url) => Some(url),
        Err(_) => {
            // Past the harness's capture, which only catches the print macros.
            let _ = writeln!(std::io::stderr(), "SKIPPED: {PG_ENV} not set");
            None
        }
    }
}

/// A database created for one test, dropped after it unless the test failed (then it is
/// left for inspection).
struct PgDatabase {
    base: String,
    name: String,
    url: String,
}

impl PgDatabase {
    fn create(base: &str, prefix: &str) -> PgDatabase {
        let name = common::unique_name(prefix);
        pg_exec(base, &format!("CREATE DATABASE \"{name}\""));
        PgDatabase {
            base: base.to_owned(),
            url: with_database(base, &name),
            name,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = writeln!(
                std::io::stderr(),
                "left database {} for inspection",
                self.name
            );
            return;
        }
        pg_exec(
            &self.base,
            &format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name),
        );
    }
}

fn pg_exec(url: &str, sql: &str) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
            conn.close().await.unwrap();
        });
}

/// `url` naming database `name` instead of its own, its query string kept.
fn with_database(url: &str, name: &str) -> String {
    let (main, query) = match url.split_once('?') {
        Some((main, query)) => (main, format!("?{query}")),
        None => (url, String::new()),
    };
    let (scheme, rest) = main.split_once("://").unwrap();
    // The user info ends at the last `@`; a password may hold `/`.
    let (user, host_path) = match rest.rsplit_once('@') {
        Some((user, host_path)) => (format!("{user}@"), host_path),
        None => (String::new(), rest),
    };
    let host = host_path.split('/').next().unwrap();
    format!("{scheme}://{user}{host}/{name}{query}")
}

#[test]
fn with_database_swaps_only_the_database() {
    let cases = [
        (
            "postgres://postgres@127.0.0.1:5432/test",
            "postgres://postgres@127.0.0.1:5432/x",
        ),
        ("postgres://h", "postgres://h/x"),
        (
            "postgresql://u:p/w@h:1/db?sslmode=disable",
            "postgresql://u:p/w@h:1/x?sslmode=disable",
        ),
    ];
    for (url, expected) in cases {
        assert_eq!(with_database(url, "x"), expected, "{url}");
    }
}
