"""moto's Step Functions interpreter made cheaper: the definition parsed once, its AWS clients and JSONPaths kept.

- moto parses the ASL definition with ANTLR and builds its program from the parse tree at the start of every
  execution; for one job that cost more CPU than the rest of its execution. The parse tree of a definition is
  kept (it is only read afterwards), and so is the program of a definition without Map or Parallel states: its
  components keep no evaluation state (each execution's lives in its own environment, under keys the components
  are given here, before any execution shares them). A Map or Parallel state's program keeps its iteration
  state, so such a definition still gets a program of its own per execution.
- Each Task state built a new boto3 client for its call (tens of milliseconds of CPU, the largest cost of an
  execution in the profile of docs/performance.md); clients are kept per service, region and endpoint (boto3
  clients are thread-safe once built).
- Each JSONPath (``$.job_id``, a ``ResultPath``) built a new JSONPath parser, reading its parse tables; the
  parsed path is kept per expression (it is only read when evaluated).
"""

from __future__ import annotations

import functools
import json
import threading
import types
from typing import Any

_LOCK = threading.Lock()
_TREES: dict[str, Any] = {}
_PROGRAMS: dict[str, Any] = {}
_saved: Any = None
_saved_more: dict[str, Any] = {}
_CLIENTS: dict[tuple[Any, ...], Any] = {}
_CLIENTS_LOCK = threading.Lock()


def _client(**kwargs: Any) -> Any:
    """``boto3.client`` as moto's interpreter calls it, one client per service, region, endpoint and key."""
    import boto3

    key = tuple(kwargs.get(name) for name in ("service_name", "region_name", "endpoint_url", "aws_access_key_id"))
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            client = _CLIENTS[key] = boto3.client(**kwargs)
    return client


def _stateful(node: Any) -> bool:
    """Whether a definition (parsed JSON) has a Map or Parallel state anywhere."""
    if isinstance(node, dict):
        return node.get("Type") in ("Map", "Parallel") or any(_stateful(v) for v in node.values())
    if isinstance(node, list):
        return any(_stateful(v) for v in node)
    return False


def _give_heap_keys(program: Any) -> None:
    """Give every component of ``program`` its heap key now: moto draws it on first use, which two executions
    sharing the program could do at once, each then reading the other's key."""
    from moto.stepfunctions.parser.asl.component.component import Component
    from moto.stepfunctions.parser.asl.component.eval_component import EvalComponent

    seen: set[int] = set()
    stack: list[Any] = [program]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, EvalComponent):
            _ = node.heap_key
        if isinstance(node, Component):
            stack.extend(getattr(node, "__dict__", {}).values())
        elif isinstance(node, (list, tuple, set, frozenset)):
            stack.extend(node)
        elif isinstance(node, dict):
            stack.extend(node.values())


def _parse(definition: str) -> tuple[Any, Any]:
    from moto.stepfunctions.parser.asl.parse.preprocessor import Preprocessor

    parse = _saved  # read once: an uninstall while an execution thread parses must not leave it None here
    with _LOCK:
        tree = _TREES.get(definition)
        program = _PROGRAMS.get(definition)
    if program is not None:
        return program, tree
    if tree is None:
        _, tree = parse(definition)  # raises ASLParserException for a definition with errors: nothing is kept
        with _LOCK:
            _TREES[definition] = tree
    program = Preprocessor().visit(tree)
    try:
        shareable = not _stateful(json.loads(definition))
    except ValueError:
        shareable = False
    if shareable:
        _give_heap_keys(program)
        with _LOCK:
            program = _PROGRAMS.setdefault(definition, program)
    return program, tree


def install() -> None:
    """Parse, build clients and read JSONPaths through the caches until :func:`uninstall`."""
    global _saved
    from moto.stepfunctions.parser.asl.component.common.path import result_path
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser
    from moto.stepfunctions.parser.asl.utils import boto_client, json_path

    if _saved is None:
        _saved = AmazonStateLanguageParser.parse
        AmazonStateLanguageParser.parse = staticmethod(_parse)  # type: ignore[method-assign]
    if not _saved_more:
        _saved_more.update(boto3=boto_client.boto3, json_path=json_path.parse, result_path=result_path.parse)
        boto_client.boto3 = types.SimpleNamespace(client=_client)  # type: ignore[assignment]
        json_path.parse = functools.lru_cache(maxsize=1024)(json_path.parse)
        result_path.parse = functools.lru_cache(maxsize=1024)(result_path.parse)


def uninstall() -> None:
    global _saved
    from moto.stepfunctions.parser.asl.component.common.path import result_path
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser
    from moto.stepfunctions.parser.asl.utils import boto_client, json_path

    if _saved is not None:
        AmazonStateLanguageParser.parse = staticmethod(_saved)  # type: ignore[method-assign]
        _saved = None
    if _saved_more:
        boto_client.boto3 = _saved_more["boto3"]
        json_path.parse = _saved_more["json_path"]
        result_path.parse = _saved_more["result_path"]
        _saved_more.clear()
    with _LOCK:
        _TREES.clear()
        _PROGRAMS.clear()
    with _CLIENTS_LOCK:
        _CLIENTS.clear()
