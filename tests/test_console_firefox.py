"""The web console end to end in Firefox: Debian's ``firefox-esr``, headless, driven over
WebDriver BiDi (tests/bidi.py) against a real server with the real engines and real audio.

Firefox differs where it matters to the console: its MediaSource refuses mp3, so speech in mp3
plays once complete; its MediaRecorder writes Ogg Opus. Skips in one line when no Firefox is
found (``.ci/run`` installs Debian's ``firefox-esr``; ``VOXGATE_TEST_FIREFOX`` names another
binary). ``VOXGATE_CONSOLE_SCREENSHOTS=docs`` saves ``docs/console-firefox-speech.png``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import console_common
import pytest
from bidi import Session, Tab, firefox
from conftest import ADMIN_KEY, API_KEY, AUDIO_DIR, REPO, Server, wait_until
from console_common import JFK_WORDS, LONG_TEXT, SCREENSHOTS, SLOW_MS

FIREFOX = (
    os.environ.get("VOXGATE_TEST_FIREFOX")
    or shutil.which("firefox-esr")
    or shutil.which("firefox")
    or ""
)
if not FIREFOX or not Path(FIREFOX).is_file():
    pytest.skip(
        "Firefox browser tests skipped: no Firefox (apt-get install firefox-esr, or set "
        "VOXGATE_TEST_FIREFOX)",
        allow_module_level=True,
    )

console_server = console_common.console_server  # the fixture, shared with the Chromium suite
SLOW_S = SLOW_MS / 1000
ENTER = "\ue007"


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    with firefox(FIREFOX, tmp_path_factory.mktemp("firefox") / "profile") as session:
        yield session


class Console(Tab):
    """A tab on the console."""

    def __init__(self, session: Session, base_url: str, width: int = 1280, height: int = 860):
        super().__init__(session, width, height)
        self.base_url = base_url

    def open(self, page: str) -> None:
        self.navigate(f"{self.base_url}/#{page}")
        self.wait(f"!document.getElementById('page-{page}').hidden", f"the {page} page")

    def sign_in(self, key: str) -> None:
        """Type the key and press Enter, as a user would."""
        self.on("#api-key", "e => e.focus()")
        self.press(*key, ENTER)
        signed_in = json.dumps(f"Signed in: …{key[-4:]}")
        self.wait(f"document.getElementById('signin-state').textContent === {signed_in}", "sign-in")

    def attribute(self, selector: str, name: str) -> str | None:
        value = self.on(selector, "(e, name) => e.getAttribute(name)", name)
        return None if value is None else str(value)

    def count(self, selector: str) -> int:
        return int(self.call("s => document.querySelectorAll(s).length", selector))

    def screenshot_as(self, name: str) -> None:
        if SCREENSHOTS:
            self.screenshot(REPO / SCREENSHOTS / f"console-firefox-{name}.png")


@pytest.fixture
def console(browser: Session, console_server: Server) -> Iterator[Console]:
    tab = Console(browser, console_server.base_url)
    yield tab
    tab.close()
    assert tab.problems == []


def test_every_page_loads_without_errors(console: Console) -> None:
    for page in ("speech", "transcribe", "models", "keys", "usage"):
        console.open(page)
    console.wait("document.querySelectorAll('#models-table tbody tr').length", "the catalog")
    console.sign_in(ADMIN_KEY)
    for page in ("keys", "usage", "models"):
        console.open(page)
    console.wait("document.getElementById('usage-chart').dataset.total", "the usage chart")
    # Switching pages by keyboard: the nav links are plain links in tab order.
    console.on('nav a[data-page="transcribe"]', "e => e.focus()")
    console.press(ENTER)
    console.wait("!document.getElementById('page-transcribe').hidden", "the transcribe page")
    assert console.evaluate("document.getElementById('page-usage').hidden") is True


def _speak(console: Console, response_format: str) -> dict[str, float]:
    """Speak LONG_TEXT; the page's times once the response is complete and audio has played."""
    console.wait("document.getElementById('speech-voice').value === 'joe'", "the voices")
    console.fill("#speech-text", LONG_TEXT)
    console.fill("#speech-format", response_format)
    console.click("#speech-submit")
    for name in ("complete", "firstAudio"):
        console.wait(f"document.getElementById('speech-stats').dataset.{name}", name, SLOW_S)
    stats = console.on("#speech-stats", "e => ({ ...e.dataset })")
    return {name: float(stats[name]) for name in ("firstByte", "firstAudio", "complete")}


