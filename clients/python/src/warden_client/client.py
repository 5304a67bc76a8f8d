"""``Warden``: the async client, and ``guard``, the controller's flow as one call.

Key decision: fail closed. Every path that does not end in an ``allow`` with its permit
raises before the action is called, and an answer the client cannot parse counts as no
answer (``WardenUnavailable``), never as permission. Once the action has run, nothing is
raised on its behalf: a failure to report its outcome is logged, since raising then would
tell the caller that an action which did run did not.
"""

from __future__ import annotations

import enum
import functools
import inspect
import json
import logging
import math
import os
import re
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, Literal, ParamSpec, TypeVar, cast, overload
from urllib.parse import quote

import anyio
import httpx
from pydantic import BaseModel, ValidationError

from ._version import __version__
from .errors import (
    ApiError,
    ApprovalExpired,
    ApprovalRejected,
    ApprovalTimeout,
    Denied,
    WardenUnavailable,
)
from .models import (
    Action,
    AnswerRequest,
    Approval,
    ApprovalsBody,
    ApproveProposalRequest,
    BudgetsBody,
    BudgetUsage,
    Decision,
    Denial,
    DenialsBody,
    JSONObject,
    Outcome,
    OutcomeRequest,
    Permit,
    PermitAction,
    PermitKeys,
    PermitVerification,
    PermitVerifyRequest,
    Proposal,
    ProposalPage,
    ProposalRequest,
    QuestionRequest,
    RejectProposalRequest,
    RejectRequest,
    VoteRequest,
)

DEFAULT_URL = "http://127.0.0.1:8080"
"""Where ``warden serve`` listens by default, used when neither ``url`` nor ``WARDEN_URL`` says."""

POLL_SECONDS = 30
"""How long one long-poll asks the server to hold (it accepts 1 to 300)."""

_LOST_WAIT_PAUSES = (0.2, 1.0)
"""Pauses before asking again when a long-poll's connection is lost (a replica restarting
answers nothing; another one answers the same state), then the loss is ``WardenUnavailable``."""

_ERROR_CODE_CHAR = re.compile(r"[^A-Za-z0-9_.-]")

log = logging.getLogger("warden_client")

T = TypeVar("T")
P = ParamSpec("P")
M = TypeVar("M", bound=BaseModel)

ActionLike = Action | Mapping[str, Any]
"""An ``Action``, or a mapping with its fields (``{"type": "ticket.resolve", …}``)."""


class _Default(enum.Enum):
    DEFAULT = enum.auto()


CLIENT_DEFAULT: Literal[_Default.DEFAULT] = _Default.DEFAULT
"""``approval_timeout=CLIENT_DEFAULT``: the timeout the client was made with."""

Timeout = float | None | Literal[_Default.DEFAULT]


