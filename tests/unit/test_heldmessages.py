"""The worker's held-message bookkeeping: arrivals into the batcher, poison messages, a re-received message's
newest receipt, letting go (visibility and the heartbeat's view) and finishing (delete)."""

from __future__ import annotations

import time

from tests.unit.workerfakes import RecordingQueue, claimed, held, poison, received
from workflows.generation.heldmessages import MAX_LEASE_HOLD_S, HeldMessages


def messages(queue: RecordingQueue, *, max_images: int = 2, wait_s: float = 60.0) -> HeldMessages:
    return HeldMessages(queue, max_batch_images=max_images, max_batch_wait_s=wait_s)


def test_accepted_messages_are_held_and_batched_and_a_poison_message_goes_back_at_once() -> None:
    queue = RecordingQueue()
    held_messages = messages(queue)
    a, b = received(receipt="ra"), received(receipt="rb")
    held_messages.accept([a, poison(), b])
    assert len(held_messages) == 2
    assert queue.visibility == [("m-poison", 0)]  # left for the redrive policy, never held
    assert held_messages.images_waiting() == 2
    batch = held_messages.next_batch()  # two images fill a batch: ready without waiting
    assert [h.received for h in batch] == [a, b]
    assert held_messages.images_waiting() == 0
    assert len(held_messages) == 2  # still held while they run


def test_a_message_received_again_while_held_keeps_one_record_with_the_newest_receipt() -> None:
    held_messages = messages(RecordingQueue())
    first = received("job-1", receipt="old")
    held_messages.accept([first])
    again = received("job-1", receipt="new", message_id=first.message_id)
    held_messages.accept([again])
    assert len(held_messages) == 1
    assert held_messages.images_waiting() == 1  # not queued for a second run
    (only,) = held_messages.take_waiting()
    assert only.received.receipt_handle == "new"


def test_a_batch_that_is_not_ready_waits_and_is_not_taken() -> None:
    held_messages = messages(RecordingQueue(), max_images=4, wait_s=0.3)
    held_messages.accept([received()])
    assert held_messages.ready_batch() == []
    started = time.monotonic()
    assert held_messages.next_batch() == []  # waited for the batch's deadline ...
    assert time.monotonic() - started >= 0.2
    assert len(held_messages.next_batch()) == 1  # ... which has passed now


def test_letting_go_forgets_sets_visibility_and_shows_the_heartbeat_what_to_set_back() -> None:
    queue = RecordingQueue()
    held_messages = messages(queue)
    held_messages.accept([received(), received()])
    one, other = held_messages.take_waiting()
    claimed(one), claimed(other)
    everything, renew = held_messages.snapshot()
    assert renew == [one, other]
    queue.refuse = {one.received.message_id}
    assert held_messages.let_go([one], 7) == [one.received.message_id]  # SQS's refusals come back
    assert queue.visibility == [(one.received.message_id, 7)]
    assert len(held_messages) == 1
    assert one.let_go_visibility == 7
    assert not held_messages.still_renewable(one)  # a renewal already on its way skips it
    assert held_messages.still_renewable(other)
    assert held_messages.let_go_among(everything) == [one]
    assert held_messages.snapshot() == ([other], [other])


def test_finishing_deletes_the_message_and_a_refused_delete_still_forgets_it() -> None:
    queue = RecordingQueue()
    held_messages = messages(queue)
    held_messages.accept([received(), received()])
    done, refused = held_messages.take_waiting()
    held_messages.finish(done)
    queue.refuse = {refused.received.message_id}
    held_messages.finish(refused)
    assert queue.deleted == [done.received.message_id]
    assert len(held_messages) == 0


def test_an_unreachable_queue_refuses_everything_and_raises_nothing() -> None:
    queue = RecordingQueue()
    held_messages = messages(queue)
    held_messages.accept([received(), received()])
    a, b = held_messages.take_waiting()
    queue.down = True
    assert held_messages.let_go([a, b], 0) == [a.received.message_id, b.received.message_id]
    held_messages.accept([received()])
    (c,) = held_messages.take_waiting()
    held_messages.finish(c)
    assert len(held_messages) == 0


def test_letting_everything_go_makes_every_held_message_visible() -> None:
    queue = RecordingQueue()
    held_messages = messages(queue)
    held_messages.accept([received(), received(), received()])
    ids = [h.received.message_id for h in held_messages.snapshot()[0]]
    held_messages.let_go_all()
    assert len(held_messages) == 0
    assert queue.visibility == [(i, 0) for i in ids]


def test_a_lease_is_renewed_only_while_claimed_live_and_not_held_too_long() -> None:
    h = held()
    assert not h.renewable()  # not claimed
    claimed(h)
    assert h.renewable()
    h.dropped = True
    assert not h.renewable()
    h.dropped, h.claimed_at = False, time.monotonic() - MAX_LEASE_HOLD_S - 1
    assert not h.renewable()  # a wedged call must not lock its job forever
