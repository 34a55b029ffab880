"""The state machine's definition parsed once, not once per execution.

moto's Step Functions interpreter parses the ASL definition with ANTLR at the start of every execution; for one
job that costs more CPU than the rest of its execution, in the process that also serves every AWS call. The
parse tree of a definition is kept (it is only read afterwards) and each execution still builds its own program
from it, so no evaluation state is shared between executions.
"""

from __future__ import annotations

import threading
from typing import Any

_LOCK = threading.Lock()
_TREES: dict[str, Any] = {}
_saved: Any = None


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
    """Parse through the cache until :func:`uninstall`."""
    global _saved
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser

    if _saved is None:
        _saved = AmazonStateLanguageParser.parse
        AmazonStateLanguageParser.parse = staticmethod(_parse)  # type: ignore[method-assign]


def uninstall() -> None:
    global _saved
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser

    if _saved is not None:
        AmazonStateLanguageParser.parse = staticmethod(_saved)  # type: ignore[method-assign]
        _saved = None
    with _LOCK:
        _TREES.clear()
