"""Long audio through a real server: windowed decoding, stitched timelines, chunking_strategy.

The long file (75 s) is built in the test from the real English clips of tests/data/audio
with a second of silence between them (bench/long_audio.py), so where each clip sits is known.
The server runs with 25 s windows, so the file is transcribed in four windows and every
stitched time past the first window depends on its offset; windows over 30 s (the batched
path) are exercised on the default server by the chunking_strategy test. Memory is
measured by bench/bench_long_audio.py, not here (an RSS bound would depend on the machine).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import Server, StartServer, assert_error_envelope, audio_path, sse_events
from test_transcriptions import normalise, wer

from voxgate.audio import AudioMeter, pcm_pieces
from voxgate.audio_windows import AUTO, Stitcher, Window, Windower
from voxgate.errors import AudioTooLong, InvalidAudio
from voxgate.providers.base import Segment, Word

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from long_audio import LongFile, build

WINDOW_S = 25
LONG_S = 75.0
LONG_MAX_WER = 0.15


@pytest.fixture(scope="module")
def long_file(tmp_path_factory: pytest.TempPathFactory) -> LongFile:
    return build(tmp_path_factory.mktemp("long") / "long.ogg", LONG_S)


@pytest.fixture(scope="module")
def windowed(start_server: StartServer) -> Iterator[Server]:
    with start_server(VOXGATE_WHISPER_WINDOW_S=str(WINDOW_S)) as server:
        yield server


def _post(server: Server, path: Path, **fields: Any) -> httpx.Response:
    with server.http(timeout=1800) as http, path.open("rb") as upload:
        return http.post(
            "/v1/audio/transcriptions",
            files={"file": (path.name, upload)},
            data={"model": "whisper-1", **fields},
        )


def _overlaps(segment: dict[str, Any], start: float, end: float) -> bool:
    return bool(segment["start"] < end and segment["end"] > start)


def test_a_long_file_is_stitched_in_order_over_its_whole_length(
    windowed: Server, long_file: LongFile
) -> None:
    response = _post(
        windowed,
        long_file.path,
        response_format="verbose_json",
        **{"timestamp_granularities[]": ["word", "segment"]},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["duration"] == pytest.approx(long_file.duration_s, abs=0.1)
    segments, words = body["segments"], body["words"]
    # Ids run on across windows; times and seek only move forward and stay in the audio.
    assert [s["id"] for s in segments] == list(range(len(segments)))
    starts, ends = [s["start"] for s in segments], [s["end"] for s in segments]
    assert starts == sorted(starts) and ends == sorted(ends)
    assert all(0 <= s["start"] <= s["end"] <= body["duration"] for s in segments)
    seeks = [s["seek"] for s in segments]
    assert seeks == sorted(seeks) and seeks[-1] > 2 * WINDOW_S * 100  # offset by the window
    # Every clip is covered by a segment (no window, no utterance dropped), the last one too.
    missed = [
        p.clip
        for p in long_file.placed
        if not any(_overlaps(s, p.start_s, p.end_s) for s in segments)
    ]
    assert not missed, missed
    # Word times are on the file's clock: each clip's longest word is heard inside that clip.
    word_starts = [w["start"] for w in words]
    assert word_starts == sorted(word_starts)
    checked = 0
    for placed in long_file.placed:
        longest = max(normalise(placed.text).split(), key=len)
        heard = [w for w in words if normalise(w["word"]) == longest]
        if heard:
            checked += 1
            assert any(placed.start_s - 0.5 <= w["start"] <= placed.end_s for w in heard), (
                placed,
                heard,
            )
    assert checked >= len(long_file.placed) * 0.7
    assert wer(long_file.reference, body["text"]) <= LONG_MAX_WER, body["text"]


def test_a_long_file_streams_to_its_end(windowed: Server, long_file: LongFile) -> None:
    """Streamed, the upload is still read after the response has begun (the form stays open
    until the last window): the text reaches the last clip and the deltas make up the text."""
    with (
        windowed.http(timeout=1800) as http,
        long_file.path.open("rb") as upload,
        http.stream(
            "POST",
            "/v1/audio/transcriptions",
            files={"file": ("long.ogg", upload)},
            data={"model": "whisper-1", "stream": "true"},
        ) as response,
    ):
        assert response.status_code == 200
        events = sse_events(response)
    deltas = [e["delta"] for e in events if e["type"] == "transcript.text.delta"]
    done = events[-1]
    assert done["type"] == "transcript.text.done"
    assert len(deltas) >= len(long_file.placed) // 2
    assert normalise("".join(deltas)) == normalise(done["text"])
    assert done["usage"]["seconds"] == pytest.approx(long_file.duration_s, abs=1)
    last = normalise(long_file.placed[-1].text).split()
    assert " ".join(last[-3:]) in normalise(done["text"])


# --- chunking_strategy ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"chunking_strategy": "manual"},
        {"chunking_strategy": "{broken"},
        {"chunking_strategy": '{"type": "server_vad", "threshold": 2}'},
        {"chunking_strategy[type]": "client_vad"},
        {"chunking_strategy[threshold]": "0.5"},
        {"chunking_strategy[type]": "server_vad", "chunking_strategy[threshold]": "1.5"},
        {"chunking_strategy[type]": "server_vad", "chunking_strategy[threshold]": "loud"},
        {"chunking_strategy[type]": "server_vad", "chunking_strategy[prefix_padding_ms]": "-1"},
        {"chunking_strategy[type]": "server_vad", "chunking_strategy[silence_duration_ms]": "1e9"},
        {"chunking_strategy[type]": "server_vad", "chunking_strategy[silence_ms]": "200"},
    ],
    ids=[
        "unknown-name",
        "broken-json",
        "json-threshold",
        "unknown-type",
        "no-type",
        "threshold-above-1",
        "threshold-not-a-number",
        "negative-padding",
        "absurd-silence",
        "unknown-key",
    ],
)
def test_a_bad_chunking_strategy_is_a_400_naming_it(server: Server, fields: dict[str, str]) -> None:
    response = _post(server, audio_path("en-speechrecognition-one-two-three.wav"), **fields)
    error = assert_error_envelope(response, 400, "chunking_strategy")
    assert "chunking_strategy" in error["message"]
    assert "request id" in error["message"]


def test_the_sdk_sends_both_chunking_strategies(server: Server) -> None:
    sdk = server.sdk()
    strategies: list[Any] = [
        "auto",
        {
            "type": "server_vad",
            "threshold": 0.4,
            "prefix_padding_ms": 200,
            "silence_duration_ms": 300,
        },
    ]
    for strategy in strategies:
        with audio_path("en-jfk.flac").open("rb") as upload:
            result = sdk.audio.transcriptions.create(
                model="whisper-1", file=upload, chunking_strategy=strategy
            )
        assert "ask not what your country can do for you" in normalise(result.text)


def test_server_vad_decides_how_the_audio_is_chunked(server: Server, tmp_path: Path) -> None:
    """On one window of 45 s, the default decodes each utterance on its own; a 3 s
    ``silence_duration_ms`` joins utterances a second apart into longer chunks (fewer seeks),
    and the text stays the same."""
    shorter = build(tmp_path / "window.ogg", 45)
    by_strategy = {}
    for name, fields in {
        "auto": {"chunking_strategy": "auto"},
        "joined": {
            "chunking_strategy[type]": "server_vad",
            "chunking_strategy[silence_duration_ms]": "3000",
        },
    }.items():
        response = _post(server, shorter.path, response_format="verbose_json", **fields)
        assert response.status_code == 200, response.text
        by_strategy[name] = response.json()
    chunks = {
        name: len({s["seek"] for s in body["segments"]}) for name, body in by_strategy.items()
    }
    assert chunks["joined"] < chunks["auto"], chunks
    for body in by_strategy.values():
        assert wer(shorter.reference, body["text"]) <= LONG_MAX_WER, body["text"]


# --- the windower and stitcher in process (engine-free) ---------------------------------------


def test_windows_are_cut_in_silences_and_lose_no_sample(long_file: LongFile) -> None:
    with long_file.path.open("rb") as source:
        pieces = list(pcm_pieces(source, max_s=3600))
    windows = list(Windower(AUTO, window_s=WINDOW_S).windows(iter(pieces)))
    whole = np.concatenate(pieces)
    assert np.array_equal(np.concatenate([w.audio for w in windows]), whole)
    assert len(windows) >= LONG_S // WINDOW_S
    for before, after in itertools.pairwise(windows):
        assert after.offset_s == pytest.approx(before.offset_s + before.duration_s)
        assert WINDOW_S * 0.75 <= before.duration_s <= WINDOW_S
        # The cut is in a pause: around it the audio is far quieter than speech on average.
        cut = round(after.offset_s * 16000)
        around = whole[cut - 800 : cut + 800]
        assert _rms(around) < 0.1 * _rms(whole), after.offset_s


def _rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))


def test_the_stitcher_moves_ids_times_seek_and_words_by_the_window() -> None:
    window = Window(120.0, np.zeros(16000 * 30, dtype=np.float32))
    stitcher = Stitcher()
    word = Word(" Hi", 1.0, 1.5, 0.9)
    first = stitcher.place(Segment(0, 0, 1.0, 2.0, " Hi.", words=(word,)), window)
    second = stitcher.place(Segment(0, 500, 5.0, 31.0, " Bye."), window)
    assert (first.id, first.seek, first.start, first.end) == (0, 12000, 121.0, 122.0)
    assert (first.words[0].start, first.words[0].end) == (121.0, 121.5)
    # Ids run on; a time past the window's audio is clamped to its end.
    assert (second.id, second.seek, second.start, second.end) == (1, 12500, 125.0, 150.0)


@pytest.mark.parametrize(
    "clip",
    [
        "en-jfk.flac",
        "en-fleurs-000.ogg",
        "en-librivox-shakespeare-sonnet001.mp3",
        "en-ami-ES2011a-headset0-40s-46s.wav",
    ],
)
def test_the_meter_reads_packet_durations_as_long_as_the_decoded_audio(clip: str) -> None:
    with audio_path(clip).open("rb") as source:
        meter = AudioMeter(source, max_s=3600)
        for _ in meter.run():
            pass
        decoded = sum(len(piece) for piece in pcm_pieces(source, max_s=3600)) / 16000
    assert meter.measured_s == pytest.approx(decoded, abs=0.1)


def test_the_meter_refuses_past_the_cap_and_decoding_stops_past_the_measure() -> None:
    with audio_path("en-librivox-shakespeare-sonnet001.mp3").open("rb") as source:
        with pytest.raises(AudioTooLong):
            for _ in AudioMeter(source, max_s=30).run():
                pass
        # A file that decodes to more than its packets stated is refused, not transcribed on.
        with pytest.raises(InvalidAudio) as refused:
            for _ in pcm_pieces(source, max_s=3600, measured_s=20.0):
                pass
    assert refused.value.param == "file" and "more audio" in str(refused.value)
