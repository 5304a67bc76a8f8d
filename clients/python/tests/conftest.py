"""Fixtures: the real ``warden`` binary on a free port over a temporary SQLite database.

Nothing of Warden is mocked. The binary is ``WARDEN_BIN`` (as crates/warden/tests/sdk.rs
sets it), else ``target/debug/warden`` of this checkout. One server serves the session;
tests that stop a server start their own.

Tenants: ``nexus`` (examples/nexus/nexus.yaml) for the controller flow, ``lab`` (the same
policy) for proposals, which change its policy, and ``quick`` (tests/policies/quick.yaml),
whose approvals expire within seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from warden_client import Warden

REPO = Path(__file__).resolve().parents[3]
NEXUS = REPO / "examples" / "nexus" / "nexus.yaml"
QUICK = Path(__file__).resolve().parent / "policies" / "quick.yaml"
BIN = Path(os.environ.get("WARDEN_BIN") or REPO / "target" / "debug" / "warden")

STARTUP_SECONDS = 15.0

# Keys every server of the suite gets: name → (tenant, `warden keys create` flags).
KEYS: dict[str, tuple[str, list[str]]] = {
    "controller": ("nexus", ["--role", "controller", "--agent", "support-*"]),
    "agent": ("nexus", ["--role", "agent", "--agent", "support-bot"]),
    "approver": ("nexus", ["--role", "approver", "--user", "alice", "--group", "legal"]),
    "executor": ("nexus", ["--role", "executor"]),
    "admin": ("nexus", ["--role", "admin"]),
    "lab_controller": ("lab", ["--role", "controller", "--agent", "support-*"]),
    "lab_agent": ("lab", ["--role", "agent", "--agent", "support-bot"]),
    "lab_approver": ("lab", ["--role", "approver", "--user", "carol", "--group", "policy"]),
    "quick_controller": ("quick", ["--role", "controller"]),
    "quick_approver": ("quick", ["--role", "approver", "--user", "dave", "--group", "editors"]),
}


@dataclass
class Server:
    """A running ``warden serve`` and the keys made for it."""

    url: str
    dir: Path
    process: subprocess.Popen[bytes]
    keys: dict[str, str] = field(default_factory=dict)

    def client(self, key: str, *, approval_timeout: float | None = None) -> Warden:
        """An async client acting with the key named ``key``."""
        return Warden(self.url, self.keys[key], approval_timeout=approval_timeout)

    def kill(self) -> None:
        """Stop the server at once (SIGKILL), as a crash would."""
        self.process.kill()
        self.process.wait(timeout=10)

    def log(self) -> str:
        """The server's log so far."""
        return (self.dir / "serve.log").read_text(errors="replace")


def warden(cwd: Path, *args: str) -> str:
    """``warden ARGS`` in ``cwd``; its stdout. Fails the test on a non-zero exit."""
    done = subprocess.run(
        [str(BIN), *args], cwd=cwd, env=_env(), capture_output=True, timeout=30, check=False
    )
    assert done.returncode == 0, f"warden {' '.join(args)}: {done.stderr.decode(errors='replace')}"
    return done.stdout.decode()


def start_server(dir: Path) -> Server:
    """The Nexus, lab and quick tenants with every key of ``KEYS``, served on a free port."""
    if not BIN.is_file():
        pytest.fail(f"no warden binary at {BIN}: run `cargo build -p warden` or set WARDEN_BIN")
    policies = dir / "policies"
    policies.mkdir()
    shutil.copy(NEXUS, policies / "nexus.yaml")
    shutil.copy(NEXUS, policies / "lab.yaml")
    shutil.copy(QUICK, policies / "quick.yaml")
    keys = {}
    for name, (tenant, flags) in KEYS.items():
        made = json.loads(
            warden(dir, "keys", "create", "--db", "warden.db", "--tenant", tenant, "--json", *flags)
        )
        keys[name] = made["token"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    serve = [str(BIN), "serve", "--listen", f"127.0.0.1:{port}"]
    serve += ["--db", "warden.db", "--policies", "policies", "--data-dir", "."]
    with (dir / "serve.log").open("wb") as log:
        process = subprocess.Popen(
            serve,
            cwd=dir,
            env=_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    server = Server(url, dir, process, keys)
    deadline = time.monotonic() + STARTUP_SECONDS
    while not _ready(url):
        if process.poll() is not None:
            pytest.fail(f"warden serve exited with {process.returncode}:\n{server.log()}")
        if time.monotonic() > deadline:
            server.kill()
            pytest.fail(f"warden serve was not ready within {STARTUP_SECONDS}s:\n{server.log()}")
        time.sleep(0.02)
    return server


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def _env() -> dict[str, str]:
    # The test decides what the binary reads, not the shell the suite runs in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARDEN_") and k != "RUST_LOG"}
    env["RUST_LOG"] = "info"
    return env


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The suite's server."""
    running = start_server(tmp_path_factory.mktemp("warden"))
    yield running
    stop_server(running)


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[Server]:
    """A server of the test's own, which it may stop."""
    running = start_server(tmp_path)
    yield running
    stop_server(running)


@pytest.fixture
async def controller(server: Server) -> AsyncIterator[Warden]:
    """A controller of tenant ``nexus`` that may act for ``support-*`` agents."""
    async with server.client("controller") as client:
        yield client


@pytest.fixture
async def approver(server: Server) -> AsyncIterator[Warden]:
    """Alice, of the ``legal`` approver group of tenant ``nexus``."""
    async with server.client("approver") as client:
        yield client


@pytest.fixture
async def agent(server: Server) -> AsyncIterator[Warden]:
    """The agent ``support-bot`` of tenant ``nexus``."""
    async with server.client("agent") as client:
        yield client
