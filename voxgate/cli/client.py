"""``voxgate speak``, ``transcribe``, ``translate`` and ``models``: a running server's client.

They talk HTTP to the server (``--base-url`` / ``VOXGATE_BASE_URL``, the local one by default)
with an API key (``--api-key`` / ``VOXGATE_API_KEY``), exactly as any other client would, so
what they write is what the API returns.

Progress: ``transcribe`` and ``translate`` read the file's duration from its header (PyAV,
locally, no decoding) and stream the transcript with voxgate's segment-times extension
(``x-voxgate-segment-times``), so the bar advances by the audio seconds the server has
decoded, as it decodes them. srt and vtt are written from those same segments with the
server's own formatter; ``verbose_json`` (which needs Whisper's quality signals) is a plain
request, shown as a spinner with the elapsed time.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, cast, get_args

import httpx
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from voxgate import formats
from voxgate.audio import SpeechFormat, probe_duration
from voxgate.catalog import SPEECH, TRANSCRIPTIONS, TRANSLATIONS
from voxgate.cli.http import (
    API_KEY_HELP,
    BASE_URL_HELP,
    JSON_HELP,
    ClientError,
    Server,
    check,
    fail,
    print_json,
    reporting,
)
from voxgate.errors import VoxgateError
from voxgate.providers.base import Segment
from voxgate.schemas import TranscriptFormat

BaseUrl = Annotated[str | None, typer.Option("--base-url", help=BASE_URL_HELP, show_default=False)]
ApiKey = Annotated[str | None, typer.Option("--api-key", help=API_KEY_HELP, show_default=False)]
AsJson = Annotated[bool, typer.Option("--json", help=JSON_HELP)]

SPEECH_FORMATS: tuple[str, ...] = get_args(SpeechFormat)
TRANSCRIPT_FORMATS: tuple[str, ...] = get_args(TranscriptFormat)
#: Output file extension of each transcript format.
TRANSCRIPT_EXTENSIONS = {
    "json": "json",
    "verbose_json": "json",
    "text": "txt",
    "srt": "srt",
    "vtt": "vtt",
}
#: Players tried in turn when ``speak`` has no ``-o``; each reads a WAV file.
PLAYERS: tuple[tuple[str, list[str]], ...] = (
    ("ffplay", ["-nodisp", "-autoexit", "-loglevel", "quiet"]),
    ("mpv", ["--really-quiet", "--no-video"]),
    ("paplay", []),
    ("aplay", ["-q"]),
    ("afplay", []),
)
SEGMENT_TIMES_HEADER = "x-voxgate-segment-times"

stderr = Console(stderr=True)


def speak(
    text: Annotated[str, typer.Argument(help="What to say, or - to read it from stdin.")],
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            help="File to write (- for stdout). Without it, the speech is played.",
            show_default=False,
        ),
    ] = None,
    model: Annotated[str, typer.Option(help="Speech model (see `voxgate models`).")] = "tts-1",
    voice: Annotated[str, typer.Option(help="Voice of the model.")] = "alloy",
    response_format: Annotated[
        str | None,
        typer.Option(
            "--format",
            help=f"One of {', '.join(SPEECH_FORMATS)}; default: from the file's extension, "
            "else mp3.",
            show_default=False,
        ),
    ] = None,
    speed: Annotated[float, typer.Option(help="0.25 to 4.0.")] = 1.0,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Text to speech: stream it into a file as it is synthesised, or play it."""
    if text == "-":
        text = sys.stdin.read()
    play = output is None
    fmt = "wav" if play else _speech_format(response_format, output)
    if play and response_format not in (None, "wav"):
        fail("playing needs --format wav (or none); write other formats with -o FILE")
    player = _player() if play else None
    server = Server.of(base_url, api_key)
    body = {"model": model, "voice": voice, "input": text, "response_format": fmt, "speed": speed}
    with (
        reporting(server),
        server.client() as client,
        client.stream("POST", SPEECH, json=body) as response,
    ):
        check(response)
        request_id = response.headers.get("x-request-id")
        if play:
            assert player is not None
            with tempfile.NamedTemporaryFile(suffix=".wav") as sink:
                size = _copy(response.iter_bytes(), sink.name)
                subprocess.run([*player, sink.name], check=False)
        else:
            assert output is not None
            size = _copy(response.iter_bytes(), str(output))
    written = None if play or str(output) == "-" else str(output)
    if as_json:
        summary = {"file": written, "played": play, "bytes": size, "format": fmt}
        print_json({**summary, "model": model, "voice": voice, "request_id": request_id})
    elif written is not None:
        stderr.print(f"wrote {written} ({size} bytes, {fmt})")


