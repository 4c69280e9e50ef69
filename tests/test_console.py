"""The web console end to end: Debian's Chromium, headless, driven by Python playwright against
a real server with the real engines, real audio and the real admin API.

Skips in one line when no Chromium (or no playwright) is installed; `.ci/run` installs Debian's
``chromium`` when it can. ``VOXGATE_CONSOLE_SCREENSHOTS=docs`` also saves each page as
``docs/console-*.png``.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import console_common
import pytest
from conftest import ADMIN_KEY, API_KEY, AUDIO_DIR, REPO, Server, wait_until
from console_common import JFK_WORDS, LONG_TEXT, SCREENSHOTS, SLOW_MS

CHROMIUM = os.environ.get("VOXGATE_TEST_CHROMIUM") or shutil.which("chromium") or ""
try:
    from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - the test extras declare playwright
    pytest.skip("browser tests skipped: playwright is not installed", allow_module_level=True)
if not CHROMIUM or not Path(CHROMIUM).is_file():
    pytest.skip(
        "browser tests skipped: no Chromium (apt-get install chromium, or set "
        "VOXGATE_TEST_CHROMIUM)",
        allow_module_level=True,
    )

console_server = console_common.console_server  # the fixture, shared with the Firefox suite

# Never `playwright install`: Debian's chromium, with nothing that calls another host.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # A fake microphone (a beep) for MediaRecorder, granted without a prompt.
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


class Console:
    """One tab on the console, recording every console error, page error and failed request."""

    def __init__(self, page: Page, base_url: str) -> None:
        self.page = page
        self.base_url = base_url
        self.problems: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append(f"pageerror: {error}"))
        page.on("requestfailed", self._failed)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.problems.append(f"console {message.type}: {message.text}")

    def _failed(self, request: Any) -> None:
        # An aborted media fetch is the player's own business, not a failure of the page.
        if not request.url.startswith("blob:"):
            self.problems.append(f"request failed: {request.url} {request.failure}")

    def open(self, page: str) -> None:
        self.page.goto(f"{self.base_url}/#{page}")
        expect(self.page.locator(f"#page-{page}")).to_be_visible()

    def sign_in(self, key: str) -> None:
        self.page.get_by_test_id("api-key").fill(key)
        self.page.get_by_test_id("api-key").press("Enter")
        expect(self.page.locator("#signin-state")).to_have_text(f"Signed in: …{key[-4:]}")

    def screenshot(self, name: str) -> None:
        if SCREENSHOTS:
            path = REPO / SCREENSHOTS / f"console-{name}.png"
            self.page.screenshot(path=str(path), full_page=True)


@pytest.fixture
def console(browser: Browser, console_server: Server) -> Iterator[Console]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    tab = Console(context.new_page(), console_server.base_url)
    yield tab
    context.close()
    assert tab.problems == []


def test_every_page_loads_without_errors(console: Console) -> None:
    for page in ("speech", "transcribe", "models", "keys", "usage"):
        console.open(page)
    console.sign_in(ADMIN_KEY)
    for page in ("keys", "usage", "models"):
        console.open(page)
    # Switching pages by keyboard: the nav links are plain links in tab order.
    console.page.locator('nav a[data-page="transcribe"]').focus()
    console.page.keyboard.press("Enter")
    expect(console.page.locator("#page-transcribe")).to_be_visible()
    expect(console.page.locator("#page-usage")).to_be_hidden()


def test_the_key_stays_in_session_storage_only(console: Console) -> None:
    console.open("models")
    console.sign_in(API_KEY)
    page = console.page
    assert page.evaluate("sessionStorage.getItem('voxgate.key')") == API_KEY
    assert page.evaluate("localStorage.length") == 0
    assert page.context.cookies() == []
    assert API_KEY not in page.url
    page.locator("#signout").click()
    expect(page.locator("#signin-state")).to_have_text("Not signed in")
    assert page.evaluate("sessionStorage.getItem('voxgate.key')") is None


def _when(probe: Callable[[], float], timeout_s: float = SLOW_MS / 1000) -> float:
    """Poll ``probe`` until it returns something truthy (playwright's own waits evaluate
    strings, which the console's CSP forbids)."""
    deadline = time.monotonic() + timeout_s
    while not (value := probe()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
    return value


def _speak(console: Console, response_format: str) -> dict[str, float]:
    page = console.page
    page.get_by_test_id("speech-text").fill(LONG_TEXT)
    page.get_by_test_id("speech-format").select_option(response_format)
    page.get_by_test_id("speech-submit").click()
    stats = page.locator("#speech-stats")
    expect(stats).to_have_attribute("data-complete", re.compile(r"^\d+$"), timeout=SLOW_MS)
    expect(stats).to_have_attribute("data-first-audio", re.compile(r"^\d+$"), timeout=SLOW_MS)
    return {
        name: float(stats.get_attribute(f"data-{name}") or "nan")
        for name in ("first-byte", "first-audio", "complete")
    }


@pytest.mark.parametrize("response_format", ["mp3", "pcm"])
def test_speech_plays_while_it_streams(console: Console, response_format: str) -> None:
    """mp3 goes through MediaSource, pcm through Web Audio: both start before the end."""
    console.open("speech")
    console.sign_in(API_KEY)
    page = console.page
    expect(page.get_by_test_id("speech-voice")).to_have_value("joe")
    times = _speak(console, response_format)
    print(f"console speech {response_format}: {times} ms after the click")
    # The listener hears audio before the response has finished arriving.
    assert times["first-byte"] <= times["first-audio"] < times["complete"], times
    audio = page.get_by_test_id("speech-audio")
    # Once everything has played, the element holds the whole file: a real duration.
    duration = _when(lambda: audio.evaluate("a => isFinite(a.duration) ? a.duration : 0"))
    assert 8 < duration < 60, duration
    before = audio.evaluate("a => { a.currentTime = 0; a.play(); return a.currentTime; }")
    page.wait_for_timeout(800)
    assert audio.evaluate("a => a.currentTime") > before
    download = page.locator("#speech-download")
    expect(download).to_be_visible()
    assert download.get_attribute("download") == f"speech.{response_format}"
    assert (download.get_attribute("href") or "").startswith("blob:")
    if response_format == "mp3":
        console.screenshot("speech")


def test_a_real_file_is_transcribed_with_segments(console: Console) -> None:
    console.open("transcribe")
    console.sign_in(API_KEY)
    page = console.page
    page.get_by_test_id("stt-file").set_input_files(str(AUDIO_DIR / "en-jfk.flac"))
    page.get_by_test_id("stt-submit").click()
    text = page.get_by_test_id("stt-text")
    expect(text).to_contain_text(re.compile(JFK_WORDS, re.I), timeout=SLOW_MS)
    expect(page.locator("#stt-status")).to_contain_text("Done", timeout=SLOW_MS)
    expect(page.locator("#stt-meta")).to_contain_text("english")
    expect(page.locator("#stt-meta")).to_contain_text("11")
    segments = page.locator("#stt-segments button")
    assert segments.count() >= 1
    assert '"segments"' in (page.locator("#stt-raw").text_content() or "")
    # A segment seeks the player to its start.
    last = segments.last
    start = float(last.get_attribute("data-start") or "nan")
    last.click()
    audio = page.locator("#stt-audio")
    assert abs(audio.evaluate("a => a.currentTime") - start) < 1.5
    page.locator("#stt-raw").evaluate("pre => { pre.parentElement.open = true; }")
    console.screenshot("transcribe")


def test_srt_and_translation(console: Console) -> None:
    console.open("transcribe")
    console.sign_in(API_KEY)
    page = console.page
    page.locator('input[name="task"][value="translations"]').check()
    page.locator("#stt-format").select_option("srt")
    page.locator("#stt-stream").uncheck()
    page.get_by_test_id("stt-file").set_input_files(str(AUDIO_DIR / "de-fleurs-000.ogg"))
    page.get_by_test_id("stt-submit").click()
    expect(page.locator("#stt-status")).to_contain_text("Done", timeout=SLOW_MS)
    assert "-->" in (page.locator("#stt-raw").text_content() or "")
    assert page.locator("#stt-segments button").count() >= 1
    assert (page.get_by_test_id("stt-text").text_content() or "").strip()


def test_a_microphone_recording_is_transcribed(console: Console) -> None:
    """Chromium's fake microphone (a beep) through MediaRecorder, sent as the upload."""
    console.open("transcribe")
    console.sign_in(API_KEY)
    page = console.page
    page.locator("#stt-record").click()
    expect(page.locator("#stt-record-state")).to_have_text("Recording…")
    page.wait_for_timeout(2000)
    page.locator("#stt-record").click()
    expect(page.locator("#stt-record-state")).to_contain_text("Recorded")
    page.get_by_test_id("stt-submit").click()
    expect(page.locator("#stt-status")).to_contain_text("Done", timeout=SLOW_MS)
    duration = page.locator("#stt-meta dd").nth(1).text_content() or ""
    assert 1 <= float(duration.removesuffix(" s")) <= 4, duration


def test_models_page_lists_and_filters_the_catalog(console: Console) -> None:
    console.open("models")
    table = console.page.get_by_test_id("models-table")
    expect(table.locator('tr[data-model="whisper-1"]')).to_contain_text("per second")
    expect(table.locator('tr[data-model="tts-1"]')).to_contain_text("joe")
    rows = table.locator("tbody tr")
    everything = rows.count()
    assert everything >= 5
    console.page.locator("#models-feature").select_option("text-to-speech")
    expect(table.locator('tr[data-model="whisper-1"]')).to_have_count(0)
    expect(table.locator('tr[data-model="espeak-ng"]')).to_have_count(1)
    console.page.locator("#models-filter").fill("deutsch german")
    expect(rows).to_have_count(0)
    console.page.locator("#models-filter").fill("German")
    expect(table.locator('tr[data-model="espeak-ng"]')).to_have_count(1)
    console.page.locator("#models-filter").fill("")
    console.page.locator("#models-feature").select_option("")
    expect(rows).to_have_count(everything)
    console.screenshot("models")


def test_a_key_is_created_limited_and_revoked(console: Console, console_server: Server) -> None:
    console.open("keys")
    console.sign_in(ADMIN_KEY)
    page = console.page
    page.locator("#keys-name").fill("console-e2e")
    page.locator("#keys-budget").fill("2.5")
    page.locator("#keys-rpm").fill("30")
    page.locator("#keys-conc").fill("2")
    page.locator("#keys-expires").fill("2031-01-02T03:04")
    page.locator('#keys-models input[value="tts-1"]').check()
    page.get_by_test_id("keys-create").click()
    secret_box = page.locator("#keys-secret-value")
    expect(secret_box).to_have_text(re.compile(r"^sk-vg-"))
    secret = secret_box.text_content() or ""
    page.locator("#keys-copy").click()
    expect(page.locator("#keys-copied")).not_to_be_empty()
    console.screenshot("keys")
    with console_server.admin() as admin:
        [key] = [k for k in admin.get("/admin/keys").json()["data"] if k["name"] == "console-e2e"]
    assert key["budget_usd"] == 2.5
    assert key["limits"]["rpm"] == 30 and key["limits"]["max_concurrency"] == 2
    assert key["models"] == ["tts-1"]
    assert key["expires_at"] == 1925089440  # 2031-01-02T03:04Z
    with console_server.http_for(secret) as client:
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["tts-1"]
    row = page.locator(f'tr[data-key-id="{key["id"]}"]')
    expect(row).to_contain_text("30 req/min")
    # Edit: raise the rpm, clear the budget.
    row.get_by_role("button", name="Edit").click()
    page.locator("#keys-rpm").fill("90")
    page.locator("#keys-budget").fill("")
    page.get_by_test_id("keys-create").click()
    expect(row).to_contain_text("90 req/min")
    with console_server.admin() as admin:
        edited = admin.get(f"/admin/keys/{key['id']}").json()
    assert edited["limits"]["rpm"] == 90 and edited["budget_usd"] is None
    assert edited["models"] == ["tts-1"]
    # Revoke takes a second, confirming click.
    revoke = row.locator('button[data-action="revoke"]')
    revoke.click()
    expect(revoke).to_have_text("Confirm revoke")
    revoke.click()
    expect(row).to_have_attribute("data-state", "revoked")
    with console_server.http_for(secret) as client:
        assert client.get("/v1/models").status_code == 401


def _chart_total(page: Page) -> float:
    return float(page.get_by_test_id("usage-chart").get_attribute("data-total") or "nan")


def _refreshed_total(page: Page) -> float:
    """The chart's total after one press of Refresh (the attribute is set again once drawn)."""
    chart = page.get_by_test_id("usage-chart")
    chart.evaluate("e => e.removeAttribute('data-total')")
    page.locator("#usage-refresh").click()
    expect(chart).to_have_attribute("data-total", re.compile(r"^\d"), timeout=SLOW_MS)
    return _chart_total(page)


def _series_total(page: Page, series: str) -> float:
    """The sum of one series' bars in the chart."""
    bars = page.get_by_test_id("usage-chart").locator(f'rect.bar[data-series="{series}"]')
    values = bars.evaluate_all("bars => bars.map(b => b.dataset.value)")
    return sum(float(value) for value in values)


def test_the_usage_chart_shows_the_requests_just_made(
    console: Console, console_server: Server
) -> None:
    console.open("usage")
    console.sign_in(ADMIN_KEY)
    page = console.page
    page.locator("#usage-range").select_option("1h")
    chart = page.get_by_test_id("usage-chart")
    expect(chart).to_have_attribute("data-total", re.compile(r"^\d"))
    before = _chart_total(page)
    tts_before = _series_total(page, "tts-1")
    whisper_before = _series_total(page, "whisper-1")
    sdk = console_server.sdk()
    for text in ("One request.", "And another one."):
        sdk.audio.speech.create(model="tts-1", voice="alloy", input=text).read()
    with open(AUDIO_DIR / "en-jfk.flac", "rb") as audio:
        sdk.audio.transcriptions.create(model="whisper-1", file=audio)
    # Each row is settled as its response ends, which the client may see a moment before.
    wait_until(
        lambda: _refreshed_total(page) == before + 3, "the three new requests", SLOW_MS / 1000
    )
    assert _series_total(page, "tts-1") == tts_before + 2
    assert _series_total(page, "whisper-1") == whisper_before + 1
    page.locator("#usage-metric").select_option("seconds")
    assert _chart_total(page) >= 11
    page.locator("#usage-metric").select_option("characters")
    assert _chart_total(page) >= len("One request.And another one.")
    page.locator("#usage-metric").select_option("cost")
    assert _chart_total(page) > 0
    page.locator("#usage-metric").select_option("requests")
    page.locator("#usage-group").select_option("api_key_id")
    expect(chart.locator("rect.bar").first).to_have_attribute("data-series", re.compile("^key_"))
    page.locator("#usage-group").select_option("model")
    expect(chart.locator('rect.bar[data-series="tts-1"]').first).to_be_visible()
    console.screenshot("usage")


def test_readable_on_a_phone(browser: Browser, console_server: Server) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    tab = Console(context.new_page(), console_server.base_url)
    tab.open("speech")
    tab.sign_in(API_KEY)
    page = tab.page
    # Nothing wider than the screen: no sideways scrolling of the page itself.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    expect(page.get_by_test_id("speech-submit")).to_be_in_viewport()
    tab.screenshot("phone")
    context.close()
    assert tab.problems == []
