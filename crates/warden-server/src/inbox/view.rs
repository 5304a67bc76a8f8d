//! What an inbox page shows, gathered through the same functions the API's routes use, so
//! an approver sees exactly what `GET /v1/approvals` and `GET /v1/proposals/{id}` would show
//! their key — and, of each approval's action, only its decision's audit record (which
//! holds payload and context as digests, `audit.keep` fields and `audit.redact` masks).

use crate::auth::Caller;
use crate::error::ApiError;
use crate::proposals::{self, ProposalView};
use crate::routes;
use crate::state::AppState;
use crate::wire::ApprovalView;
use axum::extract::State;
use axum::http::Uri;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use warden_store::{NewEvent, ProposalFilter, approval_kind, proposal_status, status};

/// The most pending items of each kind a page shows.
const MAX_SHOWN: usize = 100;
/// Recently decided items shown.
const MAX_RECENT: usize = 50;

/// Which recently decided items to show: `?kind=` and `?status=` of `GET /`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// `approval`, `question` or `proposal`.
    pub kind: Option<String>,
    /// A decided status of approvals (`approved`, `rejected`, `expired`, `answered`) or
    /// proposals (`approved`, `rejected`, `auto_approved`, `superseded`).
    pub status: Option<String>,
}

/// The kinds the filter offers.
pub const KINDS: [&str; 3] = ["approval", "question", "proposal"];
/// The decided statuses the filter offers.
pub const STATUSES: [&str; 6] = [
    status::APPROVED,
    status::REJECTED,
    status::EXPIRED,
    status::ANSWERED,
    proposal_status::AUTO_APPROVED,
    proposal_status::SUPERSEDED,
];

impl Filter {
    /// The filter of a query string, and the value of its one other parameter `extra`
    /// (`notice` on pages, `since` on the event stream); unknown parameters or values are
    /// 400 `invalid_query`.
    pub fn parse(query: Option<&str>, extra: &str) -> Result<(Self, Option<String>), ApiError> {
        let mut filter = Self::default();
        let mut other = None;
        for (name, value) in routes::query_pairs(query, &["kind", "status", extra])? {
            match name.as_str() {
                // An empty choice is "any", as the filter form sends it.
                _ if value.is_empty() => {}
                "kind" if KINDS.contains(&value.as_str()) => filter.kind = Some(value),
                "status" if STATUSES.contains(&value.as_str()) => filter.status = Some(value),
                n if n == extra => other = Some(value),
                _ => {
                    return Err(ApiError::bad_request(
                        "invalid_query",
                        format!("`{name}` cannot be `{value}`"),
                    ));
                }
            }
        }
        Ok((filter, other))
    }

    /// The query string that selects this filter (empty for none), `&`-joined.
    pub fn query(&self) -> String {
        let mut parts = Vec::new();
        if let Some(kind) = &self.kind {
            parts.push(format!("kind={kind}"));
        }
        if let Some(status) = &self.status {
            parts.push(format!("status={status}"));
        }
        parts.join("&")
    }
}

/// A pending approval with its decision's audit record (absent once purged).
#[derive(Debug)]
pub struct Pending {
    /// The approval as the API shows it.
    pub approval: ApprovalView,
    /// The `decision` event that opened it: the action as recorded, redactions applied.
    pub recorded: Option<NewEvent>,
}

/// One recently decided item.
#[derive(Debug)]
pub enum Decided {
    /// An approval or a question.
    Approval(Box<ApprovalView>),
    /// A proposal.
    Proposal(Box<ProposalView>),
}

impl Decided {
    fn at(&self) -> &str {
        match self {
            Self::Approval(a) => a.decided_at.as_deref().unwrap_or(&a.created_at),
            Self::Proposal(p) => p.decided_at.as_deref().unwrap_or(&p.created_at),
        }
    }
}

/// Everything one inbox page shows.
#[derive(Debug)]
pub struct Inbox {
    /// Pending approvals the key may decide, newest first.
    pub approvals: Vec<Pending>,
    /// Pending questions the key may answer, newest first.
    pub questions: Vec<ApprovalView>,
    /// Proposals waiting for a human, with their analysis; `None` when the tenant's policy
    /// has proposals off.
    pub proposals: Option<Vec<ProposalView>>,
    /// Recently decided items matching the filter, most recently decided first.
    pub decided: Vec<Decided>,
    /// The filter applied to `decided`.
    pub filter: Filter,
}

/// At most `limit` approvals the key lists with these query parameters, through the API's
/// own route.
async fn listed(
    state: &AppState,
    caller: &Caller,
    query: &str,
    limit: usize,
) -> Result<Vec<ApprovalView>, ApiError> {
    let uri: Uri = format!("/v1/approvals?{query}&limit={limit}")
        .parse()
        .map_err(|_| ApiError::internal())?;
    let axum::Json(body) =
        routes::approvals::list(State(state.clone()), caller.clone(), uri).await?;
    Ok(body.approvals)
}

