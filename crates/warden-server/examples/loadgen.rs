//! Load generator and bare-handler ceiling for the decision-service benchmark (`bench/load.sh`).
//!
//! `loadgen bare` serves `POST /v1/decisions` from a plain axum handler that reads the request
//! body and answers a fixed §4 decision: what the HTTP stack alone costs on this machine.
//! `loadgen durable` is the same handler made durable the simplest way: each request body is
//! appended as one row to a SQLite file (WAL, `synchronous=FULL`) by a group-commit writer
//! thread, and the answer is sent only after the commit that holds it. It is what any durable
//! service pays on this machine before doing any work of its own, so Warden on SQLite is
//! measured against it rather than against a handler that does no I/O.
//! `loadgen run` drives any such endpoint over N keep-alive HTTP/1.1 connections, one task per
//! connection on hyper's low-level client, and prints throughput and latency percentiles.
//!
//! Closed loop (no `--rate`): each connection sends its next request as soon as the previous
//! answer is read, which measures peak throughput. Open loop (`--rate R`): each connection
//! sends on a fixed schedule of R / N requests per second. When an answer comes back after
//! the connection's next request was due, that request's latency is measured from its
//! *intended* send time, so a stall counts against every request it delays (the
//! coordinated-omission correction of wrk2), which is what a p99 target needs. When the
//! connection was idle, latency starts at the real send: tokio's timer wakes up to ~1 ms
//! late, and that is the generator's delay, not the server's.
//!
//! The generator runs on a current-thread runtime by default: one core's worth of work at
//! most, no cross-thread wake-ups. On a 2-core machine it shares the CPU with the server it
//! measures, so absolute numbers are lower than on a dedicated client; the bare handler and
//! Warden pay the same tax, which keeps their ratio meaningful.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use axum::http::{HeaderValue, Method, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use clap::{Args, Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rusqlite::{Connection, TransactionBehavior};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// The placeholder in a body file replaced by a per-request counter.
const COUNTER_PLACEHOLDER: &str = "{{n}}";

/// Exit status of a run that measured but saw non-2xx answers or connection errors.
const EXIT_RUN_HAD_FAILURES: i32 = 3;

/// What the bare handler answers: Warden's own answer to the benchmark's action (an allow with
/// a `mode: draft` obligation and its two reasons, as `warden eval` prints it), ~550 bytes, so
/// both servers write the same bytes.
const BARE_DECISION: &str = concat!(
    r#"{"decision_id":"01JD8Z9R6W3K2Q5N7X4T0M1B8C","effect":"allow","reasons":["#,
    r#"{"rule":"support-may-act","effect":"allow","code":"policy_rule","#,
    r#""message":"support agents may work tickets, email customers and update the CRM"},"#,
    r#"{"rule":"tier-draft","effect":"modify","code":"policy_rule","#,
    r#""message":"agent support-bot is at tier draft, so this write must run in mode draft"}],"#,
    r#""confidence":{"initial":0.91,"adjusted":0.91},"obligations":{"mode":"draft"},"#,
    r#""approval":null,"permit":null,"policy_version":"1.0.0","rule_missing":null,"#,
    r#""next_steps":[],"eval_ns":2100}"#,
);

#[derive(Debug, Parser)]
#[command(
    about = "Load generator for Warden's decision service, and the bare-handler ceiling",
    after_help = "Examples:\n  loadgen bare --listen 127.0.0.1:18471\n  \
                  loadgen durable --listen 127.0.0.1:18474 --db /tmp/durable.db\n  \
                  loadgen run --url http://127.0.0.1:18471/v1/decisions --body action.json \\\n    \
                  --connections 64 --duration 10s --warmup 2s --rate 20000 --json"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve `POST /v1/decisions` with a fixed JSON decision: the HTTP stack's ceiling.
    Bare(BareArgs),
    /// The bare handler, answering only after the body is committed to a SQLite file.
    Durable(DurableArgs),
    /// Send POST requests over keep-alive connections and report rps and latency.
    Run(RunArgs),
}

#[derive(Debug, Args)]
struct BareArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18471")]
    listen: std::net::SocketAddr,
    /// Worker threads of the server's multi-thread runtime (default: one per core, as tokio
    /// does for `warden serve`).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Debug, Args)]
