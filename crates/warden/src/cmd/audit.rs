//! `warden audit`: read, follow, verify, export and purge the audit log, straight from the
//! database, or through a running server's API with `--server` (reads and verification
//! only: an admin key reads its tenant, an operator key any tenant and verifies).
//!
//! Reads page through the chain by seq (never by offset), so a long export or a follow
//! sees every event exactly once while the server keeps appending.

use crate::Outcome;
use crate::cmd::server_api::ServerApi;
use crate::db::{self, DbArgs, Migrate};
use crate::time::{self, TimeArg};
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use warden_server::routes::admin::{EventsBody, VerifyBody};
use warden_server::wire::EventBody;
use warden_store::{Event, EventFilter, Store};

/// Arguments of `warden audit`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    db: DbArgs,
    /// Go through a running server's API instead of the database, e.g.
    /// http://127.0.0.1:8080, with an admin key (its tenant's events) or an operator key
    /// (every tenant's, `--tenant` to pick one, and `verify`) in WARDEN_KEY; purge needs --db.
    #[arg(long, value_name = "URL", env = "WARDEN_SERVER", global = true)]
    server: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// Where events come from: the database, or a server's `/v1/audit` routes.
enum Source {
    Db(Arc<dyn Store>),
    Server(Api),
}

/// The outcome of a chain walk, from either source.
struct Verified {
    events_checked: u64,
    /// seq, event id, what is wrong.
    first_broken: Option<(i64, String, String)>,
}

impl Source {
    async fn events(&self, filter: &EventFilter) -> Result<Vec<Event>> {
        match self {
            Self::Db(store) => store
                .events(filter)
                .await
                .context("cannot read the audit log"),
            Self::Server(api) => api.events(filter).await,
        }
    }

    async fn verify(&self) -> Result<Verified> {
        match self {
            Self::Db(store) => {
                let report = store
                    .verify()
                    .await
                    .context("cannot verify the audit chain")?;
                Ok(Verified {
                    events_checked: report.events_checked,
                    first_broken: report
                        .first_broken
                        .map(|b| (b.seq, b.event_id, b.problem.to_string())),
                })
            }
            Self::Server(api) => {
                let body: VerifyBody = api.0.get("/v1/audit/verify", &[]).await?;
                Ok(Verified {
                    events_checked: body.events_checked,
                    first_broken: body.first_broken.map(|b| (b.seq, b.event_id, b.problem)),
                })
            }
        }
    }
}

/// A server's audit routes (an admin or operator key).
struct Api(ServerApi);

impl Api {
    /// One page of the events the key may read, as the filter asks.
    async fn events(&self, filter: &EventFilter) -> Result<Vec<Event>> {
        let mut query: Vec<(&str, String)> = vec![("limit", filter.limit.to_string())];
        let text = [
            ("tenant", &filter.tenant),
            ("kind", &filter.kind),
            ("agent", &filter.agent),
            ("action", &filter.action_type),
            ("effect", &filter.effect),
        ];
        for (name, value) in text {
            if let Some(value) = value {
                query.push((name, value.clone()));
            }
        }
        let numbers = [
            ("since_ms", filter.since_ms),
            ("until_ms", filter.until_ms),
            ("after_seq", filter.after_seq),
            ("before_seq", filter.before_seq),
        ];
        for (name, value) in numbers {
            if let Some(value) = value {
                query.push((name, value.to_string()));
            }
        }
        if filter.newest_first {
            query.push(("newest_first", "true".to_owned()));
        }
        let body: EventsBody = self.0.get("/v1/audit", &query).await?;
        Ok(body.events.into_iter().map(Event::from).collect())
    }
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Print the events that match filters, oldest first.
    #[command(after_help = "Examples:\n  \
        warden audit query --tenant acme --effect deny --since 1h\n  \
        warden audit query --kind key_created --since 2025-01-02T00:00:00Z --json")]
    Query(QueryArgs),
    /// Print the last events, and with --follow the new ones as they are written.
    #[command(after_help = "Example:\n  warden audit tail -n 20 --follow --tenant acme")]
    Tail(TailArgs),
    /// Recompute the hash chain and report the first broken link; exit 1 if there is one.
    #[command(after_help = "Example:\n  warden audit verify --db postgres://warden@db/warden")]
    Verify,
    /// Write every event as JSON lines: OCSF for a SIEM, or Warden's own format.
    #[command(after_help = "Examples:\n  \
        warden audit export --format ocsf --output audit.ocsf.jsonl\n  \
        warden audit export --format jsonl --tenant acme --since 30d | gzip > acme.jsonl.gz")]
    Export(ExportArgs),
    /// Delete the oldest events and record a checkpoint that keeps the chain verifiable.
    #[command(after_help = "Example:\n  warden audit purge --older-than 90d")]
    Purge(PurgeArgs),
}

