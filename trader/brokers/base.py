"""The Broker interface every exchange adapter implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import datetime
from decimal import Decimal

from trader.domain import (
    AccountSnapshot,
    Balance,
    Candle,
    Fill,
    Order,
    OrderPreview,
    OrderRequest,
    Position,
    Product,
)


class Broker(ABC):
    """An exchange seen by the bot. Every method may raise trader.errors exceptions."""

    name: str = "broker"

    @abstractmethod
    def get_product(self, symbol: str) -> Product:
        """The product's rules; raises UnknownSymbol."""

    def fresh_product(self, symbol: str) -> Product:
        """The product as the exchange has it now (a future's funding rate and time change every interval);
        brokers that cache products read it again."""
        return self.get_product(symbol)

    @abstractmethod
    def list_products(self) -> list[Product]: ...

    @abstractmethod
    def best_bid_ask(self, symbol: str) -> tuple[Decimal, Decimal]: ...

    @abstractmethod
    def candles(self, symbol: str, limit: int) -> list[Candle]:
        """The latest `limit` closed candles, oldest first."""

    def restart_market_data(self) -> None:
        """Reconnect the market-data feed (the feed guard's critical action); a no-op where nothing reconnects."""
        return None

    @abstractmethod
    def now(self) -> datetime:
        """The broker's clock (the replay time for the simulated exchange)."""

    @abstractmethod
    def validate(self, request: OrderRequest) -> None:
        """Raise OrderRejected naming the product rule the request breaks; sends nothing."""

    @abstractmethod
    def preview_order(self, request: OrderRequest) -> OrderPreview: ...

    @abstractmethod
    def place_order(self, request: OrderRequest) -> Order:
        """Submit; idempotent on client_order_id (a repeat returns the existing order)."""

    @abstractmethod
    def preview_edit(self, order_id: str, quantity: Decimal, limit_price: Decimal) -> OrderPreview: ...

    @abstractmethod
    def apply_edit(self, order_id: str, preview_id: str) -> Order: ...

    @abstractmethod
    def cancel_orders(self, order_ids: list[str]) -> dict[str, bool]: ...

    @abstractmethod
    def get_order(self, order_id: str) -> Order: ...

    @abstractmethod
    def find_order(self, client_order_id: str) -> Order | None:
        """Look an order up by client_order_id (used before any retry of a create)."""

    @abstractmethod
    def list_open_orders(self, symbol: str | None = None) -> list[Order]: ...

    @abstractmethod
    def list_fills(self, since: datetime | None = None) -> list[Fill]: ...

    @abstractmethod
    def balances(self) -> list[Balance]: ...

    @abstractmethod
    def positions(self) -> list[Position]: ...

    @abstractmethod
    def account_snapshot(self) -> AccountSnapshot: ...

    def advance(self) -> bool:
        """Step market data one bar (replay); live brokers have nothing to step. False when exhausted."""
        return True
