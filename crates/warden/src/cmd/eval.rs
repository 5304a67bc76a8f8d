//! `warden eval`: one decision, offline.

use crate::{Outcome, files};
use anyhow::{Context, Result, anyhow};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Instant;
use warden_policy::{Action, Env, Policy, Timestamp};
use warden_server::wire::DecisionBody;

/// Arguments of `warden eval`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The policy file.
    #[arg(long)]
    policy: PathBuf,
    /// The action as JSON; `-` reads standard input.
    #[arg(long, default_value = "-")]
    action: String,
    /// The tenant the action is evaluated for.
    #[arg(long, default_value = "default")]
    tenant: String,
    /// Evaluation time in Unix seconds (default: now).
    #[arg(long)]
    now: Option<i64>,
}

/// Prints the decision as JSON. A deny is a result, not a failure: exit 0.
pub fn run(args: Args, _json: bool) -> Result<Outcome> {
    let source = files::read(&args.policy)?;
    let policy = Policy::parse(&source).map_err(|errors| {
        let first = errors
            .iter()
            .next()
            .map(|e| e.to_string())
            .unwrap_or_default();
        anyhow!("{}:{first}", args.policy.display())
    })?;
    let bytes = if args.action == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read the action from standard input")?;
        buf
    } else {
        std::fs::read(&args.action).with_context(|| format!("cannot read `{}`", args.action))?
    };
    let action = Action::from_json(&bytes).context("invalid action")?;
    let now = match args.now {
        Some(n) => n,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
    };
    let now = Timestamp::from_unix_seconds(now)
        .with_context(|| format!("--now {now} is outside the years 1 to 9999"))?;
    let env = Env::new(args.tenant, now);
    let started = Instant::now();
    let decision = policy.evaluate(&action, &env);
    let eval_ns = started.elapsed().as_nanos() as u64;
    if let Some(failure) = &decision.failure {
        // The detail is for the operator; the body only says that evaluation failed.
        eprintln!(
            "evaluation error in rule `{}`: {}",
            failure.rule, failure.detail
        );
    }
    let mut body = DecisionBody::from_decision(&decision, eval_ns);
    // What a policy author is shown of a deny by default, as the server shows the agent;
    // `next_steps` are requests to a server, so there are none offline.
    body.rule_missing = policy
        .rule_missing(&action, &decision)
        .map(serde_json::to_value)
        .transpose()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string_pretty(&body)?)?;
    Ok(Outcome::Ok)
}