class Warden:
    """An async client of one Warden server, acting with one API key.

    ``url`` and ``key`` default to ``WARDEN_URL`` and ``WARDEN_KEY`` (and the URL to
    ``http://127.0.0.1:8080``); a client without a key can still fetch the permit keys.
    ``timeout`` bounds each request in seconds; ``approval_timeout`` is how long ``guard``
    waits for a human, ``None`` (the default) meaning until the approval is decided or
    expires. Use it as ``async with Warden(url, key) as warden:``, or call ``aclose()``.
    """

    def __init__(
        self,
        url: str | None = None,
        key: str | None = None,
        *,
        timeout: float = 10.0,
        approval_timeout: float | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = (url or os.environ.get("WARDEN_URL") or DEFAULT_URL).rstrip("/")
        token = key if key is not None else os.environ.get("WARDEN_KEY")
        headers = {"user-agent": f"warden-client/{__version__}"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        self.timeout = timeout
        self.approval_timeout = approval_timeout
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> Warden:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    # -----------------------------------------------------------------------------------
    # Controllers
    # -----------------------------------------------------------------------------------

    async def evaluate(self, action: ActionLike) -> Decision:
        """Ask Warden about ``action`` (``POST /v1/decisions``) and return its decision.

        A deny is a decision, not an error; ``guard`` is what raises on one.
        """
        return await self._call("POST", "/v1/decisions", Decision, body=_action(action))

    async def decision(self, decision_id: str) -> Decision:
        """A past decision as it stands (the final one once its approval was decided)."""
        return await self._call("GET", f"/v1/decisions/{_segment(decision_id)}", Decision)

    async def report_outcome(
        self,
        decision_id: str,
        status: Literal["executed", "failed"],
        error_code: str | None = None,
    ) -> Outcome:
        """Record how an allowed action went; ``error_code`` is a short machine code."""
        body = OutcomeRequest(status=status, error_code=error_code)
        path = f"/v1/decisions/{_segment(decision_id)}/outcome"
        return await self._call("POST", path, Outcome, body=body)

    async def budgets(
        self, *, agent: str | None = None, run_id: str | None = None
    ) -> list[BudgetUsage]:
        """The live budget and rate-limit counters: an agent's, a run's, or (with neither)
        the tenant's own, each with ``used``, ``limit`` and ``remaining``."""
        params = _params(agent=agent, run_id=run_id)
        return (await self._call("GET", "/v1/budgets", BudgetsBody, params=params)).usage

    async def wait_for_approval(
        self, approval_id: str, *, timeout: float | None = None
    ) -> Approval:
        """Long-poll an approval until it is decided or expires, or ``timeout`` seconds
        pass (``None``: no limit but the approval's own expiry). Returns it as it stands;
        it is still ``pending`` only when the timeout came first. For an approval the
        answer's ``decision`` is the decision as it stands (the final one once decided)."""
        path = f"/v1/approvals/{_segment(approval_id)}/wait"
        return await self._wait(path, Approval, timeout, lambda a: a.status != "pending")

    @overload
    async def guard(
        self,
        action: ActionLike,
        execute: Callable[[Permit], Awaitable[T]],
        *,
        approval_timeout: Timeout = CLIENT_DEFAULT,
    ) -> T: ...

    @overload
    async def guard(
        self,
        action: ActionLike,
        execute: Callable[[Permit], T],
        *,
        approval_timeout: Timeout = CLIENT_DEFAULT,
    ) -> T: ...

    async def guard(
        self,
        action: ActionLike,
        execute: Callable[[Permit], Any],
        *,
        approval_timeout: Timeout = CLIENT_DEFAULT,
    ) -> Any:
        """Run ``execute(permit)`` only if Warden allows ``action``, and return its result.

        Evaluates the action; on ``require_approval`` waits for the human (at most
        ``approval_timeout`` seconds; by default the client's); on allow calls
        ``execute`` with the permit (a sync or an async function), reports the outcome
        (``executed``, or ``failed`` with the exception's type name, never its message)
        and returns what it returned, or re-raises what it raised.

        Raises, with ``execute`` not called: ``Denied`` (``.decision`` has the reasons and
        ``rule_missing``), ``ApprovalRejected``, ``ApprovalExpired``, ``ApprovalTimeout``
        (still pending: call ``guard`` again with the same action and an ``id``, and
        Warden replays the decision and its approval), ``ApiError`` (Warden refused the
        request) or ``WardenUnavailable``.
        """
        decision = await self.evaluate(action)
        if decision.effect == "require_approval":
            timeout = (
                self.approval_timeout if approval_timeout is CLIENT_DEFAULT else approval_timeout
            )
            decision = await self._approved(decision, timeout)
        if decision.effect != "allow":
            raise Denied(decision)
        if decision.permit is None or decision.decision_id is None:
            raise WardenUnavailable("Warden allowed without a permit, which it never does")
        decision_id = decision.decision_id
        try:
            result = execute(decision.permit)
            if inspect.isawaitable(result):
                result = await result
        except Exception as error:
            await self._report_quietly(decision_id, "failed", _error_code(error))
            raise
        await self._report_quietly(decision_id, "executed", None)
        return result

    def guarded(self, action_type: str, **fields: Any) -> GuardDecorator:
        """A decorator that runs the function through ``guard`` as an action of ``action_type``.

        The action's ``payload`` is the call's arguments by name (defaults included,
        ``**kwargs`` spread out, ``*args`` as a list); every keyword given here is another
        field of the action (``target``, ``agent``, ``context``, …, or ``payload`` to
        replace the default), either a value or a function called with those arguments as
        keywords, however the call passed them::

            @warden.guarded("email.send", target=lambda to, **_: {"type": "email", "id": to})
            async def send_email(to: str, subject: str, body: str) -> None: ...

        The decorated function is always async, raises what ``guard`` raises, and is not
        handed the permit (use ``guard`` to pass it on to an executor).
        """
        return GuardDecorator(self, action_type, fields)

    # -----------------------------------------------------------------------------------
    # Executors
    # -----------------------------------------------------------------------------------

    async def permit_keys(self) -> PermitKeys:
        """The public keys permits are signed with, for ``warden_client.verify_permit``."""
        return await self._call("GET", "/v1/permits/keys", PermitKeys)

    async def verify_permit(
        self,
        permit: Permit | str,
        payload: JSONObject | None,
        *,
        action: PermitAction | Mapping[str, Any] | None = None,
    ) -> PermitVerification:
        """Check ``permit`` for ``payload`` online (``POST /v1/permits/verify``).

        A ``valid`` answer has consumed one of the permit's uses; run the action only then.
        ``action`` optionally names the ``type``, ``target`` and ``agent`` about to run.
        """
        body = PermitVerifyRequest(
            permit=permit.token if isinstance(permit, Permit) else permit,
            payload=payload,
            action=None if action is None else PermitAction.model_validate(action),
        )
        return await self._call("POST", "/v1/permits/verify", PermitVerification, body=body)

    # -----------------------------------------------------------------------------------
    # Agents
    # -----------------------------------------------------------------------------------

    async def denials(self, last: int = 10) -> list[Denial]:
        """This agent's most recent denials, newest first, each with its ``rule_missing``."""
        answer = await self._call("GET", "/v1/denials", DenialsBody, params={"last": last})
        return answer.denials

    async def policy_digest(self, agent: str | None = None) -> str:
        """What the agent may and may not do, as Markdown for its system prompt."""
        params = {} if agent is None else {"agent": agent}
        response = await self._send("GET", "/v1/policy/digest", params=params)
        return response.text

    async def propose(
        self,
        rationale: str,
        changes: Sequence[JSONObject],
        *,
        risks: Sequence[str] | None = None,
        confidence: float | None = None,
        evidence: Sequence[str] | None = None,
    ) -> Proposal:
        """Propose a change to the tenant's policy (``POST /v1/proposals``).

        ``changes`` are operations such as ``{"op": "add_rule", "rule": denied.rule_missing}``;
        ``evidence`` names the decisions that motivate them. The answer is Warden's
        review: ``auto_approved`` (already live), ``needs_human``, ``revise_requested``
        (with a ``suggestion``) or ``rejected``.
        """
        body = ProposalRequest(
            rationale=rationale,
            changes=list(changes),
            risks=None if risks is None else list(risks),
            confidence=confidence,
            evidence=None if evidence is None else list(evidence),
        )
        return await self._call("POST", "/v1/proposals", Proposal, body=body)

    async def wait_for_proposal(
        self, proposal_id: str, *, timeout: float | None = None
    ) -> Proposal:
        """Long-poll a proposal until a human (or the review) decides it, or ``timeout``
        seconds pass (``None``: no limit). Returns it as it stands."""
        path = f"/v1/proposals/{_segment(proposal_id)}/wait"
        return await self._wait(path, Proposal, timeout, _proposal_decided)

    async def ask(
        self,
        question: str,
        *,
        options: Sequence[str] | None = None,
        expires_in: str | None = None,
        run_id: str | None = None,
        groups: Sequence[str] | None = None,
    ) -> Approval:
        """Ask a human a question (``POST /v1/questions``); wait with ``wait_for_answer``.

        ``options`` restricts the answer to a choice; ``expires_in`` (e.g. ``"30m"``) is
        how long it stays open; ``groups`` who may answer.
        """
        body = QuestionRequest(
            question=question,
            options=list(options or ()),
            expires_in=expires_in,
            run_id=run_id,
            groups=list(groups or ()),
        )
        return await self._call("POST", "/v1/questions", Approval, body=body)

    async def wait_for_answer(self, question_id: str, *, timeout: float | None = None) -> Approval:
        """Long-poll a question until it is answered or expires, or ``timeout`` seconds
        pass. The answer is in ``.answer`` when ``.status`` is ``answered``."""
        path = f"/v1/questions/{_segment(question_id)}/wait"
        return await self._wait(path, Approval, timeout, lambda q: q.status != "pending")

    # -----------------------------------------------------------------------------------
    # Approvers
    # -----------------------------------------------------------------------------------

    async def approvals(
        self,
        *,
        status: str | None = None,
        kind: Literal["approval", "question"] | None = None,
        limit: int | None = None,
    ) -> list[Approval]:
        """Approvals and questions this key may see, newest first, filtered by ``status``
        (``pending``, ``approved``, ``rejected``, ``expired``, ``answered``) and ``kind``."""
        params = _params(status=status, kind=kind, limit=limit)
        answer = await self._call("GET", "/v1/approvals", ApprovalsBody, params=params)
        return answer.approvals

    async def approval(self, approval_id: str) -> Approval:
        """One approval or question, with its votes."""
        return await self._call("GET", f"/v1/approvals/{_segment(approval_id)}", Approval)

    async def approve(self, approval_id: str, reason: str | None = None) -> Approval:
        """Vote to approve; the approval is decided once its quorum is reached."""
        path = f"/v1/approvals/{_segment(approval_id)}/approve"
        return await self._call("POST", path, Approval, body=VoteRequest(reason=reason))

    async def reject(self, approval_id: str, reason: str) -> Approval:
        """Reject an approval, which denies the action; the reason is recorded."""
        path = f"/v1/approvals/{_segment(approval_id)}/reject"
        return await self._call("POST", path, Approval, body=RejectRequest(reason=reason))

    async def answer(self, question_id: str, answer: str) -> Approval:
        """Answer a question (one of its options, when it has some)."""
        path = f"/v1/questions/{_segment(question_id)}/answer"
        return await self._call("POST", path, Approval, body=AnswerRequest(answer=answer))

    async def proposals(
        self,
        *,
        status: str | None = None,
        source: str | None = None,
        limit: int | None = None,
        before: str | None = None,
    ) -> ProposalPage:
        """A page of proposals, newest first; pass ``next_before`` as ``before`` for the next.

        ``source`` is ``agent`` (agents' proposals) or ``observed`` (Warden's suggestions).
        """
        params = _params(status=status, source=source, limit=limit, before=before)
        return await self._call("GET", "/v1/proposals", ProposalPage, params=params)

    async def proposal(self, proposal_id: str) -> Proposal:
        """One proposal with its analysis."""
        return await self._call("GET", f"/v1/proposals/{_segment(proposal_id)}", Proposal)

    async def approve_proposal(
        self, proposal: Proposal | str, review_token: str | None = None
    ) -> Proposal:
        """Approve a proposal, which publishes its candidate policy.

        The approval binds to a ``review_token``: that of the ``Proposal`` given, or the one
        passed, or else the current analysis's, fetched first (as ``warden proposals
        approve`` does). When the live policy changed since that analysis, Warden answers
        ``ApiError`` with code ``policy_changed`` and the new analysis in ``body["proposal"]``.
        """
        if review_token is None and isinstance(proposal, Proposal):
            review_token = proposal.review_token
        proposal_id = proposal.id if isinstance(proposal, Proposal) else proposal
        if review_token is None:
            review_token = (await self.proposal(proposal_id)).review_token
        path = f"/v1/proposals/{_segment(proposal_id)}/approve"
        body = ApproveProposalRequest(review_token=review_token)
        return await self._call("POST", path, Proposal, body=body)

    async def reject_proposal(self, proposal_id: str, reason: str) -> Proposal:
        """Reject a proposal with a reason the agent reads."""
        path = f"/v1/proposals/{_segment(proposal_id)}/reject"
        body = RejectProposalRequest(reason=reason)
        return await self._call("POST", path, Proposal, body=body)

    # -----------------------------------------------------------------------------------
    # Plumbing
    # -----------------------------------------------------------------------------------

    async def _approved(self, decision: Decision, timeout: float | None) -> Decision:
        """The final decision once the approval ``decision`` opened is decided."""
        if decision.approval is None or decision.approval.id is None:
            raise WardenUnavailable("Warden required an approval without naming it")
        approval = await self.wait_for_approval(decision.approval.id, timeout=timeout)
        if approval.status == "pending":
            raise ApprovalTimeout(decision, approval)
        final = approval.decision
        if final is None:
            if decision.decision_id is None:
                raise WardenUnavailable("Warden required an approval without a decision id")
            final = await self.decision(decision.decision_id)
        if final.effect == "allow":
            return final
        if approval.status == "rejected":
            raise ApprovalRejected(final, approval)
        if approval.status == "expired":
            raise ApprovalExpired(final, approval)
        raise Denied(final)  # approved, but a budget could no longer take it

    async def _report_quietly(
        self, decision_id: str, status: Literal["executed", "failed"], error_code: str | None
    ) -> None:
        try:
            await self.report_outcome(decision_id, status, error_code)
        except Exception as error:  # the action ran: say so, whatever the report does
            log.warning(
                "could not report outcome %s of decision %s: %s", status, decision_id, error
            )

    async def _wait(
        self, path: str, model: type[M], timeout: float | None, decided: Callable[[M], bool]
    ) -> M:
        deadline = None if timeout is None else time.monotonic() + timeout
        lost = 0
        while True:
            left = POLL_SECONDS if deadline is None else deadline - time.monotonic()
            poll = max(1, min(POLL_SECONDS, math.ceil(left)))
            try:
                # The server holds the request up to `poll` seconds; give the answer time.
                state = await self._call(
                    "GET", path, model, params={"timeout": poll}, timeout=poll + self.timeout
                )
            except WardenUnavailable as error:
                if error.status is not None or lost == len(_LOST_WAIT_PAUSES):
                    raise
                await anyio.sleep(_LOST_WAIT_PAUSES[lost])
                lost += 1
                continue
            lost = 0
            if decided(state) or (deadline is not None and time.monotonic() >= deadline):
                return state

    async def _call(
        self,
        method: str,
        path: str,
        model: type[M],
        *,
        body: BaseModel | None = None,
        params: Mapping[str, str | int] | None = None,
        timeout: float | None = None,
    ) -> M:
        response = await self._send(method, path, body=body, params=params, timeout=timeout)
        try:
            return model.model_validate_json(response.content)
        except ValidationError as error:
            problem = error.errors()[0]
            where = ".".join(str(part) for part in problem["loc"]) or "the body"
            raise WardenUnavailable(
                f"Warden's answer to {method} {path} does not parse ({where}: {problem['msg']})",
                status=response.status_code,
            ) from error

    async def _send(
        self,
        method: str,
        path: str,
        *,
        body: BaseModel | None = None,
        params: Mapping[str, str | int] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        headers = {}
        content = None
        if body is not None:
            headers["content-type"] = "application/json"
            content = _encode(body.model_dump(exclude_none=True))
        try:
            response = await self._http.request(
                method,
                path,
                content=content,
                params=params,
                headers=headers,
                timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
            )
        except httpx.RequestError as error:
            raise WardenUnavailable(
                f"cannot reach Warden at {self.url} ({type(error).__name__}): {method} {path}"
            ) from error
        if response.is_success:
            return response
        status = response.status_code
        code, detail, error_body = _error_of(response)
        if 400 <= status < 500 and status not in (408, 429):
            raise ApiError(status, code or f"http_{status}", detail, error_body)
        raise WardenUnavailable(
            f"Warden answered {status} {code or response.reason_phrase}: {detail}",
            status=status,
            code=code,
        )


class GuardDecorator:
    """What ``Warden.guarded(...)`` returns: apply it to a sync or an async function."""

    def __init__(self, warden: Warden, action_type: str, fields: Mapping[str, Any]) -> None:
        self._warden = warden
        self._type = action_type
        self._fields = dict(fields)

    @overload
    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]: ...

    @overload
    def __call__(self, fn: Callable[P, T]) -> Callable[P, Coroutine[Any, Any, T]]: ...

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Coroutine[Any, Any, Any]]:
        @functools.wraps(fn)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> Any:
            action = action_for_call(self._type, self._fields, fn, args, kwargs)
            return await self._warden.guard(action, lambda _permit: fn(*args, **kwargs))

        return guarded


def action_for_call(
    action_type: str,
    fields: Mapping[str, Any],
    fn: Callable[..., Any],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
) -> Action:
    """The action a call of a ``guarded`` function asks about (see ``Warden.guarded``)."""
    arguments = _arguments(fn, args, kwargs)
    values = {
        name: value(**arguments) if callable(value) else value for name, value in fields.items()
    }
    values.setdefault("payload", arguments)
    return Action.model_validate({**values, "type": action_type})


def _arguments(
    fn: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any]
) -> JSONObject:
    """A call's arguments by parameter name, defaults included, ``**kwargs`` spread out."""
    bound = inspect.signature(fn).bind(*args, **kwargs)
    bound.apply_defaults()
    arguments: JSONObject = {}
    for name, value in bound.arguments.items():
        if bound.signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            arguments.update(value)
        elif bound.signature.parameters[name].kind is inspect.Parameter.VAR_POSITIONAL:
            arguments[name] = list(value)
        else:
            arguments[name] = value
    return arguments


