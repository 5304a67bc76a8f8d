//! `warden policy`: publish, list, show, diff and roll back a tenant's policy versions
//! through a running server, with an admin key (its own tenant) or an operator key (any
//! tenant, `--tenant`) from `WARDEN_KEY`. The server compiles, checks and stores; this
//! command only carries documents there and prints what it answers.

use crate::cmd::server_api::{self, ServerApi};
use crate::{Outcome, files};
use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
// The server's own bodies, read back.
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;
use warden_server::routes::lifecycle::{
    DiffBody as DiffView, PolicyVersionBody as VersionView, PublishedBody as PublishedView,
    VersionsBody as VersionsView,
};

/// Arguments of `warden policy`.
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
    /// Operator keys only: whose policy (default `default`); an admin key acts on its own
    /// tenant.
    #[arg(long, global = true)]
    tenant: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Publish a policy document as the next version; refused with every line:col problem
    /// if it does not compile, and if its version is not greater than the active one's.
    #[command(
        after_help = "Examples:\n  WARDEN_KEY=wdn_… warden policy publish acme.yaml --comment 'refunds need approval'\n  generate-policy | warden policy publish -"
    )]
    Publish {
        /// The document, YAML or JSON (`.json`); `-` reads standard input.
        file: String,
        /// Why, recorded with the version.
        #[arg(long)]
        comment: Option<String>,
    },
    /// The versions, newest first: revision, version, status, when, who and why.
    #[command(after_help = "Example:\n  warden policy versions --tenant acme --limit 10")]
    Versions {
        /// At most this many (at most 500).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only revisions below this one, for the next page.
        #[arg(long)]
        before: Option<i64>,
    },
    /// One version's document as stored, after a header line; the active one without V.
    #[command(after_help = "Examples:\n  warden policy show 3\n  warden policy show 1.2.0")]
    Show {
        /// A revision number (`3`) or a semver (`1.2.0`, its newest revision).
        version: Option<String>,
    },
    /// What changed from V1 to V2 (default: the active version): settings, and rules
    /// added, removed, changed and reordered.
    #[command(after_help = "Examples:\n  warden policy diff 3\n  warden policy diff 1.2.0 1.3.0")]
    Diff {
        /// The older version: a revision number or a semver.
        from: String,
        /// The newer version (default: the active one).
        to: Option<String>,
    },
    /// Publish an earlier version's document again, as the next revision.
    #[command(
        after_help = "Example:\n  WARDEN_KEY=wdn_… warden policy rollback 3 --comment 'the 1.3.0 refund rule blocked everyone'"
    )]
    Rollback {
        /// The version to restore: a revision number or a semver.
        version: String,
        /// Why (default: `rollback to revision N`).
        #[arg(long)]
        comment: Option<String>,
    },
    /// What a candidate document would change, replayed over the tenant's recent
    /// decisions (their kept snapshots, read from the database with the server's key):
    /// effects that flip, by kind, with examples; decisions it cannot judge, by field.
    #[command(
        after_help = "Example:\n  warden policy replay candidate.yaml --since 24h --tenant acme --db ./warden.db --data-dir ."
    )]
    Replay(super::replay::ReplayArgs),
}

/// Runs the subcommand: against the server, or (`replay`) over the database.
pub fn run(args: Args, json: bool) -> Result<Outcome> {
    if let Command::Replay(replay) = args.command {
        return super::replay::run(replay, args.tenant, json);
    }
    super::block_on(run_async(args, json))
}

