"""The usage and costs API (``/v1/organization/...``) and ``voxgate usage``, on real traffic.

One server on its own SQLite database serves the module. Two callers make real requests with the
official SDK: the bootstrap key (``conftest.API_KEY``) and a key stored before the server
started. The reports must then give back exactly what was sent: the clips' decoded seconds, the
inputs' characters, and those units times the catalog's prices, split per key, model and line
item, in 1m / 1h / 1d buckets, page by page. One test repeats the essentials on PostgreSQL, and
the aggregation query itself is checked on both backends with rows of known times.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import math
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import openai
import pytest
from conftest import (
    API_KEY,
    Server,
    StartServer,
    assert_error_envelope,
    audio_path,
    create_key,
    voxgate_cli,
)

from voxgate.storage.db import Database
from voxgate.storage.reports import ReportQuery, Reports
from voxgate.storage.tables import UsageRow

TRANSCRIPTIONS = "/v1/organization/usage/audio_transcriptions"
TRANSLATIONS = "/v1/organization/usage/audio_translations"
SPEECHES = "/v1/organization/usage/audio_speeches"
COSTS = "/v1/organization/costs"
ENDPOINTS = (TRANSCRIPTIONS, TRANSLATIONS, SPEECHES, COSTS)
BOOTSTRAP_ID = "key_env_" + hashlib.sha256(API_KEY.encode()).hexdigest()[:12]

A_TEXTS = ("Hello there.", "Usage is counted in characters, spaces and punctuation included!")
A_CLIPS = ("en-librispeech-1089-134691-0000.flac", "en-speechrecognition-one-two-three.wav")
B_TEXT = "The stored key speaks in high definition."
B_CLIP = "en-librispeech-1089-134686-0001.flac"  # transcribed
B_FOREIGN_CLIP = "zh-speechrecognition-chinese.flac"  # translated


# --- what was sent --------------------------------------------------------------------------


@dataclass
class Totals:
    """What one (key, model, line item) group should report."""

    requests: int = 0
    seconds: float = 0.0
    characters: int = 0
    cost_usd: float = 0.0


@dataclass
class Traffic:
    """The requests made, keyed by (api_key_id, model, line_item), and when they were made."""

    started: int
    finished: int = 0
    groups: dict[tuple[str, str, str], Totals] = field(default_factory=dict)

    def add(self, key_id: str, model: str, line_item: str, **units: float) -> None:
        totals = self.groups.setdefault((key_id, model, line_item), Totals())
        totals.requests += 1
        totals.seconds += units.get("seconds", 0.0)
        totals.characters += int(units.get("characters", 0))
        totals.cost_usd += units["cost_usd"]

    def total(
        self, *, key: str | None = None, model: str | None = None, line_items: Sequence[str] = ()
    ) -> Totals:
        """Sum over the groups of this key, model and line items (None or empty: any)."""
        result = Totals()
        for (key_id, model_id, line_item), totals in self.groups.items():
            if key not in (None, key_id) or model not in (None, model_id):
                continue
            if line_items and line_item not in line_items:
                continue
            result.requests += totals.requests
            result.seconds += totals.seconds
            result.characters += totals.characters
            result.cost_usd += totals.cost_usd
        return result


def prices(server: Server) -> dict[str, dict[str, Any]]:
    """The catalog's pricing per model id, as the public catalog publishes it."""
    records = httpx.get(f"{server.base_url}/api/models", timeout=30).json()["data"]
    return {record["id"]: record["pricing"] for record in records}


def speak(
    client: openai.OpenAI,
    traffic: Traffic,
    price: dict[str, dict[str, Any]],
    key_id: str,
    **kw: Any,
) -> None:
    assert client.audio.speech.create(voice="alloy", response_format="wav", **kw).content
    cost = price[kw["model"]]["input"] * len(kw["input"]) / 1_000_000
    traffic.add(key_id, kw["model"], "audio_speeches", characters=len(kw["input"]), cost_usd=cost)


