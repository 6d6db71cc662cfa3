"""Pre-trade risk checks with counters the daily checklist reads."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal

from trader.domain import Side
from trader.strategy.base import OrderIntent

log = logging.getLogger("perps_bot.risk")


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
    """Checks every intent against the kill switch, reduce-only, max position and the daily loss limit."""

    def __init__(self, max_position_usd: Decimal, daily_loss_limit_pct: Decimal) -> None:
        self.max_position_usd = max_position_usd
        self.daily_loss_limit_pct = daily_loss_limit_pct
        self.counters: Counter[str] = Counter()
        self.daily_loss_tripped = False

    def update_daily_loss(self, equity_now: Decimal, equity_day_start: Decimal) -> Decimal:
        """Return today's PnL in percent and force reduce-only while it is below the limit."""
        if equity_day_start <= 0:
            return Decimal(0)
        pnl_pct = (equity_now - equity_day_start) / equity_day_start * 100
        tripped = pnl_pct <= -self.daily_loss_limit_pct
        if tripped and not self.daily_loss_tripped:
            self.counters["daily_loss_trip"] += 1
            log.warning(
                "guard daily_loss tripped: PnL %.2f%% <= -%s%%: reduce-only until the next UTC day",
                pnl_pct,
                self.daily_loss_limit_pct,
            )
        self.daily_loss_tripped = tripped
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
        reduces = intent.side is Side.SELL and 0 < intent.quantity <= position
        if controls.reduce_only and not reduces:
            return RiskDecision(False, "reduce_only", "reduce-only mode: only orders that shrink a position")
        if self.daily_loss_tripped and not reduces:
            return RiskDecision(False, "daily_loss", f"daily loss beyond -{self.daily_loss_limit_pct}%: reduce-only")
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
