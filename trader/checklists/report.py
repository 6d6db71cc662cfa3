"""The end-of-day report, and the trade arithmetic the weekly, monthly and quarterly checklists share.

Realized PnL per trade comes from replaying every fill of the ledger with the ledger's own average-cost
accounting (adding re-weights the entry price, reducing realizes PnL): the positions table only holds the
running total, a window's PnL needs the trades. Money is Decimal while replaying and float in the pandas
frames the reports aggregate (display only).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trader.funding import funding_summary
from trader.ledger import FillRecord, Ledger

if TYPE_CHECKING:
    import pandas as pd

TRADE_COLUMNS = ["symbol", "side", "qty", "price", "fee", "notional", "gross", "net", "closing", "filled_at"]


# --- trades and equity --------------------------------------------------------------------------------------------


def replay_trades(fills: Iterable[FillRecord]) -> pd.DataFrame:
    """One row per fill with the PnL it realized: gross (before fees), net (after its fee), closing (it reduced)."""
    import pandas as pd  # lazily: the flows' processes should not pay pandas' import before it is needed

    held: dict[str, tuple[Decimal, Decimal]] = {}  # symbol -> (signed quantity, average entry price)
    rows: list[dict[str, Any]] = []
    for fill in sorted(fills, key=lambda f: (f.filled_at, f.id or 0)):
        quantity, entry = held.get(fill.symbol, (Decimal(0), Decimal(0)))
        signed = fill.quantity if fill.side == "buy" else -fill.quantity
        gross = Decimal(0)
        closing = bool(quantity) and (quantity > 0) != (signed > 0)
        if not closing:
            total = abs(quantity) * entry + fill.quantity * fill.price
            entry = total / abs(quantity + signed) if quantity + signed else Decimal(0)
        else:
            closed = min(abs(quantity), fill.quantity)
            gross = (fill.price - entry) * closed * (1 if quantity > 0 else -1) * fill.contract_size
            if abs(signed) > abs(quantity):  # crossed through zero: the remainder opens at the fill price
                entry = fill.price
        quantity += signed
        held[fill.symbol] = (quantity, entry if quantity else Decimal(0))
        rows.append(
            {
                "symbol": fill.symbol,
                "side": fill.side,
                "qty": float(fill.quantity),
                "price": float(fill.price),
                "fee": float(fill.fee),
                "notional": float(fill.quantity * fill.price * fill.contract_size),
                "gross": float(gross),
                "net": float(gross - fill.fee),
                "closing": closing,
                "filled_at": fill.filled_at,
            }
        )
    return pd.DataFrame(rows, columns=TRADE_COLUMNS)


def trades_between(ledger: Ledger, start: datetime, end: datetime) -> pd.DataFrame:
    """The trades executed in [start, end), their PnL computed from the whole fill history."""
    trades = replay_trades(ledger.list_fills())
    return trades[(trades["filled_at"] >= start) & (trades["filled_at"] < end)].reset_index(drop=True)


def equity_series(ledger: Ledger, start: datetime, end: datetime) -> pd.Series:
    """Total quote value of each balance snapshot taken in [start, end), indexed by when it was taken."""
    import pandas as pd

    rows = ledger.balance_snapshots_between(start, end)
    frame = pd.DataFrame(
        [{"snapshot": r.snapshot_id, "taken_at": r.taken_at, "value": float(r.value_quote)} for r in rows],
        columns=["snapshot", "taken_at", "value"],
    )
    if frame.empty:
        return pd.Series(dtype=float, name="equity")
    series = frame.groupby("snapshot").agg(taken_at=("taken_at", "min"), value=("value", "sum"))
    return series.set_index("taken_at")["value"].sort_index().rename("equity")


def max_drawdown(equity: pd.Series) -> float:
    """The largest fall from a running peak, as a fraction of that peak (0.0 when it never fell)."""
    if equity.empty:
        return 0.0
    peak = equity.cummax()
    drawdown = (peak - equity) / peak.where(peak > 0)
    return float(drawdown.fillna(0).max())


def per_symbol(trades: pd.DataFrame) -> pd.DataFrame:
    """Per symbol: fills, notional, fees, gross and net realized PnL, closing trades, wins (closing trades that beat
    their own fee), win rate, average trade (net per closing trade)."""
    import pandas as pd

    columns = ["fills", "notional", "fees", "gross", "net", "trades", "wins", "win_rate", "avg_trade"]
    if trades.empty:
        return pd.DataFrame(columns=columns).rename_axis("symbol")
    closes = trades[trades["closing"]]
    table = trades.groupby("symbol").agg(
        fills=("qty", "size"), notional=("notional", "sum"), fees=("fee", "sum"), gross=("gross", "sum")
    )
    table["net"] = table["gross"] - table["fees"]
    table["trades"] = closes.groupby("symbol").size().reindex(table.index, fill_value=0)
    table["wins"] = closes[closes["net"] > 0].groupby("symbol").size().reindex(table.index, fill_value=0)
    table["win_rate"] = (table["wins"] / table["trades"].where(table["trades"] > 0)).fillna(0.0)
    # expectancy: the window's net (every fee, opening ones too) per closing trade
    table["avg_trade"] = (table["net"] / table["trades"].where(table["trades"] > 0)).fillna(0.0)
    return table[columns]


def records(frame: pd.DataFrame, digits: int = 2) -> list[dict[str, Any]]:
    """A frame (index included) as JSON-friendly rows for a table artifact, floats rounded."""
    out: list[dict[str, Any]] = []
    for row in frame.reset_index().to_dict(orient="records"):
        out.append(
            {
                str(k): round(v, digits) if isinstance(v, float) else v.item() if hasattr(v, "item") else v
                for k, v in row.items()
            }
        )
    return out


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Rows as a GitHub markdown table ('_none_' when empty)."""
    if not rows:
        return "_none_"
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(r.get(h, "")) for h in header) + " |" for r in rows]
    return "\n".join(lines)


