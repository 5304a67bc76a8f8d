"""The errors the client raises; every one is a ``WardenError``.

Key decision: each error that ``guard`` raises means the action did **not** run, so a
caller that catches ``WardenError`` around ``guard`` knows nothing executed. An exception
raised by the action itself is never wrapped: it reaches the caller as it was raised.
"""

from __future__ import annotations

from typing import Any

from .models import Approval, Decision, JSONObject, Reason


class WardenError(Exception):
    """Base of every error of this package."""


class WardenUnavailable(WardenError):
    """Warden could not be asked: connection refused, a timeout, a 5xx, 408 or 429, or an
    answer that does not parse. Nothing was allowed, so nothing ran (fail closed).

    ``status`` is the HTTP status when there was an answer, ``code`` its error code when it
    had one.
    """

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class ApiError(WardenError):
    """Warden refused the request itself (a 4xx other than 408 and 429): a bad action, a
    key without the role, an unknown id, ``idempotency_mismatch``, ``already_decided``, …

    ``code`` is the server's stable error code, ``detail`` its sentence for humans, and
    ``body`` the whole JSON answer (a 409 ``policy_changed`` carries the re-analyzed
    ``proposal`` there).
    """

    def __init__(self, status: int, code: str, detail: str, body: JSONObject | None = None):
        super().__init__(f"Warden answered {status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.body = body


class Denied(WardenError):
    """The policy denied the action. ``decision`` is Warden's whole answer."""

    def __init__(self, decision: Decision, message: str | None = None):
        first = decision.reasons[0].message if decision.reasons else "no reason given"
        super().__init__(message or f"denied: {first}")
        self.decision = decision

    @property
    def reasons(self) -> list[Reason]:
        """Every matching rule's reason, strongest first."""
        return self.decision.reasons

    @property
    def rule_missing(self) -> dict[str, Any] | None:
        """The narrowest rule that would allow the action, when proposals are enabled."""
        return self.decision.rule_missing


class ApprovalRejected(Denied):
    """A human rejected the approval the action needed. ``approval.reason`` says why."""

    def __init__(self, decision: Decision, approval: Approval):
        super().__init__(decision, f"approval rejected: {approval.reason or 'no reason given'}")
        self.approval = approval


class ApprovalExpired(Denied):
    """Nobody decided the approval before it expired, which denies."""

    def __init__(self, decision: Decision, approval: Approval):
        super().__init__(decision, f"approval expired at {approval.expires_at.isoformat()}")
        self.approval = approval


class ApprovalTimeout(WardenError):
    """``guard`` stopped waiting before a human decided. The approval is still pending at
    Warden: wait again with ``wait_for_approval(approval.id)``, or ask anew later."""

    def __init__(self, decision: Decision, approval: Approval):
        super().__init__(f"approval {approval.id} still pending when the wait ended")
        self.decision = decision
        self.approval = approval
