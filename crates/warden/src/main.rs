//! The `warden` command line: a thin layer that parses arguments, calls the library crates
//! and maps the outcome to an exit code (0 success, 1 failed check, test or verification,
//! 2 usage, I/O or database error).

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod cmd;
mod db;

// glibc's allocator spent a third of the server's CPU under load (many threads freeing
// what others allocated); mimalloc is built for exactly that. See docs/BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
mod files;
mod time;

#[derive(Debug, Parser)]
#[command(
    name = "warden",
    version,
    about = "Policy and guardrails for AI agents"
)]
struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate policy files or folders; errors print as file:line:col: message.
    #[command(after_help = "Example:\n  warden check examples/nexus")]
    Check(cmd::check::Args),
    /// Print the decision for one action, with no server and no store.
    #[command(
        after_help = "Example:\n  warden eval --policy examples/nexus/nexus.yaml --action examples/nexus/actions/resolve.json"
    )]
    Eval(cmd::eval::Args),
    /// Run *_test.yaml cases; ends with 'N passed, M failed'.
    #[command(after_help = "Example:\n  warden test examples/nexus --report report.md")]
    Test(cmd::test::Args),
    /// Run the decision service.
    #[command(
        after_help = "Examples:\n  warden serve --policies examples/nexus\n  warden serve --db postgres://warden@db/warden --migrate --listen 0.0.0.0:8080"
    )]
    // Boxed: its many flags would make every other command as large.
    Serve(Box<cmd::serve::Args>),
    /// Create, list and revoke API keys in the database.
    #[command(
        after_help = "Example:\n  KEY=$(warden keys create --role admin --tenant acme | head -1)"
    )]
    Keys(cmd::keys::Args),
    /// Apply the pending database migrations, or print their SQL.
    #[command(
        after_help = "Examples:\n  warden migrate --db postgres://warden@db/warden\n  warden migrate --print --db postgres://db/warden > schema.sql"
    )]
    Migrate(cmd::migrate::Args),
    /// Query, follow, verify, export and purge the audit log in the database.
    #[command(after_help = "Example:\n  warden audit query --effect deny --since 1h")]
    Audit(cmd::audit::Args),
    /// List, show, approve and reject approvals and questions through a running server.
    #[command(
        after_help = "Examples:\n  WARDEN_KEY=wdn_… warden approvals --server https://warden.internal list\n  WARDEN_KEY=wdn_… warden approvals approve 01JD8Z9R6W3K2Q5N7X4T0M1B8C --reason 'checked'"
    )]
    Approvals(cmd::approvals::Args),
    /// Publish, list, show, diff and roll back policy versions through a running server.
    #[command(
        after_help = "Examples:\n  WARDEN_KEY=wdn_… warden policy --server https://warden.internal publish acme.yaml --comment 'refunds need approval'\n  WARDEN_KEY=wdn_… warden policy --tenant acme diff 3"
    )]
    Policy(cmd::policy::Args),
    /// List, show, approve and reject agents' proposed policy changes through a running
    /// server.
    #[command(
        after_help = "Examples:\n  WARDEN_KEY=wdn_… warden proposals list\n  WARDEN_KEY=wdn_… warden proposals show 01JD8Z9R6W3K2Q5N7X4T0M1B8C\n  WARDEN_KEY=wdn_… warden proposals approve 01JD8Z9R6W3K2Q5N7X4T0M1B8C"
    )]
    Proposals(cmd::proposals::Args),
}

/// What a command concluded; errors that stop a command are `anyhow` errors instead.
#[derive(Debug)]
pub enum Outcome {
    /// Everything passed.
    Ok,
    /// The command ran, and found problems (invalid policy, failing test, broken audit
    /// chain, no such key to revoke).
    Failed,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(args) => cmd::check::run(args, cli.json),
        Command::Eval(args) => cmd::eval::run(args, cli.json),
        Command::Test(args) => cmd::test::run(args, cli.json),
        Command::Serve(args) => cmd::serve::run(*args, cli.json),
        Command::Keys(args) => cmd::keys::run(args, cli.json),
        Command::Migrate(args) => cmd::migrate::run(args, cli.json),
        Command::Audit(args) => cmd::audit::run(args, cli.json),
        Command::Approvals(args) => cmd::approvals::run(args, cli.json),
        Command::Policy(args) => cmd::policy::run(args, cli.json),
        Command::Proposals(args) => cmd::proposals::run(args, cli.json),
    };
    match result {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::from(1),
        // The reader went away (`warden audit query | head`): it has what it wanted, so
        // this is how the command ends, not a failure.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the chain of contexts, outermost first.
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