struct DurableArgs {
    #[command(flatten)]
    server: BareArgs,
    /// The SQLite file the bodies are appended to (created if missing).
    #[arg(long)]
    db: PathBuf,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The endpoint, `http://host:port/path`.
    #[arg(long)]
    url: String,
    /// API key sent as `Authorization: Bearer KEY`.
    #[arg(long, env = "LOADGEN_KEY", hide_env_values = true)]
    key: Option<String>,
    /// JSON request body; every `{{n}}` in it becomes a counter unique to the request.
    #[arg(long)]
    body: PathBuf,
    /// Concurrent keep-alive connections, one request in flight on each.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// How long to measure, after the warmup (e.g. `10s`, `500ms`).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// How long to send before measuring; those requests are not counted in `ok` or latency.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Total requests per second over all connections (open loop). Without it, closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Generator threads: 1 is a current-thread runtime, more a multi-thread one.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Also print the result as one JSON object on the last line.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Bare(args) => serve_bare(&args, None),
        Command::Durable(args) => {
            let queue = start_writer(&args.db)?;
            serve_bare(&args.server, Some(queue))
        }
        Command::Run(args) => {
            let report = run(&args)?;
            println!("{}", report.human());
            if let Some(rate) = report.rate
                && report.rps < 0.95 * rate
            {
                eprintln!(
                    "loadgen: fell behind the schedule, {:.0}/s achieved of {rate:.0}/s: the \
                     server (or a machine busy with other work) did not keep up, and the \
                     latencies include that backlog",
                    report.rps
                );
            }
            if args.json {
                println!("{}", report.json());
            }
            if report.non2xx > 0 || report.errors > 0 {
                eprintln!(
                    "loadgen: the run had failures: {} non-2xx answers, {} connection errors; \
                     its numbers do not describe a healthy server",
                    report.non2xx, report.errors
                );
                std::process::exit(EXIT_RUN_HAD_FAILURES);
            }
            Ok(())
        }
    }
}

/// `loadgen bare` (no queue) or `loadgen durable` (answers after the writer commits): a plain
/// axum server, set up as `warden serve` is (TCP_NODELAY on).
fn serve_bare(args: &BareArgs, queue: Option<mpsc::UnboundedSender<Append>>) -> anyhow::Result<()> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        builder.worker_threads(threads);
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(async {
        let (app, what) = match queue {
            None => (
                axum::Router::new().route("/v1/decisions", post(bare_decision)),
                "bare",
            ),
            Some(queue) => (
                axum::Router::new()
                    .route("/v1/decisions", post(durable_decision))
                    .with_state(queue),
                "durable",
            ),
        };
        let app = app.route("/healthz", get(|| async { "ok" }));
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on `{}`", args.listen))?;
        let listener = listener.tap_io(|stream| {
            let _ = stream.set_nodelay(true);
        });
        eprintln!("loadgen {what}: listening on {}", args.listen);
        axum::serve(listener, app)
            .await
            .context("the bare server stopped")
    })
}

/// Reads the whole request body, as a real handler must, and answers the fixed decision.
async fn bare_decision(body: Bytes) -> ([(axum::http::HeaderName, &'static str); 1], &'static str) {
    // Touch the body so reading it cannot be optimised into skipping it.
    std::hint::black_box(body.len());
    ([(CONTENT_TYPE, "application/json")], BARE_DECISION)
}

/// A body waiting for the writer, and where to say whether its commit succeeded.
struct Append {
    body: Bytes,
    done: oneshot::Sender<bool>,
}

/// At most this many bodies per transaction, so one commit's latency stays bounded.
const MAX_BATCH: usize = 1024;

/// Appends the body, waits for its commit, then answers what the bare handler answers; a
/// failed commit is a 503, as Warden answers when its audit log cannot write.
async fn durable_decision(
    State(queue): State<mpsc::UnboundedSender<Append>>,
    body: Bytes,
) -> Response {
    let (done, committed) = oneshot::channel();
    let queued = queue.send(Append { body, done }).is_ok();
    if queued && committed.await == Ok(true) {
        ([(CONTENT_TYPE, "application/json")], BARE_DECISION).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "the commit failed").into_response()
    }
}

/// Opens (creating) the SQLite file as Warden opens its own (WAL, `synchronous=FULL`, so a
/// commit is on disk when it returns) and starts the writer thread on it.
fn start_writer(path: &std::path::Path) -> anyhow::Result<mpsc::UnboundedSender<Append>> {
    let conn = Connection::open(path)
        .with_context(|| format!("cannot open the SQLite file `{}`", path.display()))?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
         CREATE TABLE IF NOT EXISTS requests (seq INTEGER PRIMARY KEY, body BLOB NOT NULL);",
    )
    .context("cannot set up the SQLite file")?;
    let (queue, bodies) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("loadgen-durable-writer".into())
        .spawn(move || write_batches(conn, bodies))
        .context("cannot start the writer thread")?;
    Ok(queue)
}

