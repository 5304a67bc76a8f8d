//! The web approvals inbox in a real browser: Debian's Chromium, driven by `playwright-core`
//! (crates/warden/tests/inbox/inbox.mjs), against the real `warden serve` binary. The
//! script signs in with an approver key, approves one request, rejects another with a
//! reason, answers a question, and watches a new approval arrive without a reload; this
//! test holds the long-polls of the waiting callers, opened before the script acts, and
//! checks each woke with its outcome. The screenshot is kept at
//! `target/inbox-screenshot.png` (a CI artifact).
//!
//! Without node, Chromium or the script's packages (`npm ci` in the folder) the test says
//! SKIPPED loudly and passes; with `CI` set it fails instead, so CI cannot go green by not
//! checking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{free_port, healthy};
use serde_json::{Value, json};
use std::fs::File;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_warden");
const SCRIPT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/inbox");
const CHROMIUM: &str = "/usr/bin/chromium";
/// What `.ci/run` does; said in every skip and failure message.
const INSTALL: &str =
    "apt-get install -y chromium nodejs npm && npm ci --prefix crates/warden/tests/inbox";

/// Variables the binary reads: the test decides them, not the shell it runs in.
const WARDEN_ENV: [&str; 8] = [
    "WARDEN_DB",
    "WARDEN_LISTEN",
    "WARDEN_POLICIES",
    "WARDEN_DATA_DIR",
    "WARDEN_AUDIT_KEY",
    "WARDEN_PERMIT_KEY",
    "WARDEN_URL",
    "WARDEN_KEY",
];

const STARTUP: Duration = Duration::from_secs(15);
/// The browser script's whole run, Chromium's start included, on a busy 2-core machine.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

const POLICY: &str = r#"version: 1.0.0
default: deny
rules:
  - id: legal-escalation
    actions: [ticket.escalate]
    effect: require_approval
    approval: {approvers: [legal], expires_in: 4h}
    reason: legal-sensitive tickets need a human before escalation
audit:
  keep: [action.target.id]
"#;

/// Whether node, Chromium and the script's packages are here; if not, skips loudly, or
/// fails when `CI` is set.
fn browser_available() -> bool {
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let missing: Vec<&str> = [
        (!node).then_some("node"),
        (!Path::new(CHROMIUM).exists()).then_some(CHROMIUM),
        (!Path::new(SCRIPT_DIR)
            .join("node_modules/playwright-core/package.json")
            .exists())
        .then_some("playwright-core (npm ci)"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if missing.is_empty() {
        return true;
    }
    common::missing_tools(&missing.join(", "), INSTALL)
}

/// Where the screenshot goes: the workspace's target folder.
fn screenshot_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&target).unwrap();
    target.join("inbox-screenshot.png")
}

struct Server {
    child: Child,
    addr: SocketAddr,
    stderr: PathBuf,
}

