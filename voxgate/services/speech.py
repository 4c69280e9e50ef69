"""Text to speech: resolve the voice, start the provider, encode chunk by chunk."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

from voxgate.audio import SpeechEncoder, SpeechFormat
from voxgate.catalog import CatalogEntry
from voxgate.concurrency import run_in_thread
from voxgate.providers.base import PcmChunk, SpeechJob
from voxgate.services.container import Services


def start_speech(
    services: Services, entry: CatalogEntry, *, text: str, voice: str, speed: float
) -> AsyncGenerator[PcmChunk, None]:
    """Yield PCM as each sentence is synthesised. Raises on bad input before the first chunk."""
    job = SpeechJob(
        engine_model=entry.model.id, text=text, voice=entry.resolve_voice(voice), speed=speed
    )
    return services.router.speech_provider(entry).synthesize(job)


async def encode_stream(
    chunks: AsyncGenerator[PcmChunk, None], first: PcmChunk, response_format: SpeechFormat
) -> AsyncIterator[bytes]:
    """Encode ``first`` and then the rest of ``chunks``; every chunk's bytes leave at once.

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
        async for chunk in chunks:
            if data := await run_in_thread(encoder.encode, chunk.samples):
                yield data
        if data := await run_in_thread(encoder.finish):
            yield data
    finally:
        encoder.close()
        await chunks.aclose()
