"""The paper exchange's saved account (trader/brokers/simulated.py): writing it, reading it back, and the JSON of its
orders, requests and fills.

With state_path, the paper account is written (temp file, fsync, os.replace) after every call that changed it,
including the first use of a new account; validate() and product look-ups never write. A call that only moved the
market clock (a new bar, no order, fill, hold or balance changed: most of a bot's cycles) writes just the clock, to a
small file beside it (<state>.clock.json), without fsync: a killed process loses nothing (the page cache keeps it),
and a power cut can at worst bring back the clock of the last account write, so the replay shows again the bars
since then (never an order or fill). The clock file names the account write it follows ("saves") and counts only for
that one. Reopening a saved account seeks the market to the saved cursor and steps one bar, so consecutive CLI runs
trade consecutive bars and never see the same bar twice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import fields
from datetime import datetime
from decimal import Decimal, InvalidOperation
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from trader.brokers.paper_futures import FuturesBook
from trader.domain import Fill, Liquidity, Order, OrderRequest, OrderStatus, OrderType, Side, TimeInForce
from trader.errors import ConfigError
from trader.fsio import atomic_write
from trader.market.source import MarketDataSource

log = logging.getLogger(__name__)
STATE_VERSION = 1


class PaperAccountFile:
    """The persistence section of SimulatedExchange, which keeps every attribute named here."""

    market: MarketDataSource
    state_path: Path | None
    read_only: bool
    _dirty: bool
    _clock_dirty: bool
    _saves: int
    _totals: dict[str, Decimal]
    _held: dict[str, Decimal]
    _holds: dict[str, tuple[str, Decimal]]
    _orders: dict[str, Order]
    _requests: dict[str, OrderRequest]
    _by_client: dict[str, str]
    _open: dict[str, Order]
    _triggered: set[str]
    _fills: list[Fill]
    _saved_entries: dict[str, dict[str, Any]]
    _positions: dict[str, tuple[Decimal, Decimal]]
    _edit_previews: dict[str, tuple[str, Decimal, Decimal]]
    _order_seq: int
    _trade_seq: int
    _matched_cursor: int
    _book: FuturesBook

    def _hold(self, order_id: str, currency: str, amount: Decimal) -> None:
        self._holds[order_id] = (currency, amount)
        self._held[currency] = self._held.get(currency, Decimal(0)) + amount

    @property
    def clock_path(self) -> Path | None:
        """The market clock's file beside the account's (see the module docstring)."""
        return None if self.state_path is None else self.state_path.with_suffix(".clock.json")

    def _persist(self) -> None:
        if self.state_path is None or self.read_only:
            return
        if self._dirty:
            self._saves += 1
            atomic_write(self.state_path, json.dumps(self._state(), separators=(",", ":")))
            self._dirty = self._clock_dirty = False
        elif self._clock_dirty:
            assert self.clock_path is not None
            atomic_write(self.clock_path, json.dumps(self._clock(), separators=(",", ":")), durable=False)
            self._clock_dirty = False

    def _clock(self) -> dict[str, Any]:
        return {
            "saves": self._saves,
            "market_cursor": self.market.cursor,
            "matched_cursor": self._matched_cursor,
            "broker_time": self.market.now().isoformat(),
        }

    def _state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            **self._clock(),
            "order_seq": self._order_seq,
            "trade_seq": self._trade_seq,
            "balances": {c: str(v) for c, v in self._totals.items()},
            "orders": [self._order_entry(order_id, order) for order_id, order in self._orders.items()],
            "fills": [self._fill_entry(fill) for fill in self._fills],
            "positions": {
                s: {"quantity": str(q), "average_entry_price": str(a)} for s, (q, a) in self._positions.items()
            },
            "edit_previews": {
                p: {"order_id": o, "quantity": str(q), "limit_price": str(lp)}
                for p, (o, q, lp) in self._edit_previews.items()
            },
            "futures": self._book.state(),
        }

    def _order_entry(self, order_id: str, order: Order) -> dict[str, Any]:
        entry = self._saved_entries.get(order_id)
        if entry is None:
            hold = self._holds.get(order_id)
            entry = {
                "order": _encode(order),
                "request": _encode(self._requests[order_id]),
                "open": order_id in self._open,
                "triggered": order_id in self._triggered,
                "hold": [hold[0], str(hold[1])] if hold is not None else None,
            }
            if order_id not in self._open:  # closed (filled, cancelled, expired): final
                self._saved_entries[order_id] = entry
        return entry

    def _fill_entry(self, fill: Fill) -> dict[str, Any]:
        entry = self._saved_entries.get(fill.trade_id)
        if entry is None:
            entry = self._saved_entries[fill.trade_id] = _encode(fill)
        return entry

    def _load(self, path: Path) -> None:
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            if state.get("version") != STATE_VERSION:
                raise ValueError(f"version {state.get('version')} is not {STATE_VERSION}")
            self._totals = {c: Decimal(v) for c, v in state["balances"].items()}
            self._order_seq = int(state["order_seq"])
            self._trade_seq = int(state["trade_seq"])
            for entry in state["orders"]:
                order = _decode(Order, entry["order"])
                self._orders[order.order_id] = order
                self._requests[order.order_id] = _decode(OrderRequest, entry["request"])
                self._by_client[order.client_order_id] = order.order_id
                if entry["open"]:
                    self._open[order.order_id] = order
                if entry["triggered"]:
                    self._triggered.add(order.order_id)
                if entry["hold"] is not None:
                    self._hold(order.order_id, entry["hold"][0], Decimal(entry["hold"][1]))
            self._fills = [_decode(Fill, f) for f in state["fills"]]
            self._positions = {
                s: (Decimal(p["quantity"]), Decimal(p["average_entry_price"])) for s, p in state["positions"].items()
            }
            self._edit_previews = {
                p: (e["order_id"], Decimal(e["quantity"]), Decimal(e["limit_price"]))
                for p, e in state["edit_previews"].items()
            }
            self._book = FuturesBook.from_state(state.get("futures") or {})
            market_cursor = int(state["market_cursor"])
            matched_cursor = int(state["matched_cursor"])
            self._saves = int(state.get("saves", 0))
        except (OSError, ValueError, KeyError, TypeError, InvalidOperation) as error:
            raise ConfigError(
                f"paper exchange state {path} is unreadable ({error}); move it away to start a new paper account"
            ) from None
        clock = self._saved_clock()
        if clock is not None:
            market_cursor, matched_cursor = clock
        try:
            self.market.seek(market_cursor)
        except ConfigError as error:
            raise ConfigError(
                f"paper exchange state {path}: {error}; the market data changed since it was saved"
            ) from None
        self._matched_cursor = matched_cursor

    def _saved_clock(self) -> tuple[int, int] | None:
        """The clock file's market and matched cursors when it follows the account write just loaded; None when
        there is none, it follows an earlier write, or a power cut left it unreadable (the account's own clock
        stands: the replay shows the bars since that write again)."""
        assert self.clock_path is not None
        try:
            clock = json.loads(self.clock_path.read_text(encoding="utf-8"))
            if int(clock["saves"]) != self._saves:
                return None
            return int(clock["market_cursor"]), int(clock["matched_cursor"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning(
                "paper exchange clock %s unreadable (%s): the account's own clock stands", self.clock_path, error
            )
            return None


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


_Record = TypeVar("_Record", Order, OrderRequest, Fill)

_DECODERS: dict[str, Callable[[Any], Any]] = {
    **dict.fromkeys(
        (
            "quantity",
            "filled_quantity",
            "fees",
            "fee",
            "price",
            "limit_price",
            "stop_price",
            "average_fill_price",
            "leverage",
            "contract_size",
        ),
        Decimal,
    ),
    **dict.fromkeys(("created_at", "expire_at", "updated_at", "filled_at"), _parse_time),
    "side": Side,
    "order_type": OrderType,
    "status": OrderStatus,
    "time_in_force": TimeInForce,
    "liquidity": Liquidity,
}


def _encode(record: Order | OrderRequest | Fill) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(record):
        value = getattr(record, f.name)
        if isinstance(value, Enum):
            value = value.value
        elif isinstance(value, Decimal):
            value = str(value)
        elif isinstance(value, datetime):
            value = value.isoformat()
        out[f.name] = value
    return out


def _decode(cls: type[_Record], data: dict[str, Any]) -> _Record:
    values: dict[str, Any] = {k: v if v is None else _DECODERS.get(k, _same)(v) for k, v in data.items()}
    return cls(**values)


def _same(value: Any) -> Any:
    return value
