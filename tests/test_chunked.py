"""Long audio routed to remote upstreams that cap uploads (issue 9 item 2): split at silences,
sent piece by piece, stitched back, end to end through a real voxgate in front of the fake
upstream (tests/fake_upstream.py; a model name ending ``@1024kb`` or ``@15s`` answers 413 past
that), with real recordings and, for the fallback, the real local engine.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import LedgerReader, Server, StartServer, audio_path, sse_events
from fake_upstream import DEFAULT_TEXT, FakeUpstream

from voxgate.audio import WHISPER_SAMPLE_RATE, pcm_pieces
from voxgate.services.chunked import encode_flac

LONG_CLIP = "en-ljspeech-LJ001-0001-to-0032-long.flac"  # 5.7 MB, 221.75 s
LONG_CLIP_S = 221.75
SHORT_CLIP = "en-librispeech-1089-134686-0001.flac"  # 3.27 s
SONNET = "en-librivox-shakespeare-sonnet001.mp3"  # 53.3 s
CAP_BYTES = 1024 * 1024  # the capped provider's max_upload_mb = 1, the fake's @1024kb
CAP_S = 15.0  # the short provider's max_audio_s, the fake's @15s
# Clips joined (1 s of silence between) into a 45 s recording for the local fallback.
JOINED = (
    "en-jfk.flac",
    "en-librispeech-1089-134686-0000.flac",
    "en-librispeech-2412-153948-0000.flac",
    "en-librispeech-1995-1837-0001.wav",
)
PIECE_SECONDS = re.compile(r"\[(\d+\.\d+) s\]")


def _config(up: FakeUpstream) -> str:
    providers = "".join(
        f'[providers.{name}]\nbase_url = "{up.base_url}"\napi_key_env = "FAKE_UPSTREAM_KEY"\n'
        f"backoff_base_s = 0.01\n{extra}\n\n"
        for name, extra in (
            ("capped", "max_upload_mb = 1\nchunk_concurrency = 3"),
            ("short", f"max_audio_s = {CAP_S:g}"),
        )
    )
    models = "".join(
        f'[[models]]\nid = "{model_id}"\nfeatures = ["speech-to-text", "translation"]\n'
        f"pricing = {{ per_second = 0.0001 }}\nserve = [{', '.join(map(repr, serve))}]\n\n"
        for model_id, serve in (
            ("ch-size", ["capped:whisper-1@1024kb"]),
            ("ch-flaky", ["capped:flaky500-1@1024kb"]),
            ("ch-dur", ["short:whisper-1@15s"]),
            ("ch-dur-local", ["short:failfrom-2@15s", "local:whisper-base"]),
        )
    )
    return providers + models.replace("'", '"')


@pytest.fixture(scope="module")
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def gateway_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('chunked-db') / 'voxgate.db'}"


@pytest.fixture(scope="module")
def gateway(
    up: FakeUpstream,
    gateway_db: str,
    start_server: StartServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    config = tmp_path_factory.mktemp("chunked-config") / "voxgate.toml"
    config.write_text(_config(up))
    with start_server(
        VOXGATE_CONFIG_FILE=str(config),
        VOXGATE_DATABASE_URL=gateway_db,
        FAKE_UPSTREAM_KEY="sk-upstream-provider-secret",
    ) as server:
        yield server


@pytest.fixture
def fake(up: FakeUpstream, gateway: Server) -> FakeUpstream:
    up.reset()
    return up


def _pcm(path: Path) -> np.ndarray:
    with path.open("rb") as source:
        return np.concatenate(list(pcm_pieces(source, max_s=3600)))


@pytest.fixture(scope="module")
def long_pcm() -> np.ndarray:
    return _pcm(audio_path(LONG_CLIP))


@pytest.fixture(scope="module")
def joined(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four real clips with a second of silence after each: a 46 s FLAC made with PyAV."""
    gap = np.zeros(WHISPER_SAMPLE_RATE, dtype=np.float32)
    parts = [piece for name in JOINED for piece in (_pcm(audio_path(name)), gap)]
    path = tmp_path_factory.mktemp("chunked-audio") / "joined.flac"
    path.write_bytes(encode_flac(np.concatenate(parts)))
    return path


def _post(
    server: Server, model: str, data: bytes, *, path: str = "transcriptions", **fields: Any
) -> httpx.Response:
    # A guard against hangs only: the local fallback's engine runs at nice 10 on a shared
    # machine (46 s of audio took over 300 s there with a load average of 18).
    with server.http(timeout=1800) as http:
        return http.post(
            f"/v1/audio/{path}",
            data={"model": model, **fields},
            files={"file": ("long.flac", data, "audio/flac")},
        )


