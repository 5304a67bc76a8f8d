//! The optional external reviewer of proposals (an LLM reviewer, a team's own service): a
//! tenant's webhook that reads a proposal and Warden's analysis and answers `approve`,
//! `reject`, `revise` or `needs_human` with a reason.
//!
//! Key decisions:
//!
//! - **It can only make the outcome stricter.** Its verdict is an outcome too, and the
//!   stricter of the two stands (auto-approved < needs a human < revise < rejected): an
//!   `approve` never applies what Warden sends to a human.
//! - **A reviewer that fails changes nothing.** Unreachable, slow past its timeout, a non-2xx
//!   answer, a body that is not the verdict: Warden's own outcome stands. Either way the
//!   submission's audit event records what the reviewer said or why it said nothing.
//! - **The operator configures it**, per tenant (`--proposal-reviewer TENANT=URL`), never a
//!   policy or a proposal; requests are signed like approval webhooks.

use crate::approvals::{SIGNATURE_HEADER, Webhooks};
use crate::state::now_ms;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use warden_store::proposal_status;

/// The most bytes of a reviewer's answer read.
const MAX_ANSWER: usize = 16 * 1024;
/// The most characters of a reviewer's reason kept.
const MAX_REASON: usize = 500;

/// The tenants' external reviewers.
#[derive(Clone, Default)]
pub struct Reviewers {
    urls: HashMap<String, String>,
    secret: Option<Arc<Vec<u8>>>,
    timeout: Duration,
    client: Option<reqwest::Client>,
}

impl std::fmt::Debug for Reviewers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reviewers")
            .field("tenants", &self.urls.keys().collect::<Vec<_>>())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What a reviewer said of one proposal, as stored with it and audited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalReview {
    /// Its verdict, when it gave one.
    pub verdict: Option<Verdict>,
    /// Its reason, or why it gave no verdict.
    pub reason: String,
}

/// A reviewer's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to add.
    Approve,
    /// A human must decide.
    NeedsHuman,
    /// The agent must revise it.
    Revise,
    /// Refused.
    Reject,
}

impl Verdict {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "approve" => Self::Approve,
            "needs_human" => Self::NeedsHuman,
            "revise" => Self::Revise,
            "reject" => Self::Reject,
            _ => return None,
        })
    }

    /// Its name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::NeedsHuman => "needs_human",
            Self::Revise => "revise",
            Self::Reject => "reject",
        }
    }
}

/// How strict an outcome is.
fn strictness(status: &str) -> u8 {
    match status {
        proposal_status::AUTO_APPROVED => 0,
        proposal_status::NEEDS_HUMAN => 1,
        proposal_status::REVISE_REQUESTED => 2,
        _ => 3,
    }
}

impl ExternalReview {
    /// The outcome when Warden's own is `status`: the stricter of the two.
    pub fn outcome(&self, status: &'static str) -> &'static str {
        let theirs = match self.verdict {
            None | Some(Verdict::Approve) => return status,
            Some(Verdict::NeedsHuman) => proposal_status::NEEDS_HUMAN,
            Some(Verdict::Revise) => proposal_status::REVISE_REQUESTED,
            Some(Verdict::Reject) => proposal_status::REJECTED,
        };
        if strictness(theirs) > strictness(status) {
            theirs
        } else {
            status
        }
    }

    /// As stored with the proposal and in its audit event.
    pub fn to_json(&self) -> Value {
        json!({
            "verdict": self.verdict.map(Verdict::as_str),
            "reason": self.reason,
        })
    }
}

impl Reviewers {
    /// Reviewers from `TENANT=URL` pairs, requests signed with `secret`, each answer awaited
    /// at most `timeout`.
    pub fn new(
        urls: HashMap<String, String>,
        secret: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let client = if urls.is_empty() {
            None
        } else {
            Some(
                reqwest::Client::builder()
                    .timeout(timeout)
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| format!("cannot build the reviewer client: {e}"))?,
            )
        };
        Ok(Self {
            urls,
            secret: secret.map(Arc::new),
            timeout,
            client,
        })
    }

    /// Whether `tenant` has a reviewer.
    pub fn configured(&self, tenant: &str) -> bool {
        self.urls.contains_key(tenant)
    }

