"""``voxgate usage``: requests, audio seconds, characters and cost per key and/or model.

Reads the usage ledger directly (the server's ``VOXGATE_DATABASE_URL``, or the default SQLite
file), so it works with no server running, and sums with the same query as the usage API
(``storage/reports.py``): one bucket spanning the whole period, billable requests only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

from voxgate.cli.database import on_database
from voxgate.money import micros_to_usd
from voxgate.storage.reports import Aggregate, GroupField, ReportQuery, Reports

DEFAULT_DAYS = 30
_BY: dict[str, GroupField] = {"key": "api_key_id", "model": "model"}


@dataclass(frozen=True)
class Line:
    """One printed row: a group's totals (or the grand total, with no key or model)."""

    api_key_id: str | None
    model: str | None
    requests: int
    audio_seconds: float
    characters: int
    cost_usd: float

    @classmethod
    def of(cls, aggregates: Sequence[Aggregate], *, key: str | None, model: str | None) -> Line:
        return cls(
            api_key_id=key,
            model=model,
            requests=sum(a.num_model_requests for a in aggregates),
            audio_seconds=sum(a.input_audio_ms for a in aggregates) / 1000,
            characters=sum(a.input_characters for a in aggregates),
            cost_usd=micros_to_usd(sum(a.cost_micros for a in aggregates)),
        )


def parse_time(value: str, option: str) -> datetime:
    """ISO 8601 date or date-time; without a zone it is UTC (as the ledger is)."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"not an ISO 8601 date or time: {value!r} (e.g. 2026-08-01 or 2026-08-01T12:00Z)",
            param_hint=option,
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_by(value: str) -> list[GroupField]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names or any(name not in _BY for name in names):
        raise typer.BadParameter("use key, model or key,model", param_hint="--by")
    return list(dict.fromkeys(_BY[name] for name in names))


def usage(
    since: Annotated[
        str | None,
        typer.Option(help="Start, ISO 8601 (2026-08-01 or 2026-08-01T12:00Z; no zone = UTC)."),
    ] = None,
    days: Annotated[
        int | None,
        typer.Option(min=1, help=f"Start N days before --until (default {DEFAULT_DAYS})."),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="End, exclusive, ISO 8601. Default: now.")
    ] = None,
    key: Annotated[str | None, typer.Option(help="Only this API key id.")] = None,
    by: Annotated[str, typer.Option(help="Rows per key, model, or key,model.")] = "key",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show billable usage and cost for a period (default: the last 30 days), plus totals."""
    if since is not None and days is not None:
        raise typer.BadParameter("give --since or --days, not both", param_hint="--since")
    end = parse_time(until, "--until") if until else datetime.now(UTC).replace(microsecond=0)
    start = (
        parse_time(since, "--since")
        if since
        else end - timedelta(days=days if days is not None else DEFAULT_DAYS)
    )
    if end <= start:
        raise typer.BadParameter("the period is empty: --until must be after --since")
    group_by = parse_by(by)
    query = ReportQuery(
        start_time=int(start.timestamp()),
        end_time=int(end.timestamp()),
        bucket_width_s=int(end.timestamp()) - int(start.timestamp()),
        api_key_ids=[key] if key else [],
        group_by=group_by,
    )
    aggregates = on_database(lambda db: Reports(db).aggregate(query))
    lines = [Line.of([a], key=a.api_key_id, model=a.model) for a in aggregates]
    total = Line.of(aggregates, key=None, model=None)
    if as_json:
        typer.echo(json.dumps(_as_json(start, end, group_by, lines, total), indent=2))
    else:
        _print_table(start, end, group_by, lines, total)


def _as_json(
    start: datetime, end: datetime, group_by: list[GroupField], lines: list[Line], total: Line
) -> dict[str, Any]:
    def line(item: Line) -> dict[str, Any]:
        row: dict[str, Any] = {name: getattr(item, name) for name in group_by}
        row |= {
            "requests": item.requests,
            "audio_seconds": item.audio_seconds,
            "characters": item.characters,
            "cost_usd": item.cost_usd,
        }
        return row

    return {
        "since": start.isoformat(),
        "until": end.isoformat(),
        "group_by": group_by,
        "rows": [line(item) for item in lines],
        "total": line(total),
    }


def _cells(line: Line, group_by: list[GroupField], label: str | None = None) -> list[str]:
    names = [label or (getattr(line, name) or "(none)") for name in group_by]
    if label and len(names) > 1:
        names[1:] = [""] * (len(names) - 1)
    return [
        *names,
        f"{line.requests:,}",
        f"{line.audio_seconds:,.3f}",
        f"{line.characters:,}",
        f"${line.cost_usd:,.6f}",
    ]


def _print_table(
    start: datetime, end: datetime, group_by: list[GroupField], lines: list[Line], total: Line
) -> None:
    """A rich table when rich is there (it comes with typer), else aligned plain text."""
    title = f"voxgate usage {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC"
    headers = [
        *("API key" if name == "api_key_id" else "Model" for name in group_by),
        "Requests",
        "Audio seconds",
        "Characters",
        "Cost (USD)",
    ]
    rows = [_cells(line, group_by) for line in lines]
    totals = _cells(total, group_by, label="Total")
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(row[i]) for row in [headers, *rows, totals]) for i in range(len(headers))]
        typer.echo(title)
        for row in [headers, *rows, totals]:
            cells = [
                cell.ljust(width) if i < len(group_by) else cell.rjust(width)
                for i, (cell, width) in enumerate(zip(row, widths, strict=True))
            ]
            typer.echo("  ".join(cells))
        return
    table = Table(title=title, show_footer=True)
    for i, header in enumerate(headers):
        numeric = i >= len(group_by)
        table.add_column(header, footer=totals[i], justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*row)
    Console().print(table)
