"""The synchronous facade, and the client's configuration from the environment."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import warden_client
from warden_client import Denied, Permit, verify_permit
from warden_client.sync import Warden

from conftest import Server

ESCALATE = {
    "type": "ticket.escalate",
    "agent": "support-bot",
    "target": {"type": "ticket", "id": "T-4001"},
    "payload": {"queue": "legal"},
    "context": {"ticket": {"flags": ["legal_sensitive"]}},
}


def test_a_script_guards_an_action_and_a_human_approves_from_another_thread(server: Server) -> None:
    ran: list[Permit] = []
    approved: list[str] = []

    def escalate(permit: Permit) -> str:
        ran.append(permit)
        return "escalated"

    def approve_when_pending() -> None:
        with Warden(server.url, server.keys["approver"]) as approver:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                pending = [
                    a
                    for a in approver.approvals(status="pending")
                    if a.action_type == "ticket.escalate"
                ]
                if pending:
                    approved.append(approver.approve(pending[0].id).status)
                    return
                time.sleep(0.02)

    human = threading.Thread(target=approve_when_pending)
    with Warden(server.url, server.keys["controller"], approval_timeout=15) as warden:
        human.start()
        result = warden.guard(ESCALATE, escalate)
        human.join()
        keys = warden.permit_keys()
    assert (result, approved) == ("escalated", ["approved"])
    [permit] = ran
    assert verify_permit(permit, ESCALATE["payload"], keys).valid


def test_a_sync_tool_function_is_guarded_and_a_deny_raises(server: Server) -> None:
    calls: list[Any] = []
    with Warden(server.url, server.keys["controller"]) as warden:

        @warden.guarded(
            "ticket.resolve", agent="support-bot", confidence=lambda confidence, **_: confidence
        )
        def resolve(ticket: str, confidence: float) -> str:
            calls.append(ticket)
            return f"resolved {ticket}"

        assert resolve("T-1", confidence=0.95) == "resolved T-1"
        with pytest.raises(Denied) as denied:
            resolve("T-2", 0.5)
    assert calls == ["T-1"]
    assert denied.value.reasons[0].rule == "low-confidence-resolve"


def test_an_agent_script_asks_and_reads_the_answer(server: Server) -> None:
    with (
        Warden(server.url, server.keys["agent"]) as agent,
        Warden(server.url, server.keys["approver"]) as human,
    ):
        question = agent.ask("Which queue for T-4002?", options=["billing", "legal"])
        human.answer(question.id, "billing")
        answered = agent.wait_for_answer(question.id, timeout=5)
    assert (answered.status, answered.answer) == ("answered", "billing")


def test_url_and_key_come_from_the_environment(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WARDEN_URL", server.url)
    monkeypatch.setenv("WARDEN_KEY", server.keys["agent"])
    with Warden() as agent:
        assert agent.url == server.url
        assert "support-bot" in agent.policy_digest()


def test_without_an_environment_the_default_url_is_the_servers_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("WARDEN_URL", raising=False)
    with Warden() as warden:
        assert warden.url == "http://127.0.0.1:8080"


def test_the_version_comes_from_the_package_metadata() -> None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        expected = version("warden-client")
    except PackageNotFoundError:
        expected = "0.0.0+unknown"
    assert warden_client.__version__ == expected
