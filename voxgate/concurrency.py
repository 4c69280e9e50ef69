"""Keep blocking engine work off the event loop, bound it, and stop it when nobody listens.

* ``run_in_thread`` runs one blocking call in a worker thread.
* ``iterate_in_thread`` drives a blocking generator (Whisper segments, Piper sentences) in a
  worker thread and hands each item to the event loop as soon as it exists. Closing or
  cancelling the consumer stops the generator at its next item, so a client that disconnects
  stops the inference instead of leaving it to run to the end.
* ``EngineGate`` is per-engine admission control: a fixed number of running jobs plus a bounded
  queue, fair between keys. A full queue, or an expected wait over the limit, is refused at
  once with 503 and a Retry-After estimated from the queued jobs' sizes and the engine's
  measured speed; waits and each job's engine time are bounded.
* ``cancel_on_disconnect`` stops waiting (in the queue, or for the engine) when the client
  leaves, so an abandoned request never runs and gives back what it reserved at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import math
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import anyio
import anyio.to_thread

from voxgate import metrics
from voxgate.errors import Overloaded

T = TypeVar("T")

_DONE = object()


async def run_in_thread(fn: Callable[..., T], *args: object) -> T:
    return await anyio.to_thread.run_sync(fn, *args)


ENGINE_NICENESS = 10
#: Speech engines run between the event loop (0) and Whisper (10). A listener waits for the
#: first sentence, a transcription is throughput work: at equal priority, a paragraph's first
#: sentence shared both cores with Whisper's OpenMP threads and came 2-3x later than Piper's
#: own; at 5 against 10 the scheduler gives speech three quarters of a contested core (CFS
#: weights 335:110), and the event loop still three quarters against speech.
SPEECH_NICENESS = 5


def lower_thread_priority(niceness: int = ENGINE_NICENESS) -> None:
    """Give the calling thread (and the threads it starts) a lower CPU priority.

    Engine work keeps both cores busy; at equal priority the event loop waits its turn behind
    it, and /health took 100+ ms. Threads that an engine library starts (onnxruntime's and
    CTranslate2's pools) inherit this, which is why engines load and run in such threads. Only
    ever raised, never lowered back (that needs privileges), so use it in dedicated threads.
    """
    with contextlib.suppress(AttributeError, OSError):  # per-thread nice is Linux-only
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)


class _EngineThreads:
    """Daemon threads at one niceness, kept and reused. Starting a thread makes the caller wait
    until the new thread has been scheduled and has run (``Thread.start``): on the event loop,
    once per engine job, that was up to 4 % of the loop's time under a load run, stalling every
    request meanwhile on a machine with more runnable threads than cores. A job claims an idle
    thread, or starts one only when all are busy, so after the first jobs none is started."""

    def __init__(self, niceness: int) -> None:
        self.niceness = niceness
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._idle = 0
        self._lock = threading.Lock()

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job`` (which must not raise) in one of the threads."""
        with self._lock:
            start = self._idle == 0
            if not start:
                self._idle -= 1
        self._jobs.put(job)
        if start:
            threading.Thread(target=self._work, name="voxgate-engine", daemon=True).start()

    def _work(self) -> None:
        lower_thread_priority(self.niceness)
        while True:
            self._jobs.get()()
            with self._lock:
                self._idle += 1


_ENGINE_THREADS: dict[int, _EngineThreads] = {}


async def run_in_engine_thread(fn: Callable[[], T], *, niceness: int = ENGINE_NICENESS) -> T:
    """Run ``fn`` in a low-priority engine thread (see ``lower_thread_priority``)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if not future.done():
            if error is None:
                future.set_result(cast(T, result))
            else:
                future.set_exception(error)

    def run() -> None:
        try:
            result = fn()
        except BaseException as exc:
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threads = _ENGINE_THREADS.get(niceness)
    if threads is None:
        threads = _ENGINE_THREADS[niceness] = _EngineThreads(niceness)
    threads.submit(run)
    with anyio.CancelScope(shield=True):  # the thread cannot be interrupted: wait for it
        result = await future
    return result


async def iterate_in_thread(
    make_iterator: Callable[[], Iterator[T]],
    *,
    buffer: int = 4,
    deadline: JobDeadline | None = None,
    niceness: int = ENGINE_NICENESS,
) -> AsyncIterator[T]:
    """Yield the items of a blocking iterator produced in a worker thread.

    At most ``buffer`` items wait unconsumed, so a slow client slows the engine down rather than
    letting memory grow. Exceptions raised in the thread are re-raised here. Once ``deadline``
    has passed, the thread stops before its next item and ``deadline.error()`` is raised. The
    thread runs at ``niceness`` (``SPEECH_NICENESS`` for the speech engines).
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=buffer)
    stop = threading.Event()

    def put(item: object) -> bool:
        future = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
        while True:
            try:
                future.result(timeout=0.1)
                return True
            except TimeoutError:
                if stop.is_set():
                    future.cancel()
                    return False

    def produce() -> None:
        try:
            for item in make_iterator():
                if deadline is not None and deadline.expired():
                    put(deadline.error())
                    return
                if stop.is_set() or not put(item):
                    return
        except BaseException as exc:  # re-raised in the consumer
            put(exc)
            return
        put(_DONE)

    worker = asyncio.ensure_future(run_in_engine_thread(produce, niceness=niceness))
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            if deadline is not None and deadline.expired():
                raise deadline.error()
            yield cast(T, item)
    finally:
        stop.set()
        # The worker finishes its current item, sees the flag and returns. Wait for it, even when
        # cancelled, so that an engine slot is only freed once its thread is really idle.
        with anyio.CancelScope(shield=True):
            await worker


