//! `warden serve`: the decision service. Opens the store (migrating SQLite, and PostgreSQL
//! only with `--migrate`), loads the policies, creates an operator key on first start, and
//! serves until SIGTERM or Ctrl-C, then drains requests and flushes the audit log.

use crate::db::{self, DbArgs, Migrate};
use crate::{Outcome, time};
use anyhow::{Context, Result, anyhow};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use warden_server::approvals::{WEBHOOK_SECRET_ENV, Webhooks};
use warden_server::audit::{AUDIT_KEY_ENV, AuditKey, AuditWriter};
use warden_server::keys::{self, KeySpec, Role};
use warden_server::metrics::Metrics;
use warden_server::policies::Policies;
use warden_server::{AppState, Limits};
use warden_store::SYSTEM_TENANT;

/// Arguments of `warden serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, env = "WARDEN_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[command(flatten)]
    db: DbArgs,
    /// Folder of policies: `<tenant>.yaml` per tenant, `default.yaml` for the rest.
    #[arg(long, env = "WARDEN_POLICIES", default_value = "./policies")]
    policies: PathBuf,
    /// Folder for the server's own files (the audit digest key, the permit signing keys).
    #[arg(long, env = "WARDEN_DATA_DIR", default_value = ".")]
    data_dir: PathBuf,
    /// Apply pending migrations to PostgreSQL before serving (SQLite always is).
    #[arg(long)]
    migrate: bool,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    max_body_bytes: usize,
    /// Requests handled at once; more are answered 503 `overloaded`.
    #[arg(long, default_value_t = 1024)]
    max_in_flight: usize,
    /// A request running longer is answered 503 `timeout`.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    request_timeout: Duration,
    /// A request body must arrive in full within this (408 `body_timeout` otherwise).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    body_timeout: Duration,
    /// Bytes of request bodies held at once across all requests; past it, 503.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    max_body_budget: usize,
    /// A connection must send a whole request head within this of opening or of its last
    /// answer; idle keep-alive connections are closed after it.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    header_timeout: Duration,
    /// On SIGTERM, how long in-flight requests may take before connections are closed.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// How long a key read from the store is trusted: a revocation anywhere takes effect
    /// on this replica within it.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    key_cache_ttl: Duration,
    /// Failed authentications per source address per minute before it gets 429.
    #[arg(long, default_value_t = 100)]
    auth_failure_limit: u32,
    /// Also serve `GET /metrics` without a key on this address (for a Prometheus that
    /// cannot send a bearer token); on the main address it needs an operator key.
    #[arg(long, env = "WARDEN_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Long-polls on approvals and questions open at once; more are answered 503. Waits
    /// do not count against `--max-in-flight` and are not cut by `--request-timeout`.
    #[arg(long, default_value_t = 10_000)]
    max_waiters: usize,
    /// Send a tenant's approval events (created, decided, expired) to URL, signed with
    /// HMAC-SHA256 under `WARDEN_WEBHOOK_SECRET`; repeat for more tenants.
    #[arg(long = "approval-webhook", value_name = "TENANT=URL", value_parser = parse_webhook)]
    approval_webhooks: Vec<(String, String)>,
    /// Publish a new policy version's parent back when more than this fraction of the
    /// new version's first decisions on a replica fail to evaluate; 0 turns it off.
    #[arg(long, default_value_t = 0.1, value_parser = parse_rate)]
    auto_rollback_error_rate: f64,
    /// How many of a new version's first decisions `--auto-rollback-error-rate` judges…
    #[arg(long, default_value_t = 100)]
    auto_rollback_decisions: u64,
    /// …or how long after it goes live, whichever ends first.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    auto_rollback_window: Duration,
    /// How long each decision's input snapshot (sealed, redacted) is kept for
    /// `warden policy replay`; 0 keeps none.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    snapshot_retention: Duration,
    /// Policy proposals one agent may submit per hour (counted in the store, so shared by
    /// every replica).
    #[arg(long, default_value_t = 10)]
    proposal_rate_limit: u32,
    /// How far back a proposal's review replays recent decisions.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    proposal_replay_window: Duration,
    /// How long a proposal review's solver may think about one question; past it, the
    /// change counts as broadening.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    proposal_solver_timeout: Duration,
    /// Denials by the default (or human approvals) of the same action type and target type
    /// for one agent, within `--observe-window`, after which Warden suggests a change itself
    /// (a proposal with source `observed`, for a human to decide); 0 never does.
    #[arg(long, default_value_t = 3)]
    observe_threshold: u32,
    /// The window `--observe-threshold` counts in.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    observe_window: Duration,
    /// Ask URL to review a tenant's proposals (it answers approve, reject, revise or
    /// needs_human with a reason; it can only make the outcome stricter), signed like
    /// approval webhooks; repeat for more tenants.
    #[arg(long = "proposal-reviewer", value_name = "TENANT=URL", value_parser = parse_webhook)]
    proposal_reviewers: Vec<(String, String)>,
    /// How long a submission waits for the external reviewer; past it, Warden's own
    /// outcome stands.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    proposal_reviewer_timeout: Duration,
    /// A web inbox session unused for this long ends.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    inbox_idle_timeout: Duration,
    /// A web inbox session ends this long after its sign-in, however it is used.
    #[arg(long, default_value = "12h", value_parser = humantime::parse_duration)]
    inbox_session_ttl: Duration,
    /// Mark the inbox's cookies `Secure` on every answer (behind a TLS proxy that does not
    /// send `X-Forwarded-Proto: https`; with that header they are marked anyway).
    #[arg(long)]
    inbox_secure_cookies: bool,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

