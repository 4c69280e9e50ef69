"""``voxgate keys``: keys made on the command line work against a server sharing the database.

The CLI runs as a subprocess (``python -m voxgate keys …``) exactly as an operator runs it, next
to one server on its own SQLite database for the module; one test repeats the essentials on
PostgreSQL with a server of its own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import psycopg
import pytest
from conftest import Server, StartServer, audio_path, voxgate_cli

SHORT_CLIP = "en-librispeech-1089-134686-0001.flac"  # 3 s


def create_json(database_url: str, *args: str) -> dict[str, Any]:
    result = voxgate_cli(database_url, "keys", "create", *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def listed(database_url: str, *args: str) -> list[dict[str, Any]]:
    result = voxgate_cli(database_url, "keys", "list", "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["data"]  # type: ignore[no-any-return]


def speak(server: Server, secret: str, model: str = "tts-1") -> bytes:
    audio = server.sdk_for(secret).audio.speech.create(model=model, voice="alloy", input="Hi.")
    return audio.content


@pytest.fixture(scope="module")
def db_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('cli-db') / 'voxgate.db'}"


@pytest.fixture(scope="module")
def keyed(start_server: StartServer, db_url: str) -> Iterator[Server]:
    with start_server(VOXGATE_DATABASE_URL=db_url) as srv:
        yield srv


def test_create_use_list_revoke(keyed: Server, db_url: str) -> None:
    """The whole life of a key made while the server runs: it works at once, lists without its
    secret, and once revoked gets 401."""
    key = create_json(
        db_url, "--name", "cli key", "--budget", "1.5", "--rpm", "100", "--expires", "2099-01-01"
    )
    secret = key["key"]
    assert secret.startswith("sk-vg-") and key["id"].startswith("key_")
    assert (key["name"], key["budget_usd"], key["limits"]["rpm"]) == ("cli key", 1.5, 100)
    assert key["expires_at"] == 4_070_908_800  # 2099-01-01T00:00:00Z
    assert key["revoked"] is False

    assert len(speak(keyed, secret)) > 1000

    table = voxgate_cli(db_url, "keys", "list")
    assert table.returncode == 0, table.stderr
    (line,) = [line for line in table.stdout.splitlines() if key["id"] in line]
    assert "cli key" in line and key["redacted_value"] in line and "$1.50" in line
    assert "100 req/min" in line and "2099-01-01" in line
    as_json = voxgate_cli(db_url, "keys", "list", "--json", "--all")
    for output in (table.stdout + table.stderr, as_json.stdout + as_json.stderr):
        assert secret not in output and secret[6:] not in output
    (public,) = [entry for entry in json.loads(as_json.stdout)["data"] if entry["id"] == key["id"]]
    assert "key" not in public and public["redacted_value"] == key["redacted_value"]

    revoked = voxgate_cli(db_url, "keys", "revoke", key["id"])
    assert revoked.returncode == 0, revoked.stderr
    assert "Revoked" in revoked.stdout
    with pytest.raises(openai.AuthenticationError) as caught:
        speak(keyed, secret)
    assert caught.value.status_code == 401 and "revoked" in caught.value.message

    assert key["id"] not in [entry["id"] for entry in listed(db_url)]
    (gone,) = [entry for entry in listed(db_url, "--all") if entry["id"] == key["id"]]
    assert gone["revoked"] is True and gone["revoked_at"] is not None
    again = voxgate_cli(db_url, "keys", "revoke", key["id"])  # idempotent
    assert again.returncode == 0 and "already revoked" in again.stdout


def test_human_create_shows_secret_once(keyed: Server, db_url: str) -> None:
    result = voxgate_cli(db_url, "keys", "create", "--name", "human", "--max-concurrency", "2")
    assert result.returncode == 0, result.stderr
    secrets = re.findall(r"sk-vg-[A-Za-z0-9_-]{40,}", result.stdout)
    assert len(secrets) == 1
    assert "will not be shown again" in result.stdout
    assert "2 concurrent" in result.stdout
    assert speak(keyed, secrets[0])


def test_model_allowlist(keyed: Server, db_url: str) -> None:
    """A key made with ``--models whisper-1`` transcribes, may not speak, sees only whisper-1."""
    key = create_json(db_url, "--name", "stt only", "--models", "whisper-1")
    assert key["models"] == ["whisper-1"]
    client = keyed.sdk_for(key["key"])
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.audio.speech.create(model="tts-1", voice="alloy", input="Hi.")
    error = caught.value
    assert (error.status_code, error.code, error.param) == (403, "model_not_allowed", "model")
    assert [model.id for model in client.models.list()] == ["whisper-1"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("tts-1")
    with audio_path(SHORT_CLIP).open("rb") as file:
        transcript = client.audio.transcriptions.create(model="whisper-1", file=file)
    assert transcript.text.strip()


def test_update(keyed: Server, db_url: str) -> None:
    key = create_json(db_url, "--name", "to update", "--budget", "3", "--models", "tts-1")
    result = voxgate_cli(
        db_url, "keys", "update", key["id"], "--name", "updated", "--rpm", "7", "--clear",
        "budget", "--clear", "models", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    updated = json.loads(result.stdout)
    assert (updated["name"], updated["budget_usd"], updated["models"]) == ("updated", None, None)
    assert updated["limits"]["rpm"] == 7
    assert speak(keyed, key["key"], model="tts-1-hd")  # every model allowed now
    missing = voxgate_cli(db_url, "keys", "update", "key_missing", "--rpm", "1")
    assert missing.returncode == 1 and "key_missing" in missing.stderr


INVALID_CREATES = [
    (["--models", "whisper-1,nope"], "--models", "'nope' in models. Known ids: whisper-base"),
    (["--models", ""], "--models", "at least one"),
    (["--expires", "2001-01-01T00:00:00Z"], "--expires", "not in the future"),
    (["--expires", "soon"], "--expires", "ISO 8601"),
    (["--rpm", "0"], "--rpm", "at least 1"),
    (["--budget", "-1"], "--budget", "between 0"),
]


def test_invalid_create(db_url: str) -> None:
    """Each refused with exit code 2 and a message naming the option; nothing is stored."""
    for args, option, reason in INVALID_CREATES:
        result = voxgate_cli(db_url, "keys", "create", "--name", "refused", *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert result.stderr.startswith(f"error: {option}:"), result.stderr
        assert reason in result.stderr and "sk-vg-" not in result.stdout
    assert "refused" not in [entry["name"] for entry in listed(db_url, "--all")]


def test_revoke_unknown_key(db_url: str) -> None:
    result = voxgate_cli(db_url, "keys", "revoke", "key_does_not_exist")
    assert result.returncode == 1
    assert "key_does_not_exist" in result.stderr and not result.stdout


def test_fresh_database(tmp_path: Path) -> None:
    """On a machine where nothing ran yet the CLI creates the schema itself."""
    url = f"sqlite:///{tmp_path / 'new' / 'voxgate.db'}"
    empty = voxgate_cli(url, "keys", "list")
    assert empty.returncode == 0, empty.stderr
    assert "No API keys" in empty.stdout
    key = create_json(url, "--name", "first")
    assert [entry["id"] for entry in listed(url)] == [key["id"]]


def test_postgres(start_server: StartServer, postgres_url: str) -> None:
    """The CLI on PostgreSQL: made before the server starts, used, revoked while it runs; the
    row holds the digest, never the secret."""
    key = create_json(postgres_url, "--name", "pg key", "--models", "tts-1", "--budget", "1")
    secret = key["key"]
    with start_server(VOXGATE_DATABASE_URL=postgres_url) as server:
        assert len(speak(server, secret)) > 1000
        later = create_json(postgres_url, "--name", "made while running")
        assert speak(server, later["key"])
        assert voxgate_cli(postgres_url, "keys", "revoke", key["id"]).returncode == 0
        with pytest.raises(openai.AuthenticationError):
            speak(server, secret)
    names = [entry["name"] for entry in listed(postgres_url, "--all")]
    assert names == ["pg key", "made while running"]
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute("SELECT * FROM api_keys").fetchall()
    assert len(rows) == 2
    for row in rows:
        for value in row:
            assert secret[6:] not in str(value) and later["key"][6:] not in str(value)
