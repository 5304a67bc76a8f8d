//! `warden policy replay FILE`: what a candidate policy would change, replayed over the
//! tenant's recent decisions — their kept snapshots, opened with the server's key, read
//! straight from the database like `warden audit`.
//!
//! A decision whose snapshot lacks a field the candidate reads is counted as `unknown`
//! (with the field), never guessed.

use crate::db::{self, DbArgs, Migrate};
use crate::{Outcome, files};
use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use warden_policy::{Env, Policy, Replayed, Snapshot, Timestamp, Verdict};
use warden_server::audit::{AUDIT_KEY_ENV, AuditKey};
use warden_server::snapshots::SnapshotKey;
use warden_store::StoredSnapshot;

/// Arguments of `warden policy replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The candidate policy document, YAML or JSON.
    file: PathBuf,
    /// Replay the decisions made within this long before now (at most the server's
    /// snapshot retention, 7 days by default).
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    since: Duration,
    /// Examples shown per kind of change.
    #[arg(long, default_value_t = 5)]
    examples: usize,
    /// The server's data folder, which holds the key snapshots are sealed with (or set
    /// `WARDEN_AUDIT_KEY` as the server has it).
    #[arg(long, env = "WARDEN_DATA_DIR", default_value = ".")]
    data_dir: PathBuf,
    #[command(flatten)]
    db: DbArgs,
}

/// Rows read from the store at a time.
const PAGE: u32 = 2000;

/// What the candidate would change.
#[derive(Debug, Default)]
struct Summary {
    replayed: u64,
    same: u64,
    /// `live→candidate` → (count, example decision ids).
    flips: BTreeMap<String, (u64, Vec<String>)>,
    /// The field the snapshot lacks → count.
    unknown: BTreeMap<String, u64>,
    /// Snapshots that would not open or parse (another key, a newer format).
    unreadable: u64,
}

/// Replays `args.file` over `tenant`'s snapshots.
pub fn run(args: ReplayArgs, tenant: Option<String>, json: bool) -> Result<Outcome> {
    super::block_on(replay(
        args,
        tenant.unwrap_or_else(|| "default".to_owned()),
        json,
    ))
}

async fn replay(args: ReplayArgs, tenant: String, json: bool) -> Result<Outcome> {
    let source = files::read(&args.file)?;
    let candidate = Policy::parse(&source).map_err(|errors| {
        let first = errors
            .iter()
            .next()
            .map(ToString::to_string)
            .unwrap_or_default();
        anyhow::anyhow!("{}:{first}", args.file.display())
    })?;
    let key = AuditKey::load(std::env::var(AUDIT_KEY_ENV).ok().as_deref(), &args.data_dir)
        .context("cannot read the key snapshots are sealed with")?
        .snapshot_key();
    let store = db::open(&args.db.url, Migrate::RequireCurrent).await?;
    let now = crate::time::now_ms();
    let since = now.saturating_sub(i64::try_from(args.since.as_millis()).unwrap_or(i64::MAX));
    let progress = indicatif::ProgressBar::new_spinner();
    progress.set_message("decisions replayed");
    let (mut summary, mut after, mut replaying) = (Summary::default(), None, Duration::ZERO);
    let started = Instant::now();
    loop {
        let page = store
            .snapshots(&tenant, since, after.clone(), PAGE)
            .await
            .context("cannot read the decisions' snapshots")?;
        let Some(last) = page.last() else {
            break;
        };
        after = Some((last.created_at_ms, last.decision_id.clone()));
        let t0 = Instant::now();
        let outcomes = replay_page(&candidate, &key, &tenant, &page);
        replaying += t0.elapsed();
        for (row, outcome) in page.iter().zip(outcomes) {
            summary.record(row, outcome, args.examples);
        }
        progress.set_position(summary.replayed);
        if page.len() < PAGE as usize {
            break;
        }
    }
    progress.finish_and_clear();
    let elapsed = started.elapsed();
    let rate = |d: Duration| summary.replayed as f64 / d.as_secs_f64().max(1e-9);
    if json {
        let flips: serde_json::Map<String, Value> = summary
            .flips
            .iter()
            .map(|(kind, (count, examples))| {
                (kind.clone(), json!({"count": count, "examples": examples}))
            })
            .collect();
        println!(
            "{}",
            json!({
                "tenant": tenant,
                "candidate_version": candidate.version().as_str(),
                "since": warden_server::wire::rfc3339(since),
                "replayed": summary.replayed,
                "same": summary.same,
                "flips": flips,
                "unknown": summary.unknown,
                "unreadable": summary.unreadable,
                "per_second": rate(replaying).round(),
                "per_second_with_reads": rate(elapsed).round(),
            })
        );
    } else {
        println!(
            "replayed {} decisions of {tenant} since {} under candidate {}",
            summary.replayed,
            warden_server::wire::rfc3339(since),
            candidate.version().as_str()
        );
        println!("  same: {}", summary.same);
        for (kind, (count, examples)) in &summary.flips {
            println!("  {kind}: {count}  e.g. {}", examples.join(", "));
        }
        let unknown: u64 = summary.unknown.values().sum();
        if unknown > 0 {
            let fields: Vec<String> = summary
                .unknown
                .iter()
                .map(|(path, n)| format!("{path}: {n}"))
                .collect();
            println!(
                "  unknown (the snapshot lacks a field the candidate reads): {unknown} ({})",
                fields.join(", ")
            );
        }
        if summary.unreadable > 0 {
            println!("  unreadable snapshots: {}", summary.unreadable);
        }
        println!(
            "  {:.0} replays/s (opening included), {:.0}/s with the database reads",
            rate(replaying),
            rate(elapsed)
        );
    }
    Ok(Outcome::Ok)
}

