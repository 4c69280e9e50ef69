"""The upload decoder in-process: its cap, its stop flag, truncated and non-audio files.

The same cases through a real server (memory measured, refusals, billing) are in
``test_uploads.py``; these pin the decoder's own contract quickly.
"""

from __future__ import annotations

import asyncio
import io
from contextlib import aclosing

import pytest
from conftest import audio_path
from test_uploads import BOMB_S, MAX_AUDIO_S, TRUNCATED, png_1x1, silence, video_without_audio

from voxgate.audio import WhisperDecoder, probe_duration
from voxgate.concurrency import iterate_in_thread
from voxgate.errors import AudioTooLong, InvalidAudio


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """Two hours of silence as FLAC with no length in its header."""
    return silence(BOMB_S, stated=False)


def test_a_header_without_duration_still_decodes_and_a_stated_one_is_read() -> None:
    assert probe_duration(io.BytesIO(silence(90))) == pytest.approx(90)
    unstated = io.BytesIO(silence(90, stated=False))
    assert probe_duration(unstated) is None
    decoder = WhisperDecoder(unstated, max_s=MAX_AUDIO_S)
    for _ in decoder.run():
        pass
    assert len(decoder.audio()) == 90 * 16000


def test_the_decoder_stops_at_the_first_frame_past_the_cap(bomb: bytes) -> None:
    decoder = WhisperDecoder(io.BytesIO(bomb), max_s=60)
    with pytest.raises(AudioTooLong) as refused:
        for _ in decoder.run():
            pass
    assert (refused.value.param, refused.value.code) == ("file", "audio_too_long")
    assert 50 <= decoder.decoded_s <= 60


def test_the_decoder_stops_when_its_consumer_leaves(bomb: bytes) -> None:
    """Closing the consumer (a client that left) stops decoding within a few progress steps."""
    decoder = WhisperDecoder(io.BytesIO(bomb), max_s=BOMB_S + 1)

    async def take_one() -> None:
        async with aclosing(iterate_in_thread(decoder.run)) as progress:  # type: ignore[type-var]
            await anext(progress)

    asyncio.run(take_one())
    assert decoder.decoded_s < 120  # of 7200


@pytest.mark.parametrize(("clip", "kept"), TRUNCATED)
def test_a_truncated_file_decodes_as_far_as_it_goes(clip: str, kept: float) -> None:
    data = audio_path(clip).read_bytes()
    decoder = WhisperDecoder(io.BytesIO(data[: int(len(data) * kept)]), max_s=MAX_AUDIO_S)
    for _ in decoder.run():
        pass
    assert len(decoder.audio()) > 2 * 16000


@pytest.mark.parametrize(
    "data",
    [b"", b"just some text\n" * 100, png_1x1(), video_without_audio(), bytes(range(256)) * 400],
    ids=["empty", "text", "png", "video-only", "noise"],
)
def test_what_is_not_audio_is_invalid_audio(data: bytes) -> None:
    with pytest.raises(InvalidAudio) as refused:
        source = io.BytesIO(data)
        probe_duration(source)
        for _ in WhisperDecoder(source, max_s=MAX_AUDIO_S).run():
            pass
    assert (refused.value.param, refused.value.code) == ("file", "invalid_audio")