    /// Asks `tenant`'s reviewer about a proposal; `None` when it has none.
    pub async fn ask(
        &self,
        tenant: &str,
        proposal_id: &str,
        agent: &str,
        proposal: &Value,
        analysis: &Value,
        status: &str,
    ) -> Option<ExternalReview> {
        let url = self.urls.get(tenant)?;
        let client = self.client.as_ref()?;
        let body = json!({
            "type": "proposal.review",
            "tenant": tenant,
            "proposal_id": proposal_id,
            "agent": agent,
            "proposal": proposal,
            "analysis": analysis,
            "status": status,
        })
        .to_string();
        let mut request = client
            .post(url)
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(secret) = &self.secret {
            request = request.header(
                SIGNATURE_HEADER,
                Webhooks::sign(secret, now_ms() / 1000, &body),
            );
        }
        let failed = |why: String| {
            tracing::warn!(tenant, proposal = proposal_id, %why, "the external reviewer gave no verdict");
            Some(ExternalReview {
                verdict: None,
                reason: why,
            })
        };
        let answer = match request.send().await {
            Ok(answer) => answer,
            Err(e) if e.is_timeout() => {
                return failed(format!(
                    "the reviewer did not answer within {}",
                    humantime::format_duration(self.timeout)
                ));
            }
            Err(e) => return failed(format!("cannot reach the reviewer: {}", e.without_url())),
        };
        if !answer.status().is_success() {
            return failed(format!(
                "the reviewer answered {}",
                answer.status().as_u16()
            ));
        }
        let bytes = match read_at_most(answer, MAX_ANSWER).await {
            Ok(bytes) => bytes,
            Err(why) => return failed(why),
        };
        match verdict_of(&bytes) {
            Ok(review) => Some(review),
            Err(why) => failed(why),
        }
    }
}

async fn read_at_most(mut answer: reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    loop {
        match answer.chunk().await {
            Ok(Some(chunk)) => {
                if bytes.len() + chunk.len() > max {
                    return Err(format!("the reviewer's answer is over {max} bytes"));
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(bytes),
            Err(e) if e.is_timeout() => return Err("the reviewer's answer timed out".into()),
            Err(e) => {
                return Err(format!(
                    "cannot read the reviewer's answer: {}",
                    e.without_url()
                ));
            }
        }
    }
}

/// Reads `{"verdict": …, "reason": …}`: strict JSON, a known verdict, a printable reason.
fn verdict_of(bytes: &[u8]) -> Result<ExternalReview, String> {
    let value = warden_policy::json::parse_strict(bytes)
        .map_err(|e| format!("the reviewer's answer is not a verdict: {e}"))?;
    let verdict = value["verdict"].as_str().and_then(Verdict::parse).ok_or(
        "the reviewer's answer has no `verdict` of approve, reject, revise or needs_human",
    )?;
    let reason: String = value["reason"]
        .as_str()
        .unwrap_or_default()
        .chars()
        .filter(|&c| warden_policy::action::printable(c))
        .take(MAX_REASON)
        .collect();
    Ok(ExternalReview {
        verdict: Some(verdict),
        reason,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_verdict_only_makes_the_outcome_stricter() {
        let with = |verdict| ExternalReview {
            verdict,
            reason: String::new(),
        };
        use proposal_status::{AUTO_APPROVED, NEEDS_HUMAN, REJECTED, REVISE_REQUESTED};
        assert_eq!(
            with(Some(Verdict::Approve)).outcome(NEEDS_HUMAN),
            NEEDS_HUMAN
        );
        assert_eq!(with(None).outcome(AUTO_APPROVED), AUTO_APPROVED);
        assert_eq!(
            with(Some(Verdict::NeedsHuman)).outcome(AUTO_APPROVED),
            NEEDS_HUMAN
        );
        assert_eq!(
            with(Some(Verdict::Revise)).outcome(NEEDS_HUMAN),
            REVISE_REQUESTED
        );
        assert_eq!(with(Some(Verdict::NeedsHuman)).outcome(REJECTED), REJECTED);
        assert_eq!(with(Some(Verdict::Reject)).outcome(AUTO_APPROVED), REJECTED);
    }

    #[test]
    fn an_answer_must_be_a_known_verdict_in_strict_json() {
        let review =
            verdict_of(br#"{"verdict": "reject", "reason": "too wide\u001b[2J"}"#).unwrap();
        assert_eq!(review.verdict, Some(Verdict::Reject));
        assert_eq!(review.reason, "too wide[2J", "control characters dropped");
        for bad in [
            &br#"{"verdict": "allow"}"#[..],
            br#"{"verdict": "approve", "verdict": "reject"}"#,
            b"approve",
            br#"{"reason": "x"}"#,
        ] {
            assert!(verdict_of(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
