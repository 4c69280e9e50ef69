"""uvicorn's HTTP protocol with a deadline for the request line and headers.

uvicorn times out only idle keep-alive connections; a client that sends its headers one byte a
second (slowloris) holds a connection, and its buffers, forever. This subclass arms a timer when
a connection opens and whenever a new request begins, disarms it once the headers are complete,
and closes the connection when it fires. Bodies are bounded separately, in
``api/middleware.py`` (``BodyGuardMiddleware``), where a 408 can still be answered.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """HttpToolsProtocol whose request head must arrive within ``header_timeout_s``."""

    header_timeout_s: float = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.logger.info("closed a connection whose request headers took too long")
            self.transport.close()


def header_timeout_protocol(timeout_s: float) -> type[HeaderTimeoutProtocol]:
    """The protocol class to pass as ``uvicorn.run(http=…)``, with this header deadline."""
    return type("HeaderTimeout", (HeaderTimeoutProtocol,), {"header_timeout_s": timeout_s})
