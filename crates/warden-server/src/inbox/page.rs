//! The inbox's HTML, written with maud: every value spliced in with `(…)` is escaped, so an
//! agent name, a reason or a question cannot become markup. No inline script or style (the
//! Content-Security-Policy forbids both): behaviour comes from `/inbox/app.js`, looks from
//! `/inbox/app.css`.

use super::session::Session;
use super::view::{Decided, Filter, Inbox, KINDS, Pending, STATUSES, is_question};
use crate::proposals::ProposalView;
use crate::state::now_ms;
use crate::wire::ApprovalView;
use maud::{DOCTYPE, Markup, html};
use serde_json::Value;

/// A message above the list: what just happened, or why it did not.
#[derive(Debug, Clone)]
pub enum Notice {
    /// It worked.
    Done(String),
    /// It did not; nothing changed.
    Failed(String),
}

fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) " · Warden" }
                link rel="stylesheet" href="/inbox/app.css";
                script src="/inbox/app.js" defer {}
            }
            body { (body) }
        }
    }
}

fn notice(notice: Option<&Notice>) -> Markup {
    html! {
        @match notice {
            Some(Notice::Done(text)) => p.notice.done role="status" { (text) },
            Some(Notice::Failed(text)) => p.notice.failed role="alert" { (text) },
            None => {},
        }
    }
}

/// The sign-in page: a form for an approver key, with its form token.
pub fn sign_in(token: &str, message: Option<&Notice>) -> Markup {
    layout(
        "Sign in",
        html! {
            main.sign-in {
                h1 { "Warden approvals inbox" }
                (notice(message))
                form method="post" action="/inbox/sign-in" {
                    input type="hidden" name="csrf" value=(token);
                    label for="key" { "Approver key" }
                    input #key type="password" name="key" required autocomplete="off"
                        spellcheck="false" placeholder="wdn_…";
                    button type="submit" { "Sign in" }
                }
                p.hint {
                    "The key is checked and then forgotten: this browser keeps only a session, "
                    "which ends when you sign out, after a while unused, or when the key is revoked."
                }
            }
        },
    )
}

/// The inbox: what waits for this approver, and what was decided recently.
pub fn inbox(session: &Session, inbox: &Inbox, message: Option<&Notice>) -> Markup {
    let caller = &session.caller;
    let filter = inbox.filter.query();
    let events = format!(
        "/inbox/events?{}{}since={}",
        filter,
        if filter.is_empty() { "" } else { "&" },
        inbox.version()
    );
    layout(
        "Inbox",
        html! {
            header.top {
                h1 { "Warden inbox" }
                p.who {
                    "Signed in as " strong { (caller.user.as_deref().unwrap_or("-")) }
                    " (" (caller.groups.join(", ")) ") in tenant " strong { (caller.tenant) }
                }
                form.sign-out method="post" action="/inbox/sign-out" {
                    input type="hidden" name="csrf" value=(session.csrf);
                    button type="submit" { "Sign out" }
                }
            }
            main #inbox data-events=(events) data-version=(inbox.version()) {
                (notice(message))
                section #live {
                    h2 #waiting { "Waiting for you (" (inbox.waiting()) ")" }
                    @if inbox.waiting() == 0 {
                        p.empty { "Nothing is waiting. New requests appear here as they arrive." }
                    }
                    @for pending in &inbox.approvals { (approval(session, pending)) }
                    @for question in &inbox.questions { (self::question(session, question)) }
                    @if let Some(proposals) = &inbox.proposals {
                        @for p in proposals { (proposal(session, p)) }
                    }
                    h2 #decided { "Recently decided" }
                    (filters(&inbox.filter))
                    (decided(&inbox.decided))
                }
            }
        },
    )
}

/// How long until `at` (RFC 3339), in words, and its Unix milliseconds for the script.
fn until(at: &str) -> (String, i64) {
    let ms = humantime::parse_rfc3339(at)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    (left(ms - now_ms()), ms)
}

