"""Perpetual-style futures arithmetic in Decimal: notional, margins, unrealized PnL, the liquidation buffer, funding.

The paper exchange's futures (trader/brokers/simulated.py) and the funding tracker use these functions only, so the
assumptions below hold in one place (Coinbase's US perpetual-style futures work this way; the numbers are ours):

- a position is `contracts` (negative: short) of `contract_size` of the underlying each;
  notional = |contracts| x contract_size x mark price.
- initial margin = notional x max(1 / leverage, initial_margin_rate), 1x when no leverage is given: leverage can
  only lower the margin to the product's own rate (its max leverage);
  maintenance margin = notional x maintenance_margin_rate.
- equity = collateral (the account's USD) + unrealized PnL + funding accrued and not yet settled;
  liquidation buffer = equity - maintenance margin (USD), and as a percentage of equity. At a buffer of zero or
  less, every futures position is closed at the mark price (liquidation).
- funding: at every funding instant (each hour, on the hour: FUNDING_INTERVAL) the position held then pays
  signed notional x rate: a long pays a positive rate and a short receives it (payment = -signed notional x rate,
  positive is money received). Payments accrue hourly and settle into collateral twice a day at SETTLEMENT_HOURS
  (UTC). Change the schedule here.
- the paper funding rate for an hour = clamp(premium / 24, +-FUNDING_RATE_CAP), premium = (mark - index) / index,
  with the underlying spot product's price as the index, fixed when the hour begins and applied when it ends (so
  the rate a product shows during the hour is the one its funding instant charges).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from trader.domain import FuturesTerms

FUNDING_INTERVAL = timedelta(hours=1)  # funding accrues each hour, on the hour
SETTLEMENT_HOURS = (0, 12)  # UTC hours at which accrued funding settles into collateral (twice a day)
FUNDING_RATE_CAP = Decimal("0.005")  # per hour
PREMIUM_PERIODS = 24  # premium / 24: an hourly share of a day's premium
MONEY_STEP = Decimal("0.00000001")  # funding amounts are kept to 1e-8 USD
ZERO = Decimal(0)
ONE = Decimal(1)
HUNDRED = Decimal(100)


def notional(contracts: Decimal, terms: FuturesTerms, price: Decimal) -> Decimal:
    return abs(contracts) * terms.contract_size * price


def initial_margin(contracts: Decimal, terms: FuturesTerms, price: Decimal, leverage: Decimal | None) -> Decimal:
    """Margin to open or hold `contracts` at `price`: notional / leverage (none given: 1x), never below the
    product's own rate."""
    return notional(contracts, terms, price) * max(ONE / (leverage or ONE), terms.initial_margin_rate)


def maintenance_margin(contracts: Decimal, terms: FuturesTerms, price: Decimal) -> Decimal:
    return notional(contracts, terms, price) * terms.maintenance_margin_rate


def unrealized_pnl(contracts: Decimal, terms: FuturesTerms, entry: Decimal, mark: Decimal) -> Decimal:
    """(mark - entry) x signed contracts x contract size: a long gains as the price rises, a short as it falls."""
    return (mark - entry) * contracts * terms.contract_size


def realized_pnl(
    held: Decimal, entry: Decimal, signed_quantity: Decimal, price: Decimal, terms: FuturesTerms
) -> Decimal:
    """PnL realized by a fill of `signed_quantity` contracts at `price` against a position of `held` at `entry`:
    the part of the fill that closes contracts realizes (price - entry) on them; the rest opens and realizes 0."""
    if held == 0 or (held > 0) == (signed_quantity > 0):
        return ZERO
    closed = min(abs(held), abs(signed_quantity))
    return (price - entry) * closed * terms.contract_size * (ONE if held > 0 else -ONE)


def funding_payment(contracts: Decimal, terms: FuturesTerms, mark: Decimal, rate: Decimal) -> Decimal:
    """What the position receives (positive) or pays (negative) at one funding instant, to MONEY_STEP."""
    return (-contracts * terms.contract_size * mark * rate).quantize(MONEY_STEP)


def paper_funding_rate(mark: Decimal, index: Decimal) -> Decimal:
    """The paper exchange's hourly rate: the premium of the future over its index, a day's worth spread over 24
    hours, capped (see the module docstring)."""
    if index <= 0:
        return ZERO
    rate = (mark - index) / index / PREMIUM_PERIODS
    return max(-FUNDING_RATE_CAP, min(FUNDING_RATE_CAP, rate)).quantize(Decimal("0.00000001"))


def liquidation_buffer(equity: Decimal, maintenance: Decimal) -> tuple[Decimal, Decimal]:
    """(buffer in USD, buffer as % of equity): what equity is left above the maintenance margin; 0 % when the
    equity is gone."""
    buffer = equity - maintenance
    percentage = (buffer / equity * HUNDRED).quantize(Decimal("0.01")) if equity > 0 else ZERO
    return buffer, percentage


def liquidation_price(contracts: Decimal, terms: FuturesTerms, entry: Decimal, other_equity: Decimal) -> Decimal | None:
    """The mark at which one position alone (with `other_equity` = collateral and everything else) reaches a buffer
    of zero; None for no position or one that cannot be liquidated (a long whose equity covers the whole fall)."""
    if contracts == 0:
        return None
    size = contracts * terms.contract_size
    # equity(m) = other + (m - entry) x size; maintenance(m) = |size| x m x mmr; solve equity = maintenance
    denominator = size - abs(size) * terms.maintenance_margin_rate
    price = (size * entry - other_equity) / denominator
    return price if price > 0 else None


def funding_instants(after: datetime, until: datetime) -> list[datetime]:
    """The funding instants in (after, until]: every whole hour (FUNDING_INTERVAL) between them."""
    step = FUNDING_INTERVAL
    first = after.replace(minute=0, second=0, microsecond=0) + step
    out = []
    instant = first
    while instant <= until:
        out.append(instant)
        instant += step
    return out


def is_settlement(instant: datetime) -> bool:
    """True at the instants accrued funding settles into collateral (SETTLEMENT_HOURS, on the hour, UTC)."""
    return instant.hour in SETTLEMENT_HOURS and instant.minute == 0 and instant.second == 0


def interval_start(now: datetime) -> datetime:
    """When the funding interval holding `now` began: its rate was fixed then (the hour, on the hour)."""
    return now.replace(minute=0, second=0, microsecond=0)


def next_funding_time(now: datetime) -> datetime:
    return interval_start(now) + FUNDING_INTERVAL
