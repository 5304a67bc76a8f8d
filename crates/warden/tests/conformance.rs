//! Warden held to specifications it does not own, each checked by a maintained third-party
//! tool against the real `warden serve` binary: the OpenAPI document at `/openapi.json` by
//! schemathesis, and the OCSF export (`warden audit export --format ocsf`) by the official
//! OCSF schema of the class and version each record claims.
//!
//! The tools are Python packages, installed at pinned versions by `.ci/run`. Without one, a
//! test prints `SKIPPED` loudly on stderr and passes, so `cargo test` still works on a
//! machine without them; with `CI` set, a missing tool fails the test, so CI cannot go green
//! by not checking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::healthy;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_warden");
const NEXUS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/nexus/nexus.yaml"
);
const VALIDATE_OCSF: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/conformance/validate_ocsf.py"
);

/// What `.ci/run` installs; said in every skip and failure message.
const SCHEMATHESIS_CONFIG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/conformance/schemathesis.toml"
);
const INSTALL: &str = "python3 -m pip install -r crates/warden/tests/conformance/requirements.txt";

/// Variables the binary reads: the test decides them, not the shell it runs in.
const WARDEN_ENV: [&str; 10] = [
    "WARDEN_DB",
    "WARDEN_LISTEN",
    "WARDEN_POLICIES",
    "WARDEN_DATA_DIR",
    "WARDEN_AUDIT_KEY",
    "WARDEN_PERMIT_KEY",
    "WARDEN_URL",
    "WARDEN_KEY",
    "WARDEN_SERVER",
    "RUST_LOG",
];

/// How long a server may take to answer `/healthz`, and a CLI command to run.
const STARTUP: Duration = Duration::from_secs(15);
const CLI_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the OCSF validator may take (it loads a 1.8 MB schema export).
const VALIDATOR_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one schemathesis run may take: 17 operations, about a minute each run on a
/// busy 2-core machine in a debug build, with room to spare.
const SCHEMATHESIS_TIMEOUT: Duration = Duration::from_secs(150);
/// Examples per operation and phase: at 60 a run found every failure that 200 found (seed
/// 20261124 against seed 7, release build), in ~20 s instead of ~55 s.
const MAX_EXAMPLES: &str = "60";
/// A fixed seed, so a failure in CI is the same failure on a developer's machine.
const SEED: &str = "20261124";

// ---------------------------------------------------------------------------------------
// OCSF
// ---------------------------------------------------------------------------------------

