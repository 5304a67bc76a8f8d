//! Policy publishing, measured: how soon a second replica decides with a version published
//! on the first, and how long decisions stall while a large policy is swapped in.
//!
//! `follow`: two replicas on one PostgreSQL schema (or, with `sqlite`, one file, where the
//! second replica polls). Each round publishes a new version on replica A and records the
//! time from the publish call returning until replica B's decisions use it.
//!
//! `swap`: one replica on a SQLite file whose policy has N rules (default 10,000);
//! `CONCURRENCY` tasks decide continuously while the policy is republished `ROUNDS` times.
//! Reports failed requests (must be 0), the median decision, and the swap pause: the
//! longest decision that overlapped a swap minus the median.
//!
//! `shadow`: one replica on an in-memory SQLite store at peak (`CONCURRENCY` deciders
//! without pause), alternately without and with a shadow policy running, `SECONDS` each,
//! three times; prints
//! decisions per second of each phase and the overhead.
//!
//! `proposals URL ROUNDS`: two replicas on one PostgreSQL schema (or `sqlite`, one file) with
//! the Nexus policy plus 1,000 rules. Each round an agent POSTs an auto-approvable one-rule
//! proposal to replica A; the time from sending it until replica B decides with the version it
//! published (issue 12: under 100 ms), and A's own answer time (review and publish included).
//! An optional `DECISIONS` makes that many decisions first, for the review to replay.
//!
//! `snapshots N DIR`: N decisions through one replica on `DIR/warden.db` (data dir `DIR`),
//! each kept with its snapshot, for `warden policy replay` to be measured on.
//!
//! ```text
//! cargo run --release -p warden-server --example policy_swap -- follow postgres://postgres@127.0.0.1/test 200
//! cargo run --release -p warden-server --example policy_swap -- swap 10000 20
//! cargo run --release -p warden-server --example policy_swap -- shadow 5
//! cargo run --release -p warden-server --example policy_swap -- proposals postgres://postgres@127.0.0.1/test 50 [DECISIONS]
//! cargo run --release -p warden-server --example policy_swap -- snapshots 100000 /tmp/replay
//! ```

// The allocator `warden serve` runs on: freeing a replaced 10,000-rule policy is part of
// what is measured, and glibc's allocator frees very differently.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;
use warden_server::audit::{AuditKey, AuditWriter};
use warden_server::keys::{self, KeySpec, Role};
use warden_server::metrics::Metrics;
use warden_server::policies::{Cause, Policies, Submission, Submitted};
use warden_server::{AppState, Limits, app};
use warden_store::Store;

const CONCURRENCY: usize = 8;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("follow") => {
            let db = args.next().unwrap_or_else(|| "sqlite".to_owned());
            let rounds: usize = args.next().map_or(Ok(200), |n| n.parse())?;
            follow(&db, rounds).await
        }
        Some("proposals") => {
            let db = args.next().unwrap_or_else(|| "sqlite".to_owned());
            let rounds: usize = args.next().map_or(Ok(50), |n| n.parse())?;
            let decisions: u64 = args.next().map_or(Ok(0), |n| n.parse())?;
            proposals(&db, rounds, decisions).await
        }
        Some("swap") => {
            let rules: usize = args.next().map_or(Ok(10_000), |n| n.parse())?;
            let rounds: usize = args.next().map_or(Ok(20), |n| n.parse())?;
            swap(rules, rounds).await
        }
        Some("snapshots") => {
            let count: u64 = args.next().map_or(Ok(100_000), |n| n.parse())?;
            let dir = args.next().unwrap_or_else(|| "replay-bench".to_owned());
            snapshots(count, std::path::Path::new(&dir)).await
        }
        Some("shadow") => {
            let seconds: u64 = args.next().map_or(Ok(5), |n| n.parse())?;
            shadow(Duration::from_secs(seconds)).await
        }
        _ => bail!(
            "usage: policy_swap follow (sqlite|postgres://…) [ROUNDS] | swap [RULES] [ROUNDS] | shadow [SECONDS]"
        ),
    }
}

/// A policy of `rules` rules (all on distinct action types but one, which decides the
/// benchmark's action) at `version`.
fn policy(version: &str, rules: usize) -> String {
    let mut text = format!(
        "version: {version}\ndefault: deny\nrules:\n  - id: tickets\n    actions: [ticket.update]\n    effect: allow\n"
    );
    for n in 0..rules.saturating_sub(1) {
        text.push_str(&format!(
            "  - id: r{n}\n    actions: [svc{n}.act]\n    when: action.confidence > 0.5\n    effect: allow\n"
        ));
    }
    text
}

