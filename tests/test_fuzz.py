"""The OpenAPI document tells the truth, /docs works offline, and schemathesis finds nothing.

schemathesis generates requests for every operation in the server's own /openapi.json (from its
examples and from valid and invalid random data) and checks each response: never a 5xx, and
status, content type, headers and JSON body as the document declares. With a fixed, small
example budget it runs in CI in a couple of minutes; generation is derandomized, so a failure
reproduces.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import Case
from schemathesis.config import SchemathesisConfig
from schemathesis.generation import GenerationMode
from schemathesis.schemas import BaseSchema
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import ADMIN_KEY, API_KEY, Server, StartServer, audio_path
from voxgate.api.openapi import OPERATION_ERRORS

#: Generated requests per operation and mode: enough to reach every parameter, small enough
#: for CI on two busy cores.
MAX_EXAMPLES = 20
AUDIO_TYPES = {"audio/mpeg", "audio/ogg", "audio/aac", "audio/flac", "audio/wav", "audio/pcm"}
ERRORS = {"400", "401", "403", "404", "413", "429", "500", "503"}


@pytest.fixture(scope="module")
def fuzz_server(
    start_server: StartServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A server of its own, with its own database: the fuzzer creates and revokes keys."""
    database = tmp_path_factory.mktemp("fuzz-db") / "voxgate.db"
    with start_server(VOXGATE_DATABASE_URL=f"sqlite:///{database}") as srv:
        yield srv


@pytest.fixture(scope="module")
def document(fuzz_server: Server) -> dict[str, Any]:
    return httpx.get(f"{fuzz_server.base_url}/openapi.json", timeout=30).json()  # type: ignore[no-any-return]


# --- the document -------------------------------------------------------------------------------


def test_document_has_no_422_and_real_errors(document: dict[str, Any]) -> None:
    assert '"422"' not in json.dumps(document)
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            errors = [code for code in responses if code[0] in "45"]
            assert errors, f"{method} {path} declares no error responses"
            for code in errors:
                schema = responses[code]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorEnvelope"}, (path, code)
            for code, response in responses.items():
                assert "x-request-id" in response["headers"], (path, code)
    speech = document["paths"]["/v1/audio/speech"]["post"]["responses"]
    assert set(speech) >= ERRORS


