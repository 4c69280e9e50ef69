"""POST /v1/audio/speech: six formats, speed, SSE, real streaming, voices, and a round trip.

Audio is checked by decoding it with PyAV (the FFmpeg the server does not share a process with)
and, for the round trips, by transcribing it back with the server's own Whisper.
"""

from __future__ import annotations

import base64
import io
import json
import time
import wave

import av
import numpy as np
import openai
import pytest
from conftest import Server
from test_transcriptions import normalise, wer

SENTENCE = "The quick brown fox jumps over the lazy dog. It was a bright cold day in April."
# Piper joe reads SENTENCE in 4.6-4.9 s (it varies a little from run to run).
SENTENCE_SECONDS = (3.0, 8.0)

# Round trip tts-1 -> wav -> whisper-1, measured WER 0.0 on ROUND_TRIP_TEXT.
ROUND_TRIP_TEXT = (
    "Please remember to bring your passport and two pens to the meeting on Friday morning."
)
ROUND_TRIP_MAX_WER = 0.15

OPENAI_VOICES = (
    *("alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer"),
    *("verse", "marin", "cedar"),
)


def decode(data: bytes) -> tuple[float, int, str]:
    """(seconds, sample rate, codec) of the first audio stream in ``data``, fully decoded."""
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.audio[0]
        samples, rate = 0, 0
        for frame in container.decode(stream):
            samples += frame.samples
            rate = frame.sample_rate
        return samples / rate, rate, stream.codec_context.name


def pcm_seconds(data: bytes) -> float:
    """OpenAI's pcm: raw 24 kHz mono s16le, no header."""
    assert len(data) % 2 == 0
    return len(data) / 48_000


@pytest.mark.parametrize(
    ("response_format", "content_type", "codec"),
    [
        ("mp3", "audio/mpeg", "mp3"),
        ("opus", "audio/ogg", "opus"),
        ("aac", "audio/aac", "aac"),
        ("flac", "audio/flac", "flac"),
        ("wav", "audio/wav", "pcm_s16le"),
        ("pcm", "audio/pcm", None),
    ],
)
def test_formats(
    sdk: openai.OpenAI, response_format: str, content_type: str, codec: str | None
) -> None:
    with sdk.audio.speech.with_streaming_response.create(
        model="tts-1",
        voice="alloy",
        input=SENTENCE,
        response_format=response_format,  # type: ignore[arg-type]
    ) as response:
        assert response.headers["content-type"] == content_type
        assert response.headers["x-voxgate-model"] == "piper-joe"
        data = response.read()
    if codec is None:
        seconds = pcm_seconds(data)
        assert not data.startswith((b"RIFF", b"ID3", b"OggS", b"fLaC"))
        samples = np.frombuffer(data, dtype="<i2").astype(np.float64)
        assert np.sqrt(np.mean(samples**2)) > 300  # speech, not silence or noise floor
    else:
        seconds, rate, decoded_codec = decode(data)
        assert decoded_codec.startswith(codec)
        assert rate == (48_000 if response_format == "opus" else 22_050)
    assert SENTENCE_SECONDS[0] < seconds < SENTENCE_SECONDS[1]


def test_speed(sdk: openai.OpenAI) -> None:
    """speed=2 is clearly shorter than speed=1 (measured 4.8 s vs 3.0 s)."""
    lengths = {}
    for speed in (1.0, 2.0):
        response = sdk.audio.speech.create(
            model="tts-1", voice="echo", input=SENTENCE, response_format="wav", speed=speed
        )
        lengths[speed] = decode(response.read())[0]
    assert lengths[2.0] < 0.8 * lengths[1.0]


