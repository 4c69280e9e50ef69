"""Long audio split for a remote upstream: the gateway's memory and time for an hour.

Why: splitting must not hold the hour (issue 9, item 2: "never hold the whole decoded file").
A pure gateway replica (``VOXGATE_LOCAL_ENGINES=off``) in front of the fake upstream
(tests/fake_upstream.py) transcribes an hour of real speech (bench/long_audio.py: the English
clips joined, Opus) through two providers: one with OpenAI's defaults and a duration cap
(``max_audio_s = 1400``: pieces of 600 s), one with a 1 MB upload cap (pieces of 29.5 s).
Measured: the server's RSS when idle (after a warm-up split, which loads the VAD once) and its
peak while the hour is split, sent and stitched (sampled every 0.2 s), wall time, and the
pieces the fake upstream received (each under its cap).

Run: ``.venv/bin/python bench/bench_chunked.py [--minutes 60] [--out results.json]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from bench_long_audio import RssSampler, rss_mb
from harness import REPO, load_average, log, running_server, server_env
from long_audio import build

sys.path.insert(0, str(REPO / "tests"))
from fake_upstream import FakeUpstream

API_KEY = "sk-bench-chunked"
WARM_UP = REPO / "tests" / "data" / "audio" / "en-ljspeech-LJ001-0001-to-0032-long.flac"
MODELS = {  # model id: (provider settings, upstream model with the fake's cap)
    "long-600s": ("max_audio_s = 1400", "whisper-1@1400s"),
    "long-1mb": ("max_upload_mb = 1", "whisper-1@1024kb"),
}


def config(up: FakeUpstream) -> str:
    parts = []
    for model_id, (settings, upstream_model) in MODELS.items():
        parts.append(
            f'[providers.{model_id.replace("-", "_")}]\nbase_url = "{up.base_url}"\n'
            f"timeout_s = 600\n{settings}\n\n"
            f'[[models]]\nid = "{model_id}"\nfeatures = ["speech-to-text"]\n'
            f'serve = ["{model_id.replace("-", "_")}:{upstream_model}"]\n\n'
        )
    return "".join(parts)


def transcribe(base_url: str, model: str, path: Path) -> httpx.Response:
    with path.open("rb") as file:
        response = httpx.post(
            f"{base_url}/v1/audio/transcriptions",
            headers={"authorization": f"Bearer {API_KEY}"},
            data={"model": model, "response_format": "verbose_json"},
            files={"file": (path.name, file, "audio/ogg")},
            timeout=3600,
        )
    response.raise_for_status()
    return response


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results: dict[str, Any] = {"load_average_before": load_average(), "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-chunked-") as tmp, FakeUpstream() as up:
        work = Path(tmp)
        log(f"building {args.minutes:g} min of speech")
        long_file = build(work / "long.ogg", args.minutes * 60)
        size_mb = long_file.path.stat().st_size / 1e6
        log(f"  {long_file.duration_s:.0f} s, {size_mb:.1f} MB")
        (work / "voxgate.toml").write_text(config(up))
        env = server_env(
            work / "data",
            {
                "VOXGATE_API_KEYS": API_KEY,
                "VOXGATE_LOCAL_ENGINES": "off",
                "VOXGATE_CONFIG_FILE": str(work / "voxgate.toml"),
                "VOXGATE_MAX_UPLOAD_MB": "100",
            },
        )
        with running_server(env, work / "server.log", 120) as server:
            transcribe(server.base_url, "long-1mb", WARM_UP)  # loads Silero VAD once
            for model in MODELS:
                up.reset()
                time.sleep(1.0)
                idle = rss_mb(server.pid)
                sampler = RssSampler(server.pid)
                sampler.start()
                started = time.monotonic()
                body = transcribe(server.base_url, model, long_file.path).json()
                elapsed = time.monotonic() - started
                peak = sampler.stop()
                pieces = [r["file"] for r in up.requests() if r.get("file")]
                run = {
                    "model": model,
                    "audio_s": round(long_file.duration_s, 1),
                    "upload_mb": round(size_mb, 1),
                    "pieces": len(pieces),
                    "largest_piece_mb": round(max(p["size"] for p in pieces) / 1e6, 2),
                    "longest_piece_s": max(p["seconds"] for p in pieces),
                    "segments": len(body["segments"]),
                    "duration": body["duration"],
                    "idle_rss_mb": round(idle, 1),
                    "peak_rss_mb": round(peak, 1),
                    "peak_over_idle_mb": round(peak - idle, 1),
                    "wall_s": round(elapsed, 1),
                }
                log(json.dumps(run))
                results["runs"].append(run)
    results["load_average_after"] = load_average()
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
