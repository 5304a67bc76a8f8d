//! `warden test`: run policy test suites and report what failed and why.

use crate::{Outcome, files};
use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use warden_policy::testing::{CaseResult, Suite};
use warden_policy::{Policy, PolicyErrors};

/// Arguments of `warden test`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Test files (`*_test.yaml`) or folders to search for them.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Also write a Markdown report of the failing cases to this file.
    #[arg(long)]
    report: Option<PathBuf>,
}

struct SuiteRun {
    file: String,
    results: Vec<CaseResult>,
    /// Problems that kept the suite from running (bad policy or suite file).
    errors: Vec<String>,
}

/// Runs every suite; exit 1 when any case fails or any suite cannot run.
pub fn run(args: Args, json: bool) -> Result<Outcome> {
    let suites: Vec<PathBuf> = files::collect(&args.paths)?
        .into_iter()
        .filter(|p| files::is_test_file(p) || args.paths.contains(p))
        .collect();
    let mut runs = Vec::new();
    for path in &suites {
        runs.push(run_suite(path)?);
    }
    let passed: usize = runs
        .iter()
        .flat_map(|r| &r.results)
        .filter(|c| c.passed())
        .count();
    let failed: usize = runs
        .iter()
        .flat_map(|r| &r.results)
        .filter(|c| !c.passed())
        .count()
        + runs.iter().map(|r| r.errors.len()).sum::<usize>();

    let mut out = std::io::stdout().lock();
    if json {
        let cases: Vec<_> = runs
            .iter()
            .flat_map(|r| {
                r.results.iter().map(move |c| {
                    serde_json::json!({"file": r.file, "line": c.line, "name": c.name,
                        "passed": c.passed(), "failures": c.failures})
                })
            })
            .collect();
        let errors: Vec<_> = runs.iter().flat_map(|r| r.errors.iter()).collect();
        writeln!(
            out,
            "{}",
            serde_json::json!({"passed": passed, "failed": failed, "cases": cases, "errors": errors})
        )?;
    } else {
        for r in &runs {
            for e in &r.errors {
                writeln!(out, "ERROR {e}")?;
            }
            for c in r.results.iter().filter(|c| !c.passed()) {
                writeln!(out, "FAIL {}:{} {}", r.file, c.line, c.name)?;
                for f in &c.failures {
                    writeln!(out, "    {f}")?;
                }
            }
        }
        if suites.is_empty() {
            eprintln!("no *_test.yaml files found");
        }
        writeln!(out, "{passed} passed, {failed} failed")?;
    }
    if let Some(report) = &args.report {
        std::fs::write(report, markdown(&runs, passed, failed))
            .with_context(|| format!("cannot write `{}`", report.display()))?;
    }
    Ok(if failed == 0 && !suites.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Failed
    })
}

fn run_suite(path: &Path) -> Result<SuiteRun> {
    let file = path.display().to_string();
    let located = |errors: PolicyErrors, f: &str| -> Vec<String> {
        errors.iter().map(|e| format!("{f}:{e}")).collect()
    };
    let suite = match Suite::parse(&files::read(path)?) {
        Ok(s) => s,
        Err(errors) => {
            return Ok(SuiteRun {
                errors: located(errors, &file),
                file,
                results: Vec::new(),
            });
        }
    };
    let policy_path = path.parent().unwrap_or(Path::new(".")).join(&suite.policy);
    let policy_file = policy_path.display().to_string();
    let policy = match files::read(&policy_path).map(|s| Policy::parse(&s)) {
        Ok(Ok(p)) => p,
        Ok(Err(errors)) => {
            return Ok(SuiteRun {
                errors: located(errors, &policy_file),
                file,
                results: Vec::new(),
            });
        }
        Err(e) => {
            return Ok(SuiteRun {
                errors: vec![format!("{file}: {e:#}")],
                file,
                results: Vec::new(),
            });
        }
    };
    Ok(SuiteRun {
        results: suite.run(&policy),
        file,
        errors: Vec::new(),
    })
}

fn markdown(runs: &[SuiteRun], passed: usize, failed: usize) -> String {
    let mut out = String::from("# Policy test report\n\n");
    let _ = writeln!(out, "{passed} passed, {failed} failed\n");
    for r in runs {
        for e in &r.errors {
            let _ = writeln!(out, "- **could not run** `{}`: {e}", r.file);
        }
        for c in r.results.iter().filter(|c| !c.passed()) {
            let _ = writeln!(out, "## {} (`{}:{}`)\n", c.name, r.file, c.line);
            out.push_str("**Expected vs. what happened**\n\n");
            for f in &c.failures {
                let _ = writeln!(out, "- {f}");
            }
            let d = &c.decision;
            let _ = writeln!(
                out,
                "\n**Decision:** `{}` (policy {})\n",
                d.verdict, d.policy_version
            );
            out.push_str("**Rules that matched, and why**\n\n");
            if d.reasons.is_empty() {
                out.push_str("- none\n");
            }
            for reason in &d.reasons {
                let rule = reason.rule.as_ref().map_or("(policy)", |r| r.as_str());
                let _ = writeln!(
                    out,
                    "- `{rule}` ({}, {}): {}",
                    reason.effect.as_str(),
                    reason.code.as_str(),
                    reason.message
                );
            }
            if let Some(f) = &d.failure {
                let _ = writeln!(out, "\n**Evaluation error** in `{}`: {}", f.rule, f.detail);
            }
            out.push('\n');
        }
    }
    if failed == 0 {
        out.push_str("Every case passed.\n");
    }
    out
}
