"""Keep blocking engine work off the event loop, bound it, and stop it when nobody listens.

* ``run_in_thread`` runs one blocking call in a worker thread.
* ``iterate_in_thread`` drives a blocking generator (Whisper segments, Piper sentences) in a
  worker thread and hands each item to the event loop as soon as it exists. Closing or
  cancelling the consumer stops the generator at its next item, so a client that disconnects
  stops the inference instead of leaving it to run to the end.
* ``EngineGate`` is per-engine admission control: a fixed number of running jobs plus a bounded
  queue. A full queue is refused at once with 503 and a Retry-After estimated from recent job
  times, instead of growing latency without bound.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar, cast

import anyio
import anyio.to_thread

from voxgate.errors import Overloaded

T = TypeVar("T")

_DONE = object()


async def run_in_thread(fn: Callable[..., T], *args: object) -> T:
    return await anyio.to_thread.run_sync(fn, *args)


async def iterate_in_thread(
    make_iterator: Callable[[], Iterator[T]], *, buffer: int = 4
) -> AsyncIterator[T]:
    """Yield the items of a blocking iterator produced in a worker thread.

    At most ``buffer`` items wait unconsumed, so a slow client slows the engine down rather than
    letting memory grow. Exceptions raised in the thread are re-raised here.
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
                if stop.is_set() or not put(item):
                    return
        except BaseException as exc:  # re-raised in the consumer
            put(exc)
            return
        put(_DONE)

    worker = loop.run_in_executor(None, produce)
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            yield cast(T, item)
    finally:
        stop.set()
        # The worker finishes its current item, sees the flag and returns. Wait for it, even when
        # cancelled, so that an engine slot is only freed once its thread is really idle.
        with anyio.CancelScope(shield=True):
            await worker


class EngineGate:
    """At most ``workers`` jobs run; at most ``queue_size`` wait; the rest get 503."""

    def __init__(self, name: str, *, workers: int, queue_size: int) -> None:
        self.name = name
        self.workers = workers
        self.queue_size = queue_size
        self._semaphore = asyncio.Semaphore(workers)
        self._running = 0
        self._waiting = 0
        self._avg_job_s = 1.0

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return self._waiting

    def retry_after_s(self) -> int:
        backlog = (self._waiting + self._running) / self.workers
        return max(1, round(backlog * self._avg_job_s))

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._running >= self.workers and self._waiting >= self.queue_size:
            raise Overloaded(
                f"The {self.name} engine is at capacity ({self._running} running, "
                f"{self._waiting} queued). Retry after the suggested delay.",
                retry_after_s=self.retry_after_s(),
            )
        self._waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            self._waiting -= 1
        self._running += 1
        started = time.monotonic()
        try:
            yield
        finally:
            self._running -= 1
            self._semaphore.release()
            self._avg_job_s = 0.8 * self._avg_job_s + 0.2 * (time.monotonic() - started)


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

    async def watch(scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    async def run(scope: anyio.CancelScope) -> None:
        result.append(await work)
        scope.cancel()

    async with anyio.create_task_group() as group:
        group.start_soon(watch, group.cancel_scope)
        group.start_soon(run, group.cancel_scope)
    if not result:
        raise ClientDisconnected
    return result[0]
