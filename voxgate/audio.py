"""Audio in and out, through PyAV (FFmpeg 8 bundled in the wheel; no system ffmpeg needed).

``WhisperDecoder`` reads anything FFmpeg reads (video files give their audio track) into
16 kHz mono float32, Whisper's input, frame by frame and within a bound on its length;
``probe_duration`` reads what a header claims without decoding. ``SpeechEncoder`` encodes PCM
chunks incrementally into one of OpenAI's six speech formats and returns the bytes each chunk
produced, so a response can stream as it is synthesised. All of them block: call them through
``concurrency``.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Literal, cast, get_args

import av
import av.error
import numpy as np
from av.audio.stream import AudioStream
from av.container import InputContainer

from voxgate.errors import AudioTooLong, InvalidAudio

WHISPER_SAMPLE_RATE = 16000
# The decoder reports progress (and so notices a consumer that left) every this many seconds of
# decoded audio: often enough to stop within milliseconds, rarely enough to cost nothing.
PROGRESS_S = 10.0
# Decoded audio may exceed what the packets stated by this much (or 1 %) before it is refused.
MEASURE_SLACK_S = 1.0
_DECODE_ERRORS = (av.error.FFmpegError, ValueError, IndexError, UnicodeDecodeError)

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


def probe_duration(source: BinaryIO) -> float | None:
    """The first audio stream's duration as the container's header states it, in seconds.

    Reads the header only (no decoding), so it can run before a request is admitted. None when
    the header does not say (streamed FLAC, some WebM). The header is the sender's claim, so it
    is only used to refuse early, never to bill. Raises InvalidAudio like the decoder.
    """
    source.seek(0)
    try:
        with av.open(source, mode="r", metadata_errors="ignore") as container:
            stream = _audio_stream(container)
            if stream.duration is not None and stream.time_base is not None:
                return max(0.0, float(stream.duration * stream.time_base))
            if container.duration is not None:
                return max(0.0, container.duration / av.time_base)
            return None
    except _DECODE_ERRORS as exc:
        raise _undecodable() from exc
    finally:
        source.seek(0)


def measure_duration(source: BinaryIO, *, max_s: float) -> float:
    """Seconds of audio in the first audio stream, counted packet by packet by demuxing.

    This is what a routed (upstream) request is billed on: what the upload really holds, not
    what its header claims or an upstream reports. Demuxing reads the container without
    decoding (milliseconds for minutes of audio); a stream with a packet that states no
    duration is decoded to count its samples (``AudioMeter``, as for the local engine). Plain
    WAV is read from its chunks. Raises AudioTooLong past ``max_s``, InvalidAudio for no audio.
    """
    seconds = wav_duration(source)
    if seconds is not None:
        if seconds > max_s:
            raise audio_too_long(max_s)
        return seconds
    meter = AudioMeter(source, max_s=max_s)
    for _ in meter.run():
        pass
    return meter.measured_s


_WAV_CODES = (1, 3)  # PCM integer, IEEE float
_WAV_EXTENSIBLE = 0xFFFE


def wav_duration(source: BinaryIO, *, max_chunks: int | None = None) -> float | None:
    """Seconds in an uncompressed (PCM or float) WAV, from its chunks and the bytes really
    there (a ``data`` size larger than the file is not believed), in microseconds instead of
    PyAV's milliseconds. None for anything else (the caller demuxes it), and for a file with
    more than ``max_chunks`` chunks before its data (so a caller on the event loop is never
    held up by a file of a million tiny chunks)."""
    source.seek(0)
    try:
        head = source.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        block_align = sample_rate = 0
        chunks = 0
        while max_chunks is None or chunks < max_chunks:
            chunks += 1
            chunk = source.read(8)
            if len(chunk) < 8:
                return None
            kind, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if kind == b"fmt ":
                fmt = source.read(size)
                if len(fmt) < 16:
                    return None
                code, _channels, sample_rate, _rate, block_align = struct.unpack("<HHIIH", fmt[:14])
                if code == _WAV_EXTENSIBLE and len(fmt) >= 26:
                    code = struct.unpack("<H", fmt[24:26])[0]
                if code not in _WAV_CODES or block_align == 0 or sample_rate == 0:
                    return None
                if size % 2:
                    source.seek(1, io.SEEK_CUR)
            elif kind == b"data":
                if not block_align:
                    return None
                start = source.tell()
                end = source.seek(0, io.SEEK_END)
                available = min(size, end - start) if size else end - start
                frames = available // block_align
                return frames / sample_rate if frames else None
            else:
                source.seek(size + size % 2, io.SEEK_CUR)
        return None
    finally:
        source.seek(0)


class WhisperDecoder:
    """Decodes one upload to 16 kHz mono float32 in [-1, 1], frame by frame, within a bound.

    ``run`` is a blocking generator for ``concurrency.iterate_in_thread``: it yields the seconds
    decoded so far every ``PROGRESS_S`` of audio, so a consumer that goes away (a client that
    disconnected, a key that cannot pay for more) stops it within milliseconds. It raises
    AudioTooLong at the first frame past ``max_s``, so a small file of hours of silence never
    becomes gigabytes of samples. Like FFmpeg, it decodes what it can: a packet the codec
    rejects is skipped, and a container that ends early or breaks ends the audio there; only
    an upload that yields no audio at all is InvalidAudio.

    With ``keep=False`` it only measures: the samples are counted and dropped, so an hour of
    audio is measured in constant memory (the windowed transcription decodes it again, piece
    by piece, with ``pcm_pieces``).
    """

    def __init__(
        self,
        source: BinaryIO,
        *,
        max_s: float,
        size_hint_s: float | None = None,
        keep: bool = True,
    ):
        self._source = source
        self._max_samples = int(max_s * WHISPER_SAMPLE_RATE)
        hint_s = min(size_hint_s or PROGRESS_S, max_s) if keep else 0.0
        self._samples = _Samples(int(hint_s * WHISPER_SAMPLE_RATE) + WHISPER_SAMPLE_RATE)
        self._keep = keep
        self._counted = 0
        self.max_s = max_s

    @property
    def decoded_s(self) -> float:
        return self._counted / WHISPER_SAMPLE_RATE

    def run(self) -> Iterator[float]:
        """Decode, yielding the seconds decoded so far now and then. Raises InvalidAudio."""
        next_progress = PROGRESS_S * WHISPER_SAMPLE_RATE
        for piece in pcm_pieces(self._source, max_s=self.max_s):
            if self._keep:
                self._samples.append(piece, self._max_samples)
            self._counted += len(piece)
            if self._counted >= next_progress:
                next_progress = self._counted + PROGRESS_S * WHISPER_SAMPLE_RATE
                yield self.decoded_s
        yield self.decoded_s

    def audio(self) -> np.ndarray:
        """The decoded samples (once ``run`` is exhausted); the decoder lets go of them."""
        return self._samples.take()

    def discard(self) -> None:
        """Free the samples now (a refused or abandoned decode)."""
        self._samples.take()


class AudioMeter:
    """Measures an upload's length from its packets' stated durations, demuxing only.

    Seven times faster than decoding (an hour of Opus: 4 s against 31 s on a busy machine), so
    the first window of a long file starts within seconds. A packet's duration is what the
    container says, so the transcription that follows decodes at most ``measured_s`` plus
    ``MEASURE_SLACK_S`` (``pcm_pieces(measured_s=...)``) and the bill never exceeds what was
    reserved. A stream with any packet of unknown duration is decoded to be measured instead.
    ``run`` yields progress and raises AudioTooLong / InvalidAudio like ``WhisperDecoder``.
    """

    def __init__(self, source: BinaryIO, *, max_s: float) -> None:
        self._source = source
        self.max_s = max_s
        self.measured_s = 0.0

    def run(self) -> Iterator[float]:
        self._source.seek(0)
        complete = True
        try:
            with av.open(self._source, mode="r", metadata_errors="ignore") as container:
                stream = _audio_stream(container)
                time_base = float(stream.time_base or 0.0)
                next_progress = PROGRESS_S
                for packet in container.demux(stream):
                    if not packet.size:
                        continue  # the demuxer's flush packet
                    if not packet.duration or not time_base:
                        complete = False
                        break
                    self.measured_s += packet.duration * time_base
                    if self.measured_s > self.max_s:
                        raise audio_too_long(self.max_s)
                    if self.measured_s >= next_progress:
                        next_progress = self.measured_s + PROGRESS_S
                        yield self.measured_s
        except _DECODE_ERRORS as exc:
            if not self.measured_s:
                raise _undecodable() from exc
        if not complete:
            decoder = WhisperDecoder(self._source, max_s=self.max_s, keep=False)
            for self.measured_s in decoder.run():
                yield self.measured_s
        if not self.measured_s:
            raise InvalidAudio("The uploaded file contains no audio.", param="file")
        yield self.measured_s


@dataclass(frozen=True)
class MeasuredAudio:
    """An upload whose decoded length is known, decoded again piece by piece when needed.

    ``pieces`` starts a fresh blocking generator of 16 kHz mono float32 pieces each time (see
    ``pcm_pieces``), so a job holds one piece, not the file.
    """

    duration_s: float
    pieces: Callable[[], Iterator[np.ndarray]]


def pcm_pieces(
    source: BinaryIO, *, max_s: float, measured_s: float | None = None
) -> Iterator[np.ndarray]:
    """The upload as 16 kHz mono float32 pieces (one per decoded frame), from its start.

    A blocking generator: memory is one frame, whatever the file's length. Raises AudioTooLong
    at the first frame past ``max_s``, InvalidAudio for an upload with no audio at all and for
    one that decodes to more than ``measured_s`` (what its packets stated) plus slack; a
    damaged packet is skipped and a container that breaks after some audio ends it there.
    """
    source.seek(0)
    max_samples = int(max_s * WHISPER_SAMPLE_RATE)
    if measured_s is not None:
        slack_s = max(MEASURE_SLACK_S, measured_s * 0.01)
        stated_samples = int((measured_s + slack_s) * WHISPER_SAMPLE_RATE)
    total = 0
    try:
        with av.open(source, mode="r", metadata_errors="ignore") as container:
            for piece in _decode(container, _audio_stream(container)):
                total += len(piece)
                if total > max_samples:
                    raise audio_too_long(max_s)
                if measured_s is not None and total > stated_samples:
                    raise InvalidAudio(
                        "The uploaded file decodes to more audio than its packets state.",
                        param="file",
                    )
                yield piece
    except _DECODE_ERRORS as exc:
        if not total:
            raise _undecodable() from exc
        # The container broke after some audio (a truncated upload): that is the audio.
    if not total:
        raise InvalidAudio("The uploaded file contains no audio.", param="file")


def _decode(container: InputContainer, stream: AudioStream) -> Iterator[np.ndarray]:
    resampler = _resampler()
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            continue  # a damaged packet: skip it, as FFmpeg does
        for frame in frames:
            try:
                yield from _samples_of(resampler.resample(frame))
            except ValueError:  # the format changed mid-stream: start a new resampler
                yield from _samples_of(resampler.resample(None))
                resampler = _resampler()
                yield from _samples_of(resampler.resample(frame))
    yield from _samples_of(resampler.resample(None))


def _samples_of(frames: list[av.AudioFrame]) -> Iterator[np.ndarray]:
    for frame in frames:
        yield frame.to_ndarray()[0]


class _Samples:
    """float32 samples in one buffer grown in place.

    ``ndarray.resize`` reallocates, and glibc moves large blocks with ``mremap``, so growing
    never holds two copies (list + concatenate peaked at twice the decoded size).
    """

    def __init__(self, capacity: int) -> None:
        self._data = np.empty(max(capacity, 1), dtype=np.float32)
        self.length = 0

    def append(self, piece: np.ndarray, limit: int) -> None:
        end = self.length + len(piece)
        if end > len(self._data):
            self._data.resize((max(end, min(2 * len(self._data), limit)),), refcheck=False)
        self._data[self.length : end] = piece
        self.length = end

    def take(self) -> np.ndarray:
        data, self._data = self._data, np.empty(0, dtype=np.float32)
        data.resize((self.length,), refcheck=False)
        self.length = 0
        return data


def audio_too_long(max_s: float) -> AudioTooLong:
    return AudioTooLong(
        f"The uploaded audio is longer than this server accepts ({max_s:g} s, "
        "VOXGATE_MAX_AUDIO_SECONDS). Split it into shorter files.",
        param="file",
    )


def _audio_stream(container: InputContainer) -> AudioStream:
    if not container.streams.audio:
        raise InvalidAudio("The uploaded file has no audio track.", param="file")
    return container.streams.audio[0]


def _resampler() -> av.AudioResampler:
    return av.AudioResampler(format="flt", layout="mono", rate=WHISPER_SAMPLE_RATE)


def _undecodable() -> InvalidAudio:
    return InvalidAudio(
        "The uploaded file could not be decoded as audio. Supported formats: flac, m4a, "
        "mp3, mp4, mpeg, mpga, oga, ogg, wav, webm (and anything else FFmpeg reads).",
        param="file",
    )


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
