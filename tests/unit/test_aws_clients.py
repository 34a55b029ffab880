"""The one client factory: a client it hands to many threads at once raises exceptions those threads can catch."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

import pytest

from shared.aws import AwsClients
from shared.settings import Settings


@pytest.fixture
def fast_thread_switching() -> Iterator[None]:
    """Switch threads as often as the interpreter can, so a race shows on the first try rather than the thousandth."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def _exception_classes_seen_by_threads_first_using(clients: AwsClients, threads: int) -> list[type[BaseException]]:
    start = threading.Barrier(threads)
    seen: list[type[BaseException]] = []

    def first_use() -> None:
        start.wait()
        seen.append(clients.dynamodb().exceptions.ConditionalCheckFailedException)

    running = [threading.Thread(target=first_use) for _ in range(threads)]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join()
    return seen


@pytest.mark.usefixtures("fast_thread_switching")
def test_threads_that_first_touch_a_client_together_catch_the_same_exception_classes() -> None:
    """An `except client.exceptions.ConditionalCheckFailedException` must catch what the same client raises, even
    when the first requests of a process arrive together (the authorizer's last-used write escaped this way)."""
    for _ in range(10):
        clients = AwsClients(Settings(region="us-east-1", endpoint_url="http://127.0.0.1:9"))
        seen = _exception_classes_seen_by_threads_first_using(clients, 8)
        assert len(seen) == 8
        assert len(set(seen)) == 1
        assert seen[0] is clients.dynamodb().exceptions.from_code("ConditionalCheckFailedException")
