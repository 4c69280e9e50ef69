"""Metering one request: admission, reservation, delivery, settlement.

A request's ``Ticket`` goes through, in order:

1. ``Meter.admit`` (before the body is read): one request from the key's requests-per-minute
   bucket; then ``Ticket.take_slot`` (once the whole body has arrived, before any work on it):
   a concurrency slot, so a slow upload holds none.
2. ``Ticket.authorize``: the model must be on the key's allowlist (403 otherwise).
3. ``Ticket.reserve`` (once the units are known: decoded audio seconds, input characters): the
   cost held against the key's budget with a pending ledger row, then the audio-seconds or
   characters-per-minute bucket.
4. ``Ticket.deliver`` while a stream is being sent: how much of the work reached the client.
5. ``Ticket.finish`` (exactly once, after the response ended or failed): the row is settled.
   A complete 2xx response is billed in full; a client that went away mid-stream, or a request
   cancelled at shutdown, is billed for what it received; a failed or refused request costs
   nothing. If the database is down the settle is journaled and lands when it is back.

Units come only from what the server itself decoded or was asked to say, never from the
response format, ``stream`` or an upstream's report, so they cannot be dodged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Literal

from voxgate.catalog import CatalogEntry, Endpoint, Pricing
from voxgate.errors import DatabaseUnavailable, InsufficientQuota, PermissionDenied, VoxgateError
from voxgate.metrics import observe_usage
from voxgate.money import micros_to_usd, usd_to_micros
from voxgate.services.keys import Caller
from voxgate.services.limits import WINDOW_S, Charge, Limiter, RateState, refusal
from voxgate.storage.keys import KeyStore
from voxgate.storage.usage import Entry, Ledger, Usage

log = logging.getLogger("voxgate.metering")

Outcome = Literal["completed", "disconnected", "cancelled", "failed"]
_REFUSALS = (403, 429)  # statuses recorded as "rejected": refused by policy, not failed
HEARTBEAT_S = 10
STALE_AFTER_S = 60


def cost_micros(pricing: Pricing, *, audio_seconds: float = 0.0, characters: int = 0) -> int:
    """What the catalog charges for these units, rounded to the micro-USD."""
    if audio_seconds <= 0 and characters <= 0:
        return 0
    usd = (
        (pricing.per_second or 0.0) * audio_seconds
        + (pricing.input or 0.0) * characters / 1_000_000
        + (pricing.per_request or 0.0)
    )
    return usd_to_micros(usd)


@dataclass(eq=False)
class Ticket:
    meter: Meter
    caller: Caller
    endpoint: Endpoint
    request_id: str
    created_at: int = field(default_factory=lambda: int(time.time()))
    started: float = field(default_factory=time.monotonic)
    entry: CatalogEntry | None = None
    rates: list[RateState] = field(default_factory=list)
    reserved: Usage | None = None
    maybe_reserved_micros: int = 0  # a reservation that failed in a way it may have committed
    delivered_audio_s: float = 0.0
    delivered_characters: int = 0
    output_audio_s: float = 0.0
    slot_held: bool = False
    finished: bool = False
    route: str | None = None  # the target serving it, once routed (``provider:model``)
    billed: Usage | None = None  # what the settled row charged (None: nothing was reserved)

    def headers(self) -> dict[str, str]:
        """``x-ratelimit-*`` for every limit this request was charged against."""
        headers: dict[str, str] = {}
        for state in self.rates:
            headers.update(state.headers())
        return headers

    def authorize(self, entry: CatalogEntry) -> None:
        """Refuse (403) a model outside the key's allowlist, before any work is done."""
        self.entry = entry
        key = self.caller.key
        if key is not None and not key.allows([entry.id, entry.model.id]):
            allowed = ", ".join(key.models or ())
            raise PermissionDenied(
                f"This API key may not use model '{entry.id}'. Allowed: {allowed}.",
                param="model",
                code="model_not_allowed",
            )

    async def reserve(self, *, audio_seconds: float = 0.0, characters: int = 0) -> None:
        """Hold this much work's cost against the budget, then charge the unit rate limit.

        Raises InsufficientQuota or RateLimited (both 429). The budget comes first so that a
        request it refuses uses up none of the key's per-minute allowance; a request the rate
        limit refuses has its reservation released when the ticket finishes.
        """
        assert self.entry is not None, "authorize() first"
        key = self.caller.key
        estimate = Usage(
            input_audio_ms=round(audio_seconds * 1000),
            input_characters=characters,
            cost_micros=cost_micros(
                self.entry.pricing, audio_seconds=audio_seconds, characters=characters
            ),
        )
        try:
            reserved = await self.meter.ledger.reserve(self._entry(), estimate)
        except Exception:
            self.maybe_reserved_micros = estimate.cost_micros  # it may have committed
            raise
        if not reserved:
            raise await self._quota_error(estimate.cost_micros)
        self.reserved = estimate
        if key is None:
            return
        if audio_seconds and key.limits.audio_seconds_per_minute:
            limit = Charge("audio-seconds", key.limits.audio_seconds_per_minute, audio_seconds)
        elif characters and key.limits.characters_per_minute:
            limit = Charge("characters", key.limits.characters_per_minute, characters)
        else:
            return
        self.rates += await self.meter.limiter.charge(key.id, [limit])

    async def audio_allowance(self, audio_seconds: float | None) -> float | None:
        """The seconds of audio this key can still pay for and fit in its audio-seconds bucket
        (None: no bound), so an upload is refused before it is decoded, not after.

        Raises InsufficientQuota or RateLimited (429) when it cannot afford ``audio_seconds``
        (what a header claims, or what was decoded so far) or, for None, any audio at all. A
        check, not a reservation: ``reserve`` on the decoded duration stays the exact one.
        """
        assert self.entry is not None, "authorize() first"
        key = self.caller.key
        if key is None:
            return None
        wanted = audio_seconds if audio_seconds is not None else 0.0
        bounds: list[float] = []
        budget_s = await self._affordable_audio_s()
        if budget_s is not None:
            if budget_s <= 0 or wanted > budget_s:
                raise await self._quota_error(
                    cost_micros(self.entry.pricing, audio_seconds=max(wanted, 0.001))
                )
            bounds.append(budget_s)
        if limit := key.limits.audio_seconds_per_minute:
            # A charge of nothing reads the bucket without changing what it holds.
            (state,) = await self.meter.limiter.charge(
                key.id, [Charge("audio-seconds", limit, 0.0)]
            )
            if state.remaining <= 0 or wanted > state.remaining:
                used = limit - state.remaining
                charge = Charge("audio-seconds", limit, max(wanted, 0.001))
                excess = used + charge.cost - limit
                wait_s = None if charge.cost > limit else excess * WINDOW_S / limit
                raise refusal(key.id, charge, used, wait_s)
            bounds.append(state.remaining)
        return min(bounds) if bounds else None

    async def _affordable_audio_s(self) -> float | None:
        """Seconds of this model's audio the key's remaining budget pays for (None: unbounded)."""
        assert self.entry is not None
        key = self.caller.key
        if key is None or key.bootstrap or key.budget_micros is None:
            return None  # no budget (as authenticated): nothing to read
        stored = await self.meter.keys.get(key.id)
        if stored is None or stored.budget_micros is None:
            return None
        left = stored.budget_micros - stored.spent_micros - stored.reserved_micros
        per_request = usd_to_micros(self.entry.pricing.per_request or 0.0)
        per_second = (self.entry.pricing.per_second or 0.0) * 1_000_000
        if per_second <= 0:
            return None if left >= per_request else 0.0
        # Half a micro-USD of slack for rounding: reserve() makes the exact decision.
        return (left - per_request + 0.5) / per_second

    async def _quota_error(self, cost: int) -> InsufficientQuota:
        """The refusal, with the key's budget as stored now (it may have changed since auth)."""
        key_id = self.caller.key_id or ""
        stored = await self.meter.keys.get(key_id)
        budget = stored.budget_micros if stored and stored.budget_micros is not None else 0
        held = stored.spent_micros + stored.reserved_micros if stored else 0
        return InsufficientQuota(
            f"You exceeded your current quota: key {key_id} has a budget of "
            f"${micros_to_usd(budget):.6f}, ${micros_to_usd(held):.6f} is spent or held, "
            f"and this request costs ${micros_to_usd(cost):.6f}."
        )

    def deliver(
        self, *, audio_until_s: float = 0.0, characters: int = 0, output_s: float = 0.0
    ) -> None:
        """Record that the client has been sent the work up to here (for partial billing)."""
        self.delivered_audio_s = max(self.delivered_audio_s, audio_until_s)
        self.delivered_characters += characters
        self.output_audio_s += output_s

    async def finish(self, http_status: int | None, outcome: Outcome) -> None:
        """Write this request's single ledger row and give back its slot. Idempotent.

        Never raises: a slot not given back expires with its lease, and a row the database
        cannot take now is journaled (if even that fails, a restart reaps the row).
        """
        if self.finished:
            return
        self.finished = True
        latency_ms = round((time.monotonic() - self.started) * 1000)
        try:
            if self.reserved is None:
                status = "rejected" if http_status in _REFUSALS else "failed"
                if outcome == "completed" and http_status is not None and http_status < 400:
                    status = "succeeded"  # nothing billable (e.g. an empty result)
                elif outcome == "cancelled" or http_status == 499:
                    status = "cancelled"  # shut down past its grace, or the client left first
                await self.meter.ledger.record(
                    self._entry(),
                    status=status,
                    http_status=http_status,
                    latency_ms=latency_ms,
                    maybe_reserved_micros=self.maybe_reserved_micros,
                )
            else:
                status, usage = self._final_usage(http_status, outcome)
                self.billed = usage
                observe_usage(
                    self.endpoint,
                    self.entry.id if self.entry else "",
                    # Input audio transcribed, or speech synthesised: one is always 0.
                    audio_seconds=(usage.input_audio_ms + usage.output_audio_ms) / 1000,
                    characters=usage.input_characters,
                )
                await self.meter.ledger.settle(
                    self._entry(),
                    self.reserved.cost_micros,
                    usage,
                    status=status,
                    http_status=http_status,
                    latency_ms=latency_ms,
                )
        except Exception:
            log.exception(
                "could not write or journal usage for %s; a restart of this replica settles it "
                "as interrupted",
                self.request_id,
            )
        finally:
            self.meter.open_tickets.discard(self)
            await self.release_slot()

    async def finish_shielded(self, http_status: int | None, outcome: Outcome) -> None:
        """``finish``, carried on to the end even if the calling task is cancelled meanwhile
        (a shutdown past its grace period, a client gone): the row is settled either way."""
        task = asyncio.ensure_future(self.finish(http_status, outcome))
        self.meter.cleanups.add(task)
        task.add_done_callback(self.meter.cleanups.discard)
        await asyncio.shield(task)

    async def take_slot(self) -> None:
        """Take one of the key's concurrency slots (429 if none is free). Called once the body
        has been received: a client still uploading holds no slot, and nothing expensive has
        begun yet, since no work starts before the whole body is there."""
        key = self.caller.key
        if key is not None and key.limits.max_concurrency and not self.slot_held:
            await self.meter.limiter.acquire_slot(
                key.id, self.request_id, key.limits.max_concurrency
            )
            self.slot_held = True

    async def release_slot(self) -> None:
        """Give back the concurrency slot (once). Best effort, never raises: this runs just
        before a response's last message, which a failure here must not cut off; a slot not
        given back expires with its lease."""
        if self.slot_held and self.caller.key is not None:
            self.slot_held = False
            try:
                await self.meter.limiter.release_slot(self.caller.key.id, self.request_id)
            except Exception:
                log.exception("could not give back the slot of %s", self.request_id)

    def _final_usage(self, http_status: int | None, outcome: Outcome) -> tuple[str, Usage]:
        assert self.reserved is not None and self.entry is not None
        ok = http_status is not None and http_status < 400
        output_ms = round(self.output_audio_s * 1000)
        if ok and outcome == "completed":
            return "succeeded", Usage(
                input_audio_ms=self.reserved.input_audio_ms,
                input_characters=self.reserved.input_characters,
                output_audio_ms=output_ms,
                cost_micros=self.reserved.cost_micros,
            )
        if ((ok or http_status == 499) and outcome != "failed") or outcome == "cancelled":
            # The client left: bill what it was sent, never more than was reserved.
            audio_s = min(self.delivered_audio_s, self.reserved.input_audio_ms / 1000)
            characters = min(self.delivered_characters, self.reserved.input_characters)
            cost = cost_micros(self.entry.pricing, audio_seconds=audio_s, characters=characters)
            return "cancelled", Usage(
                input_audio_ms=round(audio_s * 1000),
                input_characters=characters,
                output_audio_ms=output_ms,
                cost_micros=min(cost, self.reserved.cost_micros),
            )
        return ("rejected" if http_status in _REFUSALS else "failed"), Usage()

    def _entry(self) -> Entry:
        return Entry(
            request_id=self.request_id,
            api_key_id=self.caller.key_id,
            budgeted=self.caller.key is not None and not self.caller.key.bootstrap,
            endpoint=self.endpoint,
            model=self.entry.id if self.entry else "",
            instance_id=self.meter.ledger.instance_id,
            created_at=self.created_at,
            route=self.route,
        )


