"""``voxgate keys create|list|update|revoke``: manage stored API keys without a running server.

The commands open the database the server uses (same settings), migrating it first so a fresh
machine works, and validate through ``services/key_admin.py`` exactly as ``/admin/keys`` does.
Exit codes: 0 done, 1 no such key, 2 invalid input.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from voxgate.catalog import Catalog
from voxgate.cli.database import on_database
from voxgate.errors import InvalidRequest
from voxgate.services.key_admin import create_key, format_time, update_key
from voxgate.settings import Settings
from voxgate.storage.keys import ApiKey, KeyStore

T = TypeVar("T")

keys_app = typer.Typer(
    help="Create, list, update and revoke API keys (on the database, no server needed).",
    no_args_is_help=True,
)

# The CLI's name for each admin field, so an error names the option the user typed.
_OPTIONS = {
    "name": "--name",
    "budget_usd": "--budget",
    "rpm": "--rpm",
    "audio_seconds_per_minute": "--audio-seconds-per-minute",
    "characters_per_minute": "--characters-per-minute",
    "max_concurrency": "--max-concurrency",
    "models": "--models",
    "expires_at": "--expires",
}
_CLEARABLE = {
    "budget": "budget_usd",
    "rpm": "rpm",
    "audio-seconds-per-minute": "audio_seconds_per_minute",
    "characters-per-minute": "characters_per_minute",
    "max-concurrency": "max_concurrency",
    "models": "models",
    "expires": "expires_at",
}

Budget = Annotated[
    float | None, typer.Option("--budget", help="Spending cap in USD (default: none).")
]
Rpm = Annotated[int | None, typer.Option("--rpm", help="Requests per minute (default: no limit).")]
AudioSeconds = Annotated[
    int | None,
    typer.Option("--audio-seconds-per-minute", help="Seconds of input audio per minute."),
]
Characters = Annotated[
    int | None,
    typer.Option("--characters-per-minute", help="Characters of speech input per minute."),
]
Concurrency = Annotated[
    int | None, typer.Option("--max-concurrency", help="Requests in flight at once.")
]
Models = Annotated[
    str | None,
    typer.Option("--models", help="Comma-separated model ids the key may use (default: all)."),
]
Expires = Annotated[
    str | None,
    typer.Option("--expires", help="ISO 8601 time (UTC unless it has an offset) or Unix seconds."),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _with_store(work: Callable[[KeyStore, Catalog], Awaitable[T]]) -> T:
    """Run ``work`` against the server's database (migrated first) and its model catalog."""
    settings = Settings()
    catalog = Catalog.load(settings.catalog_file)
    return on_database(lambda db: work(KeyStore(db), catalog), settings)


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _invalid(exc: InvalidRequest) -> NoReturn:
    option = _OPTIONS.get(exc.param or "", exc.param)
    _fail(f"{option}: {exc.message}" if option else exc.message, 2)


def _fields(
    budget: float | None,
    rpm: int | None,
    audio_seconds: int | None,
    characters: int | None,
    concurrency: int | None,
    models: str | None,
    expires: str | None,
) -> dict[str, object]:
    """The options given, named as the admin API names them."""
    given: dict[str, object | None] = {
        "budget_usd": budget,
        "rpm": rpm,
        "audio_seconds_per_minute": audio_seconds,
        "characters_per_minute": characters,
        "max_concurrency": concurrency,
        "models": None if models is None else [m.strip() for m in models.split(",") if m.strip()],
        "expires_at": expires,
    }
    return {field: value for field, value in given.items() if value is not None}


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2))


# --- human-readable rendering ---------------------------------------------------------------


def _money(usd: float | None) -> str:
    """Cents when exact, else micro-dollars, so a small spend does not show as $0.00."""
    if usd is None:
        return "-"
    return f"${usd:,.2f}" if round(usd, 2) == usd else f"${usd:,.6f}"


def _limits(key: ApiKey) -> str:
    limits = key.limits
    parts = [
        f"{limits.rpm} req/min" if limits.rpm else "",
        f"{limits.audio_seconds_per_minute} audio s/min" if limits.audio_seconds_per_minute else "",
        f"{limits.characters_per_minute} chars/min" if limits.characters_per_minute else "",
        f"{limits.max_concurrency} concurrent" if limits.max_concurrency else "",
    ]
    return ", ".join(part for part in parts if part) or "-"


def _expires(key: ApiKey) -> str:
    if key.expires_at is None:
        return "never"
    expired = " (expired)" if key.expires_at <= time.time() else ""
    return format_time(key.expires_at) + expired


def _revoked(key: ApiKey) -> str:
    return "no" if key.revoked_at is None else f"yes, {format_time(key.revoked_at)}"


def _summary(key: ApiKey) -> list[str]:
    models = ", ".join(key.models) if key.models is not None else "all"
    budget = "none" if key.budget_micros is None else _money(key.public()["budget_usd"])
    return [
        f"  budget:  {budget}",
        f"  limits:  {_limits(key)}",
        f"  models:  {models}",
        f"  expires: {_expires(key)}",
    ]


