"""A ``Delivery`` (an upstream's body, or the local engine's encoded speech) as the HTTP
response that streams it."""

from __future__ import annotations

from fastapi.responses import Response, StreamingResponse

from voxgate.services.relay import Delivery


def streaming(delivery: Delivery) -> Response:
    if isinstance(delivery.body, bytes):
        return Response(
            delivery.body,
            status_code=delivery.status_code,
            media_type=delivery.media_type,
            headers=delivery.headers,
        )
    return StreamingResponse(
        delivery.body,
        status_code=delivery.status_code,
        media_type=delivery.media_type,
        headers=delivery.headers,
    )
