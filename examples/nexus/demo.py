#!/usr/bin/env python3
"""The Nexus demo: Warden between a support desk's agent and what it does, end to end.

    cargo build -p warden && python3 examples/nexus/demo.py

It starts ``warden serve`` on the Nexus policy (examples/nexus/nexus.yaml, tenant ``nexus``)
with a temporary SQLite database on a free port, and tells five short stories with real
calls through the Python SDK (clients/python) and the ``warden`` command line:

1. the four seed rules: a low-confidence resolve denied, a restricted user's external email
   denied, a legal-sensitive escalation approved by a second person and run with its
   permit, an ordinary resolve allowed;
2. fail closed: the executor refuses a swapped payload, and with Warden stopped nothing runs;
3. the proposal loop: a denied agent proposes the rule it misses, a human approves it and
   the retry runs; a broadening proposal is rejected with a reason the agent reads;
4. a per-run budget used up mid-run, and a question a human answers;
5. the audit trail of all of it, its hash chain verified, and its OCSF export.

Every step checks its outcome: if anything differs from what the narration says, the demo
stops with exit 1 and names the step. ``--quiet`` prints one line per step.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
NEXUS = ROOT / "examples" / "nexus" / "nexus.yaml"
TENANT = "nexus"
AGENT = "support-bot"

# This checkout's SDK first, installed or not, as this checkout's binary is the one run.
sys.path.insert(0, str(ROOT / "clients" / "python" / "src"))
try:
    import httpx
    import warden_client
    from warden_client import (
        ApiError,
        Denied,
        Permit,
        Warden,
        WardenUnavailable,
        permit_claims,
        verify_permit,
    )
except ImportError as missing:
    sys.exit(
        f"demo: the Python SDK cannot be imported ({missing}); install its dependencies with "
        "`python3 -m pip install -e clients/python`"
    )

# ---------------------------------------------------------------------------------------
# Telling the story, and checking it
# ---------------------------------------------------------------------------------------


class StepFailed(Exception):
    """An outcome differed from what the narration says."""


def expect(condition: bool, what: str) -> None:
    """The demo's assertion: ``what`` is the outcome the narration promised."""
    if not condition:
        raise StepFailed(f"expected: {what}")


class Story:
    """Narration on stdout: plain lines for the story, indented lines for real output."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, flush=True)

    def out(self, text: str) -> None:
        if not self.quiet:
            for line in text.rstrip("\n").splitlines():
                print("    " + line, flush=True)

    def heading(self, number: int, title: str) -> None:
        if not self.quiet:
            print(f"\n=== {number}. {title} ===", flush=True)


def reasons(decision: warden_client.Decision) -> str:
    """A decision's id and effect, then each reason: effect, rule (or code), message."""
    lines = [f"decision {decision.decision_id}: {decision.effect}"]
    lines += [f"  {r.effect} {r.rule or r.code}: {r.message}" for r in decision.reasons]
    return "\n".join(lines)


def deciding(decision: warden_client.Decision) -> warden_client.Reason:
    """The reason that gave the decision its effect (a `modify` reason may come before it)."""
    return next(r for r in decision.reasons if r.effect == decision.effect)