def read_guard_counters(heartbeat_file: Path) -> dict[str, int] | None:
    """The bot's risk guard counters from its heartbeat file; None when the bot has not run here."""
    if not heartbeat_file.exists():
        return None
    counters = json.loads(heartbeat_file.read_text()).get("guard_counters", {})
    return {str(k): int(v) for k, v in counters.items()}


# --- the end-of-day report ----------------------------------------------------------------------------------------


@dataclass
class DailyReport:
    """The day in numbers: fills, fees, realized PnL per symbol, positions, equity change, guard counters."""

    day: date
    fills: int
    notional: float
    fees: float
    gross_pnl: float
    net_pnl: float
    equity_start: float | None
    equity_end: float | None
    by_symbol: list[dict[str, Any]] = field(default_factory=list)
    positions: list[dict[str, Any]] = field(default_factory=list)
    guard_counters: dict[str, int] | None = None
    funding: list[dict[str, Any]] = field(default_factory=list)  # per future: rates and payments (trader/funding.py)

    @property
    def equity_change(self) -> float | None:
        if self.equity_start is None or self.equity_end is None:
            return None
        return self.equity_end - self.equity_start

    @property
    def equity_change_pct(self) -> float | None:
        change = self.equity_change
        return change / self.equity_start * 100 if change is not None and self.equity_start else None

    def summary(self) -> dict[str, Any]:
        """The flow's return value: the day's totals."""
        return {
            "day": self.day.isoformat(),
            "fills": self.fills,
            "notional": round(self.notional, 2),
            "fees": round(self.fees, 2),
            "gross_pnl": round(self.gross_pnl, 2),
            "net_pnl": round(self.net_pnl, 2),
            "equity_start": self.equity_start,
            "equity_end": self.equity_end,
            "equity_change": None if self.equity_change is None else round(self.equity_change, 2),
            "positions": len(self.positions),
            "guard_trips": sum((self.guard_counters or {}).values()),
            "funding_net": next((float(r["net"]) for r in self.funding if r["symbol"] == "TOTAL"), 0.0),
        }

    def table(self) -> list[dict[str, Any]]:
        """The per-symbol rows of the table artifact (a TOTAL row last)."""
        total = {
            "symbol": "TOTAL",
            "fills": self.fills,
            "notional": round(self.notional, 2),
            "fees": round(self.fees, 2),
            "gross": round(self.gross_pnl, 2),
            "net": round(self.net_pnl, 2),
        }
        return [{k: r[k] for k in total} for r in self.by_symbol] + [total]

    def markdown(self, profile: str) -> str:
        change = self.equity_change
        equity = (
            f"{self.equity_start:,.2f} → {self.equity_end:,.2f} ({change:+,.2f}, {self.equity_change_pct or 0:+.2f}%)"
            if change is not None and self.equity_start is not None and self.equity_end is not None
            else "no balance snapshots on this day"
        )
        counters = self.guard_counters
        guards = (
            "no heartbeat file: counters unknown"
            if counters is None
            else ", ".join(f"{k}={v}" for k, v in sorted(counters.items()) if v) or "no guard trips"
        )
        return "\n".join(
            [
                f"# Daily report {self.day.isoformat()}",
                "",
                f"Profile `{profile}`: {self.fills} fills, notional {self.notional:,.2f}, fees {self.fees:,.2f}, "
                f"realized PnL {self.gross_pnl:+,.2f} gross / {self.net_pnl:+,.2f} net of fees.",
                "",
                f"**Equity:** {equity}",
                "",
                f"**Risk guard counters (since the bot started):** {guards}",
                "",
                "## Realized PnL per symbol",
                "",
                markdown_table(self.table()),
                "",
                "## Positions at report time",
                "",
                markdown_table(self.positions),
                "",
                "## Funding (futures)",
                "",
                markdown_table(self.funding) if self.funding else "no funding rates or payments on this day",
            ]
        )


def daily_report(ledger: Ledger, day: date, heartbeat_file: Path) -> DailyReport:
    """The report of one UTC day from the ledger (fills, snapshots, positions) and the bot's heartbeat file."""
    start = datetime.combine(day, time.min, tzinfo=UTC)
    end = start + timedelta(days=1)
    trades = trades_between(ledger, start, end)
    table = per_symbol(trades)
    equity = equity_series(ledger, start, end)
    positions = [
        {
            "symbol": p.symbol,
            "quantity": str(p.quantity),
            "entry": str(p.average_entry_price),
            "realized_total": str(ledger.realized_pnl(p.symbol)),
        }
        for p in sorted(ledger.positions().values(), key=lambda p: p.symbol)
    ]
    return DailyReport(
        day=day,
        fills=len(trades),
        notional=float(trades["notional"].sum()),
        fees=float(trades["fee"].sum()),
        gross_pnl=float(trades["gross"].sum()),
        net_pnl=float(trades["gross"].sum() - trades["fee"].sum()),
        equity_start=None if equity.empty else round(float(equity.iloc[0]), 2),
        equity_end=None if equity.empty else round(float(equity.iloc[-1]), 2),
        by_symbol=records(table),
        positions=positions,
        guard_counters=read_guard_counters(heartbeat_file),
        funding=funding_summary(ledger, start, end),
    )
