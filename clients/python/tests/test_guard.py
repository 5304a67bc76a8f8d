"""``guard``: the four Nexus seed scenarios and the rest of the controller flow, against
the real server. Each test says whether the action ran, and what Warden recorded."""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest

from warden_client import (
    ApprovalExpired,
    ApprovalRejected,
    ApprovalTimeout,
    Denied,
    Permit,
    Warden,
    permit_claims,
    verify_permit,
)

from conftest import REPO, Server

pytestmark = pytest.mark.anyio

# examples/nexus/actions/resolve.json: confidence 0.82, below the 0.85 the policy needs.
RESOLVE = json.loads((REPO / "examples" / "nexus" / "actions" / "resolve.json").read_text())

ESCALATE = {
    "type": "ticket.escalate",
    "target": {"type": "ticket", "id": "T-2001"},
    "agent": "support-bot",
    "on_behalf_of": "user-991",
    "payload": {"queue": "legal", "note": "customer mentions a lawyer"},
    "context": {"ticket": {"flags": ["legal_sensitive"], "priority": "high"}},
}


class Executor:
    """An action that records each call and the permit it was given."""

    def __init__(self, result: Any = "done") -> None:
        self.permits: list[Permit] = []
        self.result = result

    def __call__(self, permit: Permit) -> Any:
        self.permits.append(permit)
        return self.result

    @property
    def ran(self) -> bool:
        return bool(self.permits)


async def audit(server: Server, kind: str) -> list[dict[str, Any]]:
    """The tenant's audit events of ``kind``, newest first (read with the admin key)."""
    async with httpx.AsyncClient(base_url=server.url) as http:
        answer = await http.get(
            "/v1/audit",
            params={"kind": kind, "newest_first": "true", "limit": 50},
            headers={"authorization": f"Bearer {server.keys['admin']}"},
        )
    answer.raise_for_status()
    return list(answer.json()["events"])


async def pending_approval(approver: Warden, action_type: str) -> str:
    """The id of the pending approval of an action of ``action_type``, once it shows."""
    with anyio.fail_after(10):
        while True:
            for approval in await approver.approvals(status="pending", kind="approval"):
                if approval.action_type == action_type:
                    return approval.id
            await anyio.sleep(0.02)


# ---------------------------------------------------------------------------------------
# The Nexus seed scenarios
# ---------------------------------------------------------------------------------------


async def test_a_low_confidence_resolve_is_denied_with_its_reason_and_adjusted_confidence(
    controller: Warden,
) -> None:
    execute = Executor()
    with pytest.raises(Denied) as denied:
        await controller.guard(RESOLVE, execute)
    assert not execute.ran
    decision = denied.value.decision
    assert decision.effect == "deny"
    assert denied.value.reasons[0].rule == "low-confidence-resolve"
    assert (
        denied.value.reasons[0].message
        == "confidence 0.82 is below the 0.85 needed to auto-resolve"
    )
    assert decision.confidence is not None
    assert decision.confidence.initial == 0.82
    assert decision.confidence.adjusted == pytest.approx(0.72)
    assert str(denied.value) == "denied: confidence 0.82 is below the 0.85 needed to auto-resolve"


async def test_a_restricted_users_external_email_is_denied(controller: Warden) -> None:
    execute = Executor()
    email = {
        "type": "email.send",
        "agent": "support-bot",
        "target": {"type": "email", "id": "someone@example.com"},
        "payload": {"to": "someone@example.com", "external": True},
        "context": {"user": {"role": "restricted"}},
    }
    with pytest.raises(Denied) as denied:
        await controller.guard(email, execute)
    assert not execute.ran
    assert [r.rule for r in denied.value.reasons if r.effect == "deny"] == [
        "restricted-external-email"
    ]
    assert denied.value.reasons[0].message == "restricted users may not send external email"