/// What replaying one snapshot gave: the candidate's verdict, a field it lacks, or nothing
/// readable.
enum Found {
    Decided(Verdict),
    Unknown(String),
    Unreadable,
}

/// Opens and replays a page, on every core.
fn replay_page(
    candidate: &Policy,
    key: &SnapshotKey,
    tenant: &str,
    page: &[StoredSnapshot],
) -> Vec<Found> {
    let one = |row: &StoredSnapshot| {
        let Some(bytes) = key.open(tenant, &row.decision_id, &row.snapshot) else {
            return Found::Unreadable;
        };
        let Ok(snapshot) = Snapshot::from_json_bytes(&bytes) else {
            return Found::Unreadable;
        };
        let env = Env::new(
            tenant.to_owned(),
            Timestamp::from_unix_millis(row.created_at_ms).unwrap_or_default(),
        );
        match candidate.replay(&snapshot, &env) {
            Replayed::Decided(verdict) => Found::Decided(verdict),
            Replayed::Unknown { path } => Found::Unknown(path),
        }
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = page.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = page
            .chunks(chunk)
            .map(|rows| scope.spawn(move || rows.iter().map(one).collect::<Vec<_>>()))
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    })
}

impl Summary {
    fn record(&mut self, row: &StoredSnapshot, outcome: Found, examples: usize) {
        self.replayed += 1;
        // Only the effect of the recorded answer; a body that has none counts as a deny.
        #[derive(serde::Deserialize)]
        struct Answered<'a> {
            #[serde(borrow)]
            effect: std::borrow::Cow<'a, str>,
        }
        let answered = serde_json::from_str::<Answered<'_>>(&row.body).ok();
        let live = answered.as_ref().map_or("deny", |a| a.effect.as_ref());
        match outcome {
            Found::Unreadable => self.unreadable += 1,
            Found::Unknown(path) => *self.unknown.entry(path).or_default() += 1,
            Found::Decided(verdict) if verdict.as_str() == live => self.same += 1,
            Found::Decided(verdict) => {
                let entry = self
                    .flips
                    .entry(format!("{live}→{}", verdict.as_str()))
                    .or_default();
                entry.0 += 1;
                if entry.1.len() < examples {
                    entry.1.push(row.decision_id.clone());
                }
            }
        }
    }
}