def _pieces(fake: FakeUpstream) -> list[dict[str, Any]]:
    return [r for r in fake.requests() if r["path"].startswith("/v1/audio/")]


def _check_pieces(records: list[dict[str, Any]], *, max_bytes: int, max_s: float) -> None:
    for record in records:
        assert record["file"]["content_type"] == "audio/flac"
        assert record["file"]["size"] <= max_bytes
        assert 0 < record["file"]["seconds"] <= max_s + 0.01


def test_the_capped_upstream_refuses_the_whole_file(fake: FakeUpstream) -> None:
    """What splitting avoids: sent whole, the long file is over the upstream's cap."""
    data = audio_path(LONG_CLIP).read_bytes()
    assert len(data) > CAP_BYTES
    response = httpx.post(
        f"{fake.base_url}/audio/transcriptions",
        data={"model": "whisper-1@1024kb"},
        files={"file": ("long.flac", data, "audio/flac")},
        timeout=120,
    )
    assert response.status_code == 413


def test_a_small_upload_still_goes_whole(gateway: Server, fake: FakeUpstream) -> None:
    data = audio_path(SHORT_CLIP).read_bytes()
    response = _post(gateway, "ch-size", data)
    assert response.status_code == 200, response.text
    (record,) = _pieces(fake)
    assert record["file"]["sha256"] == hashlib.sha256(data).hexdigest()


