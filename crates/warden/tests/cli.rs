//! The `warden` binary as a user runs it: exit codes, output lines and JSON bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn warden(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn check_accepts_the_example_and_reports_every_problem_with_its_position() {
    let ok = warden(&["check", "examples/nexus"]);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.yaml",
        "version: 1.0.0\nrules:\n  - {id: a, actions: [x], effect: alow}\n  - {id: a, actions: [x], effect: deny, when: 'actoin.type == 1'}\n",
    );
    let out = warden(&["check", &bad]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("{bad}:3:35: unknown effect `alow`")),
        "{text}"
    );
    assert!(
        text.contains(&format!("{bad}:4:10: duplicate rule id `a`")),
        "{text}"
    );
    assert!(text.contains("unknown variable `actoin`"), "{text}");

    let json = warden(&["check", "--json", &bad]);
    let body: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(body["errors"].as_array().unwrap().len(), 3);
    assert_eq!(body["errors"][0]["line"], 3);
}

#[test]
fn eval_prints_the_decision_body() {
    let out = warden(&[
        "eval",
        "--policy",
        "examples/nexus/nexus.yaml",
        "--action",
        "examples/nexus/actions/resolve.json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let body: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["effect"], "deny");
    assert_eq!(body["reasons"][0]["rule"], "low-confidence-resolve");
    assert_eq!(body["reasons"][0]["code"], "policy_rule");
    assert_eq!(
        body["reasons"][0]["message"],
        "confidence 0.82 is below the 0.85 needed to auto-resolve"
    );
    assert_eq!(body["confidence"]["initial"], 0.82);
    assert!((body["confidence"]["adjusted"].as_f64().unwrap() - 0.72).abs() < 1e-9);
    assert_eq!(body["policy_version"], "1.0.0");
    assert!(body["eval_ns"].as_u64().is_some());
    assert_eq!(
        body["obligations"],
        serde_json::json!({}),
        "no obligations on a deny"
    );
}

#[test]
fn eval_shows_the_missing_rule_of_a_deny_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let action = dir.path().join("export.json");
    std::fs::write(
        &action,
        r#"{"type": "crm.export", "agent": "support-bot", "target": {"type": "account", "id": "A-7"}}"#,
    )
    .unwrap();
    let action = action.display().to_string();
    let out = warden(&[
        "eval",
        "--policy",
        "examples/nexus/nexus.yaml",
        "--action",
        &action,
    ]);
    assert_eq!(out.status.code(), Some(0));
    let body: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["effect"], "deny");
    assert_eq!(
        body["rule_missing"]["id"], "allow-crm-export-support-bot",
        "{body}"
    );
    assert_eq!(
        body["rule_missing"]["agents"],
        serde_json::json!(["support-bot"])
    );
    assert_eq!(body["next_steps"], serde_json::json!([]));
}

#[test]
fn eval_reads_stdin_and_shows_approvals() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args([
            "eval",
            "--policy",
            "examples/nexus/nexus.yaml",
            "--action",
            "-",
        ])
        .current_dir(repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"type":"ticket.escalate","agent":"support-bot","context":{"ticket":{"flags":["legal_sensitive"]}}}"#)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let body: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["effect"], "require_approval");
    assert_eq!(body["approval"]["approvers"], serde_json::json!(["legal"]));
    assert_eq!(body["approval"]["expires_in"], "4h");
    assert_eq!(body["obligations"]["mode"], "draft");
}

#[test]
fn eval_refuses_a_bad_action_with_one_line_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let action = write(
        dir.path(),
        "a.json",
        r#"{"type": "ticket.resolve", "confidence": 7}"#,
    );
    let out = warden(&[
        "eval",
        "--policy",
        "examples/nexus/nexus.yaml",
        "--action",
        &action,
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        "error: invalid action: invalid `confidence`: 7 is outside [0, 1]"
    );
}

