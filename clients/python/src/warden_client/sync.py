"""A synchronous ``Warden`` for scripts and other code without an event loop.

```python
from warden_client.sync import Warden

with Warden() as warden:                       # WARDEN_URL, WARDEN_KEY
    warden.guard({"type": "ticket.resolve", ...}, execute=lambda permit: resolve())
```

Key decision: a facade over the async client, not a second client. Each instance owns a
private event loop and runs every call to the end on it, in the calling thread (so
``execute`` runs in the caller's thread too); the behaviour, errors and fail-closed rules
are the async client's, documented there. It cannot be used where an event loop is
already running: there, use ``warden_client.Warden``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Literal, ParamSpec, TypeVar

from . import client as _client
from .client import CLIENT_DEFAULT, ActionLike, Timeout, action_for_call
from .models import (
    Approval,
    BudgetUsage,
    Decision,
    Denial,
    JSONObject,
    Outcome,
    Permit,
    PermitAction,
    PermitKeys,
    PermitVerification,
    Proposal,
    ProposalPage,
)

T = TypeVar("T")
P = ParamSpec("P")

__all__ = ["Warden"]


class Warden:
    """The synchronous client; the same arguments and methods as ``warden_client.Warden``."""

    def __init__(
        self,
        url: str | None = None,
        key: str | None = None,
        *,
        timeout: float = 10.0,
        approval_timeout: float | None = None,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._async = _client.Warden(url, key, timeout=timeout, approval_timeout=approval_timeout)
        self.url = self._async.url

    def __enter__(self) -> Warden:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections and the event loop."""
        if not self._loop.is_closed():
            self._run(self._async.aclose())
            self._loop.close()

    def _run(self, call: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(call)

    # Controllers

    def evaluate(self, action: ActionLike) -> Decision:
        """See ``warden_client.Warden.evaluate``."""
        return self._run(self._async.evaluate(action))

    def decision(self, decision_id: str) -> Decision:
        """See ``warden_client.Warden.decision``."""
        return self._run(self._async.decision(decision_id))

    def report_outcome(
        self, decision_id: str, status: Literal["executed", "failed"], error_code: str | None = None
    ) -> Outcome:
        """See ``warden_client.Warden.report_outcome``."""
        return self._run(self._async.report_outcome(decision_id, status, error_code))

    def budgets(self, *, agent: str | None = None, run_id: str | None = None) -> list[BudgetUsage]:
        """See ``warden_client.Warden.budgets``."""
        return self._run(self._async.budgets(agent=agent, run_id=run_id))

    def wait_for_approval(self, approval_id: str, *, timeout: float | None = None) -> Approval:
        """See ``warden_client.Warden.wait_for_approval``."""
        return self._run(self._async.wait_for_approval(approval_id, timeout=timeout))

    def guard(
        self,
        action: ActionLike,
        execute: Callable[[Permit], T],
        *,
        approval_timeout: Timeout = CLIENT_DEFAULT,
    ) -> T:
        """Run ``execute(permit)`` only if Warden allows ``action``; see
        ``warden_client.Warden.guard`` (here ``execute`` is a plain function)."""
        return self._run(self._async.guard(action, execute, approval_timeout=approval_timeout))

    def guarded(
        self, action_type: str, **fields: Any
    ) -> Callable[[Callable[P, T]], Callable[P, T]]:
        """A decorator that runs a plain function through ``guard``; see
        ``warden_client.Warden.guarded`` (here the decorated function stays synchronous)."""

        def decorate(fn: Callable[P, T]) -> Callable[P, T]:
            @functools.wraps(fn)
            def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
                action = action_for_call(action_type, fields, fn, args, kwargs)
                return self.guard(action, lambda _permit: fn(*args, **kwargs))

            return guarded

        return decorate

    # Executors

    def permit_keys(self) -> PermitKeys:
        """See ``warden_client.Warden.permit_keys``."""
        return self._run(self._async.permit_keys())

    def verify_permit(
        self,
        permit: Permit | str,
        payload: JSONObject | None,
        *,
        action: PermitAction | Mapping[str, Any] | None = None,
    ) -> PermitVerification:
        """See ``warden_client.Warden.verify_permit``."""
        return self._run(self._async.verify_permit(permit, payload, action=action))

    # Agents

    def denials(self, last: int = 10) -> list[Denial]:
        """See ``warden_client.Warden.denials``."""
        return self._run(self._async.denials(last))

    def policy_digest(self, agent: str | None = None) -> str:
        """See ``warden_client.Warden.policy_digest``."""
        return self._run(self._async.policy_digest(agent))

    def propose(
        self,
        rationale: str,
        changes: Sequence[JSONObject],
        *,
        risks: Sequence[str] | None = None,
        confidence: float | None = None,
        evidence: Sequence[str] | None = None,
    ) -> Proposal:
        """See ``warden_client.Warden.propose``."""
        call = self._async.propose(
            rationale, changes, risks=risks, confidence=confidence, evidence=evidence
        )
        return self._run(call)

    def wait_for_proposal(self, proposal_id: str, *, timeout: float | None = None) -> Proposal:
        """See ``warden_client.Warden.wait_for_proposal``."""
        return self._run(self._async.wait_for_proposal(proposal_id, timeout=timeout))

    def ask(
        self,
        question: str,
        *,
        options: Sequence[str] | None = None,
        expires_in: str | None = None,
        run_id: str | None = None,
        groups: Sequence[str] | None = None,
    ) -> Approval:
        """See ``warden_client.Warden.ask``."""
        call = self._async.ask(
            question, options=options, expires_in=expires_in, run_id=run_id, groups=groups
        )
        return self._run(call)

    def wait_for_answer(self, question_id: str, *, timeout: float | None = None) -> Approval:
        """See ``warden_client.Warden.wait_for_answer``."""
        return self._run(self._async.wait_for_answer(question_id, timeout=timeout))

    # Approvers

    def approvals(
        self,
        *,
        status: str | None = None,
        kind: Literal["approval", "question"] | None = None,
        limit: int | None = None,
    ) -> list[Approval]:
        """See ``warden_client.Warden.approvals``."""
        return self._run(self._async.approvals(status=status, kind=kind, limit=limit))

    def approval(self, approval_id: str) -> Approval:
        """See ``warden_client.Warden.approval``."""
        return self._run(self._async.approval(approval_id))

    def approve(self, approval_id: str, reason: str | None = None) -> Approval:
        """See ``warden_client.Warden.approve``."""
        return self._run(self._async.approve(approval_id, reason))

    def reject(self, approval_id: str, reason: str) -> Approval:
        """See ``warden_client.Warden.reject``."""
        return self._run(self._async.reject(approval_id, reason))

    def answer(self, question_id: str, answer: str) -> Approval:
        """See ``warden_client.Warden.answer``."""
        return self._run(self._async.answer(question_id, answer))

    def proposals(
        self,
        *,
        status: str | None = None,
        source: str | None = None,
        limit: int | None = None,
        before: str | None = None,
    ) -> ProposalPage:
        """See ``warden_client.Warden.proposals``."""
        return self._run(
            self._async.proposals(status=status, source=source, limit=limit, before=before)
        )

    def proposal(self, proposal_id: str) -> Proposal:
        """See ``warden_client.Warden.proposal``."""
        return self._run(self._async.proposal(proposal_id))

    def approve_proposal(
        self, proposal: Proposal | str, review_token: str | None = None
    ) -> Proposal:
        """See ``warden_client.Warden.approve_proposal``."""
        return self._run(self._async.approve_proposal(proposal, review_token))

    def reject_proposal(self, proposal_id: str, reason: str) -> Proposal:
        """See ``warden_client.Warden.reject_proposal``."""
        return self._run(self._async.reject_proposal(proposal_id, reason))
