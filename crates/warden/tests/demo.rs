//! The Nexus demo (`examples/nexus/demo.py`) as a test, so `cargo test --workspace` runs it:
//! the demo starts this build's `warden serve` itself, narrates every step and exits
//! non-zero naming the step whose outcome differed from its narration.
//!
//! The demo is Python on the SDK in `clients/python` (imported from its source folder, so
//! no install is needed beyond the SDK's dependencies). Without those dependencies the test
//! prints `SKIPPED` loudly on stderr and passes, so `cargo test` still works on a machine
//! without them; with `CI` set, a missing dependency fails it, as in `conformance.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_warden");
const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
/// What the SDK imports besides the standard library (clients/python/pyproject.toml).
const SDK_DEPENDENCIES: &str = "import anyio, httpx, pydantic, cryptography";
const INSTALL: &str = "python3 -m pip install -e clients/python";
/// The demo takes a few seconds; a debug build on a busy 2-core machine, much longer.
const TIMEOUT: Duration = Duration::from_secs(300);

#[test]
fn the_nexus_demo_runs_and_every_step_holds() {
    let root = Path::new(ROOT);
    let pythonpath = pythonpath(&root.join("clients/python/src"));
    if !dependencies_available(&pythonpath) {
        return;
    }
    let mut command = Command::new(python());
    command
        .arg(root.join("examples/nexus/demo.py"))
        .args(["--warden", BIN])
        .env("PYTHONPATH", &pythonpath)
        .current_dir(root);
    // The demo clears the `WARDEN_*` variables for the processes it starts; the SDK reads
    // `WARDEN_URL` / `WARDEN_KEY` only when not given them, which the demo always does.
    let started = Instant::now();
    let out = common::run_with_timeout(&mut command, TIMEOUT);
    let (status, stdout, stderr) = (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    let shown = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        status == Some(0),
        "the demo failed (exit {status:?}) after {:?}\n{shown}",
        started.elapsed()
    );
    assert!(
        stdout.contains("every step held"),
        "the demo exited 0 without its closing line\n{shown}"
    );
    // The story, for `cargo test -p warden --test demo -- --nocapture`.
    println!("{stdout}");
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// The SDK's source folder first, then whatever the environment had.
fn pythonpath(sdk: &Path) -> OsString {
    let mut paths = vec![PathBuf::from(sdk)];
    if let Some(old) = std::env::var_os("PYTHONPATH") {
        paths.extend(std::env::split_paths(&old));
    }
    std::env::join_paths(paths).unwrap()
}

/// Whether the SDK's dependencies import; if not, skips loudly, or fails when `CI` is set.
fn dependencies_available(pythonpath: &OsString) -> bool {
    let ok = Command::new(python())
        .args(["-c", SDK_DEPENDENCIES])
        .env("PYTHONPATH", pythonpath)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok || common::missing_tools(
        &format!("the Python SDK's dependencies for `{}`", python()),
        INSTALL,
    )
}
