"""Who is calling: a bearer secret → a stored key, a bootstrap key, the admin, or nobody.

Keys from ``VOXGATE_API_KEYS`` are bootstrap keys: never stored, never limited, metered under
``key_env_<digest prefix>``. Whether /v1 needs a key at all is the explicit ``VOXGATE_AUTH``
setting, never a consequence of which keys exist: with ``auth=keys`` and no key yet, every /v1
request is refused with a message that says how to create one; with ``auth=off`` every caller
that is not the admin is anonymous.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from voxgate.errors import AuthenticationFailed
from voxgate.storage.keys import ApiKey, KeyStore, redact, secret_digest

NO_KEYS_YET = (
    "No API key exists yet. Create one with `voxgate keys create --name NAME` (or POST "
    "/admin/keys with the admin key), or set VOXGATE_API_KEYS; VOXGATE_AUTH=off serves /v1 "
    "without keys (local development only)."
)


@dataclass(frozen=True)
class Caller:
    key: ApiKey | None  # None: the admin, or anonymous with VOXGATE_AUTH=off
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
    def __init__(
        self,
        store: KeyStore,
        bootstrap: Sequence[str],
        admin_key: str | None,
        mode: Literal["keys", "off"] = "keys",
    ) -> None:
        self._store = store
        self._bootstrap = [(secret_digest(s).encode(), bootstrap_key(s)) for s in bootstrap]
        self._admin = secret_digest(admin_key).encode() if admin_key else None
        self.mode = mode

    async def authenticate(self, authorization: str | None) -> Caller:
        """Resolve an ``Authorization`` header value. Raises AuthenticationFailed (401).

        With ``auth=off`` only the admin key is recognised; anything else is anonymous.
        """
        scheme, _, presented = (authorization or "").partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented:
            if self.mode == "off":
                return Caller(None)
            raise AuthenticationFailed(
                await self._hint(
                    "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
                )
            )
        digest = secret_digest(presented)
        if self._admin is not None and hmac.compare_digest(self._admin, digest.encode()):
            return Caller(None, admin=True)
        if self.mode == "off":
            return Caller(None)
        found = None
        for stored, key in self._bootstrap:  # no early exit: timing tells nothing about which
            if hmac.compare_digest(stored, digest.encode()):
                found = key
        found = found or await self._store.find(digest)
        if found is None:
            raise AuthenticationFailed(await self._hint("Incorrect API key provided."))
        if refusal := found.refusal():
            raise AuthenticationFailed(refusal)
        return Caller(found)

    async def _hint(self, message: str) -> str:
        """Add how to get a key when none can exist yet (a fresh install with auth on)."""
        if self._bootstrap or await self._store.any_usable():
            return message
        return f"{message} {NO_KEYS_YET}"