/// The audit key of the benchmarks that need no particular one.
fn bench_key() -> anyhow::Result<AuditKey> {
    Ok(AuditKey::from_bytes(&[7u8; 32])?)
}

async fn replica(
    store: Arc<dyn Store>,
    policies: &std::path::Path,
    key: AuditKey,
) -> anyhow::Result<AppState> {
    let limits = Limits {
        max_in_flight: 10_000,
        ..Limits::default()
    };
    replica_with(store, policies, key, limits).await
}

async fn replica_with(
    store: Arc<dyn Store>,
    policies: &std::path::Path,
    key: AuditKey,
    limits: Limits,
) -> anyhow::Result<AppState> {
    let policies = Arc::new(Policies::open(Arc::clone(&store), policies).await?);
    let metrics = Arc::new(Metrics::default());
    let (audit, task) = AuditWriter::start(Arc::clone(&store), Arc::clone(&metrics));
    // The writer runs as long as the process.
    std::mem::forget(task);
    let state = AppState::new(store, Arc::clone(&policies), audit, key, metrics, limits);
    tokio::spawn(policies.follow(Duration::from_millis(100)));
    Ok(state)
}

/// A controller key of `tenant`.
async fn controller(store: &dyn Store, tenant: &str) -> anyhow::Result<String> {
    let spec = KeySpec {
        tenant: tenant.to_owned(),
        roles: vec![Role::Controller],
        ..KeySpec::default()
    };
    Ok(keys::create(store, spec, "bench", 1).await?.0.token)
}

/// One decision through `router`: its status and body.
async fn decide(
    router: &axum::Router,
    token: &str,
    body: &'static str,
) -> anyhow::Result<(axum::http::StatusCode, axum::body::Bytes)> {
    let request = Request::post("/v1/decisions")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(body))
        .context("request")?;
    let response = router.clone().oneshot(request).await?;
    let status = response.status();
    Ok((status, response.into_body().collect().await?.to_bytes()))
}

/// The action `throughput` and `snapshots` decide.
const REFUND: &str = r#"{"type": "billing.refund", "agent": "support-bot", "app": "helpdesk", "confidence": 0.9, "payload": {"amount": 300}}"#;

const NOTE: &str =
    r#"{"type": "ticket.update", "confidence": 0.9, "payload": {"note": "a short note"}}"#;

