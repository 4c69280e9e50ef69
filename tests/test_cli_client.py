"""The client commands (``voxgate speak / transcribe / translate / models``) run as a user runs
them: a subprocess against a real server, compared with what the API itself returns."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import soundfile
from conftest import LedgerReader, Server, audio_path, free_port, sse_events, wait_until

JFK = "en-jfk.flac"
SHORT = "en-librispeech-1089-134686-0001.flac"
GERMAN = "de-fleurs-000.ogg"
LONG = "en-ljspeech-LJ001-0001-to-0032-long.flac"


def cli_env(server: Server | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    if server is not None:
        env |= {"VOXGATE_BASE_URL": server.base_url, "VOXGATE_API_KEY": server.api_key}
    return env | extra


def voxgate(
    server: Server | None, *args: str, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voxgate", *args],
        env=cli_env(server, **env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=600,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("voxgate: ")
    return lines[0]


def test_speak_writes_the_format_of_the_extension(server: Server, tmp_path: Path) -> None:
    target = tmp_path / "hello.wav"
    result = voxgate(server, "speak", "Hello from the command line.", "-o", str(target), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["format"] == "wav" and summary["file"] == str(target)
    assert summary["request_id"].startswith("req_")
    samples, rate = soundfile.read(target)
    assert rate > 0 and len(samples) / rate > 0.5
    assert summary["bytes"] == target.stat().st_size


def test_speak_reads_stdin_and_honours_format(server: Server, tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    result = voxgate(
        server,
        "speak",
        "-",
        "-o",
        str(target),
        "--format",
        "flac",
        "--model",
        "espeak-ng",
        "--voice",
        "de",
        stdin="Guten Morgen!",
    )
    assert result.returncode == 0, result.stderr
    assert target.read_bytes()[:4] == b"fLaC"
    assert "wrote" in result.stderr


def test_speak_without_output_and_without_player_says_so(server: Server) -> None:
    # PATH without any audio player: a clear refusal before any request is sent.
    line = one_line_error(voxgate(server, "speak", "Hi.", PATH="/nonexistent"))
    assert "no audio player found" in line and "-o FILE" in line


def test_transcribe_writes_what_the_api_returns(server: Server, tmp_path: Path) -> None:
    """srt from the streamed segments equals the API's own srt; several files in a row."""
    files = [str(audio_path(JFK)), str(audio_path(SHORT))]
    result = voxgate(server, "transcribe", *files, "--format", "srt", "-o", str(tmp_path))
    assert result.returncode == 0, result.stderr
    with server.http() as http:
        for name in (JFK, SHORT):
            with open(audio_path(name), "rb") as audio:
                response = http.post(
                    "/v1/audio/transcriptions",
                    files={"file": (name, audio)},
                    data={"model": "whisper-1", "response_format": "srt"},
                )
            assert response.status_code == 200, response.text
            written = (tmp_path / f"{Path(name).stem}.srt").read_text()
            assert written == response.text


def test_transcribe_json_is_the_api_json(server: Server) -> None:
    result = voxgate(server, "transcribe", str(audio_path(JFK)))
    assert result.returncode == 0, result.stderr
    with server.http() as http, open(audio_path(JFK), "rb") as audio:
        response = http.post(
            "/v1/audio/transcriptions", files={"file": (JFK, audio)}, data={"model": "whisper-1"}
        )
    assert json.loads(result.stdout) == response.json()


def test_transcribe_json_flag_and_verbose_json(server: Server) -> None:
    result = voxgate(
        server, "transcribe", str(audio_path(JFK)), "--format", "verbose_json", "--json"
    )
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    summary = json.loads(line)
    assert summary["file"] == str(audio_path(JFK)) and summary["output"] is None
    verbose: dict[str, Any] = summary["result"]
    assert verbose["language"] == "english" and verbose["segments"]
    assert "ask not what your country" in verbose["text"].lower()


def test_translate_gives_english(server: Server, manifest: list[dict[str, Any]]) -> None:
    result = voxgate(server, "translate", str(audio_path(GERMAN)), "--format", "text")
    assert result.returncode == 0, result.stderr
    assert "hong kong" in result.stdout.lower()


def test_models_table_and_json(server: Server) -> None:
    table = voxgate(server, "models")
    assert table.returncode == 0, table.stderr
    assert "whisper-1" in table.stdout and "tts-1" in table.stdout
    listed = voxgate(server, "models", "--json")
    ids = {record["id"] for record in json.loads(listed.stdout)}
    assert {"whisper-1", "tts-1", "espeak-ng"} <= ids


