"""Checking a permit offline, as an executor does before it runs an action.

A permit (docs/PERMITS.md) is a compact JWS signed with Ed25519 that binds a decision to
the action type, target, agent and the SHA-256 of the payload in RFC 8785 canonical JSON.
``verify_permit`` checks the signature against the keys of ``GET /v1/permits/keys``, the
expiry, the action and the payload digest, in the server's order and with the server's
reason codes; only counting uses needs the online check (``Warden.verify_permit``).

Key decision: the canonical form is written out here, rule by rule, rather than taken from
a library, because it must agree byte for byte with the server's (crates/warden-server/
src/jcs.rs); tests/test_permits.py holds the two together on payloads the server signed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .models import JSONObject, Permit, PermitAction, PermitKeys, Target

MAX_TOKEN_BYTES = 4096
"""The longest token the server accepts."""

_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


@dataclass(frozen=True)
class PermitCheck:
    """The verdict of an offline check. Run the action only when ``valid``."""

    valid: bool
    """Whether signature, expiry, action and payload all check out."""
    reason: str
    """``valid``, or the first failed check: ``bad_signature``, ``unknown_key``,
    ``expired``, ``action_mismatch`` or ``payload_mismatch`` (the server's codes)."""
    claims: JSONObject | None = None
    """The permit's claims, once its signature verified."""


def canonical_json(value: Any) -> str:
    """``value`` (as ``json.loads`` returns it) in RFC 8785 canonical form."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return _number(float(value))
    if isinstance(value, str):
        # ensure_ascii=False escapes exactly what ECMAScript's JSON.stringify does: `"`,
        # `\`, the five short forms, other controls as lowercase \u00xx; the rest as is.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(canonical_json(item) for item in value) + "]"
    if isinstance(value, Mapping):
        # Keys sorted by UTF-16 code units: big-endian UTF-16 bytes sort the same way,
        # which differs from code point order above the BMP versus U+E000..U+FFFF.
        keys = sorted(value, key=lambda key: _str(key).encode("utf-16-be"))
        members = (
            json.dumps(key, ensure_ascii=False) + ":" + canonical_json(value[key]) for key in keys
        )
        return "{" + ",".join(members) + "}"
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def payload_sha256(payload: Any) -> str:
    """Lowercase hex SHA-256 of ``payload``'s canonical JSON: what a permit binds.

    An absent payload is ``None``, whose digest is that of the four bytes ``null``.
    """
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


def verify_permit(
    permit: Permit | str,
    payload: Any,
    keys: PermitKeys | Mapping[str, Any],
    *,
    action: PermitAction | Mapping[str, Any] | None = None,
    tenant: str | None = None,
    now: float | None = None,
) -> PermitCheck:
    """Check ``permit`` for ``payload`` offline, with ``keys`` from ``Warden.permit_keys()``.

    ``action`` optionally names the ``type``, ``target`` and ``agent`` about to run; each
    one given must equal the permit's. ``tenant``, when given, must be the permit's (the
    server answers another tenant's permit ``bad_signature``). ``now`` is unix seconds
    (default: the clock). Uses are not counted offline: a permit with ``max_uses: 1`` can
    be checked here any number of times; use ``Warden.verify_permit`` to spend a use.
    """
    token = permit.token if isinstance(permit, Permit) else permit
    key_set = keys if isinstance(keys, PermitKeys) else PermitKeys.model_validate(keys)
    at = time.time() if now is None else now

    parsed = _parse(token)
    if parsed is None:
        return PermitCheck(False, "bad_signature")
    header, claims, signing_input, signature = parsed
    if tenant is not None and claims.get("tenant") != tenant:
        return PermitCheck(False, "bad_signature")
    key = next((k for k in key_set.keys if k.kid == header.get("kid")), None)
    if key is None or (key.not_after is not None and at >= key.not_after.timestamp()):
        return PermitCheck(False, "unknown_key")
    try:
        public = Ed25519PublicKey.from_public_bytes(_b64decode(key.x) or b"")
    except ValueError:  # not an Ed25519 public key: it cannot have signed anything
        return PermitCheck(False, "unknown_key")
    try:
        public.verify(signature, signing_input)
    except InvalidSignature:
        return PermitCheck(False, "bad_signature")
    if at >= claims["exp"]:
        return PermitCheck(False, "expired", claims)
    if action is not None and not _action_matches(claims, action):
        return PermitCheck(False, "action_mismatch", claims)
    if payload_sha256(payload) != claims["payload_sha256"]:
        return PermitCheck(False, "payload_mismatch", claims)
    return PermitCheck(True, "valid", claims)


def permit_claims(permit: Permit | str) -> JSONObject | None:
    """A permit's claims, read without checking anything (``None`` if it is no permit)."""
    parsed = _parse(permit.token if isinstance(permit, Permit) else permit)
    return None if parsed is None else parsed[1]


def _number(value: float) -> str:
    # RFC 8785 §3.2.2.3: the shortest digits that round-trip (Python's repr finds the same
    # ones as ECMAScript), laid out as Number.prototype.toString does.
    if not math.isfinite(value):
        raise ValueError("JSON has no NaN or infinity")
    if value == 0:
        return "0"  # also -0
    sign = "-" if value < 0 else ""
    _, digit_tuple, exponent = Decimal(repr(abs(value))).normalize().as_tuple()
    if not isinstance(exponent, int):  # only NaN and infinities have none, excluded above
        raise ValueError(f"not a finite number: {value!r}")
    digits = "".join(map(str, digit_tuple))
    k = len(digits)
    n = k + exponent  # the value is 0.digits * 10**n
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * -n + digits
    mantissa = digits[0] + ("." + digits[1:] if k > 1 else "")
    return f"{sign}{mantissa}e{n - 1:+d}"


def _str(key: object) -> str:
    if not isinstance(key, str):
        raise TypeError(f"a JSON object's keys are strings, not {type(key).__name__}")
    return key


def _b64decode(text: str) -> bytes | None:
    """Strict base64url without padding, as JWS writes it; ``None`` if it is not."""
    if not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        return None
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    # Unused trailing bits must be zero, so one token has one spelling.
    if base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii") != text:
        return None
    return data


def _parse(token: str) -> tuple[JSONObject, JSONObject, bytes, bytes] | None:
    """Header, claims, signing input and signature of a well-formed permit, else ``None``."""
    if len(token.encode("utf-8")) > MAX_TOKEN_BYTES:
        return None
    parts = token.split(".")
    if len(parts) != 3:
        return None
    decoded = [_b64decode(part) for part in parts]
    if any(part is None for part in decoded):
        return None
    header_bytes, claims_bytes, signature = (part or b"" for part in decoded)
    try:
        header = json.loads(header_bytes)
        claims = json.loads(claims_bytes)
    except ValueError:
        return None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return None
    if header.get("alg") != "EdDSA" or header.get("typ") != "warden-permit":
        return None
    if not isinstance(header.get("kid"), str) or claims.get("v") != 1 or len(signature) != 64:
        return None
    if not isinstance(claims.get("exp"), int) or not isinstance(claims.get("payload_sha256"), str):
        return None
    return header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), signature


def _action_matches(claims: JSONObject, action: PermitAction | Mapping[str, Any]) -> bool:
    check = action if isinstance(action, PermitAction) else PermitAction.model_validate(action)
    if check.type is not None and check.type != claims.get("action_type"):
        return False
    if check.agent is not None and check.agent != claims.get("agent"):
        return False
    if check.target is not None:
        bound = Target.model_validate(claims.get("target") or {})
        if (check.target.type, check.target.id) != (bound.type, bound.id):
            return False
    return True
