"""How the service's DynamoDB clients send a write again, safely: every DynamoDB client of the one factory
(:class:`shared.aws.AwsClients`) is set up here.

Transaction conflicts: a write that meets a ``TransactWriteItems`` in flight on its item is refused at once, not
queued behind it. A transaction is cancelled with ``TransactionConflict`` among its reasons (the repositories' own
loops try it again: :data:`CONFLICT_PAUSES_S`); a single ``PutItem``, ``UpdateItem`` or ``DeleteItem`` fails with
``TransactionConflictException``, which botocore's retry modes do not retry. Single writes and transactions meet on
the same items: a tenant's counters (``RATE#``, ``BUDGET#``: a job's transaction charges them, an image request's
or an upload ticket's update does too) and a job's item (a join adds itself to its source in a transaction while
the source is claimed, cancelled or heartbeated). The other write commits within milliseconds, so a refused single
write is sent again after these pauses; it was not applied, so sending it again is safe.

Lost answers: botocore sends a request again when its answer was lost (a 5xx, a timeout). A transaction is safe to
send again because botocore gives each call a ``ClientRequestToken`` of its own (the parameter is an idempotency
token in DynamoDB's model): DynamoDB answers a resend of a committed transaction with success and writes nothing
(for ten minutes). A caller's next try of a transaction is a new call, with a new token.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

# How long a write refused for a transaction in flight on its item waits before each new try.
CONFLICT_PAUSES_S = (0.05, 0.1, 0.2, 0.4)
_REFUSED = "TransactionConflictException"


def resend_writes_safely(client: DynamoDBClient) -> None:
    """Have ``client`` send a single write again after each of :data:`CONFLICT_PAUSES_S` while DynamoDB refuses it
    for a transaction in flight on its item (botocore's own retries, throttling and 5xx, are left as they are)."""
    # The stubs type a hook as returning None; a needs-retry hook returns its pause (botocore's endpoint reads it).
    client.meta.events.register("needs-retry.dynamodb", _pause_after_conflict)  # type: ignore[arg-type]


def _pause_after_conflict(response: Any = None, attempts: int = 1, **_: Any) -> float | None:
    """botocore's ``needs-retry`` hook: the pause before the next try of a refused write, else None (not retried
    here; botocore's retry mode answers for every other error)."""
    if response is None or attempts > len(CONFLICT_PAUSES_S):
        return None
    error = response[1].get("Error", {})
    if error.get("Code") != _REFUSED:
        return None
    return CONFLICT_PAUSES_S[attempts - 1] * (1 + random.random())  # jittered: two refused writes part ways
