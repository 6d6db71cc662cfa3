"""The runbooks' alert thresholds as guards with warning and critical levels, each with its forced action.

Sources: operations runbook "Alert Thresholds" (daily loss, error rate, WebSocket down, position count)
and "Exchange/API Degradation" (market_data_staleness -> reduce-only); perpetuals runbook "Key Metrics"
(API latency, order success rate, position size against the limit); AI-bot runbook (drawdown > 15% high).
Every threshold is a RISK_* setting with the runbook's value as its default.

A guard's level moves every cycle with its reading. Entering warning or critical is a trip: counted,
logged, an incident opened; critical forces the guard's action until the reading is back below the
critical threshold. Going back to ok resolves the incident.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from trader.domain import Candle
from trader.settings import Settings

Level = Literal["ok", "warning", "critical"]
Action = Literal["alert", "reduce_only", "halt", "restart_feed", "block_new_positions", "reduce_exposure"]
LEVEL_RANK: dict[Level, int] = {"ok": 0, "warning": 1, "critical": 2}

# What a critical guard does to trading; "alert" only tells the operator.
ACTION_TEXT: dict[Action, str] = {
    "alert": "alert only",
    "reduce_only": "reduce-only: no new exposure",
    "halt": "trading halted: no new orders",
    "restart_feed": "market-data feed restarted",
    "block_new_positions": "no new positions opened",
    "reduce_exposure": "reduce-only and exposure sold down to the warning level",
}


@dataclass(frozen=True)
class GuardRule:
    """One row of the runbooks' threshold tables."""

    name: str
    description: str
    unit: str
    warning: float | None
    critical: float | None  # None: an informational guard that only ever warns (no trades in 24 h)
    action: Action
    below_is_worse: bool = False  # order success rate: lower is worse
    page: bool = False  # critical is SEV-1 whatever the exposure (runaway trading, a massive drawdown)

    def level(self, value: float) -> Level:
        """The level this reading puts the guard at."""

        def beyond(threshold: float) -> bool:
            return value <= threshold if self.below_is_worse else value >= threshold

        if self.critical is not None and beyond(self.critical):
            return "critical"
        if self.warning is not None and beyond(self.warning):
            return "warning"
        return "ok"

    def threshold(self, level: Level) -> float | None:
        return self.critical if level == "critical" else self.warning if level == "warning" else None


def rules_from_settings(settings: Settings) -> dict[str, GuardRule]:
    """Every guard with its thresholds from the settings (the runbooks' values by default)."""
    s = settings
    rules = [
        GuardRule(
            "daily_loss",
            "daily loss since the UTC day started",
            "%",
            float(s.risk_daily_loss_warn_pct),
            float(s.risk_daily_loss_limit_pct),
            "reduce_only",
        ),
        GuardRule(
            "error_rate", "failed exchange calls", "%", s.risk_error_rate_warn_pct, s.risk_error_rate_halt_pct, "halt"
        ),
        GuardRule(
            "market_data_staleness",
            "age of the newest candle",
            "s",
            None,
            s.risk_max_data_age_seconds,
            "reduce_only",
        ),
        GuardRule(
            "market_data_feed",
            "market-data feed down for",
            "s",
            s.risk_feed_down_warn_seconds,
            s.risk_feed_down_critical_seconds,
            "restart_feed",
        ),
        GuardRule(
            "websocket_disconnects",
            "WebSocket disconnects in the last hour",
            "",
            s.risk_ws_disconnects_warn,
            s.risk_ws_disconnects_critical,
            "alert",
        ),
        GuardRule(
            "position_count",
            "open positions",
            "",
            s.risk_position_count_warn,
            s.risk_position_count_critical,
            "block_new_positions",
        ),
        GuardRule(
            "exposure",
            "largest position against RISK_MAX_POSITION_USD",
            "%",
            s.risk_exposure_warn_pct,
            s.risk_exposure_critical_pct,
            "reduce_exposure",
        ),
        GuardRule(
            "drawdown",
            "drawdown from peak equity",
            "%",
            s.risk_drawdown_warn_pct,
            s.risk_drawdown_critical_pct,
            "reduce_only",
        ),
        GuardRule(
            "volatility",
            "1-bar return standard deviation",
            "%",
            s.risk_volatility_warn_pct,
            s.risk_volatility_critical_pct,
            "reduce_only",
        ),
        GuardRule(
            "api_latency",
            "exchange call latency p95",
            "ms",
            s.risk_latency_p95_warn_ms,
            s.risk_latency_p95_critical_ms,
            "reduce_only",
        ),
        GuardRule(
            "orders_per_minute",
            "orders sent in the last minute (runaway trading)",
            "",
            s.risk_orders_per_minute_warn,
            s.risk_orders_per_minute_critical,
            "halt",
            page=True,
        ),
        GuardRule(
            "orders_per_hour",
            "orders sent in the last hour (runaway trading)",
            "",
            s.risk_orders_per_hour_warn,
            s.risk_orders_per_hour_critical,
            "halt",
            page=True,
        ),
        GuardRule(
            "drawdown_1h",
            "drawdown from the highest equity of the last hour",
            "%",
            s.risk_drawdown_1h_warn_pct,
            s.risk_drawdown_1h_critical_pct,
            "halt",
            page=True,
        ),
        GuardRule(
            "no_trades",
            "hours since the last fill (or since the session started)",
            "h",
            s.risk_no_trades_hours,
            None,
            "alert",
        ),
        GuardRule(
            "funding_rate",
            "largest funding rate (absolute) of the futures held or traded",
            "",
            s.risk_funding_rate_abs,
            None,
            "alert",
        ),
        GuardRule(
            "liquidation_buffer",
            "futures liquidation buffer",
            "%",
            s.risk_liquidation_buffer_warn_pct,
            s.risk_liquidation_buffer_critical_pct,
            "reduce_only",
            below_is_worse=True,
        ),
        GuardRule(
            "order_success",
            "orders accepted by the exchange",
            "%",
            s.risk_order_success_warn_pct,
            s.risk_order_success_critical_pct,
            "reduce_only",
            below_is_worse=True,
        ),
    ]
    return {rule.name: rule for rule in rules}


