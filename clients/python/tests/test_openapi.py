"""The models against the live server's ``/openapi.json``: each model has exactly the
properties of the schema it stands for (``OPENAPI_SCHEMAS``), the same required ones,
compatible JSON types, nested models standing for the schemas the server nests, and
every body of every route the client calls has a model. So neither side drifts silently."""

from __future__ import annotations

import inspect
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from warden_client import models
from warden_client.models import OPENAPI_SCHEMAS

from conftest import Server

Schema = dict[str, Any]

# Fields a model has that the server sends but its schema does not declare, with why.
# An entry that stops being a gap fails the test, so it is removed when the server's
# document is fixed.
UNDECLARED: dict[tuple[str, str], str] = {}

# Every route the client calls (method, path as the document names it).
ROUTES = [
    ("post", "/v1/decisions"),
    ("get", "/v1/decisions/{id}"),
    ("post", "/v1/decisions/{id}/outcome"),
    ("get", "/v1/budgets"),
    ("get", "/v1/approvals"),
    ("get", "/v1/approvals/{id}"),
    ("post", "/v1/approvals/{id}/approve"),
    ("post", "/v1/approvals/{id}/reject"),
    ("get", "/v1/approvals/{id}/wait"),
    ("post", "/v1/questions"),
    ("post", "/v1/questions/{id}/answer"),
    ("get", "/v1/questions/{id}/wait"),
    ("post", "/v1/permits/verify"),
    ("get", "/v1/permits/keys"),
    ("get", "/v1/denials"),
    ("get", "/v1/policy/digest"),
    ("post", "/v1/proposals"),
    ("get", "/v1/proposals"),
    ("get", "/v1/proposals/{id}"),
    ("get", "/v1/proposals/{id}/wait"),
    ("post", "/v1/proposals/{id}/approve"),
    ("post", "/v1/proposals/{id}/reject"),
]


@pytest.fixture(scope="module")
def openapi(server: Server) -> Schema:
    answer = httpx.get(f"{server.url}/openapi.json")
    answer.raise_for_status()
    document: Schema = answer.json()
    return document


def cases() -> list[tuple[type[BaseModel], str]]:
    return [(model, name) for model, names in OPENAPI_SCHEMAS.items() for name in names]


@pytest.mark.parametrize(("model", "name"), cases(), ids=[f"{m.__name__}-{n}" for m, n in cases()])
def test_each_model_matches_its_schema(openapi: Schema, model: type[BaseModel], name: str) -> None:
    theirs = openapi["components"]["schemas"][name]
    ours = model.model_json_schema(ref_template="#/$defs/{model}")
    gaps = {field for (schema, field) in UNDECLARED if schema == name}

    their_fields = set(theirs.get("properties", {}))
    our_fields = set(ours.get("properties", {}))
    assert not gaps & their_fields, (
        f"{name} declares {gaps & their_fields} now: drop them from UNDECLARED"
    )
    assert our_fields - gaps == their_fields, f"{model.__name__} vs {name}"
    assert set(ours.get("required", [])) == set(theirs.get("required", [])), (
        f"{model.__name__} vs {name}"
    )
    if theirs.get("additionalProperties") is False:
        assert model.model_config.get("extra") == "forbid", (
            f"{name} refuses unknown fields; so must {model.__name__}"
        )

    for field in their_fields:
        mine, server = ours["properties"][field], theirs["properties"][field]
        where = f"{model.__name__}.{field} vs {name}.{field}"
        assert kinds(mine, ours) in (None, kinds(server, openapi)), where
        if "array" in (kinds(server, openapi) or set()):
            assert kinds(items(mine, ours), ours) in (
                None,
                kinds(items(server, openapi), openapi),
            ), where
        for ref_ours, ref_theirs in [
            (ref(mine), ref(server)),
            (ref(items(mine, ours)), ref(items(server, openapi))),
        ]:
            if (
                ref_ours
                and ref_theirs
                and kinds(resolve(openapi, ref_theirs), openapi) == {"object"}
            ):
                nested, named = getattr(models, last(ref_ours)), last(ref_theirs)
                assert named in OPENAPI_SCHEMAS[nested], (
                    f"{where}: does {nested.__name__} stand for {named}?"
                )
        enum_ours, enum_theirs = enum(mine, ours), enum(server, openapi)
        if enum_ours is not None and enum_theirs is not None:
            assert enum_ours == enum_theirs, where


def test_every_model_is_checked() -> None:
    defined = {
        cls
        for _, cls in inspect.getmembers(models, inspect.isclass)
        if issubclass(cls, BaseModel)
        and cls.__module__ == models.__name__
        and not cls.__name__.startswith("_")
    }
    assert defined == set(OPENAPI_SCHEMAS)


def test_every_body_of_every_route_the_client_calls_has_a_model(openapi: Schema) -> None:
    covered = {name for names in OPENAPI_SCHEMAS.values() for name in names}
    for method, path in ROUTES:
        operation = openapi["paths"][path][method]
        bodies = [
            operation.get("requestBody", {})
            .get("content", {})
            .get("application/json", {})
            .get("schema", {})
        ]
        for status, response in operation["responses"].items():
            if status.startswith("2"):
                bodies.append(
                    response.get("content", {}).get("application/json", {}).get("schema", {})
                )
        for body in bodies:
            pointer = ref(body)
            assert pointer is None or last(pointer) in covered, (
                f"{method.upper()} {path}: no model for {pointer}"
            )


# ---------------------------------------------------------------------------------------
# Reading JSON Schema
# ---------------------------------------------------------------------------------------


def resolve(document: Schema, pointer: str) -> Schema:
    """The schema a local ``$ref`` names (``#/components/schemas/X`` or ``#/$defs/X``)."""
    node: Any = document
    for part in pointer.removeprefix("#/").split("/"):
        node = node[part]
    return dict(node)


def alternatives(schema: Schema) -> list[Schema]:
    """The schemas of an ``anyOf`` or ``oneOf``, or the schema itself."""
    options: list[Schema] = schema.get("anyOf") or schema.get("oneOf") or [schema]
    return options


def kinds(schema: Schema, document: Schema) -> set[str] | None:
    """The JSON types a schema admits; ``None`` for any."""
    found: set[str] = set()
    for option in alternatives(schema):
        if "$ref" in option:
            target = resolve(document, option["$ref"])
            option = target
        declared = option.get("type")
        if declared is None:
            return None
        found |= {declared} if isinstance(declared, str) else set(declared)
    return found


def items(schema: Schema, document: Schema) -> Schema:
    for option in alternatives(schema):
        if "$ref" in option:
            option = resolve(document, option["$ref"])
        if "items" in option:
            return dict(option["items"])
    return {}


def ref(schema: Schema) -> str | None:
    """The ``$ref`` of a (possibly nullable) property, if it has one."""
    for option in alternatives(schema):
        if "$ref" in option:
            return str(option["$ref"])
    return None


def last(pointer: str) -> str:
    """A ``$ref``'s schema name."""
    return pointer.rsplit("/", 1)[-1]


def enum(schema: Schema, document: Schema) -> set[str] | None:
    for option in alternatives(schema):
        if "$ref" in option:
            option = resolve(document, option["$ref"])
        if "enum" in option:
            return set(option["enum"])
    return None