def compact(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "), ensure_ascii=False)


# ---------------------------------------------------------------------------------------
# The warden binary and its server
# ---------------------------------------------------------------------------------------


def find_warden(given: str | None) -> Path:
    """--warden, else $WARDEN_BIN, else this checkout's release build, then its debug one."""
    for candidate in (given, os.environ.get("WARDEN_BIN")):
        if candidate:
            path = Path(candidate)
            if not path.is_file():
                sys.exit(f"demo: no warden binary at {path}")
            return path
    for build in ("release", "debug"):
        path = ROOT / "target" / build / "warden"
        if path.is_file():
            return path
    sys.exit(
        "demo: no warden binary; build one with `cargo build -p warden`, or pass --warden PATH"
    )


def clean_env() -> dict[str, str]:
    """The environment for the processes the demo starts: no WARDEN_* from the shell."""
    return {k: v for k, v in os.environ.items() if not k.startswith("WARDEN_")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


try:  # Looked up before any fork: the child then only calls it.
    _PRCTL: Callable[..., int] | None = (
        ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
    )
except (OSError, AttributeError):
    _PRCTL = None


def _die_with_parent() -> None:
    """In the child, before exec: receive SIGTERM when the demo dies, however it dies."""
    if _PRCTL is not None:
        _PRCTL(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


class Server:
    """``warden serve`` over the demo's folder: policies/, warden.db, the key files."""

    def __init__(self, binary: Path, home: Path, port: int) -> None:
        self.binary = binary
        self.home = home
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = home / "serve.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [
                    str(self.binary),
                    "serve",
                    "--listen",
                    f"127.0.0.1:{self.port}",
                    "--db",
                    str(self.home / "warden.db"),
                    "--policies",
                    str(self.home / "policies"),
                    "--data-dir",
                    str(self.home),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={**clean_env(), "RUST_LOG": "warn", "NO_COLOR": "1"},
                preexec_fn=_die_with_parent if _PRCTL is not None else None,
            )
        deadline = time.monotonic() + 60
        while not self.healthy():
            if self.process.poll() is not None:
                raise StepFailed(
                    f"warden serve exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise StepFailed(f"warden serve was not healthy within 60 s:\n{self.log_tail()}")
            time.sleep(0.05)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=1) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def stop(self) -> int:
        """SIGTERM, as an operator stops it; returns its exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise StepFailed("warden serve did not stop within 30 s of SIGTERM") from None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class Keys:
    controller: str  # the helpdesk's execution controller, acting for support-* agents
    agent: str  # support-bot itself: its denials, proposals and questions
    executor: str  # the worker that runs actions: may only verify permits
    alice: str  # approver, group legal
    priya: str  # approver, group policy: reviews policy changes, answers questions


@dataclass
class Actors:
    """The same actors, each with an SDK client holding its key."""

    controller: Warden
    agent: Warden
    executor: Warden
    alice: Warden
    priya: Warden
    public: Warden  # no key: what anyone may read (the permit keys)


class Demo:
    def __init__(self, binary: Path, home: Path, story: Story) -> None:
        self.binary = binary
        self.home = home
        self.story = story
        self.db = str(home / "warden.db")
        self.server = Server(binary, home, free_port())
        self._keys: Keys | None = None
        self.ran: list[str] = []  # every action an executor actually ran, in order
        self.first_denial: str | None = None
        self.last_permit_decision: str | None = None

    @property
    def keys(self) -> Keys:
        if self._keys is None:
            raise StepFailed("the keys are made when Warden starts (step 0)")
        return self._keys

    def runs(self, what: str, result: Any = None) -> Callable[[Permit], Any]:
        """An action's function for ``guard``: records that it ran, returns ``result``."""

        def execute(permit: Permit) -> Any:
            self.ran.append(what)
            return result

        return execute

    # The command line, as an operator or an approver at a terminal uses it.

    def warden(self, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
        env = clean_env()
        if key is not None:
            env.update(WARDEN_URL=self.server.url, WARDEN_KEY=key)
        done = subprocess.run(
            [str(self.binary), *args], env=env, capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            raise StepFailed(
                f"`warden {' '.join(args)}` exited {done.returncode}: "
                f"{done.stderr.strip() or done.stdout.strip()}"
            )
        return done

    def shell(self, *args: str) -> str:
        """How a command is shown: as typed, without the demo's temporary paths."""
        shown = shlex.join(args).replace(self.db, "warden.db").replace(str(self.home) + "/", "")
        return "$ warden " + shown

    def create_key(self, *args: str) -> str:
        """``warden keys create``: the token is the first line; the rest is shown."""
        command = ("keys", "create", "--db", self.db, "--tenant", TENANT, *args)
        done = self.warden(*command)
        token = done.stdout.splitlines()[0].strip()
        expect(token.startswith("wdn_"), f"`warden keys create {' '.join(args)}` prints a token")
        secret = token.rsplit("_", 1)[0] + "_..."  # the secret is the demo's alone
        self.story.out(f"{self.shell(*command)}\n{secret}\n{done.stderr.strip()}")
        return token

    @asynccontextmanager
    async def clients(self) -> AsyncIterator[Actors]:
        """One SDK client per actor, opened for one step (a step may restart the server)."""
        async with AsyncExitStack() as stack:
            clients = {
                name: await stack.enter_async_context(Warden(self.server.url, key, timeout=10))
                for name, key in [*vars(self.keys).items(), ("public", None)]
            }
            yield Actors(**clients)

    def action(self, type_: str, target: tuple[str, str], **fields: Any) -> dict[str, Any]:
        """An action support-bot takes in the helpdesk, on behalf of customer user-991."""
        return {
            "type": type_,
            "target": {"type": target[0], "id": target[1]},
            "agent": AGENT,
            "on_behalf_of": "user-991",
            "app": "helpdesk",
            "mode": "auto",
            **fields,
        }


# ---------------------------------------------------------------------------------------
# 0. Warden starts
# ---------------------------------------------------------------------------------------


async def start(demo: Demo) -> None:
    say = demo.story.say
    home = demo.home
    (home / "policies").mkdir()
    shutil.copy(NEXUS, home / "policies" / f"{TENANT}.yaml")
    demo.warden("migrate", "--db", demo.db)
    say("The actors' API keys, made in the database before Warden starts. An approver key")
    say("names its user and the groups it approves for:")
    demo._keys = Keys(
        controller=demo.create_key(
            "--role", "controller", "--agent", "support-*", "--label", "helpdesk"
        ),
        agent=demo.create_key("--role", "agent", "--agent", AGENT),
        executor=demo.create_key("--role", "executor", "--label", "helpdesk worker"),
        alice=demo.create_key("--role", "approver", "--user", "alice", "--group", "legal"),
        priya=demo.create_key("--role", "approver", "--user", "priya", "--group", "policy"),
    )
    demo.server.start()
    version = demo.warden("--version").stdout.split()[-1]
    say(
        f"\nwarden {version} serves {NEXUS.relative_to(ROOT)} as tenant `{TENANT}` at "
        f"{demo.server.url}, on SQLite in {home}."
    )


# ---------------------------------------------------------------------------------------
# 1. The four seed rules
# ---------------------------------------------------------------------------------------


async def seed_rules(demo: Demo) -> None:
    say, out = demo.story.say, demo.story.out
    async with demo.clients() as a:
        keys = await a.public.permit_keys()

        # A low-confidence auto-resolve.
        say("support-bot wants to auto-resolve ticket T-1042, 82% sure of its fix.")
        resolve = demo.action(
            "ticket.resolve",
            ("ticket", "T-1042"),
            confidence=0.82,
            run_id="run-77",
            payload={"resolution": "refund issued", "external": False},
            context={"ticket": {"flags": [], "priority": "high"}, "user": {"role": "agent"}},
        )
        try:
            await a.controller.guard(resolve, execute=demo.runs("resolve T-1042 at 0.82"))
            raise StepFailed("a resolve at confidence 0.82 was allowed")
        except Denied as denied:
            d = denied.decision
            out(reasons(d))
            demo.first_denial = d.decision_id
            expect(
                deciding(d).rule == "low-confidence-resolve", "the deny is low-confidence-resolve's"
            )
            expect(d.confidence is not None, "the decision carries the confidence")
            assert d.confidence is not None
            out(
                f"confidence {d.confidence.initial} -> {d.confidence.adjusted} "
                "after the rule's adjustment"
            )
            expect(abs(d.confidence.adjusted - 0.72) < 1e-9, "confidence is adjusted to 0.72")
        expect(not demo.ran, "nothing ran")

        say("\nA restricted user asks support-bot to email someone outside the company.")
        email = demo.action(
            "email.send",
            ("email", "ext-88"),
            on_behalf_of="user-407",
            payload={"to": "press@elsewhere.example", "external": True, "subject": "Our outage"},
            context={"user": {"role": "restricted"}},
        )
        try:
            await a.controller.guard(email, execute=demo.runs("external email"))
            raise StepFailed("a restricted user's external email was allowed")
        except Denied as denied:
            out(reasons(denied.decision))
            expect(
                deciding(denied.decision).rule == "restricted-external-email",
                "the deny is restricted-external-email's",
            )
        expect(not demo.ran, "nothing ran")

        say("\nTicket T-2001 mentions a lawyer: support-bot escalates it, which needs legal.")
        payload = {"queue": "legal", "note": "customer mentions a lawyer"}
        escalate = demo.action(
            "ticket.escalate",
            ("ticket", "T-2001"),
            confidence=0.9,
            payload=payload,
            context={
                "ticket": {"flags": ["legal_sensitive"], "priority": "urgent"},
                "user": {"role": "agent"},
            },
        )

        async def run_escalation(permit: Permit) -> str:
            # The executor checks the permit online (one use) for the payload it will run.
            check = await a.executor.verify_permit(permit, payload)
            out(
                f"executor: permit {check.reason}, {check.uses_left} uses left "
                "-> escalating T-2001 to legal"
            )
            expect(check.valid, "the granted permit verifies for the approved payload")
            demo.ran.append("escalate T-2001")
            return "T-2001 is with legal"

        waiting = asyncio.create_task(a.controller.guard(escalate, execute=run_escalation))
        pending = await wait_for_pending(a.alice, "ticket.escalate", waiting)
        out(
            f"{pending.status}: approval {pending.id}, rule {pending.rule_id}, "
            f"approvers {pending.approvers}, expires {pending.expires_at:%Y-%m-%d %H:%M} UTC"
        )
        expect(pending.rule_id == "legal-escalation", "legal-escalation asks for the approval")
        expect(not demo.ran, "nothing ran while the approval is pending")

        say("priya is an approver, but not in `legal`; she cannot decide it:")
        try:
            await a.priya.approve(pending.id, reason="looks fine")
            raise StepFailed("an approver outside `legal` approved a legal escalation")
        except ApiError as refused:
            out(f"{refused.status} {refused.code}: {refused.detail}")
            expect(refused.status == 403, "an approver outside the rule's groups gets 403")

        say("alice (legal) approves it; the controller's guard, waiting all along, wakes:")
        voted = await a.alice.approve(pending.id, reason="reviewed the thread: escalate")
        out(f"alice: {voted.status} ({voted.votes[0].reason})")
        result = await asyncio.wait_for(waiting, 30)
        out(f"guard returned: {result!r}")
        expect(
            voted.status == "approved" and demo.ran == ["escalate T-2001"],
            "the escalation ran once, after approval",
        )
        final = await a.controller.decision(pending.decision_id or "")
        out("the decision as it stands now:\n" + reasons(final))
        expect(
            final.effect == "allow" and final.reasons[0].code == "approval_granted",
            "the final decision is allow",
        )

        say("\nA confident resolve is an ordinary action: allowed, with a permit.")
        resolve_ok = {**resolve, "target": {"type": "ticket", "id": "T-1043"}, "confidence": 0.93}

        def run_resolve(permit: Permit) -> str:
            claims = permit_claims(permit) or {}
            check = verify_permit(
                permit, resolve_ok["payload"], keys
            )  # offline, with the public keys
            demo.last_permit_decision = claims.get("decision_id")
            out(
                f"executor: permit for {claims.get('action_type')} "
                f"on {claims.get('target', {}).get('id')}, "
                f"checked offline with the public keys: {check.reason} -> resolving"
            )
            expect(check.valid, "the permit verifies offline")
            demo.ran.append("resolve T-1043")
            return "resolved"

        expect(
            await a.controller.guard(resolve_ok, execute=run_resolve) == "resolved",
            "the resolve ran",
        )
        expect(demo.ran[-1] == "resolve T-1043", "the confident resolve ran")
        allowed = await a.controller.decision(demo.last_permit_decision or "")
        out(
            reasons(allowed)
            + f"\n  obligations: {compact(allowed.obligations)} (support agents are at tier draft)"
        )
        expect(
            allowed.obligations.get("mode") == "draft",
            "the allow carries the draft-mode obligation",
        )


async def still_waiting(waiting: asyncio.Task[Any]) -> None:
    """Lets a long-poll reach the server, so the human decides while it is open."""
    await asyncio.sleep(0.2)
    if waiting.done():
        waiting.result()  # raises what the wait raised
        raise StepFailed("the wait ended before anyone decided")


async def wait_for_pending(approver: Warden, action_type: str, waiting: asyncio.Task[Any]) -> Any:
    """The pending approval of ``action_type`` as its approver's inbox shows it."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for approval in await approver.approvals(status="pending", kind="approval"):
            if approval.action_type == action_type:
                return approval
        if waiting.done():
            waiting.result()  # raises what guard raised
            raise StepFailed(f"guard returned before a {action_type} approval was decided")
        await asyncio.sleep(0.05)
    raise StepFailed(f"no pending {action_type} approval appeared in the approver's inbox")


# ---------------------------------------------------------------------------------------
# 2. Fail closed
# ---------------------------------------------------------------------------------------


class PermitRefused(Exception):
    """The executor's refusal to run what a permit does not cover."""


async def fail_closed(demo: Demo) -> None:
    say, out = demo.story.say, demo.story.out
    async with demo.clients() as a:
        keys = await a.public.permit_keys()
        say("support-bot sends customer dana a refund notice; on its way to the executor")
        say("the payload is swapped for another. The permit binds the payload's SHA-256:")
        allowed = {
            "to": "dana@customer.example",
            "external": True,
            "body": "Your refund of $40 is on its way.",
        }
        swapped = {**allowed, "to": "mallory@attacker.example", "body": "Please wire $4,000 to..."}
        email = demo.action(
            "email.send", ("email", "dana"), payload=allowed, context={"user": {"role": "agent"}}
        )

        async def executor(permit: Permit) -> None:
            # What it was handed to send is `swapped`; it checks the permit against that.
            offline = verify_permit(permit, swapped, keys)
            online = await a.executor.verify_permit(permit, swapped)
            out(f"executor, swapped payload: offline {offline.reason}, online {online.reason}")
            genuine = verify_permit(permit, allowed, keys)
            out(f"(the same permit with the payload that was allowed: {genuine.reason})")
            expect(
                offline.reason == online.reason == "payload_mismatch",
                "the swapped payload is payload_mismatch",
            )
            expect(genuine.valid, "the permit is valid for the allowed payload")
            if not (offline.valid and online.valid):
                raise PermitRefused(online.reason)
            demo.ran.append(f"email {swapped['to']}")

        try:
            await a.controller.guard(email, execute=executor)
            raise StepFailed("the executor sent a swapped payload")
        except PermitRefused as refused:
            out(f"executor refused ({refused}); guard reported the outcome `failed` and re-raised")
        expect(not any(r.startswith("email") for r in demo.ran), "nothing was sent")

    say("\nThe operator stops Warden (SIGTERM); the next action finds no Warden to ask:")
    code = demo.server.stop()
    out(f"warden serve exited {code}")
    expect(code == 0, "warden serve drains and exits 0 on SIGTERM")
    async with demo.clients() as a:
        try:
            await a.controller.guard(
                demo.action("ticket.resolve", ("ticket", "T-1044"), confidence=0.97),
                execute=demo.runs("resolve T-1044"),
            )
            raise StepFailed("an action ran with Warden stopped")
        except WardenUnavailable as down:
            out(f"WardenUnavailable: {down}")
    expect("resolve T-1044" not in demo.ran, "the action's function never ran")
    out("the resolve's function never ran")

    say("Warden restarts on the same database; everything above is still there.")
    demo.server.start()
    async with demo.clients() as a:
        first = await a.controller.decision(demo.first_denial or "")
        out(
            f"healthy again at {demo.server.url}; the first denial reads "
            f"{first.effect} ({deciding(first).rule})"
        )
        expect(first.effect == "deny", "decisions survive the restart")


# ---------------------------------------------------------------------------------------
# 3. The proposal loop
# ---------------------------------------------------------------------------------------


async def proposal_loop(demo: Demo) -> None:
    say, out = demo.story.say, demo.story.out
    export = demo.action(
        "crm.export", ("account", "A-7"), confidence=0.9, payload={"format": "csv"}
    )
    async with demo.clients() as a:
        say("A customer asks for an export of their account A-7. No rule covers crm.export:")
        try:
            await a.controller.guard(export, execute=demo.runs("export A-7"))
            raise StepFailed("crm.export was allowed before any rule covered it")
        except Denied as denied:
            out(reasons(denied.decision))
            missing = denied.rule_missing
            out(f"rule_missing: {compact(missing)}")
            out("next_steps: " + ", ".join(step["action"] for step in denied.decision.next_steps))
            expect(
                missing is not None and missing["actions"] == ["crm.export"],
                "the deny names the missing rule",
            )
            expect(
                any(s["action"] == "submit_proposal" for s in denied.decision.next_steps),
                "a proposal is a next step",
            )

        say("\nsupport-bot reads its own denials and proposes exactly the missing rule:")
        denial = (await a.agent.denials(last=1))[0]
        out(f"latest denial: {denial.decision_id} {denial.action_type} {denial.rules}")
        narrow = await a.agent.propose(
            "customer user-991 asked for an export of their account A-7",
            [{"op": "add_rule", "rule": denial.rule_missing}],
            risks=["exports one account's data, for one agent"],
            confidence=0.9,
            evidence=[denial.decision_id or ""],
        )
        show_review(demo, narrow)
        # A rule that allows more is broadening by definition: it waits for a human.
        expect(
            narrow.status == "needs_human" and narrow.classification == "broadening",
            "the grant needs a human",
        )
        expect(
            len(narrow.counterexamples) >= 1 and not narrow.findings,
            "one exact counterexample, no findings",
        )

        say("support-bot waits; priya reviews the analysis at her terminal and approves:")
        waiting = asyncio.create_task(a.agent.wait_for_proposal(narrow.id, timeout=30))
        await still_waiting(waiting)
        approve = ("proposals", "approve", narrow.id)
        out(
            demo.shell(*approve)
            + "\n"
            + fields(
                demo.warden(*approve, key=demo.keys.priya).stdout, "status", "decided", "applied"
            )
        )
        woke = await asyncio.wait_for(waiting, 30)
        out(
            f"support-bot's wait woke: {woke.status} by {woke.decided_by}, "
            f"live as version {woke.version}"
        )
        expect(
            woke.status == "approved" and woke.version == "1.0.1",
            "the proposal is approved and published as 1.0.1",
        )

        say("support-bot retries the export:")
        done = await a.controller.guard(export, execute=demo.runs("export A-7", "exported"))
        out(f"allow -> {done}")
        expect(demo.ran[-1] == "export A-7", "the retry ran")

        say("\nEmboldened, support-bot proposes that support agents may run any crm.* action:")
        broad = await a.agent.propose(
            "exports keep coming up; let support agents handle CRM requests themselves",
            [
                {
                    "op": "add_rule",
                    "rule": {
                        "id": "support-may-use-crm",
                        "actions": ["crm.*"],
                        "agents": ["support-*"],
                        "effect": "allow",
                        "description": "support agents may run any CRM action",
                    },
                }
            ],
            risks=["support agents could export or change any account"],
            confidence=0.6,
        )
        show_review(demo, broad)
        expect(
            broad.classification == "broadening" and bool(broad.counterexamples),
            "broadening, with counterexamples",
        )
        expect(
            any(f["code"] == "wildcard_grant" for f in broad.findings),
            "it is flagged as a wildcard grant",
        )
        expect(broad.status in ("needs_human", "revise_requested"), "a human decides it")

        waiting = asyncio.create_task(a.agent.wait_for_proposal(broad.id, timeout=30))
        await still_waiting(waiting)
        reason = "too broad: any CRM action on any account; propose the account and action you need"
        reject = ("proposals", "reject", broad.id, "--reason", reason)
        say("priya rejects it, with a reason:")
        out(
            demo.shell(*reject)
            + "\n"
            + fields(
                demo.warden(*reject, key=demo.keys.priya).stdout, "status", "decided", "reason"
            )
        )
        woke = await asyncio.wait_for(waiting, 30)
        out(f"support-bot reads: {woke.status} by {woke.decided_by}: {woke.reason!r}")
        expect(
            woke.status == "rejected" and woke.reason == reason,
            "the agent reads the rejection and its reason",
        )

        try:
            await a.controller.guard(
                {**export, "target": {"type": "account", "id": "A-8"}},
                execute=demo.runs("export A-8"),
            )
            raise StepFailed("the rejected rule took effect")
        except Denied as denied:
            out(
                f"crm.export of A-8 is still {denied.decision.effect}: "
                f"{deciding(denied.decision).message}"
            )
            expect(
                deciding(denied.decision).code == "default_effect",
                "A-8 is still denied by the default",
            )


def show_review(demo: Demo, proposal: warden_client.Proposal) -> None:
    out = demo.story.out
    out(
        f"proposal {proposal.id}: {proposal.status}, {proposal.classification}: "
        + "; ".join(proposal.reasons)
    )
    for example in proposal.counterexamples:
        act = {k: v for k, v in example["action"].items() if k != "usage"}
        out(
            f"  counterexample: {compact(act)}\n"
            f"    live {example['live']['effect']}, candidate {example['candidate']['effect']}"
        )
    for finding in proposal.findings:
        out(f"  finding {finding['code']}: {finding['message']}")
    flips = ", ".join(
        f"{f['from']}->{f['to']}: {f['count']}" for f in proposal.impact.get("flips", [])
    )
    out(
        f"  impact: {proposal.impact.get('replayed')} recent decisions replayed; "
        f"flips: {flips or 'none'}"
    )


def fields(record: str, *names: str) -> str:
    """The lines of a `warden proposals` record that start with one of ``names``."""
    return "\n".join(line for line in record.splitlines() if line.split(" ", 1)[0] in names)


# ---------------------------------------------------------------------------------------
# 4. A budget used up mid-run, and a question to a human
# ---------------------------------------------------------------------------------------


async def budget_and_question(demo: Demo) -> None:
    say, out = demo.story.say, demo.story.out
    run = "run-204"
    tickets = [f"T-21{n:02}" for n in range(1, 7)]
    async with demo.clients() as a:
        say(
            f"In {run}, support-bot works through {len(tickets)} tickets "
            "at $1.25 of model time each;"
        )
        say("the policy's per-run budget is $5.")
        stopped: Denied | None = None
        for ticket in tickets:
            act = demo.action(
                "ticket.resolve",
                ("ticket", ticket),
                confidence=0.95,
                run_id=run,
                payload={"resolution": "password reset link sent"},
                usage={"cost_usd": 1.25, "tokens": 4000},
            )
            try:
                await a.controller.guard(act, execute=demo.runs(f"resolve {ticket}"))
                out(f"{ticket}: allow, resolved")
            except Denied as denied:
                stopped = denied
                out(
                    f"{ticket}: {denied.decision.effect} {denied.reasons[0].code}: "
                    f"{denied.reasons[0].message}"
                )
                break
        resolved = [r.split()[1] for r in demo.ran if r.startswith("resolve T-21")]
        expect(resolved == tickets[:4], "four tickets fit in $5, and only they ran")
        if stopped is None:
            raise StepFailed("the whole run fit in the budget")
        expect(stopped.reasons[0].code == "budget_exceeded", "the fifth is budget_exceeded")
        limit = stopped.reasons[0].limit
        expect(
            limit is not None and limit.id == "per-run" and limit.counter == "cost_usd",
            "the per-run cost_usd limit",
        )

        # The SDK has no call for GET /v1/budgets; plain httpx for this one.
        async with httpx.AsyncClient(base_url=demo.server.url, timeout=10) as http:
            answer = await http.get(
                "/v1/budgets",
                params={"agent": AGENT, "run_id": run},
                headers={"authorization": f"Bearer {demo.keys.controller}"},
            )
        answer.raise_for_status()
        usage = [
            u
            for u in answer.json()["usage"]
            if u["run_id"] == run and u["counter"] in ("cost_usd", "tool_calls")
        ]
        for u in usage:
            out(
                f"GET /v1/budgets: {u['id']} {u['counter']}: "
                f"{u['used']:g} used of {u['limit']:g}, {u['remaining']:g} left"
            )
        cost = next(u for u in usage if u["counter"] == "cost_usd")
        expect(cost["used"] == 5 and cost["remaining"] == 0, "the run spent exactly its $5")

        left = tickets[len(resolved) :]
        say(f"\nsupport-bot stops and asks a human what to do with {', '.join(left)}:")
        question = await a.agent.ask(
            f"{run} has used its $5 budget with {len(left)} tickets left "
            f"({', '.join(left)}). What should I do?",
            options=["hand them to a human", "start a new run"],
            run_id=run,
        )
        out(f"question {question.id}: {question.status}, options {question.options}")
        waiting = asyncio.create_task(a.agent.wait_for_answer(question.id, timeout=30))
        await still_waiting(waiting)
        inbox = await a.priya.approvals(status="pending", kind="question")
        expect([q.id for q in inbox] == [question.id], "the question is in the approvers' inbox")
        say("priya answers from her inbox:")
        await a.priya.answer(question.id, "hand them to a human")
        answered = await asyncio.wait_for(waiting, 30)
        out(
            f"support-bot's wait woke: {answered.status} by {answered.votes[0].user}: "
            f"{answered.answer!r}"
        )
        expect(
            answered.status == "answered" and answered.answer == "hand them to a human",
            "the agent reads the answer",
        )


# ---------------------------------------------------------------------------------------
# 5. The audit trail
# ---------------------------------------------------------------------------------------


async def audit_trail(demo: Demo) -> None:
    say, out = demo.story.say, demo.story.out
    query = ("audit", "query", "--db", demo.db, "--tenant", TENANT, "--limit", "1000")
    say("Everything above is in the audit log, oldest first (the server is still running):")
    text = demo.warden(*query).stdout
    out(demo.shell(*query) + "\n" + text)
    events = [json.loads(line) for line in demo.warden(*query, "--json").stdout.splitlines()]
    expect(len(events) == len(text.splitlines()), "text and JSON list the same events")

    kinds = {e["kind"] for e in events}
    wanted = {
        "key_created",
        "policy_published",
        "decision",
        "approval_vote",
        "approval_outcome",
        "outcome",
        "permit_verified",
        "proposal_submitted",
        "proposal_decided",
        "question_asked",
        "question_outcome",
    }
    expect(
        wanted <= kinds,
        f"the log holds every kind of event above (missing {sorted(wanted - kinds)})",
    )
    effects = [e["effect"] for e in events if e["kind"] == "decision"]
    expect(effects.count("require_approval") == 1, "one decision waited for approval")
    verified = [e["detail"]["reason"] for e in events if e["kind"] == "permit_verified"]
    expect(
        verified == ["valid", "payload_mismatch"],
        "two online permit checks: valid, then payload_mismatch",
    )
    failed = [e for e in events if e["kind"] == "outcome" and e["detail"].get("status") == "failed"]
    expect(
        len(failed) == 1 and failed[0]["detail"].get("error_code") == "PermitRefused",
        "one failed outcome",
    )
    decided = [e["detail"]["decision"] for e in events if e["kind"] == "proposal_decided"]
    expect(decided == ["approved", "rejected"], "one proposal approved, one rejected")
    expect(
        not any("dana@customer.example" in json.dumps(e) for e in events),
        "no payload is stored verbatim",
    )

    say("\nThe hash chain, recomputed:")
    verify = ("audit", "verify", "--db", demo.db)
    verdict = demo.warden(*verify).stdout.strip()
    out(demo.shell(*verify) + "\n" + verdict)
    expect(verdict.startswith("chain intact"), "the chain is intact")

    say("\nAnd the same events for a SIEM, as OCSF 1.3.0 API Activity records:")
    path = demo.home / "audit.ocsf.jsonl"
    export = (
        "audit",
        "export",
        "--format",
        "ocsf",
        "--db",
        demo.db,
        "--tenant",
        TENANT,
        "--output",
        str(path),
    )
    done = demo.warden(*export)
    out(demo.shell(*export) + "\n" + done.stderr.strip())
    records = [json.loads(line) for line in path.read_text().splitlines()]
    expect(len(records) == len(events), "one OCSF record per event")
    expect(
        all(r["class_uid"] == 6003 and r["metadata"]["version"] == "1.3.0" for r in records),
        "all API Activity, 1.3.0",
    )
    expect(
        [r["metadata"]["sequence"] for r in records] == [e["seq"] for e in events], "in chain order"
    )
    denied = next(
        r for r in records if "low-confidence-resolve" in r.get("unmapped", {}).get("rule_ids", [])
    )
    out(
        "the low-confidence resolve, as a SIEM receives it:\n"
        + "\n".join(
            f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}"
            for key, value in denied.items()
        )
    )
    expect(
        denied["status"] == "Failure" and denied["unmapped"]["confidence_adjusted"] == 0.72,
        "the deny, in OCSF",
    )


# ---------------------------------------------------------------------------------------


STEPS: list[tuple[str, Callable[[Demo], Any]]] = [
    ("Warden starts on the Nexus policy", start),
    ("The four seed rules", seed_rules),
    ("Fail closed", fail_closed),
    ("The proposal loop", proposal_loop),
    ("A budget used up mid-run, and a question to a human", budget_and_question),
    ("The audit trail, verified and exported", audit_trail),
]


async def run(demo: Demo) -> int:
    story = demo.story
    started = time.monotonic()
    for number, (title, step) in enumerate(STEPS):
        story.heading(number, title)
        try:
            await step(demo)
        except Exception as error:
            what = (
                str(error) if isinstance(error, StepFailed) else f"{type(error).__name__}: {error}"
            )
            print(f"\ndemo FAILED at step {number} ({title}): {what}", file=sys.stderr, flush=True)
            if not isinstance(error, StepFailed):
                traceback.print_exc()
            print(f"warden serve's log ends:\n{demo.server.log_tail()}", file=sys.stderr)
            return 1
        if story.quiet:
            print(f"{number}. {title}: ok", flush=True)
    print(f"\nThe Nexus demo: every step held, in {time.monotonic() - started:.1f} s.", flush=True)
    return 0


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--warden",
        metavar="PATH",
        help="the warden binary (default: $WARDEN_BIN, else target/release/warden, "
        "else target/debug/warden)",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="print one line per step instead of the story"
    )
    args = parser.parse_args()
    binary = find_warden(args.warden)
    home = Path(tempfile.mkdtemp(prefix="warden-demo-"))
    demo = Demo(binary, home, Story(args.quiet))
    # SIGTERM (a CI timeout, the test harness) ends the demo the way Ctrl-C does.
    signal.signal(signal.SIGTERM, interrupt)
    try:
        return asyncio.run(run(demo))
    except KeyboardInterrupt:
        print("\ndemo: interrupted", file=sys.stderr)
        return 130
    finally:
        demo.server.stop()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
