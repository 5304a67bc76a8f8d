//! `warden check`: validate policy files (and test suites) and print every problem.

use crate::{Outcome, files};
use anyhow::Result;
use std::io::Write;
use std::path::PathBuf;
use warden_policy::testing::Suite;
use warden_policy::{Policy, PolicyErrors};

/// Arguments of `warden check`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Policy files or folders (folders are searched for .yaml and .yml files; name a JSON
    /// policy explicitly).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

/// Checks every file; exit 1 when any has a problem.
pub fn run(args: Args, json: bool) -> Result<Outcome> {
    let paths = files::collect(&args.paths)?;
    let mut problems = Vec::new();
    for path in &paths {
        let source = files::read(path)?;
        // Test suites sit beside policies; check them as what they are.
        let result: Result<(), PolicyErrors> = if files::is_test_file(path) {
            Suite::parse(&source).map(|_| ())
        } else {
            Policy::parse(&source).map(|_| ())
        };
        if let Err(errors) = result {
            for e in errors.iter() {
                problems.push((path.display().to_string(), e.clone()));
            }
        }
    }
    let mut out = std::io::stdout().lock();
    if json {
        let list: Vec<_> = problems
            .iter()
            .map(|(file, e)| serde_json::json!({"file": file, "line": e.line, "column": e.column, "message": e.message}))
            .collect();
        writeln!(
            out,
            "{}",
            serde_json::json!({"files": paths.len(), "errors": list})
        )?;
    } else {
        for (file, e) in &problems {
            writeln!(out, "{file}:{}:{}: {}", e.line, e.column, e.message)?;
        }
        eprintln!("{} files checked, {} errors", paths.len(), problems.len());
    }
    Ok(if problems.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Failed
    })
}