fn submission(version: &str, rules: usize) -> Submission {
    Submission {
        tenant: "default".to_owned(),
        source: policy(version, rules),
        author: "bench".to_owned(),
        comment: None,
        cause: Cause::Publish,
        now_ms: warden_server::state::now_ms(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

async fn follow(db: &str, rounds: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let folder = dir.path().join("policies");
    std::fs::create_dir_all(&folder)?;
    std::fs::write(folder.join("default.yaml"), policy("1.0.0", 10))?;
    let (first, second) = two_stores(db, dir.path()).await?;
    let a = replica(first, &folder, bench_key()?).await?;
    let b = replica(second, &folder, bench_key()?).await?;
    follow_rounds(db, rounds, a, b).await
}

/// Two stores on one database: a PostgreSQL schema of its own, or a SQLite file in `dir`.
async fn two_stores(
    db: &str,
    dir: &std::path::Path,
) -> anyhow::Result<(Arc<dyn Store>, Arc<dyn Store>)> {
    if db == "sqlite" {
        let path = dir.join("warden.db").display().to_string();
        let first = warden_store::open(&path).await?;
        first.migrate().await?;
        Ok((first, warden_store::open(&path).await?))
    } else if db.starts_with("postgres") {
        let schema = format!(
            "bench_{}",
            warden_server::ids::random_base32(10).to_lowercase()
        );
        let first = warden_store::open_postgres_in_schema(db, &schema).await?;
        first.migrate().await?;
        Ok((
            first,
            warden_store::open_postgres_in_schema(db, &schema).await?,
        ))
    } else {
        bail!("the database is `sqlite` or a postgres:// url");
    }
}

async fn proposals(db: &str, rounds: usize, decisions: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let folder = dir.path().join("policies");
    std::fs::create_dir_all(&folder)?;
    let mut nexus = include_str!("../../../examples/nexus/nexus.yaml").to_owned();
    let fillers: String = (0..1000)
        .map(|i| format!("  - id: filler-{i}\n    actions: [svc{i}.op]\n    when: action.payload.amount > {i}\n    effect: deny\n"))
        .collect();
    nexus = nexus.replacen("\nbudgets:", &format!("\n{fillers}budgets:"), 1);
    std::fs::write(folder.join("nexus.yaml"), nexus)?;
    let (first, second) = two_stores(db, dir.path()).await?;
    let agent = keys::create(
        first.as_ref(),
        KeySpec {
            tenant: "nexus".into(),
            roles: vec![Role::Agent],
            agent: Some("support-bot".into()),
            ..KeySpec::default()
        },
        "bench",
        1,
    )
    .await?
    .0
    .token;
    let limits = Limits {
        max_in_flight: 10_000,
        proposal_rate_limit: u32::MAX,
        ..Limits::default()
    };
    let a = replica_with(Arc::clone(&first), &folder, bench_key()?, limits.clone()).await?;
    let b = replica_with(second, &folder, bench_key()?, limits).await?;
    let router = app(a);
    // Recent traffic for the review's impact replay: support-bot's refunds, which no round's
    // proposal flips (they deny only refunds over 1,000).
    if decisions > 0 {
        let token = keys::create(
            first.as_ref(),
            KeySpec {
                tenant: "nexus".into(),
                roles: vec![Role::Controller],
                agent: Some("support-*".into()),
                ..KeySpec::default()
            },
            "bench",
            1,
        )
        .await?
        .0
        .token;
        for _ in 0..decisions {
            let (status, _) = decide(&router, &token, REFUND).await?;
            if !status.is_success() {
                bail!("a decision failed: {status}");
            }
        }
    }
    let (mut lags, mut answers) = (Vec::new(), Vec::new());
    for n in 0..rounds {
        let body = serde_json::json!({
            "rationale": "big refunds by this bot need a second look",
            "risks": ["some refunds wait longer"],
            "changes": [{"op": "add_rule", "rule": {
                "id": format!("no-big-refunds-{n}"), "actions": ["billing.refund"],
                "agents": ["support-bot"], "when": format!("action.payload.amount > {}", 1000 + n),
                "effect": "deny"}}],
        });
        let request = Request::post("/v1/proposals")
            .header("authorization", format!("Bearer {agent}"))
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .context("request")?;
        let sent = Instant::now();
        let response = router.clone().oneshot(request).await?;
        let status = response.status();
        let answer: serde_json::Value =
            serde_json::from_slice(&response.into_body().collect().await?.to_bytes())?;
        answers.push(sent.elapsed());
        let Some(revision) = answer["revision"].as_i64() else {
            bail!("round {n}: {status} {answer}");
        };
        while b
            .policies()
            .current()
            .own("nexus")
            .is_none_or(|p| p.revision < revision)
        {
            if sent.elapsed() > Duration::from_secs(10) {
                bail!("replica B never took revision {revision}");
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        lags.push(sent.elapsed());
    }
    lags.sort();
    answers.sort();
    println!(
        "proposal POST → live on replica B ({db}, nexus + 1000 rules, {rounds} proposals, {decisions} recent decisions): median {:.2} ms, p90 {:.2} ms, max {:.2} ms; A's 201 median {:.2} ms",
        ms(percentile(&lags, 0.5)),
        ms(percentile(&lags, 0.9)),
        ms(lags[lags.len() - 1]),
        ms(percentile(&answers, 0.5)),
    );
    Ok(())
}

async fn follow_rounds(db: &str, rounds: usize, a: AppState, b: AppState) -> anyhow::Result<()> {
    let mut lags = Vec::with_capacity(rounds);
    for n in 1..=rounds {
        let version = format!("1.0.{n}");
        let published = match a.policies().submit(submission(&version, 10)).await? {
            Submitted::Published(info) => info.revision,
            Submitted::Unchanged(_) => bail!("round {n} published nothing"),
        };
        let returned = Instant::now();
        // What decides on B: its set in force, read as a request reads it.
        while b
            .policies()
            .current()
            .own("default")
            .is_none_or(|p| p.revision < published)
        {
            if returned.elapsed() > Duration::from_secs(10) {
                bail!("replica B never took revision {published}");
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        lags.push(returned.elapsed());
    }
    lags.sort();
    println!(
        "publish → live on replica B ({db}, {rounds} publishes): median {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(percentile(&lags, 0.5)),
        ms(percentile(&lags, 0.9)),
        ms(percentile(&lags, 0.99)),
        ms(lags[lags.len() - 1]),
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn swap(rules: usize, rounds: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let folder = dir.path().join("policies");
    std::fs::create_dir_all(&folder)?;
    std::fs::write(folder.join("default.yaml"), policy("1.0.0", rules))?;
    let path = dir.path().join("warden.db").display().to_string();
    let store = warden_store::open(&path).await?;
    store.migrate().await?;
    let state = replica(Arc::clone(&store), &folder, bench_key()?).await?;
    let token = controller(store.as_ref(), "acme").await?;
    let router = app(state.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (router, token, stop) = (router.clone(), token.clone(), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            // (start, end) of every decision, and how many failed.
            let mut spans = Vec::new();
            let mut failed = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let (status, body) = decide(
                    &router,
                    &token,
                    r#"{"type": "ticket.update", "confidence": 0.9}"#,
                )
                .await?;
                let t1 = Instant::now();
                if !status.is_success() || !body.windows(15).any(|w| w == br#""effect":"allow"#) {
                    failed += 1;
                }
                spans.push((t0, t1, decided_with(&body)));
            }
            anyhow::Ok((spans, failed))
        }));
    }
    // Warm up, then publish, each round a new version of the same size.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut swaps = Vec::new();
    for n in 1..=rounds {
        let t0 = Instant::now();
        match state
            .policies()
            .submit(submission(&format!("1.1.{n}"), rules))
            .await?
        {
            Submitted::Published(_) => {}
            Submitted::Unchanged(_) => bail!("round {n} published nothing"),
        }
        let t1 = Instant::now();
        swaps.push((t0, t1));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (mut spans, mut failed) = (Vec::new(), 0);
    for task in tasks {
        let (s, f) = task.await??;
        failed += f;
        spans.extend(s);
    }
    // Where each swap happened: after every decision that still read the version before it
    // had started, and before every decision that read the new one had ended.
    let mut at_swaps = Vec::new();
    for n in 1..=rounds {
        let (old, new) = (
            if n == 1 {
                "1.0.0".to_owned()
            } else {
                format!("1.1.{}", n - 1)
            },
            format!("1.1.{n}"),
        );
        let after = spans.iter().filter(|s| s.2 == old).map(|s| s.0).max();
        let before = spans.iter().filter(|s| s.2 == new).map(|s| s.1).min();
        if let (Some(after), Some(before)) = (after, before) {
            at_swaps.push((after.min(before), before));
        }
    }
    // The control: windows as wide, each 100 ms after a publish returned (halfway to the
    // next), where nothing is published; what the host's own tail gives that many decisions.
    let quiet: Vec<(Instant, Instant)> = at_swaps
        .iter()
        .zip(&swaps)
        .map(|((a, b), (_, end))| {
            let start = *end + Duration::from_millis(100);
            (start, start + (*b - *a))
        })
        .collect();
    let (mut all, mut overlapping, mut at_swap, mut outside, mut at_quiet) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (a, b, _) in &spans {
        let took = *b - *a;
        all.push(took);
        let during =
            |windows: &[(Instant, Instant)]| windows.iter().any(|(s0, s1)| *a <= *s1 && *b >= *s0);
        if during(&swaps) {
            overlapping.push(took);
        } else {
            outside.push(took);
        }
        if during(&at_swaps) {
            at_swap.push(took);
        }
        if during(&quiet) {
            at_quiet.push(took);
        }
    }
    for list in [
        &mut all,
        &mut overlapping,
        &mut at_swap,
        &mut outside,
        &mut at_quiet,
    ] {
        list.sort();
    }
    let median = percentile(&all, 0.5);
    let worst = overlapping.last().copied().unwrap_or_default();
    let worst_at_swap = at_swap.last().copied().unwrap_or_default();
    let publish: Vec<Duration> = swaps.iter().map(|(a, b)| *b - *a).collect();
    let mut publish_sorted = publish.clone();
    publish_sorted.sort();
    println!(
        "swap of a {rules}-rule policy under load ({CONCURRENCY} deciders, {rounds} publishes, {:.1} s): {} decisions, {failed} failed; median {:.3} ms, p99 {:.3} ms; longest decision during a publish {:.3} ms → swap pause {:.3} ms; publish (compile + store) median {:.1} ms",
        started.elapsed().as_secs_f64(),
        all.len(),
        ms(median),
        ms(percentile(&all, 0.99)),
        ms(worst),
        ms(worst.saturating_sub(median)),
        ms(percentile(&publish_sorted, 0.5)),
    );
    println!(
        "  at the swaps themselves ({} found of {rounds}): {} decisions in flight, longest {:.3} ms → pause {:.3} ms",
        at_swaps.len(),
        at_swap.len(),
        ms(worst_at_swap),
        ms(worst_at_swap.saturating_sub(median)),
    );
    let worst_quiet = at_quiet.last().copied().unwrap_or_default();
    println!(
        "  control, as many windows as wide with no publish: {} decisions in flight, longest {:.3} ms → median + {:.3} ms",
        at_quiet.len(),
        ms(worst_quiet),
        ms(worst_quiet.saturating_sub(median)),
    );
    let worst_outside = outside.last().copied().unwrap_or_default();
    println!(
        "  control, outside every publish: {} decisions, p99 {:.3} ms, longest {:.3} ms (median + {:.3} ms)",
        outside.len(),
        ms(percentile(&outside, 0.99)),
        ms(worst_outside),
        ms(worst_outside.saturating_sub(median)),
    );
    Ok(())
}

/// The policy version a decision body names.
fn decided_with(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["policy_version"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Decisions per second through `router` for `length`, from `CONCURRENCY` tasks.
async fn throughput(router: &axum::Router, token: &str, length: Duration) -> anyhow::Result<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (router, token, stop) = (router.clone(), token.to_owned(), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (status, _) = decide(&router, &token, NOTE).await?;
                if !status.is_success() {
                    bail!("a decision failed: {status}");
                }
                done += 1;
            }
            anyhow::Ok(done)
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(length).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

async fn shadow(length: Duration) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let folder = dir.path().join("policies");
    std::fs::create_dir_all(&folder)?;
    std::fs::write(folder.join("default.yaml"), policy("1.0.0", 100))?;
    // In memory: the disk's fsync time would hide what the shadow costs in CPU.
    let store = warden_store::open("sqlite::memory:").await?;
    store.migrate().await?;
    let state = replica(Arc::clone(&store), &folder, bench_key()?).await?;
    let token = controller(store.as_ref(), "acme").await?;
    let router = app(state.clone());
    throughput(&router, &token, Duration::from_secs(1)).await?;
    let mut rows = Vec::new();
    for round in 1..=3 {
        let without = throughput(&router, &token, length).await?;
        let mut candidate = submission(&format!("2.0.{round}"), 100);
        candidate.tenant = "acme".to_owned();
        candidate.cause = Cause::Shadow { from: None };
        state.policies().submit(candidate).await?;
        let with = throughput(&router, &token, length).await?;
        let tally = state
            .policies()
            .shadow("acme")
            .map(|s| s.tally())
            .unwrap_or_default();
        state
            .policies()
            .end_shadow("acme", "bench", warden_server::state::now_ms())
            .await?;
        rows.push((without, with, tally.decisions, tally.dropped));
    }
    for (without, with, shadowed, dropped) in rows {
        println!(
            "peak without shadow {without:.0}/s, with shadow {with:.0}/s: overhead {:.1}% ({shadowed} shadowed, {dropped} dropped)",
            (1.0 - with / without) * 100.0
        );
    }
    Ok(())
}

async fn snapshots(count: u64, dir: &std::path::Path) -> anyhow::Result<()> {
    let folder = dir.join("policies");
    std::fs::create_dir_all(&folder)?;
    std::fs::write(folder.join("default.yaml"), policy("1.0.0", 100))?;
    let path = dir.join("warden.db").display().to_string();
    let store = warden_store::open(&path).await?;
    store.migrate().await?;
    // The key the CLI derives the snapshot key from (WARDEN_AUDIT_KEY or the data dir).
    let state = replica(Arc::clone(&store), &folder, AuditKey::load(None, dir)?).await?;
    let token = controller(store.as_ref(), "default").await?;
    let router = app(state);
    let made = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let started = Instant::now();
    for _ in 0..CONCURRENCY {
        let (router, token, made) = (router.clone(), token.clone(), Arc::clone(&made));
        tasks.push(tokio::spawn(async move {
            while made.fetch_add(1, Ordering::Relaxed) < count {
                let (status, _) = decide(&router, &token, NOTE).await?;
                if !status.is_success() {
                    bail!("a decision failed: {status}");
                }
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    println!(
        "{count} decisions with snapshots in {} ({:.1} s)",
        path,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