/// DESIGN §6: the OCSF export claims class API Activity (6003) of OCSF 1.x. A real run
/// produces every kind of event; every exported line must validate against the official
/// schema of the class, version and profiles it claims.
#[test]
fn ocsf_export_validates_against_the_official_schema() {
    if !tool_available(
        "the OCSF validator",
        &["-c", "import ocsf_json_schema, jsonschema"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (db, _, operator) = setup(dir.path());
    // This test names agents, so its controller acts for `support-*`.
    let controller = assert_success(&warden(
        dir.path(),
        &[
            "keys",
            "create",
            "--tenant",
            "default",
            "--db",
            &db,
            "--role",
            "controller",
            "--agent",
            "support-*",
        ],
    ))
    .lines()
    .next()
    .unwrap()
    .trim()
    .to_owned();
    let server = Server::start(dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::new();
    rt.block_on(async {
        let base = json!({
            "type": "ticket.resolve",
            "target": {"type": "ticket", "id": "T-1042"},
            "confidence": 0.91,
            "mode": "auto",
            "agent": "support-bot",
            "on_behalf_of": "user-991",
            "app": "helpdesk",
            "run_id": "run-1",
            "payload": {"resolution": "refund issued"},
            "context": {"ticket": {"flags": [], "priority": "high"}, "user": {"role": "agent", "email": "a@b.c"}},
        });
        let with = |patch: Value| {
            let mut action = base.clone();
            for (k, v) in patch.as_object().unwrap() {
                action[k] = v.clone();
            }
            action
        };
        let actions = [
            // allow, with a `mode: draft` obligation
            with(json!({})),
            // deny: low confidence, with a confidence adjustment
            with(json!({"confidence": 0.5})),
            // require_approval
            with(json!({"type": "ticket.escalate",
                        "context": {"ticket": {"flags": ["legal_sensitive"]}}})),
            // a target without an id, and no target at all
            with(json!({"type": "ticket.update", "target": {"type": "ticket"}})),
            json!({"type": "ticket.get", "agent": "support-bot"}),
            // an evaluation error (the rule reads a context field that is missing)
            json!({"type": "email.send", "agent": "support-bot", "payload": {"external": true}}),
            // the default deny
            json!({"type": "deploy.run", "agent": "support-bot"}),
        ];
        let mut decision_ids = Vec::new();
        for action in &actions {
            let response = client
                .post(server.url("/v1/decisions"))
                .bearer_auth(&controller)
                .json(action)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            assert_eq!(status, 200, "{action}: {body}");
            decision_ids.push(body["decision_id"].as_str().unwrap().to_owned());
        }
        for (id, outcome) in decision_ids.iter().zip([
            json!({"status": "executed"}),
            json!({"status": "failed", "error_code": "upstream_timeout"}),
        ]) {
            let response = client
                .post(server.url(&format!("/v1/decisions/{id}/outcome")))
                .bearer_auth(&controller)
                .json(&outcome)
                .send()
                .await
                .unwrap();
            assert!(response.status().is_success(), "outcome: {}", response.status());
        }
        let refused = client
            .post(server.url("/v1/decisions"))
            .bearer_auth("wdn_nope_nope")
            .json(&base)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status().as_u16(), 401);
        let reloaded = client
            .post(server.url("/v1/policy/reload"))
            .bearer_auth(&operator)
            .send()
            .await
            .unwrap();
        assert_eq!(reloaded.status().as_u16(), 200);
    });
    drop(server);

    // A token is `wdn_<key id>_<secret>`.
    let key_id = controller.split('_').nth(1).unwrap();
    assert_success(&warden(
        dir.path(),
        &["keys", "revoke", key_id, "--db", &db],
    ));

    // Export before and after a purge: the purge deletes the events above and leaves a
    // checkpoint, which must validate too.
    let export = dir.path().join("audit.ocsf.jsonl");
    let mut lines = assert_success(&warden(
        dir.path(),
        &["audit", "export", "--format", "ocsf", "--db", &db],
    ));
    assert_success(&warden(
        dir.path(),
        &["audit", "purge", "--older-than", "1ms", "--db", &db],
    ));
    lines.push_str(&assert_success(&warden(
        dir.path(),
        &["audit", "export", "--format", "ocsf", "--db", &db],
    )));
    std::fs::write(&export, &lines).unwrap();

    let kinds: BTreeSet<String> = lines
        .lines()
        .map(|l| {
            let record: Value = serde_json::from_str(l).unwrap();
            record["metadata"]["event_code"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    for kind in [
        "decision",
        "outcome",
        "key_created",
        "key_revoked",
        "auth_failure",
        "policy_reloaded",
        "checkpoint",
    ] {
        assert!(
            kinds.contains(kind),
            "the run made no `{kind}` event: {kinds:?}"
        );
    }

    let out = common::run_with_timeout(
        Command::new(python())
            .arg(VALIDATE_OCSF)
            .arg(&export)
            .current_dir(dir.path()),
        VALIDATOR_TIMEOUT,
    );
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    assert_eq!(
        out.status.code(),
        Some(0),
        "the OCSF export does not validate against the schema it claims:\n{report}"
    );
}

// ---------------------------------------------------------------------------------------
// OpenAPI
// ---------------------------------------------------------------------------------------

/// DESIGN §8: `/openapi.json` is the API. schemathesis generates requests from it, for a
/// controller key, an operator key, an approver key and an agent key in turn, and checks every answer against it (status
/// codes, content types, bodies, auth, and that valid inputs are accepted and invalid ones
/// refused). Zero failing checks.
#[test]
fn schemathesis_finds_no_failing_check_with_any_key() {
    if !tool_available("schemathesis", &["-m", "schemathesis.cli", "--version"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (db, controller, operator) = setup(dir.path());
    let approver = assert_success(&warden(
        dir.path(),
        &[
            "keys", "create", "--tenant", "default", "--db", &db, "--role", "approver", "--user",
            "alice", "--group", "legal",
        ],
    ))
    .lines()
    .next()
    .unwrap()
    .trim()
    .to_owned();
    // An agent key: the one that submits proposals (the Nexus policy takes them).
    let agent = assert_success(&warden(
        dir.path(),
        &[
            "keys",
            "create",
            "--tenant",
            "default",
            "--db",
            &db,
            "--role",
            "agent",
            "--agent",
            "support-bot",
        ],
    ))
    .lines()
    .next()
    .unwrap()
    .trim()
    .to_owned();
    let server = Server::start(dir.path());
    let schema = server.url("/openapi.json");
    let mut failed = Vec::new();
    for (role, key) in [
        ("controller", &controller),
        ("operator", &operator),
        ("approver", &approver),
        ("agent", &agent),
    ] {
        let started = Instant::now();
        let out = common::run_with_timeout(
            Command::new(python())
                .args([
                    "-m",
                    "schemathesis.cli",
                    "--config-file",
                    SCHEMATHESIS_CONFIG,
                ])
                .args(["run", &schema])
                .args([
                    "--checks",
                    "all",
                    "--max-examples",
                    MAX_EXAMPLES,
                    "--seed",
                    SEED,
                ])
                .args(["--workers", "1", "--request-timeout", "10"])
                // The long-polls hold a request open by design (30 s by default, up to
                // 300 s) once the fuzzer reuses an id it created (a question): longer than
                // any per-request timeout a fuzzing run can afford. Their statuses and
                // parameters are pinned by crates/warden-server/tests/approvals.rs.
                .args(["--exclude-path-regex", "/wait$"])
                // Every failure of an operation, not only the first; no example database
                // left behind, so each run starts from the seed alone.
                .args([
                    "--continue-on-failure",
                    "--generation-database",
                    "none",
                    "--no-color",
                ])
                .arg("--header")
                .arg(format!("Authorization: Bearer {key}"))
                .current_dir(dir.path()),
            SCHEMATHESIS_TIMEOUT,
        );
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!(
            "schemathesis with the {role} key: exit {:?} after {:.0?}",
            out.status.code(),
            started.elapsed()
        );
        if out.status.code() != Some(0) {
            failed.push(format!(
                "==== schemathesis with the {role} key ====\n{report}"
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "schemathesis found failing checks against {schema}:\n{}\n--- warden serve's log ---\n{}",
        failed.join("\n"),
        server.stderr_tail()
    );
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// The interpreter the tools were installed for: `PYTHON`, else `python3`.
fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Whether `python ARGS` runs; if not, skips loudly, or fails when `CI` is set.
fn tool_available(what: &str, probe: &[&str]) -> bool {
    let ok = Command::new(python())
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return true;
    }
    common::missing_tools(&format!("{what} for `{}`", python()), INSTALL)
}

/// A folder with the Nexus policy, a migrated SQLite database and two keys for tenant
/// `default`: a controller and an operator. Returns the database
/// path and the two tokens.
fn setup(dir: &Path) -> (String, String, String) {
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::copy(NEXUS, dir.join("policies/default.yaml")).unwrap();
    let db = dir.join("warden.db").display().to_string();
    let key = |extra: &[&str]| {
        let mut args = vec!["keys", "create", "--tenant", "default", "--db", &db];
        args.extend_from_slice(extra);
        let stdout = assert_success(&warden(dir, &args));
        let token = stdout.lines().next().unwrap().trim().to_owned();
        assert!(token.starts_with("wdn_"), "{stdout}");
        token
    };
    // Without an agent pattern: a key with one must name a matching agent, which the
    // document cannot say (the 400 `agent_required` is the key's rule, not the schema's).
    let controller = key(&["--role", "controller"]);
    let operator = key(&["--role", "operator"]);
    (db, controller, operator)
}

/// `warden ARGS` in `dir`, with no `WARDEN_*` variables from the shell.
fn warden(dir: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(BIN);
    command.args(args).current_dir(dir);
    for var in WARDEN_ENV {
        command.env_remove(var);
    }
    common::run_with_timeout(&mut command, CLI_TIMEOUT)
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

/// A running `warden serve` on a free port over `dir`'s database and policies, killed when
/// dropped however the test ends.
struct Server {
    child: Child,
    addr: SocketAddr,
    stderr: PathBuf,
}

impl Server {
    fn start(dir: &Path) -> Server {
        // A port nothing listens on right now.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let stderr = dir.join("serve.stderr");
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--listen", &addr.to_string()])
            .args([
                "--db",
                "warden.db",
                "--policies",
                "policies",
                "--data-dir",
                ".",
            ])
            // Three fuzzing runs send hundreds of deliberately unauthenticated requests
            // from one address within a minute; the 429 they would earn is pinned by
            // crates/warden-server/tests/api.rs.
            .args(["--auth-failure-limit", "100000"])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).unwrap());
        for var in WARDEN_ENV {
            command.env_remove(var);
        }
        command.env("RUST_LOG", "info");
        let mut server = Server {
            child: command.spawn().unwrap(),
            addr,
            stderr,
        };
        let deadline = Instant::now() + STARTUP;
        while !healthy(addr) {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!(
                    "warden serve exited with {status}:\n{}",
                    server.stderr_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "warden serve was not healthy within {STARTUP:?}:\n{}",
                server.stderr_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The last lines of the server's log.
    fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Already gone after an exit: nothing to do, and no error worth a panic.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
