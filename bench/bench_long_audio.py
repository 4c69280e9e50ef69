"""Long audio: the server's memory, time to first text and transcript quality on an hour of speech.

Builds an hour (``--minutes``) of real speech from the English clips of tests/data/audio
(bench/long_audio.py: clips joined with a second of silence, Opus, about 14 MB), starts
``voxgate serve`` with a 100 MiB upload limit, measures its idle RSS, streams one
transcription of the file and samples the server's RSS from /proc every 0.2 s meanwhile.
Reported: idle and peak RSS (and peak - idle; RssAnon, the heap's part, beside it), time from
the end of the upload to the first ``transcript.text.delta``, wall time, and how far the
transcript got. ``--no-stream`` asks for one JSON body instead (long windows are then decoded
in batches of ``VOXGATE_WHISPER_BATCH_SIZE`` chunks, a streamed job one chunk at a time);
``--env NAME=VALUE`` gives the servers a setting or an allocator variable to compare.

A whole hour takes Whisper base longer than a busy shared machine gives a benchmark, so
``--budget-s`` bounds the wall time: after it the client leaves (which also checks that the
server stops the job) and the report says how many seconds of audio were transcribed. The
measuring pass reads the whole hour before the first window either way, so the peak covers
decoding the full file.

``--code PATH`` runs the server from another checkout (``--code /work/main`` for the code
before windowing), for a side-by-side ratio in one run. ``--quality-minutes`` adds a
transcription of a shorter file read whole (non-streamed), scored by WER against the
references and against the concatenated transcripts of each clip sent on its own.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_long_audio.py --minutes 60 --budget-s 600 \\
        --code . --code /work/main --quality-minutes 5
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from harness import REPO, Server, load_average, log, running_server, server_env
from long_audio import AUDIO_DIR, LongFile, Placed, build

sys.path.insert(0, str(REPO / "tests"))
from test_transcriptions import normalise, wer

API_KEY = "sk-bench-long-audio"


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """One memory field of /proc/PID/status in MB: VmRSS, or its parts RssAnon and RssFile."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for {pid}")


