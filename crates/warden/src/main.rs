//! The `warden` command line: a thin layer that parses arguments, calls the library crates
//! and maps the outcome to an exit code (0 success, 1 failed check or test, 2 usage or I/O).

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod cmd;
mod files;

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
}

/// What a command concluded; errors that stop a command are `anyhow` errors instead.
#[derive(Debug)]
pub enum Outcome {
    /// Everything passed.
    Ok,
    /// The command ran, and found problems (invalid policy, failing test).
    Failed,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(args) => cmd::check::run(args, cli.json),
        Command::Eval(args) => cmd::eval::run(args, cli.json),
        Command::Test(args) => cmd::test::run(args, cli.json),
    };
    match result {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::from(1),
        Err(e) => {
            // One line: the chain of contexts, outermost first.
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
