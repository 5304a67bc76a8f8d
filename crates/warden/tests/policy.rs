//! `warden policy publish | versions | show | diff | rollback` as a user runs them: the real
//! binary against a real `warden serve` on a free port, with a SQLite store in a temporary
//! folder and tenant `acme` seeded from `policies/acme.yaml` as revision 1.
//!
//! A server start costs more than everything a test does with it, so each test starts one
//! and walks through a whole story.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{free_port, healthy};
use serde_json::Value;
use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_warden");

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

/// Revision 1, seeded from the folder.
const V1: &str = r#"version: 1.0.0
default: deny
rules:
  - id: refunds
    actions: [payment.refund]
    when: action.payload.amount < 100
    effect: allow
    reason: small refunds are fine
  - id: tickets
    actions: ["ticket.*"]
    effect: allow
    reason: tickets may be worked
"#;

/// Revision 2: the refund limit lowered.
const V2: &str = r#"version: 1.1.0
default: deny
rules:
  - id: refunds
    actions: [payment.refund]
    when: action.payload.amount < 50
    effect: allow
    reason: small refunds are fine
  - id: tickets
    actions: ["ticket.*"]
    effect: allow
    reason: tickets may be worked
"#;

/// A new version that does not compile: a misspelt effect on line 5.
const BROKEN: &str = r#"version: 2.0.0
default: deny
rules:
  - id: refunds
    effect: alow
    actions: [payment.refund]
"#;

/// Publishing, listing, showing, diffing and rolling back, in text and in JSON.
#[test]
fn a_version_is_published_listed_shown_diffed_and_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let key = admin_key(dir.path(), "acme");
    let env = server.env(&key);
    let policy = |args: &[&str]| assert_success(&warden(dir.path(), &policy_args(args), &env));
    std::fs::write(dir.path().join("v2.yaml"), V2).unwrap();

    let published = policy(&["publish", "v2.yaml", "--comment", "lower the refund limit"]);
    let hash = sha_prefix(&published);
    assert_eq!(
        published,
        format!("published acme revision 2 (version 1.1.0, sha256 {hash}…)\n")
    );
    assert_eq!(
        policy(&["publish", "v2.yaml"]),
        "unchanged: acme revision 2 is already this document\n"
    );

    // Newest first: the new version active, the seeded one superseded.
    let versions = policy(&["versions"]);
    let lines: Vec<&str> = versions.lines().collect();
    assert_eq!(lines.len(), 3, "{versions}");
    assert!(lines[0].starts_with("REVISION"), "{versions}");
    let cells = |line: &str| {
        line.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(cells(lines[1]), "2 1.1.0 active", "{versions}");
    assert!(lines[1].ends_with("lower the refund limit"), "{versions}");
    assert_eq!(cells(lines[2]), "1 1.0.0 superseded", "{versions}");
    assert!(
        lines[2].contains("file"),
        "seeded by the folder: {versions}"
    );

    // A header line, then the document exactly as it was submitted.
    let shown = policy(&["show", "1"]);
    let (header, source) = shown.split_once('\n').unwrap();
    assert!(
        header.contains("acme revision 1") && header.contains("superseded"),
        "{header}"
    );
    assert_eq!(source, V1);
    let shown = policy(&["show", "1.1.0"]);
    assert_eq!(
        shown.split_once('\n').unwrap().1,
        V2,
        "a semver names its revision"
    );
    let shown = policy(&["show"]);
    let active = shown.lines().next().unwrap();
    assert!(
        active.contains("revision 2") && active.contains("active"),
        "{active}"
    );

    let diff = policy(&["diff", "1", "2"]);
    assert!(
        diff.contains(
            "~ rule refunds\n    when: action.payload.amount < 100 → action.payload.amount < 50\n"
        ),
        "{diff}"
    );
    assert!(diff.contains("version: 1.0.0 → 1.1.0"), "{diff}");
    assert!(
        !diff.contains("tickets"),
        "an unchanged rule is not listed: {diff}"
    );
    assert_eq!(
        policy(&["diff", "1"]),
        diff,
        "`to` defaults to the active version"
    );

    let rolled = policy(&["rollback", "1", "--comment", "refunds were blocked"]);
    assert_eq!(
        rolled,
        "rolled back acme to revision 1's document as revision 3\n"
    );
    let shown = policy(&["show", "3"]);
    let (header, source) = shown.split_once('\n').unwrap();
    assert_eq!(source, V1, "the rollback is revision 1's document again");
    assert!(
        header.contains("version 1.0.0, active") && header.ends_with(": refunds were blocked"),
        "{header}"
    );
    // A semver names its newest revision; that document is the active one already.
    assert_eq!(
        policy(&["rollback", "1.0.0"]),
        "unchanged: acme revision 3 is already revision 3's document\n"
    );

    // --json prints the server's bodies.
    let json = |args: &[&str]| -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&policy(&all)).unwrap()
    };
    let page = json(&["versions"]);
    let revisions: Vec<i64> = page["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["revision"].as_i64().unwrap())
        .collect();
    assert_eq!(revisions, [3, 2, 1]);
    assert_eq!(page["versions"][0]["status"], "active");
    assert!(page["versions"][0].get("source").is_none(), "{page}");
    let shown = json(&["show", "2"]);
    assert_eq!(shown["source"], V2);
    assert!(
        shown["hash"].as_str().unwrap().starts_with(&hash),
        "{shown}"
    );
    let diff = json(&["diff", "2", "3"]);
    assert_eq!(diff["rules_changed"][0]["id"], "refunds", "{diff}");
    assert_eq!(diff["from"]["revision"], 2);
    assert_eq!(diff["to"]["revision"], 3);
    // Unchanged is measured against the active document (revision 1's, since the rollback).
    std::fs::write(dir.path().join("v1.yaml"), V1).unwrap();
    let unchanged = json(&["publish", "v1.yaml"]);
    assert_eq!(unchanged["changed"], false, "{unchanged}");
    assert_eq!(unchanged["policy"]["revision"], 3, "{unchanged}");
    let rolled = json(&["rollback", "2"]);
    assert_eq!(rolled["changed"], true, "{rolled}");
    assert_eq!(rolled["policy"]["revision"], 4, "{rolled}");
    assert_eq!(rolled["policy"]["comment"], "rollback to revision 2");
}