def test_one_line_errors(server: Server, tmp_path: Path) -> None:
    wrong_key = voxgate(server, "transcribe", str(audio_path(JFK)), VOXGATE_API_KEY="sk-wrong")
    assert "401 invalid_api_key" in one_line_error(wrong_key)
    unknown = voxgate(server, "speak", "Hi.", "-o", str(tmp_path / "x.mp3"), "--model", "nope")
    assert "404 model_not_found" in one_line_error(unknown)
    nobody = f"http://127.0.0.1:{free_port()}"
    down = voxgate(server, "models", "--base-url", nobody)
    assert "cannot reach a voxgate server" in one_line_error(down)
    assert "sk-wrong" not in wrong_key.stderr


def test_progress_bar_on_a_terminal(server: Server) -> None:
    """On a terminal, stderr shows the bar: seconds done of the file's duration (11 s)."""
    leader, follower = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        with contextlib.suppress(OSError):
            while data := os.read(leader, 4096):
                chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    result = subprocess.run(
        [sys.executable, "-m", "voxgate", "transcribe", str(audio_path(JFK)), "--format", "text"],
        env=cli_env(server, TERM="xterm-256color", COLUMNS="120"),
        stderr=follower,
        stdout=subprocess.PIPE,
        text=True,
        timeout=600,
    )
    os.close(follower)
    reader.join(timeout=10)
    os.close(leader)
    shown = b"".join(chunks).decode(errors="replace")
    assert result.returncode == 0, shown
    assert "ask not what your country" in result.stdout.lower()
    assert "0/11 s" in shown and "11/11 s" in shown, shown


def test_segment_times_only_on_request(server: Server) -> None:
    """The extension the progress bar reads: absent from OpenAI's events unless asked for."""
    with server.http() as http:
        for header, timed in (({}, False), ({"x-voxgate-segment-times": "true"}, True)):
            with open(audio_path(JFK), "rb") as audio:
                response = http.post(
                    "/v1/audio/transcriptions",
                    files={"file": (JFK, audio)},
                    data={"model": "whisper-1", "stream": "true"},
                    headers=header,
                )
            deltas = [e for e in sse_events(response) if e["type"] == "transcript.text.delta"]
            assert deltas
            for delta in deltas:
                assert ("start" in delta and "end" in delta) is timed, delta
            if timed:
                assert 0 <= deltas[0]["start"] < deltas[-1]["end"] <= 11.5


def test_ctrl_c_cancels_the_servers_work(server: Server, data_dir: Path) -> None:
    """SIGINT while a long file is being transcribed: exit 130, the engine goes idle, and the
    request's ledger row is cancelled, billed for less than the whole file."""
    with LedgerReader(f"sqlite:///{data_dir / 'voxgate.db'}") as ledger:
        before = {row["request_id"] for row in ledger.rows()}
        process = subprocess.Popen(
            [sys.executable, "-m", "voxgate", "transcribe", str(audio_path(LONG))],
            env=cli_env(server),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_sigint_as_in_a_terminal,
        )
        try:
            wait_until(lambda: _running(server) == 1, "the transcription to start")
            process.send_signal(signal.SIGINT)
            _, err = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
        assert process.returncode == 130, err
        assert "cancelled" in err and "Traceback" not in err
        wait_until(lambda: _running(server) == 0, "the engine to stop")
        new = [row["request_id"] for row in ledger.rows() if row["request_id"] not in before]
        (row,) = ledger.settled(new).values()
    assert row["endpoint"] == "/v1/audio/transcriptions"
    assert row["status"] == "cancelled", row
    assert row["input_audio_ms"] < 221_000


def _sigint_as_in_a_terminal() -> None:
    """Give the CLI the SIGINT a user's terminal gives it. A non-interactive shell starts
    background commands with SIGINT ignored (POSIX), an ignored signal stays ignored across
    exec, and Python then installs no KeyboardInterrupt handler: a suite run with ``make test &``
    handed that to the CLI, which went on reading the stream after the signal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _running(server: Server) -> int:
    engines = httpx.get(f"{server.base_url}/health", timeout=10).json()["engines"]
    return int(engines["faster-whisper"]["running"])
