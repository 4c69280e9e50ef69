"""What the load-and-fault run (bench/bench_load.py) counts as a missed target.

Pure logic, in process: the run itself is too long for the suite, but its verdicts decide
whether a release meets issue 8's targets, so each rule is pinned here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from bench_load import Replica, Result, classify, sse_done


def replicas(kills: list[float] | None = None) -> list[Replica]:
    replica = Replica(0, "r1", {}, Path("/dev/null"), 1)
    replica.kills = kills or []
    return [replica]


def result(**fields: object) -> Result:
    values: dict[str, object] = {"route": "speech", "key": "k", "replica": 0}
    values |= {"started": 10.0, "ended": 11.0} | fields
    return Result(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        ({"status": 200}, "2xx"),
        ({"status": 429, "error_code": "insufficient_quota"}, "4xx"),
        ({"status": 500, "error_code": "internal_error"}, "miss: 5xx"),
        (
            {"status": 503, "error_code": "server_overloaded", "retry_after": "3"},
            "503 shed (documented)",
        ),
        ({"status": 503, "error_code": "server_overloaded"}, "miss: 5xx"),  # no Retry-After
        ({"status": 503}, "miss: 5xx"),  # no envelope
        ({"status": 503, "error_code": "redis_unavailable"}, "miss: 503 outside a fault"),
        (
            {"status": 503, "error_code": "redis_unavailable", "retry_after": "1"},
            "miss: 503 outside a fault",
        ),
        ({"status": 200, "error": "RemoteProtocolError"}, "miss: cut response"),
        ({"status": 200, "error": "incomplete body"}, "miss: cut response"),
        ({"error": "ConnectError"}, "miss: connection error"),
        ({"error": "timeout"}, "miss: timeout"),
    ],
)
def test_outcomes_without_faults(fields: dict[str, object], kind: str) -> None:
    assert classify(result(**fields), replicas(), []) == kind


def test_dependency_503_is_documented_only_while_a_fault_lasts() -> None:
    down = result(status=503, error_code="redis_unavailable", retry_after="1")
    assert classify(down, replicas(), [(10.5, 20.0)]) == "503 dependency down (documented)"
    assert classify(down, replicas(), [(5.0, 9.0)]) == "miss: 503 outside a fault"
    without_retry_after = result(status=503, error_code="redis_unavailable")
    assert classify(without_retry_after, replicas(), [(10.5, 20.0)]) == (
        "503 dependency down (documented)"
    )


def test_only_requests_in_flight_at_the_kill_are_excused() -> None:
    cut = result(status=200, error="RemoteProtocolError")
    assert classify(cut, replicas(kills=[10.5]), []) == "cut by SIGKILL (expected)"
    assert classify(cut, replicas(kills=[30.0]), []) == "miss: cut response"
    assert classify(result(error="ConnectError"), replicas(kills=[5.0]), []) == (
        "miss: connection error"
    )
    # A request that completed although its replica died afterwards is judged normally.
    assert classify(result(status=500), replicas(kills=[10.5]), []) == "miss: 5xx"


def test_sse_body_must_end_with_its_done_event() -> None:
    done = sse_done("speech.audio.done")
    delta = b'data: {"type": "speech.audio.delta", "audio": "AA=="}\n\n'
    assert done(delta + b'data: {"type": "speech.audio.done", "usage": {}}\n\n')
    assert not done(delta)
    assert not done(delta + b'data: {"type": "speech.au')
    assert not done(b"")
