"""Shared fixtures of the trader tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from trader.settings import Settings, load_settings


@pytest.fixture
def paper_settings(tmp_path: Path) -> Settings:
    """A dev-profile paper bot that trades often (2/4 crossover), heartbeating every cycle, state in tmp_path."""
    return load_settings(
        profile="dev",
        state_dir=tmp_path / "state",
        log_dir=tmp_path / "logs",
        broker="simulated",
        strategy_fast_window=2,
        strategy_slow_window=4,
        heartbeat_interval_seconds=0,
    )
