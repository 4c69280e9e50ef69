"""EngineGate and iterate_in_thread in process: admission, bounded waits, job deadlines.

Pure logic, so no server: jobs are held open with events, never timed, and every wait that is
not expected to end has a generous safety timeout so a bug fails the test instead of hanging.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from voxgate.concurrency import (
    ClientDisconnected,
    EngineGate,
    JobDeadline,
    cancel_on_disconnect,
    iterate_in_thread,
)
from voxgate.errors import InvalidRequest, Overloaded

SAFETY_S = 30


async def hold(gate: EngineGate, release: asyncio.Event, entered: asyncio.Event) -> None:
    async with gate.slot():
        entered.set()
        await release.wait()


async def wait_for(predicate: object, what: str) -> None:
    deadline = time.monotonic() + SAFETY_S
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.001)


def test_a_running_job_longer_than_the_average_raises_the_estimate() -> None:
    """Just after start-up the average job time is the 1 s guess; a job that has already run
    100 s makes the expected wait at least that, so the next request is refused at once instead
    of being queued behind it (its start is moved back, not waited for)."""

    async def scenario() -> None:
        gate = EngineGate("faster-whisper", workers=1, queue_size=16, max_wait_s=30)
        release, running = asyncio.Event(), asyncio.Event()
        first = asyncio.create_task(hold(gate, release, running))
        await running.wait()
        assert gate.expected_wait_s() == pytest.approx(1.0, abs=0.5)
        (job,) = gate._started
        gate._started[job] -= 100  # the running job began 100 s ago
        assert gate.job_estimate_s() == pytest.approx(100, abs=1)
        with pytest.raises(Overloaded) as refused:
            async with gate.slot():
                pytest.fail("admitted behind a job already past the bound")
        assert refused.value.retry_after_s is not None and refused.value.retry_after_s >= 70
        release.set()
        await asyncio.wait_for(first, SAFETY_S)

    asyncio.run(scenario())


def test_expected_wait_over_the_bound_is_refused_at_once() -> None:
    """One job running, one queued: a third request would wait two average jobs, over the
    bound, and gets 503 server_overloaded with a Retry-After at once (the queue has room)."""

    async def scenario() -> None:
        gate = EngineGate("piper", workers=1, queue_size=16, max_wait_s=1.5)
        release, running = asyncio.Event(), asyncio.Event()
        first = asyncio.create_task(hold(gate, release, running))
        await running.wait()
        assert gate.expected_wait_s() == pytest.approx(1.0)  # the initial average job time
        second = asyncio.create_task(hold(gate, release, asyncio.Event()))
        await wait_for(lambda: gate.waiting == 1, "second request queued")
        assert gate.expected_wait_s() == pytest.approx(2.0)
        with pytest.raises(Overloaded) as refused:
            async with gate.slot():
                pytest.fail("admitted past the expected-wait bound")
        assert refused.value.code == "server_overloaded"
        assert refused.value.retry_after_s == 1  # 2 s expected - 1.5 s allowed, rounded up
        assert (gate.running, gate.waiting) == (1, 1)
        release.set()
        await asyncio.wait_for(asyncio.gather(first, second), SAFETY_S)
        assert (gate.running, gate.waiting) == (0, 0)

    asyncio.run(scenario())


def test_a_waiting_request_gives_up_after_the_queue_timeout() -> None:
    async def scenario() -> None:
        gate = EngineGate("piper", workers=1, queue_size=16, queue_timeout_s=0.05)
        release, running = asyncio.Event(), asyncio.Event()
        first = asyncio.create_task(hold(gate, release, running))
        await running.wait()
        with pytest.raises(Overloaded) as timed_out:
            async with asyncio.timeout(SAFETY_S), gate.slot():
                pytest.fail("ran while the only worker was busy")
        assert timed_out.value.code == "server_overloaded"
        assert timed_out.value.retry_after_s is not None and timed_out.value.retry_after_s >= 1
        assert (gate.running, gate.waiting) == (1, 0)
        release.set()
        await first
        async with gate.slot():  # the worker is free again
            assert gate.running == 1

    asyncio.run(scenario())


def test_a_cancelled_wait_leaves_the_queue() -> None:
    async def scenario() -> None:
        gate = EngineGate("piper", workers=1, queue_size=16)
        release, running = asyncio.Event(), asyncio.Event()
        first = asyncio.create_task(hold(gate, release, running))
        await running.wait()
        queued = asyncio.create_task(hold(gate, asyncio.Event(), asyncio.Event()))
        await wait_for(lambda: gate.waiting == 1, "request queued")
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert (gate.running, gate.waiting) == (1, 0)
        release.set()
        await first
        assert (gate.running, gate.waiting) == (0, 0)

    asyncio.run(scenario())


def test_slot_yields_the_job_deadline() -> None:
    async def scenario() -> None:
        async with EngineGate("piper", workers=1, queue_size=1).slot() as none:
            assert none is None
        async with EngineGate("piper", workers=1, queue_size=1, job_timeout_s=300).slot() as d:
            assert isinstance(d, JobDeadline) and not d.expired()
            assert d.at == pytest.approx(time.monotonic() + 300, abs=5)

    asyncio.run(scenario())


def test_a_job_past_its_deadline_stops_at_its_next_item() -> None:
    """The thread produces items until it sees the deadline has passed; it produces no more,
    and the consumer gets the 503 engine_timeout error instead of a silent early end."""
    deadline = JobDeadline("piper", 0.05, time.monotonic() + 0.05)
    produced: list[int] = []

    def items() -> Iterator[int]:
        for n in range(1000):
            produced.append(n)
            while n == 3 and not deadline.expired():  # the deadline passes in this "sentence"
                time.sleep(0.01)
            yield n

    async def scenario() -> list[int]:
        got: list[int] = []
        with pytest.raises(Overloaded) as stopped:
            async with asyncio.timeout(SAFETY_S):
                async for n in iterate_in_thread(items, deadline=deadline):
                    got.append(n)
        assert stopped.value.code == "engine_timeout"
        assert stopped.value.status_code == 503
        assert "VOXGATE_ENGINE_JOB_TIMEOUT_S" in stopped.value.message
        return got

    got = asyncio.run(scenario())
    assert got == [0, 1, 2][: len(got)]
    assert produced == [0, 1, 2, 3], produced


def test_cancel_on_disconnect_raises_errors_as_themselves() -> None:
    """An engine error or a 503 from the queue reaches the handler as itself (a clean error
    envelope), not wrapped in an ExceptionGroup (a 500)."""

    async def never_disconnects() -> dict[str, str]:
        await asyncio.sleep(SAFETY_S)
        return {"type": "http.request"}

    async def fails() -> None:
        raise InvalidRequest("bad", param="input")

    async def scenario() -> None:
        with pytest.raises(InvalidRequest):
            await cancel_on_disconnect(never_disconnects, fails())

    asyncio.run(scenario())


def test_cancel_on_disconnect_stops_waiting_when_the_client_leaves() -> None:
    async def disconnects() -> dict[str, str]:
        return {"type": "http.disconnect"}

    async def scenario() -> None:
        gate = EngineGate("piper", workers=1, queue_size=16)
        release, running = asyncio.Event(), asyncio.Event()
        first = asyncio.create_task(hold(gate, release, running))
        await running.wait()
        with pytest.raises(ClientDisconnected):
            await cancel_on_disconnect(disconnects, hold(gate, asyncio.Event(), asyncio.Event()))
        assert (gate.running, gate.waiting) == (1, 0)
        release.set()
        await first

    asyncio.run(scenario())


def test_a_transcription_deadline_is_moved_on_by_its_audio_length() -> None:
    """An hour of audio may run the job limit plus an hour: the limit is for stuck jobs, not
    for long recordings (which would otherwise always fail with the 300 s default)."""
    deadline = JobDeadline("whisper", 300.0, at=1000.0)
    longer = deadline.with_audio(3600.0)
    assert (longer.limit_s, longer.at) == (3900.0, 4600.0)
    assert "plus the audio's length" in longer.error().message
    assert (deadline.limit_s, deadline.at) == (300.0, 1000.0)  # the original is unchanged