def _speech_format(requested: str | None, output: Path | None) -> str:
    if requested is not None:
        if requested not in SPEECH_FORMATS:
            fail(f"unknown --format {requested!r}: use one of {', '.join(SPEECH_FORMATS)}")
        return requested
    suffix = output.suffix.lower().lstrip(".") if output is not None else ""
    return suffix if suffix in SPEECH_FORMATS else "mp3"


def _player() -> list[str]:
    for name, args in PLAYERS:
        if path := shutil.which(name):
            return [path, *args]
    fail(
        "no audio player found (ffplay, mpv, paplay, aplay, afplay); "
        "write a file instead with -o FILE"
    )


def _copy(chunks: Iterator[bytes], path: str) -> int:
    """Write the chunks as they arrive to ``path`` (``-``: stdout); return the bytes written."""
    size = 0
    if path == "-":
        for chunk in chunks:
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
            size += len(chunk)
        return size
    with open(path, "wb") as sink:
        for chunk in chunks:
            sink.write(chunk)
            size += len(chunk)
    return size


Files = Annotated[list[Path], typer.Argument(help="Audio or video files, done one after another.")]
Model = Annotated[str, typer.Option(help="Speech-to-text model.")]
Format = Annotated[str, typer.Option("--format", help=f"One of {', '.join(TRANSCRIPT_FORMATS)}.")]
OutDir = Annotated[
    Path | None,
    typer.Option(
        "-o",
        "--output-dir",
        help="Write each result to DIR/<file name>.<format's extension> instead of stdout.",
        show_default=False,
    ),
]


def transcribe(
    files: Files,
    model: Model = "whisper-1",
    response_format: Format = "json",
    language: Annotated[
        str | None, typer.Option(help="ISO-639-1 code; default: detected.", show_default=False)
    ] = None,
    output_dir: OutDir = None,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Speech to text, with a progress bar in seconds of audio done."""
    _run_files(
        TRANSCRIPTIONS,
        files,
        model=model,
        response_format=response_format,
        language=language,
        output_dir=output_dir,
        server=Server.of(base_url, api_key),
        as_json=as_json,
    )


def translate(
    files: Files,
    model: Model = "whisper-1",
    response_format: Format = "json",
    output_dir: OutDir = None,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Speech in any language to English text, with a progress bar."""
    _run_files(
        TRANSLATIONS,
        files,
        model=model,
        response_format=response_format,
        language=None,
        output_dir=output_dir,
        server=Server.of(base_url, api_key),
        as_json=as_json,
    )


def _run_files(
    path: str,
    files: list[Path],
    *,
    model: str,
    response_format: str,
    language: str | None,
    output_dir: Path | None,
    server: Server,
    as_json: bool,
) -> None:
    if response_format not in TRANSCRIPT_FORMATS:
        fail(f"unknown --format {response_format!r}: use one of {', '.join(TRANSCRIPT_FORMATS)}")
    for file in files:
        if not file.is_file():
            fail(f"no such file: {file}")
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
    with reporting(server), server.client() as client:
        for file in files:
            body, request_id = _one_file(
                client, path, file, model=model, response_format=response_format, language=language
            )
            target = None
            if output_dir is not None:
                target = output_dir / f"{file.stem}.{TRANSCRIPT_EXTENSIONS[response_format]}"
                target.write_text(body, encoding="utf-8")
            if as_json:
                result: Any = json.loads(body) if response_format.endswith("json") else body
                print_json(
                    {
                        "file": str(file),
                        "output": str(target) if target else None,
                        "format": response_format,
                        "request_id": request_id,
                        "result": result,
                    }
                )
            elif target is None:
                typer.echo(body if body.endswith("\n") else body + "\n", nl=False)
            else:
                stderr.print(f"{file} → {target}")


def _one_file(
    client: httpx.Client,
    path: str,
    file: Path,
    *,
    model: str,
    response_format: str,
    language: str | None,
) -> tuple[str, str | None]:
    """One request: (the body exactly as the API's ``response_format`` gives it, request id)."""
    with open(file, "rb") as source:
        try:
            duration_s = probe_duration(source)
        except VoxgateError:
            duration_s = None  # the server decodes more than a header probe; let it decide
        source.seek(0)
        fields = {"model": model, "response_format": response_format}
        if language:
            fields["language"] = language
        upload = {"file": (file.name, source)}
        if response_format == "verbose_json":
            with _spinner(file.name):
                response = client.post(path, data=fields, files=upload)
            check(response)
            return response.text, response.headers.get("x-request-id")
        fields["stream"] = "true"
        headers = {SEGMENT_TIMES_HEADER: "true"}
        with client.stream("POST", path, data=fields, files=upload, headers=headers) as response:
            check(response)
            done, segments = _follow(response, file.name, duration_s)
            request_id = response.headers.get("x-request-id")
    return _render(response_format, done, segments), request_id


def _follow(
    response: httpx.Response, name: str, duration_s: float | None
) -> tuple[dict[str, Any], list[Segment]]:
    """Read the SSE stream, advancing the bar by each segment's end; return the done event."""
    segments: list[Segment] = []
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
        TimeElapsedColumn(),
        console=stderr,
        transient=True,
        disable=not stderr.is_terminal,
    )
    with progress:
        task = progress.add_task(name, total=duration_s or None)
        for event in _events(response):
            if event.get("type") == "transcript.text.delta":
                start, end = float(event.get("start", 0.0)), float(event.get("end", 0.0))
                segments.append(
                    Segment(
                        id=len(segments), seek=0, start=start, end=end, text=str(event["delta"])
                    )
                )
                progress.update(task, completed=min(end, duration_s or end))
            elif event.get("type") == "transcript.text.done":
                progress.update(task, completed=duration_s or 0)
                return event, segments
    raise ClientError(f"the server ended the transcript of {name} before it was done")


