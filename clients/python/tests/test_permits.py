"""Permits: the SDK's offline check agrees with the server byte for byte, and a swapped
payload is refused offline and online."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest

from warden_client import (
    Permit,
    PermitKeys,
    Warden,
    canonical_json,
    payload_sha256,
    permit_claims,
    verify_permit,
)

from conftest import Server

pytestmark = pytest.mark.anyio

# JSON texts whose canonical form is easy to get wrong: ECMAScript number formatting,
# rounding at parse time, integers beyond 2^53, escapes, unicode and UTF-16 key order,
# nesting. (The same set crates/warden/tests/permits.rs checks the server's digest with.)
PAYLOADS = [
    r'{"a": 1e21, "b": 1e20, "c": 0.1, "d": -0.0, "e": 1.0, "f": 1e-7, "g": 1e-6}',
    r'{"big": 123456789012345678901234567890, "u64": 18446744073709551615, "i64": -9223372036854775808}',
    r'{"near": [9007199254740993, 9007199254740992, -9007199254740993]}',
    r'{"tiny": 5e-324, "max": 1.7976931348623157e308, "sum": 0.30000000000000004, "x": 2.5e-5}',
    r'{"hard": [2.2250738585072011e-308, 0.1000000000000000055511151231257827, 9007199254740993.0000000001, 1.00000000000000011102230246251565404236316680908203125]}',
    r'{"round": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001, 123e-2, 100e+1]}',
    r'{"s": "\u00e9\ud83d\ude00\u2028\u0000\u001f\u007f\"\\/\b\f\n\r\t", "plain": "ünïcödé € 日本語"}',
    r'{"\ue000": 1, "\ud83d\ude00": 2, "b": 3, "a": 4, "aa": 5, "A": 6, "": 7, "\u00e9": 8}',
    r'{"nested": {"z": [], "y": {}, "x": [{"b": null, "a": true}, false]}, "n": [-1, 0, 1.5e300]}',
    r'{"resolution": "refund issued", "external": false, "amount": 12.50}',
    "{}",
    "null",
]


async def permit_for(server: Server, payload_text: str) -> Permit:
    """The permit the server issues for an allowed action with exactly this payload text."""
    body = '{"type": "ticket.update", "agent": "support-bot", "payload": ' + payload_text + "}"
    async with httpx.AsyncClient(base_url=server.url) as http:
        answer = await http.post(
            "/v1/decisions",
            content=body.encode(),
            headers={
                "authorization": f"Bearer {server.keys['controller']}",
                "content-type": "application/json",
            },
        )
    assert answer.status_code == 200, answer.text
    decision = answer.json()
    assert decision["effect"] == "allow", decision
    return Permit.model_validate(decision["permit"])


@pytest.fixture
async def keys(controller: Warden) -> PermitKeys:
    return await controller.permit_keys()


@pytest.mark.parametrize("text", PAYLOADS)
async def test_the_offline_digest_is_the_servers_for_the_same_json(
    server: Server, keys: PermitKeys, text: str
) -> None:
    permit = await permit_for(server, text)
    payload = json.loads(text)
    claims = permit_claims(permit)
    assert claims is not None
    assert payload_sha256(payload) == claims["payload_sha256"], canonical_json(payload)
    check = verify_permit(permit, payload, keys, tenant="nexus")
    assert (check.valid, check.reason) == (True, "valid")


async def test_key_order_and_spelling_do_not_matter_but_values_do(
    server: Server, keys: PermitKeys
) -> None:
    permit = await permit_for(server, PAYLOADS[0])
    same = json.loads(
        '{"g":0.000001,"f":1E-7,"e":1,"d":0,"c":0.1,"b":100000000000000000000,"a":1000000000000000000000}'
    )
    other = json.loads(
        '{"a": 1e21, "b": 1e20, "c": 0.1, "d": -0.0, "e": 1.0, "f": 1e-7, "g": 2e-6}'
    )
    assert verify_permit(permit, same, keys).valid
    assert verify_permit(permit, other, keys).reason == "payload_mismatch"


def test_canonical_json_follows_rfc_8785() -> None:
    assert (
        canonical_json({"b": [1.0, -0.0, 1e21, 1e-7], "a": "\u2028\x7f\n"})
        == '{"a":"\u2028\x7f\\n","b":[1,0,1e+21,1e-7]}'
    )
    assert canonical_json({"\ue000": 1, "\U0001f600": 2}) == '{"\U0001f600":2,"\ue000":1}'
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


async def test_a_swapped_payload_is_refused_offline_and_online(
    server: Server, controller: Warden
) -> None:
    approved = {"resolution": "refund issued", "amount": 20}
    swapped = {"resolution": "refund issued", "amount": 20000}
    action = {
        "type": "ticket.update",
        "agent": "support-bot",
        "target": {"type": "ticket", "id": "T-5"},
    }
    permits: list[Permit] = []
    await controller.guard({**action, "payload": approved}, permits.append)
    [permit] = permits
    keys = await controller.permit_keys()

    offline = verify_permit(permit, swapped, keys)
    assert (offline.valid, offline.reason) == (False, "payload_mismatch")
    async with server.client("executor") as executor:
        online = await executor.verify_permit(permit, swapped)
        assert (online.valid, online.reason) == (False, "payload_mismatch")
        # A refusal spends nothing: the approved payload still gets its one use.
        genuine = await executor.verify_permit(permit, approved, action={"type": "ticket.update"})
        assert (genuine.valid, genuine.uses_left) == (True, 0)


async def test_offline_refusals_use_the_servers_reasons(server: Server, keys: PermitKeys) -> None:
    payload: dict[str, Any] = {"resolution": "refund issued"}
    permit = await permit_for(server, json.dumps(payload))
    claims = permit_claims(permit)
    assert claims is not None
    header, _, signature = permit.token.split(".")

    forged_claims = {**claims, "agent": "another-bot"}
    forged = base64.urlsafe_b64encode(json.dumps(forged_claims).encode()).rstrip(b"=").decode()
    assert verify_permit(f"{header}.{forged}.{signature}", payload, keys).reason == "bad_signature"
    assert verify_permit("not a permit", payload, keys).reason == "bad_signature"
    assert verify_permit(permit, payload, keys, tenant="lab").reason == "bad_signature"
    assert verify_permit(permit, payload, {"keys": []}).reason == "unknown_key"
    assert verify_permit(permit, payload, keys, now=claims["exp"]).reason == "expired"
    assert verify_permit(permit, payload, keys, now=claims["exp"] - 1).valid
    mismatch = verify_permit(
        permit, payload, keys, action={"target": {"type": "ticket", "id": "T-1"}}
    )
    assert mismatch.reason == "action_mismatch"
    matching = {
        "type": "ticket.update",
        "agent": "support-bot",
        "target": {"type": None, "id": None},
    }
    assert verify_permit(permit, payload, keys, action=matching).valid
