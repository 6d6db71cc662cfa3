"""The paper exchange's futures book: what futures trading adds to a paper account (each position's leverage, the
funding accrued and paid, the day's realized PnL, the liquidations so far), the account summary and margin needs
over the exchange's positions, and its part of the saved state. The arithmetic is trader/brokers/futures.py's; the
exchange (trader/brokers/simulated.py) keeps the positions, fills orders, moves USD and liquidates."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import datetime
from decimal import Decimal
from typing import Any

from trader.brokers import futures as fx
from trader.brokers.rules import fmt
from trader.domain import FundingPayment, FuturesAccount, FuturesPosition, FuturesTerms, Product

ZERO = Decimal(0)


@dataclass(frozen=True)
class Held:
    """One futures position as the exchange holds it, at its mark."""

    product: Product
    contracts: Decimal  # negative: short
    entry: Decimal
    mark: Decimal

    @property
    def terms(self) -> FuturesTerms:
        assert self.product.futures is not None
        return self.product.futures


@dataclass
class FuturesBook:
    leverage: dict[str, Decimal] = field(default_factory=dict)  # symbol -> the leverage it was last opened with
    accrued: dict[str, Decimal] = field(default_factory=dict)  # funding accrued since the last settlement
    payments: list[FundingPayment] = field(default_factory=list)  # accruals and settlements, oldest first
    funding_through: datetime | None = None  # the last funding instant applied
    liquidations: int = 0
    realized_day: str = ""  # the UTC day `realized` is for
    realized: dict[str, Decimal] = field(default_factory=dict)  # futures PnL realized that day, per symbol
    _encoded: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)  # payment_id -> its saved entry

    # --- the account ---------------------------------------------------------------------------------------------

    def account(self, cash: Decimal, held_usd: Decimal, positions: Iterable[Held], day: str) -> FuturesAccount:
        """Coinbase's CFM balance summary for these positions, with `cash` (the account's USD) as the collateral
        and `held_usd` of it reserved by resting orders."""
        today = self.realized if day == self.realized_day else {}
        rows = []
        unrealized = initial = maintenance = ZERO
        for p in positions:
            pnl = fx.unrealized_pnl(p.contracts, p.terms, p.entry, p.mark)
            unrealized += pnl
            initial += fx.initial_margin(p.contracts, p.terms, p.mark, self.leverage.get(p.product.symbol))
            maintenance += fx.maintenance_margin(p.contracts, p.terms, p.mark)
            side = "long" if p.contracts > 0 else "short"
            realized = today.get(p.product.symbol, ZERO)
            rows.append(FuturesPosition(p.product.symbol, side, abs(p.contracts), p.entry, p.mark, pnl, realized))
        equity = cash + unrealized + sum(self.accrued.values(), ZERO)
        buffer, percentage = fx.liquidation_buffer(equity, maintenance)
        available = max(equity - initial - held_usd, ZERO)
        return FuturesAccount(
            buying_power=available,
            total_usd_balance=cash,
            unrealized_pnl=unrealized,
            daily_realized_pnl=sum(today.values(), ZERO),
            initial_margin=initial,
            available_margin=available,
            liquidation_threshold=maintenance,
            liquidation_buffer_usd=buffer,
            liquidation_buffer_pct=percentage,
            positions=rows,
        )

    def margin_in_use(self, positions: Iterable[Held]) -> Decimal:
        """The open positions' initial margin at the mark, less their unrealized PnL and accrued funding."""
        used = ZERO
        for p in positions:
            used += fx.initial_margin(p.contracts, p.terms, p.mark, self.leverage.get(p.product.symbol))
            used -= fx.unrealized_pnl(p.contracts, p.terms, p.entry, p.mark) + self.accrued.get(p.product.symbol, ZERO)
        return used

    @staticmethod
    def opening_margin(
        terms: FuturesTerms, held: Decimal, signed: Decimal, price: Decimal, leverage: Decimal | None
    ) -> tuple[Decimal, Decimal, str]:
        """(contracts opened, their initial margin, how it is made up) for an order of `signed` contracts against a
        position of `held`: the contracts it closes need none."""
        quantity = abs(signed)
        closing = min(abs(held), quantity) if held and (held > 0) != (signed > 0) else ZERO
        opening = quantity - closing
        if not opening:
            return ZERO, ZERO, f"closing {fmt(closing)} contracts: no margin needed"
        margin = fx.initial_margin(opening, terms, price, leverage)
        times = fmt(leverage or Decimal(1))
        return opening, margin, f"initial margin {fmt(margin)} for {fmt(opening)} contracts at {fmt(price)} x{times}"

    # --- fills -------------------------------------------------------------------------------------------------------

    def on_fill(
        self, symbol: str, terms: FuturesTerms, held: tuple[Decimal, Decimal], signed: Decimal, price: Decimal,
        leverage: Decimal | None, day: str,
    ) -> Decimal:  # fmt: skip
        """The PnL a fill of `signed` contracts at `price` realizes against the position `held` (contracts, entry),
        counted in the day's; an opening fill's leverage becomes the position's."""
        realized = fx.realized_pnl(held[0], held[1], signed, price, terms)
        if self.realized_day != day:
            self.realized_day, self.realized = day, {}
        self.realized[symbol] = self.realized.get(symbol, ZERO) + realized
        if leverage is not None:
            self.leverage[symbol] = leverage
        if held[0] + signed == 0:
            self.leverage.pop(symbol, None)
        return realized

    # --- funding -----------------------------------------------------------------------------------------------------

    def accrue(self, instant: datetime, held: Held, rate: Decimal) -> None:
        """The position's funding at one funding instant, at its mark then and the rate fixed for that interval."""
        amount = fx.funding_payment(held.contracts, held.terms, held.mark, rate)
        symbol = held.product.symbol
        self.accrued[symbol] = self.accrued.get(symbol, ZERO) + amount
        self.payments.append(
            FundingPayment(
                f"funding-{symbol}-{instant:%Y%m%dT%H}", symbol, instant, rate, held.contracts, held.mark, amount
            )
        )

    def settle(self, instant: datetime) -> Decimal:
        """Move what accrued into a settlement row per symbol; the total to credit to USD."""
        total = ZERO
        for symbol, amount in sorted(self.accrued.items()):
            if amount == 0:
                continue
            total += amount
            self.payments.append(
                FundingPayment(
                    f"settlement-{symbol}-{instant:%Y%m%dT%H}", symbol, instant, None, None, None, amount, settled=True
                )
            )
        self.accrued.clear()
        return total

    def payments_since(self, since: datetime | None) -> list[FundingPayment]:
        """The payments after `since`, oldest first (a bisect: the tracker calls it every cycle)."""
        if since is None:
            return list(self.payments)
        return self.payments[bisect_right(self.payments, since, key=_at) :]

    # --- saved state -------------------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "leverage": {s: str(v) for s, v in self.leverage.items()},
            "accrued": {s: str(v) for s, v in self.accrued.items()},
            "funding": [self._entry(p) for p in self.payments],
            "funding_through": self.funding_through.isoformat() if self.funding_through else None,
            "liquidations": self.liquidations,
            "realized_day": [self.realized_day, {s: str(v) for s, v in self.realized.items()}],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> FuturesBook:
        through = state.get("funding_through")
        day, realized = state.get("realized_day") or ["", {}]
        return cls(
            leverage={s: Decimal(v) for s, v in (state.get("leverage") or {}).items()},
            accrued={s: Decimal(v) for s, v in (state.get("accrued") or {}).items()},
            payments=[_payment(p) for p in state.get("funding") or []],
            funding_through=datetime.fromisoformat(through) if through else None,
            liquidations=int(state.get("liquidations") or 0),
            realized_day=str(day),
            realized={s: Decimal(v) for s, v in realized.items()},
        )

    def _entry(self, payment: FundingPayment) -> dict[str, Any]:
        """A payment's saved form, encoded once (payments never change)."""
        entry = self._encoded.get(payment.payment_id)
        if entry is None:
            entry = self._encoded[payment.payment_id] = {
                f.name: _text(getattr(payment, f.name)) for f in fields(FundingPayment)
            }
        return entry


def _at(payment: FundingPayment) -> datetime:
    return payment.at


def _text(value: object) -> object:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _payment(data: dict[str, Any]) -> FundingPayment:
    def number(key: str) -> Decimal | None:
        return None if data.get(key) is None else Decimal(data[key])

    return FundingPayment(
        payment_id=str(data["payment_id"]),
        symbol=str(data["symbol"]),
        at=datetime.fromisoformat(data["at"]),
        rate=number("rate"),
        contracts=number("contracts"),
        mark_price=number("mark_price"),
        amount=Decimal(data["amount"]),
        settled=bool(data.get("settled")),
    )
