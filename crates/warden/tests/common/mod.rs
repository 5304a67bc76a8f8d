//! Helpers shared by the binary's integration tests (`mod common;` in each).
// Each test binary uses part of them.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A port nothing listens on right now.
pub fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Whether `GET /healthz` answers 200; a plain socket, so starting needs no runtime.
pub fn healthy(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = stream.set_write_timeout(Some(Duration::from_millis(500)));
    let request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    if stream.write_all(request).is_err() {
        return false;
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    response.starts_with(b"HTTP/1.1 200")
}

/// `prefix` made unique across processes, runs and calls: a PostgreSQL schema or database
/// name of lowercase letters, digits and underscores.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}_{}_{nanos}_{n}", std::process::id())
}

/// Whether `CI` is set: there a test whose tools are missing fails instead of skipping.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// A test that cannot run because `missing` is not installed: fails under `CI` (a missing
/// tool must not pass), else says loudly on stderr that it checked nothing. Returns
/// `false`, for `if !available() { return; }`.
pub fn missing_tools(missing: &str, install: &str) -> bool {
    assert!(
        !ci(),
        "{missing} is not installed, and CI is set: a test that does not run must not pass. \
         Install it with `{install}` (`.ci/run` does)."
    );
    // Past the harness's capture, which only catches the print macros.
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!!!!! SKIPPED: {missing} is not installed; this test checked NOTHING. \
         Install it with `{install}`. !!!!!!!!\n"
    );
    false
}

/// Whether `program ARGS` runs and succeeds, its output discarded.
pub fn succeeds(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> bool {
    std::process::Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `command` to the end with stdout and stderr captured; past `timeout` it is asked to
/// stop (SIGTERM, so it can stop what it started), then killed, and the test fails with
/// what it printed.
pub fn run_with_timeout(
    command: &mut std::process::Command,
    timeout: Duration,
) -> std::process::Output {
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = std::process::Command::new("kill")
                .arg(child.id().to_string())
                .status();
            std::thread::sleep(Duration::from_secs(5));
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{command:?} ran longer than {timeout:?}; it printed:\n{}\n{}",
                String::from_utf8_lossy(&out.join().unwrap()),
                String::from_utf8_lossy(&err.join().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::process::Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}
