"""The ``voxgate`` command: ``serve``, ``migrate``, ``keys …``, ``usage``, ``version``, and the
client commands ``speak``, ``transcribe``, ``translate``, ``models``.

The key and usage commands work on the database directly, with the same settings as the server
(``VOXGATE_DATABASE_URL`` or the default SQLite file), so no server has to run. The client
commands talk HTTP to a running server (``cli/client.py``).
"""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType
from typing import Annotated, Any

import typer

from voxgate.cli import client
from voxgate.cli.database import on_database
from voxgate.cli.keys import keys_app
from voxgate.cli.usage import usage
from voxgate.logs import configure_logging
from voxgate.settings import Settings
from voxgate.storage.db import Database, redacted_url

app = typer.Typer(
    help="voxgate: a self-hostable, OpenAI-compatible audio API.", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")
app.command("usage")(usage)
for command in (client.speak, client.transcribe, client.translate, client.models):
    app.command()(command)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind (VOXGATE_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (VOXGATE_PORT).")] = None,
    shutdown_grace_s: Annotated[
        int | None,
        typer.Option(
            "--shutdown-grace-s",
            help="Seconds in-flight requests may run on after SIGTERM (VOXGATE_SHUTDOWN_GRACE_S).",
        ),
    ] = None,
) -> None:
    """Start the API server. SIGTERM or Ctrl-C drains it: see VOXGATE_SHUTDOWN_GRACE_S."""
    import uvicorn

    from voxgate.api.protocol import header_timeout_protocol
    from voxgate.app import create_app
    from voxgate.providers.config import ConfigError
    from voxgate.services.container import Services
    from voxgate.settings import serve_refusal

    overrides: dict[str, Any] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if shutdown_grace_s is not None:
        overrides["shutdown_grace_s"] = shutdown_grace_s
    settings = Settings(**overrides)
    if refusal := serve_refusal(settings):
        typer.echo(f"voxgate: refusing to start: {refusal}", err=True)
        raise typer.Exit(2)
    configure_logging(settings.log_level, settings.log_format)
    try:
        application = create_app(settings)
    except ConfigError as exc:
        typer.echo(f"voxgate: refusing to start: {exc}", err=True)
        raise typer.Exit(2) from None
    services: Services = application.state.services

    class DrainingServer(uvicorn.Server):
        """uvicorn's server, which also turns readiness to 503 the moment a stop is asked.

        After ``shutdown_delay_s`` of serving on (0: none), uvicorn stops accepting and closes
        idle connections, waits up to the grace period for in-flight requests, cancels what
        still runs (its rows settle as cancelled) and runs the lifespan shutdown.
        """

        stop_at: float | None = None  # time.monotonic() the drain begins (after the delay)
        stop_signal: int = signal.SIGTERM

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            log = logging.getLogger("voxgate")
            if not services.draining and settings.shutdown_delay_s > 0:
                services.draining = True
                self.stop_at = time.monotonic() + settings.shutdown_delay_s
                self.stop_signal = sig
                log.warning(
                    "stopping: /health/ready answers 503; serving on for %gs, then draining",
                    settings.shutdown_delay_s,
                )
                return
            if not self.should_exit:
                services.draining = True
                self.stop_at = None
                log.warning(
                    "stopping: draining in-flight requests for up to %ds",
                    settings.shutdown_grace_s,
                )
            super().handle_exit(sig, frame)

        async def on_tick(self, counter: int) -> bool:
            if self.stop_at is not None and time.monotonic() >= self.stop_at:
                self.handle_exit(self.stop_signal, None)
            return await super().on_tick(counter)

    config = uvicorn.Config(
        application,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # uvicorn's loggers go through configure_logging's handler
        access_log=False,  # voxgate.access writes one line per request instead
        timeout_graceful_shutdown=settings.shutdown_grace_s,
        http=header_timeout_protocol(settings.header_timeout_s),
    )
    DrainingServer(config).run()


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema (the server also does this when it starts)."""
    settings = Settings()

    async def nothing_more(_db: Database) -> None:
        return None

    on_database(nothing_more, settings)
    typer.echo(f"database is at the latest schema: {redacted_url(settings.database)}")


@app.command()
def version() -> None:
    """Print the version."""
    from voxgate import __version__

    typer.echo(__version__)


def main() -> None:
    app()
