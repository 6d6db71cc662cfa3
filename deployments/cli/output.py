"""The CLI's console and the small printers every command shares (one-line messages, procedure tables)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

out = Console(highlight=False)


def say(text: str) -> None:
    """One message, never wrapped into several lines (ids and paths stay whole)."""
    out.print(text, soft_wrap=True)


def wide() -> Console:
    """Piped output gets rich's 80 columns, which would cut ids and paths."""
    return out if out.is_terminal else Console(highlight=False, width=200)


def print_rows(title: str, rows: list[dict[str, str]]) -> None:
    """An emergency procedure's rows (step, target, id, before, result) as a table."""
    table = Table(title=title)
    for column in ("step", "target", "id", "before", "result"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["step"], row["target"], row["id"], row["before"], row["result"])
    wide().print(table)