/// A duration in words: `3h 59m`, `4m 10s`, `42s`; `expired` at or below zero.
pub fn left(ms: i64) -> String {
    if ms <= 0 {
        return "expired".to_owned();
    }
    let s = (ms + 999) / 1000;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

fn expiry(at: &str) -> Markup {
    let (words, ms) = until(at);
    html! {
        time datetime=(at) title=(at) data-expires-at=(ms) { (words) }
    }
}

fn or_dash(value: Option<&str>) -> &str {
    value.unwrap_or("-")
}

fn json_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn approval(session: &Session, pending: &Pending) -> Markup {
    let a = &pending.approval;
    let recorded = pending.recorded.as_ref();
    // The audit record's columns: redacted ones hold keyed digests, as in the log.
    let action_type = recorded
        .and_then(|e| e.action_type.as_deref())
        .or(a.action_type.as_deref());
    let agent = recorded
        .and_then(|e| e.agent.as_deref())
        .or(a.agent.as_deref());
    let on_behalf_of = recorded
        .and_then(|e| e.on_behalf_of.as_deref())
        .or(a.on_behalf_of.as_deref());
    let target = recorded.map(|e| {
        format!(
            "{} {}",
            or_dash(e.target_type.as_deref()),
            or_dash(e.target_id.as_deref())
        )
    });
    let confidence = recorded.and_then(|e| match (e.confidence_initial, e.confidence_adjusted) {
        (Some(i), Some(adj)) if i != adj => Some(format!("{i} → {adj} after adjustments")),
        (Some(i), _) => Some(i.to_string()),
        _ => None,
    });
    let kept = recorded
        .and_then(|e| e.kept.as_object())
        .filter(|k| !k.is_empty());
    html! {
        article.item.approval #{"approval-" (a.id)} data-kind="approval" {
            h3 {
                span.kind { "Approval" }
                " " code.action { (or_dash(action_type)) }
                @if let Some(target) = &target { " on " code.target { (target) } }
            }
            dl {
                dt { "Agent" } dd.agent { (or_dash(agent)) }
                dt { "On behalf of" } dd.on-behalf-of { (or_dash(on_behalf_of)) }
                dt { "Rule" } dd.rule { code { (or_dash(a.rule_id.as_deref())) } }
                dt { "Reason" }
                dd.reason {
                    @match recorded.map(|e| &e.reasons).filter(|r| !r.is_empty()) {
                        Some(reasons) => { @for r in reasons { span.line { (r) } } },
                        None => "-",
                    }
                }
                dt { "Confidence" } dd.confidence { (confidence.as_deref().unwrap_or("-")) }
                @if let Some(mode) = recorded.and_then(|e| e.mode.as_deref()) {
                    dt { "Mode" } dd { (mode) }
                }
                @if let Some(kept) = kept {
                    dt { "Kept fields" }
                    dd.kept { @for (path, value) in kept { span.line { code { (path) } " = " (json_text(value)) } } }
                }
                dt { "Approvers" }
                dd {
                    (if a.approvers.is_empty() { "any approver".to_owned() } else { a.approvers.join(", ") })
                    @if a.quorum > 1 { " · " (a.votes.len()) " of " (a.quorum) " approvals so far" }
                }
                @for v in &a.votes {
                    dt { "Vote" } dd { (v.user) " " (v.verdict) @if let Some(r) = &v.reason { ": " (r) } }
                }
                dt { "Policy" } dd { (or_dash(a.policy_version.as_deref())) }
                dt { "Expires in" } dd.expires { (expiry(&a.expires_at)) }
                dt { "Id" } dd { code { (a.id) } }
            }
            form.decide method="post" action={"/inbox/approvals/" (a.id) "/approve"} {
                input type="hidden" name="csrf" value=(session.csrf);
                label { "Reason " input type="text" name="reason" maxlength="1000"
                    placeholder="why (needed to reject)"; }
                button.approve type="submit" { "Approve" }
                button.reject type="submit" formaction={"/inbox/approvals/" (a.id) "/reject"} { "Reject" }
            }
        }
    }
}

