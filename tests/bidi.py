"""Just enough WebDriver BiDi to drive Firefox in the console's tests.

Firefox speaks BiDi itself (``--remote-debugging-port``), so Debian's ``firefox-esr`` needs no
geckodriver and no patched build, and nothing is downloaded. One websocket, a reader thread that
hands each answer to the command waiting for it and each event to its handlers; a ``Tab`` with
the handful of calls the tests make. Not a framework: add a call when a test needs it.
"""

from __future__ import annotations

import base64
import itertools
import json
import queue
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

#: Guards against a hung browser, not a speed claim (a busy 2-core machine is slow to start one).
TIMEOUT_S = 300.0
#: The profile's preferences: no first-run pages, a fake microphone granted without a prompt.
#: BiDi adds its own recommended ones, which keep Firefox off the network. Media autoplay keeps
#: Firefox's defaults: ``Tab.click`` is a real click, a user gesture.
PREFERENCES = {
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "datareporting.policy.dataSubmissionEnabled": False,
    # No sound card on a CI machine: without one Firefox never starts an AudioContext (and
    # reports a media sink error); cubeb's mock device stands in for it.
    "media.cubeb.force_mock_context": True,
    "media.navigator.streams.fake": True,
    "media.navigator.permission.disabled": True,
}
_LISTENING = re.compile(r"WebDriver BiDi listening on (ws://\S+)")

Handler = Callable[[dict[str, Any]], None]


class BiDiError(Exception):
    """A command the browser refused, or JavaScript that threw."""


