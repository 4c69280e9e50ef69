"""Who is calling: a bearer secret → a stored key, a bootstrap key, the admin, or nobody.

Keys from ``VOXGATE_API_KEYS`` are bootstrap keys: never stored, never limited, metered under
``key_env_<digest prefix>``. With no bootstrap key and no usable stored key the server is open,
as it was before any key existed, and callers are anonymous.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from voxgate.errors import AuthenticationFailed
from voxgate.storage.keys import ApiKey, KeyStore, redact, secret_digest


@dataclass(frozen=True)
class Caller:
    key: ApiKey | None  # None: the admin, or anonymous on an open server
    admin: bool = False

    @property
    def key_id(self) -> str | None:
        return self.key.id if self.key else None


def bootstrap_key(secret: str) -> ApiKey:
    return ApiKey(
        id=f"key_env_{secret_digest(secret)[:12]}",
        name="bootstrap (VOXGATE_API_KEYS)",
        redacted=redact(secret),
        created_at=0,
        bootstrap=True,
    )


class Authenticator:
    def __init__(self, store: KeyStore, bootstrap: Sequence[str], admin_key: str | None) -> None:
        self._store = store
        self._bootstrap = [(secret_digest(s).encode(), bootstrap_key(s)) for s in bootstrap]
        self._admin = secret_digest(admin_key).encode() if admin_key else None

    async def authenticate(self, authorization: str | None) -> Caller:
        """Resolve an ``Authorization`` header value. Raises AuthenticationFailed (401)."""
        scheme, _, presented = (authorization or "").partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented:
            if await self._is_open():
                return Caller(None)
            raise AuthenticationFailed(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
            )
        digest = secret_digest(presented)
        if self._admin is not None and hmac.compare_digest(self._admin, digest.encode()):
            return Caller(None, admin=True)
        found = None
        for stored, key in self._bootstrap:  # no early exit: timing tells nothing about which
            if hmac.compare_digest(stored, digest.encode()):
                found = key
        found = found or await self._store.find(digest)
        if found is None:
            if await self._is_open():
                return Caller(None)
            raise AuthenticationFailed("Incorrect API key provided.")
        if refusal := found.refusal():
            raise AuthenticationFailed(refusal)
        return Caller(found)

    async def _is_open(self) -> bool:
        return not self._bootstrap and not await self._store.any_usable()
