"""Keep blocking engine work off the event loop, bound it, and stop it when nobody listens.

* ``run_in_thread`` runs one blocking call in a worker thread.
* ``iterate_in_thread`` drives a blocking generator (Whisper segments, Piper sentences) in a
  worker thread and hands each item to the event loop as soon as it exists. Closing or
  cancelling the consumer stops the generator at its next item, so a client that disconnects
  stops the inference instead of leaving it to run to the end.
* ``EngineGate`` is per-engine admission control: a fixed number of running jobs plus a bounded
  queue. A full queue, or an expected wait over the limit, is refused at once with 503 and a
  Retry-After estimated from recent job times; waits and each job's engine time are bounded.
* ``cancel_on_disconnect`` stops waiting (in the queue, or for the engine) when the client
  leaves, so an abandoned request never runs and gives back what it reserved at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from contextlib import asynccontextmanager
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


async def run_in_engine_thread(fn: Callable[[], T], *, niceness: int = ENGINE_NICENESS) -> T:
    """Run ``fn`` in a new low-priority thread (see ``lower_thread_priority``)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if not future.done():
            if error is None:
                future.set_result(cast(T, result))
            else:
                future.set_exception(error)

    def run() -> None:
        lower_thread_priority(niceness)
        try:
            result = fn()
        except BaseException as exc:
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name="voxgate-engine", daemon=True).start()
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


class EngineGate:
    """At most ``workers`` jobs run; the rest wait in a bounded queue, or get 503 at once.

    A request is refused at once (503 + Retry-After) when the queue is full or when its expected
    wait (jobs ahead / workers x the recent average job time) exceeds ``max_wait_s``. One that
    was admitted gives up after ``queue_timeout_s`` in the queue, and a job that runs longer than
    ``job_timeout_s`` is stopped (see ``JobDeadline``). Waiting is first come, first served;
    these bounds are what keep a short request from waiting behind long ones for minutes.
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
    ) -> None:
        self.name = name
        self.workers = workers
        self.queue_size = queue_size
        self.max_wait_s = max_wait_s
        self.queue_timeout_s = queue_timeout_s
        self.job_timeout_s = job_timeout_s
        self._semaphore = asyncio.Semaphore(workers)
        self._running = 0
        self._waiting = 0
        self._avg_job_s = 1.0
        self._started: dict[object, float] = {}  # running job → time.monotonic() it began
        metrics.set_queue_depth(name, 0)

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return self._waiting

    def retry_after_s(self) -> int:
        backlog = (self._waiting + self._running) / self.workers
        return max(1, round(backlog * self.job_estimate_s()))

    def expected_wait_s(self) -> float:
        """How long a request arriving now would wait for a worker, from recent job times."""
        ahead = self._waiting + self._running - self.workers + 1
        return max(0.0, ahead / self.workers * self.job_estimate_s())

    def job_estimate_s(self) -> float:
        """How long a job takes: the recent average, or longer while the oldest running job has
        already run longer. Just after start-up the average knows only the warm-up (a burst
        would be admitted against a 1 s guess), and a job that has run 12 s takes at least 12 s.
        """
        now = time.monotonic()
        return max([self._avg_job_s, *(now - started for started in self._started.values())])

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[JobDeadline | None]:
        """Wait for a worker (cancellable, bounded) and hold it for the body.

        Yields the job's deadline (None without ``job_timeout_s``); pass it to
        ``iterate_in_thread`` so the engine stops when it passes. The worker is given back as
        soon as the body exits, whichever way it exits.
        """
        self._admit()
        self._waiting += 1
        metrics.set_queue_depth(self.name, self._waiting)
        queued_at = time.monotonic()
        try:
            with anyio.move_on_after(self.queue_timeout_s) as waited:
                await self._semaphore.acquire()
        finally:
            self._waiting -= 1
            metrics.set_queue_depth(self.name, self._waiting)
            metrics.observe_queue_wait(self.name, time.monotonic() - queued_at)
        if waited.cancelled_caught:
            raise Overloaded(
                f"The {self.name} engine is busy: this request waited {self.queue_timeout_s:g} s "
                "in its queue (VOXGATE_ENGINE_QUEUE_TIMEOUT_S). Retry after the suggested delay.",
                retry_after_s=self.retry_after_s(),
            )
        self._running += 1
        started = time.monotonic()
        job = object()
        self._started[job] = started
        deadline = None
        if self.job_timeout_s is not None:
            deadline = JobDeadline(self.name, self.job_timeout_s, started + self.job_timeout_s)
        try:
            yield deadline
        finally:
            self._running -= 1
            del self._started[job]
            self._semaphore.release()
            self._avg_job_s = 0.8 * self._avg_job_s + 0.2 * (time.monotonic() - started)

    def _admit(self) -> None:
        """Refuse at once what the queue cannot hold or cannot serve within ``max_wait_s``."""
        if self._running >= self.workers and self._waiting >= self.queue_size:
            raise Overloaded(
                f"The {self.name} engine is at capacity ({self._running} running, "
                f"{self._waiting} queued). Retry after the suggested delay.",
                retry_after_s=self.retry_after_s(),
            )
        expected = self.expected_wait_s()
        if self.max_wait_s is not None and expected > self.max_wait_s:
            raise Overloaded(
                f"The {self.name} engine is busy: the expected wait of {expected:.0f} s exceeds "
                f"this server's limit of {self.max_wait_s:g} s (VOXGATE_ENGINE_MAX_WAIT_S). "
                "Retry after the suggested delay.",
                retry_after_s=max(1, math.ceil(expected - self.max_wait_s)),
            )


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