fn question(session: &Session, q: &ApprovalView) -> Markup {
    html! {
        article.item.question #{"question-" (q.id)} data-kind="question" {
            h3 { span.kind { "Question" } " from " span.agent { (or_dash(q.agent.as_deref())) } }
            p.question-text { (or_dash(q.question.as_deref())) }
            dl {
                @if let Some(run) = &q.run_id { dt { "Run" } dd { (run) } }
                dt { "Asked" } dd { (q.created_at) }
                dt { "Expires in" } dd.expires { (expiry(&q.expires_at)) }
                dt { "Id" } dd { code { (q.id) } }
            }
            form.answer method="post" action={"/inbox/questions/" (q.id) "/answer"} {
                input type="hidden" name="csrf" value=(session.csrf);
                @if q.options.is_empty() {
                    label { "Answer " input type="text" name="answer" required maxlength="2000"; }
                    button type="submit" { "Answer" }
                } @else {
                    @for option in &q.options {
                        button.option type="submit" name="answer" value=(option) { (option) }
                    }
                }
            }
        }
    }
}

fn effect_and_rules(side: &Value) -> String {
    let rules: Vec<&str> = side["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    format!(
        "{} ({})",
        side["effect"].as_str().unwrap_or("?"),
        if rules.is_empty() {
            "default".to_owned()
        } else {
            rules.join(", ")
        }
    )
}

fn proposal(session: &Session, p: &ProposalView) -> Markup {
    let impact = &p.impact;
    html! {
        article.item.proposal #{"proposal-" (p.id)} data-kind="proposal" {
            h3 {
                span.kind { "Proposal" } " from " span.agent { (p.agent) } " "
                span class={"classification " (p.classification)} { (p.classification) }
            }
            dl {
                dt { "Status" } dd { (p.status) }
                dt { "About" } dd { code { (p.subject) } }
                dt { "Rationale" } dd.rationale { (json_text(&p.proposal["rationale"])) }
                dt { "Risks" }
                dd {
                    @match p.proposal["risks"].as_array().filter(|r| !r.is_empty()) {
                        Some(risks) => { @for r in risks { span.line { (json_text(r)) } } },
                        None => "none given",
                    }
                }
                dt { "Candidate" } dd { (p.candidate_version) }
                dt { "Submitted" } dd { (p.created_at) }
                dt { "Id" } dd { code { (p.id) } }
            }
            @if let Some(security) = &p.security_event {
                p.notice.failed { "Security event: " (security) }
            }
            h4 { "Change" }
            pre.diff { (p.diff.as_ref().map_or("(no diff)", |d| d.text.as_str())) }
            h4 { "Classification: " (p.classification) }
            ul.reasons {
                @for r in &p.reasons { li { (r) } }
                @for c in &p.changes {
                    li {
                        "change " (json_text(&c["index"])) " " code { (json_text(&c["op"])) } ": "
                        (json_text(&c["classification"]))
                        @for r in c["reasons"].as_array().into_iter().flatten() { span.line { (json_text(r)) } }
                    }
                }
            }
            @if !p.counterexamples.is_empty() {
                h4 { "Counterexamples (the candidate is more permissive)" }
                table.counterexamples {
                    thead { tr { th { "action" } th { "live" } th { "candidate" } } }
                    tbody {
                        @for c in &p.counterexamples {
                            tr {
                                td { code { (c["action"].to_string()) } }
                                td { (effect_and_rules(&c["live"])) }
                                td { (effect_and_rules(&c["candidate"])) }
                            }
                        }
                    }
                }
            }
            h4 { "Findings" }
            @if p.findings.is_empty() {
                p { "none" }
            } @else {
                ul.findings {
                    @for f in &p.findings {
                        li {
                            code { (json_text(&f["code"])) }
                            @if let Some(rule) = f["rule"].as_str() { " (" (rule) ")" }
                            ": " (json_text(&f["message"]))
                        }
                    }
                }
            }
            @if let Some(suggestion) = &p.suggestion {
                p { "Suggested instead: " code { (suggestion.to_string()) } }
            }
            h4 { "Impact" }
            p.impact {
                (json_text(&impact["replayed"])) " recent decisions replayed: "
                (json_text(&impact["same"])) " the same, " (json_text(&impact["unknown"])) " unknown"
            }
            @if let Some(flips) = impact["flips"].as_array().filter(|f| !f.is_empty()) {
                ul.flips {
                    @for f in flips {
                        li {
                            (json_text(&f["from"])) " → " (json_text(&f["to"])) ": " (json_text(&f["count"]))
                            @for e in f["examples"].as_array().into_iter().flatten() {
                                span.line {
                                    code { (json_text(&e["decision_id"])) } " "
                                    (json_text(&e["agent"])) " " (json_text(&e["action_type"]))
                                }
                            }
                        }
                    }
                }
            }
            form.decide method="post" action={"/inbox/proposals/" (p.id) "/approve"} {
                input type="hidden" name="csrf" value=(session.csrf);
                input type="hidden" name="review_token" value=(p.review_token);
                label { "Reason " input type="text" name="reason" maxlength="2000"
                    placeholder="why (needed to reject)"; }
                button.approve type="submit" { "Approve this analysis" }
                button.reject type="submit" formaction={"/inbox/proposals/" (p.id) "/reject"} { "Reject" }
            }
        }
    }
}