def test_document_speech_is_audio(document: dict[str, Any]) -> None:
    operation = document["paths"]["/v1/audio/speech"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/SpeechRequest"}
    assert set(operation["responses"]["200"]["content"]) == {*AUDIO_TYPES, "text/event-stream"}


@pytest.mark.parametrize("path", ["/v1/audio/transcriptions", "/v1/audio/translations"])
def test_document_uploads_are_multipart(document: dict[str, Any], path: str) -> None:
    operation = document["paths"][path]["post"]
    form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["properties"]["file"] == {**form["properties"]["file"], "format": "binary"}
    assert {"file", "model", "language", "prompt", "response_format", "temperature"} <= set(
        form["properties"]
    )
    assert {"timestamp_granularities", "include", "stream", "chunking_strategy"} <= set(
        form["properties"]
    )
    assert set(form["required"]) == {"file", "model"}
    ok = operation["responses"]["200"]["content"]
    assert {"application/json", "text/plain", "text/vtt", "text/event-stream"} <= set(ok)


def test_document_security_is_bearer(document: dict[str, Any]) -> None:
    scheme = document["components"]["securitySchemes"]["bearer"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    paths = document["paths"]
    assert paths["/v1/audio/speech"]["post"]["security"] == [{"bearer": []}]
    assert paths["/admin/keys"]["get"]["security"] == [{"bearer": []}]
    assert paths["/api/models"]["get"]["security"] == []


def test_docs_render_offline(fuzz_server: Server) -> None:
    """/docs loads Swagger UI from voxgate itself: no other host appears in the page."""
    with httpx.Client(base_url=fuzz_server.base_url, timeout=30) as client:
        page = client.get("/docs")
        assert page.status_code == 200
        assert "text/html" in page.headers["content-type"]
        references = re.findall(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""", page.text)
        assert references, page.text
        assert not re.search(r"https?://|//[a-z]", page.text, re.IGNORECASE), page.text
        for reference in references:
            asset = client.get(reference)
            assert asset.status_code == 200, reference
            assert asset.content, reference
        assert "SwaggerUIBundle" in client.get("/docs/assets/swagger-ui-bundle.js").text
        assert client.get("/docs/assets/index.html").status_code == 404
        assert client.get("/docs/assets/..%2F__init__.py").status_code == 404
        assert client.get("/redoc").status_code == 404


# --- schemathesis -------------------------------------------------------------------------------
# schemathesis' own pytest loader (``from_fixture``) does not run on pytest 9.2, and it runs every
# operation as one test; so each operation and mode is a test here, driven by the strategies
# schemathesis builds from the document: its examples, then generated data that fits the schema
# (positive) or breaks it (negative).

CONFIG = SchemathesisConfig.from_dict({"request-timeout": 60})
#: Operations with no parameters and no body: nothing to break, so no negative mode.
NO_INPUTS = {
    ("get", "/health"),
    ("get", "/health/live"),
    ("get", "/health/ready"),
    ("get", "/v1/models"),
}
FUZZ_CASES = [
    pytest.param(method, path, mode, id=f"{method.upper()} {path} {mode}")
    for method, path in sorted(OPERATION_ERRORS)
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode.is_positive or (method, path) not in NO_INPUTS
]
CHECKS = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def api_schema(fuzz_server: Server) -> BaseSchema:
    """The real server's document, as schemathesis loads it."""
    return schemathesis.openapi.from_url(f"{fuzz_server.base_url}/openapi.json", config=CONFIG)


def _key(path: str) -> str:
    """The admin key where only it is accepted; the bootstrap key everywhere else."""
    return ADMIN_KEY if path.startswith(("/admin", "/v1/organization")) else API_KEY


def test_every_operation_is_fuzzed(api_schema: BaseSchema) -> None:
    """The parametrization below covers exactly the operations the server documents."""
    documented = {
        (method.lower(), path)
        for path, operations in api_schema.raw_schema["paths"].items()
        for method in operations
    }
    assert documented == set(OPERATION_ERRORS)
    for method, path in NO_INPUTS:
        operation = api_schema.raw_schema["paths"][path][method]
        assert not operation.get("parameters") and "requestBody" not in operation


@pytest.mark.parametrize(("method", "path", "mode"), FUZZ_CASES)
def test_schemathesis(api_schema: BaseSchema, method: str, path: str, mode: GenerationMode) -> None:
    """No 5xx; status, content type and JSON body as the document says."""
    operation = api_schema[path][method.upper()]
    strategies = [operation.as_strategy(mode)]
    if mode.is_positive:
        strategies = [*operation.get_strategies_from_examples(), *strategies]
    headers = {"Authorization": f"Bearer {_key(path)}"}

    @given(case=st.one_of(strategies))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    def fuzz(case: Case) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS, timeout=60)

    fuzz()


@pytest.mark.parametrize(
    ("path", "response_format"),
    [
        ("/v1/audio/transcriptions", "verbose_json"),  # application/json, TranscriptionVerbose
        ("/v1/audio/transcriptions", "text"),  # text/plain
        ("/v1/audio/translations", "vtt"),  # text/vtt
    ],
)
def test_real_upload_matches_document(
    api_schema: BaseSchema,
    manifest: list[dict[str, Any]],
    path: str,
    response_format: str,
) -> None:
    """A real recording, through the document's own form schema: random bytes never decode, so
    this is what checks the success responses of the upload endpoints."""
    operation = api_schema[path]["POST"]
    clip = _short_clip(manifest)
    case = operation.Case(
        body={"file": clip.read_bytes(), "model": "whisper-1", "response_format": response_format},
        media_type="multipart/form-data",
    )
    response = case.call_and_validate(
        headers={"Authorization": f"Bearer {API_KEY}"},
        checks=CHECKS,
        timeout=120,
    )
    assert response.status_code == 200, response.text


def _short_clip(manifest: list[dict[str, Any]]) -> Path:
    """The shortest English clip, to keep the test fast."""
    english = [clip for clip in manifest if clip["language"] == "en"]
    return audio_path(str(min(english, key=lambda clip: float(clip["duration_s"]))["file"]))