/// The tenant's proposals of `status`, newest first, as an approver sees them (all of the
/// tenant's, with their whole analysis).
async fn proposals_of(
    state: &AppState,
    caller: &Caller,
    status: Option<&str>,
    limit: usize,
) -> Result<Vec<ProposalView>, ApiError> {
    let records = state
        .store()
        .proposals(&ProposalFilter {
            tenant: caller.tenant.clone(),
            status: status.map(str::to_owned),
            limit: u32::try_from(limit).unwrap_or(u32::MAX),
            ..ProposalFilter::default()
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "proposals could not be read");
            ApiError::store_unavailable()
        })?;
    Ok(records.iter().map(|r| ProposalView::of(r, true)).collect())
}

impl Inbox {
    /// Gathers the page of `caller` (an approver key) with `filter`.
    pub async fn gather(
        state: &AppState,
        caller: &Caller,
        filter: Filter,
    ) -> Result<Self, ApiError> {
        let approvals = listed(state, caller, "status=pending&kind=approval", MAX_SHOWN).await?;
        let questions = listed(state, caller, "status=pending&kind=question", MAX_SHOWN).await?;
        // The decision events of the approvals, in one read.
        let ids: Vec<String> = approvals
            .iter()
            .filter_map(|a| a.decision_id.clone())
            .collect();
        let mut recorded: HashMap<String, NewEvent> = state
            .store()
            .decision_events(&caller.tenant, &ids)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "decision events could not be read");
                ApiError::store_unavailable()
            })?
            .into_iter()
            .filter_map(|e| e.event.decision_id.clone().map(|id| (id, e.event)))
            .collect();
        let approvals = approvals
            .into_iter()
            .map(|approval| Pending {
                recorded: approval
                    .decision_id
                    .as_ref()
                    .and_then(|id| recorded.remove(id)),
                approval,
            })
            .collect();

        let enabled = proposals::live_for_proposals(state, &caller.tenant).is_ok();
        let proposals = if enabled {
            let mut waiting = Vec::new();
            for status in proposal_status::PENDING {
                waiting.extend(proposals_of(state, caller, Some(status), MAX_SHOWN).await?);
            }
            waiting.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
            Some(waiting)
        } else {
            None
        };

        // Each decided status is read on its own, so pending items never crowd them out.
        let mut decided = Vec::new();
        let kind = filter.kind.as_deref();
        let wanted = |s: &str| filter.status.as_deref().is_none_or(|f| f == s);
        if kind != Some("proposal") {
            let kind = kind.map_or(String::new(), |k| format!("&kind={k}"));
            for s in [
                status::APPROVED,
                status::REJECTED,
                status::EXPIRED,
                status::ANSWERED,
            ] {
                if wanted(s) {
                    let query = format!("status={s}{kind}");
                    decided.extend(
                        listed(state, caller, &query, MAX_RECENT)
                            .await?
                            .into_iter()
                            .map(|a| Decided::Approval(Box::new(a))),
                    );
                }
            }
        }
        if enabled && matches!(kind, None | Some("proposal")) {
            for s in [
                proposal_status::APPROVED,
                proposal_status::REJECTED,
                proposal_status::AUTO_APPROVED,
                proposal_status::SUPERSEDED,
            ] {
                if wanted(s) {
                    decided.extend(
                        proposals_of(state, caller, Some(s), MAX_RECENT)
                            .await?
                            .into_iter()
                            .map(|p| Decided::Proposal(Box::new(p))),
                    );
                }
            }
        }
        // RFC 3339 in UTC with milliseconds: the text sorts as the time does.
        decided.sort_by(|a, b| b.at().cmp(a.at()));
        decided.truncate(MAX_RECENT);
        Ok(Self {
            approvals,
            questions,
            proposals,
            decided,
            filter,
        })
    }

    /// A digest of what the page shows that can change by itself: two gathers with the same
    /// version show the same items in the same states. The event stream compares it.
    pub fn version(&self) -> String {
        let mut hash = Sha256::new();
        for p in &self.approvals {
            hash.update(format!(
                "a {} {} {};",
                p.approval.id,
                p.approval.status,
                p.approval.votes.len()
            ));
        }
        for q in &self.questions {
            hash.update(format!("q {} {};", q.id, q.status));
        }
        for p in self.proposals.iter().flatten() {
            hash.update(format!("p {} {} {};", p.id, p.status, p.review_token));
        }
        for d in &self.decided {
            match d {
                Decided::Approval(a) => hash.update(format!("d {} {};", a.id, a.status)),
                Decided::Proposal(p) => hash.update(format!("d {} {};", p.id, p.status)),
            }
        }
        hex::encode(&hash.finalize()[..12])
    }

    /// How many items wait for a human.
    pub fn waiting(&self) -> usize {
        self.approvals.len() + self.questions.len() + self.proposals.as_ref().map_or(0, Vec::len)
    }
}

/// Whether an approval view is a question.
pub fn is_question(a: &ApprovalView) -> bool {
    a.kind == approval_kind::QUESTION
}