/// What is refused leaves the active version alone, and says why on one line: the
/// server's `line:col` problems for a broken document, its `version_not_newer` detail
/// for an old version, and for a file that cannot be read, a message before anything is
/// sent.
#[test]
fn refused_publishes_say_why_and_leave_the_active_version_alone() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let key = admin_key(dir.path(), "acme");
    let env = server.env(&key);
    let run = |args: &[&str]| warden(dir.path(), &policy_args(args), &env);

    std::fs::write(dir.path().join("broken.yaml"), BROKEN).unwrap();
    let out = run(&["publish", "broken.yaml"]);
    let error = one_line_error(&out);
    assert!(
        error.contains("policy_invalid") && error.contains("5:13: "),
        "every problem at its line:col: {error}"
    );
    assert!(!error.contains("broken.yaml"), "{error}");

    let old = V1.replace("small refunds are fine", "small refunds are still fine");
    std::fs::write(dir.path().join("old.yaml"), old).unwrap();
    let error = one_line_error(&run(&["publish", "old.yaml"]));
    assert!(
        error.contains("version_not_newer")
            && error.contains("version `1.0.0` is not greater than the active version `1.0.0`"),
        "{error}"
    );

    let error = one_line_error(&run(&["publish", "missing.yaml"]));
    assert!(
        error.starts_with("error: cannot read `missing.yaml`"),
        "{error}"
    );
    let error = one_line_error(&run(&["show", "7"]));
    assert!(error.contains("404") && error.contains("`7`"), "{error}");

    let versions = assert_success(&run(&["versions"]));
    assert_eq!(versions.lines().count(), 2, "only revision 1: {versions}");
    assert!(versions.contains("active"), "{versions}");

    // `-` reads standard input; a `.json` file goes as JSON.
    let out = warden_stdin(dir.path(), &policy_args(&["publish", "-"]), &env, V2);
    assert!(
        assert_success(&out).starts_with("published acme revision 2 (version 1.1.0"),
        "{out:?}"
    );
    let v3: serde_json::Map<String, Value> = serde_json::from_value(serde_json::json!({
        "version": "1.2.0",
        "default": "deny",
        "rules": [{"id": "tickets", "actions": ["ticket.*"], "effect": "allow"}],
    }))
    .unwrap();
    std::fs::write(
        dir.path().join("v3.json"),
        serde_json::to_string_pretty(&v3).unwrap(),
    )
    .unwrap();
    let published = assert_success(&run(&["publish", "v3.json"]));
    assert!(
        published.starts_with("published acme revision 3 (version 1.2.0"),
        "{published}"
    );

    // An admin key is its own tenant's; an operator key names the tenant.
    let error = one_line_error(&run(&["versions", "--tenant", "other"]));
    assert!(error.contains("403"), "{error}");
    let operator = server.operator_key();
    let versions = assert_success(&warden(
        dir.path(),
        &policy_args(&["versions", "--tenant", "acme"]),
        &server.env(&operator),
    ));
    assert_eq!(versions.lines().count(), 4, "{versions}");

    let error = one_line_error(&warden(
        dir.path(),
        &policy_args(&["versions"]),
        &[("WARDEN_URL", server.url.as_str())],
    ));
    assert!(error.contains("WARDEN_KEY"), "no key: {error}");
    let help = assert_success(&warden(dir.path(), &["policy", "publish", "--help"], &[]));
    assert!(help.contains("Example"), "{help}");
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Issue 11: `warden policy replay` replays a candidate over the decisions the server kept
/// snapshots of, and says what it would flip; the payload's values are nowhere in the
/// database in plain text.
#[test]
fn a_candidate_is_replayed_over_recent_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let controller = key(dir.path(), "controller", "acme");
    let secret = "4111-1111-1111-1111";
    for (kind, amount) in [
        ("payment.refund", 70),
        ("payment.refund", 70),
        ("payment.refund", 20),
        ("ticket.update", 0),
    ] {
        let body = format!(
            r#"{{"type": "{kind}", "payload": {{"amount": {amount}, "card": "{secret}"}}}}"#
        );
        let answer = post(&server, "/v1/decisions", &controller, &body);
        assert!(answer.contains(r#""effect":"allow""#), "{answer}");
    }
    std::fs::write(dir.path().join("candidate.yaml"), V2).unwrap();
    let replay = [
        "--json",
        "replay",
        "candidate.yaml",
        "--tenant",
        "acme",
        "--db",
        "warden.db",
        "--data-dir",
        ".",
        "--since",
        "1h",
    ];
    let out = warden(dir.path(), &policy_args(&replay), &[]);
    let report: Value = serde_json::from_str(assert_success(&out).trim()).unwrap();
    assert_eq!(report["replayed"], 4, "{report}");
    assert_eq!(report["same"], 2, "{report}");
    assert_eq!(report["flips"]["allow→deny"]["count"], 2, "{report}");
    assert_eq!(report["unreadable"], 0);
    // A candidate reading a field the snapshots never held cannot be judged: unknown.
    std::fs::write(
        dir.path().join("curious.yaml"),
        V1.replace(
            "action.payload.amount < 100",
            "action.payload.card != \"x\"",
        ),
    )
    .unwrap();
    let curious = [
        "--json",
        "replay",
        "curious.yaml",
        "--tenant",
        "acme",
        "--db",
        "warden.db",
        "--data-dir",
        ".",
    ];
    let out = warden(dir.path(), &policy_args(&curious), &[]);
    let report: Value = serde_json::from_str(assert_success(&out).trim()).unwrap();
    assert_eq!(report["unknown"]["action.payload.card"], 3, "{report}");
    // The human form names the flips.
    let out = warden(dir.path(), &policy_args(&replay[1..]), &[]);
    let text = assert_success(&out);
    assert!(text.contains("allow→deny: 2"), "{text}");
    drop(server);
    for file in ["warden.db", "warden.db-wal"] {
        if let Ok(bytes) = std::fs::read(dir.path().join(file)) {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "the card number is in {file} in plain text"
            );
        }
    }
}