#[test]
fn eval_logs_the_detail_of_an_evaluation_error_but_the_body_stays_safe() {
    let dir = tempfile::tempdir().unwrap();
    let action = write(
        dir.path(),
        "a.json",
        r#"{"type": "email.send", "agent": "support-bot", "payload": {"external": true}}"#,
    );
    let out = warden(&[
        "eval",
        "--policy",
        "examples/nexus/nexus.yaml",
        "--action",
        &action,
    ]);
    let body: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["effect"], "deny");
    assert_eq!(body["reasons"][0]["code"], "evaluation_error");
    assert!(!stdout(&out).contains("no such key"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such key"));
}

#[test]
fn test_runs_the_example_suite() {
    let out = warden(&["test", "examples/nexus"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(stdout(&out).lines().last(), Some("15 passed, 0 failed"));
}

#[test]
fn a_failing_case_is_explained_on_screen_and_in_the_report() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo().join("examples/nexus/nexus.yaml"),
        dir.path().join("nexus.yaml"),
    )
    .unwrap();
    write(
        dir.path(),
        "wrong_test.yaml",
        "policy: nexus.yaml\ncases:\n  - name: passes\n    action: {type: ticket.get, agent: triage-bot}\n    expect: {effect: allow}\n  - name: wrongly expects allow\n    action: {type: ticket.resolve, confidence: 0.5, agent: support-bot}\n    expect: {effect: allow, rules: [support-may-act]}\n",
    );
    let report = dir.path().join("report.md");
    let out = warden(&[
        "test",
        dir.path().to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains("wrong_test.yaml:6 wrongly expects allow"),
        "{text}"
    );
    assert!(text.contains("effect: expected allow, got deny"), "{text}");
    assert!(
        text.contains("rules: expected [support-may-act], got [low-confidence-resolve]"),
        "{text}"
    );
    assert_eq!(text.lines().last(), Some("1 passed, 1 failed"));

    let md = std::fs::read_to_string(&report).unwrap();
    assert!(md.contains("## wrongly expects allow"), "{md}");
    assert!(md.contains("- effect: expected allow, got deny"), "{md}");
    assert!(
        md.contains("- `low-confidence-resolve` (deny, policy_rule): confidence 0.5 is below the 0.85 needed to auto-resolve"),
        "{md}"
    );
    assert!(!md.contains("## passes"));
}

#[test]
fn a_suite_whose_policy_is_broken_fails_with_the_policy_position() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "p.yaml",
        "version: 1.0.0\nrules:\n  - {id: a, actions: [x], effect: nope}\n",
    );
    write(
        dir.path(),
        "p_test.yaml",
        "policy: p.yaml\ncases:\n  - {name: n, action: {type: x}, expect: {effect: deny}}\n",
    );
    let out = warden(&["test", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains("p.yaml:3:35: unknown effect `nope`"),
        "{text}"
    );
    assert_eq!(text.lines().last(), Some("0 passed, 1 failed"));
}

#[test]
fn every_command_has_help_with_an_example() {
    for cmd in ["check", "eval", "test"] {
        let out = warden(&[cmd, "--help"]);
        assert_eq!(out.status.code(), Some(0));
        assert!(stdout(&out).contains("Example:"), "{cmd}");
    }
}

/// A reader that stops early (`warden eval … | head -c 10`) used to make the command panic
/// with "failed printing to stdout"; it ends quietly with status 0, like other tools.
#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let policy = repo().join("examples/nexus/nexus.yaml");
    let action = repo().join("examples/nexus/actions/resolve.json");
    for args in [
        vec![
            "eval",
            "--policy",
            policy.to_str().unwrap(),
            "--action",
            action.to_str().unwrap(),
        ],
        vec!["test", repo().join("examples/nexus").to_str().unwrap()],
        vec![
            "check",
            "--json",
            repo().join("examples/nexus").to_str().unwrap(),
        ],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Close the read end before the command has written anything.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}
