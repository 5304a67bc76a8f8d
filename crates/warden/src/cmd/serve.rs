//! `warden serve`: the decision service. Opens the store (migrating SQLite, and PostgreSQL
//! only with `--migrate`), loads the policies, creates an admin key on first start, and
//! serves until SIGTERM or Ctrl-C, then drains requests and flushes the audit log.

use crate::db::{self, DbArgs, Migrate};
use crate::{Outcome, time};
use anyhow::{Context, Result, anyhow};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use warden_server::audit::{AUDIT_KEY_ENV, AuditKey, AuditWriter};
use warden_server::keys::{self, KeySpec, Role};
use warden_server::metrics::Metrics;
use warden_server::policies::{DEFAULT_TENANT, Policies};
use warden_server::{AppState, Limits};

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
    /// Folder for the server's own files (the audit digest key).
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
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
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
    let policies = Policies::load(&args.policies).map_err(|e| {
        anyhow!(
            "cannot load the policies in {}: {e}",
            args.policies.display()
        )
    })?;
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
            tenant: DEFAULT_TENANT.to_owned(),
            roles: vec![Role::Admin],
            label: Some("created on first start".to_owned()),
            ..KeySpec::default()
        };
        let (issued, record) = keys::create(store.as_ref(), spec, "first-start", time::now_ms())
            .await
            .context("cannot create the first admin key")?;
        // On stdout, once, and never in the log.
        println!(
            "admin key (tenant `{}`), shown only now: {}",
            record.tenant, issued.token
        );
    }

    let metrics = Arc::new(Metrics::default());
    let (audit, audit_task) = AuditWriter::start(Arc::clone(&store), Arc::clone(&metrics));
    let limits = Limits {
        body_bytes: args.max_body_bytes,
        request_timeout: args.request_timeout,
        max_in_flight: args.max_in_flight,
        ..Limits::default()
    };
    let state = AppState::new(store, Arc::new(policies), audit, audit_key, metrics, limits);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr().unwrap_or(args.listen);
    tracing::info!(
        %address,
        db = %db::display_url(&args.db.url),
        policies = %loaded.join(", "),
        "warden is serving"
    );
    warden_server::serve(listener, state, audit_task, shutdown_signal())
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
