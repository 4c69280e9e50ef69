"""The admin API for stored keys: ``/admin/keys`` create, list, get, update, revoke.

Only the admin key (``VOXGATE_ADMIN_KEY``) reaches these handlers; ``api/gateway.py`` checks it.
Validation lives in ``services/key_admin.py``, shared with ``voxgate keys``. Keys are listed in
creation order (oldest first). Keys from ``VOXGATE_API_KEYS`` are not stored, so not listed.
A revoked key stays in the database, so the usage ledger can still name it.
"""

from __future__ import annotations

from fastapi import APIRouter, status

from voxgate import schemas
from voxgate.api.deps import ServicesDep
from voxgate.errors import NotFound
from voxgate.services import key_admin
from voxgate.storage.keys import ApiKey

router = APIRouter()


def _object(key: ApiKey) -> schemas.ApiKeyObject:
    return schemas.ApiKeyObject.model_validate(key.public())


def _found(key: ApiKey | None, key_id: str) -> ApiKey:
    if key is None:
        raise NotFound(f"No API key with id '{key_id}'. GET /admin/keys lists the keys.")
    return key


@router.post("/admin/keys", status_code=status.HTTP_201_CREATED)
async def create_key(
    body: schemas.ApiKeyCreateRequest, services: ServicesDep
) -> schemas.ApiKeyCreated:
    """Issue a key. The response is the only place its secret (``key``) ever appears."""
    fields = body.model_dump(exclude_unset=True)
    key, secret = await key_admin.create_key(services.keys, services.catalog, fields)
    return schemas.ApiKeyCreated.model_validate({**key.public(), "key": secret})


@router.get("/admin/keys")
async def list_keys(services: ServicesDep, include_revoked: bool = True) -> schemas.ApiKeyList:
    keys = await services.keys.list()
    shown = [key for key in keys if include_revoked or key.revoked_at is None]
    return schemas.ApiKeyList(data=[_object(key) for key in shown])


@router.get("/admin/keys/{key_id}")
async def get_key(key_id: str, services: ServicesDep) -> schemas.ApiKeyObject:
    return _object(_found(await services.keys.get(key_id), key_id))


@router.patch("/admin/keys/{key_id}")
async def update_key(
    key_id: str, body: schemas.ApiKeyUpdateRequest, services: ServicesDep
) -> schemas.ApiKeyObject:
    """Change only the fields sent; null clears a budget, limit, allowlist or expiry."""
    fields = body.model_dump(exclude_unset=True)
    key = await key_admin.update_key(services.keys, services.catalog, key_id, fields)
    return _object(_found(key, key_id))


@router.delete("/admin/keys/{key_id}")
@router.post("/admin/keys/{key_id}/revoke")
async def revoke_key(key_id: str, services: ServicesDep) -> schemas.ApiKeyObject:
    """Revoke at once (idempotent: a second call keeps the first ``revoked_at``)."""
    return _object(_found(await services.keys.revoke(key_id), key_id))
