"""The web console at ``/``: static files from ``static/``, no build step, no other host.

The page is public (it holds no data); every API call it makes carries the key the user pasted,
as a bearer header. Only the listed files are served, read once when the app is built so no
request does file I/O on the event loop. Assets live under ``/console/`` rather than a catch-all
mount at ``/``, so every unknown path keeps answering OpenAI's 404 envelope.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, Response

from voxgate.errors import NotFound

#: Scripts, styles, media and fetches from this server only; blob: for the audio the page made.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'none'"
)
_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


def _load() -> dict[str, tuple[bytes, str]]:
    """Every static file by name, with its media type."""
    static = files("voxgate.console") / "static"
    assets: dict[str, tuple[bytes, str]] = {}
    for entry in static.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _MEDIA_TYPES:
            assets[entry.name] = (entry.read_bytes(), _MEDIA_TYPES[suffix])
    return assets


def console_router() -> APIRouter:
    """``GET /`` (the page) and ``GET /console/{name}`` (its scripts and styles)."""
    assets = _load()
    router = APIRouter(include_in_schema=False)

    def serve(name: str) -> Response:
        if name not in assets:  # only the listed files, never a path into the package
            raise NotFound(f"No console file '{name}'.")
        body, media_type = assets[name]
        return Response(body, media_type=media_type, headers=_HEADERS)

    @router.get("/")
    async def index() -> Response:
        return serve("index.html")

    @router.get("/console/{name}")
    async def asset(name: str) -> Response:
        return serve(name)

    return router