/// Group commit: takes whatever is queued (at least one body), writes it in one transaction,
/// and wakes every request in it; requests that arrive meanwhile form the next batch.
fn write_batches(mut conn: Connection, mut bodies: mpsc::UnboundedReceiver<Append>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = bodies.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match bodies.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let committed = match commit(&mut conn, &batch) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("loadgen durable: a commit failed: {e}");
                false
            }
        };
        for append in batch.drain(..) {
            // A request that timed out has nobody to tell.
            let _ = append.done.send(committed);
        }
    }
}

fn commit(conn: &mut Connection, batch: &[Append]) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut insert = tx.prepare_cached("INSERT INTO requests (body) VALUES (?1)")?;
        for append in batch {
            insert.execute([append.body.as_ref()])?;
        }
    }
    tx.commit()
}

/// Everything a connection task needs, shared read-only.
struct Target {
    addr: String,
    host: HeaderValue,
    path: Uri,
    auth: Option<HeaderValue>,
    /// The body split at each `{{n}}`; one part means a fixed body.
    body_parts: Vec<Bytes>,
    counter: AtomicU64,
}

impl Target {
    fn new(args: &RunArgs) -> anyhow::Result<Self> {
        let uri: Uri = args
            .url
            .parse()
            .with_context(|| format!("invalid url `{}`", args.url))?;
        if uri.scheme_str() != Some("http") {
            bail!("url `{}` must start with http:// (no TLS here)", args.url);
        }
        let authority = uri.authority().context("the url has no host")?;
        let port = authority.port_u16().unwrap_or(80);
        let addr = format!("{}:{port}", authority.host());
        let host = HeaderValue::from_str(authority.as_str()).context("invalid host in url")?;
        let path: Uri = uri.path_and_query().map_or("/", |p| p.as_str()).parse()?;
        let auth = args
            .key
            .as_deref()
            .map(|key| HeaderValue::from_str(&format!("Bearer {key}")))
            .transpose()
            .context("the key is not a valid header value")?;
        let text = std::fs::read_to_string(&args.body)
            .with_context(|| format!("cannot read body file `{}`", args.body.display()))?;
        let body_parts = text
            .split(COUNTER_PLACEHOLDER)
            .map(|part| Bytes::copy_from_slice(part.as_bytes()))
            .collect();
        Ok(Self {
            addr,
            host,
            path,
            auth,
            body_parts,
            counter: AtomicU64::new(0),
        })
    }

    fn request(&self) -> anyhow::Result<Request<Full<Bytes>>> {
        let body = match self.body_parts.as_slice() {
            [fixed] => fixed.clone(),
            parts => {
                let n = self.counter.fetch_add(1, Ordering::Relaxed).to_string();
                let mut joined =
                    Vec::with_capacity(parts.iter().map(Bytes::len).sum::<usize>() + 32);
                for (i, part) in parts.iter().enumerate() {
                    if i > 0 {
                        joined.extend_from_slice(n.as_bytes());
                    }
                    joined.extend_from_slice(part);
                }
                Bytes::from(joined)
            }
        };
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.path.clone())
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(auth) = &self.auth {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        Ok(request.body(Full::new(body))?)
    }
}

/// When a connection sends: as fast as it can, or every `interval` from `first`.
#[derive(Clone, Copy)]
enum Schedule {
    Closed,
    Open { first: Instant, interval: Duration },
}

/// What one connection saw.
#[derive(Default)]
struct ConnStats {
    /// Latency of each 2xx answer to a request due in the measured window, in µs.
    latencies_us: Vec<u32>,
    /// Answers with another status, warmup included: a failure counts whenever it happens.
    non2xx: u64,
    /// Failed connects, sends and reads (each followed by a new connection), warmup included.
    errors: u64,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: &str) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // The connection future drives the socket; it ends when the sender is dropped.
    tokio::spawn(async move {
        let _closed = connection.await;
    });
    Ok(sender)
}

/// One request on `sender`; returns whether the status was 2xx once the body is read.
async fn exchange(sender: &mut Sender, target: &Target) -> anyhow::Result<bool> {
    let request = target.request()?;
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let ok = response.status().is_success();
    response.into_body().collect().await?;
    Ok(ok)
}