async def test_a_legal_escalation_waits_for_a_second_actor_and_runs_with_its_permit(
    server: Server, controller: Warden, approver: Warden
) -> None:
    execute = Executor(result={"escalated": "T-2001"})
    results: list[Any] = []

    async def escalate() -> None:
        results.append(await controller.guard(ESCALATE, execute))

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(escalate)
            approval_id = await pending_approval(approver, "ticket.escalate")
            await anyio.sleep(0.2)  # guard is in its long-poll by now
            assert not execute.ran, "the action ran before a human approved it"
            approved = await approver.approve(approval_id, reason="counsel agrees")
            assert approved.status == "approved"

    assert results == [{"escalated": "T-2001"}]
    [permit] = execute.permits
    keys = await controller.permit_keys()
    check = verify_permit(permit, ESCALATE["payload"], keys, tenant="nexus")
    assert (check.valid, check.reason) == (True, "valid")
    assert check.claims is not None and check.claims["action_type"] == "ticket.escalate"
    final = await controller.decision(approved.decision_id or "")
    assert final.effect == "allow"
    assert final.reasons[0].code == "approval_granted"
    assert final.reasons[0].message == "approved by alice"
    [outcome] = [
        e for e in await audit(server, "outcome") if e["decision_id"] == approved.decision_id
    ]
    assert outcome["detail"]["status"] == "executed"


async def test_a_valid_action_is_allowed_and_runs_once_with_a_single_use_permit(
    server: Server, controller: Warden
) -> None:
    payload = {"resolution": "refund issued"}
    action = {
        "type": "ticket.resolve",
        "target": {"type": "ticket", "id": "T-1042"},
        "confidence": 0.92,
        "agent": "support-bot",
        "payload": payload,
    }
    execute = Executor(result=42)
    assert await controller.guard(action, execute) == 42
    [permit] = execute.permits
    assert permit.max_uses == 1
    async with server.client("executor") as executor:
        first = await executor.verify_permit(permit, payload)
        again = await executor.verify_permit(permit, payload)
    assert (first.valid, first.reason, first.uses_left) == (True, "valid", 0)
    assert (again.valid, again.reason) == (False, "used_up")


# ---------------------------------------------------------------------------------------
# The rest of the flow
# ---------------------------------------------------------------------------------------


async def test_an_async_action_is_awaited_and_gets_the_permit(controller: Warden) -> None:
    seen: list[str] = []

    async def execute(permit: Permit) -> str:
        await anyio.sleep(0)
        seen.append(permit.token)
        return "sent"

    action = {"type": "ticket.update", "agent": "support-bot", "payload": {"status": "open"}}
    assert await controller.guard(action, execute) == "sent"
    assert len(seen) == 1 and seen[0].count(".") == 2


async def test_a_failed_action_is_reported_by_its_type_never_its_message(
    server: Server, controller: Warden
) -> None:
    class MailboxFull(Exception):
        pass

    decisions: list[str] = []

    def execute(permit: Permit) -> None:
        decisions.append((permit_claims(permit) or {})["decision_id"])
        raise MailboxFull("the secret mailbox of user-991 is full")

    action = {
        "type": "ticket.update",
        "agent": "support-bot",
        "target": {"type": "ticket", "id": "T-7"},
    }
    with pytest.raises(MailboxFull):
        await controller.guard(action, execute)
    [event] = [e for e in await audit(server, "outcome") if e["decision_id"] in decisions]
    assert event["detail"]["status"] == "failed"
    assert event["detail"]["error_code"] == "MailboxFull"
    assert "secret" not in json.dumps(await audit(server, "outcome"))


async def test_a_rejected_approval_raises_with_the_reason_and_nothing_runs(
    controller: Warden, approver: Warden
) -> None:
    execute = Executor()
    action = {**ESCALATE, "target": {"type": "ticket", "id": "T-2002"}}
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tasks:

            async def reject_it() -> None:
                approval_id = await pending_approval(approver, "ticket.escalate")
                await approver.reject(approval_id, reason="not a legal matter")

            tasks.start_soon(reject_it)
            with pytest.raises(ApprovalRejected) as rejected:
                await controller.guard(action, execute)
    assert not execute.ran
    assert rejected.value.approval.reason == "not a legal matter"
    assert rejected.value.decision.effect == "deny"
    assert rejected.value.reasons[0].code == "approval_rejected"
    assert isinstance(rejected.value, Denied)


