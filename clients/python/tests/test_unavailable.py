"""Fail closed: whenever Warden cannot be asked, or answers something that is no decision,
``guard`` raises ``WardenUnavailable`` and the action does not run.

The real server is stopped mid-call; the failure modes a healthy server never shows (a
5xx, a garbage body, a hang) come from a stub HTTP server, for those alone."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import pytest

from warden_client import Permit, Warden, WardenError, WardenUnavailable

from conftest import Server

pytestmark = pytest.mark.anyio

ACTION = {"type": "ticket.update", "agent": "support-bot", "payload": {"status": "open"}}

DECISION: dict[str, Any] = {
    "decision_id": "01JD8Z9R6W3K2Q5N7X4T0M1B8C",
    "effect": "require_approval",
    "reasons": [
        {"rule": "r", "effect": "require_approval", "code": "policy_rule", "message": "ask"}
    ],
    "obligations": {},
    "approval": {
        "id": "01JD8Z9R6W3K2Q5N7X4T0M1B8D",
        "status": "pending",
        "approvers": [],
        "quorum": 1,
        "expires_in": "1h",
        "wait_url": "/v1/approvals/01JD8Z9R6W3K2Q5N7X4T0M1B8D/wait",
    },
    "permit": None,
    "policy_version": "1.0.0",
    "policy_hash": "",
    "next_steps": [],
    "eval_ns": 1,
}
ALLOW_WITHOUT_PERMIT = {**DECISION, "effect": "allow", "approval": None}
# What Warden answers when its audit log cannot write: a deny in the decision's shape, 503.
AUDIT_UNAVAILABLE = {
    **DECISION,
    "effect": "deny",
    "approval": None,
    "reasons": [
        {"rule": None, "effect": "deny", "code": "audit_unavailable", "message": "audit is down"}
    ],
}

# What a broken Warden, or something in front of it, might answer: (status, body).
Reply = tuple[int, str]


class Stub:
    """An HTTP server answering each path with a fixed reply, after ``delay`` seconds."""

    def __init__(self, replies: dict[str, Reply], delay: float = 0.0) -> None:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._reply()

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                self._reply()

            def _reply(self) -> None:
                time.sleep(stub.delay)
                status, body = stub.replies.get(self.path.split("?")[0], (404, "{}"))
                data = body.encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.replies = replies
        self.delay = delay
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        self.thread = threading.Thread(target=self.http.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def stub() -> Iterator[list[Stub]]:
    started: list[Stub] = []
    yield started
    for each in started:
        each.close()


class Executor:
    def __init__(self) -> None:
        self.ran = False

    def __call__(self, permit: Permit) -> str:
        self.ran = True
        return "ran"


async def test_connection_refused_is_unavailable_and_nothing_runs() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    execute = Executor()
    async with Warden(f"http://127.0.0.1:{port}", "wdn_x_y") as warden:
        with pytest.raises(WardenUnavailable) as unavailable:
            await warden.guard(ACTION, execute)
    assert not execute.ran
    assert "cannot reach Warden" in str(unavailable.value)
    assert isinstance(unavailable.value, WardenError)


@pytest.mark.parametrize(
    "reply",
    [
        (500, '{"error": "internal", "detail": "something broke"}'),
        (502, "<html>Bad Gateway</html>"),
        (503, json.dumps(AUDIT_UNAVAILABLE)),
        (429, '{"error": "rate_limited", "detail": "slow down"}'),
        (200, "this is not JSON"),
        (200, '{"effect": "allow"}'),
        (200, json.dumps({**DECISION, "effect": "maybe"})),
        (200, json.dumps(ALLOW_WITHOUT_PERMIT)),
        (200, "[]"),
    ],
    ids=[
        "500",
        "502-html",
        "503-decision",
        "429",
        "not-json",
        "partial-allow",
        "unknown-effect",
        "allow-without-permit",
        "array",
    ],
)
async def test_a_broken_answer_is_unavailable_and_nothing_runs(
    stub: list[Stub], reply: Reply
) -> None:
    stub.append(Stub({"/v1/decisions": reply}))
    execute = Executor()
    async with Warden(stub[0].url, "wdn_x_y") as warden:
        with pytest.raises(WardenUnavailable):
            await warden.guard(ACTION, execute)
    assert not execute.ran


async def test_a_broken_wait_is_unavailable_and_nothing_runs(stub: list[Stub]) -> None:
    wait = "/v1/approvals/01JD8Z9R6W3K2Q5N7X4T0M1B8D/wait"
    stub.append(
        Stub({"/v1/decisions": (200, json.dumps(DECISION)), wait: (200, '{"status": "approved"}')})
    )
    execute = Executor()
    async with Warden(stub[0].url, "wdn_x_y") as warden:
        with pytest.raises(WardenUnavailable):
            await warden.guard(ACTION, execute)
    assert not execute.ran


async def test_a_hung_server_times_out_as_unavailable_and_nothing_runs(stub: list[Stub]) -> None:
    stub.append(Stub({"/v1/decisions": (200, json.dumps(ALLOW_WITHOUT_PERMIT))}, delay=2.0))
    execute = Executor()
    async with Warden(stub[0].url, "wdn_x_y", timeout=0.3) as warden:
        with pytest.raises(WardenUnavailable) as unavailable:
            await warden.guard(ACTION, execute)
    assert not execute.ran
    assert "Timeout" in str(unavailable.value)


async def test_warden_stopped_while_guard_waits_for_an_approval(own_server: Server) -> None:
    execute = Executor()
    escalate = {
        "type": "ticket.escalate",
        "agent": "support-bot",
        "target": {"type": "ticket", "id": "T-3001"},
        "context": {"ticket": {"flags": ["legal_sensitive"]}},
    }
    failures: list[BaseException] = []

    async def guard() -> None:
        try:
            await controller.guard(escalate, execute)
        except WardenUnavailable as error:
            failures.append(error)

    async with (
        own_server.client("controller") as controller,
        own_server.client("approver") as approver,
    ):
        with anyio.fail_after(15):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(guard)
                while not await approver.approvals(status="pending"):
                    await anyio.sleep(0.02)
                await anyio.sleep(0.3)  # guard is in its long-poll
                own_server.kill()
    assert len(failures) == 1, "guard must raise WardenUnavailable once Warden is gone"
    assert not execute.ran


async def test_an_audit_outage_is_unavailable_with_its_code(stub: list[Stub]) -> None:
    stub.append(Stub({"/v1/decisions": (503, json.dumps(AUDIT_UNAVAILABLE))}))
    execute = Executor()
    async with Warden(stub[0].url, "wdn_x_y") as warden:
        with pytest.raises(WardenUnavailable) as unavailable:
            await warden.guard(ACTION, execute)
    assert not execute.ran
    assert (unavailable.value.status, unavailable.value.code) == (503, "audit_unavailable")