def _played_whole(console: Console, response_format: str) -> None:
    """The element holds the whole file (a real duration), plays it, and it can be saved."""
    audio = "document.querySelector('[data-testid=speech-audio]')"
    duration = console.wait(f"isFinite({audio}.duration) && {audio}.duration", "a duration", SLOW_S)
    assert 8 < duration < 60, duration
    console.evaluate(f"{audio}.currentTime = 0, {audio}.play()")
    console.wait(f"{audio}.currentTime > 0.5", "playback from the start")
    assert console.attribute("#speech-download", "download") == f"speech.{response_format}"
    assert (console.attribute("#speech-download", "href") or "").startswith("blob:")
    assert console.evaluate("document.getElementById('speech-download').hidden") is False
    assert console.evaluate("document.getElementById('speech-submit').disabled") is False


@pytest.mark.parametrize("response_format", ["mp3", "pcm"])
def test_speech_plays(console: Console, response_format: str) -> None:
    """pcm streams through Web Audio; mp3, which Firefox's MediaSource refuses, plays once the
    whole file is in, and the page says so (it used to never report that first audio)."""
    console.open("speech")
    console.sign_in(API_KEY)
    console.fill("#speech-format", response_format)
    streams = response_format == "pcm" or console.evaluate(
        "MediaSource.isTypeSupported('audio/mpeg')"
    )
    mode = console.text("#speech-mode")
    assert ("plays once complete" not in mode) == streams, mode
    times = _speak(console, response_format)
    print(f"firefox speech {response_format}: {times} ms after the click")
    if streams:  # the listener hears audio before the response has finished arriving
        assert times["firstByte"] <= times["firstAudio"] < times["complete"], times
    else:
        assert times["firstByte"] <= times["complete"] <= times["firstAudio"], times
    _played_whole(console, response_format)
    if response_format == "mp3":
        console.screenshot_as("speech")


