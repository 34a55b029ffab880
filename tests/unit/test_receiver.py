"""The receiver asks the queue for no more messages than its window has room for, so each batch taken out of the
window opens room at once (where a fair queue hands out a newly arrived tenant's message)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from shared.queue import Received
from tests.unit.workerfakes import RecordingQueue, received
from workflows.generation.heldmessages import HeldMessages
from workflows.generation.receiver import Receiver


class AskedQueue(RecordingQueue):
    """Answers every receive with as many one-image messages as asked for, and records how many that was."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[int] = []

    def receive(self, *, max_messages: int, wait_s: int, visibility_s: int) -> list[Received]:
        self.asked.append(max_messages)
        return [received() for _ in range(max_messages)]


def eventually(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 5
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_a_receive_asks_for_the_room_left_and_each_batch_taken_opens_room() -> None:
    queue = AskedQueue()
    held = HeldMessages(queue, max_batch_images=2, max_batch_wait_s=60.0)
    held.accept([received(), received(), received()])  # 3 of a 4-image window
    stopping = threading.Event()
    receiver = Receiver(held, stopping, backlog_images=4, receive_wait_s=0, visibility_s=30)
    thread = threading.Thread(target=receiver.run, daemon=True)
    thread.start()
    try:
        # A receive is counted when asked and its messages held once it returns: wait for both.
        eventually(lambda: held.images_waiting() == 4, "a receive for the one image of room")
        time.sleep(0.2)
        assert queue.asked == [1]  # the window is full: no more receives
        assert len(held.ready_batch()) == 2
        eventually(
            lambda: len(queue.asked) == 2 and held.images_waiting() == 4,
            "a receive for the room the batch left",
        )
        assert queue.asked == [1, 2]
    finally:
        stopping.set()
        thread.join(timeout=5)


class FourImageQueue(AskedQueue):
    """Answers every receive with as many four-image messages as asked for."""

    def receive(self, *, max_messages: int, wait_s: int, visibility_s: int) -> list[Received]:
        self.asked.append(max_messages)
        return [received(num_images=4) for _ in range(max_messages)]


def test_a_receive_asks_for_fewer_messages_when_the_jobs_have_more_images() -> None:
    """Room for 8 images is room for two four-image jobs, not eight (which would bring 32 images into a window
    of 16 and keep it closed for two more batches)."""
    queue = FourImageQueue()
    held = HeldMessages(queue, max_batch_images=8, max_batch_wait_s=60.0)
    held.accept([received(num_images=4), received(num_images=4)])  # 8 of a 16-image window
    stopping = threading.Event()
    receiver = Receiver(held, stopping, backlog_images=16, receive_wait_s=0, visibility_s=30)
    thread = threading.Thread(target=receiver.run, daemon=True)
    thread.start()
    try:
        # A receive is counted when asked and its messages held once it returns: wait for both.
        eventually(lambda: held.images_waiting() == 16, "a receive for two jobs of four images")
        assert queue.asked == [2]  # full, not overfilled
        assert len(held.ready_batch()) == 2
        eventually(
            lambda: len(queue.asked) == 2 and held.images_waiting() == 16,
            "a receive for the two jobs the batch made room for",
        )
        assert queue.asked == [2, 2]
    finally:
        stopping.set()
        thread.join(timeout=5)