async def test_an_expired_approval_raises_and_nothing_runs(server: Server) -> None:
    execute = Executor()
    async with server.client("quick_controller") as controller:
        with anyio.fail_after(15), pytest.raises(ApprovalExpired) as expired:
            await controller.guard(
                {"type": "report.publish", "target": {"type": "report", "id": "Q3"}}, execute
            )
    assert not execute.ran
    assert expired.value.approval.status == "expired"
    assert expired.value.decision.effect == "deny"
    assert expired.value.reasons[0].code == "approval_expired"


async def test_waiting_less_than_the_approval_takes_raises_approval_timeout(server: Server) -> None:
    execute = Executor()
    async with server.client("quick_controller", approval_timeout=0.5) as controller:
        with anyio.fail_after(10), pytest.raises(ApprovalTimeout) as waited:
            await controller.guard(
                {"type": "report.publish", "target": {"type": "report", "id": "Q4"}}, execute
            )
    assert not execute.ran
    assert waited.value.approval.status == "pending"


async def test_guard_again_with_the_same_id_resumes_the_same_approval(
    controller: Warden, approver: Warden
) -> None:
    action = {**ESCALATE, "id": "escalate-T-2003", "target": {"type": "ticket", "id": "T-2003"}}
    execute = Executor()
    with pytest.raises(ApprovalTimeout) as waited:
        await controller.guard(action, execute, approval_timeout=0.1)
    await approver.approve(waited.value.approval.id)
    assert await controller.guard(action, execute) == "done"
    assert len(execute.permits) == 1


async def test_the_decorator_guards_a_tool_function(controller: Warden) -> None:
    sent: list[tuple[str, str]] = []

    @controller.guarded(
        "email.send",
        target=lambda to, **_: {"type": "email", "id": to},
        agent="support-bot",
        context=lambda to, role="agent", **_: {"user": {"role": role}},
    )
    async def send_email(to: str, subject: str, external: bool = True, role: str = "agent") -> str:
        sent.append((to, subject))
        return f"sent to {to}"

    assert await send_email("ann@example.com", subject="Your refund") == "sent to ann@example.com"
    with pytest.raises(Denied) as denied:
        await send_email("bob@example.com", "Hello", role="restricted")
    assert sent == [("ann@example.com", "Your refund")]
    assert denied.value.reasons[0].rule == "restricted-external-email"
    assert send_email.__name__ == "send_email"


async def test_the_decorator_sends_the_calls_arguments_as_the_payload(controller: Warden) -> None:
    @controller.guarded("ticket.update", agent="support-bot", id="decorated-update-1")
    def update(ticket: str, *tags: str, status: str = "open", **extra: Any) -> str:
        return ticket

    assert await update("T-9", "vip", note=None) == "T-9"
    # The same idempotency key with the same action replays the decision; with any other
    # payload it would be 409 `idempotency_mismatch`.
    payload = {"ticket": "T-9", "tags": ["vip"], "status": "open", "note": None}
    replay = await controller.evaluate(
        {
            "type": "ticket.update",
            "agent": "support-bot",
            "id": "decorated-update-1",
            "payload": payload,
        }
    )
    assert replay.replayed is True


async def test_a_run_over_its_budget_is_denied_naming_the_limit(controller: Warden) -> None:
    action = {"type": "ticket.update", "agent": "support-bot", "run_id": "run-budget-1"}
    assert (
        await controller.guard({**action, "usage": {"cost_usd": 4.99}}, lambda permit: "ok") == "ok"
    )
    [spend] = [
        u
        for u in await controller.budgets(agent="support-bot", run_id="run-budget-1")
        if u.counter == "cost_usd"
    ]
    assert spend.used == pytest.approx(4.99)
    assert spend.limit == 5

    execute = Executor()
    with pytest.raises(Denied) as denied:
        await controller.guard({**action, "usage": {"cost_usd": 0.02}}, execute)
    assert not execute.ran
    first = denied.value.reasons[0]
    assert first.code == "budget_exceeded"
    assert first.limit is not None and (first.limit.id, first.limit.counter) == (
        "per-run",
        "cost_usd",
    )
