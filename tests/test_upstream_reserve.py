"""Routed speech reserves its cost while the upstream attempt is already under way.

The reservation overlaps the upstream's latency instead of adding to it (see the pass-through
benchmark). The rule it must keep: nothing reaches the client before the cost is held, and a
request the budget refuses is a clean 429 that costs nothing, with the upstream request closed.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from conftest import (
    LedgerReader,
    Server,
    StartServer,
    assert_error_envelope,
    create_key,
    wait_until,
)
from fake_upstream import FakeUpstream

PER_M_CHARS = 15.0
TEXT = "Hello there, how are you today?"


@pytest.fixture(scope="module")
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream(speech_ms=400) as fake:
        yield fake


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('reserve-db') / 'voxgate.db'}"


@pytest.fixture(scope="module")
def gateway(
    up: FakeUpstream,
    database: str,
    start_server: StartServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    config = tmp_path_factory.mktemp("reserve-config") / "voxgate.toml"
    models = "".join(
        f'[[models]]\nid = "{model_id}"\nfeatures = ["text-to-speech"]\n'
        f'pricing = {{ input = {PER_M_CHARS} }}\nserve = ["fake:{upstream_model}"]\n\n'
        for model_id, upstream_model in (("r-tts", "tts-1"), ("r-drip", "drip-300"))
    )
    config.write_text(
        f'[providers.fake]\nbase_url = "{up.base_url}"\napi_key_env = "FAKE_KEY"\n\n{models}'
    )
    with start_server(
        VOXGATE_CONFIG_FILE=str(config),
        VOXGATE_DATABASE_URL=database,
        VOXGATE_LOCAL_ENGINES="off",
        FAKE_KEY="sk-fake-upstream",
    ) as server:
        yield server


def speak(server: Server, secret: str, model: str) -> httpx.Response:
    body = {"model": model, "voice": "alloy", "input": TEXT, "response_format": "pcm"}
    with server.http_for(secret) as http:
        return http.post("/v1/audio/speech", json=body)


def test_within_budget_the_speech_is_relayed_and_billed_its_characters(
    gateway: Server, up: FakeUpstream, database: str
) -> None:
    key, secret = create_key(database, "reserve-ok", budget_micros=1_000_000)
    up.reset()
    response = speak(gateway, secret, "r-tts")
    assert response.status_code == 200, response.text
    assert len(response.content) == 24_000 * 2 * 400 // 1000
    expected = round(len(TEXT) * PER_M_CHARS)  # micros: $15 per million characters
    with LedgerReader(database) as ledger:
        wait_until(lambda: ledger.key(key.id)["spent_micros"] == expected, "the settle")
        assert ledger.key(key.id)["reserved_micros"] == 0


def test_over_budget_is_a_429_that_costs_nothing_and_closes_the_upstream(
    gateway: Server, up: FakeUpstream, database: str
) -> None:
    key, secret = create_key(database, "reserve-poor", budget_micros=1)
    up.reset()
    # drip: the upstream's first chunk comes at once, the rest 300 ms apart; the refusal must
    # win over the first chunk, and the upstream request must be closed, not left running.
    response = speak(gateway, secret, "r-drip")
    error = assert_error_envelope(response, 429, None)
    assert error["code"] == "insufficient_quota"
    with LedgerReader(database) as ledger:
        assert ledger.key(key.id)["spent_micros"] == 0
        wait_until(lambda: ledger.key(key.id)["reserved_micros"] == 0, "no reservation left")
    attempts = [r for r in up.requests() if r["model"] == "drip-300"]
    for attempt in attempts:  # the attempt may or may not have reached it before the refusal
        wait_until(
            lambda a=attempt: next(r for r in up.requests() if r["request_id"] == a["request_id"])[
                "disconnected"
            ],
            "the upstream request closed",
            timeout=10,
        )
