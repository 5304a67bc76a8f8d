//! The Python SDK (`clients/python`) under `cargo test`: its pytest suite against this
//! build's `warden` binary, and its formatting, lints and `mypy --strict` types.
//!
//! The suite needs Python packages pinned in `clients/python/requirements-test.txt`, which
//! `.ci/run` installs. Without them a test prints `SKIPPED` loudly on stderr and passes, so
//! `cargo test` still works on a machine without them; with `CI` set, a missing package
//! fails the test, so CI cannot go green by not checking (as in `conformance.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_warden");
const SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../clients/python");
const INSTALL: &str =
    "python3 -m pip install -r clients/python/requirements-test.txt -e clients/python";

/// The suite takes ~15 s on the 2-core CI machine; this is room for a busy one, not a goal.
const SUITE_TIMEOUT: Duration = Duration::from_secs(300);
const STATIC_TIMEOUT: Duration = Duration::from_secs(300);

#[test]
fn the_python_sdk_suite_passes_against_the_real_binary() {
    if !packages_available() {
        return;
    }
    let out = common::run_with_timeout(
        python()
            .args([
                "-m",
                "pytest",
                "tests",
                "-q",
                "-p",
                "no:cacheprovider",
                "--durations=5",
            ])
            .env("WARDEN_BIN", BIN),
        SUITE_TIMEOUT,
    );
    // pytest exits 5 when it collected no test: that is a failure here too.
    assert_eq!(
        out.status.code(),
        Some(0),
        "the Python SDK's tests failed:\n{}",
        report(&out)
    );
    println!("{}", report(&out));
}

/// The source and the tests: formatted (`ruff format`), linted (`ruff check`) and typed
/// (`mypy --strict`), with the settings of `clients/python/pyproject.toml`.
#[test]
fn the_python_sdk_is_formatted_linted_and_mypy_strict_clean() {
    if !packages_available() {
        return;
    }
    let checks: [&[&str]; 3] = [
        &["-m", "ruff", "format", "--check", "src", "tests"],
        &["-m", "ruff", "check", "src", "tests"],
        &["-m", "mypy", "--strict", "src", "tests"],
    ];
    for args in checks {
        let out = common::run_with_timeout(python().args(args), STATIC_TIMEOUT);
        assert_eq!(
            out.status.code(),
            Some(0),
            "`python3 {}` finds problems in clients/python:\n{}",
            args.join(" "),
            report(&out)
        );
    }
}

/// `python3` (or `PYTHON`) in `clients/python`, importing the SDK from its source tree
/// first, so the tests check this checkout even where an older copy is installed.
fn python() -> Command {
    let sdk = Path::new(SDK);
    let mut path = vec![sdk.join("src")];
    if let Some(existing) = std::env::var_os("PYTHONPATH") {
        path.extend(std::env::split_paths(&existing));
    }
    let mut command = Command::new(interpreter());
    command
        .current_dir(sdk)
        .env("PYTHONPATH", std::env::join_paths(path).unwrap())
        .env("PYTHONDONTWRITEBYTECODE", "1");
    command
}

fn interpreter() -> PathBuf {
    std::env::var_os("PYTHON").map_or_else(|| PathBuf::from("python3"), PathBuf::from)
}

/// Whether the suite's packages import; if not, skips loudly, or fails when `CI` is set.
fn packages_available() -> bool {
    let probe = "import anyio, cryptography, httpx, mypy, pydantic, pytest, ruff";
    let ok = Command::new(interpreter())
        .args(["-c", probe])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok || common::missing_tools(
        &format!(
            "the Python SDK's test packages for `{}`",
            interpreter().display()
        ),
        INSTALL,
    )
}

fn report(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
