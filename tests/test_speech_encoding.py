"""Speech encoding and text clean-up in process: headers with true sizes, silent pictographs."""

from __future__ import annotations

import io
import wave

import numpy as np
import pytest

from voxgate.audio import SpeechEncoder
from voxgate.services.speech import speakable_text, whole_clip

RATE = 22_050


def encode(response_format: str, *, whole: bool) -> bytes:
    tone = (np.sin(np.arange(2 * RATE) / 10) * 8000).astype(np.int16)  # 2 s
    encoder = SpeechEncoder(response_format, RATE, whole=whole)  # type: ignore[arg-type]
    data = b"".join(encoder.encode(part) for part in np.array_split(tone, 5))
    return data + encoder.finish()


def test_whole_wav_has_true_sizes_and_streamed_wav_the_placeholder() -> None:
    with wave.open(io.BytesIO(encode("wav", whole=True))) as reader:
        assert reader.getnframes() == 2 * RATE
    with wave.open(io.BytesIO(encode("wav", whole=False))) as reader:
        assert reader.getnframes() == 2**31 - 1  # what a stream has to promise up front


def test_whole_flac_has_its_sample_count_and_md5() -> None:
    soundfile = pytest.importorskip("soundfile")
    data = encode("flac", whole=True)
    assert int.from_bytes(data[18:26], "big") & (2**36 - 1) == 2 * RATE
    assert data[26:42] != bytes(16)
    samples, rate = soundfile.read(io.BytesIO(data), dtype="int16")
    assert (len(samples), rate) == (2 * RATE, RATE)
    streamed = encode("flac", whole=False)
    assert int.from_bytes(streamed[18:26], "big") & (2**36 - 1) == 0


def test_whole_clip_only_for_short_wav_and_flac() -> None:
    assert whole_clip("wav", "Hi.") and whole_clip("flac", "x" * 350)
    assert not whole_clip("flac", "x" * 351)
    assert not whole_clip("mp3", "Hi.") and not whole_clip("pcm", "Hi.")


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        ("Hi 👍🏽 there", "Hi there"),
        ("😀😀😀", ""),
        ("I ❤️ NY ★ 🇩🇪 1️⃣", "I NY 1"),
        ("3 € ≈ 3.2 $, 50 % — ok?", "3 € ≈ 3.2 $, 50 % — ok?"),
        ("Grüße, 你好。", "Grüße, 你好。"),
    ],
)
def test_pictographs_are_removed_and_everything_else_kept(text: str, spoken: str) -> None:
    assert " ".join(speakable_text(text).split()) == spoken