impl Server {
    fn start(dir: &Path) -> Server {
        let addr = free_port();
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
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).unwrap());
        for var in WARDEN_ENV {
            command.env_remove(var);
        }
        let mut server = Server {
            child: command.spawn().unwrap(),
            addr,
            stderr,
        };
        let deadline = Instant::now() + STARTUP;
        while !healthy(addr) {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("warden serve exited with {status}:\n{}", server.log());
            }
            assert!(
                Instant::now() < deadline,
                "not healthy in time:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `warden keys create ARGS --db warden.db` in `dir`: the token.
fn key(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(["keys", "create", "--db", "warden.db"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_owned();
    assert!(token.starts_with("wdn_"), "{token}");
    token
}

/// Runs the script with `env`, within [`SCRIPT_TIMEOUT`].
fn run_script(env: &[(&str, String)]) -> Output {
    let mut command = Command::new("node");
    command
        .arg("inbox.mjs")
        .current_dir(SCRIPT_DIR)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    let mut child = command.spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stdout.read_to_end(&mut bytes);
        bytes
    });
    let err = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stderr.read_to_end(&mut bytes);
        bytes
    });
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the browser script ran longer than {SCRIPT_TIMEOUT:?}:\n{}",
                String::from_utf8_lossy(&err.join().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

#[test]
fn an_approver_decides_in_a_real_browser_and_the_waiting_callers_wake() {
    if !browser_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/default.yaml"), POLICY).unwrap();
    let migrate = Command::new(BIN)
        .args(["migrate", "--db", "warden.db"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    let controller = key(
        dir.path(),
        &["--role", "controller", "--agent", "support-*"],
    );
    let approver = key(
        dir.path(),
        &["--role", "approver", "--user", "alice", "--group", "legal"],
    );
    let agent = key(dir.path(), &["--role", "agent", "--agent", "support-bot"]);
    let server = Server::start(dir.path());

    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::new();
    let post = |path: &str, token: &str, body: Value| {
        let request = client.post(server.url(path)).bearer_auth(token).json(&body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let (approve_id, reject_id, question_id) = rt.block_on(async {
        let mut ids = Vec::new();
        for target in ["T-APPROVE", "T-REJECT"] {
            let action = json!({"type": "ticket.escalate", "agent": "support-bot",
                "on_behalf_of": "user-991", "target": {"type": "ticket", "id": target}});
            let (status, body) = post("/v1/decisions", &controller, action).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["effect"], "require_approval", "{body}");
            ids.push(body["approval"]["id"].as_str().unwrap().to_owned());
        }
        let question = json!({"question": "Refund or replace the broken router?",
            "options": ["refund", "replace"]});
        let (status, body) = post("/v1/questions", &agent, question).await;
        assert_eq!(status, 201, "{body}");
        (
            ids[0].clone(),
            ids[1].clone(),
            body["id"].as_str().unwrap().to_owned(),
        )
    });

    // The waiting callers, before anyone acts: the controller on its approvals, the agent on
    // its question.
    let wait = |path: String, token: String| {
        let request = client.get(server.url(&path)).bearer_auth(token);
        rt.spawn(async move {
            let started = Instant::now();
            let response = request.send().await.unwrap();
            assert_eq!(response.status().as_u16(), 200);
            (response.json::<Value>().await.unwrap(), started.elapsed())
        })
    };
    let waits = [
        wait(
            format!("/v1/approvals/{approve_id}/wait?timeout=150"),
            controller.clone(),
        ),
        wait(
            format!("/v1/approvals/{reject_id}/wait?timeout=150"),
            controller.clone(),
        ),
        wait(
            format!("/v1/questions/{question_id}/wait?timeout=150"),
            agent.clone(),
        ),
    ];
    std::thread::sleep(Duration::from_millis(300));

    let screenshot = screenshot_path();
    let _ = std::fs::remove_file(&screenshot);
    let out = run_script(&[
        ("WARDEN_URL", server.url("")),
        ("APPROVER_KEY", approver),
        ("CONTROLLER_KEY", controller),
        ("APPROVE_ID", approve_id.clone()),
        ("REJECT_ID", reject_id.clone()),
        ("QUESTION_ID", question_id.clone()),
        ("CHROMIUM", CHROMIUM.to_owned()),
        ("SCREENSHOT", screenshot.display().to_string()),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser script failed:\n{stdout}\n{stderr}\nserver log:\n{}",
        server.log()
    );
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();
    assert_eq!(result["ok"], true, "{stdout}");

    let [approved, rejected, answered] = waits.map(|w| rt.block_on(w).unwrap());
    let (approved, approved_after) = approved;
    assert_eq!(approved["timed_out"], false, "{approved}");
    assert_eq!(approved["status"], "approved", "{approved}");
    assert_eq!(approved["votes"][0]["user"], "alice");
    assert_eq!(approved["votes"][0]["reason"], "checked with counsel");
    assert_eq!(approved["decision"]["effect"], "allow", "{approved}");
    assert!(
        approved["decision"]["permit"]["token"].is_string(),
        "{approved}"
    );
    let (rejected, _) = rejected;
    assert_eq!(rejected["timed_out"], false, "{rejected}");
    assert_eq!(rejected["status"], "rejected");
    assert_eq!(rejected["reason"], "not without the customer's consent");
    assert_eq!(rejected["decision"]["effect"], "deny");
    let (answered, _) = answered;
    assert_eq!(answered["timed_out"], false, "{answered}");
    assert_eq!(answered["status"], "answered");
    assert_eq!(answered["answer"], "replace");
    // Woken by the decision, not by their 150 s timeout.
    assert!(approved_after < SCRIPT_TIMEOUT, "{approved_after:?}");

    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
    eprintln!("inbox screenshot: {}", screenshot.display());
}
