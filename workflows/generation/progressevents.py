"""What the worker adds to a job's progress, off the GPU thread: previews (a JPEG in S3 and the job's
``preview_key``) and the ``job.started`` / ``job.progress`` webhooks of requests that subscribe to them.

Webhook events go through a few sender threads per worker that keep only the newest pending event per job and
send a job's progress at most once every ``interval_s`` (``job.started`` at once), one event of a job at a time and
in order: a slow receiver holds one thread (a send is bounded, 5 s) and delays its own later events, never
generation or the other jobs' events while a thread is free, and a burst of steps costs one webhook.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger
from botocore.exceptions import BotoCoreError, ClientError

from shared.contracts import Job
from shared.eventrecords import EventRecords
from shared.jobs import JobsRepository
from shared.media import MediaStore, preview_key
from shared.webhooksecrets import webhook_secrets
from workflows.generation.previews import Captured, to_jpeg
from workflows.jobevents import PROGRESS, STARTED
from workflows.webhooks import EventNotifier

if TYPE_CHECKING:
    from shared.aws import AwsClients
    from shared.settings import Settings

logger = Logger(service="sdq-worker")

# At most one job.progress webhook per job this often; the newest state wins.
EVENT_INTERVAL_S = 3.0
# A preview at most this often per batch, and at least this many steps after the previous one.
PREVIEW_INTERVAL_S = 1.0
PREVIEW_EVERY_STEPS = 2
# Sender threads per worker: receivers that hang (each send is bounded) hold back the others' events only when
# this many hang at once.
EVENT_SENDERS = 4


class EventSender:
    """Threads that send the newest pending event of each job, started first, progress rate-limited, one event
    of a job at a time."""

    def __init__(
        self,
        send: Callable[[Job, str], Any],
        *,
        interval_s: float = EVENT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        threads: int = EVENT_SENDERS,
    ) -> None:
        self._send = send
        self._interval_s = interval_s
        self._clock = clock
        self._threads = threads
        self._cond = threading.Condition()
        self._pending: dict[str, dict[str, Job]] = {}  # job id -> event -> the job as it stood
        self._sending: set[str] = set()  # jobs with an event being sent: their next one waits for it
        self._last_progress: dict[str, float] = {}
        self._started = False
        self.sent = 0

    def offer(self, job: Job, event: str) -> None:
        """Queue ``event`` for a snapshot of ``job``, replacing an unsent one of the same kind."""
        snapshot = job.model_copy(deep=True)
        with self._cond:
            self._pending.setdefault(job.job_id, {})[event] = snapshot
            if not self._started:
                self._started = True
                for i in range(self._threads):
                    threading.Thread(target=self._run, name=f"sdq-events-{i}", daemon=True).start()
            self._cond.notify()

    def _next(self) -> tuple[Job, str] | None:
        """The next event that is due (under the lock), or None; prunes old rate-limit entries."""
        now = self._clock()
        for job_id, events in list(self._pending.items()):
            if job_id in self._sending:
                continue
            if STARTED in events:
                event = STARTED
            elif now - self._last_progress.get(job_id, -1e9) >= self._interval_s:
                event = PROGRESS
                self._last_progress[job_id] = now
            else:
                continue
            job = events.pop(event)
            if not events:
                del self._pending[job_id]
            self._sending.add(job_id)
            return job, event
        for job_id, at in list(self._last_progress.items()):
            if now - at > 600 and job_id not in self._pending:
                del self._last_progress[job_id]
        return None

    def _run(self) -> None:
        while True:
            with self._cond:
                item = self._next()
                while item is None:
                    self._cond.wait(timeout=0.25 if self._pending else None)
                    item = self._next()
            job, event = item
            try:
                self._send(job, event)
                with self._cond:
                    self.sent += 1
            except (BotoCoreError, ClientError) as exc:
                logger.warning("event webhook not sent", job_id=job.job_id, event=event, error=type(exc).__name__)
            except Exception:
                logger.exception("event webhook failed", job_id=job.job_id, event=event)
            finally:
                with self._cond:
                    self._sending.discard(job.job_id)
                    self._cond.notify_all()  # the job's next event, if one is waiting, is free to go


class ProgressEvents:
    """Previews and event webhooks for the progress recorder (:mod:`.progress`)."""

    def __init__(
        self,
        media: MediaStore,
        repo: JobsRepository,
        *,
        outputs_prefix: str,
        notifier: EventNotifier | None = None,
        event_interval_s: float = EVENT_INTERVAL_S,
        preview_interval_s: float = PREVIEW_INTERVAL_S,
    ) -> None:
        self._media = media
        self._repo = repo
        self._prefix = outputs_prefix
        self._notifier = notifier
        self.preview_interval_s = preview_interval_s
        self._sender = EventSender(notifier.send, interval_s=event_interval_s) if notifier is not None else None

    def _offer(self, job: Job, event: str) -> None:
        if self._sender is not None and self._notifier is not None and self._notifier.wanted(job, event):
            self._sender.offer(job, event)

    def started(self, job: Job) -> None:
        """The job's generation starts (its batch's pipeline call begins)."""
        self._offer(job, STARTED)

    def progressed(self, job: Job) -> None:
        """A progress write (or a preview) landed for the job."""
        self._offer(job, PROGRESS)

    def store_preview(self, job: Job, latents: Captured, row: int, *, worker_id: str, step: int, total: int) -> bool:
        """Encode row ``row`` of ``latents`` for ``job``, upload it over the job's previous preview, record it.

        Returns whether the job was still this worker's (on False the caller drops it). Raises AWS errors.
        """
        key = preview_key(self._prefix, job.tenant, job.job_id)
        self._media.put(key, to_jpeg(latents.wait()[row], latents.format), "image/jpeg")
        if not self._repo.record_preview(job.job_id, worker_id=worker_id, key=key, step=step, total=total):
            # Cancelled since (its cancel deleted the previews recorded before), or another worker's now.
            self._media.delete([key])
            return False
        job.preview_key = key
        job.progress.step, job.progress.total = step, total
        self.progressed(job)
        return True


def progress_events_for(aws: AwsClients, settings: Settings, *, worker_id: str) -> ProgressEvents:
    """Previews and event webhooks wired to the service's bucket, table and webhook secrets."""
    media = MediaStore(aws.s3(), settings.bucket)
    notifier = EventNotifier(
        EventRecords(aws.dynamodb(), settings.table_name),
        media,
        webhook_secrets(aws, settings),
        settings,
        worker_id=worker_id,
    )
    return ProgressEvents(
        media,
        JobsRepository(aws.dynamodb(), settings.table_name),
        outputs_prefix=settings.outputs_prefix,
        notifier=notifier,
    )
