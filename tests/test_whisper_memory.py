"""Whisper's encoder holds one 30 s chunk's activations at a time, whatever the batch.

Its self-attention over 1,500 frames holds about 100 MB of scores per chunk while it runs; a
batch of 4 encoded together raised a server's peak by 400 MB (docs/benchmarks.md, "Long
audio"). The real model encodes four chunks of real speech here, the batched pipeline's
default batch, and the process's peak RSS (``VmHWM``, reset through ``clear_refs``) is read
around it: memory, not time, so a busy machine does not change it much.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import audio_path
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim

from voxgate.audio import WHISPER_SAMPLE_RATE, pcm_pieces
from voxgate.providers.local.assets import whisper_base_dir
from voxgate.providers.local.whisper import _OneChunkEncoder

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

BATCH = 4
# Four chunks encoded together rose 300-400 MB; one at a time, about 100 MB.
MAX_RISE_MB = 200


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field}")


def _peak_rise_mb(encode: Callable[[], object]) -> float:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    start = _status_mb("VmRSS")
    encode()
    return _status_mb("VmHWM") - start


def test_a_batch_is_encoded_one_chunk_at_a_time_to_the_same_output(data_dir: Path) -> None:
    model = _OneChunkEncoder(
        str(whisper_base_dir(data_dir / "models")),
        device="cpu",
        compute_type="int8",
        cpu_threads=2,
        local_files_only=True,
    )
    with audio_path("en-librivox-shakespeare-sonnet001.mp3").open("rb") as source:
        speech = np.concatenate(list(pcm_pieces(source, max_s=120)))
    chunk = 13 * WHISPER_SAMPLE_RATE  # four different 13 s pieces, padded to 30 s as in a batch
    features = np.stack(
        [
            pad_or_trim(model.feature_extractor(speech[i * chunk : (i + 1) * chunk])[..., :-1])
            for i in range(BATCH)
        ]
    )
    model.encode(features[:1])  # first call: lazy initialisation, not what is measured

    outputs: list[np.ndarray] = []
    rise = _peak_rise_mb(lambda: outputs.append(np.asarray(model.encode(features))))
    together = np.asarray(WhisperModel.encode(model, features))

    assert outputs[0].shape == together.shape == (BATCH, 1500, 512)
    np.testing.assert_allclose(outputs[0], together, atol=1e-3)
    assert rise < MAX_RISE_MB, f"encoding a batch of {BATCH} raised the peak by {rise:.0f} MB"
