"""Long recordings built from the real speech clips of tests/data/audio (never committed).

The clips are decoded, joined with short silences and repeated until the wanted length, then
encoded clip by clip as Opus (an hour is about 14 MB), so building an hour holds one clip in
memory. The result knows where each clip sits, for checking times and for reference text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from voxgate.audio import WHISPER_SAMPLE_RATE, SpeechEncoder, pcm_pieces

AUDIO_DIR = Path(__file__).resolve().parent.parent / "tests" / "data" / "audio"


@dataclass(frozen=True)
class Placed:
    clip: str
    start_s: float
    end_s: float
    text: str


@dataclass
class LongFile:
    path: Path
    duration_s: float = 0.0
    placed: list[Placed] = field(default_factory=list)

    @property
    def reference(self) -> str:
        return " ".join(piece.text for piece in self.placed)


def english_clips(*, max_clip_s: float = 60.0) -> list[dict[str, object]]:
    """The English clips of the manifest, in its order (the 222 s LJ Speech one left out)."""
    lines = (AUDIO_DIR / "manifest.jsonl").read_text().splitlines()
    clips = [json.loads(line) for line in lines if line.strip()]
    return [
        clip
        for clip in clips
        if clip["language"] == "en" and float(str(clip["duration_s"])) <= max_clip_s
    ]


def _pcm(name: str) -> np.ndarray:
    with (AUDIO_DIR / name).open("rb") as source:
        return np.concatenate(list(pcm_pieces(source, max_s=3600)))


def build(path: Path, seconds: float, *, gap_s: float = 1.0) -> LongFile:
    """Clips and gaps of silence, repeated in order until ``seconds`` of audio are written."""
    clips = english_clips()
    decoded = {str(clip["file"]): _pcm(str(clip["file"])) for clip in clips}
    gap = np.zeros(int(gap_s * WHISPER_SAMPLE_RATE), dtype=np.int16)
    encoder = SpeechEncoder("opus", WHISPER_SAMPLE_RATE)
    result = LongFile(path)
    at = 0
    with path.open("wb") as out:
        while at < seconds * WHISPER_SAMPLE_RATE:
            for clip in clips:
                name = str(clip["file"])
                samples = (np.clip(decoded[name], -1.0, 1.0) * 32767).astype(np.int16)
                start = at / WHISPER_SAMPLE_RATE
                at += len(samples)
                end = at / WHISPER_SAMPLE_RATE
                result.placed.append(Placed(name, start, end, str(clip["text"])))
                out.write(encoder.encode(samples))
                out.write(encoder.encode(gap))
                at += len(gap)
                if at >= seconds * WHISPER_SAMPLE_RATE:
                    break
        out.write(encoder.finish())
    result.duration_s = at / WHISPER_SAMPLE_RATE
    return result
