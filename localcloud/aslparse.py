"""moto's Step Functions interpreter made cheaper: the definition parsed once, its AWS clients and JSONPaths kept.

- moto parses the ASL definition with ANTLR at the start of every execution; for one job that costs more CPU than
  the rest of its execution. The parse tree of a definition is kept (it is only read afterwards) and each
  execution still builds its own program from it, so no evaluation state is shared between executions.
- Each Task state built a new boto3 client for its call (tens of milliseconds of CPU, the largest cost of an
  execution in the profile of docs/performance.md); clients are kept per service, region and endpoint (boto3
  clients are thread-safe once built).
- Each JSONPath (``$.job_id``, a ``ResultPath``) built a new JSONPath parser, reading its parse tables; the
  parsed path is kept per expression (it is only read when evaluated).
"""

from __future__ import annotations

import functools
import threading
import types
from typing import Any

_LOCK = threading.Lock()
_TREES: dict[str, Any] = {}
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


def _parse(definition: str) -> tuple[Any, Any]:
    from moto.stepfunctions.parser.asl.parse.preprocessor import Preprocessor

    parse = _saved  # read once: an uninstall while an execution thread parses must not leave it None here
    with _LOCK:
        tree = _TREES.get(definition)
    if tree is None:
        _, tree = parse(definition)  # raises ASLParserException for a definition with errors: nothing is kept
        with _LOCK:
            _TREES[definition] = tree
    return Preprocessor().visit(tree), tree


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
    with _CLIENTS_LOCK:
        _CLIENTS.clear()
