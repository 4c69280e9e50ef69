"""Two English voices: Piper's joe (male) and hibari's heart (female), picked by OpenAI voice name.

The server tests synthesise with the real engines and check the audio three ways: which model
answered (``x-voxgate-model``), how high the voice is (median pitch), and what Whisper hears
(round trip WER). The catalog tests check the one voice mapping in catalog.toml in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jiwer
import numpy as np
import openai
import pytest
from conftest import Server, assert_error_envelope
from test_transcriptions import normalise

from voxgate.catalog import OPENAI_VOICES, Catalog
from voxgate.concurrency import ENGINE_NICENESS, SPEECH_NICENESS, iterate_in_thread
from voxgate.errors import InvalidRequest

FEMALE = {"coral", "marin", "nova", "sage", "shimmer"}
ALIASES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")

# Measured through the server on a busy machine: corpus WER 0.012 for joe (one "late" heard as
# "light"), 0.000 for heart. The bar leaves room for Whisper's run-to-run noise, not for a voice
# that mumbles: three wrong words in these 86 fail it.
ROUND_TRIP = (
    "Please remember to bring your passport and two pens to the meeting on Friday morning.",
    "The weather will be cloudy this afternoon, with light rain expected after six.",
    "Our library opens at nine and closes early on public holidays.",
    "She bought three apples, a loaf of bread and a bottle of milk at the corner shop.",
    "If the train is late again, we will take a taxi to the airport.",
    "Turn left at the second traffic light, then keep going until you see the old church.",
)
ROUND_TRIP_MAX_WER = 0.035


def speak(server: Server, model: str, voice: str, text: str) -> httpx.Response:
    response = httpx.post(
        f"{server.v1}/audio/speech",
        headers={"Authorization": f"Bearer {server.api_key}"},
        json={"model": model, "voice": voice, "input": text, "response_format": "pcm"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    return response


def median_pitch_hz(pcm: bytes, rate: int = 24_000) -> float:
    """Median F0 of the voiced 40 ms frames (autocorrelation peak between 60 and 400 Hz)."""
    samples = np.frombuffer(pcm, np.int16).astype(np.float32)
    frame = rate // 25
    pitches = []
    for start in range(0, len(samples) - frame, frame // 2):
        window = samples[start : start + frame] - samples[start : start + frame].mean()
        if np.sqrt(np.mean(window**2)) < 500:  # silence and quiet consonants
            continue
        correlation = np.correlate(window, window, "full")[frame - 1 :]
        low, high = rate // 400, rate // 60
        lag = low + int(np.argmax(correlation[low:high]))
        if correlation[lag] > 0.5 * correlation[0]:
            pitches.append(rate / lag)
    assert len(pitches) > 20, "too little voiced audio to measure a pitch"
    return float(np.median(pitches))


def test_openai_names_pick_the_voice(server: Server) -> None:
    """Each alias sends OpenAI's female-sounding names to hibari, the others to Piper."""
    asked = [("tts-1", voice) for voice in OPENAI_VOICES]
    asked += [(alias, voice) for alias in ALIASES[1:] for voice in ("nova", "alloy")]
    for alias, voice in asked:
        response = speak(server, alias, voice, "Hello there.")
        expected = "hibari-heart" if voice in FEMALE else "piper-joe"
        assert response.headers["x-voxgate-model"] == expected, (alias, voice)
        assert 0.3 < len(response.content) / 48_000 < 3.0, (alias, voice)
    # The engine voice ids work through the alias too, and case does not matter.
    assert speak(server, "tts-1", "Heart", "Hi.").headers["x-voxgate-model"] == "hibari-heart"
    assert speak(server, "tts-1", "joe", "Hi.").headers["x-voxgate-model"] == "piper-joe"


def test_each_model_keeps_its_own_voice(server: Server) -> None:
    """Asked by model id, a model answers every OpenAI name with its own voice."""
    assert speak(server, "hibari-heart", "alloy", "Hi.").headers["x-voxgate-model"] == (
        "hibari-heart"
    )
    assert speak(server, "piper-joe", "nova", "Hi.").headers["x-voxgate-model"] == "piper-joe"


def test_heart_is_a_higher_voice_than_joe(server: Server) -> None:
    """The female voice really is: measured median pitch 192 Hz for heart, 90 Hz for joe."""
    text = ROUND_TRIP[0]
    heart = median_pitch_hz(speak(server, "tts-1", "nova", text).content)
    joe = median_pitch_hz(speak(server, "tts-1", "onyx", text).content)
    assert heart > 150 > 130 > joe, (heart, joe)


@pytest.mark.parametrize(("voice", "model"), [("alloy", "piper-joe"), ("nova", "hibari-heart")])
def test_round_trip(sdk: openai.OpenAI, voice: str, model: str) -> None:
    """Synthesise six sentences as wav, transcribe them with whisper-1: the words come back."""
    references, heard = [], []
    for text in ROUND_TRIP:
        response = sdk.audio.speech.with_raw_response.create(
            model="tts-1", voice=voice, input=text, response_format="wav"
        )
        assert response.headers["x-voxgate-model"] == model
        result = sdk.audio.transcriptions.create(
            model="whisper-1", file=("speech.wav", response.content, "audio/wav")
        )
        references.append(normalise(text))
        heard.append(normalise(result.text))
    assert jiwer.wer(references, heard) <= ROUND_TRIP_MAX_WER, heard