/// `TENANT=URL`, with an http:// or https:// URL.
/// A fraction from 0 to 1.
fn parse_rate(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!("`{raw}` is not a fraction from 0 to 1")),
    }
}

fn parse_webhook(raw: &str) -> Result<(String, String), String> {
    let (tenant, url) = raw
        .split_once('=')
        .ok_or_else(|| format!("`{raw}` is not TENANT=URL"))?;
    if tenant.is_empty() {
        return Err(format!("`{raw}` names no tenant"));
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!(
            "the webhook of `{tenant}` must be an http:// or https:// URL"
        ));
    }
    Ok((tenant.to_owned(), url.to_owned()))
}

/// Runs the server until it is told to stop.
pub fn run(args: Args, _json: bool) -> Result<Outcome> {
    init_logging(args.log_json);
    super::block_on(serve(args))
}

async fn serve(args: Args) -> Result<Outcome> {
    let migrate = if args.migrate {
        Migrate::Apply
    } else {
        Migrate::RequireCurrent
    };
    let store = db::open(&args.db.url, migrate).await?;
    let policies = Policies::open(Arc::clone(&store), &args.policies)
        .await
        .map_err(|e| {
            anyhow!(
                "cannot load the policies in {}: {e}",
                args.policies.display()
            )
        })?;
    policies.set_auto_rollback(warden_server::rollback::AutoRollback {
        max_error_rate: (args.auto_rollback_error_rate > 0.0)
            .then_some(args.auto_rollback_error_rate),
        decisions: args.auto_rollback_decisions.max(1),
        window: args.auto_rollback_window,
    });
    let loaded: Vec<String> = policies
        .current()
        .versions()
        .map(|(tenant, version)| format!("{tenant}@{version}"))
        .collect();
    if loaded.is_empty() {
        tracing::warn!(
            dir = %args.policies.display(),
            "no policy loaded: every decision is a deny until one is added and reloaded"
        );
    }
    let audit_key = AuditKey::load(std::env::var(AUDIT_KEY_ENV).ok().as_deref(), &args.data_dir)
        .context("cannot set up the audit digest key")?;

    if store
        .keys()
        .await
        .context("cannot read the keys")?
        .is_empty()
    {
        let spec = KeySpec {
            tenant: SYSTEM_TENANT.to_owned(),
            roles: vec![Role::Operator],
            label: Some("created on first start".to_owned()),
            ..KeySpec::default()
        };
        let (issued, _) = keys::create(store.as_ref(), spec, "first-start", time::now_ms())
            .await
            .context("cannot create the first operator key")?;
        // On stdout, once, and never in the log.
        println!("operator key, shown only now: {}", issued.token);
    }

    let metrics = Arc::new(Metrics::default());
    let (audit, audit_task) = AuditWriter::start(Arc::clone(&store), Arc::clone(&metrics));
    let limits = Limits {
        body_bytes: args.max_body_bytes,
        request_timeout: args.request_timeout,
        max_in_flight: args.max_in_flight,
        key_cache_ttl: args.key_cache_ttl,
        body_timeout: args.body_timeout,
        body_budget_bytes: args.max_body_budget,
        auth_failure_limit: args.auth_failure_limit,
        header_timeout: args.header_timeout,
        shutdown_grace: args.shutdown_grace,
        max_waiters: args.max_waiters,
        snapshot_retention: args.snapshot_retention,
        proposal_rate_limit: args.proposal_rate_limit,
        proposal_replay_window: args.proposal_replay_window,
        proposal_solver_timeout: args.proposal_solver_timeout,
        observe_threshold: args.observe_threshold,
        observe_window: args.observe_window,
        inbox_idle_timeout: args.inbox_idle_timeout,
        inbox_session_lifetime: args.inbox_session_ttl,
        inbox_secure_cookies: args.inbox_secure_cookies,
        ..Limits::default()
    };
    let secret = std::env::var(WEBHOOK_SECRET_ENV)
        .ok()
        .filter(|s| !s.is_empty());
    if !args.approval_webhooks.is_empty() && secret.is_none() {
        anyhow::bail!("--approval-webhook needs a signing secret in {WEBHOOK_SECRET_ENV}");
    }
    if !args.proposal_reviewers.is_empty() && secret.is_none() {
        anyhow::bail!("--proposal-reviewer needs a signing secret in {WEBHOOK_SECRET_ENV}");
    }
    let reviewers = warden_server::reviewer::Reviewers::new(
        args.proposal_reviewers.into_iter().collect(),
        secret.clone().map(String::into_bytes),
        args.proposal_reviewer_timeout,
    )
    .map_err(anyhow::Error::msg)?;
    let webhooks = Webhooks::new(
        args.approval_webhooks.into_iter().collect(),
        secret.map(String::into_bytes),
    );
    let state = AppState::new(store, Arc::new(policies), audit, audit_key, metrics, limits)
        .with_webhooks(webhooks)
        .with_reviewers(reviewers);
    state
        .permits()
        .install(warden_server::permits::KeySource {
            env: std::env::var(warden_server::permits::PERMIT_KEY_ENV).ok(),
            data_dir: args.data_dir.clone(),
        })
        .context("cannot set up the permit signing keys")?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr().unwrap_or(args.listen);
    let metrics_listener = match args.metrics_listen {
        Some(at) => Some(
            tokio::net::TcpListener::bind(at)
                .await
                .with_context(|| format!("cannot listen on {at} for metrics"))?,
        ),
        None => None,
    };
    tracing::info!(
        %address,
        db = %db::display_url(&args.db.url),
        policies = %loaded.join(", "),
        "warden is serving"
    );
    match state.store().probe_write(time::now_ms()).await {
        Ok(setting) => tracing::info!(durability = %setting, "audit appends commit durably"),
        Err(e) => {
            tracing::warn!(error = %e, "the audit write probe failed; decisions will be denied until writes succeed")
        }
    }
    warden_server::serve(
        listener,
        metrics_listener,
        state,
        audit_task,
        shutdown_signal(),
    )
    .await
    .context("the server stopped")?;
    tracing::info!("stopped; every answered decision is in the audit log");
    Ok(Outcome::Ok)
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing in-flight requests and flushing the audit log");
}

/// Logs to stderr; `RUST_LOG` filters (default `info`).
fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
