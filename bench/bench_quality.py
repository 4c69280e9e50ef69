"""Accuracy and speed through voxgate against faster-whisper called directly, clip by clip.

For each clip of the development set (``../shared/audio/manifest.jsonl`` by default), in one
run and interleaved (direct, then server, clip after clip, so a busy machine slows both alike):

* **direct**: Whisper base (the same model files, the same thread count and CPU priority) in
  this process with ``WhisperModel
  .transcribe(audio, beam_size=5)`` and every other option at faster-whisper's default, timed
  from the file on disk (decode included) to the last segment;
* **server**: ``voxgate serve`` (auth off, settings from ``--set``) called with the official
  SDK, timed from the upload to the response.

English clips are scored by word error rate: jiwer over texts normalised by Whisper's own
``EnglishTextNormalizer`` (the ``whisper-normalizer`` package: case, punctuation, spelled
numbers, British/American spelling). With ``--translate``, non-English clips that carry an
``english`` reference are translated both ways and scored with chrF (sacrebleu), clip by clip
and over the corpus. Translation clips come from the development set and from
``bench/data/fleurs-translation`` (FLEURS clips whose FLORES English sentence is known).

    .venv/bin/python bench/bench_quality.py                      # every English clip
    .venv/bin/python bench/bench_quality.py --only fleurs --set VOXGATE_WHISPER_BEAM_SIZE=1
    .venv/bin/python bench/bench_quality.py --translate --out bench/results/quality.json
    .venv/bin/python bench/bench_quality.py --translate-only --max-seconds 60
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import harness
import jiwer
import openai
import sacrebleu
from faster_whisper import WhisperModel
from faster_whisper.audio import decode_audio
from whisper_normalizer.english import EnglishTextNormalizer

from voxgate.concurrency import lower_thread_priority
from voxgate.providers.local.assets import whisper_base_dir

# The development set beside the repository (../shared/audio), else the copy in the tests.
DEFAULT_AUDIO = next(
    (d for d in (harness.REPO.parent / "shared" / "audio",) if (d / "manifest.jsonl").is_file()),
    harness.REPO / "tests" / "data" / "audio",
)
# More translation clips: FLEURS sentences whose English (FLORES) reference is known.
TRANSLATION_AUDIO = Path(__file__).resolve().parent / "data" / "fleurs-translation"
_normalise = EnglishTextNormalizer()


@dataclass
class ClipResult:
    file: str
    task: str
    duration_s: float
    reference: str
    direct_text: str
    server_text: str
    direct_s: float
    server_s: float
    ref_words: int = 0
    direct_errors: int = 0
    server_errors: int = 0


def _errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(reference words, word errors) after Whisper's English normaliser."""
    ref, hyp = _normalise(reference), _normalise(hypothesis)
    if not ref.split():
        return 0, len(hyp.split())
    out = jiwer.process_words(ref, hyp)
    return len(ref.split()), out.substitutions + out.deletions + out.insertions


def _direct(model: WhisperModel, path: Path, task: str) -> tuple[str, float]:
    started = time.perf_counter()
    segments, _ = model.transcribe(decode_audio(str(path)), beam_size=5, task=task)
    text = "".join(segment.text for segment in segments).strip()
    return text, time.perf_counter() - started


def _server(client: openai.OpenAI, path: Path, task: str) -> tuple[str, float]:
    started = time.perf_counter()
    with path.open("rb") as audio:
        if task == "translate":
            result: Any = client.audio.translations.create(model="whisper-1", file=audio)
        else:
            result = client.audio.transcriptions.create(model="whisper-1", file=audio)
    return str(result.text).strip(), time.perf_counter() - started


def _clips(args: argparse.Namespace) -> list[tuple[Path, dict[str, Any], str]]:
    """(path, manifest entry, task) for every chosen clip of every audio directory."""
    chosen: list[tuple[Path, dict[str, Any], str]] = []
    for audio_dir in args.audio_dir or [DEFAULT_AUDIO, TRANSLATION_AUDIO]:
        lines = (audio_dir / "manifest.jsonl").read_text().splitlines()
        for clip in map(json.loads, lines):
            wanted = not args.only or any(part in clip["file"] for part in args.only)
            if not wanted or clip["duration_s"] > args.max_seconds:
                continue
            path = audio_dir / clip["file"]
            if clip["language"] == "en" and not args.translate_only:
                chosen.append((path, clip, "transcribe"))
            elif (args.translate or args.translate_only) and clip.get("english"):
                chosen.append((path, clip, "translate"))
    return chosen