def listen(
    client: openai.OpenAI,
    traffic: Traffic,
    price: dict[str, dict[str, Any]],
    key_id: str,
    clip: str,
    *,
    translate: bool = False,
) -> None:
    api = client.audio.translations if translate else client.audio.transcriptions
    with open(audio_path(clip), "rb") as f:
        result = api.create(model="whisper-1", file=f, response_format="verbose_json")
    seconds = float(result.duration)
    cost = price["whisper-1"]["per_second"] * seconds
    line_item = "audio_translations" if translate else "audio_transcriptions"
    traffic.add(key_id, "whisper-1", line_item, seconds=seconds, cost_usd=cost)


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def db_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('usage-db') / 'voxgate.db'}"


@pytest.fixture(scope="module")
def stored_key(db_url: str) -> tuple[str, str]:
    """A stored key made before the server starts: (id, secret)."""
    key, secret = create_key(db_url, "usage test")
    return key.id, secret


@pytest.fixture(scope="module")
def usage_server(
    start_server: StartServer, db_url: str, stored_key: tuple[str, str]
) -> Iterator[Server]:
    with start_server(VOXGATE_DATABASE_URL=db_url) as srv:
        yield srv


@pytest.fixture(scope="module")
def admin(usage_server: Server) -> Iterator[httpx.Client]:
    with usage_server.admin(timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def traffic(usage_server: Server, stored_key: tuple[str, str], admin: httpx.Client) -> Traffic:
    """Real requests from both keys (and one that fails), settled in the ledger."""
    price = prices(usage_server)
    traffic = Traffic(started=int(time.time()))
    a = usage_server.sdk()
    for text in A_TEXTS:
        speak(a, traffic, price, BOOTSTRAP_ID, model="tts-1", input=text)
    for clip in A_CLIPS:
        listen(a, traffic, price, BOOTSTRAP_ID, clip)
    b_id, b_secret = stored_key
    b = usage_server.sdk_for(b_secret)
    speak(b, traffic, price, b_id, model="tts-1-hd", input=B_TEXT)
    listen(b, traffic, price, b_id, B_CLIP)
    listen(b, traffic, price, b_id, B_FOREIGN_CLIP, translate=True)
    with pytest.raises(openai.BadRequestError):  # metered as failed: never counted
        b.audio.transcriptions.create(model="whisper-1", file=("bad.mp3", b"not audio at all"))
    wait_settled(admin, traffic)
    traffic.finished = int(time.time())
    return traffic


def wait_settled(client: httpx.Client, traffic: Traffic) -> None:
    """Rows are settled just after the response's last byte: wait until all are counted."""
    expected = traffic.total().requests
    deadline = time.monotonic() + 120  # a guard against a hang, not a speed claim
    while True:
        counted = sum(
            result["num_model_requests"]
            for path in (TRANSCRIPTIONS, SPEECHES)
            for result in results(get(client, path, start_time=traffic.started))
        )
        if counted == expected or time.monotonic() > deadline:
            assert counted == expected
            return
        time.sleep(0.1)


# --- helpers --------------------------------------------------------------------------------


def get(client: httpx.Client, path: str, **params: Any) -> dict[str, Any]:
    return get_pairs(client, path, params)


def get_pairs(
    client: httpx.Client, path: str, params: dict[str, Any] | list[tuple[str, Any]]
) -> dict[str, Any]:
    """GET a page that must succeed; ``params`` as a dict or as (name, value) pairs."""
    response = client.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def traffic_key_b(traffic: Traffic) -> str:
    """The stored key's id."""
    (key_id,) = {key for key, _, _ in traffic.groups if key != BOOTSTRAP_ID}
    return key_id


def results(page: dict[str, Any]) -> list[dict[str, Any]]:
    return [result for bucket in page["data"] for result in bucket["results"]]


def by_group(page: dict[str, Any], *fields: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    grouped: dict[tuple[Any, ...], dict[str, Any]] = {}
    for result in results(page):
        group = tuple(result[name] for name in fields)
        assert group not in grouped, f"{group} appears twice in one bucket range"
        grouped[group] = result
    return grouped


def assert_page_shape(page: dict[str, Any], start: int, end: int, width: int) -> None:
    """Consecutive buckets aligned to ``start``, the last one cut at ``end``."""
    assert page["object"] == "page"
    assert set(page) == {"object", "data", "has_more", "next_page"}
    bucket_start = start
    for bucket in page["data"]:
        assert set(bucket) == {"object", "start_time", "end_time", "results"}
        assert bucket["object"] == "bucket"
        assert bucket["start_time"] == bucket_start
        assert bucket["end_time"] == min(bucket_start + width, end)
        bucket_start = bucket["end_time"]


# --- the figures ----------------------------------------------------------------------------


def test_transcription_seconds_per_key_and_model(admin: httpx.Client, traffic: Traffic) -> None:
    """Seconds are the clips' decoded durations; translations count here too, as at OpenAI."""
    page = get(admin, TRANSCRIPTIONS, start_time=traffic.started, group_by=["api_key_id", "model"])
    grouped = by_group(page, "api_key_id", "model")
    assert set(grouped) == {(BOOTSTRAP_ID, "whisper-1"), (traffic_key_b(traffic), "whisper-1")}
    for (key_id, model), result in grouped.items():
        expected = traffic.total(
            key=key_id, model=model, line_items=("audio_transcriptions", "audio_translations")
        )
        assert set(result) == {
            "object",
            "seconds",
            "num_model_requests",
            "project_id",
            "user_id",
            "api_key_id",
            "model",
        }
        assert result["object"] == "organization.usage.audio_transcriptions.result"
        assert result["seconds"] == pytest.approx(expected.seconds, abs=0.01 * expected.requests)
        assert result["num_model_requests"] == expected.requests
        assert result["project_id"] is None and result["user_id"] is None
    # Ungrouped: one result for the bucket, every group field null.
    (total,) = results(get(admin, TRANSCRIPTIONS, start_time=traffic.started))
    expected = traffic.total(line_items=("audio_transcriptions", "audio_translations"))
    assert total["seconds"] == pytest.approx(expected.seconds, abs=0.01 * expected.requests)
    assert total["num_model_requests"] == expected.requests == 4
    assert (total["api_key_id"], total["model"]) == (None, None)
    assert round(total["seconds"], 3) == total["seconds"]  # milliseconds, no float noise


def test_translations_only(admin: httpx.Client, traffic: Traffic) -> None:
    (result,) = results(get(admin, TRANSLATIONS, start_time=traffic.started, group_by="model"))
    expected = traffic.total(line_items=["audio_translations"])
    assert result["object"] == "organization.usage.audio_translations.result"
    assert result["model"] == "whisper-1"
    assert result["num_model_requests"] == expected.requests == 1
    assert result["seconds"] == pytest.approx(expected.seconds, abs=0.01)


def test_speech_characters(admin: httpx.Client, traffic: Traffic) -> None:
    page = get(admin, SPEECHES, start_time=traffic.started, group_by="model")
    grouped = by_group(page, "model")
    assert set(grouped) == {("tts-1",), ("tts-1-hd",)}
    assert grouped["tts-1",]["characters"] == sum(len(text) for text in A_TEXTS)
    assert grouped["tts-1",]["num_model_requests"] == len(A_TEXTS)
    assert grouped["tts-1-hd",]["characters"] == len(B_TEXT)
    for result in grouped.values():
        assert result["object"] == "organization.usage.audio_speeches.result"
        assert result["api_key_id"] is None  # not grouped by key
    keyed = by_group(
        get(admin, SPEECHES, start_time=traffic.started, group_by="api_key_id"), "api_key_id"
    )
    assert keyed[BOOTSTRAP_ID,]["characters"] == sum(len(text) for text in A_TEXTS)
    assert keyed[traffic_key_b(traffic),]["characters"] == len(B_TEXT)


def test_costs_are_units_times_catalog_prices(admin: httpx.Client, traffic: Traffic) -> None:
    """Each request is charged to the micro-USD, so a sum may differ by 1e-6 per request."""

    def close(value: float, expected: Totals) -> None:
        assert value == pytest.approx(expected.cost_usd, abs=1.5e-6 * expected.requests)

    (total,) = results(get(admin, COSTS, start_time=traffic.started))
    assert set(total) == {"object", "amount", "line_item", "project_id", "api_key_id", "model"}
    assert total["object"] == "organization.costs.result"
    assert total["amount"]["currency"] == "usd"
    assert total["line_item"] is None
    close(total["amount"]["value"], traffic.total())
    lines = by_group(
        get(admin, COSTS, start_time=traffic.started, group_by="line_item"), "line_item"
    )
    assert set(lines) == {("audio_speeches",), ("audio_transcriptions",), ("audio_translations",)}
    for (line_item,), result in lines.items():
        close(result["amount"]["value"], traffic.total(line_items=[line_item]))
    page = get(admin, COSTS, start_time=traffic.started, group_by=["api_key_id", "model"])
    groups = by_group(page, "api_key_id", "model")
    assert len(groups) == 4
    for (key_id, model), result in groups.items():
        close(result["amount"]["value"], traffic.total(key=key_id, model=model))
        assert result["line_item"] is None


def test_costs_match_reported_units(
    admin: httpx.Client, usage_server: Server, traffic: Traffic
) -> None:
    """The cost of a model's usage is its reported units times its published price."""
    price = prices(usage_server)
    speech = by_group(get(admin, SPEECHES, start_time=traffic.started, group_by="model"), "model")
    cost = by_group(get(admin, COSTS, start_time=traffic.started, group_by="model"), "model")
    for model in ("tts-1", "tts-1-hd"):
        expected = speech[model,]["characters"] * price[model]["input"] / 1_000_000
        assert cost[model,]["amount"]["value"] == pytest.approx(expected, abs=2e-6)
    heard = by_group(
        get(admin, TRANSCRIPTIONS, start_time=traffic.started, group_by="model"), "model"
    )
    expected = heard["whisper-1",]["seconds"] * price["whisper-1"]["per_second"]
    assert cost["whisper-1",]["amount"]["value"] == pytest.approx(expected, abs=4e-6)


def test_filters(admin: httpx.Client, traffic: Traffic) -> None:
    """``api_key_ids`` and ``models``, in both array spellings."""
    b_id = traffic_key_b(traffic)
    params = [("start_time", traffic.started), ("api_key_ids[]", b_id), ("models", "tts-1-hd")]
    (result,) = results(get_pairs(admin, SPEECHES, params))
    assert result["characters"] == len(B_TEXT)
    params = [("start_time", traffic.started), ("models[]", "whisper-1"), ("models[]", "tts-1")]
    (result,) = results(get_pairs(admin, COSTS, params))
    expected = traffic.total(model="whisper-1").cost_usd + traffic.total(model="tts-1").cost_usd
    assert result["amount"]["value"] == pytest.approx(expected, abs=1e-5)
    page = get(admin, SPEECHES, start_time=traffic.started, api_key_ids="key_nobody")
    assert results(page) == []


def test_group_by_brackets_and_ignored_fields(admin: httpx.Client, traffic: Traffic) -> None:
    """``group_by[]`` (the SDKs' spelling) works; project_id and user_id are always null."""
    params = [
        ("start_time", traffic.started),
        ("group_by[]", "model"),
        ("group_by[]", "project_id"),
        ("group_by", "user_id"),
    ]
    grouped = by_group(get_pairs(admin, SPEECHES, params), "model", "project_id", "user_id")
    assert set(grouped) == {("tts-1", None, None), ("tts-1-hd", None, None)}


# --- buckets and pages ----------------------------------------------------------------------


@pytest.mark.parametrize(("width", "seconds"), [("1m", 60), ("1h", 3600), ("1d", 86400)])
def test_bucket_widths(admin: httpx.Client, traffic: Traffic, width: str, seconds: int) -> None:
    """Two empty buckets before the traffic are listed, empty; all usage falls after them."""
    start = traffic.started - 2 * seconds
    end = traffic.finished + 1
    page = get(
        admin, SPEECHES, start_time=start, end_time=end, bucket_width=width, group_by="model"
    )
    assert page["has_more"] is False and page["next_page"] is None
    assert len(page["data"]) == math.ceil((end - start) / seconds)
    assert_page_shape(page, start, end, seconds)
    assert page["data"][0]["results"] == page["data"][1]["results"] == []
    characters: Counter[str] = Counter()
    for bucket in page["data"][2:]:
        for result in bucket["results"]:
            characters[result["model"]] += result["characters"]
    assert characters == {"tts-1": sum(map(len, A_TEXTS)), "tts-1-hd": len(B_TEXT)}


def test_default_bucket_width_is_a_day(admin: httpx.Client, traffic: Traffic) -> None:
    page = get(admin, COSTS, start_time=traffic.started - 86400 * 3 - 5)
    assert len(page["data"]) == 4
    assert page["data"][1]["start_time"] - page["data"][0]["start_time"] == 86400
    assert page["data"][-1]["end_time"] <= int(time.time())


def test_paging(admin: httpx.Client, traffic: Traffic) -> None:
    """limit=1: one bucket per page, ``next_page`` leads through all of them."""
    start = traffic.started - 180
    end = traffic.finished + 1
    query = {"start_time": start, "end_time": end, "bucket_width": "1m", "group_by": "model"}
    whole = get(admin, TRANSCRIPTIONS, **query)
    pages = [get(admin, TRANSCRIPTIONS, **query, limit=1)]
    while pages[-1]["has_more"]:
        assert isinstance(pages[-1]["next_page"], str)
        pages.append(get(admin, TRANSCRIPTIONS, **query, limit=1, page=pages[-1]["next_page"]))
    assert pages[-1]["next_page"] is None
    assert all(len(page["data"]) == 1 for page in pages)
    assert [bucket for page in pages for bucket in page["data"]] == whole["data"]
    assert len(pages) == len(whole["data"]) >= 4
    # Two buckets per page.
    first = get(admin, TRANSCRIPTIONS, **query, limit=2)
    assert first["has_more"] is True
    second = get(admin, TRANSCRIPTIONS, **query, limit=2, page=first["next_page"])
    assert first["data"] + second["data"] == whole["data"][:4]


# --- who sees what --------------------------------------------------------------------------


def test_api_key_sees_only_its_own_usage(
    usage_server: Server, stored_key: tuple[str, str], traffic: Traffic
) -> None:
    """The bootstrap key and a stored key each see their own usage and may not name another."""
    b_id = stored_key[0]
    with usage_server.http_for(API_KEY, timeout=60) as client:
        (own,) = results(get(client, COSTS, start_time=traffic.started, group_by="api_key_id"))
        assert own["api_key_id"] == BOOTSTRAP_ID
        expected = traffic.total(key=BOOTSTRAP_ID)
        assert own["amount"]["value"] == pytest.approx(expected.cost_usd, abs=1e-5)
        (speech,) = results(get(client, SPEECHES, start_time=traffic.started))
        assert speech["characters"] == sum(map(len, A_TEXTS))
        get(client, SPEECHES, start_time=traffic.started, api_key_ids=BOOTSTRAP_ID)
        refused = client.get(SPEECHES, params={"start_time": traffic.started, "api_key_ids": b_id})
        assert assert_error_envelope(refused, 403, "api_key_ids")["code"] == "permission_denied"
    with usage_server.http_for(stored_key[1], timeout=60) as client:
        (translated,) = results(get(client, TRANSLATIONS, start_time=traffic.started))
        assert translated["num_model_requests"] == 1
        page = get(client, TRANSCRIPTIONS, start_time=traffic.started, group_by="api_key_id")
        assert [result["api_key_id"] for result in results(page)] == [b_id]
        refused = client.get(
            COSTS, params=[("start_time", traffic.started), ("api_key_ids[]", BOOTSTRAP_ID)]
        )
        assert_error_envelope(refused, 403, "api_key_ids")


def test_admin_sees_every_key(admin: httpx.Client, traffic: Traffic) -> None:
    page = get(admin, COSTS, start_time=traffic.started, group_by="api_key_id")
    assert set(by_group(page, "api_key_id")) == {(BOOTSTRAP_ID,), (traffic_key_b(traffic),)}


@pytest.mark.parametrize("path", ENDPOINTS)
def test_no_key_or_wrong_key_is_401(usage_server: Server, path: str) -> None:
    response = httpx.get(f"{usage_server.base_url}{path}", params={"start_time": 0})
    assert assert_error_envelope(response, 401, None)["code"] == "invalid_api_key"
    with usage_server.http_for("sk-not-a-key", timeout=60) as client:
        assert_error_envelope(client.get(path, params={"start_time": 0}), 401, None)


# --- bad parameters -------------------------------------------------------------------------

BAD_PARAMS = [
    (SPEECHES, {}, "start_time", "missing_required_parameter"),
    (COSTS, {"end_time": 100}, "start_time", "missing_required_parameter"),
    (TRANSCRIPTIONS, {"start_time": "yesterday"}, "start_time", "invalid_value"),
    (TRANSCRIPTIONS, {"start_time": -5}, "start_time", "invalid_value"),
    (TRANSLATIONS, {"start_time": 100, "end_time": 100}, "end_time", "invalid_value"),
    (SPEECHES, {"start_time": 100, "end_time": 50}, "end_time", "invalid_value"),
    (SPEECHES, {"start_time": 100, "end_time": "x"}, "end_time", "invalid_value"),
    (SPEECHES, {"start_time": 4_000_000_000}, "start_time", "invalid_value"),
    (SPEECHES, {"start_time": 0, "bucket_width": "2h"}, "bucket_width", "invalid_value"),
    (COSTS, {"start_time": 0, "bucket_width": "1w"}, "bucket_width", "invalid_value"),
    (SPEECHES, {"start_time": 0, "limit": 0}, "limit", "invalid_value"),
    (SPEECHES, {"start_time": 0, "limit": 32}, "limit", "invalid_value"),
    (SPEECHES, {"start_time": 0, "bucket_width": "1h", "limit": 169}, "limit", "invalid_value"),
    (SPEECHES, {"start_time": 0, "bucket_width": "1m", "limit": 1441}, "limit", "invalid_value"),
    (COSTS, {"start_time": 0, "limit": 181}, "limit", "invalid_value"),
    (COSTS, {"start_time": 0, "limit": "many"}, "limit", "invalid_value"),
    (SPEECHES, {"start_time": 0, "group_by": "line_item"}, "group_by", "invalid_value"),
    (TRANSCRIPTIONS, {"start_time": 0, "group_by": "voice"}, "group_by", "invalid_value"),
    (COSTS, {"start_time": 0, "group_by": "user_id"}, "group_by", "invalid_value"),
    (SPEECHES, {"start_time": 0, "page": "not-a-cursor"}, "page", "invalid_value"),
]


@pytest.mark.parametrize(("path", "params", "param", "code"), BAD_PARAMS)
def test_bad_params(
    admin: httpx.Client, path: str, params: dict[str, Any], param: str, code: str
) -> None:
    error = assert_error_envelope(admin.get(path, params=params), 400, param)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code


def test_page_of_another_query_is_refused(admin: httpx.Client) -> None:
    first = get(admin, SPEECHES, start_time=1000, end_time=1000 + 600, bucket_width="1m", limit=2)
    cursor = first["next_page"]
    # Same cursor, but buckets aligned elsewhere: it does not fall on a bucket boundary.
    shifted = admin.get(
        SPEECHES,
        params={"start_time": 1001, "end_time": 1600, "bucket_width": "1m", "page": cursor},
    )
    assert_error_envelope(shifted, 400, "page")


def test_costs_allow_180_daily_buckets(admin: httpx.Client) -> None:
    """OpenAI's costs limit is 1..180 (usage: 1..31) for daily buckets."""
    page = get(admin, COSTS, start_time=0, end_time=86400 * 200, limit=180)
    assert len(page["data"]) == 180 and page["has_more"] is True


# --- voxgate usage (the CLI) ----------------------------------------------------------------


def iso(unix: int) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat()


def test_cli_json(db_url: str, traffic: Traffic) -> None:
    period = ("--since", iso(traffic.started), "--until", iso(traffic.finished + 1))
    result = voxgate_cli(db_url, "usage", *period, "--by", "key,model", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["group_by"] == ["api_key_id", "model"]
    rows = {(row["api_key_id"], row["model"]): row for row in report["rows"]}
    assert len(rows) == 4
    for (key_id, model), row in rows.items():
        expected = traffic.total(key=key_id, model=model)
        assert row["requests"] == expected.requests
        assert row["audio_seconds"] == pytest.approx(expected.seconds, abs=0.02)
        assert row["characters"] == expected.characters
        assert row["cost_usd"] == pytest.approx(expected.cost_usd, abs=5e-6)
    expected = traffic.total()
    assert report["total"]["requests"] == expected.requests == 7
    assert report["total"]["cost_usd"] == pytest.approx(expected.cost_usd, abs=1e-5)
    b_id = traffic_key_b(traffic)
    only_b = json.loads(voxgate_cli(db_url, "usage", *period, "--key", b_id, "--json").stdout)
    assert [row["api_key_id"] for row in only_b["rows"]] == [b_id]
    assert only_b["total"]["characters"] == len(B_TEXT)


def test_cli_table_and_bad_options(db_url: str, traffic: Traffic) -> None:
    result = voxgate_cli(db_url, "usage", "--days", "1", "--by", "model")
    assert result.returncode == 0, result.stderr
    for text in ("tts-1-hd", "whisper-1", "Total", "Requests", "Cost"):
        assert text in result.stdout
    assert voxgate_cli(db_url, "usage", "--since", "2026-01-01", "--days", "3").returncode == 2
    assert voxgate_cli(db_url, "usage", "--by", "voice").returncode == 2
    assert voxgate_cli(db_url, "usage", "--since", "last tuesday").returncode == 2


# --- PostgreSQL -----------------------------------------------------------------------------


def test_postgres(start_server: StartServer, postgres_url: str) -> None:
    """The same figures from a server (and the CLI) on PostgreSQL."""
    with start_server(VOXGATE_DATABASE_URL=postgres_url) as server:
        price = prices(server)
        traffic = Traffic(started=int(time.time()))
        sdk = server.sdk()
        speak(sdk, traffic, price, BOOTSTRAP_ID, model="tts-1", input=A_TEXTS[1])
        listen(sdk, traffic, price, BOOTSTRAP_ID, A_CLIPS[0])
        with server.admin(timeout=60) as admin:
            wait_settled(admin, traffic)
            traffic.finished = int(time.time())
            (heard,) = results(get(admin, TRANSCRIPTIONS, start_time=traffic.started))
            assert heard["seconds"] == pytest.approx(
                traffic.total(model="whisper-1").seconds, abs=0.01
            )
            (spoken,) = results(get(admin, SPEECHES, start_time=traffic.started, group_by="model"))
            assert (spoken["model"], spoken["characters"]) == ("tts-1", len(A_TEXTS[1]))
            page = get(
                admin, COSTS, start_time=traffic.started, group_by=["line_item", "api_key_id"]
            )
            lines = by_group(page, "line_item", "api_key_id")
            assert set(lines) == {
                ("audio_speeches", BOOTSTRAP_ID),
                ("audio_transcriptions", BOOTSTRAP_ID),
            }
            for (line_item, _), result in lines.items():
                expected = traffic.total(line_items=[line_item]).cost_usd
                assert result["amount"]["value"] == pytest.approx(expected, abs=2e-6)
            query = {
                "start_time": traffic.started - 120,
                "end_time": traffic.finished + 1,
                "bucket_width": "1m",
            }
            whole = get(admin, SPEECHES, **query)
            pages = [get(admin, SPEECHES, **query, limit=1)]
            while pages[-1]["has_more"]:
                pages.append(get(admin, SPEECHES, **query, limit=1, page=pages[-1]["next_page"]))
            assert [bucket for page in pages for bucket in page["data"]] == whole["data"]
    cli = voxgate_cli(postgres_url, "usage", "--since", iso(traffic.started), "--json")
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["total"]["requests"] == 2


# --- the aggregation query on both backends -------------------------------------------------

ROWS = [  # (created_at, endpoint, key, model, status, audio ms, characters, cost micros)
    (999, "/v1/audio/speech", "k1", "tts-1", "succeeded", 0, 11, 165),  # before start
    (1000, "/v1/audio/speech", "k1", "tts-1", "succeeded", 0, 10, 150),
    (1059, "/v1/audio/transcriptions", "k1", "whisper-1", "succeeded", 3520, 0, 352),
    (1060, "/v1/audio/translations", "k2", "whisper-1", "cancelled", 1001, 0, 100),
    (1061, "/v1/audio/translations", "k2", "whisper-1", "failed", 9000, 0, 0),
    (1062, "/v1/audio/speech", "k2", "tts-1", "pending", 0, 50, 0),
    (1063, "/v1/audio/speech", "k2", "tts-1", "rejected", 0, 50, 0),
    (1064, "/v1/audio/speech", "k2", "tts-1", "interrupted", 0, 50, 0),
    (1119, "/v1/audio/speech", None, "tts-1-hd", "succeeded", 0, 5, 150),
    (1120, "/v1/audio/speech", None, "tts-1", "succeeded", 0, 7, 105),  # at end: excluded
]


@pytest.mark.parametrize("backend", ["sqlite_url", "postgres_url"])
def test_report_query(request: pytest.FixtureRequest, backend: str) -> None:
    """Bucket edges, billable statuses, filters and groups, identical on SQLite and PostgreSQL."""
    url: str = request.getfixturevalue(backend)

    async def run() -> dict[str, list[tuple[Any, ...]]]:
        db = Database(url)
        try:
            await db.migrate()
            async with db.sessions.begin() as session:
                for i, (at, endpoint, key, model, status, ms, chars, cost) in enumerate(ROWS):
                    session.add(
                        UsageRow(
                            request_id=f"req_{i}",
                            api_key_id=key,
                            endpoint=endpoint,
                            model=model,
                            status=status,
                            input_audio_ms=ms,
                            input_characters=chars,
                            cost_micros=cost,
                            instance_id="test",
                            created_at=at,
                        )
                    )
            reports = Reports(db)
            queries = {
                "total": ReportQuery(1000, 1120, 60),
                "keys": ReportQuery(1000, 1120, 60, group_by=["api_key_id", "model"]),
                "lines": ReportQuery(1000, 1200, 60, group_by=["endpoint"], models=["tts-1"]),
                "k2": ReportQuery(1000, 1120, 3600, api_key_ids=["k2"]),
            }
            return {
                name: [dataclasses.astuple(a) for a in await reports.aggregate(query)]
                for name, query in queries.items()
            }
        finally:
            await db.close()

    # (bucket, key, model, endpoint, audio ms, characters, requests, cost micros)
    got = asyncio.run(run())
    assert got["total"] == [
        (0, None, None, None, 3520, 10, 2, 502),
        (1, None, None, None, 1001, 5, 2, 250),
    ]
    assert got["keys"] == [
        (0, "k1", "tts-1", None, 0, 10, 1, 150),
        (0, "k1", "whisper-1", None, 3520, 0, 1, 352),
        (1, None, "tts-1-hd", None, 0, 5, 1, 150),
        (1, "k2", "whisper-1", None, 1001, 0, 1, 100),
    ]
    assert got["lines"] == [
        (0, None, None, "/v1/audio/speech", 0, 10, 1, 150),
        (2, None, None, "/v1/audio/speech", 0, 7, 1, 105),
    ]
    assert got["k2"] == [(0, None, None, None, 1001, 0, 1, 100)]


def test_report_query_rejects_an_empty_range() -> None:
    with pytest.raises(ValueError):
        ReportQuery(100, 100, 60)
    with pytest.raises(ValueError):
        ReportQuery(100, 200, 0)
