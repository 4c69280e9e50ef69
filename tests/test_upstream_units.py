"""Pure logic of the upstream providers, in process: config checks (with the line they name),
the breaker's state machine, backoff bounds and the measured length of an upload."""

from __future__ import annotations

import asyncio
import io
import struct
import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from conftest import audio_path
from sqlalchemy import create_engine, inspect

from voxgate.audio import measure_duration, wav_duration
from voxgate.catalog import Catalog
from voxgate.errors import AudioTooLong, InvalidAudio
from voxgate.providers.config import (
    ConfigError,
    Target,
    apply_to_catalog,
    load_upstream_config,
)
from voxgate.providers.upstream.breaker import Breaker
from voxgate.services.routing import backoff_s
from voxgate.storage.db import Database
from voxgate.storage.tables import Base

PROVIDER = '[providers.acme]\nbase_url = "https://api.example.com/v1"\napi_key_env = "ACME_KEY"\n\n'


def _model(model_id: str, features: str, *serve: str) -> str:
    targets = ", ".join(f'"{t}"' for t in serve)
    return f'[[models]]\nid = "{model_id}"\nfeatures = [{features}]\nserve = [{targets}]\n\n'


STT = '"speech-to-text", "translation"'


def _load(tmp_path: Path, text: str, *, local: bool = True) -> Catalog:
    path = tmp_path / "voxgate.toml"
    path.write_text(text)
    config = load_upstream_config(path, {"ACME_KEY": "sk-acme"})
    catalog = Catalog.load()
    apply_to_catalog(catalog, config, local_engines=local)
    return catalog


def test_the_issues_example_loads(tmp_path: Path) -> None:
    text = (
        PROVIDER
        + _model("acme-whisper", STT, "acme:whisper-1", "local:whisper-base")
        + _model("tts-1", '"text-to-speech"', "acme:tts-1", "local:piper-joe")
    )
    catalog = _load(tmp_path, text)
    assert catalog.get("acme-whisper").model.serve == ("acme:whisper-1", "local:whisper-base")
    assert catalog.get("acme-whisper").model.provider == "acme"
    assert catalog.get("tts-1").alias_of is None  # the shipped alias was replaced
    assert catalog.get("tts-1").resolve_voice("nova") == "nova"  # passed on to the upstream
    assert catalog.get("whisper-base").model.provider == "local"


def test_every_model_has_a_chain_a_shipped_one_is_itself_on_the_local_engines(
    tmp_path: Path,
) -> None:
    """One path for every request: the relay walks each model's chain, so none may be empty."""
    text = PROVIDER + _model("acme-whisper", STT, "acme:whisper-1", "local:whisper-base")
    for catalog in (Catalog.load(), _load(tmp_path, text)):
        for entry in catalog:
            chain = [Target.parse(label) for label in entry.model.chain]
            assert chain, entry.id
            if not entry.model.serve:  # shipped: aliases run their target model locally
                assert [t.label for t in chain] == [f"local:{entry.model.id}"], entry.id
    routed = _load(tmp_path, text).get("acme-whisper").model
    assert routed.chain == ("acme:whisper-1", "local:whisper-base")
    assert Catalog.load().get("whisper-1").model.chain == ("local:whisper-base",)


@pytest.mark.parametrize(
    ("text", "env", "line", "words"),
    [
        (PROVIDER + _model("m", STT, "acmee:whisper-1"), {"ACME_KEY": "k"}, 5, "'acmee'"),
        (PROVIDER + _model("m", STT, "acme:whisper-1"), {}, 1, "ACME_KEY"),
        (PROVIDER + _model("m", STT, "whisper-1"), {"ACME_KEY": "k"}, 5, "provider:model"),
        (PROVIDER + _model("m", STT), {"ACME_KEY": "k"}, 5, "serve"),
        (
            PROVIDER + "[providers.local]\nbase_url = 'http://x/v1'\n",
            {"ACME_KEY": "k"},
            5,
            "reserved",
        ),
        ('[providers.acme]\nbase_url = "ftp://x"\n', {}, 1, "base_url"),
        ('[providers.acme]\nbase_url = "http://x/v1"\ntimeot_s = 3\n', {}, 1, "timeot_s"),
    ],
)
def test_bad_config_names_the_line(
    tmp_path: Path, text: str, env: dict[str, str], line: int, words: str
) -> None:
    path = tmp_path / "voxgate.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_upstream_config(path, env)
    assert f"{path}:{line}:" in str(caught.value)
    assert words in str(caught.value)