/// One connection's loop: keep-alive, one request in flight, reconnect after an error.
async fn connection(
    target: Arc<Target>,
    schedule: Schedule,
    measure_from: Instant,
    end: Instant,
) -> ConnStats {
    let mut stats = ConnStats::default();
    let mut sender: Option<Sender> = None;
    let mut next = 0u32;
    loop {
        // `intended` places the request in the warmup or the measured window; `clock` is
        // where its latency starts.
        let (intended, clock) = match schedule {
            Schedule::Closed => {
                let now = Instant::now();
                (now, now)
            }
            Schedule::Open { first, interval } => {
                let at = first + interval * next;
                next += 1;
                if Instant::now() >= at {
                    // The previous answer came after this request was due: the server is
                    // behind, and the wait counts against this request (coordinated omission).
                    (at, at)
                } else {
                    // The connection was idle. Tokio's timer fires up to ~1 ms after `at`;
                    // that lateness is the generator's, so the clock starts at the real send.
                    tokio::time::sleep_until(at).await;
                    (at, Instant::now())
                }
            }
        };
        // Stop at the end of the run even when an overloaded server left us behind schedule.
        if intended >= end || Instant::now() >= end {
            break;
        }
        let live = match sender.take() {
            Some(live) => live,
            None => match connect(&target.addr).await {
                Ok(fresh) => fresh,
                Err(_) => {
                    stats.errors += 1;
                    // A refused connection fails in microseconds; don't spin on it.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let mut live = live;
        match exchange(&mut live, &target).await {
            Ok(true) => {
                if intended >= measure_from {
                    let micros = clock.elapsed().as_micros();
                    stats
                        .latencies_us
                        .push(u32::try_from(micros).unwrap_or(u32::MAX));
                }
                sender = Some(live);
            }
            Ok(false) => {
                stats.non2xx += 1;
                sender = Some(live);
            }
            Err(_) => stats.errors += 1,
        }
    }
    stats
}

/// The result of one run.
struct Report {
    rate: Option<f64>,
    connections: usize,
    seconds: f64,
    rps: f64,
    p50: u32,
    p90: u32,
    p99: u32,
    p999: u32,
    max: u32,
    ok: u64,
    non2xx: u64,
    errors: u64,
}

impl Report {
    fn human(&self) -> String {
        let mode = match self.rate {
            Some(rate) => format!("open loop at {rate:.0}/s"),
            None => "closed loop".to_owned(),
        };
        format!(
            "rps={:.0} p50={}µs p90={}µs p99={}µs p99.9={}µs max={}µs ok={} non2xx={} errors={} \
             ({mode}, {} connections, {:.1}s measured)",
            self.rps,
            self.p50,
            self.p90,
            self.p99,
            self.p999,
            self.max,
            self.ok,
            self.non2xx,
            self.errors,
            self.connections,
            self.seconds
        )
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "mode": if self.rate.is_some() { "open" } else { "closed" },
            "target_rate": self.rate,
            "connections": self.connections,
            "seconds": self.seconds,
            "rps": self.rps,
            "p50_us": self.p50,
            "p90_us": self.p90,
            "p99_us": self.p99,
            "p999_us": self.p999,
            "max_us": self.max,
            "ok": self.ok,
            "non2xx": self.non2xx,
            "errors": self.errors,
        })
    }
}

/// Nearest-rank percentile of sorted samples; 0 when there are none.
fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `loadgen run`: warm up, measure, merge every connection's samples.
fn run(args: &RunArgs) -> anyhow::Result<Report> {
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if let Some(rate) = args.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        bail!("--rate must be a positive number of requests per second, not `{rate}`");
    }
    let target = Arc::new(Target::new(args)?);
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    }
    .context("cannot start the tokio runtime")?;

    runtime.block_on(async {
        let start = Instant::now();
        let measure_from = start + args.warmup;
        let end = measure_from + args.duration;
        let tasks: Vec<_> = (0..args.connections)
            .map(|i| {
                let schedule = match args.rate {
                    None => Schedule::Closed,
                    Some(rate) => {
                        let interval = Duration::from_secs_f64(args.connections as f64 / rate);
                        // Stagger the connections evenly over one interval.
                        let offset = interval.mul_f64(i as f64 / args.connections as f64);
                        Schedule::Open {
                            first: start + offset,
                            interval,
                        }
                    }
                };
                tokio::spawn(connection(Arc::clone(&target), schedule, measure_from, end))
            })
            .collect();
        let mut latencies = Vec::new();
        let (mut non2xx, mut errors) = (0, 0);
        for task in tasks {
            let stats = task.await.context("a connection task failed")?;
            latencies.extend_from_slice(&stats.latencies_us);
            non2xx += stats.non2xx;
            errors += stats.errors;
        }
        // The last answers may arrive a little after `end`; count the time they took.
        let seconds = measure_from.elapsed().as_secs_f64();
        latencies.sort_unstable();
        let ok = latencies.len() as u64;
        Ok(Report {
            rate: args.rate,
            connections: args.connections,
            seconds,
            rps: ok as f64 / seconds,
            p50: percentile(&latencies, 50.0),
            p90: percentile(&latencies, 90.0),
            p99: percentile(&latencies, 99.0),
            p999: percentile(&latencies, 99.9),
            max: latencies.last().copied().unwrap_or(0),
            ok,
            non2xx,
            errors,
        })
    })
}