class RssSampler(threading.Thread):
    """The highest RSS of one process seen every ``interval_s`` until stopped."""

    def __init__(self, pid: int, interval_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval_s = pid, interval_s
        self.peak_mb = 0.0
        self.peak_anon_mb = 0.0  # the heap's part of the peak (RssFile is the mapped libraries)
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.peak_mb = max(self.peak_mb, rss_mb(self.pid))
                self.peak_anon_mb = max(self.peak_anon_mb, rss_mb(self.pid, "RssAnon"))
            except (OSError, RuntimeError):
                return
            time.sleep(self.interval_s)

    def stop(self) -> float:
        self._halt.set()
        self.join()
        return self.peak_mb


@dataclass
class Run:
    code: str
    env: dict[str, str]
    audio_s: float
    idle_rss_mb: float
    peak_rss_mb: float
    idle_anon_mb: float
    peak_anon_mb: float
    upload_s: float
    first_delta_after_upload_s: float | None
    wall_s: float
    deltas: int
    finished: bool
    transcribed_words: int
    reference_words: int
    wer_of_prefix: float | None

    @property
    def peak_over_idle_mb(self) -> float:
        return self.peak_rss_mb - self.idle_rss_mb


class _TimedUpload:
    """The file as a request body, noting when its last byte was handed to the socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done_at: float | None = None

    def __iter__(self) -> Any:
        with self.path.open("rb") as source:
            while block := source.read(256 * 1024):
                yield block
        self.done_at = time.monotonic()


def _multipart(path: Path, fields: dict[str, str]) -> tuple[_TimedUpload, bytes, bytes, str]:
    boundary = "voxgate-bench-long-audio"
    head = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    )
    head += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"'
        "\r\nContent-Type: audio/ogg\r\n\r\n"
    ).encode()
    return _TimedUpload(path), head, f"\r\n--{boundary}--\r\n".encode(), boundary


def stream_once(
    server: Server,
    long_file: LongFile,
    budget_s: float,
    code: str,
    env: dict[str, str],
    *,
    stream: bool = True,
) -> Run:
    time.sleep(3)  # let the warm-up's garbage settle
    idle = min(rss_mb(server.pid) for _ in range(5) if not time.sleep(0.2))
    idle_anon = rss_mb(server.pid, "RssAnon")
    sampler = RssSampler(server.pid)
    sampler.start()
    upload, head, tail, boundary = _multipart(
        long_file.path, {"model": "whisper-1", "stream": str(stream).lower()}
    )

    def body() -> Any:
        yield head
        yield from upload
        yield tail

    headers = {
        "Authorization": f"Bearer {API_KEY}",
        "Content-Type": f"multipart/form-data; boundary={boundary}",
    }
    started = time.monotonic()
    first: float | None = None
    text: list[str] = []
    finished = False
    http = httpx.Client(base_url=server.base_url, timeout=budget_s + (600 if stream else 0))
    with (
        http,
        http.stream("POST", "/v1/audio/transcriptions", content=body(), headers=headers) as r,
    ):
        if r.status_code != 200:
            r.read()
            raise RuntimeError(f"{r.status_code}: {r.text}")
        if not stream:  # one JSON body at the end: the whole text is one "delta"
            try:
                text.append(json.loads(r.read())["text"])
                first, finished = time.monotonic(), True
            except httpx.ReadTimeout:
                log(f"  budget of {budget_s:.0f} s spent: leaving")
        for line in r.iter_lines() if stream else ():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if event["type"] == "transcript.text.delta":
                first = first or time.monotonic()
                text.append(event["delta"])
            elif event["type"] == "transcript.text.done":
                finished = True
            if time.monotonic() - started > budget_s:
                log(f"  budget of {budget_s:.0f} s spent: leaving")
                break
    wall = time.monotonic() - started
    time.sleep(2)
    peak = sampler.stop()
    upload_done = upload.done_at or started
    hypothesis = normalise("".join(text)).split()
    reference = normalise(long_file.reference).split()
    prefix = " ".join(reference[: len(hypothesis)])
    return Run(
        code=code,
        env=env,
        audio_s=long_file.duration_s,
        idle_rss_mb=round(idle, 1),
        peak_rss_mb=round(peak, 1),
        idle_anon_mb=round(idle_anon, 1),
        peak_anon_mb=round(sampler.peak_anon_mb, 1),
        upload_s=round(upload_done - started, 2),
        first_delta_after_upload_s=round(first - upload_done, 2) if first else None,
        wall_s=round(wall, 1),
        deltas=len(text),
        finished=finished,
        transcribed_words=len(hypothesis),
        reference_words=len(reference),
        wer_of_prefix=round(wer(prefix, " ".join(hypothesis)), 4) if hypothesis else None,
    )


def quality(server: Server, long_file: LongFile) -> dict[str, Any]:
    """The long file read whole vs its clips sent one by one: WER of each against the references
    and of the long transcript against the concatenated clip transcripts."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=7200) as http:

        def transcribe(path: Path) -> str:
            with path.open("rb") as source:
                response = http.post(
                    "/v1/audio/transcriptions",
                    files={"file": (path.name, source)},
                    data={"model": "whisper-1"},
                )
            response.raise_for_status()
            return str(response.json()["text"])

        started = time.monotonic()
        long_text = transcribe(long_file.path)
        long_s = time.monotonic() - started
        pieces: dict[str, str] = {}
        started = time.monotonic()
        for placed in long_file.placed:
            if placed.clip not in pieces:
                pieces[placed.clip] = transcribe(AUDIO_DIR / placed.clip)
        pieces_s = time.monotonic() - started
    short_text = " ".join(pieces[placed.clip] for placed in long_file.placed)
    return {
        "audio_s": long_file.duration_s,
        "clips": len(long_file.placed),
        "long_wall_s": round(long_s, 1),
        "distinct_clips_wall_s": round(pieces_s, 1),
        "wer_long_vs_reference": round(wer(long_file.reference, long_text), 4),
        "wer_pieces_vs_reference": round(wer(long_file.reference, short_text), 4),
        "wer_long_vs_pieces": round(wer(short_text, long_text), 4),
    }


def cached(directory: Path, minutes: float) -> LongFile | None:
    path = directory / f"long-{minutes:g}.ogg"
    if not path.with_suffix(".json").exists():
        directory.mkdir(parents=True, exist_ok=True)
        return None
    saved = json.loads(path.with_suffix(".json").read_text())
    return LongFile(path, saved["duration_s"], [Placed(**p) for p in saved["placed"]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--budget-s", type=float, default=600.0)
    parser.add_argument("--code", action="append", help="checkout to run the server from")
    parser.add_argument("--quality-minutes", type=float, default=0.0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--cache", type=Path, help="keep the built hour here between runs")
    parser.add_argument("--startup-s", type=float, default=600.0, help="wait this long for /health")
    parser.add_argument(
        "--no-stream",
        action="store_true",
        help="ask for one JSON body instead (long audio is then decoded in full batches)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an extra variable for the servers (VOXGATE_WHISPER_BATCH_SIZE=1, MALLOC_ARENA_MAX=2)",
    )
    args = parser.parse_args()
    codes = [Path(c).resolve() for c in args.code or [str(REPO)]]
    extra = dict(item.split("=", 1) for item in args.env)
    results: dict[str, Any] = {"load_average_before": load_average(), "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-long-") as tmp:
        work = Path(tmp)
        long_file = cached(args.cache, args.minutes) if args.cache else None
        if long_file is None:
            log(f"building {args.minutes:g} min of speech")
            long_file = build(
                (args.cache or work) / f"long-{args.minutes:g}.ogg", args.minutes * 60
            )
            if args.cache:
                long_file.path.with_suffix(".json").write_text(
                    json.dumps(asdict(long_file), default=str)
                )
        log(f"  {long_file.duration_s:.0f} s, {long_file.path.stat().st_size / 1e6:.1f} MB")
        for code in codes:
            env = server_env(
                work / "data",
                {
                    "VOXGATE_API_KEYS": API_KEY,
                    "VOXGATE_MAX_UPLOAD_MB": "100",
                    "VOXGATE_ENGINE_JOB_TIMEOUT_S": "86400",
                    "PYTHONPATH": str(code),
                }
                | extra,
            )
            log(f"server from {code}")
            with running_server(env, work / f"server-{code.name}.log", args.startup_s) as server:
                run = stream_once(
                    server, long_file, args.budget_s, str(code), extra, stream=not args.no_stream
                )
                entry = asdict(run) | {"peak_over_idle_mb": round(run.peak_over_idle_mb, 1)}
                log(json.dumps(entry))
                results["runs"].append(entry)
                if args.quality_minutes and code == codes[0]:
                    short = build(work / "quality.ogg", args.quality_minutes * 60)
                    results["quality"] = quality(server, short)
                    log(json.dumps(results["quality"]))
    results["load_average_after"] = load_average()
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
