"""The README's examples, run as a newcomer runs them, against a live server.

Every fenced block preceded by ``<!-- readme-test: NAME -->`` is run in the README's order, in
one working directory, as one shell session would run them: variables a block exports are
there for the next ones. Shell blocks run in ``bash -euo pipefail``; Python blocks with
``-W error::DeprecationWarning`` (no example may warn). The only changes made to a block are
the ones a reader's machine makes for them: ``.venv/bin/voxgate`` and ``.venv/bin/python`` are
this test run's, the repository's ``tests/`` is linked into the working directory, the
server's address replaces ``http://127.0.0.1:8000``, and
``VOXGATE_BASE_URL`` points the client commands at it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ADMIN_KEY, REPO, Server, StartServer

README = REPO / "README.md"
DEFAULT_URL = "http://127.0.0.1:8000"
TAGGED = re.compile(r"<!-- readme-test: (\S+) -->\n```(sh|python)\n(.*?)```", re.DOTALL)
ENV_DUMP = ".readme-env"


def readme_blocks() -> list[tuple[str, str, str]]:
    return TAGGED.findall(README.read_text())


BLOCKS = readme_blocks()
#: What each block must leave behind or print, beyond exiting 0 without an error envelope.
EXPECTED: dict[str, tuple[list[str], list[str]]] = {
    "first-key": (["meeting.mp3", "interview-de.ogg"], []),
    "sdk": (["hello.mp3", "de.mp3"], ["english", "transcript.text.done", "hong kong"]),
    "curl": (["hello.wav"], ["-->", "speech.audio.done", "transcript.text.done", "hong kong"]),
    "cli": (["hello.wav", "stdin.opus", "transcripts/meeting.srt", "transcripts/hello.srt"], []),
    "keys": (["ci-key.json"], ["mobile-app"]),
    "admin": (["new-key.json"], ['"revoked":true']),
    "usage": ([], ["num_model_requests", "whisper-1"]),
    "metrics": ([], ['voxgate_requests_total{endpoint="/v1/audio/speech"']),
}


def test_the_readme_tags_every_runnable_example() -> None:
    assert [name for name, _, _ in BLOCKS] == list(EXPECTED)


@pytest.fixture(scope="module")
def readme_server(start_server: StartServer) -> Iterator[Server]:
    with start_server(VOXGATE_METRICS="on") as srv:
        yield srv


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh directory like a clone: the repository's test audio, and the ``.venv/bin`` the
    README's commands call."""
    root = tmp_path_factory.mktemp("readme")
    (root / "tests").symlink_to(REPO / "tests")
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    wrapper = bin_dir / "voxgate"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m voxgate "$@"\n')
    wrapper.chmod(0o755)
    return root


@pytest.fixture(scope="module")
def session_env(readme_server: Server, data_dir: Path) -> dict[str, str]:
    """The shell's environment: the server's data dir (so ``voxgate keys`` writes the keys it
    reads), its admin key, and the address of the server for the client commands."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    return env | {
        "VOXGATE_DATA_DIR": str(data_dir),
        "VOXGATE_ADMIN_KEY": ADMIN_KEY,
        "VOXGATE_BASE_URL": readme_server.base_url,
    }


@pytest.mark.parametrize(("name", "language", "code"), BLOCKS, ids=[b[0] for b in BLOCKS])
def test_readme_example(
    name: str,
    language: str,
    code: str,
    readme_server: Server,
    workdir: Path,
    session_env: dict[str, str],
) -> None:
    code = code.replace(DEFAULT_URL, readme_server.base_url)
    if language == "sh":
        script = f"{code}\nenv -0 > {ENV_DUMP}\n"
        command = ["bash", "-euo", "pipefail", "-c", script]
    else:
        (workdir / f"{name}.py").write_text(code)
        command = [sys.executable, "-W", "error::DeprecationWarning", f"{name}.py"]
    result = subprocess.run(
        command, cwd=workdir, env=session_env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
    assert '"error":' not in result.stdout, result.stdout
    files, printed = EXPECTED[name]
    for file in files:
        assert (workdir / file).stat().st_size > 0, file
    for text in printed:
        assert text in result.stdout.lower() or text in result.stdout, (text, result.stdout)
    if language == "sh":  # carry what the block exported on to the next blocks
        dumped = (workdir / ENV_DUMP).read_text().split("\0")
        session_env.clear()
        session_env.update(entry.split("=", 1) for entry in dumped if "=" in entry)