class Session:
    """A BiDi session: ``command`` waits for its answer; ``on`` registers an event handler."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.ids = itertools.count(1)
        self.waiting: dict[int, queue.Queue[dict[str, Any]]] = {}
        self.handlers: dict[str, list[Handler]] = {}
        self.reader = threading.Thread(target=self._read, name="bidi-reader", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        try:
            for raw in self.socket:
                message = json.loads(raw)
                if "id" in message and message["id"] in self.waiting:
                    self.waiting[message["id"]].put(message)
                elif message.get("type") == "event":
                    for handler in list(self.handlers.get(message["method"], [])):
                        handler(message["params"])
        except ConnectionClosed:
            pass
        # The browser is gone: every command still waiting fails now, not after TIMEOUT_S.
        for answer in list(self.waiting.values()):
            answer.put({"type": "error", "error": "connection closed", "message": ""})

    def command(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self.ids)
        answer: queue.Queue[dict[str, Any]] = queue.Queue()
        self.waiting[ident] = answer
        self.socket.send(json.dumps({"id": ident, "method": method, "params": params}))
        try:
            message = answer.get(timeout=TIMEOUT_S)
        except queue.Empty:
            raise BiDiError(f"{method}: no answer in {TIMEOUT_S:.0f} s") from None
        finally:
            del self.waiting[ident]
        if message.get("type") == "error":
            raise BiDiError(f"{method}: {message['error']}: {message.get('message', '')}")
        result: dict[str, Any] = message["result"]
        return result

    def on(self, event: str, handler: Handler) -> None:
        """Call ``handler(params)`` for each ``event`` (subscribing on the first handler)."""
        if event not in self.handlers:
            self.handlers[event] = []
            self.command("session.subscribe", events=[event])
        self.handlers[event].append(handler)

    def off(self, event: str, handler: Handler) -> None:
        self.handlers[event].remove(handler)


@contextmanager
def firefox(
    binary: str, profile: Path, preferences: Mapping[str, object] | None = None
) -> Iterator[Session]:
    """Start ``binary`` headless on a free port with a fresh profile (``PREFERENCES``, then
    ``preferences``); close it afterwards."""
    profile.mkdir(parents=True, exist_ok=True)
    chosen = {**PREFERENCES, **(preferences or {})}
    (profile / "user.js").write_text(
        "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in chosen.items())
    )
    log_path = profile.parent / f"{profile.name}.log"
    command = [binary, "--headless", "--no-remote", "--profile", str(profile)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [*command, "--remote-debugging-port=0", "about:blank"], stdout=log, stderr=log
        )
    try:
        url = _endpoint(process, log_path)
        with connect(f"{url}/session", max_size=None, open_timeout=TIMEOUT_S) as socket:
            session = Session(socket)
            session.command("session.new", capabilities={})
            try:
                yield session
            finally:
                session.command("browser.close")
    finally:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _endpoint(process: subprocess.Popen[bytes], log_path: Path) -> str:
    """The websocket address Firefox prints once BiDi listens (it picked the port)."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        found = _LISTENING.search(log_path.read_text(errors="replace"))
        if found:
            return found.group(1)
        if process.poll() is not None:
            raise BiDiError(f"firefox exited at start-up:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.1)
    raise BiDiError(f"firefox did not start BiDi in {TIMEOUT_S:.0f} s")


def _value(remote: dict[str, Any]) -> Any:
    """A BiDi RemoteValue as Python: primitives, lists, dicts; nodes stay references."""
    kind, value = remote["type"], remote.get("value")
    if kind in ("undefined", "null"):
        return None
    if kind == "number" and isinstance(value, str):  # NaN, -0, Infinity, -Infinity
        return float(value.replace("Infinity", "inf"))
    if kind in ("string", "number", "boolean"):
        return value
    if kind == "array":
        return [_value(item) for item in value or []]
    if kind == "object":
        return {key: _value(item) for key, item in value or []}
    return remote  # node, window, function…: the reference itself (sharedId / handle)


class Tab:
    """One browsing context (a tab in its own user context, so storage is not shared), recording
    console errors and warnings, uncaught exceptions and failed requests as ``problems``."""

    def __init__(self, session: Session, width: int = 1280, height: int = 860) -> None:
        self.session = session
        self.user_context = session.command("browser.createUserContext")["userContext"]
        created = session.command(
            "browsingContext.create", type="tab", userContext=self.user_context
        )
        self.context: str = created["context"]
        self.problems: list[str] = []
        session.on("log.entryAdded", self._logged)
        session.on("network.fetchError", self._failed)
        self.set_viewport(width, height)

    def _logged(self, entry: dict[str, Any]) -> None:
        if entry["source"].get("context") == self.context and entry["level"] in ("error", "warn"):
            self.problems.append(f"{entry['type']} {entry['level']}: {entry['text']}")

    def _failed(self, event: dict[str, Any]) -> None:
        url = event["request"]["url"]
        # An aborted media fetch is the player's own business, not a failure of the page.
        if event.get("context") == self.context and not url.startswith("blob:"):
            self.problems.append(f"request failed: {url} {event['errorText']}")

    def close(self) -> None:
        self.session.off("log.entryAdded", self._logged)
        self.session.off("network.fetchError", self._failed)
        self.session.command("browser.removeUserContext", userContext=self.user_context)

    def set_viewport(self, width: int, height: int) -> None:
        viewport = {"width": width, "height": height}
        self.session.command("browsingContext.setViewport", context=self.context, viewport=viewport)

    def navigate(self, url: str) -> None:
        self.session.command(
            "browsingContext.navigate", context=self.context, url=url, wait="complete"
        )

    def _script(self, method: str, **params: Any) -> Any:
        answer = self.session.command(
            method, target={"context": self.context}, awaitPromise=True, **params
        )
        if answer["type"] == "exception":
            raise BiDiError(answer["exceptionDetails"]["text"])
        return _value(answer["result"])

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (awaited if it is a promise)."""
        return self._script("script.evaluate", expression=expression)

    def call(self, function: str, *args: Any) -> Any:
        """Call ``function`` (JavaScript source) with JSON-able ``args``; awaited."""
        encoded = {"type": "string", "value": json.dumps(args)}
        wrapper = f"(args) => ({function})(...JSON.parse(args))"
        return self._script("script.callFunction", functionDeclaration=wrapper, arguments=[encoded])

    def on(self, selector: str, function: str, *args: Any) -> Any:
        """Call ``function(element, ...args)`` on the first element matching ``selector``."""
        find = "const e = document.querySelector(s); if (!e) throw new Error('no element ' + s);"
        return self.call(
            f"(s, ...args) => {{ {find} return ({function})(e, ...args); }}", selector, *args
        )

    def fill(self, selector: str, value: str) -> None:
        """Set an input's value as typing would: ``input`` and ``change`` events."""
        self.on(
            selector,
            "(e, v) => { e.value = v; for (const t of ['input', 'change'])"
            " e.dispatchEvent(new Event(t, { bubbles: true })); }",
            value,
        )

    def element(self, selector: str) -> dict[str, str]:
        """A reference to the first element matching ``selector``, scrolled into view."""
        node = self.on(selector, "e => (e.scrollIntoView({ block: 'center' }), e)")
        return {"sharedId": node["sharedId"]}

    def click(self, selector: str) -> None:
        """A real mouse click in the element's centre: a user gesture, unlike ``e.click()``."""
        origin = {"type": "element", "element": self.element(selector)}
        pointer = [
            {"type": "pointerMove", "x": 0, "y": 0, "origin": origin},
            {"type": "pointerDown", "button": 0},
            {"type": "pointerUp", "button": 0},
        ]
        self._act({"type": "pointer", "id": "mouse", "actions": pointer})

    def text(self, selector: str) -> str:
        return str(self.on(selector, "e => e.textContent"))

    def press(self, *keys: str) -> None:
        """Real key presses, one character each (``\\ue007`` is Enter), where the focus is."""
        strokes = [{"type": kind, "value": key} for key in keys for kind in ("keyDown", "keyUp")]
        self._act({"type": "key", "id": "keyboard", "actions": strokes})

    def _act(self, source: dict[str, Any]) -> None:
        self.session.command("input.performActions", context=self.context, actions=[source])

    def set_files(self, selector: str, *paths: Path) -> None:
        self.session.command(
            "input.setFiles",
            context=self.context,
            element=self.element(selector),
            files=[str(path) for path in paths],
        )

    def wait(self, expression: str, what: str, timeout: float = TIMEOUT_S) -> Any:
        """Poll ``expression`` until it is truthy and return its value."""
        deadline = time.monotonic() + timeout
        while not (value := self.evaluate(expression)):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.1)
        return value

    def screenshot(self, path: Path) -> None:
        shot = self.session.command(
            "browsingContext.captureScreenshot", context=self.context, origin="document"
        )
        path.write_bytes(base64.b64decode(shot["data"]))
