"""The chunker's pure parts (services/chunked.py, services/stitching.py, audio_windows): where long
audio is cut, which fields each piece carries, and how the pieces' answers are stitched and
rendered. No server; the cut test runs Silero VAD on a real recording.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from typing import Any

import numpy as np
import pytest
from conftest import audio_path

from voxgate import schemas
from voxgate.audio import WHISPER_SAMPLE_RATE, pcm_pieces
from voxgate.audio_windows import AUTO, Windower
from voxgate.providers.config import ProviderSpec
from voxgate.services.chunked import in_order, must_split, piece_fields, piece_s
from voxgate.services.stitching import PieceAnswer, parse_answer, render, stitch

MIB = 1024 * 1024


def _verbose(text: str, segments: list[tuple[float, float, str]], words: Any = None) -> bytes:
    body: dict[str, Any] = {
        "task": "transcribe",
        "language": "english",
        "duration": 0.0,
        "text": text,
        "segments": [
            {"id": n, "seek": 0, "start": s, "end": e, "text": t, "tokens": [1, 2]}
            for n, (s, e, t) in enumerate(segments)
        ],
    }
    if words is not None:
        body["words"] = [{"word": w, "start": s, "end": e} for w, s, e in words]
    return json.dumps(body).encode()


def _form(**fields: Any) -> schemas.TranscriptionForm:
    return schemas.TranscriptionForm.model_validate({"model": "m", **fields})


def test_windower_cuts_fall_in_quiet_audio() -> None:
    """Every cut of the long recording lands where the audio is near silent (before: the
    middle of a VAD gap, which once fell on a short burst VAD ignores, RMS 0.35)."""
    with audio_path("en-ljspeech-LJ001-0001-to-0032-long.flac").open("rb") as source:
        pcm = np.concatenate(list(pcm_pieces(source, max_s=3600)))
    loud = float(np.sqrt(np.mean(np.square(pcm))))
    windows = list(Windower(AUTO, window_s=29.5).windows(iter([pcm])))
    assert len(windows) >= 8
    for window in windows[:-1]:
        at = round((window.offset_s + window.duration_s) * WHISPER_SAMPLE_RATE)
        around = pcm[at - 160 : at + 160]
        assert float(np.sqrt(np.mean(np.square(around)))) < 0.05 * loud, at


def test_piece_length_fits_the_size_and_duration_caps() -> None:
    spec = ProviderSpec(base_url="http://x", max_upload_mb=1)
    # Uncompressed 16-bit 16 kHz audio of that length fits 1 MiB with a margin.
    assert piece_s(spec) * 2 * WHISPER_SAMPLE_RATE <= 0.9 * MIB
    assert piece_s(ProviderSpec(base_url="http://x", max_audio_s=45)) == 45
    assert piece_s(ProviderSpec(base_url="http://x")) == 600  # chunk_s; 25 MB allows more


def test_when_an_upload_is_split() -> None:
    spec = ProviderSpec(base_url="http://x", max_upload_mb=1, max_audio_s=60)
    assert not must_split(spec, MIB, 59.0, chunking=False)
    assert must_split(spec, MIB + 1, 10.0, chunking=False)
    assert must_split(spec, 1000, 61.0, chunking=False)
    assert not must_split(spec, 1000, 20.0, chunking=True)  # one piece anyway
    assert must_split(spec, 1000, 40.0, chunking=True)  # longer than one piece (29.5 s)


def test_piece_fields_replace_model_and_set_the_format_voxgate_stitches() -> None:
    fields = [
        ("model", "acme-whisper"),
        ("language", "en"),
        ("response_format", "srt"),
        ("timestamp_granularities[]", "word"),
        ("include[]", "logprobs"),
        ("chunking_strategy[type]", "server_vad"),
        ("stream", "false"),
        ("prompt", "Gutenberg"),
    ]
    assert piece_fields(fields, "whisper-1", "verbose_json", stream=False) == [
        ("model", "whisper-1"),
        ("language", "en"),
        ("timestamp_granularities[]", "word"),
        ("prompt", "Gutenberg"),
        ("response_format", "verbose_json"),
    ]
    assert piece_fields(fields, "whisper-1", "json", stream=True) == [
        ("model", "whisper-1"),
        ("language", "en"),
        ("include[]", "logprobs"),
        ("prompt", "Gutenberg"),
        ("response_format", "json"),
        ("stream", "true"),
    ]


def test_stitch_moves_segments_and_words_and_renumbers() -> None:
    first = parse_answer(
        0.0,
        10.0,
        _verbose(
            " One two. Three.",
            [(0.0, 4.0, " One two."), (4.0, 10.5, " Three.")],  # ends past its piece
            [("One", 0.5, 1.0), ("two.", 1.0, 2.0), ("Three.", 5.0, 10.4)],
        ),
    )
    second = parse_answer(
        10.0,
        5.0,
        _verbose("Four.", [(0.2, 4.8, "Four.")], [("Four.", 0.3, 1.0)]),
    )
    segments = stitch([first, second])
    assert [s.id for s in segments] == [0, 1, 2]
    assert [(s.start, s.end) for s in segments] == [(0.0, 4.0), (4.0, 10.0), (10.2, 14.8)]
    assert segments[2].seek == 1000  # 10 s of 10 ms frames
    assert [w.word for w in segments[0].words] == ["One", "two."]
    assert (segments[1].words[0].start, segments[1].words[0].end) == (5.0, 10.0)  # clamped
    assert (segments[2].words[0].start, segments[2].words[0].end) == (10.3, 11.0)
    assert segments[2].text == " Four."  # does not run into "Three."


def test_answers_without_segments_span_their_piece() -> None:
    plain = parse_answer(0.0, 8.0, json.dumps({"text": "Hello there."}).encode())
    text = parse_answer(8.0, 4.0, b"General Kenobi.\n", "text/plain")
    silent = parse_answer(12.0, 3.0, json.dumps({"text": ""}).encode())
    segments = stitch([plain, text, silent])
    assert [(s.start, s.end, s.text) for s in segments] == [
        (0.0, 8.0, " Hello there."),
        (8.0, 12.0, " General Kenobi."),
    ]
    with pytest.raises(ValueError):
        parse_answer(0.0, 1.0, b'{"error": "nope"}')


def test_render_each_format_from_the_stitched_pieces() -> None:
    answers = [
        parse_answer(0.0, 61.5, _verbose("A.", [(0.0, 61.5, " A.")])),
        parse_answer(61.5, 3.0, _verbose("B.", [(0.5, 2.0, " B.")])),
    ]
    verbose, media = render(answers, _form(response_format="verbose_json"), task="transcribe",
                            duration_s=64.5)  # fmt: skip
    body = json.loads(verbose)
    assert media == "application/json"
    assert (body["text"], body["duration"], body["language"]) == ("A. B.", 64.5, "english")
    assert body["usage"] == {"type": "duration", "seconds": 65}
    srt, _ = render(answers, _form(response_format="srt"), task="transcribe", duration_s=64.5)
    assert srt == "1\n00:00:00,000 --> 00:01:01,500\nA.\n\n2\n00:01:02,000 --> 00:01:03,500\nB.\n"
    vtt, _ = render(answers, _form(response_format="vtt"), task="transcribe", duration_s=64.5)
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:01:01.500\nA.\n")
    text, media = render(answers, _form(response_format="text"), task="translate", duration_s=1)
    assert (text, media) == ("A. B.\n", "text/plain; charset=utf-8")


def test_logprobs_of_every_piece_are_kept_in_order() -> None:
    def answer(index: int, token: str) -> PieceAnswer:
        logprob = {"token": token, "logprob": -0.1, "bytes": list(token.encode())}
        body = json.dumps({"text": token, "logprobs": [logprob]}).encode()
        return parse_answer(index * 10.0, 10.0, body)

    form = _form(response_format="json", include=["logprobs"])
    body = json.loads(render([answer(0, "a"), answer(1, "b")], form, task="transcribe",
                             duration_s=20.0)[0])  # fmt: skip
    assert body["text"] == "a b"
    assert [x["token"] for x in body["logprobs"]] == ["a", "b"]


def test_in_order_yields_in_order_with_bounded_concurrency() -> None:
    started: list[int] = []
    running = 0
    most = 0

    async def items() -> AsyncGenerator[int, None]:
        for n in range(6):
            yield n

    async def run(n: int) -> int:
        nonlocal running, most
        started.append(n)
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01 * (6 - n))  # later items finish first
        running -= 1
        return n * 10

    async def main() -> list[int]:
        return [result async for result in in_order(items(), run, 3)]

    assert asyncio.run(main()) == [0, 10, 20, 30, 40, 50]
    assert started == list(range(6))
    assert most == 3


def test_in_order_stops_everything_when_one_fails() -> None:
    cancelled: list[int] = []
    closed = False

    async def items() -> AsyncGenerator[int, None]:
        nonlocal closed
        try:
            for n in range(100):
                yield n
        finally:
            closed = True

    async def run(n: int) -> int:
        if n == 0:
            await asyncio.sleep(0.01)
            raise RuntimeError("piece 1 failed")
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(n)
            raise
        return n

    async def main() -> None:
        async for _ in in_order(items(), run, 3):
            pass

    with pytest.raises(RuntimeError, match="piece 1 failed"):
        asyncio.run(main())
    assert sorted(cancelled) == [1, 2]
    assert closed
