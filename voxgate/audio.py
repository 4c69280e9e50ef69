"""Audio in and out, through PyAV (FFmpeg 8 bundled in the wheel; no system ffmpeg needed).

``decode_for_whisper`` reads anything FFmpeg reads (video files give their audio track) into
16 kHz mono float32, Whisper's input. ``SpeechEncoder`` encodes PCM chunks incrementally into
one of OpenAI's six speech formats and returns the bytes each chunk produced, so a response can
stream as it is synthesised. Both are blocking: call them through ``concurrency``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import BinaryIO, Literal, cast, get_args

import av
import av.error
import numpy as np
from av.audio.stream import AudioStream

from voxgate.errors import InvalidAudio

WHISPER_SAMPLE_RATE = 16000

SpeechFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
SPEECH_FORMATS: tuple[str, ...] = get_args(SpeechFormat)


@dataclass(frozen=True)
class _Codec:
    container: str
    codec: str
    media_type: str
    sample_rate: int | None = None  # None: keep the engine's rate
    bit_rate: int | None = None
    options: dict[str, str] = field(default_factory=dict)


# pcm is OpenAI's raw 24 kHz s16le; libopus only takes 8/12/16/24/48 kHz. Ogg pages are flushed
# every 200 ms instead of every ~2 s so opus streams as promptly as the other formats.
_CODECS: dict[str, _Codec] = {
    "mp3": _Codec("mp3", "libmp3lame", "audio/mpeg", bit_rate=64_000),
    "opus": _Codec("ogg", "libopus", "audio/ogg", 48_000, 32_000, {"page_duration": "200000"}),
    "aac": _Codec("adts", "aac", "audio/aac", bit_rate=64_000),
    "flac": _Codec("flac", "flac", "audio/flac"),
    "wav": _Codec("wav", "pcm_s16le", "audio/wav"),
    "pcm": _Codec("s16le", "pcm_s16le", "audio/pcm", 24_000),
}


def media_type(response_format: SpeechFormat) -> str:
    return _CODECS[response_format].media_type


def decode_for_whisper(source: str | BinaryIO) -> np.ndarray:
    """Decode the first audio stream to 16 kHz mono float32 in [-1, 1].

    Raises InvalidAudio (a 400, ``param="file"``) for anything undecodable, a file without an
    audio track, or audio with no samples.
    """
    resampler = av.AudioResampler(format="flt", layout="mono", rate=WHISPER_SAMPLE_RATE)
    pieces: list[np.ndarray] = []
    try:
        with av.open(source, mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise InvalidAudio("The uploaded file has no audio track.", param="file")
            stream = container.streams.audio[0]
            for frame in container.decode(stream):
                pieces.extend(f.to_ndarray()[0] for f in resampler.resample(frame))
            pieces.extend(f.to_ndarray()[0] for f in resampler.resample(None))
    except (av.error.FFmpegError, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise InvalidAudio(
            "The uploaded file could not be decoded as audio. Supported formats: flac, m4a, "
            "mp3, mp4, mpeg, mpga, oga, ogg, wav, webm (and anything else FFmpeg reads).",
            param="file",
        ) from exc
    audio = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    if audio.size == 0:
        raise InvalidAudio("The uploaded file contains no audio.", param="file")
    return audio.astype(np.float32, copy=False)


class _Sink:
    """A write-only, non-seekable file for the muxer: what it writes is collected and drained."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def write(self, data: bytes) -> int:
        self._buffer += data
        return len(data)

    def seekable(self) -> bool:
        return False

    def drain(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


class _SeekableSink(_Sink):
    """A seekable file: the muxer can go back and write true sizes (WAV's RIFF sizes, FLAC's
    STREAMINFO sample count and MD5) once it knows them, so nothing is drained before the end."""

    def __init__(self) -> None:
        self._file = io.BytesIO()

    def write(self, data: bytes) -> int:
        return self._file.write(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def seekable(self) -> bool:
        return True

    def drain(self) -> bytes:
        return b""

    def getvalue(self) -> bytes:
        return self._file.getvalue()


class SpeechEncoder:
    """Incremental encoder from mono s16 PCM at ``input_rate`` to ``response_format``.

    Streamed (the default), each ``encode`` returns the bytes that are ready, and a header
    written before the length was known stays as it was (WAV sizes 0xFFFFFFFF, FLAC
    ``total_samples`` 0). With ``whole=True`` nothing is returned until ``finish``, which
    returns the whole file with true sizes in its header.
    """

    def __init__(
        self, response_format: SpeechFormat, input_rate: int, *, whole: bool = False
    ) -> None:
        codec = _CODECS[response_format]
        self.media_type = codec.media_type
        self._input_rate = input_rate
        output_rate = codec.sample_rate or input_rate
        self._sink = _SeekableSink() if whole else _Sink()
        self._container = av.open(
            self._sink, mode="w", format=codec.container, options=dict(codec.options)
        )
        self._stream = cast(
            AudioStream, self._container.add_stream(codec.codec, rate=output_rate, layout="mono")
        )
        if codec.bit_rate:
            self._stream.bit_rate = codec.bit_rate
        self._resampler = av.AudioResampler(
            format=self._stream.codec_context.format.name, layout="mono", rate=output_rate
        )
        self._closed = False

    def encode(self, samples: np.ndarray) -> bytes:
        """Feed int16 samples; return whatever encoded bytes are ready (possibly none)."""
        pcm = np.ascontiguousarray(samples, dtype=np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = self._input_rate
        self._mux(self._resampler.resample(frame))
        return self._sink.drain()

    def finish(self) -> bytes:
        """Flush the resampler, encoder and muxer; return the final bytes."""
        if self._closed:
            return b""
        self._closed = True
        self._mux(self._resampler.resample(None))
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        if isinstance(self._sink, _SeekableSink):
            return self._sink.getvalue()
        return self._sink.drain()

    def close(self) -> None:
        """Release FFmpeg resources without flushing (for abandoned streams)."""
        if not self._closed:
            self._closed = True
            self._container.close()

    def _mux(self, frames: list[av.AudioFrame]) -> None:
        for frame in frames:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
