"""OpenAI's newer transcription fields (``keywords``, ``languages``, ``known_speaker_*``) and
streamed text that leaves as soon as the first window is decoded, against the real server."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest
from conftest import Server, assert_error_envelope, audio_path

JFK = "en-jfk.flac"
GERMAN = "de-fleurs-000.ogg"
SONNET = "en-librivox-shakespeare-sonnet001.mp3"  # 53 s: two VAD windows
TIMEOUT_S = 600


def _post(http: httpx.Client, clip: str, data: dict[str, Any]) -> httpx.Response:
    with audio_path(clip).open("rb") as audio:
        return http.post(
            "/v1/audio/transcriptions", files={"file": (clip, audio)}, data=data, timeout=TIMEOUT_S
        )


def _multi(*pairs: tuple[str, str]) -> dict[str, Any]:
    """Form fields with repeated keys (``keywords[]`` twice …), as httpx takes them."""
    fields: dict[str, Any] = {"model": "whisper-1"}
    for key, value in pairs:
        fields.setdefault(key, []).append(value)
    return fields


def test_keywords_are_accepted_by_the_sdk_and_keep_the_transcript(sdk: openai.OpenAI) -> None:
    with audio_path(JFK).open("rb") as audio:
        result = sdk.audio.transcriptions.create(
            model="whisper-1", file=audio, keywords=["Americans", "country"]
        )
    assert "ask not what your country can do for you" in result.text.lower()


def test_keywords_bias_decoding_towards_them(http: httpx.Client, sdk: openai.OpenAI) -> None:
    """Whisper base writes "Northern Mariana's" and "call me Abby"; told the words, it writes
    them as the references spell them."""
    clip = "en-fleurs-006.ogg"
    plain = _post(http, clip, {"model": "whisper-1"}).json()["text"]
    hinted = _post(http, clip, _multi(("keywords[]", "Marianas")))
    assert hinted.status_code == 200, hinted.text
    assert "Marianas " not in plain
    assert "Northern Marianas Emergency" in hinted.json()["text"]
    meeting = "en-ami-ES2011a-headset0-40s-46s.wav"
    with audio_path(meeting).open("rb") as audio:
        unhinted = sdk.audio.transcriptions.create(model="whisper-1", file=audio)
    with audio_path(meeting).open("rb") as audio:
        named = sdk.audio.transcriptions.create(model="whisper-1", file=audio, keywords=["Abbie"])
    assert "Abbie" not in unhinted.text
    assert "Abbie" in named.text


def test_languages_restrict_detection(sdk: openai.OpenAI, server: Server) -> None:
    with audio_path(GERMAN).open("rb") as audio:
        free = sdk.audio.transcriptions.create(
            model="whisper-1", file=audio, response_format="verbose_json"
        )
    assert free.language == "german"
    # Among French and Spanish only, the German clip is read as one of them, through extra_body.
    with audio_path(GERMAN).open("rb") as audio:
        restricted = sdk.audio.transcriptions.create(
            model="whisper-1",
            file=audio,
            response_format="verbose_json",
            extra_body={"languages": ["fr", "es"]},
        )
    assert restricted.language in {"french", "spanish"}
    # The right language among the candidates wins.
    with audio_path(GERMAN).open("rb") as audio:
        picked = sdk.audio.transcriptions.create(
            model="whisper-1", file=audio, response_format="verbose_json", languages=["en", "de"]
        )
    assert picked.language == "german"
    assert picked.text == free.text


@pytest.mark.parametrize(
    ("pairs", "param", "code"),
    [
        ((("languages[]", "xx"),), "languages", "unsupported_value"),
        ((("languages[]", ""),), "languages", "unsupported_value"),
        ((("language", "de"), ("languages[]", "en")), "languages", "invalid_value"),
        (tuple(("languages[]", "en") for _ in range(21)), "languages", "invalid_value"),
        ((("keywords[]", ""),), "keywords", "invalid_value"),
        ((("keywords[]", "x" * 101),), "keywords", "invalid_value"),
        (tuple(("keywords[]", f"w{i}") for i in range(51)), "keywords", "invalid_value"),
        ((("keywords[]", "a\x00b"),), "keywords", "invalid_value"),
        ((("known_speaker_names[]", "agent"),), "known_speaker_names", "unsupported_value"),
        (
            (("known_speaker_references[]", "data:audio/wav;base64,UklGRg=="),),
            "known_speaker_references",
            "unsupported_value",
        ),
    ],
)
def test_bad_new_fields_are_clear_400s(
    http: httpx.Client, pairs: tuple[tuple[str, str], ...], param: str, code: str
) -> None:
    response = _post(http, JFK, _multi(*pairs))
    assert assert_error_envelope(response, 400, param=param)["code"] == code


def test_known_speaker_names_through_the_sdk(sdk: openai.OpenAI) -> None:
    with audio_path(JFK).open("rb") as audio, pytest.raises(openai.BadRequestError) as caught:
        sdk.audio.transcriptions.create(
            model="whisper-1", file=audio, known_speaker_names=["president"]
        )
    assert caught.value.param == "known_speaker_names"
    assert caught.value.code == "unsupported_value"
    assert "diarization" in caught.value.message


def test_first_streamed_text_leaves_before_the_last_window_is_decoded(server: Server) -> None:
    arrivals: list[tuple[float, dict[str, Any]]] = []
    with (
        server.http(timeout=TIMEOUT_S) as client,
        audio_path(SONNET).open("rb") as audio,
        client.stream(
            "POST",
            "/v1/audio/transcriptions",
            files={"file": (SONNET, audio)},
            data={"model": "whisper-1", "stream": "true"},
        ) as response,
    ):
        assert response.status_code == 200
        started = time.monotonic()
        for line in response.iter_lines():
            if line.startswith("data: "):
                arrivals.append((time.monotonic() - started, json.loads(line[6:])))
    deltas = [t for t, event in arrivals if event["type"] == "transcript.text.delta"]
    done_at, done = arrivals[-1]
    print(f"first delta at {deltas[0]:.1f} s, last at {deltas[-1]:.1f} s, done at {done_at:.1f} s")
    assert done["type"] == "transcript.text.done"
    assert "fairest creatures" in done["text"].lower()
    # The second window takes about as long as the first: the first text is out near halfway.
    assert deltas[0] < 0.8 * done_at, (deltas, done_at)
    assert deltas[-1] - deltas[0] > 0.15 * done_at