def test_pcm_speech_without_a_sound_card(
    console_server: Server, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """With no sound device Firefox never starts an AudioContext: pcm then plays as a whole file
    (the page used to wait forever for Web Audio to finish, with Speak disabled and no file).
    Where the machine has a sound card this is the streamed path again."""
    profile = tmp_path_factory.mktemp("firefox-silent") / "profile"
    with firefox(FIREFOX, profile, {"media.cubeb.force_mock_context": False}) as session:
        tab = Console(session, console_server.base_url)
        tab.open("speech")
        tab.sign_in(API_KEY)
        times = _speak(tab, "pcm")
        assert times["firstByte"] <= times["firstAudio"], times
        _played_whole(tab, "pcm")
        tab.close()
    assert tab.problems == []


def test_a_real_file_is_transcribed_with_segments(console: Console) -> None:
    console.open("transcribe")
    console.sign_in(API_KEY)
    console.wait("document.getElementById('stt-model').value === 'whisper-1'", "the models")
    console.set_files("[data-testid=stt-file]", AUDIO_DIR / "en-jfk.flac")
    console.click("[data-testid=stt-submit]")
    console.wait(
        f"/{JFK_WORDS}/i.test(document.querySelector('[data-testid=stt-text]').textContent)",
        "the transcript",
        SLOW_S,
    )
    console.wait("/Done/.test(document.getElementById('stt-status').textContent)", "done", SLOW_S)
    meta = console.text("#stt-meta")
    assert "english" in meta and "11" in meta, meta
    assert console.count("#stt-segments button") >= 1
    assert '"segments"' in console.text("#stt-raw")
    # A segment seeks the player to its start.
    start = float(console.attribute("#stt-segments li:last-child button", "data-start") or "nan")
    console.click("#stt-segments li:last-child button")
    position = console.evaluate("document.getElementById('stt-audio').currentTime")
    assert abs(position - start) < 1.5, (position, start)


def test_a_microphone_recording_is_transcribed(console: Console) -> None:
    """Firefox's fake microphone (a tone) through MediaRecorder, which writes Ogg Opus."""
    console.open("transcribe")
    console.sign_in(API_KEY)
    console.click("#stt-record")
    console.wait("document.getElementById('stt-record-state').textContent === 'Recording…'", "rec")
    time.sleep(2)  # record at least two seconds
    console.click("#stt-record")
    console.wait("/Recorded/.test(document.getElementById('stt-record-state').textContent)", "stop")
    console.click("[data-testid=stt-submit]")
    console.wait("/Done/.test(document.getElementById('stt-status').textContent)", "done", SLOW_S)
    duration = console.text("#stt-meta dd:nth-of-type(2)")
    assert float(duration.removesuffix(" s")) >= 1.5, duration


def test_a_key_is_created_limited_and_revoked(console: Console, console_server: Server) -> None:
    console.open("keys")
    console.sign_in(ADMIN_KEY)
    console.wait("document.querySelector('#keys-models input[value=\"tts-1\"]')", "the models")
    console.fill("#keys-name", "firefox-e2e")
    console.fill("#keys-rpm", "30")
    console.fill("#keys-expires", "2031-01-02T03:04")
    console.click('#keys-models input[value="tts-1"]')
    console.click("[data-testid=keys-create]")
    console.wait("/^sk-vg-/.test(document.getElementById('keys-secret-value').textContent)", "key")
    secret = console.text("#keys-secret-value")
    console.click("#keys-copy")
    console.wait("document.getElementById('keys-copied').textContent", "the copy")
    with console_server.admin() as admin:
        [key] = [k for k in admin.get("/admin/keys").json()["data"] if k["name"] == "firefox-e2e"]
    assert key["limits"]["rpm"] == 30 and key["models"] == ["tts-1"]
    assert key["expires_at"] == 1925089440  # 2031-01-02T03:04Z
    with console_server.http_for(secret) as client:
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["tts-1"]
    row = f'tr[data-key-id="{key["id"]}"]'
    revoke = f'{row} button[data-action="revoke"]'
    console.wait(f"document.querySelector({json.dumps(revoke)})", "the key's row")
    assert "30 req/min" in console.text(row)
    # Revoke takes a second, confirming click.
    console.click(revoke)
    assert console.text(revoke) == "Confirm revoke"
    console.click(revoke)
    console.wait(f"document.querySelector({json.dumps(row)}).dataset.state === 'revoked'", "revoke")
    with console_server.http_for(secret) as client:
        assert client.get("/v1/models").status_code == 401


def _chart_total(console: Console) -> float:
    return float(console.attribute("[data-testid=usage-chart]", "data-total") or "nan")


def _refreshed_total(console: Console) -> float:
    """The chart's total after one press of Refresh (the attribute is set again once drawn)."""
    console.on("[data-testid=usage-chart]", "e => e.removeAttribute('data-total')")
    console.click("#usage-refresh")
    console.wait("document.getElementById('usage-chart').dataset.total", "the refreshed chart")
    return _chart_total(console)


def _series_total(console: Console, series: str) -> float:
    """The sum of one series' bars in the chart."""
    bars = f"[data-testid=usage-chart] rect.bar[data-series={json.dumps(series)}]"
    values = console.call("s => [...document.querySelectorAll(s)].map(b => b.dataset.value)", bars)
    return sum(float(value) for value in values)


def test_the_usage_chart_shows_the_requests_just_made(
    console: Console, console_server: Server
) -> None:
    console.open("usage")
    console.sign_in(ADMIN_KEY)
    console.fill("#usage-range", "1h")
    chart = "document.querySelector('[data-testid=usage-chart]')"
    console.wait(f"{chart}.dataset.total && {chart}.querySelector('svg')", "the chart")
    before = _chart_total(console)
    tts_before = _series_total(console, "tts-1")
    whisper_before = _series_total(console, "whisper-1")
    sdk = console_server.sdk()
    for text in ("One request.", "And another one."):
        sdk.audio.speech.create(model="tts-1", voice="alloy", input=text).read()
    with open(AUDIO_DIR / "en-jfk.flac", "rb") as audio:
        sdk.audio.transcriptions.create(model="whisper-1", file=audio)
    # Each row is settled as its response ends, which the client may see a moment before.
    wait_until(lambda: _refreshed_total(console) == before + 3, "the three new requests", SLOW_S)
    assert _series_total(console, "tts-1") == tts_before + 2
    assert _series_total(console, "whisper-1") == whisper_before + 1
    # The bars are drawn: an SVG with a visible size, one rect per series and bucket.
    box = console.evaluate(f"{chart}.querySelector('svg').getBoundingClientRect().toJSON()")
    assert box["width"] > 300 and box["height"] > 200, box
    console.fill("#usage-metric", "seconds")
    assert _chart_total(console) >= 11
    console.fill("#usage-metric", "characters")
    assert _chart_total(console) >= len("One request.And another one.")


def test_readable_on_a_phone(browser: Session, console_server: Server) -> None:
    tab = Console(browser, console_server.base_url, width=390, height=844)
    tab.open("speech")
    tab.sign_in(API_KEY)
    # Nothing wider than the screen: no sideways scrolling of the page itself.
    assert tab.evaluate("document.documentElement.scrollWidth") <= 390
    bottom = tab.on("[data-testid=speech-submit]", "e => e.getBoundingClientRect().bottom")
    assert bottom <= 844, bottom
    tab.close()
    assert tab.problems == []
