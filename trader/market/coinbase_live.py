"""Live market data from Coinbase's public endpoints (no API key): candles and the best bid/ask.

Plugged into the simulated exchange (MARKET_DATA=coinbase, the canary default), it paper-trades on live prices:
`advance()` fetches the bars that closed since the last call and the current top of book, without sleeping (the
bot's cycle interval paces it). The cursor is the absolute index of the latest closed bar (minutes since the
epoch), so a saved paper account resumes at the present and matches its resting orders against the bars it missed.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any, Self

from trader.coinbase.http import CallPolicy, build_rest_client, plain_json
from trader.domain import Candle, Side
from trader.errors import BrokerUnavailable, ConfigError, UnknownSymbol
from trader.market.source import candles_from_coinbase
from trader.settings import Settings

INTERVAL = timedelta(minutes=1)
KEEP_BARS = 1000  # closed bars kept per symbol
FIRST_FETCH = 300  # bars fetched at start (the public endpoint answers at most 350)


class CoinbaseLiveMarketData:
    """MarketDataSource over Coinbase's public candles and product book; every symbol shares one clock."""

    def __init__(
        self,
        client: Any,
        symbols: list[str],
        *,
        policy: CallPolicy | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if not symbols:
            raise ConfigError("TRADING_SYMBOLS: no symbols to fetch live market data for")
        self.client = client
        self.policy = policy or CallPolicy()
        self._clock = clock
        self._symbols = list(symbols)
        self._candles: dict[str, list[Candle]] = {s: [] for s in self._symbols}
        self._quotes: dict[str, tuple[Decimal, Decimal]] = {}
        self.refresh()

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        policy = CallPolicy(max_retries=settings.coinbase_max_retries, host=settings.coinbase_api_base)
        return cls(build_rest_client(settings, None), settings.symbols, policy=policy, **cls._options(settings))

    @classmethod
    def _options(cls, settings: Settings) -> dict[str, Any]:
        """What a subclass's constructor takes from the settings besides the REST client (none here)."""
        return {}

    # --- MarketDataSource ---------------------------------------------------------------------------------------

    @property
    def cursor(self) -> int:
        return int(self._current_start().timestamp() // INTERVAL.total_seconds())

    def symbols(self) -> list[str]:
        return list(self._symbols)

    def history(self, symbol: str, limit: int) -> list[Candle]:
        rows = self._rows(symbol)
        end = self._current_start()
        closed = [c for c in rows if c.start <= end]
        return closed[-limit:] if limit > 0 else []

    def latest(self, symbol: str) -> Candle:
        return self.history(symbol, 1)[-1]

    def now(self) -> datetime:
        return self._current_start() + INTERVAL

    def quote(self, symbol: str) -> tuple[Decimal, Decimal] | None:
        self._rows(symbol)
        return self._quotes.get(symbol)

    def taker_price(self, symbol: str, side: Side, quantity: Decimal) -> Decimal | None:
        """No book over REST polling (the product book's touch only): the paper exchange's slippage stands in."""
        return None

    def advance(self) -> bool:
        """Fetch what closed since the last call; live data never runs out."""
        self.refresh()
        return True

    def seek(self, cursor: int) -> None:
        """Live data stays at the present: an earlier cursor (a saved paper account) is fine, a later one is not."""
        if cursor > self.cursor:
            raise ConfigError(f"market data cursor {cursor} is in the future of live data (now {self.cursor})")

    # --- fetching ---------------------------------------------------------------------------------------------

    def refresh(self) -> None:
        now = self._clock()
        open_bar = now.replace(second=0, microsecond=0)
        for symbol in self._symbols:
            rows = self._candles[symbol]
            start = rows[-1].start + INTERVAL if rows else open_bar - INTERVAL * FIRST_FETCH
            if start < open_bar:
                data = self.policy.read(
                    f"public candles {symbol}",
                    partial(
                        self.client.get_public_candles,
                        symbol,
                        str(int(start.timestamp())),
                        str(int(open_bar.timestamp()) - 1),
                        "ONE_MINUTE",
                    ),
                )
                fresh = [c for c in candles_from_coinbase(_plain(data)) if c.start < open_bar]
                known = {c.start for c in rows}
                rows.extend(c for c in fresh if c.start not in known)
                rows.sort(key=lambda c: c.start)
                del rows[:-KEEP_BARS]
            if not self._book_wanted(symbol):
                continue
            book = _plain(
                self.policy.read(
                    f"public product book {symbol}", partial(self.client.get_public_product_book, symbol, limit=1)
                )
            ).get("pricebook", {})
            if book.get("bids") and book.get("asks"):
                self._quotes[symbol] = (Decimal(str(book["bids"][0]["price"])), Decimal(str(book["asks"][0]["price"])))
        if not all(self._candles.values()):
            empty = ", ".join(s for s, rows in self._candles.items() if not rows)
            raise BrokerUnavailable(f"Coinbase returned no closed candles for {empty}; is the product trading?")

    def _book_wanted(self, symbol: str) -> bool:
        """Whether refresh() reads the product book over REST (a WebSocket source skips it while its ticker is live)."""
        return True

    def _rows(self, symbol: str) -> list[Candle]:
        rows = self._candles.get(symbol)
        if rows is None:
            raise UnknownSymbol(f"unknown symbol {symbol}; live data is fetched for {', '.join(self._symbols)}")
        return rows

    def _current_start(self) -> datetime:
        """The start of the latest bar every symbol has closed."""
        return min(rows[-1].start for rows in self._candles.values())


def _plain(value: Any) -> dict[str, Any]:
    result = plain_json(value)
    return result if isinstance(result, dict) else {}