@dataclass(frozen=True)
class GuardEvent:
    """A guard changed level this cycle."""

    guard: str
    previous: Level
    level: Level
    value: float
    rule: GuardRule

    @property
    def escalated(self) -> bool:
        return LEVEL_RANK[self.level] > LEVEL_RANK[self.previous]

    def describe(self) -> str:
        """One line for the log and the incident: the reading, the threshold crossed, the action."""
        rule = self.rule
        reading = f"{rule.description} {self.value:.2f}{rule.unit}"
        if self.level == "ok":
            return f"guard {self.guard} cleared: {reading}"
        threshold = rule.threshold(self.level)
        comparison = "<=" if rule.below_is_worse else ">="
        action = ACTION_TEXT[rule.action] if self.level == "critical" else "warning: alert only"
        return f"guard {self.guard} {self.level}: {reading} {comparison} {threshold:g}{rule.unit}: {action}"


@dataclass
class GuardMonitor:
    """Levels of every guard, moved each cycle by evaluate(); critical guards' actions are in force()."""

    rules: dict[str, GuardRule]
    levels: dict[str, Level] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.rules:
            self.levels.setdefault(name, "ok")

    def evaluate(self, readings: Mapping[str, float | None]) -> list[GuardEvent]:
        """New readings; a None reading (not enough samples) leaves that guard where it was."""
        events = []
        for name, value in readings.items():
            rule = self.rules[name]
            if value is None or math.isnan(value):
                continue
            self.values[name] = value
            level = rule.level(value)
            previous = self.levels[name]
            if level != previous:
                self.levels[name] = level
                events.append(GuardEvent(name, previous, level, value, rule))
        return events

    def forced(self) -> dict[str, Action]:
        """guard -> action for every guard at critical."""
        return {name: self.rules[name].action for name, level in self.levels.items() if level == "critical"}

    def snapshot(self) -> dict[str, dict[str, object]]:
        """Level, last reading and action per guard (heartbeat file, health endpoint, daily checklist)."""
        return {
            name: {
                "level": self.levels[name],
                "value": round(self.values[name], 4) if name in self.values else None,
                "action": rule.action,
            }
            for name, rule in sorted(self.rules.items())
        }


def volatility_pct(candles: Sequence[Candle], bars: int = 60) -> float | None:
    """Standard deviation of the last `bars` close-to-close returns, in percent; None with fewer than 3 returns."""
    closes = [float(c.close) for c in candles[-(bars + 1) :] if c.close > 0]
    returns = [b / a - 1 for a, b in zip(closes, closes[1:], strict=False)]
    if len(returns) < 3:
        return None
    mean = sum(returns) / len(returns)
    return 100 * math.sqrt(sum((r - mean) ** 2 for r in returns) / (len(returns) - 1))


def exposure_pct(positions: Mapping[str, Decimal], prices: Mapping[str, Decimal], limit_usd: Decimal) -> float:
    """The largest position's value as a percentage of RISK_MAX_POSITION_USD."""
    values = [abs(q) * prices.get(s, Decimal(0)) for s, q in positions.items()]
    return float(max(values, default=Decimal(0)) / limit_usd * 100)


def open_positions(positions: Iterable[Decimal]) -> int:
    return sum(1 for q in positions if q != 0)