/// `warden keys create --role ROLE --tenant TENANT` on the server's database.
fn key(dir: &Path, role: &str, tenant: &str) -> String {
    let out = warden(
        dir,
        &[
            "keys",
            "create",
            "--role",
            role,
            "--tenant",
            tenant,
            "--db",
            "warden.db",
        ],
        &[],
    );
    assert_success(&out)
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_owned()
}

/// A JSON POST over plain HTTP/1.1; the whole response as text.
fn post(server: &Server, path: &str, token: &str, body: &str) -> String {
    let addr = server.url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// A running `warden serve` in a folder with `policies/acme.yaml`, killed when dropped
/// however the test ends.
struct Server {
    child: Child,
    url: String,
    stdout: PathBuf,
}

impl Server {
    fn start(dir: &Path) -> Server {
        let policies = dir.join("policies");
        std::fs::create_dir_all(&policies).unwrap();
        std::fs::write(policies.join("acme.yaml"), V1).unwrap();
        let addr = free_port();
        let stdout = dir.join("serve.stdout");
        let stderr = dir.join("serve.stderr");
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--listen", &addr.to_string()])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap());
        for var in WARDEN_ENV {
            command.env_remove(var);
        }
        command.env("RUST_LOG", "warn");
        let mut server = Server {
            child: command.spawn().unwrap(),
            url: format!("http://{addr}"),
            stdout,
        };
        let deadline = Instant::now() + STARTUP;
        while !healthy(addr) {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!(
                    "warden serve exited with {status}:\n{}",
                    std::fs::read_to_string(&stderr).unwrap()
                );
            }
            assert!(Instant::now() < deadline, "warden serve was not healthy");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// `WARDEN_URL` and `WARDEN_KEY` for a command against this server.
    fn env<'a>(&'a self, key: &'a str) -> [(&'a str, &'a str); 2] {
        [("WARDEN_URL", self.url.as_str()), ("WARDEN_KEY", key)]
    }

    /// The operator key the first start printed.
    fn operator_key(&self) -> String {
        let stdout = std::fs::read_to_string(&self.stdout).unwrap();
        let (_, key) = stdout
            .lines()
            .find_map(|l| l.split_once("operator key, shown only now: "))
            .unwrap_or_else(|| panic!("no operator key in {stdout}"));
        key.trim().to_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `warden keys create --role admin --tenant TENANT` on the server's database.
fn admin_key(dir: &Path, tenant: &str) -> String {
    let out = warden(
        dir,
        &[
            "keys",
            "create",
            "--role",
            "admin",
            "--tenant",
            tenant,
            "--db",
            "warden.db",
        ],
        &[],
    );
    let stdout = assert_success(&out);
    let token = stdout.lines().next().unwrap().trim().to_owned();
    assert!(token.starts_with("wdn_"), "{stdout}");
    token
}

fn policy_args<'a>(args: &[&'a str]) -> Vec<&'a str> {
    // `--json` is global to the binary: it goes before the subcommand either way.
    let (json, rest): (Vec<&str>, Vec<&str>) = args.iter().partition(|a| **a == "--json");
    json.into_iter().chain(["policy"]).chain(rest).collect()
}