def test_a_local_target_must_serve_the_models_features(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"voxgate.toml:5: .*local:piper-joe.* cannot serve"):
        _load(tmp_path, PROVIDER + _model("m", STT, "acme:whisper-1", "local:piper-joe"))
    with pytest.raises(ConfigError, match="no local model 'whisper-large'"):
        _load(tmp_path, PROVIDER + _model("m", STT, "local:whisper-large"))


def test_local_engines_off_drops_local_models_and_targets(tmp_path: Path) -> None:
    text = PROVIDER + _model("acme-whisper", STT, "acme:whisper-1", "local:whisper-base")
    catalog = _load(tmp_path, text, local=False)
    assert [entry.id for entry in catalog] == ["acme-whisper"]
    assert catalog.get("acme-whisper").model.serve == ("acme:whisper-1",)
    with pytest.raises(ConfigError, match="every serve target is local"):
        _load(tmp_path, PROVIDER + _model("m", STT, "local:whisper-base"), local=False)


def test_breaker_opens_probes_once_and_closes() -> None:
    breaker = Breaker(failures=2, cooldown_s=0.2)
    breaker.failed("HTTP 503")
    assert breaker.state == "closed" and breaker.allow()
    breaker.failed("HTTP 503")
    assert breaker.state == "open" and not breaker.allow()
    time.sleep(0.25)
    assert breaker.state == "half_open"
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one at a time
    breaker.failed("timeout")  # the probe failed: open again for a whole cool-down
    assert breaker.state == "open"
    time.sleep(0.25)
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.state == "closed"
    assert breaker.report()["error_rate"] == pytest.approx(0.75)


def test_auth_failure_trips_the_breaker_at_once() -> None:
    breaker = Breaker(failures=5, cooldown_s=30)
    breaker.failed("credentials refused", trip=True)
    assert breaker.state == "open"


def test_backoff_is_full_jitter_within_the_cap() -> None:
    samples = [backoff_s(attempt, 0.1, 1.0) for attempt in range(8) for _ in range(50)]
    assert all(0.0 <= s <= 1.0 for s in samples)
    assert max(backoff_s(0, 0.1, 1.0) for _ in range(200)) <= 0.1
    assert len({round(s, 6) for s in samples}) > 100  # jittered, not fixed steps


def _wav(frames: int, *, claimed: int | None = None, rate: int = 16000) -> bytes:
    data = b"\x00\x00" * frames
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    size = len(data) if claimed is None else claimed
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", size)
    return b"RIFF" + struct.pack("<I", len(body) + len(data)) + body + data


def test_a_wav_is_measured_by_the_bytes_really_there() -> None:
    assert wav_duration(io.BytesIO(_wav(16000))) == pytest.approx(1.0)
    # A header claiming an hour over one second of samples is billed one second.
    lying = _wav(16000, claimed=16000 * 2 * 3600)
    assert measure_duration(io.BytesIO(lying), max_s=60) == pytest.approx(1.0)
    with pytest.raises(AudioTooLong):
        measure_duration(io.BytesIO(_wav(16000 * 3)), max_s=2)


def test_a_wav_of_many_chunks_is_left_to_the_thread_that_demuxes() -> None:
    """The event loop measures a WAV in memory only if its data comes within a few chunks, so a
    file of thousands of tiny chunks cannot hold the loop up; a thread still measures it."""
    wav = _wav(16000)
    junk = b"junk" + struct.pack("<I", 2) + b"\x00\x00"
    many = wav[:12] + junk * 5000 + wav[12:]
    many = b"RIFF" + struct.pack("<I", len(many) - 8) + many[8:]
    assert wav_duration(io.BytesIO(wav), max_chunks=16) == pytest.approx(1.0)
    assert wav_duration(io.BytesIO(many), max_chunks=16) is None
    assert measure_duration(io.BytesIO(many), max_s=60) == pytest.approx(1.0)


def test_compressed_audio_is_measured_by_demuxing() -> None:
    source = audio_path("en-librispeech-1089-134686-0001.flac").open("rb")
    with source:
        assert measure_duration(source, max_s=60) == pytest.approx(3.27, abs=0.01)
    with pytest.raises(InvalidAudio):
        measure_duration(io.BytesIO(b"not audio at all" * 100), max_s=60)


def test_the_migrations_produce_the_tables_with_the_route_column(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'voxgate.db'}"

    async def migrate() -> None:
        db = Database(url)
        try:
            await db.migrate()
        finally:
            await db.close()

    asyncio.run(migrate())
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
            columns = {c["name"] for c in inspect(connection).get_columns("usage_records")}
    finally:
        engine.dispose()
    assert "route" in columns
