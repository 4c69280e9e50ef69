"""Text to speech's helpers for the one path (``services/relay.py``): what can be spoken, when a
clip is synthesised whole, and the engine's PCM encoded (or wrapped in SSE) chunk by chunk."""

from __future__ import annotations

import base64
import contextlib
import logging
import unicodedata
from collections.abc import AsyncGenerator, AsyncIterator

import anyio

from voxgate import schemas
from voxgate.audio import SpeechEncoder, SpeechFormat
from voxgate.concurrency import run_in_thread
from voxgate.errors import VoxgateError
from voxgate.providers.base import PcmChunk
from voxgate.services.metering import Ticket

log = logging.getLogger("voxgate.speech")

# Inputs up to this long in a format whose header holds the length (WAV, FLAC) are synthesised
# whole before the first byte leaves, so the header carries true sizes. Longer ones stream.
WHOLE_CLIP_MAX_CHARS = 350
_SIZED_FORMATS = ("wav", "flac")

# Emoji parts that are not "other symbols": skin tones, variation selectors, joiners, keycaps,
# tag characters (flags of regions).
_EMOJI_PARTS = (
    (0x1F3FB, 0x1F3FF),
    (0xFE00, 0xFE0F),
    (0x200D, 0x200D),
    (0x20E3, 0x20E3),
    (0xE0020, 0xE007F),
)


def speakable_text(text: str) -> str:
    """``text`` without pictographs (emoji, dingbats, other symbols), each replaced by a space.

    Piper and eSpeak read a symbol out by its Unicode name ("grinning face", "symbol two six
    zero five"), so 4096 emoji became 818 s of audio. OpenAI's voices say nothing for them;
    neither do we. Letters, digits, punctuation, currency and maths signs are kept.
    """
    return "".join(" " if _unspoken(char) else char for char in text)


def _unspoken(char: str) -> bool:
    if unicodedata.category(char) == "So":
        return True
    code = ord(char)
    return any(low <= code <= high for low, high in _EMOJI_PARTS)


def whole_clip(response_format: SpeechFormat, text: str) -> bool:
    """Whether to synthesise all of ``text`` before sending, for a header with true sizes."""
    return response_format in _SIZED_FORMATS and len(text) <= WHOLE_CLIP_MAX_CHARS


async def close_quietly(stream: AsyncGenerator[object, None]) -> None:
    """Close ``stream`` (stopping its engine job and freeing its slot), even when cancelled."""
    with anyio.CancelScope(shield=True):
        try:
            await stream.aclose()
        except RuntimeError:  # still running in a task that is being torn down: it closes itself
            log.debug("speech stream was still running when closed", exc_info=True)


async def encode_stream(
    chunks: AsyncGenerator[PcmChunk, None],
    first: PcmChunk,
    response_format: SpeechFormat,
    ticket: Ticket,
    *,
    whole: bool = False,
) -> AsyncGenerator[bytes, None]:
    """Encode ``first`` and then the rest of ``chunks``; every chunk's bytes leave at once.

    Each chunk is recorded on ``ticket`` as delivered once its bytes have been taken by the
    response, so a client that leaves mid-stream is billed for what it got. With ``whole``,
    every chunk is encoded before anything is sent (see ``whole_clip``).

    The opening quarter second of ``first`` is encoded and sent on its own: encoding a whole
    first sentence to mp3 takes ~100 ms while the engine synthesises the next one on the same
    cores, and the listener only needs the start to begin playing.
    """
    encoder = await run_in_thread(
        lambda: SpeechEncoder(response_format, first.sample_rate, whole=whole)
    )
    try:
        if whole:
            pending = [first, *[chunk async for chunk in chunks]]
            for chunk in pending:
                await run_in_thread(encoder.encode, chunk.samples)
            yield await run_in_thread(encoder.finish)
            for chunk in pending:
                ticket.deliver(characters=chunk.characters, output_s=chunk.duration_s)
            return
        opening = first.sample_rate // 4
        for samples in (first.samples[:opening], first.samples[opening:]):
            if samples.size and (data := await run_in_thread(encoder.encode, samples)):
                yield data
        ticket.deliver(characters=first.characters, output_s=first.duration_s)
        async for chunk in chunks:
            if data := await run_in_thread(encoder.encode, chunk.samples):
                yield data
            ticket.deliver(characters=chunk.characters, output_s=chunk.duration_s)
        if data := await run_in_thread(encoder.finish):
            yield data
    except VoxgateError as exc:  # the response has begun: all that is left is to cut it
        log.warning("speech stream %s cut off: %s", ticket.request_id, exc.message)
        raise
    finally:
        with contextlib.suppress(Exception):
            encoder.close()
        await close_quietly(chunks)


async def sse_events(
    audio: AsyncIterator[bytes], *, characters: int
) -> AsyncGenerator[bytes, None]:
    """``speech.audio.delta`` per encoded chunk, then ``speech.audio.done``.

    Local models are metered in characters, so the done event's usage counts one input token per
    character and no output tokens.
    """
    async for data in audio:
        delta = schemas.SpeechAudioDelta(audio=base64.b64encode(data).decode())
        yield _sse(delta)
    usage = schemas.TokenUsage(input_tokens=characters, output_tokens=0, total_tokens=characters)
    yield _sse(schemas.SpeechAudioDone(usage=usage))


def _sse(event: schemas.SpeechAudioDelta | schemas.SpeechAudioDone) -> bytes:
    return f"data: {event.model_dump_json()}\n\n".encode()
