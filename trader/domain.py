"""Value types shared by every area: products, orders, fills, candles, balances."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from enum import StrEnum


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


class OrderType(StrEnum):
    MARKET = "market"
    LIMIT = "limit"
    STOP_LIMIT = "stop_limit"


class TimeInForce(StrEnum):
    GTC = "GTC"
    GTD = "GTD"
    IOC = "IOC"


class OrderStatus(StrEnum):
    PENDING_SUBMIT = "pending_submit"  # recorded in the ledger, not yet acknowledged by the broker
    OPEN = "open"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    REJECTED = "rejected"
    FAILED = "failed"  # never reached the broker

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.EXPIRED, OrderStatus.REJECTED, OrderStatus.FAILED}
)


class Liquidity(StrEnum):
    MAKER = "maker"
    TAKER = "taker"


def quantize_down(value: Decimal, increment: Decimal) -> Decimal:
    """Round value down to a whole multiple of increment."""
    return (value / increment).to_integral_value(rounding=ROUND_DOWN) * increment


def shrinks_position(side: Side, quantity: Decimal, position: Decimal) -> bool:
    """True when the order only makes the position smaller: a sell of at most a long, a buy of at most a short."""
    if quantity <= 0:
        return False
    if side is Side.SELL:
        return position > 0 and quantity <= position
    return position < 0 and quantity <= -position


@dataclass(frozen=True)
class FuturesTerms:
    """What makes a product a perpetual-style future (US futures on Coinbase Financial Markets): its order size
    counts contracts of `contract_size` of the underlying; margins are fractions of notional."""

    contract_size: Decimal
    max_leverage: Decimal
    initial_margin_rate: Decimal
    maintenance_margin_rate: Decimal
    underlying: str = ""  # the spot product whose price is the index (the paper exchange's funding premium)
    funding_interval: timedelta = timedelta(hours=1)


@dataclass(frozen=True)
class Product:
    """A tradable product with Coinbase's increment and minimum rules."""

    symbol: str
    base_currency: str
    quote_currency: str
    base_increment: Decimal
    quote_increment: Decimal
    base_min_size: Decimal
    base_max_size: Decimal
    quote_min_size: Decimal = Decimal("1")
    trading_disabled: bool = False
    # The exchange's word for the product's state: online, cancel_only, limit_only, post_only, trading_disabled
    # (the preflight's product-status line; trading_disabled above is what order checks read).
    status: str = "online"
    funding_rate: Decimal | None = None  # a perpetual-style future's current funding rate (per interval)
    funding_time: datetime | None = None  # when that funding is next applied
    futures: FuturesTerms | None = None  # a future: sizes in contracts, traded on margin

    def notional(self, quantity: Decimal, price: Decimal) -> Decimal:
        """What `quantity` is worth at `price` in the quote currency (a future's quantity counts contracts)."""
        return quantity * price * (self.futures.contract_size if self.futures is not None else 1)


@dataclass(frozen=True)
class Candle:
    """One OHLCV bar, shaped like Coinbase's public candles (start is the bar's open time)."""

    start: datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal


@dataclass(frozen=True)
class OrderRequest:
    """What the bot asks a broker to do; validated against the Product before it is sent."""

    symbol: str
    side: Side
    order_type: OrderType
    quantity: Decimal
    client_order_id: str
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    time_in_force: TimeInForce = TimeInForce.GTC
    expire_at: datetime | None = None
    reduce_only: bool = False
    post_only: bool = False
    leverage: Decimal | None = None  # futures only: the margin the order is opened with is notional / leverage


@dataclass
class Order:
    """The broker's view of an order."""

    order_id: str
    client_order_id: str
    symbol: str
    side: Side
    order_type: OrderType
    quantity: Decimal
    status: OrderStatus
    created_at: datetime
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    time_in_force: TimeInForce = TimeInForce.GTC
    expire_at: datetime | None = None
    reduce_only: bool = False
    filled_quantity: Decimal = Decimal("0")
    average_fill_price: Decimal | None = None
    fees: Decimal = Decimal("0")
    reject_reason: str | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class Fill:
    """One execution reported by the broker; trade_id is unique per exchange."""

    trade_id: str
    order_id: str
    client_order_id: str
    symbol: str
    side: Side
    quantity: Decimal
    price: Decimal
    fee: Decimal
    liquidity: Liquidity
    filled_at: datetime
    contract_size: Decimal = Decimal(1)  # a future's fill counts contracts of this much of the underlying


@dataclass(frozen=True)
class Balance:
    currency: str
    available: Decimal
    hold: Decimal

    @property
    def total(self) -> Decimal:
        return self.available + self.hold


@dataclass(frozen=True)
class Position:
    """Net base quantity held in a product (spot: the base balance traded by the bot)."""

    symbol: str
    quantity: Decimal
    average_entry_price: Decimal


@dataclass(frozen=True)
class OrderPreview:
    """A broker's answer to 'what would this order cost' (Coinbase preview_order shape)."""

    preview_id: str
    request: OrderRequest
    estimated_price: Decimal
    quote_size: Decimal
    base_size: Decimal
    commission: Decimal
    errors: tuple[str, ...] = ()
    order_id: str | None = None  # set when previewing an edit of an existing order


@dataclass(frozen=True)
class KeyPermissions:
    can_view: bool
    can_trade: bool
    can_transfer: bool
    portfolio_type: str


@dataclass(frozen=True)
class FeeTier:
    tier: str
    maker_fee_rate: Decimal
    taker_fee_rate: Decimal


@dataclass(frozen=True)
class AccountSnapshot:
    balances: list[Balance]
    permissions: KeyPermissions
    fee_tier: FeeTier
    positions: list[Position] = field(default_factory=list)
    futures: FuturesAccount | None = None  # with COINBASE_ENABLE_DERIVATIVES=1: the US futures (CFM) account


@dataclass(frozen=True)
class FuturesPosition:
    """A US futures (CFM) position: contracts of a perpetual-style or dated future."""

    symbol: str
    side: str  # "long" or "short"
    contracts: Decimal
    average_entry_price: Decimal
    current_price: Decimal
    unrealized_pnl: Decimal
    daily_realized_pnl: Decimal


@dataclass(frozen=True)
class FundingPayment:
    """Funding on a futures position at one instant (accrued: rate, contracts and mark set) or its settlement into
    the account's USD (settled); amount > 0 is money received. payment_id is unique per account."""

    payment_id: str
    symbol: str
    at: datetime
    rate: Decimal | None
    contracts: Decimal | None
    mark_price: Decimal | None
    amount: Decimal
    settled: bool = False


@dataclass(frozen=True)
class FuturesAccount:
    """The CFM balance summary (USD): what the perpetuals runbook reads before and while trading futures."""

    buying_power: Decimal
    total_usd_balance: Decimal
    unrealized_pnl: Decimal
    daily_realized_pnl: Decimal
    initial_margin: Decimal
    available_margin: Decimal
    liquidation_threshold: Decimal
    liquidation_buffer_usd: Decimal
    liquidation_buffer_pct: Decimal
    positions: list[FuturesPosition] = field(default_factory=list)

    @property
    def equity(self) -> Decimal:
        """The futures account's equity: the liquidation threshold plus the buffer above it."""
        return self.liquidation_threshold + self.liquidation_buffer_usd

    @property
    def open_pnl(self) -> Decimal:
        """What the equity holds beyond the USD balance: unrealized PnL and funding accrued, not yet settled."""
        return self.equity - self.total_usd_balance
