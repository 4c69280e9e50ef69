"""The ``voxgate`` command."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import typer

from voxgate.settings import Settings

app = typer.Typer(
    help="voxgate: a self-hostable, OpenAI-compatible audio API.", no_args_is_help=True
)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind (VOXGATE_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (VOXGATE_PORT).")] = None,
) -> None:
    """Start the API server."""
    import uvicorn

    from voxgate.app import create_app

    overrides: dict[str, Any] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    settings = Settings(**overrides)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=10,
    )


@app.command()
def version() -> None:
    """Print the version."""
    from voxgate import __version__

    typer.echo(__version__)


def main() -> None:
    app()
