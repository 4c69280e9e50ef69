"""/metrics (Prometheus) and the one access line per request, against a real server."""

from __future__ import annotations

import json
import logging
import math
import re
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import ADMIN_KEY, REPO, Server, StartServer, audio_path, wait_until
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from voxgate import metrics
from voxgate.logs import JsonFormatter

JFK = "en-jfk.flac"
JFK_SECONDS = 11.0
SPOKEN = "Metrics are counted once per request."


@pytest.fixture(scope="module")
def observed(start_server: StartServer) -> Iterator[Server]:
    """A server with admin-protected metrics and JSON logs."""
    with start_server(VOXGATE_METRICS="admin", VOXGATE_LOG_FORMAT="json") as srv:
        yield srv


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: Server) -> Samples:
    response = httpx.get(
        f"{server.base_url}/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def access_lines(server: Server) -> list[dict[str, Any]]:
    lines = []
    for line in server.log().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record["logger"] == "voxgate.access":
                lines.append(record)
    return lines


def create_key(server: Server, **options: Any) -> dict[str, Any]:
    with server.admin() as admin:
        response = admin.post("/admin/keys", json={"name": "metrics", **options})
    assert response.status_code in (200, 201), response.text
    return response.json()  # type: ignore[no-any-return]


def test_metrics_are_off_by_default(server: Server) -> None:
    assert httpx.get(f"{server.base_url}/metrics").status_code == 404


def test_admin_mode_needs_the_admin_key(observed: Server) -> None:
    url = f"{observed.base_url}/metrics"
    assert httpx.get(url).status_code == 401
    assert (
        httpx.get(url, headers={"Authorization": f"Bearer {observed.api_key}"}).status_code == 401
    )


def test_requests_units_and_engines_are_counted(observed: Server) -> None:
    before = scrape(observed)
    with observed.http() as http:
        speech = http.post(
            "/v1/audio/speech",
            json={"model": "tts-1", "voice": "alloy", "input": SPOKEN, "response_format": "wav"},
        )
        assert speech.status_code == 200
        with open(audio_path(JFK), "rb") as audio:
            text = http.post(
                "/v1/audio/transcriptions",
                files={"file": (JFK, audio)},
                data={"model": "whisper-1"},
            )
        assert text.status_code == 200
    after = scrape(observed)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    speech_labels = {"endpoint": "/v1/audio/speech", "model": "tts-1"}
    stt_labels = {"endpoint": "/v1/audio/transcriptions", "model": "whisper-1"}
    assert grew("voxgate_requests_total", **speech_labels, status="200") == 1
    assert grew("voxgate_requests_total", **stt_labels, status="200") == 1
    for labels in (speech_labels, stt_labels):
        assert grew("voxgate_request_duration_seconds_count", **labels) == 1
        assert grew("voxgate_time_to_first_byte_seconds_count", **labels) == 1
    assert grew("voxgate_characters_total", model="tts-1") == len(SPOKEN)
    assert math.isclose(grew("voxgate_audio_seconds_total", **stt_labels), JFK_SECONDS, abs_tol=0.1)
    assert grew("voxgate_audio_seconds_total", **speech_labels) > 0.5  # speech synthesised
    assert grew("voxgate_realtime_factor_count", model="whisper-base") == 1
    assert grew("voxgate_realtime_factor_count", model="piper-joe") == 1
    assert grew("voxgate_engine_queue_wait_seconds_count", engine="faster-whisper") == 1
    for engine in ("faster-whisper", "piper", "espeak-ng"):
        assert ("voxgate_engine_queue_depth", frozenset({("engine", engine)})) in after
    assert value(after, "voxgate_engine_queue_depth", engine="faster-whisper") == 0


def test_rejections_by_reason(observed: Server) -> None:
    before = scrape(observed)
    limited = create_key(observed, rpm=1)
    broke = create_key(observed, budget_usd=0)
    body = {"model": "tts-1", "voice": "alloy", "input": "Hi."}
    with observed.http_for(limited["key"]) as http:
        statuses = [http.post("/v1/audio/speech", json=body).status_code for _ in range(2)]
    assert statuses == [200, 429]
    with observed.http_for(broke["key"]) as http:
        assert http.post("/v1/audio/speech", json=body).status_code == 429
    after = scrape(observed)
    for reason, count in (("rate_limit", 1), ("budget", 1), ("concurrency", 0)):
        grew = value(after, "voxgate_rejections_total", reason=reason)
        grew -= value(before, "voxgate_rejections_total", reason=reason)
        assert grew == count, reason
    assert ("voxgate_rejections_total", frozenset({("reason", "engine_full")})) in after


def test_labels_stay_bounded(observed: Server) -> None:
    with observed.http() as http:
        assert http.get("/v1/audio/speech/some-random-suffix").status_code == 404
        assert http.get("/v1/models/whisper-1").status_code == 200
    text = httpx.get(
        f"{observed.base_url}/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    ).text
    assert "some-random-suffix" not in text
    assert "req_" not in text and observed.api_key not in text and ADMIN_KEY not in text
    assert 'endpoint="other"' in text and 'endpoint="/v1/models/{model}"' in text


def test_one_access_line_per_request(observed: Server) -> None:
    with observed.http() as http:
        response = http.post(
            "/v1/audio/speech",
            json={"model": "tts-1", "voice": "alloy", "input": SPOKEN, "response_format": "mp3"},
        )
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    wait_until(
        lambda: any(line["request_id"] == request_id for line in access_lines(observed)),
        "the access line",
    )
    (line,) = [line for line in access_lines(observed) if line["request_id"] == request_id]
    assert line["endpoint"] == "/v1/audio/speech" and line["model"] == "tts-1"
    assert line["status"] == 200 and line["method"] == "POST"
    assert line["key_id"].startswith("key_")
    assert line["duration_ms"] >= line["ttfb_ms"] > 0
    assert line["characters"] == len(SPOKEN) and line["audio_seconds"] > 0
    assert line["cost_usd"] > 0
    refused = httpx.post(
        f"{observed.base_url}/v1/audio/speech", headers={"Authorization": "Bearer sk-nope-1234"}
    )
    rid = refused.headers["x-request-id"]
    wait_until(lambda: any(x["request_id"] == rid for x in access_lines(observed)), "401 line")
    (line,) = [line for line in access_lines(observed) if line["request_id"] == rid]
    assert line["status"] == 401 and line["key_id"] is None


def test_the_log_holds_no_secret_and_no_body(observed: Server) -> None:
    created = create_key(observed)
    secret_input = "The passphrase is violet-otter-42."
    with observed.http_for(created["key"]) as http:
        response = http.post(
            "/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": secret_input}
        )
        assert response.status_code == 200
        assert http.get("/v1/models").status_code == 200
    with observed.http_for(created["key"] + "x") as http:
        assert http.get("/v1/models").status_code == 401
    rid = response.headers["x-request-id"]
    wait_until(lambda: any(x["request_id"] == rid for x in access_lines(observed)), "its line")
    log = observed.log()
    for secret in (created["key"], observed.api_key, ADMIN_KEY, "violet-otter"):
        assert secret not in log, secret
    assert created["id"] in log  # the key id is logged, its secret never


def test_text_access_lines_by_default(server: Server) -> None:
    with server.http() as http:
        response = http.get("/v1/models")
    rid = response.headers["x-request-id"]
    wait_until(lambda: rid in server.log(), "the access line")
    (line,) = [line for line in server.log().splitlines() if rid in line]
    assert "voxgate.access" in line and "GET /v1/models 200" in line
    assert "duration_ms=" in line and "key_id=" in line


def test_the_dashboard_shows_every_metric_and_only_real_ones() -> None:
    defined = {
        value._name
        for value in vars(metrics).values()
        if isinstance(value, Counter | Gauge | Histogram)
    }
    dashboard = json.loads((REPO / "docs" / "grafana-voxgate.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    used = {re.sub(r"_(total|bucket|sum|count)$", "", m) for m in re.findall(r"voxgate_\w+", exprs)}
    assert {name.removesuffix("_total") for name in defined} == used


@pytest.mark.parametrize(
    ("path", "label"),
    [
        ("/v1/audio/speech", "/v1/audio/speech"),
        ("/v1/models/whisper-1", "/v1/models/{model}"),
        ("/admin/keys/key_0123", "/admin/keys/{key_id}"),
        ("/admin/keys/key_0123/revoke", "/admin/keys/{key_id}/revoke"),
        ("/v1/audio/speech/", "other"),
        ("/wp-login.php", "other"),
    ],
)
def test_endpoint_labels(path: str, label: str) -> None:
    assert metrics.endpoint_label(path) == label


def test_json_log_lines() -> None:
    formatter = JsonFormatter()
    access = logging.makeLogRecord(
        {"name": "voxgate.access", "levelname": "INFO", "msg": "text", "access": {"status": 200}}
    )
    assert json.loads(formatter.format(access))["status"] == 200
    try:
        raise ValueError("boom")
    except ValueError:
        failure = logging.makeLogRecord(
            {"name": "voxgate", "levelname": "ERROR", "msg": "failed %s", "args": ("x",)}
        )
        failure.exc_info = sys.exc_info()
    line = json.loads(formatter.format(failure))
    assert line["message"] == "failed x" and "ValueError: boom" in line["exception"]
    assert line["level"] == "error" and line["logger"] == "voxgate"
