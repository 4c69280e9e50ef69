"""Text to speech: resolve the voice, start the provider, encode chunk by chunk."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

from voxgate.audio import SpeechEncoder, SpeechFormat
from voxgate.catalog import CatalogEntry
from voxgate.concurrency import run_in_thread
from voxgate.providers.base import PcmChunk, SpeechJob
from voxgate.services.container import Services
from voxgate.services.metering import Ticket


def start_speech(
    services: Services, entry: CatalogEntry, *, text: str, voice: str, speed: float
) -> AsyncGenerator[PcmChunk, None]:
    """Yield PCM as each sentence is synthesised. Raises on bad input before the first chunk."""
    job = SpeechJob(
        engine_model=entry.model.id, text=text, voice=entry.resolve_voice(voice), speed=speed
    )
    return services.router.speech_provider(entry).synthesize(job)


async def encode_stream(
    chunks: AsyncGenerator[PcmChunk, None],
    first: PcmChunk,
    response_format: SpeechFormat,
    ticket: Ticket,
) -> AsyncIterator[bytes]:
    """Encode ``first`` and then the rest of ``chunks``; every chunk's bytes leave at once.

    Each chunk is recorded on ``ticket`` as delivered once its bytes have been taken by the
    response, so a client that leaves mid-stream is billed for what it got.

    The opening quarter second of ``first`` is encoded and sent on its own: encoding a whole
    first sentence to mp3 takes ~100 ms while the engine synthesises the next one on the same
    cores, and the listener only needs the start to begin playing.
    """
    encoder = await run_in_thread(SpeechEncoder, response_format, first.sample_rate)
    opening = first.sample_rate // 4
    try:
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
    finally:
        encoder.close()
        await chunks.aclose()
