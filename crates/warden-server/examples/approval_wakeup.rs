//! Approval wake-up latency: the time from an approve call returning to the waiter's
//! long-poll answering, over real HTTP.
//!
//! One replica on a SQLite file (the waiter is woken in process), or two replicas on one
//! PostgreSQL database (the waiter on replica A, the approval made through replica B, the
//! wake-up carried by `LISTEN/NOTIFY`). Each round asks for a decision that requires
//! approval, opens a waiter on its `wait_url`, lets it register, approves, and records
//! `waiter answered - approve returned` (0 when the waiter answered first). Prints the
//! median, p90, p99 and max over the rounds.
//!
//! ```text
//! cargo run --release -p warden-server --example approval_wakeup -- sqlite 300
//! cargo run --release -p warden-server --example approval_wakeup -- postgres://postgres@127.0.0.1/test 300
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use warden_server::audit::{AuditKey, AuditWriter};
use warden_server::keys::{self, KeySpec, Role};
use warden_server::metrics::Metrics;
use warden_server::policies::Policies;
use warden_server::{AppState, Limits};
use warden_store::Store;

const POLICY: &str = "version: 1.0.0\ndefault: deny\nrules:\n  - id: legal\n    actions: [ticket.escalate]\n    effect: require_approval\n    approval: {approvers: [legal]}\n";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let db = args.next().unwrap_or_else(|| "sqlite".to_owned());
    let rounds: usize = args.next().map_or(Ok(300), |n| n.parse())?;
    let dir = tempfile::tempdir()?;
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies)?;
    std::fs::write(policies.join("default.yaml"), POLICY)?;

    let (first, second): (Arc<dyn Store>, Arc<dyn Store>) = if db == "sqlite" {
        let path = dir.path().join("warden.db").display().to_string();
        let store = warden_store::open(&path).await?;
        (Arc::clone(&store), store)
    } else if db.starts_with("postgres") {
        let schema = format!(
            "bench_{}",
            warden_server::ids::random_base32(10).to_lowercase()
        );
        (
            warden_store::open_postgres_in_schema(&db, &schema).await?,
            warden_store::open_postgres_in_schema(&db, &schema).await?,
        )
    } else {
        bail!("the first argument is `sqlite` or a postgres:// url");
    };
    first.migrate().await?;
    let a = start(Arc::clone(&first), &policies).await?;
    let b = if Arc::ptr_eq(&first, &second) {
        a
    } else {
        start(second, &policies).await?
    };
    let controller = key(&first, vec![Role::Controller], None, vec![]).await?;
    let approver = key(
        &first,
        vec![Role::Approver],
        Some("alice"),
        vec!["legal".into()],
    )
    .await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(8)
        .build()?;

    let mut latencies = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let decision: Value = client
            .post(format!("http://{a}/v1/decisions"))
            .bearer_auth(&controller)
            .json(&json!({"type": "ticket.escalate"}))
            .send()
            .await?
            .json()
            .await?;
        let wait_url = decision["approval"]["wait_url"]
            .as_str()
            .context("no wait_url")?
            .to_owned();
        let id = decision["approval"]["id"]
            .as_str()
            .context("no approval id")?
            .to_owned();
        let waiter = {
            let (client, controller) = (client.clone(), controller.clone());
            tokio::spawn(async move {
                let answer = client
                    .get(format!("http://{a}{wait_url}?timeout=30"))
                    .bearer_auth(&controller)
                    .send()
                    .await?;
                let body: Value = answer.json().await?;
                Ok::<_, reqwest::Error>((Instant::now(), body))
            })
        };
        // Let the waiter register and read the pending state before the approval.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let approved = client
            .post(format!("http://{b}/v1/approvals/{id}/approve"))
            .bearer_auth(&approver)
            .json(&json!({}))
            .send()
            .await?;
        if !approved.status().is_success() {
            bail!("approve answered {}", approved.status());
        }
        let _ = approved.bytes().await?;
        let returned = Instant::now();
        let (woke, body) = waiter.await??;
        if body["status"] != "approved" {
            bail!("the waiter answered {body}");
        }
        latencies.push(woke.saturating_duration_since(returned));
    }
    latencies.sort();
    let at = |q: f64| {
        latencies[((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{} ({}): {} approvals, wake-up median {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        if db == "sqlite" {
            "sqlite, one replica"
        } else {
            "postgres, two replicas"
        },
        if cfg!(debug_assertions) {
            "debug build"
        } else {
            "release build"
        },
        latencies.len(),
        ms(at(0.5)),
        ms(at(0.9)),
        ms(at(0.99)),
        ms(at(1.0)),
    );
    Ok(())
}

/// A key of tenant `acme`.
async fn key(
    store: &Arc<dyn Store>,
    roles: Vec<Role>,
    user: Option<&str>,
    groups: Vec<String>,
) -> anyhow::Result<String> {
    let spec = KeySpec {
        tenant: "acme".into(),
        roles,
        user: user.map(str::to_owned),
        groups,
        ..KeySpec::default()
    };
    let (issued, _) = keys::create(store.as_ref(), spec, "bench", 1).await?;
    Ok(issued.token)
}

/// Serves a replica over `store` on a free port.
async fn start(store: Arc<dyn Store>, policies: &std::path::Path) -> anyhow::Result<SocketAddr> {
    let policies = Arc::new(Policies::open(Arc::clone(&store), policies).await?);
    let metrics = Arc::new(Metrics::default());
    let (audit, task) = AuditWriter::start(Arc::clone(&store), Arc::clone(&metrics));
    let key = AuditKey::from_bytes(&[7u8; 32])?;
    let state = AppState::new(store, policies, audit, key, metrics, Limits::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(warden_server::serve(
        listener,
        None,
        state,
        task,
        std::future::pending(),
    ));
    Ok(addr)
}
