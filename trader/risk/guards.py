"""Pre-trade risk checks with counters the daily checklist reads.

RiskManager refuses intents (kill switch, reduce-only, max position) and holds the GuardMonitor whose
critical guards force their actions here: halt refuses everything, reduce-only and reduce-exposure
refuse what adds exposure, block-new-positions refuses opening a position. A failed market-data gate
blocks new exposure for the cycle it failed in.

Counters: a refusal counts under the refusing guard's name ("kill_switch", "daily_loss", ...); a trip
counts as "<guard>_warning" or "<guard>_trip" (critical).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal

from trader.domain import Side, shrinks_position
from trader.risk.monitor import GuardEvent, GuardMonitor, GuardRule
from trader.strategy.base import OrderIntent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RiskControls:
    """The operator's switches as read at the start of a cycle."""

    kill_switch: bool
    reduce_only: bool


@dataclass(frozen=True)
class RiskDecision:
    approved: bool
    guard: str | None = None
    reason: str = ""


APPROVED = RiskDecision(True)


class RiskManager:
    """Checks every intent against the switches, the critical guards, the data gate and the max position."""

    def __init__(
        self,
        max_position_usd: Decimal,
        daily_loss_limit_pct: Decimal,
        *,
        monitor: GuardMonitor | None = None,
    ) -> None:
        self.max_position_usd = max_position_usd
        self.daily_loss_limit_pct = daily_loss_limit_pct
        self.monitor = monitor or GuardMonitor(
            {"daily_loss": GuardRule("daily_loss", "daily loss", "%", None, float(daily_loss_limit_pct), "reduce_only")}
        )
        self.counters: Counter[str] = Counter()
        self.gate_blocked = False  # the market-data gate failed this cycle

    @property
    def daily_loss_tripped(self) -> bool:
        return self.monitor.levels.get("daily_loss") == "critical"

    def observe(self, readings: dict[str, float | None]) -> list[GuardEvent]:
        """Move the guards with this cycle's readings; every trip is counted and logged."""
        events = self.monitor.evaluate(readings)
        for event in events:
            if event.level == "ok":
                log.info("%s", event.describe())
                continue
            if event.escalated:
                self.counters[f"{event.guard}_trip" if event.level == "critical" else f"{event.guard}_warning"] += 1
            log.log(logging.CRITICAL if event.level == "critical" else logging.WARNING, "%s", event.describe())
        return events

    @staticmethod
    def daily_pnl_pct(equity_now: Decimal, equity_day_start: Decimal) -> Decimal:
        """Today's PnL in percent of the equity the UTC day started with."""
        if equity_day_start <= 0:
            return Decimal(0)
        return (equity_now - equity_day_start) / equity_day_start * 100

    def update_daily_loss(self, equity_now: Decimal, equity_day_start: Decimal) -> Decimal:
        """Return today's PnL in percent and move the daily-loss guard (critical forces reduce-only)."""
        pnl_pct = self.daily_pnl_pct(equity_now, equity_day_start)
        self.observe({"daily_loss": float(-pnl_pct)})
        return pnl_pct

    def check(self, intent: OrderIntent, position: Decimal, price: Decimal, controls: RiskControls) -> RiskDecision:
        """Approve or refuse one intent; refusals are counted by guard name."""
        decision = self._decide(intent, position, price, controls)
        if not decision.approved and decision.guard:
            self.counters[decision.guard] += 1
            log.warning(
                "guard %s refused %s %s %s: %s",
                decision.guard,
                intent.side,
                intent.quantity,
                intent.symbol,
                decision.reason,
            )
        return decision

    def _decide(self, intent: OrderIntent, position: Decimal, price: Decimal, controls: RiskControls) -> RiskDecision:
        if controls.kill_switch:
            return RiskDecision(False, "kill_switch", "kill switch is on: no new orders")
        forced = self.monitor.forced()
        for guard, action in forced.items():
            if action == "halt":
                return RiskDecision(False, guard, f"guard {guard} is critical: trading halted")
        reduces = shrinks_position(intent.side, intent.quantity, position)
        if controls.reduce_only and not reduces:
            return RiskDecision(False, "reduce_only", "reduce-only mode: only orders that shrink a position")
        for guard, action in forced.items():
            if action in ("reduce_only", "reduce_exposure") and not reduces:
                rule = self.monitor.rules[guard]
                return RiskDecision(False, guard, f"guard {guard} is critical ({rule.description}): reduce-only")
            if action == "block_new_positions" and position == 0 and intent.side is Side.BUY:
                return RiskDecision(False, guard, f"guard {guard} is critical: no new positions")
        if self.gate_blocked and not reduces:
            return RiskDecision(False, "data_gate", "market data failed its expectations this cycle: reduce-only")
        if intent.side is Side.BUY:
            exposure = (position + intent.quantity) * price
            if exposure > self.max_position_usd:
                return RiskDecision(
                    False,
                    "max_position",
                    f"{intent.symbol} exposure {exposure:.2f} would exceed "
                    f"RISK_MAX_POSITION_USD {self.max_position_usd}",
                )
        return APPROVED
