"""A Great Expectations suite on the reconciliation audit's inputs: what the broker reports before the audit
compares it with the ledger and repairs the ledger from it.

The audit takes the broker's word as truth, so a broker answer that is not plausible (a fill at a negative price,
the same trade id twice, an open order without a client id, a negative balance, a product the broker does not
list) must stop the repairs of that run instead of being written into the ledger. One DataFrame per input (open
orders, fills, balances, positions), one suite each; Decimals become floats, which is enough for signs and ranges.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trader.domain import Balance, Fill, Order, Position
from trader.quality import gx_runtime
from trader.quality.gx_runtime import Check, GateResult, Outcome

if TYPE_CHECKING:
    import pandas as pd

MAX_LINES_PER_CHECK = 5


@dataclass(frozen=True)
class InputSuite:
    """One broker input: its DataFrame's columns, the columns that name a row, and its expectations."""

    asset: str  # also the word for one row in a failure line: "fill t-1 (BTC-USD): ..."
    columns: tuple[str, ...]
    index_columns: tuple[str, ...]
    checks: tuple[Check, ...]


def _positive(column: str) -> Any:
    return lambda e: e.ExpectColumnValuesToBeBetween(column=column, min_value=0, strict_min=True)


def _non_negative(column: str) -> Any:
    return lambda e: e.ExpectColumnValuesToBeBetween(column=column, min_value=0)


def _present(column: str) -> Any:
    return lambda e: e.ExpectColumnValuesToNotBeNull(column=column)


def _unique(column: str) -> Any:
    return lambda e: e.ExpectColumnValuesToBeUnique(column=column)


def _known(column: str) -> Any:
    return lambda e: e.ExpectColumnValuesToBeInSet(column=column, value_set={"$PARAMETER": "known_symbols"})


def input_suites(with_symbols: bool) -> tuple[InputSuite, ...]:
    """The four inputs' expectations; `with_symbols` adds "the broker lists this product" on orders and fills."""
    order_symbols = (Check("order_symbol_known", "product the broker does not list", _known("symbol")),)
    fill_symbols = (Check("fill_symbol_known", "product the broker does not list", _known("symbol")),)
    return (
        InputSuite(
            "fill",
            ("trade_id", "order_id", "client_order_id", "symbol", "side", "quantity", "price", "fee"),
            ("trade_id", "symbol"),
            (
                Check("fill_trade_id_present", "fill without a trade id", _present("trade_id")),
                Check("fill_trade_id_unique", "duplicate trade id", _unique("trade_id")),
                Check("fill_client_order_id_present", "fill without a client order id", _present("client_order_id")),
                Check("fill_price_positive", "non-positive fill price", _positive("price")),
                Check("fill_quantity_positive", "non-positive fill quantity", _positive("quantity")),
                Check("fill_fee_non_negative", "negative fee", _non_negative("fee")),
                *(fill_symbols if with_symbols else ()),
            ),
        ),
        InputSuite(
            "order",
            ("order_id", "client_order_id", "symbol", "side", "status", "quantity", "filled_quantity", "limit_price"),
            ("order_id", "symbol"),
            (
                Check(
                    "order_client_order_id_present", "open order without a client order id", _present("client_order_id")
                ),
                Check("order_id_unique", "duplicate order id", _unique("order_id")),
                Check("order_quantity_positive", "non-positive order size", _positive("quantity")),
                Check(
                    "order_filled_within_size",
                    "filled more than the order's size",
                    lambda e: e.ExpectColumnPairValuesAToBeGreaterThanB(
                        column_A="quantity", column_B="filled_quantity", or_equal=True
                    ),
                ),
                Check("order_limit_price_positive", "non-positive limit price", _positive("limit_price")),
                *(order_symbols if with_symbols else ()),
            ),
        ),
        InputSuite(
            "balance",
            ("currency", "available", "hold"),
            ("currency",),
            (
                Check("balance_currency_unique", "currency listed twice", _unique("currency")),
                Check("balance_available_non_negative", "negative available balance", _non_negative("available")),
                Check("balance_hold_non_negative", "negative balance on hold", _non_negative("hold")),
            ),
        ),
        InputSuite(
            "position",
            ("symbol", "quantity", "average_entry_price"),
            ("symbol",),
            (
                Check("position_symbol_unique", "symbol listed twice", _unique("symbol")),
                Check(
                    "position_entry_price_non_negative", "negative entry price", _non_negative("average_entry_price")
                ),
            ),
        ),
    )


_lock = threading.Lock()
_suites: dict[bool, list[tuple[InputSuite, Any]]] = {}


def _built(with_symbols: bool) -> list[tuple[InputSuite, Any]]:
    """The gx suites, built once per process."""
    with _lock:
        if with_symbols not in _suites:
            _suites[with_symbols] = [
                (spec, gx_runtime.suite(f"reconciliation.{spec.asset}.{with_symbols}", spec.checks))
                for spec in input_suites(with_symbols)
            ]
        return _suites[with_symbols]


