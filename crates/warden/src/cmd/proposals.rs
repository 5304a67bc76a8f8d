//! `warden proposals`: list, show, approve and reject agents' proposed policy changes through
//! a running server, with an approver or admin key from `WARDEN_KEY`. `show` prints what an
//! approver must see before approving: the semantic diff, the classification and why, each
//! counterexample as an action with both policies' answers, the findings and the replay.

use crate::Outcome;
use crate::cmd::server_api::{self, ServerApi};
use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::io::Write;
use std::time::Duration;
use warden_server::proposals::ProposalView;
use warden_server::routes::proposals::ProposalsBody;

/// Arguments of `warden proposals`.
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
    /// Proposals, newest first (by default those waiting for a human).
    #[command(after_help = "Example:\n  WARDEN_KEY=wdn_… warden proposals list --status all")]
    List {
        /// `needs_human` (default), `revise_requested`, `auto_approved`, `approved`,
        /// `rejected`, `superseded` or `all`.
        #[arg(long, default_value = "needs_human")]
        status: String,
        /// Only `agent` proposals or `observed` ones (Warden's suggestions from friction).
        #[arg(long, value_parser = ["agent", "observed"])]
        source: Option<String>,
    },
    /// One proposal: the change as a semantic diff, its classification and why, the
    /// counterexamples, findings and impact.
    #[command(after_help = "Example:\n  warden proposals show 01JD8Z9R6W3K2Q5N7X4T0M1B8C")]
    Show {
        /// The proposal id.
        id: String,
    },
    /// Approve exactly the analysis the server shows now (its review token is fetched and
    /// presented); the change is published as a new version.
    #[command(after_help = "Example:\n  warden proposals approve 01JD8Z9R6W3K2Q5N7X4T0M1B8C")]
    Approve {
        /// The proposal id.
        id: String,
    },
    /// Reject, with a reason the agent reads.
    #[command(
        after_help = "Example:\n  warden proposals reject 01JD8Z9R6W3K2Q5N7X4T0M1B8C --reason 'too broad: name the account'"
    )]
    Reject {
        /// The proposal id.
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
        "warden proposals needs an approver or admin key",
        Duration::from_secs(30),
    )?;
    let mut out = std::io::stdout().lock();
    match args.command {
        Command::List { status, source } => {
            let mut query = Vec::new();
            if status != "all" {
                query.push(("status", status));
            }
            if let Some(source) = source {
                query.push(("source", source));
            }
            let body: ProposalsBody = serde_json::from_value(
                api.send(reqwest::Method::GET, "/v1/proposals", &query, None)
                    .await?,
            )
            .context("the server's answer is not a list of proposals")?;
            if json {
                writeln!(out, "{}", serde_json::to_string(&body.proposals)?)?;
            } else {
                let mut rows = vec![
                    [
                        "ID", "STATUS", "SOURCE", "CLASS", "AGENT", "SUBJECT", "FINDINGS",
                        "CREATED",
                    ]
                    .map(String::from),
                ];
                for p in &body.proposals {
                    rows.push([
                        p.id.clone(),
                        p.status.clone(),
                        match p.hits {
                            Some(hits) => format!("{} ({hits} hits)", p.source),
                            None => p.source.clone(),
                        },
                        p.classification.clone(),
                        clean(&p.agent),
                        clean(&p.subject),
                        p.findings.to_string(),
                        p.created_at.clone(),
                    ]);
                }
                super::table::write(&mut out, &rows)?;
                if body.proposals.is_empty() {
                    eprintln!("no proposals match");
                }
            }
        }
        Command::Show { id } => {
            let body = api
                .send(reqwest::Method::GET, &path(&id, ""), &[], None)
                .await?;
            print_one(&mut out, body, json)?;
        }
        Command::Approve { id } => {
            let shown = api
                .send::<Value>(reqwest::Method::GET, &path(&id, ""), &[], None)
                .await?;
            let token = shown["review_token"]
                .as_str()
                .context("the server's answer has no review token")?
                .to_owned();
            let body = api
                .send(
                    reqwest::Method::POST,
                    &path(&id, "/approve"),
                    &[],
                    Some(json!({"review_token": token})),
                )
                .await
                .context(
                    "not approved (if the policy changed, `show` it again: it was re-analyzed)",
                )?;
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

/// `/v1/proposals/<id><rest>`, the id percent-encoded.
fn path(id: &str, rest: &str) -> String {
    format!("/v1/proposals/{}{rest}", server_api::path_segment(id))
}

/// Text an agent wrote, safe for a terminal: control and invisible characters (an escape
/// sequence could rewrite the screen) are shown escaped.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c == '\n' || warden_policy::action::printable(c) {
                c.to_string()
            } else {
                c.escape_unicode().to_string()
            }
        })
        .collect()
}

/// A JSON value on one line, cleaned.
fn compact(value: &Value) -> String {
    clean(&value.to_string())
}