fn filters(filter: &Filter) -> Markup {
    html! {
        form.filters method="get" action="/" {
            label { "Kind "
                select name="kind" {
                    option value="" selected[filter.kind.is_none()] { "any" }
                    @for k in KINDS { option value=(k) selected[filter.kind.as_deref() == Some(k)] { (k) } }
                }
            }
            label { " Status "
                select name="status" {
                    option value="" selected[filter.status.is_none()] { "any" }
                    @for s in STATUSES { option value=(s) selected[filter.status.as_deref() == Some(s)] { (s) } }
                }
            }
            " " button type="submit" { "Filter" }
        }
    }
}

fn decided(items: &[Decided]) -> Markup {
    html! {
        @if items.is_empty() {
            p.empty { "Nothing decided matches." }
        } @else {
            table.decided {
                thead { tr { th { "kind" } th { "what" } th { "agent" } th { "status" } th { "by" } th { "reason or answer" } th { "decided" } } }
                tbody {
                    @for item in items {
                        @match item {
                            Decided::Approval(a) => {
                                tr.decided-item #{"decided-" (a.id)} data-status=(a.status) {
                                    td { (a.kind) }
                                    td { @if is_question(a) { (or_dash(a.question.as_deref())) } @else { code { (or_dash(a.action_type.as_deref())) } } }
                                    td { (or_dash(a.agent.as_deref())) }
                                    td.status { (a.status) }
                                    td { (a.votes.iter().map(|v| v.user.as_str()).collect::<Vec<_>>().join(", ")) }
                                    td {
                                        @match a.answer.as_deref().or(a.reason.as_deref()) {
                                            Some(text) => (text),
                                            // An approval's reasons are its votes'.
                                            None => {
                                                @for v in &a.votes { @if let Some(r) = &v.reason { span.line { (r) } } }
                                            },
                                        }
                                    }
                                    td.when { (or_dash(a.decided_at.as_deref())) }
                                }
                            },
                            Decided::Proposal(p) => {
                                tr.decided-item #{"decided-" (p.id)} data-status=(p.status) {
                                    td { "proposal" }
                                    td { code { (p.subject) } " (" (p.classification) ")" }
                                    td { (p.agent) }
                                    td.status { (p.status) }
                                    td { (or_dash(p.decided_by.as_deref())) }
                                    td {
                                        @if let Some(reason) = &p.reason { (reason) }
                                        @else if let Some(v) = &p.version { "published as " (v) }
                                        @else if let Some(by) = &p.superseded_by { "superseded by " (by) }
                                        @else { "-" }
                                    }
                                    td.when { (or_dash(p.decided_at.as_deref())) }
                                }
                            },
                        }
                    }
                }
            }
        }
    }
}

/// A page for an answer that is not the inbox (a stream refused, a route gone).
pub fn plain(title: &str, text: &str) -> Markup {
    layout(
        title,
        html! { main.sign-in { h1 { (title) } p { (text) } p { a href="/" { "Back to the inbox" } } } },
    )
}
