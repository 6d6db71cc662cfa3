"""What the bot hands the metrics exporter after each cycle: plain values, no Prometheus types."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

GuardLevel = Literal["ok", "warning", "critical"]
TradingState = Literal["trading", "reduce_only", "halted"]
GUARD_LEVELS: tuple[str, ...] = ("ok", "warning", "critical")
TRADING_STATES: tuple[str, ...] = ("trading", "reduce_only", "halted")


@dataclass(frozen=True)
class CycleTelemetry:
    """One finished cycle as the operator sees it; None means "not known yet" and is left out of the metrics."""

    cycle: int
    duration_ms: float
    position_count: int
    daily_pnl_pct: float
    balance: float  # account equity in the quote currency
    error_rate_pct: float | None  # None = not enough samples yet
    order_success_pct: float | None
    market_data_age_seconds: float | None
    last_data_update: datetime | None  # newest candle's time (UTC; a naive datetime is taken as UTC)
    guard_levels: dict[str, str]  # guard name -> "ok" | "warning" | "critical"
    trading_state: str  # "trading" | "reduce_only" | "halted"
    gate_checked: int = 0  # market-data gate checks made in this cycle (added to a counter)
    gate_failed: int = 0  # of which failed in this cycle
    guard_readings: dict[str, float] = field(default_factory=dict)  # guard name -> the value its levels compare
    orders: int = 0  # orders sent since the previous telemetry (added to a counter)
    fills: int = 0  # fills recorded since the previous telemetry, between cycles too (added to a counter)
    funding_rates: dict[str, float] = field(default_factory=dict)  # perpetual-style future -> funding rate now

    def __post_init__(self) -> None:
        for guard, level in self.guard_levels.items():
            if level not in GUARD_LEVELS:
                raise ValueError(f"guard {guard!r} has level {level!r}; allowed: {', '.join(GUARD_LEVELS)}")
        if self.trading_state not in TRADING_STATES:
            raise ValueError(f"trading_state {self.trading_state!r}; allowed: {', '.join(TRADING_STATES)}")
        if self.orders < 0 or self.fills < 0:
            raise ValueError(f"orders={self.orders} and fills={self.fills} are counts (>= 0)")
        if self.gate_checked < 0 or not 0 <= self.gate_failed <= self.gate_checked:
            raise ValueError(
                f"gate_failed={self.gate_failed} must be between 0 and gate_checked={self.gate_checked} (both >= 0)"
            )