def check_reconciliation_inputs(
    orders: Sequence[Order],
    fills: Sequence[Fill],
    balances: Sequence[Balance],
    positions: Sequence[Position],
    *,
    known_symbols: Collection[str] | None = None,
) -> GateResult:
    """Validate what the broker reported (open orders, fills, balances, positions) before the audit trusts it;
    with `known_symbols`, every order and fill must be on one of them. Imports Great Expectations on first use."""
    started = time.perf_counter()
    frames = _frames(orders, fills, balances, positions)
    parameters = {"known_symbols": sorted(known_symbols or ())}
    outcomes: list[Outcome] = []
    failures: list[str] = []
    rows = 0
    for spec, suite in _built(known_symbols is not None):
        frame = frames[spec.asset]
        rows += len(frame)
        asset = f"reconciliation_{spec.asset}"
        found = gx_runtime.validate(asset, frame, suite, parameters=parameters)  # BOOLEAN_ONLY: the cheap pass
        if not all(o.success for o in found):  # again, naming the offending rows
            found = gx_runtime.validate(
                asset, frame, suite, parameters=parameters, detail=True, index_columns=spec.index_columns
            )
        outcomes += found
        problems = {c.name: c.problem for c in spec.checks}
        for outcome in found:
            if not outcome.success:
                failures += _lines(spec, problems.get(outcome.check, outcome.check), outcome)
    failed = tuple(o.check for o in outcomes if not o.success)
    return GateResult(
        passed=not failed,
        failures=tuple(failures),
        checked_rows=rows,
        duration_ms=(time.perf_counter() - started) * 1000,
        outcomes=tuple(outcomes),
        failed_checks=failed,
    )


def _frames(
    orders: Sequence[Order], fills: Sequence[Fill], balances: Sequence[Balance], positions: Sequence[Position]
) -> dict[str, pd.DataFrame]:
    import pandas as pd

    data: dict[str, list[dict[str, Any]]] = {
        "fill": [
            {
                "trade_id": f.trade_id or None,
                "order_id": f.order_id or None,
                "client_order_id": f.client_order_id or None,
                "symbol": f.symbol,
                "side": str(f.side),
                "quantity": float(f.quantity),
                "price": float(f.price),
                "fee": float(f.fee),
            }
            for f in fills
        ],
        "order": [
            {
                "order_id": o.order_id or None,
                "client_order_id": o.client_order_id or None,
                "symbol": o.symbol,
                "side": str(o.side),
                "status": str(o.status),
                "quantity": float(o.quantity),
                "filled_quantity": float(o.filled_quantity),
                "limit_price": float(o.limit_price) if o.limit_price is not None else None,
            }
            for o in orders
        ],
        "balance": [{"currency": b.currency, "available": float(b.available), "hold": float(b.hold)} for b in balances],
        "position": [
            {"symbol": p.symbol, "quantity": float(p.quantity), "average_entry_price": float(p.average_entry_price)}
            for p in positions
        ],
    }
    columns = {spec.asset: spec.columns for spec in input_suites(False)}
    frames = {}
    for asset, records in data.items():
        frame = pd.DataFrame.from_records(records, columns=list(columns[asset]))
        if asset == "order":  # an order list of market orders only would leave limit_price as object dtype
            frame["limit_price"] = frame["limit_price"].astype(float)
        frames[asset] = frame
    return frames


def _lines(spec: InputSuite, problem: str, outcome: Outcome) -> list[str]:
    """One line per offending row (the first few): "fill t-2 (BTC-USD): duplicate trade id (trade_id=t-1)"."""
    if outcome.error is not None:
        return [f"{spec.asset}s: {problem}: the expectation could not run: {outcome.error}"]
    if not outcome.unexpected_rows:
        return [f"{spec.asset}s: {problem} ({outcome.unexpected_count} rows)"]
    lines = [_line(spec, problem, row) for row in outcome.unexpected_rows[:MAX_LINES_PER_CHECK]]
    if len(outcome.unexpected_rows) > MAX_LINES_PER_CHECK:
        lines.append(f"{spec.asset}s: {problem} in {len(outcome.unexpected_rows) - MAX_LINES_PER_CHECK} more rows")
    return lines


def _line(spec: InputSuite, problem: str, row: Mapping[str, Any]) -> str:
    name, *rest = spec.index_columns
    label = f"{spec.asset} {_value(row.get(name))}"
    if rest:
        label += " (" + ", ".join(_value(row.get(c)) for c in rest) + ")"
    values = ", ".join(f"{k}={_value(v)}" for k, v in row.items() if k not in spec.index_columns)
    return f"{label}: {problem}" + (f" ({values})" if values else "")


def _value(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):  # NaN: a missing value
        return "missing"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
