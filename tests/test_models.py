"""GET /v1/models (OpenAI, authenticated) and GET /api/models (CometAPI catalog, public)."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from conftest import Server

LOCAL_IDS = {"whisper-base", "piper-joe", "hibari-heart", "espeak-ng"}
ALIASES = {
    "whisper-1": "whisper-base",
    "gpt-4o-transcribe": "whisper-base",
    "gpt-4o-mini-transcribe": "whisper-base",
    "tts-1": "piper-joe",
    "tts-1-hd": "piper-joe",
    "gpt-4o-mini-tts": "piper-joe",
}
RECORD_KEYS = {
    "id",
    "code",
    "provider",
    "provider_code",
    "name",
    "model_type",
    "features",
    "endpoints",
    "pricing",
    "voices",
    "languages",
}
PRICING_KEYS = {"currency", "input", "output", "per_request", "per_second"}


def catalog(server: Server, **params: Any) -> dict[str, Any]:
    """GET /api/models without any credentials."""
    response = httpx.get(f"{server.base_url}/api/models", params=params, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def by_id(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {record["id"]: record for record in records}


# --- /v1/models -----------------------------------------------------------------------------


def test_sdk_list(sdk: openai.OpenAI) -> None:
    models = list(sdk.models.list())
    ids = [m.id for m in models]
    assert len(ids) == len(set(ids))
    assert set(ids) == LOCAL_IDS | set(ALIASES)
    for model in models:
        assert model.object == "model"
        assert model.owned_by == "voxgate"
        assert isinstance(model.created, int)


def test_sdk_retrieve_alias(sdk: openai.OpenAI) -> None:
    model = sdk.models.retrieve("whisper-1")
    assert model.id == "whisper-1"
    assert model.object == "model"
    assert model.owned_by == "voxgate"


def test_sdk_retrieve_unknown(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("whisper-9000")


def test_v1_models_needs_auth(server: Server) -> None:
    response = httpx.get(f"{server.v1}/models", timeout=30)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "invalid_request_error"


# --- /api/models ----------------------------------------------------------------------------


def test_catalog_envelope_without_auth(server: Server) -> None:
    body = catalog(server)
    assert set(body) == {"success", "page", "page_size", "total", "data"}
    assert body["success"] is True
    # Default (page 0): everything, page_size reported as 0.
    assert body["page"] == 0 and body["page_size"] == 0
    assert body["total"] == len(body["data"]) == len(LOCAL_IDS) + len(ALIASES)
    assert set(by_id(body["data"])) == LOCAL_IDS | set(ALIASES)


def test_catalog_page_zero_returns_all(server: Server) -> None:
    body = catalog(server, page=0, page_size=2)
    assert body["page"] == 0 and body["page_size"] == 0
    assert len(body["data"]) == body["total"] == 10


def test_catalog_paging(server: Server) -> None:
    everything = [r["id"] for r in catalog(server)["data"]]
    pages = []
    for page in (1, 2, 3, 4):
        body = catalog(server, page=page, page_size=3)
        assert body["page"] == page and body["page_size"] == 3
        assert body["total"] == len(everything)
        pages.append([r["id"] for r in body["data"]])
    assert [len(p) for p in pages] == [3, 3, 3, 1]
    assert [i for p in pages for i in p] == everything
    assert catalog(server, page=5, page_size=3)["data"] == []


def test_catalog_filters(server: Server) -> None:
    speech = catalog(server, feature="text-to-speech")
    speakers = {"piper-joe", "hibari-heart", "espeak-ng", "tts-1", "tts-1-hd", "gpt-4o-mini-tts"}
    assert set(by_id(speech["data"])) == speakers
    assert speech["total"] == 6
    assert all("/v1/audio/speech" in r["endpoints"] for r in speech["data"])

    audio = catalog(server, model_type="audio")
    assert audio["total"] == 10
    assert catalog(server, model_type="image")["total"] == 0

    transcribe = catalog(server, feature="speech-to-text", provider="local")
    listeners = {"whisper-base", "whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"}
    assert set(by_id(transcribe["data"])) == listeners


def test_catalog_records(server: Server) -> None:
    records = by_id(catalog(server)["data"])
    for record_id, record in records.items():
        assert set(record) >= RECORD_KEYS, record_id
        assert record["code"] == record_id
        assert record["provider"] == "voxgate" and record["provider_code"] == "local"
        assert record["name"] and record["model_type"] == "audio"
        assert set(record["pricing"]) >= PRICING_KEYS
        assert record["pricing"]["currency"] == "USD"
        assert record["alias_of"] == ALIASES.get(record_id)
    for alias, target in ALIASES.items():
        assert records[alias]["features"] == records[target]["features"]
        assert records[alias]["endpoints"] == records[target]["endpoints"]

    whisper = records["whisper-1"]
    assert whisper["pricing"]["per_second"] == pytest.approx(0.0001)
    assert whisper["endpoints"] == ["/v1/audio/transcriptions", "/v1/audio/translations"]
    assert {"en", "de", "zh", "ja"} <= set(whisper["languages"])
    assert whisper["voices"] == []

    assert records["tts-1"]["pricing"]["input"] == 15
    assert records["tts-1-hd"]["pricing"]["input"] == 30
    assert records["tts-1"]["endpoints"] == ["/v1/audio/speech"]
    # tts-1 speaks with joe and, for the OpenAI names its voice claims, hibari's heart.
    assert [v["id"] for v in records["tts-1"]["voices"]] == ["joe", "heart"]
    heart = records["tts-1"]["voices"][1]
    assert {"nova", "shimmer", "coral", "sage"} <= set(heart["openai_voices"])
    assert records["hibari-heart"]["pricing"]["input"] == records["piper-joe"]["pricing"]["input"]
    assert records["tts-1"]["languages"] == ["en"]

    espeak = records["espeak-ng"]
    voice_ids = [v["id"] for v in espeak["voices"]]
    assert len(voice_ids) > 100
    assert {"de", "en-us", "fr", "es"} <= set(voice_ids)
    assert all(v["name"] for v in espeak["voices"])
    assert espeak["languages"] == voice_ids  # one voice per language
