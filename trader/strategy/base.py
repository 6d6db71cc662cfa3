"""The Strategy interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from trader.domain import Candle, OrderType, Product, Side


@dataclass(frozen=True)
class OrderIntent:
    """What a strategy wants; risk checks and the product's rules decide whether it is sent."""

    symbol: str
    side: Side
    quantity: Decimal
    reason: str
    order_type: OrderType = OrderType.MARKET
    limit_price: Decimal | None = None
    reduce_only: bool = False


class Strategy(ABC):
    """Decides on one symbol per cycle from closed candles and the current position."""

    name: str = "strategy"

    @property
    @abstractmethod
    def warmup(self) -> int:
        """How many candles decide() needs."""

    @abstractmethod
    def decide(self, product: Product, candles: Sequence[Candle], position: Decimal) -> list[OrderIntent]: ...

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the strategy: its name and parameters (a stateful strategy adds more)."""
        return {"name": self.name, **{k: str(v) for k, v in vars(self).items() if not k.startswith("_")}}