class Meter:
    """Admits requests and keeps this replica's part of the ledger alive."""

    def __init__(self, ledger: Ledger, limiter: Limiter, keys: KeyStore) -> None:
        self.ledger = ledger
        self.limiter = limiter
        self.keys = keys
        self.open_tickets: set[Ticket] = set()  # admitted and not yet finished
        self.cleanups: set[asyncio.Future[None]] = set()  # finishes that outlive their request
        self._heartbeat: asyncio.Task[None] | None = None

    async def admit(self, caller: Caller, endpoint: Endpoint, request_id: str) -> Ticket:
        """Take a request from the key's per-minute bucket (the concurrency slot comes later:
        ``Ticket.take_slot``).

        Raises RateLimited (429), after recording the refusal in the ledger.
        """
        ticket = Ticket(self, caller, endpoint, request_id)
        self.open_tickets.add(ticket)
        key = caller.key
        if key is None:
            return ticket
        try:
            if key.limits.rpm:
                ticket.rates += await self.limiter.charge(
                    key.id, [Charge("requests", key.limits.rpm, 1)]
                )
        except BaseException as exc:
            refused = exc.status_code if isinstance(exc, VoxgateError) else 500
            await ticket.finish(refused, "failed")
            raise
        return ticket

    async def start(self) -> None:
        """Settle what our previous run left pending, then beat and reap every HEARTBEAT_S.

        The journal is replayed first, so settles our last run could not write land with
        their real usage before the rest of its pending rows are closed as interrupted.
        """
        await self.ledger.heartbeat()
        await self.ledger.replay()
        if reaped := await self._reap(own=True):
            log.warning("settled %d request(s) interrupted by this replica's last stop", reaped)
        self._heartbeat = asyncio.create_task(self._beat())

    async def _reap(self, *, own: bool) -> int:
        """Settle dead requests and free their concurrency slots now rather than at lease end."""
        settled = await self.ledger.reap(own=own, stale_after_s=STALE_AFTER_S)
        for request_id, key_id in settled:
            if key_id is not None:
                await self.limiter.release_slot(key_id, request_id)
        return len(settled)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                await self.ledger.heartbeat()
                await self.ledger.replay()
                if reaped := await self._reap(own=False):
                    log.warning("settled %d request(s) of replicas that stopped", reaped)
            except DatabaseUnavailable:
                log.warning("ledger heartbeat: the database is unavailable; retrying")
            except Exception:
                log.exception("ledger heartbeat failed")

    async def close(self, wait_s: float = 10.0) -> None:
        """Stop beating, once requests still open have settled (those cancelled at shutdown
        settle as they unwind; any that have not after ``wait_s`` are settled here)."""
        deadline = time.monotonic() + wait_s
        while self.open_tickets and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for ticket in list(self.open_tickets):
            await ticket.finish(None, "cancelled")
        await self.ledger.replay()  # a last chance for journaled settles, if the db is back
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        await self.limiter.close()
