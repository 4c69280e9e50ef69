"""The console's files as the server sends them: content types, the CSP, no metering, no
catch-all (browser tests are in test_console.py; these run without a browser)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import ADMIN_KEY, LedgerReader, Server, StartServer, assert_error_envelope

from voxgate.console import CONTENT_SECURITY_POLICY

STATIC = Path(__file__).resolve().parent.parent / "voxgate" / "console" / "static"


@pytest.fixture(scope="module")
def console_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('console-http') / 'voxgate.db'}"


@pytest.fixture(scope="module")
def console_server(start_server: StartServer, console_db: str) -> Iterator[Server]:
    with start_server(VOXGATE_DATABASE_URL=console_db) as srv:
        yield srv


def test_index_is_public_html_with_a_self_only_csp(console_server: Server) -> None:
    response = httpx.get(f"{console_server.base_url}/")  # no key at all
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "default-src 'self'" in CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY
    assert "unsafe-eval" not in CONTENT_SECURITY_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    for hook in ("api-key", "speech-text", "speech-audio", "stt-file", "usage-chart"):
        assert f'data-testid="{hook}"' in response.text
    # Nothing in the page points at another host.
    assert "http://" not in response.text
    assert "https://" not in response.text


@pytest.mark.parametrize(
    ("name", "media_type"),
    [
        ("app.js", "text/javascript; charset=utf-8"),
        ("speech.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ],
)
def test_assets_are_served_with_their_types(
    console_server: Server, name: str, media_type: str
) -> None:
    response = httpx.get(f"{console_server.base_url}/console/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == media_type
    assert response.content == (STATIC / name).read_bytes()


def test_scripts_load_nothing_from_other_hosts() -> None:
    for path in STATIC.iterdir():
        text = path.read_text()
        assert "https://" not in text and "http://" not in text.replace(
            "http://www.w3.org/2000/svg", ""
        ), path.name


@pytest.mark.parametrize(
    "path", ["/console/", "/console/index", "/console/..%2Fapp.py", "/index.html", "/console"]
)
def test_only_listed_files_exist(console_server: Server, path: str) -> None:
    response = httpx.get(f"{console_server.base_url}{path}")
    assert_error_envelope(response, 404, None)


def test_the_console_needs_no_key_and_is_not_metered(
    console_server: Server, console_db: str
) -> None:
    with console_server.http() as client:  # a valid key: would be metered if this were metered
        for path in ("/", "/console/app.js", "/console/style.css"):
            assert client.get(path).status_code == 200
    for path in ("/", "/console/app.js"):
        assert httpx.get(f"{console_server.base_url}{path}").status_code == 200  # no key at all
    with LedgerReader(console_db) as ledger:
        assert ledger.rows() == []
    assert ADMIN_KEY not in httpx.get(f"{console_server.base_url}/").text
