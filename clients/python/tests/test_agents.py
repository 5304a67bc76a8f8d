"""What agents and approvers do: denials and ``rule_missing``, the policy digest, the
proposal loop (auto-approved, approved by a human while the agent waits, rejected with a
reason the agent reads), and questions answered by a human while the agent waits.

Proposals change tenant ``lab``'s policy; the other tests use ``nexus``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from warden_client import ApiError, Denied, Proposal, Warden

from conftest import Server

pytestmark = pytest.mark.anyio

CRM_DELETE = {
    "type": "crm.delete",
    "agent": "support-bot",
    "target": {"type": "contact", "id": "C-1"},
}


@pytest.fixture
async def lab(server: Server) -> AsyncIterator[tuple[Warden, Warden, Warden]]:
    """Tenant ``lab``'s controller, agent ``support-bot`` and approver carol."""
    async with (
        server.client("lab_controller") as controller,
        server.client("lab_agent") as agent,
        server.client("lab_approver") as approver,
    ):
        yield controller, agent, approver


async def test_a_denied_agent_reads_rule_missing_and_its_recent_denials(
    lab: tuple[Warden, Warden, Warden],
) -> None:
    controller, agent, _ = lab
    ran: list[Any] = []
    action = {
        "type": "crm.merge",
        "agent": "support-bot",
        "target": {"type": "contact", "id": "C-9"},
    }
    with pytest.raises(Denied) as denied:
        await controller.guard(action, ran.append)
    assert not ran
    assert denied.value.rule_missing is not None
    assert denied.value.rule_missing["actions"] == ["crm.merge"]
    assert denied.value.rule_missing["agents"] == ["support-bot"]
    steps = [step["action"] for step in denied.value.decision.next_steps]
    assert "submit_proposal" in steps

    [latest, *_] = await agent.denials(last=5)
    assert latest.decision_id == denied.value.decision.decision_id
    assert latest.action_type == "crm.merge"
    assert latest.rule_missing == denied.value.rule_missing


async def test_the_policy_digest_is_markdown_for_the_agents_prompt(agent: Warden) -> None:
    digest = await agent.policy_digest()
    assert digest.startswith("# What `support-bot` may do")
    assert "restricted users may not send external email" in digest


async def test_a_proposal_approved_by_a_human_wakes_the_waiting_agent_and_the_retry_runs(
    lab: tuple[Warden, Warden, Warden],
) -> None:
    controller, agent, approver = lab
    ran: list[Any] = []
    with pytest.raises(Denied) as denied:
        await controller.guard(CRM_DELETE, ran.append)
    rule = denied.value.rule_missing
    assert rule is not None

    proposal = await agent.propose(
        "support-bot must delete the duplicate contact C-1",
        [{"op": "add_rule", "rule": rule}],
        risks=["deleting the wrong contact"],
        confidence=0.9,
        evidence=[denied.value.decision.decision_id or ""],
    )
    # A grant is broadening, however narrow: it needs a human, who sees what it lets through.
    assert (proposal.status, proposal.classification) == ("needs_human", "broadening")
    assert proposal.counterexamples[0]["action"]["type"] == "crm.delete"

    woken: list[Proposal] = []

    async def wait() -> None:
        woken.append(await agent.wait_for_proposal(proposal.id, timeout=20))

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(wait)
            await anyio.sleep(0.2)
            assert not woken
            [pending] = (await approver.proposals(status="needs_human", source="agent")).proposals
            assert (pending.id, pending.source) == (proposal.id, "agent")
            assert not (await approver.proposals(source="observed")).proposals
            approved = await approver.approve_proposal(proposal.id)
            assert approved.status == "approved"

    [decided] = woken
    assert (decided.status, decided.decided_by) == ("approved", "carol")
    assert decided.version == decided.candidate_version
    assert await controller.guard(CRM_DELETE, lambda permit: "deleted") == "deleted"
    assert not ran


async def test_a_narrowing_proposal_is_applied_at_once(lab: tuple[Warden, Warden, Warden]) -> None:
    _, agent, _ = lab
    rule = {
        "id": "no-crm-purge",
        "actions": ["crm.purge"],
        "effect": "deny",
        "reason": "never purge the CRM",
    }
    proposal = await agent.propose(
        "a purge must never run", [{"op": "add_rule", "rule": rule}], risks=[]
    )
    assert proposal.status == "auto_approved"
    assert proposal.classification in ("narrowing", "neutral")
    assert proposal.version is not None
    # Already decided: the wait answers at once.
    assert (await agent.wait_for_proposal(proposal.id, timeout=5)).status == "auto_approved"


async def test_a_broadening_proposal_is_rejected_with_a_reason_the_agent_reads(
    lab: tuple[Warden, Warden, Warden],
) -> None:
    _, agent, approver = lab
    rule = {
        "id": "crm-anything",
        "actions": ["crm.*"],
        "agents": ["support-bot"],
        "effect": "allow",
    }
    proposal = await agent.propose(
        "let me do anything in the CRM", [{"op": "add_rule", "rule": rule}], risks=["many"]
    )
    assert proposal.classification == "broadening"
    assert proposal.counterexamples, "a broadening change shows what it would let through"
    assert proposal.status in ("needs_human", "revise_requested")

    rejected = await approver.reject_proposal(
        proposal.id, "too broad: ask for the one action you need"
    )
    assert rejected.status == "rejected"
    seen = await agent.wait_for_proposal(proposal.id, timeout=5)
    assert (seen.status, seen.reason) == ("rejected", "too broad: ask for the one action you need")
    with pytest.raises(ApiError) as again:
        await approver.reject_proposal(proposal.id, "twice")
    assert (again.value.status, again.value.code) == (409, "already_decided")


async def test_a_question_answered_by_a_human_wakes_the_waiting_agent(
    agent: Warden, approver: Warden
) -> None:
    question = await agent.ask(
        "Refund above 500 for T-1042?", options=["yes", "no"], expires_in="10m"
    )
    assert (question.kind, question.status, question.options) == (
        "question",
        "pending",
        ["yes", "no"],
    )

    answers = []

    async def wait() -> None:
        answers.append(await agent.wait_for_answer(question.id, timeout=20))

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(wait)
            await anyio.sleep(0.2)
            assert not answers
            listed = await approver.approvals(status="pending", kind="question")
            assert question.id in [q.id for q in listed]
            with pytest.raises(ApiError) as not_an_option:
                await approver.answer(question.id, "maybe")
            assert not_an_option.value.status == 400
            await approver.answer(question.id, "no")

    [answered] = answers
    assert (answered.status, answered.answer) == ("answered", "no")
    assert [v.user for v in answered.votes] == ["alice"]