/// Runs `warden ARGS` in `dir` with these variables (and no other `WARDEN_*` ones).
fn warden(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    run_warden(dir, args, env, None)
}

/// [`warden`], with `input` on standard input.
fn warden_stdin(dir: &Path, args: &[&str], env: &[(&str, &str)], input: &str) -> Output {
    run_warden(dir, args, env, Some(input))
}

fn run_warden(dir: &Path, args: &[&str], env: &[(&str, &str)], input: Option<&str>) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .current_dir(dir)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in WARDEN_ENV {
        command.env_remove(var);
    }
    command.envs(env.iter().copied());
    let mut child = command.spawn().unwrap();
    if let Some(input) = input {
        // Dropped at the end of the statement: the command sees the end of its input.
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    // Read on another thread, so a full pipe cannot stall the command while we wait.
    let (done, output) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    output
        .recv_timeout(CLI_TIMEOUT)
        .unwrap_or_else(|_| {
            panic!(
                "`warden {}` ran longer than {CLI_TIMEOUT:?}",
                args.join(" ")
            )
        })
        .unwrap()
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

/// Asserts a failure with nothing on stdout and one line on stderr, and returns it.
fn one_line_error(out: &Output) -> String {
    let stderr = String::from_utf8(out.stderr.clone()).unwrap();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr.trim_end().to_owned()
}

/// The hash prefix in `published … (version …, sha256 ab12cd34…)`.
fn sha_prefix(line: &str) -> String {
    let after = line.split("sha256 ").nth(1).unwrap();
    let prefix: String = after.chars().take_while(char::is_ascii_hexdigit).collect();
    assert_eq!(prefix.len(), 8, "{line}");
    prefix
}
