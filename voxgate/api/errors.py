"""Render every failure as OpenAI's error envelope, with the request id in the message.

This is the only place that writes ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from voxgate import metrics
from voxgate.errors import VoxgateError
from voxgate.schemas import ErrorDetail, ErrorEnvelope

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "invalid_request"}


def request_id(request: Request) -> str:
    return getattr(request.state, "request_id", "")


def error_response(request: Request, exc: VoxgateError) -> JSONResponse:
    """The envelope for ``exc``. ``x-should-retry`` tells the official SDKs whether retrying can
    help, so they do not retry a spent budget or a request too big for any limit."""
    response = _envelope(
        request,
        exc.status_code,
        exc.message,
        type=exc.type,
        param=exc.param,
        code=exc.code,
        retry_after_s=exc.retry_after_s,
    )
    response.headers["x-should-retry"] = "true" if exc.retryable else "false"
    if reason := metrics.rejection_reason(exc.code):
        metrics.count_rejection(reason)
    return response


def _envelope(
    request: Request,
    status_code: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    retry_after_s: int | None = None,
) -> JSONResponse:
    rid = request_id(request)
    body = ErrorEnvelope(
        error=ErrorDetail(
            message=f"{message} (request id: {rid})", type=type, param=param, code=code
        )
    )
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
    return JSONResponse(body.model_dump(), status_code=status_code, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(VoxgateError)
    async def voxgate_error(request: Request, exc: VoxgateError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_response(request, exc.errors())

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _envelope(
            request, exc.status_code, str(exc.detail), code=_HTTP_CODES.get(exc.status_code)
        )


def validation_response(request: Request, errors: Sequence[Any]) -> JSONResponse:
    """A pydantic validation failure as a 400 naming the first offending field."""
    first = _most_telling(errors)
    location = [str(part) for part in first.get("loc", ()) if _is_field(part)]
    param = location[0] if location else None
    if first.get("type") == "json_invalid" or param is None:
        # Not JSON (the location is a character offset), missing, or not an object: no field.
        param = None
        detail = "missing" if first.get("type") == "missing" else f"not valid: {first.get('msg')}"
        message = f"The request body is {detail}."
        code = "invalid_request"
    elif first.get("type") == "missing":
        message = f"Missing required parameter: '{param}'."
        code = "missing_required_parameter"
    elif first.get("type") == "extra_forbidden":
        message = f"Unrecognized request argument supplied: '{param}'."
        code = "unknown_parameter"
    else:
        reason = str(first.get("msg", "")).removeprefix("Value error, ")
        message = f"Invalid value for '{'.'.join(location)}': {reason}."
        code = "invalid_value"
    return _envelope(request, 400, message, param=param, code=code)


_TYPE_MISMATCHES = {"string_type", "model_type", "dict_type", "model_attributes_type"}
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _most_telling(errors: Sequence[Any]) -> dict[str, Any]:
    """The first error, or for a union field (``voice``: a name or ``{"id"}``) the branch's error
    that says what is wrong with the value rather than that it is not the other branch's type."""
    if not errors:
        return {"msg": "Invalid request"}
    first: dict[str, Any] = errors[0]
    field = [part for part in first.get("loc", ()) if _is_field(part)][:1]
    for error in errors:
        same = [part for part in error.get("loc", ()) if _is_field(part)][:1] == field
        if same and error.get("type") not in _TYPE_MISMATCHES:
            return error  # type: ignore[no-any-return]
    return first


def _is_field(part: object) -> bool:
    """Whether a pydantic location part names a field (not ``body`` or a union branch tag)."""
    if not isinstance(part, str):
        return isinstance(part, int)
    return (
        part not in ("body", "query")
        and part not in _TYPE_TAGS
        and "[" not in part
        and not part[:1].isupper()
    )