def test_hibari_streams_sentence_by_sentence(server: Server) -> None:
    """A long input's first audio leaves long before the last: hibari streams like Piper."""
    text = "It was a bright cold day in April, and the clocks were striking thirteen. " * 30
    started = time.monotonic()
    first_at, chunks, size = 0.0, 0, 0
    with httpx.stream(
        "POST",
        f"{server.v1}/audio/speech",
        headers={"Authorization": f"Bearer {server.api_key}"},
        json={"model": "hibari-heart", "voice": "heart", "input": text, "response_format": "pcm"},
        timeout=300,
    ) as response:
        assert response.status_code == 200
        for data in response.iter_bytes():
            if chunks == 0:
                first_at = time.monotonic() - started
            chunks += 1
            size += len(data)
    total = time.monotonic() - started
    assert chunks >= 10
    assert first_at < 0.25 * total, (first_at, total)
    assert 60 < size / 48_000 < 300  # 30 readings of a 4 s sentence


def test_unknown_voice_names_every_voice_of_the_alias(server: Server) -> None:
    response = httpx.post(
        f"{server.v1}/audio/speech",
        headers={"Authorization": f"Bearer {server.api_key}"},
        json={"model": "tts-1", "voice": "nobody", "input": "Hi."},
        timeout=30,
    )
    error = assert_error_envelope(response, 400, param="voice")
    assert error["code"] == "unsupported_value"
    assert "joe, heart" in error["message"]


# --- engines sharing the cores ----------------------------------------------------------------


def thread_niceness(pid: int) -> dict[int, int]:
    """Nice value -> how many of the process's threads run at it (from /proc/<pid>/task)."""
    counts: dict[int, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that just ended
            nice = int((task / "stat").read_text().rsplit(")", 1)[1].split()[16])
            counts[nice] = counts.get(nice, 0) + 1
    return counts


def test_speech_engines_outrank_whisper(server: Server) -> None:
    """The event loop at 0, the speech engines' pools at 5, Whisper's at 10 (concurrency.py).

    Piper's onnxruntime pool is created when it loads, CTranslate2's OpenMP pool on Whisper's
    warm-up; both inherit the nice value of the thread that made them.
    """
    speak(server, "tts-1", "alloy", "Hello there.")
    counts = thread_niceness(server.process.pid)
    assert counts.get(0, 0) >= 1 and counts.get(SPEECH_NICENESS, 0) >= 1, counts
    assert counts.get(ENGINE_NICENESS, 0) >= 2, counts  # CTranslate2's worker and OpenMP


def test_iterate_in_thread_runs_at_the_given_niceness() -> None:
    def niceness() -> Iterator[int]:
        yield os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    async def scenario() -> tuple[list[int], list[int]]:
        speech = [n async for n in iterate_in_thread(niceness, niceness=SPEECH_NICENESS)]
        return speech, [n async for n in iterate_in_thread(niceness)]

    assert asyncio.run(scenario()) == ([SPEECH_NICENESS], [ENGINE_NICENESS])


# --- the catalog's voice mapping, in-process ------------------------------------------------


def test_shipped_catalog_maps_every_openai_name_once() -> None:
    catalog = Catalog.load()
    for alias in ALIASES:
        entry = catalog.get(alias)
        for voice in OPENAI_VOICES:
            resolved = entry.for_voice(voice)
            assert resolved.id == alias and resolved.pricing == entry.pricing
            assert resolved.model.id == ("hibari-heart" if voice in FEMALE else "piper-joe")
            assert resolved.resolve_voice(voice) == ("heart" if voice in FEMALE else "joe")
    with pytest.raises(InvalidRequest) as raised:
        catalog.get("tts-1").for_voice("nobody")
    assert raised.value.param == "voice"


CATALOG_HEAD = """
[[models]]
id = "a"
name = "A"
provider = "local"
engine = "piper"
features = ["text-to-speech"]
default_voice = "x"
voices = [{ id = "x", name = "X", openai = ["nova"] }]

[[models]]
id = "b"
name = "B"
provider = "local"
engine = "hibari"
features = ["text-to-speech"]
default_voice = "y"
"""


@pytest.mark.parametrize(
    ("b_voices", "error"),
    [
        ('[{ id = "y", name = "Y", openai = ["nova"] }]', "claimed by both a and b"),
        ('[{ id = "y", name = "Y" }, { id = "X", name = "X too" }]', "claimed by both a and b"),
        ('[{ id = "y", name = "Y", openai = ["novaa"] }]', "not OpenAI voice names: novaa"),
    ],
)
def test_catalog_refuses_an_ambiguous_mapping(tmp_path: Path, b_voices: str, error: str) -> None:
    path = tmp_path / "catalog.toml"
    alias = '[[aliases]]\nid = "tts-1"\ntarget = "a"\nvoices_from = ["b"]\n'
    path.write_text(f"{CATALOG_HEAD}voices = {b_voices}\n\n{alias}")
    with pytest.raises(ValueError, match=error):
        Catalog.load(path)
