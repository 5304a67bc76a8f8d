"""Offline permit verification as an executor in Python does it (docs/PERMITS.md).

The standard library computes the payload digest (RFC 8785 canonical JSON, SHA-256);
`cryptography` checks the Ed25519 signature. crates/warden/tests/permits.rs runs this file
over the same payloads as the server, so the recipe in docs/PERMITS.md is tested.
"""

import base64
import hashlib
import json
import math
import sys
import time


def _number(v):
    # RFC 8785 3.2.2.3: every number is an IEEE 754 double, printed as ECMAScript does.
    if isinstance(v, int):
        v = float(v)
    if math.isnan(v) or math.isinf(v):
        raise ValueError("JSON has no NaN or infinity")
    if v == 0:
        return "0"
    sign = "-" if v < 0 else ""
    mantissa, _, exponent = repr(abs(v)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    point = len(whole) + int(exponent or 0)
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    digits = stripped.rstrip("0") or "0"
    k, n = len(digits), point
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * -n + digits
    e = n - 1
    mant = digits[0] + ("." + digits[1:] if k > 1 else "")
    return sign + mant + "e" + ("+" if e >= 0 else "-") + str(abs(e))


def canonicalize(value):
    """RFC 8785 canonical JSON of a value parsed by json.loads."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return _number(value)
    if isinstance(value, str):
        # json.dumps escapes exactly what ECMAScript's JSON.stringify does.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ",".join(canonicalize(v) for v in value) + "]"
    if isinstance(value, dict):
        # Keys in UTF-16 code unit order: big-endian UTF-16 bytes sort the same way.
        keys = sorted(value, key=lambda k: k.encode("utf-16-be"))
        return "{" + ",".join(canonicalize(k) + ":" + canonicalize(value[k]) for k in keys) + "}"
    raise TypeError(f"not JSON: {type(value).__name__}")


def payload_sha256(payload):
    return hashlib.sha256(canonicalize(payload).encode("utf-8")).hexdigest()


def _b64(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def verify_offline(token, keys, payload, now=None):
    """The claims of a permit whose signature, expiry and payload check out; else ValueError.
    `keys` is the JSON of GET /v1/permits/keys. Use counting needs POST /v1/permits/verify."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    header_b64, claims_b64, signature_b64 = token.split(".")
    header = json.loads(_b64(header_b64))
    if header.get("alg") != "EdDSA" or header.get("typ") != "warden-permit":
        raise ValueError("bad_signature")
    jwk = next((k for k in keys["keys"] if k["kid"] == header["kid"]), None)
    if jwk is None:
        raise ValueError("unknown_key")
    public = Ed25519PublicKey.from_public_bytes(_b64(jwk["x"]))
    try:
        public.verify(_b64(signature_b64), f"{header_b64}.{claims_b64}".encode("ascii"))
    except InvalidSignature:
        raise ValueError("bad_signature") from None
    claims = json.loads(_b64(claims_b64))
    if (time.time() if now is None else now) >= claims["exp"]:
        raise ValueError("expired")
    if payload_sha256(payload) != claims["payload_sha256"]:
        raise ValueError("payload_mismatch")
    return claims


def main():
    request = json.load(sys.stdin)
    answer = {"digests": [payload_sha256(json.loads(text)) for text in request["payloads"]]}
    if "token" in request:
        results = []
        for text in request["offline_payloads"]:
            try:
                claims = verify_offline(request["token"], request["keys"], json.loads(text))
                results.append("valid:" + claims["decision_id"])
            except ValueError as e:
                results.append(str(e))
        answer["offline"] = results
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