@dataclass(frozen=True)
class JobDeadline:
    """When one engine job must stop: checked between items, so the thread stops at its next
    sentence or segment rather than running on for minutes."""

    engine: str
    limit_s: float
    at: float  # time.monotonic()

    def expired(self) -> bool:
        return time.monotonic() >= self.at

    def with_audio(self, seconds: float) -> JobDeadline:
        """This deadline moved on by ``seconds``: a transcription may take the limit plus the
        audio's own length, so an hour-long recording is not cut off by a limit meant for
        stuck jobs (Whisper runs faster than real time on any machine that can serve it)."""
        return dataclasses.replace(self, limit_s=self.limit_s + seconds, at=self.at + seconds)

    def error(self) -> Overloaded:
        return Overloaded(
            f"The {self.engine} job ran longer than this server's limit of {self.limit_s:g} s "
            "of engine time (VOXGATE_ENGINE_JOB_TIMEOUT_S, plus the audio's length for a "
            "transcription) and was stopped. Send a shorter "
            "input, or retry when the server is less busy.",
            code="engine_timeout",
            retry_after_s=max(1, math.ceil(self.limit_s)),
        )


#: On whose behalf engine work is queued: the caller's key id (``anonymous`` without one), set
#: by the gateway once it knows the caller. The engine queue takes turns between parties by it.
QUEUE_PARTY: ContextVar[str] = ContextVar("voxgate_queue_party", default="anonymous")


@dataclass
class CostModel:
    """How many engine seconds a job of ``units`` takes (seconds of audio for Whisper, characters
    for speech): ``overhead_s`` plus ``units`` x ``per_unit_s``. ``per_unit_s`` starts at a prior
    set for a busy machine, so the opening burst is admitted against a pessimistic estimate
    rather than a guess of 1 s a job, and follows the jobs that complete from then on."""

    per_unit_s: float
    overhead_s: float

    def estimate_s(self, units: float) -> float:
        return self.overhead_s + units * self.per_unit_s

    def learn(self, units: float, elapsed_s: float) -> None:
        if units > 0:
            observed = max(0.0, elapsed_s - self.overhead_s) / units
            self.per_unit_s = 0.8 * self.per_unit_s + 0.2 * observed


#: How often a queued request re-checks whether it can still start within its queue timeout.
RECHECK_S = 1.0


@dataclass(eq=False)
class _Waiter:
    party: str
    units: float | None
    cost_s: float  # estimated when it arrived (its tag's increment)
    tag: float  # virtual start time: the queue serves the lowest first
    seq: int  # arrival order, between equal tags
    granted: asyncio.Future[None]


