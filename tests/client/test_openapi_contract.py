"""The client's models against the API's own `/openapi.json`: every schema the API's routes use has a client model
of the same name with the same fields, types and required-ness, and every route has a client method. A field the
server adds (or drops) fails here until the client follows. The document also passes an OpenAPI validator.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import sdq_client
from openapi_spec_validator import validate
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from sdq_client import models

from handlers.api import lambda_handler
from localcloud.api import LocalLambdaContext

# Every operation of the API and the client method that calls it (on Client and AsyncClient alike).
CLIENT_METHODS = {
    "POST /v1/jobs": "submit",
    "GET /v1/jobs": "list",
    "GET /v1/jobs/{job_id}": "get",
    "GET /v1/jobs/{job_id}/events": "stream",
    "POST /v1/jobs/{job_id}/cancel": "cancel",
    "POST /v1/jobs/{job_id}/webhook/redeliver": "redeliver_webhook",
    "GET /v1/webhook-secret": "webhook_secret",
    "GET /v1/models": "models",
    "POST /v1/webhook-secret/rotate": "rotate_webhook_secret",
    "GET /v1/audit": "audit",
    "POST /v1/uploads": "upload",
    "GET /health": None,  # liveness: not a client's business
}


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    """The document exactly as `GET /openapi.json` serves it (through the API's Lambda handler)."""
    event = {
        "path": "/openapi.json",
        "httpMethod": "GET",
        "headers": {},
        "multiValueHeaders": {},
        "queryStringParameters": None,
        # As API Gateway's default URL calls it: the stage `prod` leads the path.
        "requestContext": {"stage": "prod", "path": "/prod/openapi.json", "requestId": "r"},
        "body": None,
        "isBase64Encoded": False,
    }
    answer = lambda_handler(event, LocalLambdaContext())
    assert answer["statusCode"] == 200
    return dict(json.loads(answer["body"]))


def refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"].rsplit("/", 1)[-1]} if "$ref" in node else set()
        return found.union(*(refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(refs(v) for v in node))
    return set()


def used_schemas(doc: dict[str, Any]) -> set[str]:
    """The component schemas the /v1 operations' bodies use, directly or through other schemas."""
    components = doc["components"]["schemas"]
    todo = refs({path: ops for path, ops in doc["paths"].items() if path.startswith("/v1/")})
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo |= refs(components[name])
    return seen


def signature(schema: dict[str, Any], enums: frozenset[str] = frozenset()) -> str:
    """A field's type in a form both sides can be compared in: `integer|null`, `array[ref:OutputView]`, ...

    ``enums``: the names of the side's enum schemas. The client reads an enumeration's values leniently (its
    known values, or any string a newer server sends: `JobStatus | str`); that open enumeration compares equal
    to the server's closed one, so its known values must still be the server's."""
    if "$ref" in schema:
        return f"ref:{schema['$ref'].rsplit('/', 1)[-1]}"
    options = schema.get("anyOf") or schema.get("oneOf")
    if options:
        kinds = {signature(o, enums) for o in options}
        if {"number", "integer"} <= kinds:  # a float field that also takes JSON integers is a number
            kinds.discard("integer")
        known = {k for k in kinds if k.startswith("enum:") or k.removeprefix("ref:") in enums}
        if known and "string" in kinds:  # an open enumeration
            kinds.discard("string")
        return "|".join(sorted(kinds))
    if "enum" in schema or "const" in schema:
        values = schema.get("enum", [schema.get("const")])
        return "enum:" + ",".join(sorted(map(str, values)))
    kind = schema.get("type")
    if kind == "array":
        return f"array[{signature(schema.get('items', {}), enums)}]"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"map[{signature(schema['additionalProperties'], enums)}]"
    if kind == "string" and schema.get("format") in {"date-time", "date"}:
        return f"string:{schema['format']}"
    return str(kind or "any")


def shape(schema: dict[str, Any], enums: frozenset[str] = frozenset()) -> dict[str, Any]:
    if "enum" in schema:
        return {"enum": sorted(map(str, schema["enum"]))}
    props = schema.get("properties", {})
    return {
        "fields": {name: signature(prop, enums) for name, prop in props.items()},
        "required": sorted(schema.get("required", [])),
    }


def client_schemas() -> dict[str, dict[str, Any]]:
    classes = [
        c
        for c in vars(models).values()
        if isinstance(c, type) and issubclass(c, BaseModel) and c.__module__ == models.__name__
    ]
    _, top = models_json_schema([(c, "validation") for c in classes], ref_template="#/components/schemas/{model}")
    return dict(top["$defs"])


def test_the_document_is_valid_openapi(openapi: dict[str, Any]) -> None:
    validate(openapi)
    assert openapi["openapi"].startswith("3.")


def test_security_schemes_and_servers_are_declared(openapi: dict[str, Any]) -> None:
    schemes = openapi["components"]["securitySchemes"]
    assert set(schemes) == {"apiKey"}  # the one header API Gateway's authorizer reads
    assert (schemes["apiKey"]["type"], schemes["apiKey"]["in"], schemes["apiKey"]["name"]) == (
        "apiKey",
        "header",
        "x-api-key",
    )
    for path, methods in openapi["paths"].items():
        for method, op in methods.items():
            expected: list[dict[str, list[str]]] | None = None
            if path.startswith("/v1/"):
                expected = [{"apiKey": []}]
            assert op.get("security") == expected, (method, path)
    servers = openapi["servers"]
    assert servers[0]["url"] == "/prod"  # where this document was fetched (API Gateway's stage path included)
    assert servers[1]["url"].startswith("https://{api_id}.execute-api.{region}.amazonaws.com/")


def test_the_headers_are_documented(openapi: dict[str, Any]) -> None:
    submit = openapi["paths"]["/v1/jobs"]["post"]
    get = openapi["paths"]["/v1/jobs/{job_id}"]["get"]
    assert {p["name"].lower() for p in submit["parameters"] if p["in"] == "header"} == {"idempotency-key", "prefer"}
    assert {p["name"].lower() for p in get["parameters"] if p["in"] == "header"} == {"prefer"}
    assert {"200", "201", "202"} <= set(submit["responses"])
    assert submit["responses"]["202"]["headers"].keys() >= {"Location", "Retry-After", "Preference-Applied"}
    assert submit["responses"]["201"]["headers"].keys() >= {"Location", "Preference-Applied"}
    assert get["responses"]["200"]["headers"].keys() >= {"Retry-After", "Preference-Applied"}
    for path, methods in openapi["paths"].items():
        for method, op in methods.items():
            if "429" in op["responses"]:
                assert op["responses"]["429"]["headers"]["Retry-After"]["required"] is True, (method, path)


def test_every_schema_the_api_uses_has_a_matching_client_model(openapi: dict[str, Any]) -> None:
    server = openapi["components"]["schemas"]
    client = client_schemas()
    used = used_schemas(openapi)
    assert used >= {"JobView", "GenerationRequest", "JobList", "ErrorBody"}
    missing = sorted(used - client.keys())
    assert not missing, f"add these models to client/sdq_client/models.py: {missing}"
    for name in sorted(used):
        enums = frozenset(n for n, schema in client.items() if "enum" in schema)
        assert shape(client[name], enums) == shape(server[name]), f"client model {name} differs from the API's schema"


def test_the_comparison_catches_a_field_the_client_lacks(openapi: dict[str, Any]) -> None:
    """The check above cannot pass by accident: a server field missing from a client model is a difference."""
    job = openapi["components"]["schemas"]["JobView"]
    grown = {**job, "properties": {**job["properties"], "new_field": {"type": "string"}}}
    assert shape(client_schemas()["JobView"]) != shape(grown)
    retyped = {**job, "properties": {**job["properties"], "attempt": {"type": "string"}}}
    assert shape(client_schemas()["JobView"]) != shape(retyped)
    # An open enumeration (known values, or any string) still differs when the server's values do.
    request = openapi["components"]["schemas"]["GenerationRequest"]
    scheduler = request["properties"]["scheduler"]
    more = {
        **request,
        "properties": {**request["properties"], "scheduler": {**scheduler, "enum": [*scheduler["enum"], "heun"]}},
    }
    client = client_schemas()
    enums = frozenset(n for n, schema in client.items() if "enum" in schema)
    assert shape(client["GenerationRequest"], enums) == shape(request)
    assert shape(client["GenerationRequest"], enums) != shape(more)


def test_every_operation_has_a_client_method(openapi: dict[str, Any]) -> None:
    operations = {f"{m.upper()} {p}" for p, methods in openapi["paths"].items() for m in methods}
    unmapped = sorted(operations - CLIENT_METHODS.keys())
    assert not unmapped, f"give these operations a client method (and map it here): {unmapped}"
    for name in filter(None, CLIENT_METHODS.values()):
        assert callable(getattr(sdq_client.Client, name)), name
        assert callable(getattr(sdq_client.AsyncClient, name)), name
