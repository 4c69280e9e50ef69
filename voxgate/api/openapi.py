"""/openapi.json as the server really behaves, and /docs from a vendored Swagger UI (no CDN).

FastAPI's generated document is wrong for voxgate in ways that matter to clients and fuzzers:
it declares 422 (voxgate answers every validation failure 400 with OpenAI's envelope), none of
the real error statuses, speech as JSON, and the upload endpoints without a body (they read the
form themselves). ``openapi_document`` starts from FastAPI's document and corrects it from the
same sources the handlers use (``schemas``, ``audio.media_type``, the error tree), so the schema
checks that schemathesis runs in CI test the server against the truth.
"""

from __future__ import annotations

import copy
from typing import Any, Literal, get_args

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from swagger_ui_bundle import swagger_ui_path

from voxgate import schemas
from voxgate.audio import SpeechFormat, media_type
from voxgate.catalog import SPEECH, UPLOAD_ENDPOINTS
from voxgate.errors import NotFound

_REF = "#/components/schemas/{model}"
_ENVELOPE = {"$ref": "#/components/schemas/ErrorEnvelope"}
_BINARY = {"type": "string", "format": "binary"}
_TEXT = {"type": "string"}
_REQUEST_ID = {
    "description": "This request's id; error messages end with it too.",
    "required": True,
    "schema": {"type": "string"},
}
_RETRY_AFTER = {"description": "Seconds to wait before retrying.", "schema": {"type": "string"}}

#: What each error status means on voxgate (the error tree in ``voxgate/errors.py``).
_ERROR_DESCRIPTIONS = {
    400: "Invalid request: a field's value, a missing field, unreadable audio (`param` names it).",
    401: "Missing or invalid API key (or not the admin key where that is needed).",
    403: "This key may not do this: a model outside its allowlist, another key's usage, "
    "or the admin API is off.",
    404: "Unknown model, API key or resource.",
    408: "The request body arrived too slowly (VOXGATE_BODY_IDLE_TIMEOUT_S, _BODY_TIMEOUT_S).",
    413: "The request body is larger than the server accepts.",
    429: "Rate limit (retry after `Retry-After` seconds) or spent budget (do not retry).",
    500: "An engine or the server failed (retryable).",
    503: "Overloaded, still loading, or a dependency is down: retry after `Retry-After` seconds.",
}

_AUDIO_IN = (400, 401, 403, 404, 408, 413, 429, 500, 503)
_AUTHENTICATED = (401, 500, 503)
_USAGE = (400, 401, 403, 500, 503)
_ADMIN = (400, 401, 403, 500, 503)
#: Every error status each operation can answer, by (method, path).
OPERATION_ERRORS: dict[tuple[str, str], tuple[int, ...]] = {
    **{("post", path): _AUDIO_IN for path in (SPEECH, *UPLOAD_ENDPOINTS)},
    ("get", "/v1/models"): _AUTHENTICATED,
    ("get", "/v1/models/{model_id}"): (*_AUTHENTICATED, 404),
    ("get", "/api/models"): (400, 500),
    ("get", "/v1/organization/usage/audio_transcriptions"): _USAGE,
    ("get", "/v1/organization/usage/audio_translations"): _USAGE,
    ("get", "/v1/organization/usage/audio_speeches"): _USAGE,
    ("get", "/v1/organization/costs"): _USAGE,
    ("post", "/admin/keys"): (*_ADMIN, 408, 413),
    ("get", "/admin/keys"): _ADMIN,
    ("get", "/admin/keys/{key_id}"): (*_ADMIN, 404),
    ("patch", "/admin/keys/{key_id}"): (*_ADMIN, 404, 408, 413),
    ("delete", "/admin/keys/{key_id}"): (*_ADMIN, 404),
    ("post", "/admin/keys/{key_id}/revoke"): (*_ADMIN, 404),
    ("get", "/health"): (503,),
    ("get", "/health/live"): (500,),
    ("get", "/health/ready"): (503,),
}
_UPLOAD_PATHS: tuple[str, ...] = UPLOAD_ENDPOINTS
_PUBLIC_PATHS = ("/api/models", "/health", "/health/live", "/health/ready")
#: Component schemas the handlers return or read outside FastAPI's view.
_EXTRA_MODELS: tuple[tuple[type[BaseModel], Literal["validation", "serialization"]], ...] = (
    (schemas.ErrorEnvelope, "serialization"),
    (schemas.TranscriptionJson, "serialization"),
    (schemas.TranscriptionVerbose, "serialization"),
    (schemas.TranscriptionForm, "validation"),
)
#: Swagger UI's files that /docs loads, served from the installed ``swagger-ui-bundle-v2``.
_DOCS_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}
_ASSETS_PREFIX = "/docs/assets"


