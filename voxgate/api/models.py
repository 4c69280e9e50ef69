"""GET /v1/models (OpenAI's list, authenticated); GET /api/models (CometAPI's public catalog)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from voxgate import schemas
from voxgate.api.deps import CallerDep, ServicesDep
from voxgate.catalog import CatalogEntry
from voxgate.errors import ModelNotFound
from voxgate.services.keys import Caller

router = APIRouter()

_OWNER = {"local": "voxgate"}


def _model_object(entry: CatalogEntry) -> schemas.ModelObject:
    provider = entry.model.provider
    return schemas.ModelObject(id=entry.id, created=0, owned_by=_OWNER.get(provider, provider))


def _visible(entry: CatalogEntry, caller: Caller) -> bool:
    """A key with a model allowlist sees only the models it may use."""
    return caller.key is None or caller.key.allows([entry.id, entry.model.id])


@router.get("/v1/models")
async def list_models(services: ServicesDep, caller: CallerDep) -> schemas.ModelList:
    entries = [entry for entry in services.catalog if _visible(entry, caller)]
    return schemas.ModelList(data=[_model_object(entry) for entry in entries])


@router.get("/v1/models/{model_id}")
async def get_model(model_id: str, services: ServicesDep, caller: CallerDep) -> schemas.ModelObject:
    entry = services.catalog.get(model_id)
    if not _visible(entry, caller):
        raise ModelNotFound(
            f"The model '{model_id}' does not exist or this key may not use it.", param="model"
        )
    return _model_object(entry)


@router.get("/api/models")
async def catalog(
    services: ServicesDep,
    page: Annotated[int, Query(ge=0, description="1-based page; 0 returns everything")] = 0,
    page_size: Annotated[int, Query(ge=0, le=1000)] = 20,
    model_type: str | None = None,
    feature: str | None = None,
    provider: str | None = None,
) -> schemas.CatalogPage:
    records = [
        _record(entry)
        for entry in services.catalog
        if (model_type is None or entry.model.model_type == model_type)
        and (feature is None or feature in entry.model.features)
        and (provider is None or entry.model.provider == provider)
    ]
    total = len(records)
    if page == 0:
        return schemas.CatalogPage(page=0, page_size=0, total=total, data=records)
    start = (page - 1) * page_size
    return schemas.CatalogPage(
        page=page, page_size=page_size, total=total, data=records[start : start + page_size]
    )


def _record(entry: CatalogEntry) -> schemas.CatalogRecord:
    model, pricing = entry.model, entry.pricing
    speaks = "text-to-speech" in model.features
    return schemas.CatalogRecord(
        created=0,
        id=entry.id,
        code=entry.id,
        provider=_OWNER.get(model.provider, model.provider),
        provider_code=model.provider,
        name=entry.name,
        description=model.description,
        model_type=model.model_type,
        features=list(model.features),
        endpoints=list(model.endpoints),
        pricing=schemas.CatalogPricing(
            unit="per 1M input characters" if speaks else "per second of input audio",
            input=pricing.input,
            output=pricing.output,
            per_request=pricing.per_request,
            per_second=pricing.per_second,
        ),
        alias_of=entry.alias_of,
        languages=list(model.languages) or [voice.id for voice in model.voices],
        voices=[
            schemas.CatalogVoice(id=v.id, name=v.name, openai_voices=list(v.openai))
            for v in entry.voices
        ],
    )