def _events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    for line in response.iter_lines():
        if line.startswith("data:"):
            payload = line[5:].strip()
            if payload and payload != "[DONE]":
                yield cast(dict[str, Any], json.loads(payload))


def _render(response_format: str, done: dict[str, Any], segments: list[Segment]) -> str:
    """The body the API returns for ``response_format``, from the streamed transcript."""
    if response_format == "text":
        return str(done["text"]) + "\n"
    if response_format == "srt":
        return formats.to_srt(segments)
    if response_format == "vtt":
        return formats.to_vtt(segments)
    body: dict[str, Any] = {"text": done["text"]}
    usage = done.get("usage")
    if isinstance(usage, dict) and usage.get("type") == "duration":
        body["usage"] = usage
    return json.dumps(body, ensure_ascii=False)


def _spinner(name: str) -> Progress:
    progress = Progress(
        SpinnerColumn(),
        TextColumn(f"{name}: transcribing"),
        TimeElapsedColumn(),
        console=stderr,
        transient=True,
        disable=not stderr.is_terminal,
    )
    progress.add_task(name, total=None)
    return progress


def models(
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """The server's model catalog: features, prices, voices and languages."""
    server = Server.of(base_url, api_key)
    with reporting(server), server.client() as client:
        response = client.get("/api/models")
        check(response)
    records: list[dict[str, Any]] = response.json()["data"]
    if as_json:
        print_json(records)
        return
    table = Table("model", "alias of", "features", "price", "voices", "languages")
    for record in records:
        table.add_row(
            record["id"],
            record.get("alias_of") or "",
            ", ".join(record.get("features") or []),
            _price(record.get("pricing") or {}),
            _count(record.get("voices")),
            _count(record.get("languages")),
        )
    Console(width=max(Console().width, 120)).print(table)


def _price(pricing: dict[str, Any]) -> str:
    parts = []
    if pricing.get("per_second"):
        parts.append(f"${pricing['per_second'] * 60:.4g}/min audio")
    if pricing.get("input"):
        parts.append(f"${pricing['input']:.4g}/1M chars")
    if pricing.get("per_request"):
        parts.append(f"${pricing['per_request']:.4g}/request")
    return ", ".join(parts) or "free"


def _count(values: Any) -> str:
    if not values:
        return ""
    items = [str(v["id"]) if isinstance(v, dict) else str(v) for v in values]
    return ", ".join(items) if len(items) <= 4 else f"{len(items)} ({', '.join(items[:3])}, …)"