def test_sse(server: Server) -> None:
    """``data:`` lines: base64 ``speech.audio.delta`` events, then one ``speech.audio.done``."""
    body = {
        "model": "gpt-4o-mini-tts",
        "voice": "coral",
        "input": SENTENCE,
        "response_format": "mp3",
        "stream_format": "sse",
    }
    events = []
    with server.http() as client, client.stream("POST", "/v1/audio/speech", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line:
                assert line.startswith("data: "), line
                events.append(json.loads(line.removeprefix("data: ")))
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert len(events) >= 2
    done = events[-1]
    assert done["type"] == "speech.audio.done"
    characters = len(SENTENCE)
    assert done["usage"] == {
        "input_tokens": characters,
        "output_tokens": 0,
        "total_tokens": characters,
    }
    audio = b"".join(base64.b64decode(e["audio"], validate=True) for e in events[:-1])
    seconds, _, codec = decode(audio)
    assert codec.startswith("mp3")
    assert SENTENCE_SECONDS[0] < seconds < SENTENCE_SECONDS[1]


def test_long_input_streams(server: Server) -> None:
    """~4000 characters, many sentences: succeeds, and the first audio leaves long before the
    last (measured: first chunk after 2-3 % of the total time)."""
    sentence = "It was a bright cold day in April, and the clocks were striking thirteen. "
    text = (sentence * 60)[:4000].rsplit(" ", 1)[0]
    assert 3900 < len(text) <= 4000
    body = {"model": "tts-1", "voice": "nova", "input": text, "response_format": "mp3"}
    chunks = 0
    data = bytearray()
    with server.http() as client:
        started = time.monotonic()
        with client.stream("POST", "/v1/audio/speech", json=body) as response:
            assert response.status_code == 200
            first_chunk_at = None
            for chunk in response.iter_raw():
                if first_chunk_at is None:
                    first_chunk_at = time.monotonic() - started
                data += chunk
                chunks += 1
        total = time.monotonic() - started
    assert first_chunk_at is not None
    assert chunks >= 10
    assert first_chunk_at < 0.25 * total, (first_chunk_at, total)
    seconds, _, _ = decode(bytes(data))
    # 53 readings of the sentence: measured about 200 s of audio.
    assert 150 < seconds < 330


def test_openai_voice_names(sdk: openai.OpenAI) -> None:
    """Every OpenAI voice name is accepted by tts-1 (test_voices: which voice each picks)."""
    for voice in OPENAI_VOICES:
        response = sdk.audio.speech.create(
            model="tts-1",
            voice=voice,
            input="Hello there.",
            response_format="pcm",
        )
        assert 0.3 < pcm_seconds(response.read()) < 3.0, voice


def test_round_trip(sdk: openai.OpenAI) -> None:
    """tts-1 as wav, then whisper-1 on the bytes: the words come back."""
    audio = sdk.audio.speech.create(
        model="tts-1", voice="alloy", input=ROUND_TRIP_TEXT, response_format="wav"
    ).read()
    result = sdk.audio.transcriptions.create(
        model="whisper-1", file=("speech.wav", audio, "audio/wav")
    )
    assert wer(ROUND_TRIP_TEXT, result.text) <= ROUND_TRIP_MAX_WER, result.text


def test_espeak_german(sdk: openai.OpenAI) -> None:
    """espeak-ng with voice "de" speaks German: Whisper detects German and hears the words."""
    text = "Guten Morgen. Das Wetter ist heute sehr schön, und wir gehen in den Park."
    audio = sdk.audio.speech.create(
        model="espeak-ng", voice="de", input=text, response_format="flac"
    ).read()
    seconds, _, codec = decode(audio)
    assert codec == "flac" and 2.0 < seconds < 10.0
    result = sdk.audio.transcriptions.create(
        model="whisper-1", file=("speech.flac", audio, "audio/flac"), response_format="verbose_json"
    )
    assert result.language == "german", result.text
    # Measured 0.14: "Guten Morgen, das Metas heute sehr schön, und wir gehen in den Park."
    assert wer(text, result.text) <= 0.35, result.text
    assert {"guten", "morgen", "park"} <= set(normalise(result.text).split()), result.text


# --- files common libraries can read (issue 8, finding 10) ---------------------------------------


def test_short_wav_and_flac_carry_their_true_length(sdk: openai.OpenAI) -> None:
    """A short input is synthesised whole before the first byte leaves, so WAV's RIFF sizes
    and FLAC's STREAMINFO (sample count, MD5) are true: Python's ``wave`` and
    python-soundfile read them (streamed, they said 2^31-1 frames and failed to read)."""
    soundfile = pytest.importorskip("soundfile")
    wav = sdk.audio.speech.create(
        model="tts-1", voice="alloy", input=SENTENCE, response_format="wav"
    ).read()
    seconds, rate, _ = decode(wav)
    with wave.open(io.BytesIO(wav)) as reader:
        assert reader.getframerate() == rate == 22_050
        assert reader.getnframes() == round(seconds * rate)
    samples, sf_rate = soundfile.read(io.BytesIO(wav), dtype="int16")
    assert (len(samples), sf_rate) == (round(seconds * rate), rate)

    flac = sdk.audio.speech.create(
        model="tts-1", voice="alloy", input=SENTENCE, response_format="flac"
    ).read()
    seconds, rate, _ = decode(flac)
    info = soundfile.info(io.BytesIO(flac))
    assert (info.frames, info.samplerate) == (round(seconds * rate), rate)
    samples, _ = soundfile.read(io.BytesIO(flac), dtype="int16")
    assert len(samples) == info.frames
    md5 = flac[26:42]  # fLaC, block header (4), STREAMINFO's MD5 is its last 16 bytes
    assert md5 != bytes(16)
    assert SENTENCE_SECONDS[0] < seconds < SENTENCE_SECONDS[1]


# --- text with nothing to say (issue 8, finding 6) -----------------------------------------------


@pytest.mark.parametrize("model", ["tts-1", "espeak-ng"])
def test_pictographs_are_not_read_out(server: Server, model: str) -> None:
    """Emoji and other symbols are silent, as with OpenAI's voices; Piper and eSpeak used to
    read their Unicode names, so 4096 emoji became 818 s of audio. Input made only of them is
    a 400 on ``input``; between words they add no time."""
    voice = "alloy" if model == "tts-1" else "en-us"
    body = {"model": model, "voice": voice, "response_format": "pcm"}
    with server.http() as client:
        response = client.post("/v1/audio/speech", json={**body, "input": "😀👍🏽★♥" * 100})
        assert response.status_code == 400, response.headers
        error = response.json()["error"]
        assert (error["param"], error["code"]) == ("input", "invalid_value")
        plain = client.post("/v1/audio/speech", json={**body, "input": "Hello there."})
        decorated = client.post(
            "/v1/audio/speech", json={**body, "input": "Hello 😀😀😀 there. 🎉❤️"}
        )
    assert plain.status_code == decorated.status_code == 200
    assert pcm_seconds(decorated.content) < 1.2 * pcm_seconds(plain.content)