def test_a_long_upload_is_split_at_silences_and_stitched(
    gateway: Server, fake: FakeUpstream, long_pcm: np.ndarray, gateway_db: str
) -> None:
    response = _post(
        gateway,
        "ch-size",
        audio_path(LONG_CLIP).read_bytes(),
        response_format="verbose_json",
        **{"timestamp_granularities[]": ["word", "segment"]},
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-voxgate-route"] == "capped:whisper-1@1024kb"
    records = _pieces(fake)
    assert len(records) >= 8  # 221 s in pieces of at most 29.5 s
    _check_pieces(records, max_bytes=CAP_BYTES, max_s=LONG_CLIP_S)
    for record in records:
        assert record["model"] == "whisper-1@1024kb"
        assert record["fields"]["response_format"] == "verbose_json"
        assert record["fields"]["timestamp_granularities[]"] == ["word", "segment"]
    body = response.json()
    assert body["duration"] == pytest.approx(LONG_CLIP_S, abs=0.05)  # voxgate's measurement
    segments = body["segments"]
    assert len(segments) == len(records)  # the fake answers one segment per piece
    assert [s["id"] for s in segments] == list(range(len(segments)))
    assert segments[0]["start"] == 0.0
    assert segments[-1]["end"] == pytest.approx(LONG_CLIP_S, abs=0.05)
    for before, after in itertools.pairwise(segments):
        assert after["start"] == pytest.approx(before["end"], abs=0.002)  # no gap, no overlap
    # Each piece's answer sits at its own offset: its text names the length it was sent.
    lengths = sorted(r["file"]["seconds"] for r in records)
    for segment in segments:
        (said,) = PIECE_SECONDS.findall(segment["text"])
        assert float(said) == pytest.approx(segment["end"] - segment["start"], abs=0.011)
    assert sorted(s["end"] - s["start"] for s in segments) == pytest.approx(lengths, abs=0.011)
    words = body["words"]
    assert len(words) == len(segments) * (len(DEFAULT_TEXT.split()) + 2)  # + "[29.49", "s]"
    starts = [w["start"] for w in words]
    assert starts == sorted(starts) and words[-1]["end"] <= segments[-1]["end"]
    # Every cut (a piece's end) falls in a silence of the recording.
    loud = float(np.sqrt(np.mean(np.square(long_pcm))))
    for segment in segments[:-1]:
        at = round(segment["end"] * WHISPER_SAMPLE_RATE)
        around = long_pcm[at - 160 : at + 160]  # ±10 ms
        assert float(np.sqrt(np.mean(np.square(around)))) < 0.1 * loud, segment["end"]
    with LedgerReader(gateway_db) as ledger:
        request_id = response.headers["x-request-id"]
        row = ledger.settled([request_id], timeout=30)[request_id]
        rows = [r for r in ledger.rows() if r["request_id"] == request_id]
    assert len(rows) == 1
    assert row["route"] == "capped:whisper-1@1024kb"
    assert row["input_audio_ms"] == pytest.approx(LONG_CLIP_S * 1000, abs=50)


def test_srt_text_and_translation_render_from_the_stitched_pieces(
    gateway: Server, fake: FakeUpstream
) -> None:
    data = audio_path(LONG_CLIP).read_bytes()
    verbose = _post(gateway, "ch-size", data, response_format="verbose_json").json()
    srt = _post(gateway, "ch-size", data, response_format="srt")
    assert srt.status_code == 200, srt.text
    blocks = srt.text.strip().split("\n\n")
    assert len(blocks) == len(verbose["segments"])
    assert blocks[0].splitlines()[1].startswith("00:00:00,000 --> 00:00:")
    assert re.fullmatch(r"00:03:2\d,\d{3} --> 00:03:41,7\d\d", blocks[-1].splitlines()[1])
    text = _post(gateway, "ch-size", data, response_format="text")
    assert text.text.strip() == verbose["text"]
    fake.reset()
    translated = _post(gateway, "ch-size", data, path="translations")
    assert translated.status_code == 200, translated.text
    assert translated.json()["text"] == verbose["text"]
    records = _pieces(fake)
    assert {r["path"] for r in records} == {"/v1/audio/translations"}
    assert {r["fields"]["response_format"] for r in records} == {"json"}


def test_stream_relays_each_pieces_deltas_in_order(gateway: Server, fake: FakeUpstream) -> None:
    data = audio_path(LONG_CLIP).read_bytes()
    verbose = _post(gateway, "ch-size", data, response_format="verbose_json").json()
    fake.reset()
    with (
        gateway.http(timeout=1800) as http,
        http.stream(
            "POST",
            "/v1/audio/transcriptions",
            data={"model": "ch-size", "stream": "true"},
            files={"file": ("long.flac", data, "audio/flac")},
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    deltas = [e for e in events if e["type"] == "transcript.text.delta"]
    (done,) = [e for e in events if e["type"] == "transcript.text.done"]
    assert events[-1] is done
    assert "".join(d["delta"] for d in deltas) == done["text"] == verbose["text"]
    assert len(deltas) == len(verbose["text"].split())  # the fake's word-by-word deltas
    assert done["usage"]["seconds"] == 222
    assert {r["fields"]["stream"] for r in _pieces(fake)} == {"true"}


def test_a_chunking_strategy_splits_audio_longer_than_one_piece(
    gateway: Server, fake: FakeUpstream
) -> None:
    """The 53 s sonnet (an 0.4 MB mp3) fits the 1 MiB cap whole; with ``chunking_strategy``
    voxgate chunks it itself (pieces of at most 29.5 s) and sends none the field."""
    data = audio_path(SONNET).read_bytes()
    whole = _post(gateway, "ch-size", data)
    assert whole.status_code == 200, whole.text
    assert len(_pieces(fake)) == 1
    fake.reset()
    strategy = '{"type": "server_vad", "threshold": 0.5, "silence_duration_ms": 300}'
    split = _post(gateway, "ch-size", data, chunking_strategy=strategy)
    assert split.status_code == 200, split.text
    records = _pieces(fake)
    assert len(records) >= 2
    _check_pieces(records, max_bytes=CAP_BYTES, max_s=29.5)
    assert all(not k.startswith("chunking_strategy") for r in records for k in r["fields"])
    assert split.json()["text"].count(DEFAULT_TEXT) == len(records)


def test_a_duration_cap_splits_by_seconds(
    gateway: Server, fake: FakeUpstream, joined: Path
) -> None:
    response = _post(gateway, "ch-dur", joined.read_bytes(), response_format="verbose_json")
    assert response.status_code == 200, response.text
    records = _pieces(fake)
    assert len(records) >= 4  # 46 s in pieces of at most 15 s
    _check_pieces(records, max_bytes=CAP_BYTES, max_s=CAP_S)
    assert response.json()["duration"] == pytest.approx(46.0, abs=1.0)


def test_a_piece_that_fails_500_is_retried(gateway: Server, fake: FakeUpstream) -> None:
    data = audio_path(LONG_CLIP).read_bytes()
    response = _post(gateway, "ch-flaky", data, response_format="verbose_json")
    assert response.status_code == 200, response.text
    records = _pieces(fake)
    segments = response.json()["segments"]
    assert len(records) == len(segments) + 1  # one piece sent twice
    digests = [r["file"]["sha256"] for r in records]
    assert len(set(digests)) == len(segments)  # ...the very same bytes again
    assert segments[-1]["end"] == pytest.approx(LONG_CLIP_S, abs=0.05)


def test_a_piece_failing_every_try_falls_back_to_the_local_engine(
    gateway: Server, fake: FakeUpstream, joined: Path
) -> None:
    response = _post(gateway, "ch-dur-local", joined.read_bytes())
    assert response.status_code == 200, response.text
    assert response.headers["x-voxgate-route"] == "local:whisper-base"
    text = response.json()["text"].lower()
    assert "americans" in text and "stew for dinner" in text  # the real engine, whole file
    records = _pieces(fake)
    assert len(records) >= 3  # the first piece, then another that failed on both tries
