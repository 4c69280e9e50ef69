"""How the client commands reach a running server: one httpx client, one-line errors.

Every failure a user can cause or meet (no server, a bad key, an unknown model, a full engine)
ends the command with one line on stderr, ``voxgate: …``, and exit status 1, never a
traceback. Ctrl-C closes the connection, which makes the server stop the work (it cancels a
request whose client has gone) and exits with 130.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import httpx
import typer

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
BASE_URL_HELP = "Server to talk to (VOXGATE_BASE_URL; default http://127.0.0.1:8000)."
API_KEY_HELP = "API key, sent as a bearer token (VOXGATE_API_KEY)."
JSON_HELP = "Print machine-readable JSON instead of text."
#: Connecting and sending are bounded; reading is not, since a long file takes minutes.
TIMEOUT = httpx.Timeout(connect=10.0, read=None, write=300.0, pool=10.0)


class ClientError(Exception):
    """A failure to report as one line (``voxgate: <message>``)."""


def fail(message: str) -> NoReturn:
    typer.echo(f"voxgate: {message}", err=True)
    raise typer.Exit(1)


@dataclass(frozen=True)
class Server:
    base_url: str
    api_key: str | None

    @classmethod
    def of(cls, base_url: str | None, api_key: str | None) -> Server:
        url = (base_url or os.environ.get("VOXGATE_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        # The SDK's base URL (…/v1) works too: paths below already start with /v1.
        url = url.removesuffix("/v1")
        return cls(url, api_key or os.environ.get("VOXGATE_API_KEY") or None)

    def client(self) -> httpx.Client:
        headers = {"user-agent": "voxgate-cli"}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=TIMEOUT)


@contextmanager
def reporting(server: Server) -> Iterator[None]:
    """Turn what can go wrong talking to ``server`` into one line and an exit status."""
    try:
        yield
    except KeyboardInterrupt:
        typer.echo("voxgate: cancelled (the server stops the work)", err=True)
        raise typer.Exit(130) from None
    except ClientError as exc:
        fail(str(exc))
    except httpx.ConnectError:
        fail(
            f"cannot reach a voxgate server at {server.base_url}: is voxgate serve running? "
            "(set --base-url or VOXGATE_BASE_URL)"
        )
    except httpx.TimeoutException:
        fail(f"the server at {server.base_url} did not answer in time")
    except httpx.HTTPError as exc:
        fail(f"talking to {server.base_url} failed: {exc}")


def check(response: httpx.Response) -> None:
    """Raise ``ClientError`` with the server's own message for an error response."""
    if response.status_code < 400:
        return
    if not response.is_closed:
        response.read()
    raise ClientError(error_line(response))


def error_line(response: httpx.Response) -> str:
    """``401 invalid_api_key: Incorrect API key provided…`` from OpenAI's error envelope."""
    try:
        error: Any = response.json()["error"]
        message = str(error["message"])
        code = error.get("code") or error.get("type") or ""
    except (ValueError, KeyError, TypeError):
        return f"{response.status_code} {response.reason_phrase}: {response.text[:200]}"
    hint = ""
    if response.status_code == 401:
        hint = " (pass --api-key or set VOXGATE_API_KEY)"
    return f"{response.status_code} {code}: {message}{hint}"


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, ensure_ascii=False))