def _table(keys: list[ApiKey]) -> str:
    header = ("ID", "NAME", "KEY", "BUDGET", "SPENT", "LIMITS", "MODELS", "EXPIRES", "REVOKED")
    rows = [header]
    for key in keys:
        public = key.public()
        models = ",".join(key.models) if key.models is not None else "all"
        rows.append(
            (
                key.id,
                key.name,
                key.redacted,
                _money(public["budget_usd"]),
                _money(public["spent_usd"]),
                _limits(key),
                models,
                _expires(key),
                _revoked(key),
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


# --- commands -------------------------------------------------------------------------------


@keys_app.command()
def create(
    name: Annotated[str, typer.Option("--name", help="What the key is for (1-200 characters).")],
    budget: Budget = None,
    rpm: Rpm = None,
    audio_seconds_per_minute: AudioSeconds = None,
    characters_per_minute: Characters = None,
    max_concurrency: Concurrency = None,
    models: Models = None,
    expires: Expires = None,
    as_json: AsJson = False,
) -> None:
    """Issue a key and print its secret, once: only its SHA-256 digest is stored."""
    fields: dict[str, object] = {"name": name}
    fields |= _fields(
        budget,
        rpm,
        audio_seconds_per_minute,
        characters_per_minute,
        max_concurrency,
        models,
        expires,
    )
    try:
        key, secret = _with_store(lambda store, catalog: create_key(store, catalog, fields))
    except InvalidRequest as exc:
        _invalid(exc)
    if as_json:
        _print_json({**key.public(), "key": secret})
        return
    typer.echo(f"Created API key {key.id} ({key.name}).")
    typer.echo("\n".join(_summary(key)))
    typer.echo(f"\n  {secret}\n")
    typer.echo("Copy the key now: it will not be shown again (voxgate keeps only its digest).")


@keys_app.command("list")
def list_keys(
    as_json: AsJson = False,
    show_all: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
) -> None:
    """List stored keys, oldest first, with redacted secrets (revoked ones only with --all)."""

    async def fetch(store: KeyStore, _catalog: Catalog) -> list[ApiKey]:
        return await store.list()

    keys = [key for key in _with_store(fetch) if show_all or key.revoked_at is None]
    if as_json:
        _print_json({"object": "list", "data": [key.public() for key in keys]})
    elif keys:
        typer.echo(_table(keys))
    else:
        typer.echo("No API keys. Create one with: voxgate keys create --name NAME")


@keys_app.command()
def update(
    key_id: Annotated[str, typer.Argument(metavar="ID", help="The key's id (key_…).")],
    name: Annotated[str | None, typer.Option("--name", help="A new name.")] = None,
    budget: Budget = None,
    rpm: Rpm = None,
    audio_seconds_per_minute: AudioSeconds = None,
    characters_per_minute: Characters = None,
    max_concurrency: Concurrency = None,
    models: Models = None,
    expires: Expires = None,
    clear: Annotated[
        list[str] | None,
        typer.Option(
            "--clear",
            help=f"Remove a setting (repeatable): {', '.join(_CLEARABLE)}.",
        ),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Change a key's name, budget, limits, models or expiry; only the options given change."""
    fields = _fields(
        budget,
        rpm,
        audio_seconds_per_minute,
        characters_per_minute,
        max_concurrency,
        models,
        expires,
    )
    if name is not None:
        fields["name"] = name
    for option in clear or ():
        field = _CLEARABLE.get(option)
        if field is None:
            _fail(f"--clear: unknown setting '{option}'; use one of {', '.join(_CLEARABLE)}.", 2)
        if field in fields:
            _fail(f"--clear {option} contradicts {_OPTIONS[field]}.", 2)
        fields[field] = None
    if not fields:
        _fail("nothing to change: give at least one option (see --help).", 2)
    try:
        key = _with_store(lambda store, catalog: update_key(store, catalog, key_id, fields))
    except InvalidRequest as exc:
        _invalid(exc)
    if key is None:
        _fail(f"no API key with id '{key_id}' (voxgate keys list --all lists them).", 1)
    if as_json:
        _print_json(key.public())
        return
    typer.echo(f"Updated API key {key.id} ({key.name}).")
    typer.echo("\n".join(_summary(key)))


@keys_app.command()
def revoke(
    key_id: Annotated[str, typer.Argument(metavar="ID", help="The key's id (key_…).")],
    as_json: AsJson = False,
) -> None:
    """Revoke a key at once. Its row stays, so its usage stays attributed to it."""

    async def run(store: KeyStore, _catalog: Catalog) -> tuple[ApiKey | None, ApiKey | None]:
        before = await store.get(key_id)
        return before, await store.revoke(key_id) if before else None

    before, key = _with_store(run)
    if before is None or key is None:
        _fail(f"no API key with id '{key_id}' (voxgate keys list --all lists them).", 1)
    if as_json:
        _print_json(key.public())
    elif before.revoked_at is not None:
        typer.echo(f"API key {key.id} ({key.name}) was already revoked: {_revoked(key)}.")
    else:
        typer.echo(f"Revoked API key {key.id} ({key.name}). Requests with it now get 401.")