def install_openapi(app: FastAPI) -> None:
    """Serve the corrected document at ``app.openapi_url`` and Swagger UI at ``/docs``.

    The app must be created with ``docs_url=None, redoc_url=None``: FastAPI's pages load their
    scripts from a CDN. ReDoc is dropped rather than vendored; one viewer is enough.
    """
    cached: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not cached:
            cached.update(openapi_document(app))
        return cached

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url=f"{_ASSETS_PREFIX}/swagger-ui-bundle.js",
            swagger_css_url=f"{_ASSETS_PREFIX}/swagger-ui.css",
            swagger_favicon_url=f"{_ASSETS_PREFIX}/favicon-32x32.png",
        )

    @app.get(_ASSETS_PREFIX + "/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> FileResponse:
        if name not in _DOCS_ASSETS:  # only the listed files, never a path into the package
            raise NotFound(f"No documentation asset '{name}'.")
        return FileResponse(swagger_ui_path / name, media_type=_DOCS_ASSETS[name])


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document for ``app``, corrected to what the handlers really accept and send."""
    document = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = document.setdefault("components", {})
    found: dict[str, Any] = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        found.pop(name, None)
    _, extra = models_json_schema(_EXTRA_MODELS, ref_template=_REF)
    found.update(extra.get("$defs", {}))
    form = found.pop("TranscriptionForm")
    # A request a fuzzer can start from that really reaches an engine (and is quick to serve).
    found["SpeechRequest"]["examples"] = [{"model": "tts-1", "input": "Hello.", "voice": "alloy"}]
    components["securitySchemes"] = {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key, or the admin key (VOXGATE_ADMIN_KEY) for /admin and "
            "the organization usage and costs API.",
        }
    }
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses: dict[str, Any] = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status in OPERATION_ERRORS.get((method, path), ()):
                responses[str(status)] = {
                    "description": _ERROR_DESCRIPTIONS[status],
                    "content": {"application/json": {"schema": _ENVELOPE}},
                }
                if status in (429, 503):
                    responses[str(status)]["headers"] = {"Retry-After": _RETRY_AFTER}
            operation["security"] = [] if path in _PUBLIC_PATHS else [{"bearer": []}]
            if path == SPEECH:
                responses["200"] = _speech_ok()
            elif path in _UPLOAD_PATHS:
                operation["requestBody"] = _upload_body(form)
                responses["200"] = _transcript_ok()
            for response in responses.values():
                response.setdefault("headers", {})["x-request-id"] = _REQUEST_ID
            operation["responses"] = dict(sorted(responses.items()))
    return document


def _speech_ok() -> dict[str, Any]:
    content: dict[str, Any] = {
        media_type(fmt): {"schema": _BINARY} for fmt in get_args(SpeechFormat)
    }
    content["text/event-stream"] = {"schema": _TEXT}
    return {
        "description": "The audio in `response_format`, streamed as it is synthesised; with "
        "`stream_format=sse`, `speech.audio.delta` events then `speech.audio.done`.",
        "content": content,
    }


def _transcript_ok() -> dict[str, Any]:
    json_schema = {
        "anyOf": [
            {"$ref": "#/components/schemas/TranscriptionJson"},
            {"$ref": "#/components/schemas/TranscriptionVerbose"},
        ]
    }
    return {
        "description": "`json` and `verbose_json` as JSON, `text` and `srt` as text/plain, "
        "`vtt` as text/vtt; with `stream=true`, `transcript.text.delta` events then "
        "`transcript.text.done`.",
        "content": {
            "application/json": {"schema": json_schema},
            "text/plain": {"schema": _TEXT},
            "text/vtt": {"schema": _TEXT},
            "text/event-stream": {"schema": _TEXT},
        },
    }


def _upload_body(form: dict[str, Any]) -> dict[str, Any]:
    """The multipart form: ``file`` plus ``TranscriptionForm``'s fields as form parts.

    A form part cannot be null, so optional fields lose their null branch; ``chunking_strategy``
    is shown as its string form (``auto``), though ``chunking_strategy[type]=…`` parts work too.
    Arrays are repeated parts (``include=logprobs``; ``include[]`` is accepted as well).
    """
    properties: dict[str, Any] = {
        "file": {
            **_BINARY,
            "description": "The audio: flac, mp3, mp4, mpeg, mpga, m4a, ogg, wav or webm.",
        },
    }
    for name, schema in form["properties"].items():
        properties[name] = _without_null(copy.deepcopy(schema))
    properties["chunking_strategy"] = {"type": "string", "examples": ["auto"]}
    properties["model"]["examples"] = ["whisper-1"]
    body_schema = {
        "type": "object",
        "properties": properties,
        "required": ["file", *form.get("required", [])],
        "additionalProperties": False,
    }
    return {"required": True, "content": {"multipart/form-data": {"schema": body_schema}}}


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """``anyOf: [X, {type: null}]`` → X (keeping title, default and description)."""
    branches = [b for b in schema.pop("anyOf", []) if b.get("type") != "null"]
    if len(branches) == 1:
        schema.update(branches[0])
    elif branches:
        schema["anyOf"] = branches
    if schema.get("default", "") is None:
        del schema["default"]
    return schema