@dataclass(eq=False)
class _Job:
    units: float | None
    cost_s: float  # estimated when it started
    started: float  # time.monotonic()

    def remaining_s(self, now: float) -> float:
        """Its estimate less the time it has run; a job past its estimate is expected to run
        as long again as it has overrun (a job that has run 100 s on a 1 s guess is no
        1 s job)."""
        elapsed = now - self.started
        return self.cost_s - elapsed if elapsed < self.cost_s else elapsed - self.cost_s


class EngineGate:
    """At most ``workers`` jobs run; the rest wait in a bounded, fair queue, or get 503 at once.

    Each job is estimated by its size (``CostModel``: audio seconds from the upload's header,
    characters of speech) or, without one, by the recent average job time. A request is refused
    at once (503 + Retry-After) when the queue is full or when its expected wait (the estimated
    engine time of the running jobs' rest and of the queued jobs served before it, over
    ``workers``) exceeds ``max_wait_s``. Queued jobs are estimated at the engine's current
    speed: a running job that has taken longer than its size allowed shows the engine slower
    than measured so far (the machine may be loaded), and every queued job of known size is
    re-estimated at that speed. One that was admitted gives up after ``queue_timeout_s`` in
    the queue, or as soon as it is expected to (re-checked every ``RECHECK_S``), so its client
    hears 503 instead of waiting for nothing; a job that runs longer than ``job_timeout_s`` is
    stopped (see ``JobDeadline``).

    The queue is start-time fair queueing between parties (``QUEUE_PARTY``, the caller's key):
    a job's tag is the later of the virtual time (the tag of the last job started) and its
    party's previous job's tag plus that job's cost, and the lowest tag runs next. A key that
    floods the queue gets tags far ahead; another key's job gets the current virtual time and
    runs next, and equal keys share the engine in proportion to estimated cost, not job count.
    A party with nothing queued may still queue one job when the queue is full (up to twice
    ``queue_size`` in all; none when it is 0), so a full queue of one key's jobs does not
    refuse another key outright (the expected-wait bound still applies).
    """

    def __init__(
        self,
        name: str,
        *,
        workers: int,
        queue_size: int,
        max_wait_s: float | None = None,
        queue_timeout_s: float | None = None,
        job_timeout_s: float | None = None,
        cost: CostModel | None = None,
    ) -> None:
        self.name = name
        self.workers = workers
        self.queue_size = queue_size
        self.max_wait_s = max_wait_s
        self.queue_timeout_s = queue_timeout_s
        self.job_timeout_s = job_timeout_s
        self.cost = cost
        self._free = workers
        self._queue: list[_Waiter] = []
        self._queued_by: Counter[str] = Counter()
        self._jobs: set[_Job] = set()
        self._virtual = 0.0
        self._next_tag: dict[str, float] = {}  # party → the tag its next job gets at the earliest
        self._arrivals = itertools.count()
        self._avg_job_s = 1.0  # jobs of no known size
        metrics.set_queue_depth(name, 0)

    @property
    def running(self) -> int:
        return len(self._jobs)

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def estimate_s(self, units: float | None) -> float:
        """Engine seconds a job of ``units`` is expected to take."""
        if units is None or self.cost is None:
            return self._avg_job_s
        return self.cost.estimate_s(units)

    def retry_after_s(self) -> int:
        """When the whole backlog (running and queued) should have drained."""
        return max(1, math.ceil(self._backlog_s((math.inf, 0)) / self.workers))

    def expected_wait_s(self, party: str | None = None) -> float:
        """How long a job of ``party`` (default: the current one) arriving now would wait."""
        return self._wait_s((self._tag(party or QUEUE_PARTY.get()), math.inf))

    @asynccontextmanager
    async def slot(
        self, units: float | None = None, *, party: str | None = None
    ) -> AsyncIterator[JobDeadline | None]:
        """Wait for a worker (cancellable, bounded) and hold it for the body.

        ``units`` is the job's size for the cost model (None: unknown), ``party`` whose turn it
        is (default ``QUEUE_PARTY``). Yields the job's deadline (None without
        ``job_timeout_s``); pass it to ``iterate_in_thread`` so the engine stops when it
        passes. The worker is given back as soon as the body exits, whichever way it exits.
        """
        party = party or QUEUE_PARTY.get()
        tag = self._tag(party)
        self._admit(party, tag)
        cost_s = self.estimate_s(units)
        granted = asyncio.get_running_loop().create_future()
        waiter = _Waiter(party, units, cost_s, tag, next(self._arrivals), granted)
        self._next_tag[party] = tag + cost_s
        self._enqueue(waiter)
        queued_at = time.monotonic()
        try:
            await self._wait_turn(waiter, queued_at)
        except BaseException:
            self._leave(waiter)
            raise
        finally:
            metrics.observe_queue_wait(self.name, time.monotonic() - queued_at)
        job = _Job(units, self.estimate_s(units), time.monotonic())
        self._jobs.add(job)
        deadline = None
        if self.job_timeout_s is not None:
            deadline = JobDeadline(self.name, self.job_timeout_s, job.started + self.job_timeout_s)
        completed = False
        try:
            yield deadline
            completed = True
        finally:
            self._jobs.discard(job)
            self._free += 1
            self._dispatch()
            elapsed = time.monotonic() - job.started
            if units is None or self.cost is None:
                self._avg_job_s = 0.8 * self._avg_job_s + 0.2 * elapsed
            elif completed:  # a job cut short (client gone, error) says little about its rate
                self.cost.learn(units, elapsed)

    async def _wait_turn(self, waiter: _Waiter, queued_at: float) -> None:
        """Until ``waiter`` is handed a worker; Overloaded once it has waited
        ``queue_timeout_s``, or once the work ahead of it is expected to take longer than that
        (a job admitted on an estimate the engine has since fallen behind)."""
        timeout_s = math.inf if self.queue_timeout_s is None else self.queue_timeout_s
        while not waiter.granted.done():
            waited_s = time.monotonic() - queued_at
            if waited_s >= timeout_s:
                raise Overloaded(
                    f"The {self.name} engine is busy: this request waited {timeout_s:g} s in "
                    "its queue (VOXGATE_ENGINE_QUEUE_TIMEOUT_S). Retry after the suggested "
                    "delay.",
                    retry_after_s=self.retry_after_s(),
                )
            ahead_s = self._wait_s((waiter.tag, waiter.seq))
            if waited_s + ahead_s > timeout_s:
                raise Overloaded(
                    f"The {self.name} engine is busy: this request would wait about "
                    f"{waited_s + ahead_s:.0f} s in its queue, longer than this server's limit "
                    f"of {timeout_s:g} s (VOXGATE_ENGINE_QUEUE_TIMEOUT_S). Retry after the "
                    "suggested delay.",
                    retry_after_s=max(1, math.ceil(ahead_s)),
                )
            await asyncio.wait([waiter.granted], timeout=min(RECHECK_S, timeout_s - waited_s))

    def _tag(self, party: str) -> float:
        return max(self._virtual, self._next_tag.get(party, 0.0))

    def _per_unit_s(self, now: float) -> float:
        """The engine's time per unit now: as measured, or slower if a running job shows it
        (one that has run longer than its size allowed at the measured speed)."""
        assert self.cost is not None
        shown = [
            (now - job.started - self.cost.overhead_s) / job.units
            for job in self._jobs
            if job.units
        ]
        return max([self.cost.per_unit_s, *shown])

    def _backlog_s(self, before: tuple[float, float]) -> float:
        """Estimated engine time of the running jobs' rest and of the queued jobs that are
        served before the place ``before`` (a tag and an arrival number)."""
        now = time.monotonic()
        running = sum(job.remaining_s(now) for job in self._jobs)
        ahead = [w for w in self._queue if (w.tag, w.seq) < before]
        if self.cost is None:
            return running + sum(w.cost_s for w in ahead)
        per_unit_s = self._per_unit_s(now)
        queued = sum(
            w.cost_s if w.units is None else self.cost.overhead_s + w.units * per_unit_s
            for w in ahead
        )
        return running + queued

    def _wait_s(self, before: tuple[float, float]) -> float:
        if self._free > 0 and not self._queue:
            return 0.0
        return self._backlog_s(before) / self.workers

    def _admit(self, party: str, tag: float) -> None:
        """Refuse at once what the queue cannot hold or cannot serve within ``max_wait_s``."""
        full = self._free == 0 and self.waiting >= self.queue_size
        # Past a full queue, a key with nothing queued still gets one place, up to twice the
        # queue's size in all: the bound stays hard, and a size of 0 still queues nothing.
        if full and (
            self._queued_by[party] or self.waiting >= 2 * self.queue_size or not self.queue_size
        ):
            raise Overloaded(
                f"The {self.name} engine is at capacity ({self.running} running, "
                f"{self.waiting} queued). Retry after the suggested delay.",
                retry_after_s=self.retry_after_s(),
            )
        expected = self._wait_s((tag, math.inf))
        if self.max_wait_s is not None and expected > self.max_wait_s:
            raise Overloaded(
                f"The {self.name} engine is busy: the expected wait of {expected:.0f} s exceeds "
                f"this server's limit of {self.max_wait_s:g} s (VOXGATE_ENGINE_MAX_WAIT_S). "
                "Retry after the suggested delay.",
                retry_after_s=max(1, math.ceil(expected - self.max_wait_s)),
            )

    def _enqueue(self, waiter: _Waiter) -> None:
        self._queue.append(waiter)
        self._queued_by[waiter.party] += 1
        self._dispatch()
        metrics.set_queue_depth(self.name, self.waiting)

    def _dispatch(self) -> None:
        """Hand free workers to the queued jobs with the lowest tags."""
        while self._free > 0 and self._queue:
            waiter = min(self._queue, key=lambda w: (w.tag, w.seq))
            self._remove(waiter)
            self._free -= 1
            self._virtual = max(self._virtual, waiter.tag)
            waiter.granted.set_result(None)
        # Parties whose next tag the virtual time has passed start from it anyway.
        for party in [p for p, t in self._next_tag.items() if t <= self._virtual]:
            del self._next_tag[party]
        metrics.set_queue_depth(self.name, self.waiting)

    def _remove(self, waiter: _Waiter) -> None:
        self._queue.remove(waiter)
        self._queued_by[waiter.party] -= 1
        if not self._queued_by[waiter.party]:
            del self._queued_by[waiter.party]

    def _leave(self, waiter: _Waiter) -> None:
        """A waiter gave up (timeout, cancel): out of the queue, or its worker given back if it
        was handed one in the same instant; its party's tag no longer counts its cost."""
        if waiter in self._queue:
            self._remove(waiter)
            if self._next_tag.get(waiter.party) == waiter.tag + waiter.cost_s:
                self._next_tag[waiter.party] = waiter.tag
            metrics.set_queue_depth(self.name, self.waiting)
        elif waiter.granted.done() and not waiter.granted.cancelled():
            self._free += 1
            self._dispatch()


class ClientDisconnected(Exception):
    """The client went away before the response was ready."""


async def cancel_on_disconnect(
    receive: Callable[[], Awaitable[MutableMapping[str, Any]]], work: Awaitable[T]
) -> T:
    """Await ``work`` but cancel it as soon as the ASGI ``receive`` reports a disconnect.

    Only for use once the request body has been read: from then on ``receive`` only ever
    returns ``http.disconnect``.
    """
    result: list[T] = []
    errors: list[Exception] = []

    async def watch(scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    async def run(scope: anyio.CancelScope) -> None:
        try:
            result.append(await work)
        except Exception as exc:  # raised below as itself, not wrapped in an ExceptionGroup
            errors.append(exc)
        scope.cancel()

    async with anyio.create_task_group() as group:
        group.start_soon(watch, group.cancel_scope)
        group.start_soon(run, group.cancel_scope)
    if errors:
        raise errors[0]
    if not result:
        raise ClientDisconnected
    return result[0]
