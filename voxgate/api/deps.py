"""How a request gets what it needs: the services, and an authenticated caller."""

from __future__ import annotations

import hmac
from typing import Annotated, cast

from fastapi import Depends, Request

from voxgate.errors import AuthenticationFailed
from voxgate.services.container import Services, api_key_digest


def get_services(request: Request) -> Services:
    return cast(Services, request.app.state.services)


ServicesDep = Annotated[Services, Depends(get_services)]


async def require_api_key(request: Request, services: ServicesDep) -> None:
    """Accept ``Authorization: Bearer <key>`` if it matches a configured key.

    Keys are compared as SHA-256 digests with ``hmac.compare_digest`` against every configured
    key (no early exit), so timing reveals neither which key nor how much of it matched.
    """
    accepted = services.api_key_digests
    if not accepted:
        return
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise AuthenticationFailed(
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
        )
    presented_digest = api_key_digest(presented.strip())
    matched = False
    for digest in accepted:
        matched |= hmac.compare_digest(presented_digest, digest)
    if not matched:
        raise AuthenticationFailed("Incorrect API key provided.")
