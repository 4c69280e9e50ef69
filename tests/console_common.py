"""What both browser suites of the console share: their server and their inputs
(tests/test_console.py drives Chromium, tests/test_console_firefox.py Firefox)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from conftest import Server, StartServer

#: ``VOXGATE_CONSOLE_SCREENSHOTS=docs`` saves pages as ``docs/console-*.png``.
SCREENSHOTS = os.environ.get("VOXGATE_CONSOLE_SCREENSHOTS")
# Inference on a busy 2-core machine: a bound against hangs, not a speed claim.
SLOW_MS = 240_000
LONG_TEXT = (
    "Hello from voxgate. This voice runs on your own machine, with no internet at all. "
    "Every sentence leaves the server as soon as it is synthesised, so the player starts "
    "long before the last one is ready. Here is a fourth sentence to make that plain. "
    "And a fifth one, which ends it."
)
JFK_WORDS = "ask not what your country can do for you"


@pytest.fixture(scope="module")
def console_server(
    start_server: StartServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A server with its own database, so the usage it reports is only this module's."""
    db = tmp_path_factory.mktemp("console") / "voxgate.db"
    with start_server(VOXGATE_DATABASE_URL=f"sqlite:///{db}") as srv:
        yield srv