async fn run_async(args: Args, json: bool) -> Result<Outcome> {
    let api = ServerApi::new(
        &args.server,
        "warden policy needs an admin or operator key",
        Duration::from_secs(30),
    )?;
    let mut query: Vec<(&str, String)> = Vec::new();
    if let Some(tenant) = args.tenant {
        query.push(("tenant", tenant));
    }
    let mut out = std::io::stdout().lock();
    match args.command {
        Command::Publish { file, comment } => {
            // Read in full before anything is sent: a file that cannot be read is an
            // error here, never an empty publish.
            let (document, content_type) = read_document(&file)?;
            if let Some(comment) = comment {
                query.push(("comment", comment));
            }
            let body = api
                .post_document("/v1/policy", &query, content_type, document)
                .await?;
            print(
                &mut out,
                body,
                json,
                "a published version",
                |out, done: PublishedView| {
                    let p = &done.policy;
                    if done.changed {
                        writeln!(
                            out,
                            "published {} revision {} (version {}, sha256 {}…)",
                            p.tenant,
                            p.revision,
                            p.version,
                            short_hash(&p.hash)
                        )?;
                    } else {
                        writeln!(
                            out,
                            "unchanged: {} revision {} is already this document",
                            p.tenant, p.revision
                        )?;
                    }
                    Ok(())
                },
            )?;
        }
        Command::Versions { limit, before } => {
            query.push(("limit", limit.to_string()));
            if let Some(before) = before {
                query.push(("before", before.to_string()));
            }
            let body = api.get("/v1/policy/versions", &query).await?;
            print(
                &mut out,
                body,
                json,
                "a list of policy versions",
                |out, page: VersionsView| table(out, &page),
            )?;
        }
        Command::Show { version } => {
            let path = match &version {
                Some(version) => version_path(version),
                None => "/v1/policy".to_owned(),
            };
            let body = api.get(&path, &query).await?;
            print(
                &mut out,
                body,
                json,
                "a policy version",
                |out, v: VersionView| {
                    writeln!(
                        out,
                        "# {} revision {} (version {}, {}), published {} by {}{}",
                        v.tenant,
                        v.revision,
                        v.version,
                        v.status,
                        v.created_at,
                        v.author,
                        v.comment
                            .as_ref()
                            .map(|c| format!(": {}", one_line(c)))
                            .unwrap_or_default()
                    )?;
                    let source = v.source.unwrap_or_default();
                    write!(out, "{source}")?;
                    if !source.ends_with('\n') {
                        writeln!(out)?;
                    }
                    Ok(())
                },
            )?;
        }
        Command::Diff { from, to } => {
            query.push(("from", from));
            if let Some(to) = to {
                query.push(("to", to));
            }
            let body = api.get("/v1/policy/diff", &query).await?;
            print(
                &mut out,
                body,
                json,
                "a policy diff",
                |out, diff: DiffView| {
                    writeln!(out, "{}", diff.text.trim_end())?;
                    Ok(())
                },
            )?;
        }
        // `run` sends it over the database before any server is asked.
        Command::Replay(_) => anyhow::bail!("a replay reads the database, not the server"),
        Command::Rollback { version, comment } => {
            // Resolved to its revision first, so that exactly the document named here is
            // restored and the message can say which revision it was.
            let target: VersionView = decode(
                api.get(&version_path(&version), &query).await?,
                "a policy version",
            )?;
            let body = api
                .send(
                    reqwest::Method::POST,
                    "/v1/policy/rollback",
                    &query,
                    Some(json!({"version": target.revision.to_string(), "comment": comment})),
                )
                .await?;
            print(
                &mut out,
                body,
                json,
                "a published version",
                |out, done: PublishedView| {
                    let p = &done.policy;
                    if done.changed {
                        writeln!(
                            out,
                            "rolled back {} to revision {}'s document as revision {}",
                            p.tenant, target.revision, p.revision
                        )?;
                    } else {
                        writeln!(
                            out,
                            "unchanged: {} revision {} is already revision {}'s document",
                            p.tenant, p.revision, target.revision
                        )?;
                    }
                    Ok(())
                },
            )?;
        }
    }
    Ok(Outcome::Ok)
}

/// The document to publish and its media type: JSON for a `.json` file, YAML otherwise
/// (YAML reads JSON too, so standard input is sent as YAML).
fn read_document(file: &str) -> Result<(String, &'static str)> {
    if file == "-" {
        let mut document = String::new();
        std::io::stdin()
            .read_to_string(&mut document)
            .context("cannot read the policy from standard input")?;
        return Ok((document, "application/yaml"));
    }
    let path = Path::new(file);
    let document = files::read(path)?;
    let is_json = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    Ok((
        document,
        if is_json {
            "application/json"
        } else {
            "application/yaml"
        },
    ))
}

/// `/v1/policy/versions/<version>`, the reference percent-encoded.
fn version_path(version: &str) -> String {
    format!("/v1/policy/versions/{}", server_api::path_segment(version))
}

/// Prints the server's body as it is with `--json`; otherwise decodes it (`what` it should
/// be, for the error) and lets `human` print it.
fn print<W: Write, T: DeserializeOwned>(
    out: &mut W,
    body: Value,
    json: bool,
    what: &str,
    human: impl FnOnce(&mut W, T) -> Result<()>,
) -> Result<()> {
    if json {
        writeln!(out, "{body}")?;
        return Ok(());
    }
    human(out, decode(body, what)?)
}

fn decode<T: DeserializeOwned>(body: Value, what: &str) -> Result<T> {
    serde_json::from_value(body).with_context(|| format!("the server's answer is not {what}"))
}

/// The first 8 hex digits: enough to tell versions apart at a glance.
fn short_hash(hash: &str) -> &str {
    hash.get(..8).unwrap_or(hash)
}

/// One line per version: a newline in a comment would break the table.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r', '\t'], " ")
}

fn table(out: &mut impl Write, page: &VersionsView) -> Result<()> {
    let mut rows = vec![
        [
            "REVISION", "VERSION", "STATUS", "CREATED", "AUTHOR", "COMMENT",
        ]
        .map(String::from),
    ];
    for v in &page.versions {
        rows.push([
            v.revision.to_string(),
            v.version.clone(),
            v.status.clone(),
            v.created_at.clone(),
            v.author.clone(),
            v.comment
                .as_deref()
                .map_or_else(|| "-".to_owned(), one_line),
        ]);
    }
    super::table::write(out, &rows)?;
    if page.versions.is_empty() {
        eprintln!("no policy versions for this tenant");
    }
    if let Some(before) = page.next_before {
        eprintln!("older versions: --before {before}");
    }
    Ok(())
}