/// Which events a read returns; every given filter must match.
#[derive(Debug, clap::Args)]
struct Filters {
    /// Only this tenant's events.
    #[arg(long)]
    tenant: Option<String>,
    /// Only events of this kind: decision, outcome, key_created, key_revoked, checkpoint, …
    #[arg(long)]
    kind: Option<String>,
    /// Only events of this agent.
    #[arg(long)]
    agent: Option<String>,
    /// Only events for this action type, e.g. ticket.resolve.
    #[arg(long = "action", value_name = "TYPE")]
    action_type: Option<String>,
    /// Only decisions with this effect.
    #[arg(long, value_parser = ["allow", "deny", "require_approval"])]
    effect: Option<String>,
    /// Only events at or after this time: a duration back from now (1h, 7d) or an RFC 3339
    /// UTC time.
    #[arg(long, value_name = "DUR|TIME", value_parser = TimeArg::parse)]
    since: Option<TimeArg>,
    /// Only events before this time: a duration back from now or an RFC 3339 UTC time.
    #[arg(long, value_name = "DUR|TIME", value_parser = TimeArg::parse)]
    until: Option<TimeArg>,
}

impl Filters {
    fn to_filter(&self, now_ms: i64) -> EventFilter {
        EventFilter {
            tenant: self.tenant.clone(),
            kind: self.kind.clone(),
            agent: self.agent.clone(),
            action_type: self.action_type.clone(),
            effect: self.effect.clone(),
            since_ms: self.since.map(|t| t.to_ms(now_ms)),
            until_ms: self.until.map(|t| t.to_ms(now_ms)),
            ..EventFilter::default()
        }
    }
}

#[derive(Debug, clap::Args)]
struct QueryArgs {
    #[command(flatten)]
    filters: Filters,
    /// At most this many events.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    limit: u32,
    /// Only events after this seq: continue where an earlier query stopped.
    #[arg(long, value_name = "SEQ")]
    after_seq: Option<i64>,
}