fn print_one(out: &mut impl Write, body: Value, json: bool) -> Result<()> {
    if json {
        writeln!(out, "{body}")?;
        return Ok(());
    }
    let p: ProposalView =
        serde_json::from_value(body).context("the server's answer is not a proposal")?;
    let dash = |v: &Option<String>| v.as_deref().map_or_else(|| "-".to_owned(), clean);
    writeln!(out, "id              {}", p.id)?;
    writeln!(out, "status          {}", p.status)?;
    writeln!(out, "agent           {}", clean(&p.agent))?;
    match p.hits {
        Some(hits) => writeln!(out, "source          {} ({hits} hits)", p.source)?,
        None => writeln!(out, "source          {}", p.source)?,
    }
    writeln!(out, "subject         {}", clean(&p.subject))?;
    writeln!(out, "created         {}", p.created_at)?;
    match &p.decided_at {
        Some(at) => writeln!(out, "decided         {at} by {}", dash(&p.decided_by))?,
        None => writeln!(out, "decided         -")?,
    }
    if let Some(reason) = &p.reason {
        writeln!(out, "reason          {}", clean(reason))?;
    }
    if let Some(by) = &p.superseded_by {
        writeln!(out, "superseded by   {by}")?;
    }
    if let Some(version) = &p.version {
        writeln!(
            out,
            "applied as      {version} (revision {})",
            p.revision.unwrap_or(0)
        )?;
    }
    writeln!(out, "candidate       {}", p.candidate_version)?;
    writeln!(out, "review token    {}", p.review_token)?;
    writeln!(
        out,
        "rationale       {}",
        clean(p.proposal["rationale"].as_str().unwrap_or("-"))
    )?;
    if let Some(risks) = p.proposal["risks"].as_array() {
        for risk in risks {
            writeln!(
                out,
                "risk            {}",
                clean(risk.as_str().unwrap_or_default())
            )?;
        }
    }
    if let Some(security) = &p.security_event {
        writeln!(out, "SECURITY EVENT  {}", clean(security))?;
    }

    writeln!(out, "\nchange")?;
    match &p.diff {
        Some(diff) => {
            for line in diff.text.lines() {
                writeln!(out, "  {}", clean(line))?;
            }
        }
        None => writeln!(out, "  (no diff)")?,
    }

    writeln!(out, "\nclassification  {}", p.classification)?;
    for reason in &p.reasons {
        writeln!(out, "  - {}", clean(reason))?;
    }
    for change in &p.changes {
        writeln!(
            out,
            "  change {} {}: {}",
            change["index"],
            change["op"].as_str().unwrap_or("?"),
            change["classification"].as_str().unwrap_or("?")
        )?;
        for reason in change["reasons"].as_array().into_iter().flatten() {
            writeln!(out, "      {}", clean(reason.as_str().unwrap_or_default()))?;
        }
    }

    if !p.counterexamples.is_empty() {
        writeln!(out, "\ncounterexamples (the candidate is more permissive)")?;
        for (i, c) in p.counterexamples.iter().enumerate() {
            writeln!(out, "  {}. action     {}", i + 1, compact(&c["action"]))?;
            for side in ["live", "candidate"] {
                let rules: Vec<String> = c[side]["rules"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r.as_str().map(clean))
                    .collect();
                writeln!(
                    out,
                    "     {side:<10} {} ({})",
                    c[side]["effect"].as_str().unwrap_or("?"),
                    if rules.is_empty() {
                        "default".to_owned()
                    } else {
                        rules.join(", ")
                    }
                )?;
            }
        }
    }

    writeln!(out, "\nfindings")?;
    if p.findings.is_empty() {
        writeln!(out, "  none")?;
    }
    for f in &p.findings {
        writeln!(
            out,
            "  {}{}: {}",
            f["code"].as_str().unwrap_or("?"),
            f["rule"]
                .as_str()
                .map(|r| format!(" ({})", clean(r)))
                .unwrap_or_default(),
            clean(f["message"].as_str().unwrap_or_default())
        )?;
    }
    if let Some(suggestion) = &p.suggestion {
        writeln!(out, "  suggested instead: {}", compact(suggestion))?;
    }

    let impact = &p.impact;
    writeln!(
        out,
        "\nimpact          {} recent decisions replayed: {} the same, {} unknown",
        impact["replayed"], impact["same"], impact["unknown"]
    )?;
    for flip in impact["flips"].as_array().into_iter().flatten() {
        let examples: Vec<String> = flip["examples"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                format!(
                    "{} {} {}",
                    e["decision_id"].as_str().unwrap_or("?"),
                    clean(e["agent"].as_str().unwrap_or("-")),
                    clean(e["action_type"].as_str().unwrap_or("?"))
                )
            })
            .collect();
        writeln!(
            out,
            "  {}→{}: {}{}",
            flip["from"].as_str().unwrap_or("?"),
            flip["to"].as_str().unwrap_or("?"),
            flip["count"],
            if examples.is_empty() {
                String::new()
            } else {
                format!(" (e.g. {})", examples.join("; "))
            }
        )?;
    }
    Ok(())
}
