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
    CostModel,
    EngineGate,
    JobDeadline,
    cancel_on_disconnect,
    iterate_in_thread,
)
from voxgate.errors import InvalidRequest, Overloaded

SAFETY_S = 30


async def hold(
    gate: EngineGate,
    release: asyncio.Event,
    entered: asyncio.Event,
    units: float | None = None,
    party: str | None = None,
) -> None:
    async with gate.slot(units, party=party):
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
        (job,) = gate._jobs
        job.started -= 100  # the running job began 100 s ago: 99 s over its estimate
        assert gate.expected_wait_s() == pytest.approx(99, abs=1)
        with pytest.raises(Overloaded) as refused:
            async with gate.slot():
                pytest.fail("admitted behind a job already past the bound")
        assert refused.value.retry_after_s is not None and refused.value.retry_after_s >= 60
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
        # the initial average job time
        assert gate.expected_wait_s() == pytest.approx(1.0, abs=0.1)
        second = asyncio.create_task(hold(gate, release, asyncio.Event()))
        await wait_for(lambda: gate.waiting == 1, "second request queued")
        assert gate.expected_wait_s() == pytest.approx(2.0, abs=0.1)
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


# --- size-aware estimates (no job has run yet) and fairness between keys ----------------------


def test_the_opening_burst_is_admitted_by_the_size_of_its_jobs() -> None:
    """Before any job has completed, a minute of audio is estimated by the prior (0.3 s of
    engine time per second, 1 s overhead: 19 s), not by a 1 s guess: with one such job running
    and one queued, a third would wait 38 s, over the 30 s bound, and is refused at once with
    a Retry-After of what it is over by. (With the 1 s guess, all 16 queue places filled.)"""

    async def scenario() -> None:
        gate = EngineGate(
            "faster-whisper", workers=1, queue_size=16, max_wait_s=30, cost=CostModel(0.3, 1.0)
        )
        assert gate.estimate_s(60) == pytest.approx(19.0)
        release, running = asyncio.Event(), asyncio.Event()
        first = asyncio.create_task(hold(gate, release, running, units=60))
        await running.wait()
        second = asyncio.create_task(hold(gate, release, asyncio.Event(), units=60))
        await wait_for(lambda: gate.waiting == 1, "second request queued")
        assert gate.expected_wait_s() == pytest.approx(38.0, abs=0.5)
        with pytest.raises(Overloaded) as refused:
            async with gate.slot(60):
                pytest.fail("admitted past the bound")
        assert refused.value.retry_after_s in (8, 9)  # 38 s expected - 30 s allowed
        with pytest.raises(Overloaded):  # the wait is the work ahead, whatever the job's size
            async with gate.slot(5):
                pytest.fail("admitted past the bound")
        assert gate.retry_after_s() == 38  # the whole backlog
        release.set()
        await asyncio.wait_for(asyncio.gather(first, second), SAFETY_S)

    asyncio.run(scenario())


def test_the_cost_model_follows_completed_jobs() -> None:
    """Each completed job moves the per-unit time a fifth of the way to what it measured (its
    time less the overhead, over its units); a job cut short teaches nothing."""
    model = CostModel(per_unit_s=0.3, overhead_s=1.0)
    model.learn(100, 1.0 + 100 * 0.05)  # 0.05 s per second of audio, measured
    assert model.per_unit_s == pytest.approx(0.8 * 0.3 + 0.2 * 0.05)
    for _ in range(30):
        model.learn(100, 6.0)
    assert model.per_unit_s == pytest.approx(0.05, abs=0.001)
    assert model.estimate_s(60) == pytest.approx(4.0, abs=0.1)

    async def cut_short() -> None:
        gate = EngineGate("piper", workers=1, queue_size=1, cost=CostModel(0.01, 0.2))
        with pytest.raises(RuntimeError):
            async with gate.slot(1000):
                raise RuntimeError("the client left")
        assert gate.cost is not None and gate.cost.per_unit_s == 0.01

    asyncio.run(cut_short())


def test_one_key_flooding_the_queue_does_not_starve_another() -> None:
    """Key A runs one job and queues ten more; key B then queues one. B's job runs next, not
    eleventh: A's queued jobs are tagged one after another in virtual time, B's at the current
    virtual time."""

    async def scenario() -> None:
        gate = EngineGate("piper", workers=1, queue_size=16, cost=CostModel(0.01, 0.2))
        order: list[str] = []
        releases: list[asyncio.Event] = []

        async def job(party: str) -> None:
            release = asyncio.Event()
            releases.append(release)
            async with gate.slot(100, party=party):
                order.append(party)
                await release.wait()

        tasks = [asyncio.create_task(job("A"))]
        await wait_for(lambda: gate.running == 1, "A's first job runs")
        tasks += [asyncio.create_task(job("A")) for _ in range(10)]
        await wait_for(lambda: gate.waiting == 10, "A's ten jobs queued")
        # B's wait is the running job's rest only; A's next job would wait behind all of A's.
        assert gate.expected_wait_s("B") < gate.expected_wait_s("A") / 5
        tasks.append(asyncio.create_task(job("B")))
        await wait_for(lambda: gate.waiting == 11, "B's job queued")
        for release in releases:
            release.set()
        await asyncio.wait_for(asyncio.gather(*tasks), SAFETY_S)
        assert order.index("B") == 1, order

    asyncio.run(scenario())


