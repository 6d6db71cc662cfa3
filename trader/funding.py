"""The funding tracker: each future's funding rate and next funding time recorded in the ledger every interval, the
funding paid and received recorded as rows of their own, and the per-product summary behind `perps-bot funding`,
the daily report and the daily checklist's "funding schedule" item.

Payments come from the broker when it reports them (the paper exchange: hourly accruals and their settlements, see
trader/brokers/futures.py). Coinbase's Advanced Trade API has no funding-payment endpoint: for a live account the
tracker records an estimate at each funding time that passes, from the position it last read and the rate recorded
for that time (payment id `estimate-...`); the exchange's own figure is in the CFM balance and daily realized PnL.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from trader.brokers import futures as fx
from trader.domain import FundingPayment, FuturesAccount, Product
from trader.ledger import Ledger

log = logging.getLogger(__name__)


@dataclass
class FundingTracker:
    """Kept by a bot with derivatives on: call `track` once a cycle with the futures it trades or holds."""

    ledger: Ledger
    recorded: dict[str, tuple[Decimal, datetime]] = field(default_factory=dict)  # symbol -> last (rate, time)
    cursor: datetime | None = None  # the newest payment recorded from the broker

    def track(self, broker: Any, products: list[Product], account: FuturesAccount | None, at: datetime) -> int:
        """Record each future's rate for its next funding time (once per time) and the payments since the last
        call; returns how many payment rows were new."""
        estimates: list[FundingPayment] = []
        held = {p.symbol: p for p in account.positions} if account is not None else {}
        for product in products:
            if product.futures is None or product.funding_rate is None or product.funding_time is None:
                continue
            previous = self.recorded.get(product.symbol)
            if previous is not None and previous[1] == product.funding_time:
                continue
            self.ledger.record_funding_rate(product.symbol, product.funding_rate, product.funding_time, at)
            self.recorded[product.symbol] = (product.funding_rate, product.funding_time)
            position = held.get(product.symbol)
            if previous is not None and previous[1] <= at and position is not None:
                contracts = position.contracts if position.side == "long" else -position.contracts
                amount = fx.funding_payment(contracts, product.futures, position.current_price, previous[0])
                estimates.append(
                    FundingPayment(
                        f"estimate-{product.symbol}-{previous[1]:%Y%m%dT%H%M}",
                        product.symbol,
                        previous[1],
                        previous[0],
                        contracts,
                        position.current_price,
                        amount,
                    )
                )
        reported = getattr(broker, "funding_payments", None)
        payments = reported(self.cursor) if reported is not None else estimates
        if payments:
            self.cursor = max(p.at for p in payments)
        return self.ledger.record_funding_payments(payments)


def funding_summary(ledger: Ledger, since: datetime, until: datetime | None = None) -> list[dict[str, Any]]:
    """Per product in (since, until]: the rates recorded (count, last, average, largest |rate|), the funding accrued
    (paid and received) and settled, and the net; a TOTAL row last."""
    rates: dict[str, list[Decimal]] = {}
    for row in ledger.funding_rates_since(since):
        if until is not None and row.funding_time > until:
            continue
        rates.setdefault(row.symbol, []).append(row.rate)
    paid: dict[str, Decimal] = {}
    received: dict[str, Decimal] = {}
    settled: dict[str, Decimal] = {}
    for payment in ledger.funding_payments_since(since):
        if until is not None and payment.at > until:
            continue
        if payment.settled:
            settled[payment.symbol] = settled.get(payment.symbol, Decimal(0)) + payment.amount
        elif payment.amount < 0:
            paid[payment.symbol] = paid.get(payment.symbol, Decimal(0)) + payment.amount
        else:
            received[payment.symbol] = received.get(payment.symbol, Decimal(0)) + payment.amount
    rows: list[dict[str, Any]] = []
    for symbol in sorted(set(rates) | set(paid) | set(received) | set(settled)):
        seen = rates.get(symbol, [])
        net = paid.get(symbol, Decimal(0)) + received.get(symbol, Decimal(0))
        rows.append(
            {
                "symbol": symbol,
                "rates": len(seen),
                "last_rate": str(seen[-1]) if seen else "-",
                "average_rate": str((sum(seen, Decimal(0)) / len(seen)).quantize(Decimal("0.00000001")))
                if seen
                else "-",
                "max_abs_rate": str(max(abs(r) for r in seen)) if seen else "-",
                "paid": str(paid.get(symbol, Decimal(0)).quantize(Decimal("0.01"))),
                "received": str(received.get(symbol, Decimal(0)).quantize(Decimal("0.01"))),
                "settled": str(settled.get(symbol, Decimal(0)).quantize(Decimal("0.01"))),
                "net": str(net.quantize(Decimal("0.01"))),
            }
        )
    if rows:
        total: dict[str, Any] = {"symbol": "TOTAL", "rates": sum(int(r["rates"]) for r in rows)}
        total |= {"last_rate": "", "average_rate": "", "max_abs_rate": ""}
        total |= {
            k: str(sum((Decimal(r[k]) for r in rows), Decimal(0))) for k in ("paid", "received", "settled", "net")
        }
        rows.append(total)
    return rows