#[derive(Debug, clap::Args)]
struct TailArgs {
    #[command(flatten)]
    filters: Filters,
    /// How many of the last events to print.
    #[arg(short = 'n', long = "lines", value_name = "N", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..))]
    lines: u32,
    /// Keep printing new events as they are written, until Ctrl-C.
    #[arg(short, long)]
    follow: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Format {
    /// OCSF 1.3.0 API Activity records (docs/AUDIT.md).
    Ocsf,
    /// Warden's own JSON lines, as `audit query --json` prints them.
    Jsonl,
}

#[derive(Debug, clap::Args)]
struct ExportArgs {
    /// The record format.
    #[arg(long, value_enum)]
    format: Format,
    /// Write to this file instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    #[command(flatten)]
    filters: Filters,
}

#[derive(Debug, clap::Args)]
struct PurgeArgs {
    /// Delete events (and decisions) older than this, e.g. 90d.
    #[arg(long, value_name = "DUR", value_parser = time::parse_duration)]
    older_than: Duration,
}

/// How often `tail --follow` looks for new events.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(500);

/// Runs a `warden audit` subcommand against the database.
pub fn run(args: Args, json: bool) -> Result<Outcome> {
    super::block_on(async move {
        if args.server.is_some() && matches!(args.command, Command::Purge(_)) {
            bail!(
                "purge works on the database (--db), not through --server: it deletes \
                 every tenant's oldest events, which no tenant's key may do"
            );
        }
        let source = match &args.server {
            Some(server) => Source::Server(Api(ServerApi::new(
                server,
                "--server needs an admin or operator key",
                Duration::from_secs(60),
            )?)),
            None => Source::Db(db::open(&args.db.url, Migrate::RequireCurrent).await?),
        };
        match args.command {
            Command::Query(query_args) => query(&source, &query_args, json).await,
            Command::Tail(tail_args) => tail(&source, &tail_args, json).await,
            Command::Verify => verify(&source, json).await,
            Command::Export(export_args) => export(&source, &export_args).await,
            Command::Purge(purge_args) => match &source {
                Source::Db(store) => purge(store.as_ref(), &purge_args, json).await,
                Source::Server(_) => bail!("purge needs --db"),
            },
        }
    })
}

/// Reads the next page (at most `limit` events) and moves the filter's cursor past it.
async fn page(source: &Source, filter: &mut EventFilter, limit: u32) -> Result<Vec<Event>> {
    filter.limit = limit.clamp(1, EventFilter::MAX_LIMIT);
    let events = source.events(filter).await?;
    if let Some(last) = events.last() {
        if filter.newest_first {
            filter.before_seq = Some(last.seq);
        } else {
            filter.after_seq = Some(last.seq);
        }
    }
    Ok(events)
}

async fn query(source: &Source, args: &QueryArgs, json: bool) -> Result<Outcome> {
    let mut filter = args.filters.to_filter(time::now_ms());
    filter.after_seq = args.after_seq;
    let wanted = args.limit as usize;
    let mut events = Vec::new();
    // One more than asked for tells whether there is more to continue from.
    while events.len() <= wanted {
        let ask = u32::try_from(wanted + 1 - events.len()).unwrap_or(u32::MAX);
        let next = page(source, &mut filter, ask).await?;
        let exhausted = next.len() < ask.min(EventFilter::MAX_LIMIT) as usize;
        events.extend(next);
        if exhausted {
            break;
        }
    }
    let more = events.len() > wanted;
    events.truncate(wanted);
    let mut out = BufWriter::new(std::io::stdout().lock());
    for event in &events {
        write_event(&mut out, event, json)?;
    }
    out.flush()?;
    if let (true, Some(last)) = (more, events.last()) {
        eprintln!("more events match: continue with --after-seq {}", last.seq);
    }
    Ok(Outcome::Ok)
}

async fn tail(source: &Source, args: &TailArgs, json: bool) -> Result<Outcome> {
    let base = args.filters.to_filter(time::now_ms());
    let mut newest = EventFilter {
        newest_first: true,
        ..base.clone()
    };
    let mut events = Vec::new();
    let wanted = args.lines as usize;
    while events.len() < wanted {
        let ask = u32::try_from(wanted - events.len()).unwrap_or(u32::MAX);
        let next = page(source, &mut newest, ask).await?;
        let exhausted = next.len() < ask.min(EventFilter::MAX_LIMIT) as usize;
        events.extend(next);
        if exhausted {
            break;
        }
    }
    events.reverse();
    let mut out = std::io::stdout().lock();
    for event in &events {
        write_event(&mut out, event, json)?;
    }
    out.flush()?;
    if !args.follow {
        return Ok(Outcome::Ok);
    }

    // Follow from the newest event printed; with none, no earlier event matches, so
    // starting from the beginning prints only new ones.
    let mut filter = EventFilter {
        after_seq: events.last().map(|e| e.seq),
        ..base
    };
    // Made once, so a Ctrl-C during a read is not lost before the next wait.
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        tokio::select! {
            () = tokio::time::sleep(FOLLOW_INTERVAL) => {}
            _ = &mut interrupted => return Ok(Outcome::Ok),
        }
        loop {
            let next = page(source, &mut filter, EventFilter::MAX_LIMIT).await?;
            for event in &next {
                write_event(&mut out, event, json)?;
            }
            out.flush()?;
            if next.len() < EventFilter::MAX_LIMIT as usize {
                break;
            }
        }
    }
}

