"""The result cache's decisions over real conditional writes (in-process DynamoDB): which job answers, which joins,
which generates; settling; the requeue sweeper's view of joined jobs; the key; the settings that scope it."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from ulid import ULID

from shared.contracts import GenerationRequest, Job, JobStatus, Output, QueueMessage, WorkflowInput, utcnow
from shared.errors import JobNotFound, TooManyRequests
from shared.jobs import MAX_FOLLOWERS, JobsRepository, cache_entry_pk, expiry_epoch
from shared.ratelimit import DailyGpuBudget
from shared.settings import Settings
from tests.dynamofaults import DynamoFaults, Fault
from tests.tablegrants import TableCalls, refused
from tests.unit.conftest import JOBS_TABLE
from workflows.requeue import RequeueSweeper
from workflows.resultcache import ResultCache
from workflows.submission import SubmissionService

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

REQUEST = {"prompt": "a fox", "seed": 42, "width": 256, "height": 256, "num_inference_steps": 2}


class Queue:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, message: QueueMessage) -> str:
        self.sent.append(message.job_id)
        return "m"


class Orchestrator:
    def __init__(self) -> None:
        self.started: list[str] = []

    def start(self, name: str, workflow_input: WorkflowInput) -> str:
        self.started.append(name)
        return name


class World:
    def __init__(self, ddb: DynamoDBClient, **settings: Any) -> None:
        self.settings = Settings(**settings)
        self.repo = JobsRepository(ddb, JOBS_TABLE)
        self.queue = Queue()
        self.sfn = Orchestrator()
        self.budget = DailyGpuBudget(ddb, JOBS_TABLE)
        self.cache = ResultCache(
            self.repo,
            self.queue,  # type: ignore[arg-type]
            self.settings,
            orchestrator=lambda: self.sfn,  # type: ignore[arg-type,return-value]
            budget=self.budget,
        )
        self.api = SubmissionService(self.repo, self.queue, self.settings, cache=self.cache, budget=self.budget)  # type: ignore[arg-type]

    def used(self, tenant: str = "t1") -> int:
        """The tenant's GPU work counted today."""
        return self.budget.used(tenant, now=time.time())

    def submit(self, tenant: str = "t1", **changes: Any) -> Job:
        return self.api.submit(tenant, GenerationRequest.model_validate(REQUEST | changes)).job

    def succeed(self, job: Job) -> Job:
        """What the worker and the state machine do to a generated job."""
        self.repo.transition(job.job_id, JobStatus.RUNNING, tenant=job.tenant)
        self.repo.transition(job.job_id, JobStatus.POSTPROCESSING, tenant=job.tenant)
        self.repo.transition(job.job_id, JobStatus.SUCCEEDED, tenant=job.tenant)
        outputs = [Output(index=0, key=f"outputs/{job.tenant}/{job.job_id}/0.png", content_type="image/png",
                          width=256, height=256, bytes=3, sha256="abc")]  # fmt: skip
        self.repo._ddb.update_item(
            TableName=JOBS_TABLE,
            Key={"pk": {"S": f"JOB#{job.job_id}"}},
            UpdateExpression="SET outputs = :o",
            ExpressionAttributeValues={":o": {"S": "[" + outputs[0].model_dump_json() + "]"}},
        )
        return self.repo.get(job.job_id)


