"""A finished trading session as the trading-bot flow's artifact shows it."""

from __future__ import annotations

from collections.abc import Mapping


def session_markdown(result: Mapping[str, object]) -> str:
    """The session's totals as a field/value table."""
    return "\n".join(
        ["# trading-bot session", "", "| field | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in result.items()]
    )
