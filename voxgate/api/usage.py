"""OpenAI's usage and costs API over voxgate's usage ledger.

    GET /v1/organization/usage/audio_transcriptions   seconds; transcriptions AND translations
    GET /v1/organization/usage/audio_translations     seconds; translations only (voxgate)
    GET /v1/organization/usage/audio_speeches         characters
    GET /v1/organization/costs                        USD

OpenAI reports Whisper translations under ``audio_transcriptions`` (it has no translations
usage), so that endpoint counts both; ``audio_translations`` lets a voxgate operator tell them
apart. Query parameters and the page shape are OpenAI's: buckets of ``bucket_width`` aligned to
``start_time``, every bucket of the page listed even when empty, ``limit`` buckets per page and
an opaque ``next_page`` cursor. The last bucket ends at ``end_time`` when that cuts it short.
Costs also accept ``1m`` and ``1h`` buckets and ``group_by=model`` (OpenAI: ``1d`` only).

The admin sees everything. An API key sees only its own usage: its id is forced as the
``api_key_ids`` filter, and naming another key is refused (403).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from voxgate import catalog, schemas
from voxgate.api.deps import CallerDep, ServicesDep
from voxgate.errors import InvalidRequest, PermissionDenied
from voxgate.money import micros_to_usd
from voxgate.services.container import Services
from voxgate.services.keys import Caller
from voxgate.storage.reports import (
    SPEECH_ENDPOINTS,
    TRANSCRIPTION_ENDPOINTS,
    Aggregate,
    GroupField,
    ReportQuery,
    Reports,
)

router = APIRouter()

MAX_TIME = 253_402_300_799  # 9999-12-31T23:59:59Z: later times overflow PostgreSQL's BIGINT math
BUCKET_WIDTHS_S = {"1m": 60, "1h": 3600, "1d": 86400}
#: (default, maximum) buckets per page, as OpenAI documents them.
USAGE_LIMITS = {"1m": (60, 1440), "1h": (24, 168), "1d": (7, 31)}
COSTS_LIMITS = {**USAGE_LIMITS, "1d": (7, 180)}
#: Costs' ``line_item`` for each metered endpoint: the name of its usage endpoint.
LINE_ITEMS: dict[str, str] = {
    catalog.TRANSCRIPTIONS: "audio_transcriptions",
    catalog.TRANSLATIONS: "audio_translations",
    catalog.SPEECH: "audio_speeches",
}
# project_id and user_id are accepted in group_by and ignored: voxgate has no projects or users.
_USAGE_GROUPS = ("project_id", "user_id", "api_key_id", "model")
_COSTS_GROUPS = ("project_id", "line_item", "api_key_id", "model")
_GROUP_FIELDS: dict[str, GroupField] = {
    "api_key_id": "api_key_id",
    "model": "model",
    "line_item": "endpoint",
}


@dataclass(frozen=True)
class UsageParams:
    """The query parameters as sent (strings), before validation. Lists merge both spellings."""

    start_time: str | None
    end_time: str | None
    bucket_width: str
    group_by: list[str]
    api_key_ids: list[str]
    models: list[str]
    limit: str | None
    page: str | None


MAX_FILTER_VALUES = 100  # per list parameter: a query is never an unbounded IN (…)
MAX_VALUE_CHARS = 200  # the width of the longest column filtered on


def _array(request: Request, declared: list[str] | None, name: str) -> list[str]:
    """``name=a&name=b`` and ``name[]=a`` (the openai SDKs' spelling) alike, bounded in count
    and length (400 beyond)."""
    values = [*(declared or []), *request.query_params.getlist(f"{name}[]")]
    values = [value for value in values if value]
    if len(values) > MAX_FILTER_VALUES:
        raise InvalidRequest(
            f"'{name}' takes at most {MAX_FILTER_VALUES} values, got {len(values)}.", param=name
        )
    if any(len(value) > MAX_VALUE_CHARS for value in values):
        raise InvalidRequest(
            f"Each '{name}' value is at most {MAX_VALUE_CHARS} characters.", param=name
        )
    return values


def usage_params(
    request: Request,
    start_time: Annotated[
        str | None, Query(description="Start (Unix seconds) of the range, inclusive. Required.")
    ] = None,
    end_time: Annotated[
        str | None, Query(description="End (Unix seconds) of the range, exclusive. Default: now.")
    ] = None,
    bucket_width: Annotated[str, Query(description="1m, 1h or 1d.")] = "1d",
    group_by: Annotated[
        list[str] | None, Query(description="api_key_id, model (costs: also line_item).")
    ] = None,
    api_key_ids: Annotated[list[str] | None, Query(description="Only these API keys.")] = None,
    models: Annotated[list[str] | None, Query(description="Only these models.")] = None,
    limit: Annotated[str | None, Query(description="Buckets per page.")] = None,
    page: Annotated[str | None, Query(description="next_page of the previous page.")] = None,
) -> UsageParams:
    """The parameters as sent. Numbers arrive as strings so that ``_window`` can name the
    offending one in OpenAI's error envelope."""
    return UsageParams(
        start_time=start_time,
        end_time=end_time,
        bucket_width=bucket_width,
        group_by=_array(request, group_by, "group_by"),
        api_key_ids=_array(request, api_key_ids, "api_key_ids"),
        models=_array(request, models, "models"),
        limit=limit,
        page=page,
    )


UsageParamsDep = Annotated[UsageParams, Depends(usage_params)]


@dataclass(frozen=True)
class Window:
    """One page of buckets: absolute bucket indexes ``first`` to ``stop`` (excluded)."""

    start_time: int
    end_time: int
    width_s: int
    first: int
    stop: int
    count: int  # buckets in the whole range

    def bucket_bounds(self, index: int) -> tuple[int, int]:
        start = self.start_time + index * self.width_s
        return start, min(start + self.width_s, self.end_time)

    @property
    def next_page(self) -> str | None:
        if self.stop >= self.count:
            return None
        return _encode_cursor(self.start_time + self.stop * self.width_s)


def _integer(value: str, param: str, minimum: int = 0, maximum: int = MAX_TIME) -> int:
    try:
        number = int(value)
    except ValueError:
        raise InvalidRequest(f"'{param}' must be an integer, got '{value}'.", param=param) from None
    if not minimum <= number <= maximum:
        raise InvalidRequest(f"'{param}' must be between {minimum} and {maximum}.", param=param)
    return number


def _encode_cursor(bucket_start: int) -> str:
    raw = json.dumps({"bucket_start": bucket_start}, separators=(",", ":")).encode()
    return "page_" + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        if not cursor.startswith("page_"):
            raise ValueError(cursor)
        body = cursor.removeprefix("page_")
        data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        value = data["bucket_start"]
        if not isinstance(value, int):
            raise ValueError(cursor)
        return value
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise InvalidRequest(
            "'page' is not a cursor from this API: pass a previous page's next_page.", param="page"
        ) from None


def _window(params: UsageParams, limits: dict[str, tuple[int, int]]) -> Window:
    """Validate the range, bucket width, limit and cursor. Raises InvalidRequest (400)."""
    if not params.start_time:
        raise InvalidRequest(
            "Missing required parameter: 'start_time'.",
            param="start_time",
            code="missing_required_parameter",
        )
    start = _integer(params.start_time, "start_time")
    if not params.end_time:
        end = int(time.time())
        if end <= start:
            raise InvalidRequest("'start_time' is in the future.", param="start_time")
    else:
        end = _integer(params.end_time, "end_time")
        if end <= start:
            raise InvalidRequest("'end_time' must be after 'start_time'.", param="end_time")
    width = BUCKET_WIDTHS_S.get(params.bucket_width)
    if width is None:
        raise InvalidRequest(
            f"Invalid 'bucket_width' '{params.bucket_width}': expected one of {', '.join(limits)}.",
            param="bucket_width",
        )
    default, maximum = limits[params.bucket_width]
    limit = _integer(params.limit, "limit", 1, maximum) if params.limit else default
    count = -(-(end - start) // width)
    first = 0
    if params.page:
        bucket_start = _decode_cursor(params.page)
        if not start <= bucket_start < end or (bucket_start - start) % width:
            raise InvalidRequest(
                "'page' does not belong to this start_time, end_time and bucket_width.",
                param="page",
            )
        first = (bucket_start - start) // width
    return Window(start, end, width, first, min(first + limit, count), count)


def _groups(params: UsageParams, allowed: Sequence[str]) -> list[str]:
    groups: list[str] = []
    for value in params.group_by:
        if value not in allowed:
            raise InvalidRequest(
                f"Invalid 'group_by' value '{value}': expected any of {', '.join(allowed)}.",
                param="group_by",
            )
        if value not in groups:
            groups.append(value)
    return groups


def _key_filter(caller: Caller, requested: list[str]) -> list[str]:
    """The admin may filter freely; an API key is confined to its own usage."""
    if caller.admin:
        return requested
    if caller.key is None:
        raise PermissionDenied("Usage needs the admin key, or an API key for its own usage.")
    others = [key_id for key_id in requested if key_id != caller.key.id]
    if others:
        raise PermissionDenied(
            f"This API key may only see its own usage ({caller.key.id}), not {others[0]}.",
            param="api_key_ids",
        )
    return [caller.key.id]


@dataclass(frozen=True)
class Report:
    """What one usage or costs endpoint sums, how it may be grouped, and how a result looks."""

    endpoints: Sequence[str]  # empty: every metered endpoint
    groups: Sequence[str]
    limits: dict[str, tuple[int, int]]
    result: Callable[[Aggregate], schemas.UsageResult]


def _shared(aggregate: Aggregate) -> dict[str, Any]:
    return {"api_key_id": aggregate.api_key_id, "model": aggregate.model}


def _usage(aggregate: Aggregate) -> dict[str, Any]:
    return {"num_model_requests": aggregate.num_model_requests, **_shared(aggregate)}


TRANSCRIPTIONS = Report(
    TRANSCRIPTION_ENDPOINTS,
    _USAGE_GROUPS,
    USAGE_LIMITS,
    lambda a: schemas.AudioTranscriptionsUsageResult(seconds=a.seconds, **_usage(a)),
)
TRANSLATIONS = Report(
    (catalog.TRANSLATIONS,),
    _USAGE_GROUPS,
    USAGE_LIMITS,
    lambda a: schemas.AudioTranslationsUsageResult(seconds=a.seconds, **_usage(a)),
)
SPEECHES = Report(
    SPEECH_ENDPOINTS,
    _USAGE_GROUPS,
    USAGE_LIMITS,
    lambda a: schemas.AudioSpeechesUsageResult(characters=a.input_characters, **_usage(a)),
)
COSTS = Report(
    (),
    _COSTS_GROUPS,
    COSTS_LIMITS,
    lambda a: schemas.CostsResult(
        amount=schemas.CostAmount(value=micros_to_usd(a.cost_micros)),
        line_item=LINE_ITEMS.get(a.endpoint or ""),
        **_shared(a),
    ),
)


async def _page(
    services: Services, caller: Caller, params: UsageParams, report: Report
) -> schemas.UsagePage:
    """Validate, sum one page of buckets in the database, and lay it out as OpenAI does."""
    window = _window(params, report.limits)
    groups = _groups(params, report.groups)
    api_key_ids = _key_filter(caller, params.api_key_ids)
    group_fields = [_GROUP_FIELDS[name] for name in groups if name in _GROUP_FIELDS]
    page_start, _ = window.bucket_bounds(window.first)
    _, page_end = window.bucket_bounds(window.stop - 1)
    aggregates = await Reports(services.db).aggregate(
        ReportQuery(
            start_time=page_start,
            end_time=page_end,
            bucket_width_s=window.width_s,
            endpoints=report.endpoints,
            api_key_ids=api_key_ids,
            models=params.models,
            group_by=group_fields,
        )
    )
    by_bucket: dict[int, list[schemas.UsageResult]] = {}
    for aggregate in aggregates:
        by_bucket.setdefault(window.first + aggregate.bucket, []).append(report.result(aggregate))
    buckets = []
    for index in range(window.first, window.stop):
        bucket_start, bucket_end = window.bucket_bounds(index)
        buckets.append(
            schemas.UsageBucket(
                start_time=bucket_start, end_time=bucket_end, results=by_bucket.get(index, [])
            )
        )
    next_page = window.next_page
    return schemas.UsagePage(data=buckets, has_more=next_page is not None, next_page=next_page)


@router.get("/v1/organization/usage/audio_transcriptions")
async def audio_transcriptions(
    services: ServicesDep, caller: CallerDep, params: UsageParamsDep
) -> schemas.UsagePage:
    """Seconds of audio transcribed or translated: OpenAI counts translations here too."""
    return await _page(services, caller, params, TRANSCRIPTIONS)


@router.get("/v1/organization/usage/audio_translations")
async def audio_translations(
    services: ServicesDep, caller: CallerDep, params: UsageParamsDep
) -> schemas.UsagePage:
    """Seconds of audio translated to English (a voxgate extension)."""
    return await _page(services, caller, params, TRANSLATIONS)


@router.get("/v1/organization/usage/audio_speeches")
async def audio_speeches(
    services: ServicesDep, caller: CallerDep, params: UsageParamsDep
) -> schemas.UsagePage:
    """Characters of text spoken."""
    return await _page(services, caller, params, SPEECHES)


@router.get("/v1/organization/costs")
async def costs(
    services: ServicesDep, caller: CallerDep, params: UsageParamsDep
) -> schemas.UsagePage:
    """What the billable requests cost, in USD, from the catalog prices they were charged."""
    return await _page(services, caller, params, COSTS)