def test_a_queue_full_of_one_key_still_takes_another_keys_job() -> None:
    """queue_size 2, both places taken by key A: A's next job is refused (at capacity), key
    B's first is queued, and runs before A's second."""

    async def scenario() -> None:
        gate = EngineGate("piper", workers=1, queue_size=2)
        release = asyncio.Event()
        tasks = [asyncio.create_task(hold(gate, release, asyncio.Event(), party="A"))]
        await wait_for(lambda: gate.running == 1, "A's first job runs")
        tasks += [
            asyncio.create_task(hold(gate, release, asyncio.Event(), party="A")) for _ in range(2)
        ]
        await wait_for(lambda: gate.waiting == 2, "the queue is full")
        with pytest.raises(Overloaded) as full:
            async with gate.slot(party="A"):
                pytest.fail("A past the queue bound")
        assert "at capacity" in full.value.message
        b_runs = asyncio.Event()
        tasks.append(asyncio.create_task(hold(gate, release, b_runs, party="B")))
        await wait_for(lambda: gate.waiting == 3, "B's job queued")
        release.set()
        await asyncio.wait_for(asyncio.gather(*tasks), SAFETY_S)
        assert (gate.running, gate.waiting) == (0, 0)

    asyncio.run(scenario())


def test_a_worker_handed_to_a_waiter_cancelled_in_the_same_instant_is_passed_on() -> None:
    """The running job ends (handing its worker to the first waiter) and that waiter is
    cancelled before it resumes: the worker goes on to the next waiter, none is lost."""

    async def scenario() -> None:
        gate = EngineGate("piper", workers=1, queue_size=16)
        first = gate.slot()
        await first.__aenter__()
        doomed = asyncio.create_task(hold(gate, asyncio.Event(), asyncio.Event()))
        await wait_for(lambda: gate.waiting == 1, "the doomed waiter queued")
        third_runs = asyncio.Event()
        third = asyncio.create_task(hold(gate, asyncio.Event(), third_runs))
        await wait_for(lambda: gate.waiting == 2, "the third waiter queued")
        # The first job ends: its worker is handed to the doomed waiter, and this task goes on
        # without yielding, so the doomed one has not resumed when it is cancelled.
        await first.__aexit__(None, None, None)
        assert (gate.running, gate.waiting) == (0, 1)
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        await asyncio.wait_for(third_runs.wait(), SAFETY_S)
        assert (gate.running, gate.waiting) == (1, 0)
        third.cancel()
        with pytest.raises(asyncio.CancelledError):
            await third
        assert (gate.running, gate.waiting) == (0, 0)

    asyncio.run(scenario())


def test_a_running_job_slower_than_its_size_allowed_re_estimates_the_queue() -> None:
    """At t = 0 nothing has been measured: a 10 s clip is estimated at the prior (4 s). Once
    the running one has taken 40 s, the engine is shown to need 3.9 s per second of audio, and
    the queued clip is re-estimated at that speed (40 s), so a newcomer expects 36 s (the
    running job's overrun, as long again) + 40 s and is refused."""

    async def scenario() -> None:
        gate = EngineGate(
            "faster-whisper", workers=1, queue_size=16, max_wait_s=30, cost=CostModel(0.3, 1.0)
        )
        release, running = asyncio.Event(), asyncio.Event()
        first = asyncio.create_task(hold(gate, release, running, units=10))
        await running.wait()
        second = asyncio.create_task(hold(gate, release, asyncio.Event(), units=10))
        await wait_for(lambda: gate.waiting == 1, "second request queued")
        assert gate.expected_wait_s() == pytest.approx(8.0, abs=0.5)
        (job,) = gate._jobs
        job.started -= 40
        assert gate.expected_wait_s() == pytest.approx(76.0, abs=0.5)
        with pytest.raises(Overloaded):
            async with gate.slot(10):
                pytest.fail("admitted behind work the engine has fallen behind on")
        release.set()
        await asyncio.wait_for(asyncio.gather(first, second), SAFETY_S)

    asyncio.run(scenario())


def test_a_queued_job_that_can_no_longer_start_in_time_is_shed_before_its_timeout() -> None:
    """A job admitted on the prior, queued with an hour's queue timeout: once the running job
    shows that the work ahead will outlast the timeout, the queued one gets its 503 at the
    next re-check (every second), not after an hour, with a Retry-After of that work."""

    async def scenario() -> None:
        gate = EngineGate(
            "faster-whisper",
            workers=1,
            queue_size=16,
            queue_timeout_s=3600,
            cost=CostModel(0.3, 1.0),
        )
        release, running = asyncio.Event(), asyncio.Event()
        first = asyncio.create_task(hold(gate, release, running, units=10))
        await running.wait()
        queued = asyncio.create_task(hold(gate, release, asyncio.Event(), units=10))
        await wait_for(lambda: gate.waiting == 1, "queued")
        (job,) = gate._jobs
        job.started -= 4000  # 3996 s over its estimate: the queued job cannot start in time
        with pytest.raises(Overloaded) as shed:
            await asyncio.wait_for(queued, SAFETY_S)
        assert "VOXGATE_ENGINE_QUEUE_TIMEOUT_S" in shed.value.message
        assert shed.value.retry_after_s is not None and shed.value.retry_after_s >= 3900
        assert (gate.running, gate.waiting) == (1, 0)
        release.set()
        await asyncio.wait_for(first, SAFETY_S)

    asyncio.run(scenario())