async fn verify(source: &Source, json: bool) -> Result<Outcome> {
    let report = source.verify().await?;
    let mut out = std::io::stdout().lock();
    if json {
        let broken = report.first_broken.as_ref().map(
            |(seq, event_id, problem)| json!({"seq": seq, "event_id": event_id, "problem": problem}),
        );
        let body = json!({
            "intact": report.first_broken.is_none(),
            "events_checked": report.events_checked,
            "first_broken": broken,
        });
        writeln!(out, "{body}")?;
    } else {
        match &report.first_broken {
            None => writeln!(
                out,
                "chain intact: {} events checked",
                report.events_checked
            )?,
            Some((seq, event_id, problem)) => writeln!(
                out,
                "chain broken at seq {seq} (event {event_id}): {problem}"
            )?,
        }
    }
    Ok(if report.first_broken.is_none() {
        Outcome::Ok
    } else {
        Outcome::Failed
    })
}

async fn export(source: &Source, args: &ExportArgs) -> Result<Outcome> {
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => {
            Box::new(BufWriter::new(File::create(path).with_context(|| {
                format!("cannot create `{}`", path.display())
            })?))
        }
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    };
    let mut filter = args.filters.to_filter(time::now_ms());
    let mut count: u64 = 0;
    loop {
        let next = page(source, &mut filter, EventFilter::MAX_LIMIT).await?;
        for event in &next {
            let record = match args.format {
                Format::Ocsf => warden_server::ocsf::to_ocsf(event).to_string(),
                Format::Jsonl => serde_json::to_string(&EventBody::from(event))?,
            };
            writeln!(out, "{record}").context("cannot write the export")?;
            count += 1;
        }
        if next.len() < EventFilter::MAX_LIMIT as usize {
            break;
        }
    }
    out.flush().context("cannot write the export")?;
    match &args.output {
        Some(path) => eprintln!("exported {count} events to {}", path.display()),
        None => eprintln!("exported {count} events"),
    }
    Ok(Outcome::Ok)
}

async fn purge(store: &dyn Store, args: &PurgeArgs, json: bool) -> Result<Outcome> {
    let now = time::now_ms();
    let older_than =
        now.saturating_sub(i64::try_from(args.older_than.as_millis()).unwrap_or(i64::MAX));
    let report = store
        .purge(older_than, now)
        .await
        .context("cannot purge the audit log")?;
    let mut out = std::io::stdout().lock();
    if json {
        let body = json!({
            "purged": report.purged,
            "decisions_purged": report.decisions_purged,
            "checkpoint_seq": report.checkpoint_seq,
            "older_than": time::rfc3339(older_than),
        });
        writeln!(out, "{body}")?;
        return Ok(Outcome::Ok);
    }
    writeln!(
        out,
        "purged {} events and {} decisions older than {}",
        report.purged,
        report.decisions_purged,
        time::rfc3339(older_than)
    )?;
    match report.checkpoint_seq {
        Some(seq) => writeln!(out, "checkpoint recorded at seq {seq}")?,
        None => writeln!(out, "no events deleted, so no checkpoint was needed")?,
    }
    Ok(Outcome::Ok)
}

/// One event as a text line, or as a JSON line in the API's shape.
fn write_event(out: &mut impl Write, event: &Event, json: bool) -> Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string(&EventBody::from(event))?)?;
        return Ok(());
    }
    let e = &event.event;
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    let rules = if e.rule_ids.is_empty() {
        "-".to_owned()
    } else {
        e.rule_ids.join(",")
    };
    writeln!(
        out,
        "{} {} {} {} {} {} {} {}",
        event.seq,
        time::rfc3339(e.time_ms),
        e.tenant,
        e.kind,
        dash(&e.agent),
        dash(&e.action_type),
        dash(&e.effect),
        rules
    )?;
    Ok(())
}
