//! The review against a table of proposals (adversarial ones included), each broadening
//! verdict's counterexamples re-checked by evaluation, and a property test that a
//! `narrowing` verdict is never contradicted by random actions.

use super::*;
use crate::action::{Action, Env};
use crate::decision::Decision;
use crate::policy::Policy;
use serde_json::json;

/// Nexus with the ceilings proposals are held to.
fn live_source() -> String {
    let mut s = include_str!("../../../../examples/nexus/nexus.yaml").to_owned();
    s.push_str("\nproposal_limits:\n  max_budget: {cost_usd: 20}\n  max_approval_expiry: 8h\n");
    s
}

const NOW: i64 = 1_800_000_000;

/// The live document without its low-confidence deny, as a whole new document would be.
fn without_low_confidence() -> String {
    let source = live_source();
    let start = source.find("  - id: low-confidence-resolve").unwrap();
    let end = source.find("  - id: restricted-external-email").unwrap();
    format!("{}{}", &source[..start], &source[end..])
}

#[derive(Default)]
struct Case {
    risks: Option<Vec<&'static str>>,
    evidence: Vec<Evidence>,
    recent: Vec<(&'static str, Value)>,
    history: Vec<PastProposal>,
    replaced: Vec<String>,
}

fn evidence(agent: &str, action_type: &str, target: &str) -> Evidence {
    Evidence {
        decision_id: format!("d-{target}"),
        agent: Some(agent.into()),
        action_type: action_type.into(),
        target_type: Some("ticket".into()),
        target_id: Some(target.into()),
        effect: Verdict::Deny,
    }
}

fn proposal(changes: Value, case: &Case) -> Proposal {
    let ids: Vec<String> = case
        .evidence
        .iter()
        .map(|e| e.decision_id.clone())
        .collect();
    Proposal::from_value(json!({
        "rationale": "needed for the table",
        "risks": case.risks.clone().unwrap_or_else(|| vec!["may allow more than intended"]),
        "evidence": ids,
        "changes": changes,
    }))
    .unwrap()
}

fn run_case(changes: Value, case: &Case) -> Result<Review, ReviewError> {
    let source = live_source();
    let live = Policy::parse(&source).unwrap();
    let document = super::document(&source).unwrap();
    let recent: Vec<Recorded> = case
        .recent
        .iter()
        .enumerate()
        .map(|(i, (agent, action))| {
            let action = Action::from_value(action.clone()).unwrap();
            Recorded {
                decision_id: format!("r{i}"),
                agent: Some((*agent).into()),
                snapshot: live.snapshot(&action),
                at: Timestamp::from_unix_seconds(NOW - 60).unwrap(),
            }
        })
        .collect();
    let replaced: Vec<Replaced> = case
        .replaced
        .iter()
        .map(|s| Replaced {
            fingerprint: super::fingerprint(s).unwrap(),
            replaced_at: Timestamp::from_unix_seconds(NOW - 3600).unwrap(),
        })
        .collect();
    let inputs = Inputs {
        tenant: "acme",
        live_document: &document,
        live: &live,
        proposer: Some("support-bot"),
        evidence: &case.evidence,
        recent: &recent,
        history: &case.history,
        replaced: &replaced,
        now: Timestamp::from_unix_seconds(NOW).unwrap(),
        solver_timeout: Duration::from_secs(10),
    };
    review(&proposal(changes, case), &inputs)
}

fn rank(v: Verdict) -> u8 {
    match v {
        Verdict::Deny => 0,
        Verdict::RequireApproval => 1,
        Verdict::Allow => 2,
    }
}

/// A counterexample reproduces: the candidate's decision is more permissive.
fn more_permissive(l: &Decision, c: &Decision) -> bool {
    if l.verdict != c.verdict {
        return rank(c.verdict) > rank(l.verdict);
    }
    l.verdict != Verdict::Deny
        && (l.obligations.mode.is_some() && c.obligations.mode != l.obligations.mode
            || l.obligations
                .limits
                .iter()
                .any(|(k, v)| c.obligations.limits.get(k).is_none_or(|cv| cv > v)))
}

fn check_counterexamples(name: &str, r: &Review) {
    let live = Policy::parse(&live_source()).unwrap();
    let cand = Policy::parse(&r.candidate.source).unwrap();
    for cx in &r.counterexamples {
        let action = Action::from_value(cx.action.clone()).unwrap_or_else(|e| {
            panic!("{name}: counterexample {} is not an action: {e}", cx.action)
        });
        let env = Env::new("acme", Timestamp::from_unix_seconds(0).unwrap());
        let (l, c) = (live.evaluate(&action, &env), cand.evaluate(&action, &env));
        let now = |d: &Decision| d.verdict;
        // `now` is part of the witness; conditions here do not read it.
        assert!(
            more_permissive(&l, &c),
            "{name}: counterexample {} does not reproduce: live {:?}, candidate {:?}",
            cx.action,
            now(&l),
            now(&c)
        );
        assert_eq!(cx.live.effect, l.verdict, "{name}");
        assert_eq!(cx.candidate.effect, c.verdict, "{name}");
    }
}

use Classification::{Broadening as B, Forbidden as F, Narrowing as N, Neutral as U};
use Status::{AutoApproved as Auto, NeedsHuman as Human, Rejected as Rej, ReviseRequested as Rev};

/// `(name, changes, status, classification, whether a counterexample must be found)`.
fn table() -> Vec<(&'static str, Value, Status, Classification, bool, Case)> {
    let none = Case::default;
    vec![
        // Narrowing and neutral: applied at once.
        ("deny one agent's big refunds", json!([{"op": "add_rule", "rule": {"id": "no-big-refunds", "actions": ["billing.refund"], "agents": ["support-bot"], "when": "action.payload.amount > 1000", "effect": "deny"}}]), Auto, N, false, none()),
        ("threshold moved the right way", json!([{"op": "replace_rule", "rule": {"id": "low-confidence-resolve", "actions": ["ticket.resolve"], "when": "action.confidence < 0.9", "effect": "deny", "confidence_adjustment": -0.1}}]), Auto, N, false, none()),
        ("writes need approval", json!([{"op": "add_rule", "rule": {"id": "crm-approval", "actions": ["db.write.crm"], "agents": ["support-*"], "effect": "require_approval", "approval": {"approvers": ["ops"], "expires_in": "1h"}}}]), Auto, N, false, none()),
        ("email goes out as draft", json!([{"op": "add_rule", "rule": {"id": "email-draft", "actions": ["email.send"], "effect": "modify", "set": {"mode": "draft"}}}]), Auto, U, false, none()),
        ("a lower tool-call ceiling", json!([{"op": "replace_rule", "rule": {"id": "writes-as-draft", "actions": ["db.write*"], "effect": "modify", "set": {"mode": "draft", "limits": {"tool_calls": 3}}}}]), Auto, N, false, none()),
        ("guidance only", json!([{"op": "set", "path": "guidance", "value": [{"name": "Be kind", "content": "Always."}]}]), Auto, U, false, none()),
        ("a description only", json!([{"op": "replace_rule", "rule": {"id": "triage-reads", "description": "reads", "actions": ["ticket.get", "ticket.list", "ticket.search"], "agents": ["triage-bot"], "effect": "allow", "reason": "the triage bot may read tickets"}}]), Auto, U, false, none()),
        ("a new budget", json!([{"op": "set", "path": "budgets", "value": [{"id": "per-run", "per": "run", "limits": {"tool_calls": 200, "tokens": 500000, "cost_usd": 5, "duration": "30m"}}, {"id": "per-agent", "per": "agent", "limits": {"cost_usd": 10}}]}]), Auto, U, false, none()),
        ("a lower budget", json!([{"op": "set", "path": "budgets", "value": [{"id": "per-run", "per": "run", "limits": {"tool_calls": 200, "tokens": 500000, "cost_usd": 3, "duration": "30m"}}]}]), Auto, U, false, none()),
        ("a json patch adding a deny", json!([{"op": "json_patch", "patch": [{"op": "add", "path": "/rules/0", "value": {"id": "no-closing", "actions": ["ticket.close"], "agents": ["support-bot"], "effect": "deny"}}]}]), Auto, N, false, none()),
        ("an unused read grant removed", json!([{"op": "remove_rule", "id": "triage-reads"}]), Auto, N, false, none()),
        ("the approval scope widened", json!([{"op": "replace_rule", "rule": {"id": "large-refund", "actions": ["billing.refund"], "when": "action.payload.amount > 500", "effect": "require_approval", "approval": {"approvers": ["finance"], "expires_in": "1h"}}}]), Human, B, true, none()),
        ("the approval scope widened for support only", json!([{"op": "replace_rule", "rule": {"id": "large-refund", "actions": ["billing.refund"], "agents": ["support-*"], "when": "action.payload.amount > 500", "effect": "require_approval", "approval": {"approvers": ["finance"], "expires_in": "1h"}}}]), Auto, N, false, none()),
        ("a limit added to email", json!([{"op": "add_rule", "rule": {"id": "email-limit", "actions": ["email.send"], "effect": "modify", "set": {"limits": {"tool_calls": 2}}}}]), Auto, N, false, none()),
        ("a deny on an error-prone path", json!([{"op": "add_rule", "rule": {"id": "vip-hold", "actions": ["ticket.resolve"], "when": "context.ticket.vip == true", "effect": "deny"}}]), Auto, N, false, none()),
        // Narrowing, but other agents' recent decisions flip: a human decides.
        ("a grant removed that triage-bot uses", json!([{"op": "remove_rule", "id": "triage-reads"}]), Human, N, false, Case { recent: vec![("triage-bot", json!({"type": "ticket.get", "agent": "triage-bot"}))], ..none() }),
        // Broadening: a human decides, shown a counterexample.
        ("a new agent may refund", json!([{"op": "add_rule", "rule": {"id": "refund-bot", "actions": ["billing.refund"], "agents": ["refund-bot"], "effect": "allow"}}]), Human, B, true, none()),
        ("a deny with a weaker condition", json!([{"op": "replace_rule", "rule": {"id": "restricted-external-email", "actions": ["email.send"], "when": "context.user.role == \"restricted\" && action.payload.external == true && action.payload.size > 5", "effect": "deny"}}]), Human, B, true, none()),
        ("an allow whose glob grew", json!([{"op": "replace_rule", "rule": {"id": "triage-reads", "actions": ["ticket.*"], "agents": ["triage-bot"], "effect": "allow"}}]), Human, B, true, none()),
        ("threshold moved the wrong way", json!([{"op": "replace_rule", "rule": {"id": "low-confidence-resolve", "actions": ["ticket.resolve"], "when": "action.confidence < 0.5", "effect": "deny"}}]), Human, B, true, none()),
        ("a deny removed", json!([{"op": "remove_rule", "id": "low-confidence-resolve"}]), Human, B, true, none()),
        ("approval turned into allow", json!([{"op": "replace_rule", "rule": {"id": "legal-escalation", "actions": ["ticket.escalate"], "when": "\"legal_sensitive\" in context.ticket.flags", "effect": "allow"}}]), Human, B, true, none()),
        ("approval threshold raised", json!([{"op": "replace_rule", "rule": {"id": "large-refund", "actions": ["billing.refund"], "scope": {"app": "helpdesk"}, "when": "action.payload.amount > 5000", "effect": "require_approval", "approval": {"approvers": ["finance"], "expires_in": "1h"}}}]), Human, B, true, none()),
        ("a payload escape on a deny", json!([{"op": "replace_rule", "rule": {"id": "restricted-external-email", "actions": ["email.send"], "when": "context.user.role == \"restricted\" && action.payload.external == true && !(action.payload.override == true)", "effect": "deny"}}]), Human, B, true, none()),
        ("an || with a payload escape", json!([{"op": "add_rule", "rule": {"id": "admin-deploys", "actions": ["deploy.run"], "when": "context.user.role == \"admin\" || action.payload.force == true", "effect": "allow"}}]), Human, B, true, none()),
        ("an allow the payload decides", json!([{"op": "add_rule", "rule": {"id": "self-approved", "actions": ["deploy.run"], "when": "action.payload.approved == true", "effect": "allow"}}]), Human, B, true, none()),
        ("an obligation dropped", json!([{"op": "remove_rule", "id": "writes-as-draft"}]), Human, B, true, none()),
        ("a limit obligation raised", json!([{"op": "replace_rule", "rule": {"id": "writes-as-draft", "actions": ["db.write*"], "effect": "modify", "set": {"mode": "draft", "limits": {"tool_calls": 50}}}}]), Human, B, true, none()),
        ("a budget raised", json!([{"op": "set", "path": "budgets", "value": [{"id": "per-run", "per": "run", "limits": {"tool_calls": 200, "tokens": 500000, "cost_usd": 10, "duration": "30m"}}]}]), Human, B, false, none()),
        ("a rate limit removed", json!([{"op": "set", "path": "rate_limits", "value": []}]), Human, B, false, none()),
        ("an approval scoped to fewer apps", json!([{"op": "replace_rule", "rule": {"id": "large-refund", "actions": ["billing.refund"], "scope": {"app": "billing"}, "when": "action.payload.amount > 500", "effect": "require_approval", "approval": {"approvers": ["finance"], "expires_in": "1h"}}}]), Human, B, true, none()),
        ("replace_policy silently drops a deny", json!([{"op": "replace_policy", "policy": without_low_confidence()}]), Human, B, true, none()),
        ("a tier for a new agent", json!([{"op": "set", "path": "agents", "value": {"support-*": {"tier": "draft"}, "triage-bot": {"tier": "observe"}, "refund-bot": {"tier": "observe"}}}]), Auto, N, false, none()),
        ("a tier lowered", json!([{"op": "set", "path": "agents", "value": {"support-*": {"tier": "observe"}, "triage-bot": {"tier": "observe"}}}]), Auto, N, false, none()),
        ("an erroring deny made safe", json!([{"op": "replace_rule", "rule": {"id": "low-confidence-resolve", "actions": ["ticket.resolve"], "when": "has(action.confidence) && action.confidence < 0.85", "effect": "deny"}}]), Human, B, true, none()),
        ("an approval removed", json!([{"op": "remove_rule", "id": "legal-escalation"}]), Human, B, true, none()),
        ("a broadening with no risks named", json!([{"op": "add_rule", "rule": {"id": "refund-bot", "actions": ["billing.refund"], "agents": ["refund-bot"], "effect": "allow"}}]), Human, B, true, Case { risks: Some(vec![]), ..none() }),
        // Forbidden: rejected.
        ("default allow", json!([{"op": "set", "path": "default", "value": "allow"}]), Rej, F, false, none()),
        ("a protected rule removed", json!([{"op": "remove_rule", "id": "support-may-act"}]), Rej, F, false, none()),
        ("a json patch edits a protected rule", json!([{"op": "json_patch", "patch": [{"op": "add", "path": "/rules/5/when", "value": "true || action.payload.x == 1"}]}]), Rej, F, false, none()),
        ("a tier raised", json!([{"op": "set", "path": "agents", "value": {"support-*": {"tier": "draft"}, "triage-bot": {"tier": "sandbox"}}}]), Rej, F, false, none()),
        ("an allow for everything", json!([{"op": "add_rule", "rule": {"id": "all", "actions": ["*"], "effect": "allow"}}]), Rej, F, false, none()),
        ("proposals switched off", json!([{"op": "set", "path": "proposals", "value": "off"}]), Rej, F, false, none()),
        ("a ceiling raised", json!([{"op": "set", "path": "proposal_limits", "value": {"max_budget": {"cost_usd": 2000}}}]), Rej, F, false, none()),
        ("a redaction dropped", json!([{"op": "set", "path": "audit", "value": {"keep": ["action.target.id", "context.ticket.priority"]}}]), Rej, F, false, none()),
        ("more kept verbatim", json!([{"op": "set", "path": "audit", "value": {"keep": ["action.target.id", "context.ticket.priority", "context.user.name"], "redact": ["context.user.email"]}}]), Rej, F, false, none()),
        ("approvers swapped", json!([{"op": "replace_rule", "rule": {"id": "legal-escalation", "actions": ["ticket.escalate"], "when": "\"legal_sensitive\" in context.ticket.flags", "effect": "require_approval", "approval": {"approvers": ["interns"], "expires_in": "4h"}}}]), Rej, F, false, none()),
        ("on_error removed", json!([{"op": "json_patch", "patch": [{"op": "remove", "path": "/on_error"}]}]), Rej, F, false, none()),
        // Revise: a narrower change would do.
        ("wider than its evidence", json!([{"op": "add_rule", "rule": {"id": "refund-t1", "actions": ["billing.refund"], "agents": ["refund-bot"], "effect": "allow"}}]), Rev, B, true, Case { evidence: vec![evidence("refund-bot", "billing.refund", "T-1")], ..none() }),
        ("a budget past the ceiling", json!([{"op": "set", "path": "budgets", "value": [{"id": "per-run", "per": "run", "limits": {"tool_calls": 200, "tokens": 500000, "cost_usd": 50, "duration": "30m"}}]}]), Rev, B, false, none()),
        ("an approval open too long", json!([{"op": "add_rule", "rule": {"id": "crm-approval", "actions": ["db.write.crm"], "agents": ["support-*"], "effect": "require_approval", "approval": {"approvers": ["ops"], "expires_in": "24h"}}}]), Rev, N, false, none()),
        // History: rejected and flagged.
        ("a rejected change again", json!([{"op": "remove_rule", "id": "low-confidence-resolve"}]), Rej, B, true, Case {
            history: vec![PastProposal { id: "p-old".into(), change_hash: Proposal::from_value(json!({"rationale": "x", "changes": [{"op": "remove_rule", "id": "low-confidence-resolve"}]})).unwrap().change_hash(), rejected: true, evidence: vec![] }],
            ..none()
        }),
        ("a revert of a recent change", json!([{"op": "add_rule", "rule": {"id": "old-rule", "actions": ["ticket.close"], "agents": ["support-bot"], "effect": "deny"}}]), Rej, N, false, Case {
            replaced: vec![run_case(json!([{"op": "add_rule", "rule": {"id": "old-rule", "actions": ["ticket.close"], "agents": ["support-bot"], "effect": "deny"}}]), &Case::default()).unwrap().candidate.source],
            ..none()
        }),
    ]
}

#[test]
fn the_table_of_proposals_gets_the_expected_outcomes() {
    let cases = table();
    assert!(cases.len() >= 40, "the issue asks for at least 40 cases");
    let mut failures = Vec::new();
    for (name, changes, status, classification, needs_example, case) in cases {
        let r = match run_case(changes, &case) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{name}: review failed: {e}"));
                continue;
            }
        };
        if r.status != status || r.classification != classification {
            failures.push(format!(
                "{name}: got {:?}/{:?}, want {:?}/{:?}; reasons {:?}; findings {:?}",
                r.status,
                r.classification,
                status,
                classification,
                r.reasons,
                r.findings.iter().map(|f| f.code).collect::<Vec<_>>()
            ));
            continue;
        }
        if needs_example && r.counterexamples.is_empty() {
            failures.push(format!(
                "{name}: broadening without a reproducing counterexample"
            ));
        }
        check_counterexamples(name, &r);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn findings_name_the_backdoor_the_wildcard_and_the_understated_risk() {
    let codes = |r: &Review| r.findings.iter().map(|f| f.code).collect::<Vec<_>>();
    let r = run_case(json!([{"op": "add_rule", "rule": {"id": "self-approved", "actions": ["deploy.run"], "when": "action.payload.approved == true", "effect": "allow"}}]), &Case::default()).unwrap();
    assert!(
        codes(&r).contains(&"payload_only_condition"),
        "{:?}",
        codes(&r)
    );
    let r = run_case(json!([{"op": "add_rule", "rule": {"id": "admin-deploys", "actions": ["deploy.run"], "when": "context.user.role == \"admin\" || action.payload.force == true", "effect": "allow"}}]), &Case::default()).unwrap();
    assert!(
        codes(&r).contains(&"payload_only_condition"),
        "{:?}",
        codes(&r)
    );
    let r = run_case(json!([{"op": "replace_rule", "rule": {"id": "triage-reads", "actions": ["ticket.*"], "agents": ["triage-bot"], "effect": "allow"}}]), &Case::default()).unwrap();
    assert!(codes(&r).contains(&"wildcard_grant"), "{:?}", codes(&r));
    let r = run_case(json!([{"op": "add_rule", "rule": {"id": "refund-bot", "actions": ["billing.refund"], "agents": ["refund-bot"], "effect": "allow"}}]), &Case { risks: Some(vec![]), ..Case::default() }).unwrap();
    assert!(codes(&r).contains(&"understated_risk"), "{:?}", codes(&r));
}

#[test]
fn a_grant_wider_than_its_evidence_gets_the_narrower_rule_as_a_suggestion() {
    let case = Case {
        evidence: vec![evidence("refund-bot", "billing.refund", "T-1")],
        ..Case::default()
    };
    let r = run_case(json!([{"op": "add_rule", "rule": {"id": "refund-t1", "actions": ["billing.*"], "effect": "allow"}}]), &case).unwrap();
    assert_eq!(r.status, Status::ReviseRequested);
    let suggestion = serde_json::to_value(r.suggestion.unwrap()).unwrap();
    assert_eq!(
        suggestion,
        json!([{"op": "add_rule", "rule": {"id": "refund-t1", "actions": ["billing.refund"], "agents": ["refund-bot"], "when": "action.target.id == \"T-1\"", "effect": "allow"}}])
    );
}

#[test]
fn values_past_a_ceiling_are_clamped_in_the_suggestion() {
    let r = run_case(json!([{"op": "set", "path": "budgets", "value": [{"id": "per-run", "per": "run", "limits": {"cost_usd": 50}}]}]), &Case::default()).unwrap();
    assert_eq!(r.status, Status::ReviseRequested);
    let s = serde_json::to_value(r.suggestion.unwrap()).unwrap();
    assert_eq!(
        s,
        json!([{"op": "set", "path": "budgets", "value": [{"id": "per-run", "per": "run", "limits": {"cost_usd": 20.0}}]}])
    );
    let r = run_case(json!([{"op": "add_rule", "rule": {"id": "crm-approval", "actions": ["db.write.crm"], "effect": "require_approval", "approval": {"approvers": ["ops"], "expires_in": "24h"}}}]), &Case::default()).unwrap();
    let s = serde_json::to_value(r.suggestion.unwrap()).unwrap();
    assert_eq!(s[0]["rule"]["approval"]["expires_in"], json!("8h"));
}

#[test]
fn impact_counts_flips_by_kind_with_examples() {
    let case = Case {
        recent: vec![
            (
                "support-bot",
                json!({"type": "ticket.resolve", "agent": "support-bot", "confidence": 0.7}),
            ),
            (
                "support-bot",
                json!({"type": "ticket.resolve", "agent": "support-bot", "confidence": 0.95}),
            ),
            (
                "triage-bot",
                json!({"type": "ticket.get", "agent": "triage-bot"}),
            ),
        ],
        ..Case::default()
    };
    let r = run_case(
        json!([{"op": "remove_rule", "id": "low-confidence-resolve"}]),
        &case,
    )
    .unwrap();
    assert_eq!(r.impact.replayed, 3);
    assert_eq!(r.impact.same, 2);
    assert_eq!(r.impact.flips.len(), 1);
    let flip = &r.impact.flips[0];
    assert_eq!(
        (flip.from, flip.to, flip.count),
        (Verdict::Deny, Verdict::Allow, 1)
    );
    assert_eq!(flip.examples[0].decision_id, "r0");
}

#[test]
fn a_proposal_that_does_not_apply_or_compile_is_an_error_naming_it() {
    let e = run_case(
        json!([{"op": "remove_rule", "id": "no-such-rule"}]),
        &Case::default(),
    )
    .unwrap_err();
    assert!(matches!(e, ReviewError::Change { index: 0, .. }), "{e}");
    let e = run_case(json!([{"op": "add_rule", "rule": {"id": "bad", "actions": ["x.y"], "when": "action.confidence <", "effect": "deny"}}]), &Case::default()).unwrap_err();
    assert!(matches!(e, ReviewError::Invalid(_)), "{e}");
    assert!(Proposal::from_value(json!({"rationale": "", "changes": []})).is_err());
    assert!(
        Proposal::from_value(json!({"rationale": "x", "changes": [{"op": "drop_table"}]})).is_err()
    );
}

#[test]
fn the_review_token_binds_the_live_version_and_the_analysis() {
    let r = run_case(
        json!([{"op": "remove_rule", "id": "low-confidence-resolve"}]),
        &Case::default(),
    )
    .unwrap();
    assert_eq!(r.token("h1"), r.token("h1"));
    assert_ne!(r.token("h1"), r.token("h2"));
    let mut other = r.clone();
    other.candidate.source.push(' ');
    assert_ne!(r.token("h1"), other.token("h1"));
}
