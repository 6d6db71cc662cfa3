"""US futures (CFM) in the live broker's terms: a future's FuturesTerms from GET /products/{id}, the fields a futures
create or preview carries, and the signed CFM position a reduce-only order is checked against.

Invariant: every figure the order rules read comes from Coinbase's product JSON or from one documented fallback
below; nothing about a future is guessed from its symbol.

What Coinbase publishes (future_product_details, an untyped dict in the SDK's GetProductResponse) and what is ours:
- contract_size: the underlying per contract (0.01 BTC for the nano Bitcoin perp BIP-20DEC30-CDE).
- intraday_margin_rate and overnight_margin_rate, each {long_margin_rate, short_margin_rate}: the initial margin rate
  is the strictest (highest) of the four. A position opened intraday may still be open when the overnight rate
  applies, and the rules do not size by side.
- perpetual_details.max_leverage when Coinbase fills it in; US perps often answer "" there, and then the max
  leverage is what the initial margin rate allows (1 / rate).
- no maintenance margin rate per product: half the initial rate stands in (the paper exchange's and the test
  server's ratio). The account's real threshold is /cfm/balance_summary's liquidation_threshold.
- contract_root_unit ("BTC") and the quote currency name the underlying spot product (BTC-USD); funding_interval is
  a duration string ("3600s"), one hour when absent (dated futures answer null).

Reduce-only: Coinbase's create order has no reduce-only field (the SDK's create_order and preview_order take
leverage, margin_type and retail_portfolio_id besides the order itself; close_position closes a product's whole
position), so the broker checks it against GET /cfm/positions/{product_id} before anything is sent.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from trader.brokers.rules import fmt
from trader.domain import FuturesTerms, OrderRequest, Product
from trader.errors import BrokerError

MARGIN_TYPE = "CROSS"  # the SDK's MarginType: CROSS or ISOLATED; US futures margin the whole CFM account
MAINTENANCE_SHARE = Decimal("0.5")  # maintenance margin rate = this share of the initial rate (see above)
DEFAULT_FUNDING_INTERVAL = timedelta(hours=1)
ONE = Decimal(1)
ZERO = Decimal(0)


def futures_terms(data: dict[str, Any], quote_currency: str) -> FuturesTerms | None:
    """A future's terms from its GET /products/{id} JSON; None for anything that is not a future."""
    details = data.get("future_product_details") or {}
    if str(data.get("product_type") or "").upper() != "FUTURE" and not details:
        return None
    symbol = str(data.get("product_id") or "?")
    contract_size = _number(details.get("contract_size"))
    if contract_size is None or contract_size <= 0:
        raise BrokerError(
            f"Coinbase product {symbol} is a future without future_product_details.contract_size: its orders "
            "cannot be sized in contracts, so none are placed"
        )
    perpetual = details.get("perpetual_details") or {}
    rates = [
        rate
        for window in ("intraday_margin_rate", "overnight_margin_rate")
        for side in ("long_margin_rate", "short_margin_rate")
        if (rate := _number((details.get(window) or {}).get(side))) is not None and rate > 0
    ]
    max_leverage = _number(perpetual.get("max_leverage"))
    if max_leverage is not None and max_leverage <= 0:
        max_leverage = None
    if rates:
        initial = max(rates)
    elif max_leverage is not None:
        initial = ONE / max_leverage
    else:
        raise BrokerError(
            f"Coinbase product {symbol} publishes neither margin rates (intraday_margin_rate, overnight_margin_rate) "
            "nor perpetual_details.max_leverage: its margin is unknown, so no order is placed on it"
        )
    root = str(details.get("contract_root_unit") or "")
    return FuturesTerms(
        contract_size=contract_size,
        max_leverage=max_leverage if max_leverage is not None else ONE / initial,
        initial_margin_rate=initial,
        maintenance_margin_rate=initial * MAINTENANCE_SHARE,
        underlying=f"{root}-{quote_currency}" if root else "",
        funding_interval=_duration(details.get("funding_interval")) or DEFAULT_FUNDING_INTERVAL,
    )


def order_fields(request: OrderRequest, product: Product) -> dict[str, str]:
    """What a create or preview carries besides the order itself: a future's margin type and, when the request
    sets one, its leverage; nothing for spot."""
    if product.futures is None:
        return {}
    fields = {"margin_type": MARGIN_TYPE}
    if request.leverage is not None:
        fields["leverage"] = fmt(request.leverage)
    return fields


def signed_contracts(position: dict[str, Any] | None) -> Decimal:
    """A CFM position (GET /cfm/positions/{id}'s `position`) as signed contracts: negative when short."""
    if not position:
        return ZERO
    contracts = _number(position.get("number_of_contracts")) or ZERO
    return -contracts if str(position.get("side") or "").upper().endswith("SHORT") else contracts


def _number(value: Any) -> Decimal | None:
    if isinstance(value, dict):
        value = value.get("value")
    if value in (None, ""):
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _duration(value: Any) -> timedelta | None:
    """Coinbase's protobuf durations: "3600s"."""
    text = str(value or "").strip()
    seconds = _number(text.removesuffix("s")) if text.endswith("s") else None
    return timedelta(seconds=float(seconds)) if seconds is not None and seconds > 0 else None