def _action(action: ActionLike) -> Action:
    return action if isinstance(action, Action) else Action.model_validate(action)


def _encode(value: Any) -> bytes:
    # NaN and infinities are not JSON: refuse them here rather than send what the server
    # would refuse, or a payload whose digest no executor could compute.
    return json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":")).encode()


def _segment(value: str) -> str:
    """An id as one path segment, so no id can reach another route."""
    return quote(value, safe="")


def _params(**values: str | int | None) -> dict[str, str | int]:
    return {name: value for name, value in values.items() if value is not None}


def _proposal_decided(proposal: Proposal) -> bool:
    return proposal.status not in ("needs_human", "revise_requested")


def _error_code(error: BaseException) -> str:
    """The exception's type name as the outcome's ``error_code`` (its message never leaves)."""
    return _ERROR_CODE_CHAR.sub("_", type(error).__name__)[:64] or "error"


def _error_of(response: httpx.Response) -> tuple[str | None, str, JSONObject | None]:
    """Code, detail and JSON body of an error answer, as far as it has them."""
    try:
        body = response.json()
    except ValueError:
        return None, response.reason_phrase or "no detail", None
    if not isinstance(body, dict):
        return None, response.reason_phrase or "no detail", None
    code = body.get("error") if isinstance(body.get("error"), str) else None
    detail = body.get("detail") if isinstance(body.get("detail"), str) else None
    reasons = body.get("reasons")
    if code is None and isinstance(reasons, list) and reasons and isinstance(reasons[0], dict):
        # A deny in the decision's shape, e.g. 503 `audit_unavailable`.
        first = reasons[0]
        code = first.get("code") if isinstance(first.get("code"), str) else None
        detail = detail or (first.get("message") if isinstance(first.get("message"), str) else None)
    return code, detail or response.reason_phrase or "no detail", cast(JSONObject, body)
