"""``run()``'s ``on_update``: every answer reaches it, and the async client awaits an async callback."""

from __future__ import annotations

import asyncio

from sdq_client import AsyncClient, JobStatus, JobView

from tests.client.fakeapi import running


def test_the_async_run_awaits_an_async_on_update() -> None:
    seen: list[JobStatus | str] = []

    async def on_update(job: JobView) -> None:
        await asyncio.sleep(0)
        seen.append(job.status)

    async def run() -> JobView:
        async with AsyncClient(api.url, "key") as client:
            return await client.run({"prompt": "a red fox"}, timeout=30, on_update=on_update)

    with running() as api:
        api.gets_until_done = 2
        job = asyncio.run(run())
    assert job.status is JobStatus.SUCCEEDED
    assert seen == [JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.RUNNING, JobStatus.SUCCEEDED]


def test_the_async_run_calls_a_plain_on_update_too() -> None:
    seen: list[JobStatus | str] = []

    async def run() -> JobView:
        async with AsyncClient(api.url, "key") as client:
            return await client.run({"prompt": "a red fox"}, timeout=30, on_update=lambda job: seen.append(job.status))

    with running() as api:
        asyncio.run(run())
    assert seen == [JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED]
