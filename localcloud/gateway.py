"""What API Gateway does in front of the API, done the same way by the local API: the authorizer and its cache.

Read from ``template.yaml`` (the one owner), not restated here: which routes the authorizer guards (every API event
without ``Authorizer: NONE``), the header it reads, how long its answer is reused per key
(``AuthorizerCacheSeconds``, overridable like any template parameter) and the gateway's own 401 body. So a client
that sends its key where the gateway does not look (``Authorization: Bearer``), or a route left unguarded, fails
locally as it would on AWS.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

AuthorizerHandler = Callable[[dict[str, Any], Any], dict[str, Any]]


@dataclass(frozen=True)
class GatewayRules:
    """The gateway's behaviour for the local API, as plain data (it travels to the API processes as JSON)."""

    guarded_routes: tuple[tuple[str, str], ...]  # (method or ANY, path template) the authorizer guards
    identity_header: str
    cache_s: int
    unauthorized_status: int
    unauthorized_body: str

    @classmethod
    def from_template(cls, template_path: Path, parameters: Mapping[str, str] | None = None) -> GatewayRules:
        from localcloud.provision import load_sam_template

        sam = load_sam_template(template_path)
        resources = sam["Resources"]
        api = next(r for r in resources.values() if r["Type"] == "AWS::Serverless::Api")["Properties"]
        auth = api["Auth"]
        authorizer = auth["Authorizers"][auth["DefaultAuthorizer"]]
        (header,) = authorizer["Identity"]["Headers"]
        cache = authorizer["Identity"]["ReauthorizeEvery"]
        if isinstance(cache, dict):  # !Ref to a parameter
            name = cache["Ref"]
            cache = (parameters or {}).get(name, sam["Parameters"][name]["Default"])
        guarded = []
        for resource in resources.values():
            if resource["Type"] != "AWS::Serverless::Function":
                continue
            for event in resource["Properties"].get("Events", {}).values():
                props = event.get("Properties", {})
                if event["Type"] == "Api" and props.get("Auth", {}).get("Authorizer") != "NONE":
                    guarded.append((str(props["Method"]).upper(), str(props["Path"])))
        response = api["GatewayResponses"]["UNAUTHORIZED"]
        return cls(
            guarded_routes=tuple(sorted(guarded)),
            identity_header=str(header).lower(),
            cache_s=int(cache),
            unauthorized_status=int(response["StatusCode"]),
            unauthorized_body=str(response["ResponseTemplates"]["application/json"]),
        )

    def as_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GatewayRules:
        return cls(**{**data, "guarded_routes": tuple(tuple(r) for r in data["guarded_routes"])})


def _route_pattern(path: str) -> re.Pattern[str]:
    """API Gateway's path template as a regex: ``{name+}`` takes the rest, ``{name}`` one segment."""
    parts = re.split(r"(\{[^}]+\})", path)
    regex = "".join(".+" if p.endswith("+}") else "[^/]+" if p.startswith("{") else re.escape(p) for p in parts if p)
    return re.compile(f"^{regex}$")


@dataclass
class LocalGateway:
    """Runs the authorizer before a guarded route, caching its answer per key as API Gateway does."""

    rules: GatewayRules
    authorizer: AuthorizerHandler
    context_factory: Callable[[], Any]
    clock: Callable[[], float] = time.monotonic
    _cache: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._guarded = [(method, _route_pattern(path)) for method, path in self.rules.guarded_routes]

    def guards(self, method: str, path: str) -> bool:
        return any(m in ("ANY", method.upper()) and p.match(path) for m, p in self._guarded)

    def admit(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """None when the request may reach its function (its ``requestContext.authorizer`` then filled in as the
        gateway fills it), else the gateway's refusal as a proxy result."""
        if not self.guards(str(event["httpMethod"]), str(event["path"])):
            return None
        headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
        key = headers.get(self.rules.identity_header, "")
        if not key:
            return self._refusal()
        context = self._cached(key)
        if context is None:
            context = self._authorize(event, key)
            if context is None:
                return self._refusal()
        event.setdefault("requestContext", {})["authorizer"] = dict(context)
        return None

    def _cached(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            hit = self._cache.get(key)
        return hit[1] if hit is not None and hit[0] > self.clock() else None

    def _authorize(self, event: dict[str, Any], key: str) -> dict[str, Any] | None:
        region = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
        request = {
            "type": "REQUEST",
            "methodArn": f"arn:aws:execute-api:{region}:000000000000:local/local/{event['httpMethod']}{event['path']}",
            "resource": event.get("resource"),
            "path": event["path"],
            "httpMethod": event["httpMethod"],
            "headers": event.get("headers") or {},
            "queryStringParameters": event.get("queryStringParameters"),
            "pathParameters": event.get("pathParameters"),
            "stageVariables": None,
            "requestContext": event.get("requestContext") or {},
        }
        try:
            answer = self.authorizer(request, self.context_factory())
        except Exception as exc:  # API Gateway reads the error message: "Unauthorized" is its 401
            if str(exc) == "Unauthorized":
                return None
            raise
        statements = answer.get("policyDocument", {}).get("Statement", [])
        if not any(st.get("Effect") == "Allow" for st in statements) or any(
            st.get("Effect") == "Deny" for st in statements
        ):
            return None
        context = {**(answer.get("context") or {}), "principalId": answer.get("principalId")}
        if self.rules.cache_s > 0:
            with self._lock:
                self._cache[key] = (self.clock() + self.rules.cache_s, context)
        return context

    def _refusal(self) -> dict[str, Any]:
        return {
            "statusCode": self.rules.unauthorized_status,
            "headers": {"Content-Type": "application/json"},
            "body": self.rules.unauthorized_body,
            "isBase64Encoded": False,
        }