def run(args: argparse.Namespace) -> dict[str, Any]:
    clips = _clips(args)
    data_dir = Path(tempfile.mkdtemp(prefix="bench-quality-"))
    # The server's engine threads run at a lower CPU priority; so does the direct model here
    # (its CTranslate2 pool inherits it), or foreign load on a shared machine would slow only
    # the server.
    lower_thread_priority()
    model = WhisperModel(
        str(whisper_base_dir(data_dir / "models")),
        device="cpu",
        compute_type="int8",
        cpu_threads=os.cpu_count() or 1,
        local_files_only=True,
    )
    settings = dict(item.split("=", 1) for item in args.set)
    env = harness.server_env(data_dir, {"VOXGATE_AUTH": "off", **settings})
    results: list[ClipResult] = []
    with harness.running_server(env, data_dir / "server.log", timeout_s=300) as server:
        client = openai.OpenAI(
            base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=1800
        )
        _server(client, clips[0][0], clips[0][2])  # warm both
        _direct(model, clips[0][0], clips[0][2])
        for path, clip, task in clips:
            direct_text, direct_s = _direct(model, path, task)
            server_text, server_s = _server(client, path, task)
            reference = clip["text"] if task == "transcribe" else clip["english"]
            result = ClipResult(
                clip["file"],
                task,
                clip["duration_s"],
                reference,
                direct_text,
                server_text,
                round(direct_s, 3),
                round(server_s, 3),
            )
            if task == "transcribe":
                result.ref_words, result.direct_errors = _errors(reference, direct_text)
                _, result.server_errors = _errors(reference, server_text)
            results.append(result)
            # Texts too, so a run cut short on a busy machine still shows what it decoded.
            harness.log(
                f"{clip['file']}: direct {direct_s:.1f}s, server {server_s:.1f}s\n"
                f"  direct: {direct_text}\n  server: {server_text}"
            )
    return {"settings": settings, "load": harness.load_average(), "clips": results}


def _relative(value: float, base: float) -> str:
    return f"{(value - base) / base:+.1%}" if base else "n/a"


def report(outcome: dict[str, Any]) -> str:
    clips: list[ClipResult] = outcome["clips"]
    lines = [
        f"settings: {outcome['settings'] or 'defaults'}; load average at the end: "
        f"{outcome['load']}",
    ]
    words = [c for c in clips if c.task == "transcribe"]
    if words:
        lines += [
            "",
            "| clip | s | ref words | direct errors | server errors | direct s | server s |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
    for c in words:
        lines.append(
            f"| {c.file} | {c.duration_s:.1f} | {c.ref_words} | {c.direct_errors} | "
            f"{c.server_errors} | {c.direct_s:.2f} | {c.server_s:.2f} |"
        )
    if words:
        ref = sum(c.ref_words for c in words)
        direct_wer = sum(c.direct_errors for c in words) / ref
        server_wer = sum(c.server_errors for c in words) / ref
        direct_s = sum(c.direct_s for c in words)
        server_s = sum(c.server_s for c in words)
        lines += [
            "",
            f"corpus WER: direct {direct_wer:.4f}, server {server_wer:.4f} "
            f"(relative change {_relative(server_wer, direct_wer)}); "
            f"time: direct {direct_s:.1f} s, server {server_s:.1f} s "
            f"(ratio {server_s / direct_s:.3f})",
        ]
    translated = [c for c in clips if c.task == "translate"]
    if translated:
        lines += [
            "",
            "| clip | s | direct chrF | server chrF | direct s | server s |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for c in translated:
            lines.append(
                f"| {c.file} | {c.duration_s:.1f} | {_chrf([c.direct_text], [c.reference]):.1f} | "
                f"{_chrf([c.server_text], [c.reference]):.1f} | {c.direct_s:.2f} | "
                f"{c.server_s:.2f} |"
            )
        refs = [c.reference for c in translated]
        direct = _chrf([c.direct_text for c in translated], refs)
        server = _chrf([c.server_text for c in translated], refs)
        direct_s = sum(c.direct_s for c in translated)
        server_s = sum(c.server_s for c in translated)
        lines += [
            "",
            f"translation corpus chrF over {len(translated)} clips: direct {direct:.1f}, "
            f"server {server:.1f}; time: direct {direct_s:.1f} s, server {server_s:.1f} s "
            f"(ratio {server_s / direct_s:.3f})",
        ]
    return "\n".join(lines)


def _chrf(hypotheses: list[str], references: list[str]) -> float:
    """Corpus chrF (sacrebleu's defaults: character 6-grams, beta 2, case-sensitive)."""
    return float(sacrebleu.corpus_chrf(hypotheses, [references]).score)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--audio-dir",
        type=Path,
        action="append",
        help="a directory with manifest.jsonl (repeatable; default: the development set and "
        "bench/data/fleurs-translation)",
    )
    parser.add_argument(
        "--only", action="append", help="only clips whose file name contains this (repeatable)"
    )
    parser.add_argument("--max-seconds", type=float, default=3600, help="skip longer clips")
    parser.add_argument("--translate", action="store_true", help="also score translation")
    parser.add_argument("--translate-only", action="store_true", help="score translation only")
    parser.add_argument("--set", action="append", default=[], metavar="VOXGATE_X=VALUE")
    parser.add_argument("--out", type=Path, help="write every clip's texts and times as JSON")
    args = parser.parse_args()
    outcome = run(args)
    print(report(outcome))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        data = {**outcome, "clips": [asdict(c) for c in outcome["clips"]]}
        args.out.write_text(json.dumps(data, indent=1))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