@pytest.fixture
def table(jobs_table: DynamoDBClient) -> DynamoDBClient:
    """The jobs table with the two indexes submission and the sweeper read (as template.yaml declares them)."""
    jobs_table.delete_table(TableName=JOBS_TABLE)
    keys = ("pk", "active_tenant", "unqueued_shard", "job_id")
    jobs_table.create_table(
        TableName=JOBS_TABLE,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": k, "AttributeType": "S"} for k in keys],
        BillingMode="PAY_PER_REQUEST",
        GlobalSecondaryIndexes=[
            {
                "IndexName": name,
                "KeySchema": [
                    {"AttributeName": hash_key, "KeyType": "HASH"},
                    {"AttributeName": "job_id", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "KEYS_ONLY"},
            }
            for name, hash_key in (("active_by_tenant", "active_tenant"), ("unqueued", "unqueued_shard"))
        ],
    )
    return jobs_table


@pytest.fixture
def world(table: DynamoDBClient) -> World:
    return World(table)


def test_the_first_request_generates_an_identical_one_joins_and_is_answered_when_it_succeeds(world: World) -> None:
    source = world.submit(callback_url=None)
    assert world.queue.sent == [source.job_id]
    follower = world.submit()
    assert follower.status == JobStatus.QUEUED
    assert follower.joined_to == source.job_id
    assert world.queue.sent == [source.job_id]  # the follower is not queued: no second generation
    assert world.repo.followers(source.job_id) == [follower.job_id]
    world.succeed(source)
    report = world.cache.settle(source.job_id)
    assert (report.completed, report.released) == (1, 0)
    done = world.repo.get(follower.job_id)
    assert done.status == JobStatus.SUCCEEDED
    assert done.cache_source == source.job_id
    assert done.joined_to is None
    assert [o.key for o in done.outputs] == [o.key for o in world.repo.get(source.job_id).outputs]
    assert done.usage is not None
    assert done.usage.gpu_s == 0
    # Settling again changes nothing and sends nothing twice (the notice is started by name, once).
    again = world.cache.settle(source.job_id)
    assert (again.completed, again.released) == (0, 0)
    assert world.repo.get(follower.job_id).finished_at == done.finished_at
    hit = world.submit()
    assert hit.status == JobStatus.SUCCEEDED
    assert hit.cache_source == source.job_id
    assert hit.expires_at <= world.repo.get(source.job_id).expires_at  # its references live as long as it does


def test_a_failed_or_cancelled_source_is_no_hit_and_its_followers_run_themselves(world: World) -> None:
    source = world.submit()
    follower = world.submit()
    world.repo.transition(source.job_id, JobStatus.CANCELLED, tenant="t1")
    report = world.cache.settle(source.job_id)
    assert report.released == 1
    released = world.repo.get(follower.job_id)
    assert released.status == JobStatus.QUEUED
    assert released.joined_to is None
    assert world.queue.sent == [source.job_id, follower.job_id]
    # The entry named the cancelled job; now it names the follower that generates: the next request joins it.
    assert world.repo.cached_job_id(cache_entry_pk("t:t1", follower.cache_key)) == follower.job_id
    fresh = world.submit()
    assert (fresh.status, fresh.joined_to) == (JobStatus.QUEUED, follower.job_id)
    assert world.queue.sent == [source.job_id, follower.job_id]


def test_cancelling_a_joined_job_leaves_its_source_alone(world: World) -> None:
    source = world.submit()
    follower = world.submit()
    world.api.cancel("t1", follower.job_id)
    assert world.repo.get(source.job_id).status == JobStatus.QUEUED
    world.succeed(source)
    assert world.cache.settle(source.job_id).completed == 0
    assert world.repo.get(follower.job_id).status == JobStatus.CANCELLED


def test_a_cancelled_sources_webhook_starts_before_its_followers_are_settled(world: World) -> None:
    """Settling many joined jobs can take long (a Lambda timeout mid-way): the cancel's own webhook comes first, so
    it is never the part left undone."""
    source = world.submit()
    follower = world.submit()
    order: list[str] = []
    sent = world.queue.send

    def send(message: QueueMessage) -> str:
        order.append(f"send {message.job_id}")
        return sent(message)

    world.queue.send = send  # type: ignore[method-assign]
    cancelled = world.api.cancel("t1", source.job_id, notify=lambda job: order.append(f"notify {job.status}"))
    assert cancelled.status == JobStatus.CANCELLED
    assert order == ["notify CANCELLED", f"send {follower.job_id}"]


def test_a_source_that_finishes_before_the_join_lands_is_a_hit_instead(world: World) -> None:
    """The join is conditional on the source being unfinished: a source that succeeded between the read and the
    join's write refuses it, and the request is read again and answered."""
    source = world.submit()
    real_get = world.repo.get
    finished_once: list[bool] = []

    def get_then_finish(job_id: str, **kw: Any) -> Job:
        job = real_get(job_id, **kw)
        if job_id == source.job_id and not finished_once:
            finished_once.append(True)
            world.succeed(source)  # the source finishes right after the read saw it QUEUED
        return job

    world.repo.get = get_then_finish  # type: ignore[method-assign]
    answered = world.submit()
    assert answered.status == JobStatus.SUCCEEDED
    assert answered.cache_source == source.job_id
    assert world.repo.followers(source.job_id) == []


def leave_an_hour(world: World, job: Job) -> None:
    """Cut ``job``'s retention to an hour from now: under half of it left (a job queued for days)."""
    world.repo._ddb.update_item(
        TableName=JOBS_TABLE,
        Key={"pk": {"S": f"JOB#{job.job_id}"}},
        UpdateExpression="SET expires_at = :e",
        ExpressionAttributeValues={":e": {"N": str(int(time.time()) + 3600)}},
    )


def test_an_expiring_source_is_no_hit(world: World) -> None:
    source = world.succeed(world.submit())
    leave_an_hour(world, source)
    fresh = world.submit()
    assert fresh.status == JobStatus.QUEUED
    assert fresh.cache_source is None


def test_an_expiring_unfinished_source_is_not_joined_and_the_new_job_keeps_its_retention(world: World) -> None:
    """A joined job is kept no longer than the job it joined: joining one with an hour left would have it 404 an
    hour after it was answered (or before). It generates instead, and later identical requests join it."""
    source = world.submit()
    leave_an_hour(world, source)
    fresh = world.submit()
    assert (fresh.status, fresh.joined_to) == (JobStatus.QUEUED, None)
    assert world.queue.sent == [source.job_id, fresh.job_id]
    assert world.repo.followers(source.job_id) == []
    assert fresh.expires_at > time.time() + 6 * 86400  # its own seven days
    assert world.repo.cached_job_id(cache_entry_pk("t:t1", fresh.cache_key)) == fresh.job_id
    assert world.submit().joined_to == fresh.job_id


def test_a_join_is_refused_by_a_source_whose_retention_was_cut_after_it_was_read(world: World) -> None:
    """The join's write is conditioned on the source's retention, not only the read before it."""
    source = world.submit()
    real_get = world.repo.get

    def get_then_cut(job_id: str, **kw: Any) -> Job:
        job = real_get(job_id, **kw)
        if job_id == source.job_id:
            leave_an_hour(world, source)  # after the read saw its full retention
        return job

    world.repo.get = get_then_cut  # type: ignore[method-assign]
    fresh = world.submit()
    assert fresh.joined_to is None
    assert world.repo.followers(source.job_id) == []
    assert world.queue.sent == [source.job_id, fresh.job_id]


def test_a_source_with_the_most_followers_is_not_joined_and_the_new_job_runs_itself(world: World) -> None:
    """A source's followers are bounded (the state machine carries the whole job item): one more identical job
    generates itself, and the next ones join it."""
    source = world.submit()
    others = [f"01JOINED{i:018d}" for i in range(MAX_FOLLOWERS - 2)]  # jobs that joined it before
    world.repo._ddb.update_item(
        TableName=JOBS_TABLE,
        Key={"pk": {"S": f"JOB#{source.job_id}"}},
        UpdateExpression="ADD followers :f",
        ExpressionAttributeValues={":f": {"SS": others}},
    )
    first, second = world.submit(), world.submit()
    assert first.joined_to == second.joined_to == source.job_id
    third = world.submit()
    assert third.joined_to is None
    assert world.queue.sent == [source.job_id, third.job_id]
    assert len(world.repo.followers(source.job_id)) == MAX_FOLLOWERS
    assert world.submit().joined_to == third.job_id


def test_after_a_failed_source_no_joined_job_is_moved_to_one_with_little_retention_left(world: World) -> None:
    source = world.submit()
    followers = [world.submit() for _ in range(2)]
    first, second = world.repo.followers(source.job_id)  # the first released generates; the other would join it
    leave_an_hour(world, world.repo.get(first))
    world.repo.transition(source.job_id, JobStatus.FAILED, tenant="t1")
    report = world.cache.settle(source.job_id)
    assert (report.released, report.moved) == (2, 0)
    assert world.repo.get(second).joined_to is None
    assert sorted(world.queue.sent[1:]) == sorted(f.job_id for f in followers)


def test_cache_false_a_drawn_seed_and_another_tenant_generate(world: World) -> None:
    world.succeed(world.submit())
    assert world.submit(cache=False).status == JobStatus.QUEUED
    drawn = GenerationRequest(prompt="a fox", width=256, height=256, num_inference_steps=2)
    assert world.api.submit("t1", drawn).job.status == JobStatus.QUEUED
    assert world.submit(tenant="t2").status == JobStatus.QUEUED
    # Another size, format or quality is another result.
    assert world.submit(output_format="webp").status == JobStatus.QUEUED
    assert world.submit(output_format="webp", quality=50).status == JobStatus.QUEUED
    assert world.submit().status == JobStatus.SUCCEEDED


def test_global_scope_answers_other_tenants_and_the_setting_turns_it_off(table: DynamoDBClient) -> None:
    shared = World(table, result_cache_scope="global")
    source = shared.succeed(shared.submit(tenant="a"))
    hit = shared.submit(tenant="b")
    assert hit.status == JobStatus.SUCCEEDED
    assert hit.cache_source == source.job_id
    off = World(table, result_cache=False, result_cache_scope="global")
    assert off.submit(tenant="c").status == JobStatus.QUEUED


def test_a_model_revision_is_part_of_the_key(table: DynamoDBClient) -> None:
    before = World(table)
    before.succeed(before.submit())
    after = World(table, model_revisions={"tiny": "v2"})
    assert after.submit().status == JobStatus.QUEUED
    assert before.submit().status == JobStatus.SUCCEEDED


def test_the_model_registry_revision_is_part_of_the_key(table: DynamoDBClient) -> None:
    """A model updated to a new registry revision makes new images: its earlier ones no longer answer."""

    def registry(revision: str) -> str:
        entry = {"id": "tiny", "source": "builtin:tiny", "revision": revision, "architecture": "tiny"}
        return json.dumps({"models": [entry]})

    r1 = World(table, model_registry=registry("r1"))
    r1.succeed(r1.submit())
    assert r1.submit().status == JobStatus.SUCCEEDED
    r2 = World(table, model_registry=registry("r2"))
    assert r2.submit().status == JobStatus.QUEUED
    assert r2.submit(tenant="other").model_revision == "r2"


def test_the_sweeper_leaves_a_joined_job_to_its_source_until_the_source_finished_unsettled(world: World) -> None:
    source = world.submit()
    follower = world.submit()
    later = time.time() + 1
    # Submitted before the cutoff and marked unqueued, yet joined to an unfinished source: not the sweeper's.
    assert follower.job_id not in world.repo.unqueued_before(later, limit=10)
    world.repo.transition(source.job_id, JobStatus.FAILED, tenant="t1")
    assert follower.job_id not in world.repo.unqueued_before(later - 1, limit=10)  # finished after the cutoff
    # Finished before the cutoff and never settled (a dead letter, a crash): the sweeper sends it.
    assert follower.job_id in world.repo.unqueued_before(time.time() + 5, limit=10)


def test_a_join_refused_by_a_finished_source_writes_nothing(world: World) -> None:
    source = world.succeed(world.submit())
    now = utcnow()
    request = GenerationRequest.model_validate(REQUEST).normalised(world.settings)
    job = Job(
        job_id=str(ULID()),
        tenant="t1",
        status=JobStatus.QUEUED,
        request=request,
        created_at=now,
        cache_key=request.cache_key(),
        expires_at=expiry_epoch(now + timedelta(0), 7),
        joined_to=source.job_id,
    )
    assert world.repo.create_joined(job, source_id=source.job_id, alive_until=int(time.time())) is None
    with pytest.raises(JobNotFound):
        world.repo.get(job.job_id)


def test_the_key_is_the_normalised_request_with_format_quality_and_revision() -> None:
    base = GenerationRequest.model_validate(REQUEST | {"model": "tiny"})
    same = GenerationRequest.model_validate(REQUEST | {"model": "tiny", "guidance_scale": 7.5})
    assert base.cache_key() == same.cache_key()
    assert base.cache_key() == base.model_copy(update={"quality": 10}).cache_key()  # PNG ignores quality
    unrelated = {"metadata": {"a": "b"}, "callback_url": "https://x", "webhook_events": ["started"]}
    assert base.cache_key() == base.model_copy(update=unrelated).cache_key()
    changes: list[dict[str, Any]] = [
        {"seed": 43},
        {"prompt": "a fox "},
        {"negative_prompt": "x"},
        {"scheduler": "ddim"},
        {"num_images": 2},
        {"output_format": "jpeg"},
        {"height": 264},
        {"num_inference_steps": 3},
        {"guidance_scale": 7.0},
        {"model": "other"},
    ]
    for change in changes:
        assert base.model_copy(update=change).cache_key() != base.cache_key(), change
    assert base.cache_key("r2") != base.cache_key()
    jpeg = base.model_copy(update={"output_format": "jpeg"})
    assert jpeg.cache_key() != jpeg.model_copy(update={"quality": 50}).cache_key()
    assert base.cacheable()
    assert not base.model_copy(update={"cache": False}).cacheable()
    assert not base.model_copy(update={"seed": None}).cacheable()


def test_settings_refuse_an_unknown_scope_or_an_unpriced_instance() -> None:
    with pytest.raises(ValueError, match="result_cache_scope"):
        Settings(result_cache_scope="everyone")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no price for instance type"):
        Settings(gpu_instance_type="x9.huge")


def test_a_hit_is_answered_at_the_unfinished_cap_which_it_does_not_add_to(table: DynamoDBClient) -> None:
    world = World(table, max_unfinished_jobs_per_tenant=1)
    world.succeed(world.submit())
    world.submit(prompt="another")  # the tenant's one unfinished job
    assert world.submit().status == JobStatus.SUCCEEDED
    with pytest.raises(TooManyRequests):
        world.submit(prompt="a third")
    with pytest.raises(TooManyRequests):
        world.submit(seed=43)  # identical but for the seed: no hit, so it would be one more unfinished job


def test_a_hit_replayed_by_its_idempotency_key_is_the_same_job(world: World) -> None:
    world.succeed(world.submit())
    request = GenerationRequest.model_validate(REQUEST)
    first = world.api.submit("t1", request, idempotency_key="k-1")
    again = world.api.submit("t1", request, idempotency_key="k-1")
    assert first.created
    assert not again.created
    assert again.job.job_id == first.job.job_id
    assert again.job.status == JobStatus.SUCCEEDED


@pytest.mark.parametrize("value", ["false", 0, None, "yes"])
def test_cache_must_be_a_json_boolean(value: Any) -> None:
    with pytest.raises(ValueError, match="cache"):
        GenerationRequest.model_validate(REQUEST | {"cache": value})


def test_after_a_failed_source_one_joined_job_generates_and_the_others_join_it(world: World) -> None:
    source = world.submit()
    followers = [world.submit() for _ in range(3)]
    world.repo.transition(source.job_id, JobStatus.FAILED, tenant="t1")
    report = world.cache.settle(source.job_id)
    assert (report.released, report.moved) == (1, 2)
    jobs = [world.repo.get(f.job_id) for f in followers]
    [runner] = [j for j in jobs if j.joined_to is None]
    assert world.queue.sent == [source.job_id, runner.job_id]  # one generation for the three
    assert sorted(j.job_id for j in jobs if j.joined_to == runner.job_id) == sorted(
        j.job_id for j in jobs if j is not runner
    )
    assert world.repo.followers(runner.job_id) == sorted(j.job_id for j in jobs if j is not runner)
    # Settling the failed source again moves nothing; the runner's success answers the other two.
    assert world.cache.settle(source.job_id).moved == 0
    # A later identical request joins the runner, not the failed source: the entry names the job generating.
    late = world.submit()
    assert late.joined_to == runner.job_id
    world.succeed(runner)
    assert world.cache.settle(runner.job_id).completed == 3
    assert {world.repo.get(j.job_id).cache_source for j in [*jobs, late] if j is not runner} == {runner.job_id}
    # And once it succeeded, the same request is a hit on its images, not another generation.
    sent = list(world.queue.sent)
    hit = world.submit()
    assert (hit.status, hit.cache_source) == (JobStatus.SUCCEEDED, runner.job_id)
    assert world.queue.sent == sent


def test_settling_writes_only_items_the_postprocess_role_may_write(world: World, table: DynamoDBClient) -> None:
    """SettleJoined runs in the postprocess function, whose role limits its writes to item kinds. A settle after a
    failed source sends one follower to run, joins the others to it and points the cache entry at it; a settle after
    a success answers the followers. Each write must be one the template allows: on AWS a refused entry write is
    logged and skipped, the entry keeps naming the failed job, and the next identical request generates again
    instead of joining the job that runs."""
    source = world.submit()
    followers = [world.submit() for _ in range(3)]
    world.repo.transition(source.job_id, JobStatus.FAILED, tenant="t1")
    calls = TableCalls(table)
    assert world.cache.settle(source.job_id).released == 1
    (runner,) = [f for f in followers if world.repo.get(f.job_id).joined_to is None]
    assert ("dynamodb:PutItem", cache_entry_pk("t:t1", source.cache_key)) in calls.calls
    settled_failure = list(calls.calls)
    world.succeed(world.repo.get(runner.job_id))
    before_success = len(calls.calls)
    assert world.cache.settle(runner.job_id).completed == 2
    assert refused("PostprocessFunctionRole", settled_failure + calls.calls[before_success:]) == []


# 12 steps of 256x256: 0.79 megapixel steps. A budget of 2 holds two such jobs counted at once, not three.
COSTLY: dict[str, Any] = {"num_inference_steps": 12}
WORK = 256 * 256 * 12


def test_a_joined_job_sent_to_run_itself_spends_the_daily_budget(table: DynamoDBClient) -> None:
    """Identical copies join a job and get their GPU work back; cancelling the source sends one copy to generate.
    Were it not counted then, copies and cancels would run any number of jobs on one job's budget: it is counted
    when it is sent (the copies that join it instead are not: one generation), and later submissions see it."""
    world = World(table, daily_gpu_budget_mpx_steps=2)
    source = world.submit(**COSTLY)
    copies = [world.submit(**COSTLY) for _ in range(2)]
    assert {c.joined_to for c in copies} == {source.job_id}
    assert world.used() == WORK  # the copies' work given back while the source generates for them
    world.api.cancel("t1", source.job_id)
    [runner] = [c for c in copies if world.repo.get(c.job_id).joined_to is None]
    assert world.queue.sent == [source.job_id, runner.job_id]
    assert world.used() == 2 * WORK
    # Settling again (a retried SettleJoined) counts nothing more.
    world.cache.settle(source.job_id)
    assert world.used() == 2 * WORK
    # The spend is seen: a third job of that size does not fit what is left of the day's budget.
    with pytest.raises(TooManyRequests, match="megapixel steps"):
        world.submit(prompt="another", **COSTLY)
    # The runner generates for the other copy, which is answered from its images at no charge.
    world.succeed(world.repo.get(runner.job_id))
    assert world.cache.settle(runner.job_id).completed == 1
    assert world.used() == 2 * WORK


def test_a_joined_job_the_sweeper_sends_is_counted_once_however_often_it_is_sent(table: DynamoDBClient) -> None:
    """A source that finished without settling its copies (a dead letter): the requeue sweeper sends the copy, and
    a settle that comes late sends it once more. Its work is counted once."""
    world = World(table, daily_gpu_budget_mpx_steps=2)
    source = world.submit(**COSTLY)
    copy = world.submit(**COSTLY)
    world.repo.transition(source.job_id, JobStatus.FAILED, tenant="t1")
    sweeper = RequeueSweeper(
        world.repo,
        world.queue,  # type: ignore[arg-type]
        requeue_after_s=0,
        clock=lambda: time.time() + 5,
        budget=world.budget,
    )
    assert sweeper.sweep().requeued == 1
    assert world.queue.sent == [source.job_id, copy.job_id]
    assert world.used() == 2 * WORK
    assert world.cache.settle(source.job_id).released == 1  # still joined: sent again, not counted again
    assert world.queue.sent == [source.job_id, copy.job_id, copy.job_id]
    assert world.used() == 2 * WORK


def test_without_a_budget_a_released_job_counts_nothing(world: World) -> None:
    source = world.submit()
    copy = world.submit()
    world.api.cancel("t1", source.job_id)
    assert world.repo.get(copy.job_id).joined_to is None
    assert world.used() == 0


def test_a_joined_job_completed_with_its_answer_lost_is_answered_and_gets_its_webhook(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The follower's completion lands, its answer is lost (a 500) and botocore sends it again: the resend finds the
    job SUCCEEDED by that very write, which is the completion made, with its job.succeeded notice (not a follower
    taken for cancelled meanwhile and skipped)."""
    hook = {"callback_url": "https://example.com/hook"}
    source = world.submit(**hook)
    follower = world.submit(**hook)
    world.succeed(source)
    faults = DynamoFaults(monkeypatch)
    fault = faults.add(
        Fault(follower.job_id, "SET #s = :succ", times=1, code="InternalServerError", status=500, after_write=True)
    )
    report = world.cache.settle(source.job_id)
    assert fault.hits == 1
    assert (report.completed, report.skipped) == (1, 0)
    assert world.repo.get(follower.job_id).status == JobStatus.SUCCEEDED
    assert f"{follower.job_id}-succeeded" in world.sfn.started


def test_a_join_whose_source_is_cancelled_at_once_still_owes_its_work(table: DynamoDBClient) -> None:
    """The join lands; before its submission goes on, a cancel of the source settles it and sends the joined job
    to run itself, collecting whatever it owes. The work the join gives back and the record that it is owed are
    written with the join, so that collect finds them: the job that runs is counted, once."""
    world = World(table, daily_gpu_budget_mpx_steps=2)
    # The concurrent cancel: another API call, with its own client of the same table.
    other = World(boto3.client("dynamodb", region_name="us-east-1"), daily_gpu_budget_mpx_steps=2)
    source = world.submit(**COSTLY)
    cancels: list[Job] = []

    def cancel_source_once_the_join_landed(model: Any, **_: Any) -> None:
        if model.name == "TransactWriteItems" and not cancels:
            cancels.append(other.api.cancel("t1", source.job_id))

    world.repo._ddb.meta.events.register("after-call.dynamodb.TransactWriteItems", cancel_source_once_the_join_landed)
    copy = world.submit(**COSTLY)
    assert cancels
    assert copy.joined_to == source.job_id  # it joined, and was then sent to run itself by the cancel's settle
    ran = world.repo.get(copy.job_id)
    assert (ran.status, ran.joined_to) == (JobStatus.QUEUED, None)
    assert other.queue.sent == [copy.job_id]
    assert world.used() == 2 * WORK  # the source's work and the copy's, which runs: no GPU work for free
    owed = table.get_item(TableName=JOBS_TABLE, Key=DailyGpuBudget.owed_key("t1", copy.job_id)).get("Item", {})
    assert "owed" not in owed  # collected; nothing left owed for a job that already runs
