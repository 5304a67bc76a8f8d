//! `warden approvals`: list, show, approve and reject approvals (and questions) through a
//! running server, with an approver or admin key from `WARDEN_KEY` (never an argument,
//! which other users can read).

use crate::cmd::server_api::{self, ServerApi};
use crate::{Outcome, time};
use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::io::Write;
use std::time::Duration;
use warden_server::wire::{ApprovalView, ApprovalsBody};

/// Arguments of `warden approvals`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The server, e.g. `https://warden.internal`.
    #[arg(
        long,
        env = "WARDEN_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    server: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Approvals and questions waiting (or, with --status, in that state), newest first.
    #[command(after_help = "Example:\n  WARDEN_KEY=wdn_… warden approvals list --kind question")]
    List {
        /// `pending` (default), `approved`, `rejected`, `expired`, `answered` or `all`.
        #[arg(long, default_value = "pending")]
        status: String,
        /// Only `approval`s or only `question`s.
        #[arg(long)]
        kind: Option<String>,
    },
    /// One approval, with its votes.
    #[command(after_help = "Example:\n  warden approvals show 01JD8Z9R6W3K2Q5N7X4T0M1B8C")]
    Show {
        /// The approval id.
        id: String,
    },
    /// Approve; with a quorum, your vote counts toward it.
    #[command(
        after_help = "Example:\n  WARDEN_KEY=wdn_… warden approvals approve 01JD8Z9R6W3K2Q5N7X4T0M1B8C --reason 'checked with legal'"
    )]
    Approve {
        /// The approval id.
        id: String,
        /// Why (optional).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Reject: the action is denied, with your reason.
    #[command(
        after_help = "Example:\n  warden approvals reject 01JD8Z9R6W3K2Q5N7X4T0M1B8C --reason 'needs the customer's consent'"
    )]
    Reject {
        /// The approval id.
        id: String,
        /// Why (required).
        #[arg(long)]
        reason: String,
    },
}

/// Runs the subcommand against the server.
pub fn run(args: Args, json: bool) -> Result<Outcome> {
    super::block_on(run_async(args, json))
}

async fn run_async(args: Args, json: bool) -> Result<Outcome> {
    let api = ServerApi::new(
        &args.server,
        "warden approvals needs an approver or admin key",
        Duration::from_secs(30),
    )?;
    let mut out = std::io::stdout().lock();
    match args.command {
        Command::List { status, kind } => {
            let mut query = Vec::new();
            if status != "all" {
                query.push(("status", status));
            }
            if let Some(kind) = kind {
                query.push(("kind", kind));
            }
            let body: ApprovalsBody = serde_json::from_value(
                api.send(reqwest::Method::GET, "/v1/approvals", &query, None)
                    .await?,
            )
            .context("the server's answer is not a list of approvals")?;
            if json {
                writeln!(out, "{}", serde_json::to_string(&body.approvals)?)?;
            } else {
                table(&mut out, &body.approvals)?;
            }
        }
        Command::Show { id } => {
            let body = api
                .send(reqwest::Method::GET, &path(&id, ""), &[], None)
                .await?;
            print_one(&mut out, body, json)?;
        }
        Command::Approve { id, reason } => {
            let body = api
                .send(
                    reqwest::Method::POST,
                    &path(&id, "/approve"),
                    &[],
                    Some(json!({"reason": reason})),
                )
                .await?;
            print_one(&mut out, body, json)?;
        }
        Command::Reject { id, reason } => {
            let body = api
                .send(
                    reqwest::Method::POST,
                    &path(&id, "/reject"),
                    &[],
                    Some(json!({"reason": reason})),
                )
                .await?;
            print_one(&mut out, body, json)?;
        }
    }
    Ok(Outcome::Ok)
}

/// `/v1/approvals/<id><rest>`, the id percent-encoded.
fn path(id: &str, rest: &str) -> String {
    format!("/v1/approvals/{}{rest}", server_api::path_segment(id))
}

fn print_one(out: &mut impl Write, body: Value, json: bool) -> Result<()> {
    if json {
        writeln!(out, "{body}")?;
        return Ok(());
    }
    let view: ApprovalView =
        serde_json::from_value(body).context("the server's answer is not an approval")?;
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    writeln!(out, "id          {}", view.id)?;
    writeln!(out, "kind        {}", view.kind)?;
    writeln!(out, "status      {}", view.status)?;
    if let Some(question) = &view.question {
        writeln!(out, "question    {question}")?;
        if !view.options.is_empty() {
            writeln!(out, "options     {}", view.options.join(", "))?;
        }
        writeln!(out, "answer      {}", dash(&view.answer))?;
    } else {
        writeln!(out, "action      {}", dash(&view.action_type))?;
        writeln!(out, "decision    {}", dash(&view.decision_id))?;
        writeln!(out, "rule        {}", dash(&view.rule_id))?;
    }
    writeln!(out, "agent       {}", dash(&view.agent))?;
    writeln!(out, "for         {}", dash(&view.on_behalf_of))?;
    writeln!(out, "approvers   {}", groups(&view.approvers))?;
    writeln!(out, "quorum      {}", view.quorum)?;
    writeln!(out, "created     {}", view.created_at)?;
    writeln!(out, "expires     {}", view.expires_at)?;
    writeln!(out, "decided     {}", dash(&view.decided_at))?;
    writeln!(out, "reason      {}", dash(&view.reason))?;
    for vote in &view.votes {
        writeln!(
            out,
            "vote        {} {} {}{}",
            vote.at,
            vote.user,
            vote.verdict,
            vote.reason
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        )?;
    }
    Ok(())
}

fn groups(g: &[String]) -> String {
    if g.is_empty() {
        "any".to_owned()
    } else {
        g.join(",")
    }
}

fn table(out: &mut impl Write, approvals: &[ApprovalView]) -> Result<()> {
    let mut rows = vec![
        [
            "ID",
            "KIND",
            "STATUS",
            "WHAT",
            "AGENT",
            "APPROVERS",
            "VOTES",
            "EXPIRES",
        ]
        .map(String::from),
    ];
    for a in approvals {
        let what = match (&a.question, &a.action_type) {
            (Some(q), _) => {
                let short: String = q.chars().take(40).collect();
                // One line per approval: a newline in a question would break the table.
                short.replace(['\n', '\t'], " ")
            }
            (None, Some(t)) => t.clone(),
            (None, None) => "-".to_owned(),
        };
        rows.push([
            a.id.clone(),
            a.kind.clone(),
            a.status.clone(),
            what,
            a.agent.clone().unwrap_or_else(|| "-".to_owned()),
            groups(&a.approvers),
            format!("{}/{}", a.votes.len(), a.quorum),
            a.expires_at.clone(),
        ]);
    }
    super::table::write(out, &rows)?;
    if approvals.is_empty() {
        eprintln!("no approvals match (at {})", time::rfc3339(time::now_ms()));
    }
    Ok(())
}
