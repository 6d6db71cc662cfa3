"""Market data for the bot and the simulated exchange: a replay of recorded candles, and Coinbase's candle shape.

The live source (trader/market/coinbase_live.py, MARKET_DATA=coinbase) sits behind the same protocol: Coinbase's
public candles and best bid/ask, so the paper exchange can fill on live prices.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from trader.domain import Candle, Side
from trader.errors import ConfigError, UnknownSymbol

DEFAULT_REPLAY_FILE = Path(__file__).resolve().parent.parent / "data" / "candles_1m.csv.gz"
WARMUP_BARS = 100  # the replay starts this many bars in, so a strategy has history on its first cycle
CSV_COLUMNS = ("symbol", "start", "open", "high", "low", "close", "volume")


@runtime_checkable
class MarketDataSource(Protocol):
    """Closed candles per symbol and a cursor on the current bar; the clock is the current bar's close."""

    @property
    def cursor(self) -> int:
        """Index of the current (latest closed) bar."""
        ...

    def symbols(self) -> list[str]: ...

    def history(self, symbol: str, limit: int) -> list[Candle]:
        """Up to `limit` closed candles ending with the current bar, oldest first."""
        ...

    def latest(self, symbol: str) -> Candle:
        """The current bar."""
        ...

    def now(self) -> datetime:
        """Close time of the current bar, tz-aware UTC."""
        ...

    def quote(self, symbol: str) -> tuple[Decimal, Decimal] | None:
        """The exchange's best (bid, ask) when the source has one (live data); None: derive it from the close."""
        ...

    def taker_price(self, symbol: str, side: Side, quantity: Decimal) -> Decimal | None:
        """The average price of taking `quantity` from the live order book (level2), or None without one (or
        without the depth): the paper exchange then prices from the touch plus its slippage."""
        ...

    def advance(self) -> bool:
        """Move to the next bar; False (and no move) when there is none."""
        ...

    def seek(self, cursor: int) -> None:
        """Make `cursor` the current bar."""
        ...


def parse_candle_time(value: str) -> datetime:
    """A bar start given as unix seconds or ISO-8601 (naive means UTC), as a tz-aware UTC datetime."""
    text = value.strip()
    if text.lstrip("-").isdigit():
        return datetime.fromtimestamp(int(text), tz=UTC)
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def candles_from_coinbase(payload: Mapping[str, Any]) -> list[Candle]:
    """Coinbase Advanced Trade public candles JSON ({"candles": [...]}, newest first) as Candles, oldest first."""
    candles = [
        Candle(
            start=datetime.fromtimestamp(int(row["start"]), tz=UTC),
            open=Decimal(row["open"]),
            high=Decimal(row["high"]),
            low=Decimal(row["low"]),
            close=Decimal(row["close"]),
            volume=Decimal(row["volume"]),
        )
        for row in payload.get("candles", [])
    ]
    candles.sort(key=lambda c: c.start)
    return candles


def write_candles_csv(path: Path, candles: Mapping[str, Iterable[Candle]]) -> None:
    """Write candles as the replay's gzip CSV (start as unix seconds), byte-identical for identical input."""
    text = io.StringIO(newline="")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for symbol, rows in candles.items():
        for c in rows:
            writer.writerow((symbol, int(c.start.timestamp()), c.open, c.high, c.low, c.close, c.volume))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
        gz.write(text.getvalue().encode("ascii"))


def load_candles_csv(path: Path) -> dict[str, list[Candle]]:
    """Read a replay gzip CSV (symbol,start,open,high,low,close,volume) into candles per symbol, oldest first."""
    stat = path.stat()
    return _load_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=4)
def _load_cached(path: str, _mtime_ns: int, _size: int) -> dict[str, list[Candle]]:
    # Candles are immutable and never mutated by the replay, so one parse serves every ReplayMarketData.
    by_symbol: dict[str, list[Candle]] = {}
    with gzip.open(path, "rt", newline="") as handle:
        reader = csv.reader(handle)
        header = tuple(next(reader, ()))
        if header != CSV_COLUMNS:
            raise ConfigError(f"market data file {path}: header {','.join(header)} is not {','.join(CSV_COLUMNS)}")
        for line, row in enumerate(reader, start=2):
            try:
                symbol, start, open_, high, low, close, volume = row
                candle = Candle(
                    parse_candle_time(start),
                    Decimal(open_),
                    Decimal(high),
                    Decimal(low),
                    Decimal(close),
                    Decimal(volume),
                )
            except (ValueError, InvalidOperation):
                raise ConfigError(f"market data file {path}: line {line} is not a candle: {','.join(row)}") from None
            by_symbol.setdefault(symbol, []).append(candle)
    for rows in by_symbol.values():
        rows.sort(key=lambda c: c.start)
    return by_symbol


class ReplayMarketData:
    """Replays recorded candles bar by bar; every symbol shares one cursor and one clock. With wrap the replay
    never ends: it plays forwards, then backwards, then forwards again, and its clock keeps moving forward."""

    def __init__(self, path: Path | None = None, start: int | None = None, wrap: bool = False) -> None:
        file = Path(path) if path is not None else DEFAULT_REPLAY_FILE
        if not file.exists():
            raise ConfigError(f"MARKET_DATA_FILE {file} does not exist; unset it to use the bundled replay")
        self.path: Path | None = file
        self._init(load_candles_csv(file), start, wrap, str(file))

    @classmethod
    def from_candles(
        cls, candles: Mapping[str, list[Candle]], start: int | None = None, wrap: bool = False
    ) -> ReplayMarketData:
        """A replay over candles already in memory (same length per symbol, oldest first)."""
        replay = cls.__new__(cls)
        replay.path = None
        replay._init({s: sorted(rows, key=lambda c: c.start) for s, rows in candles.items()}, start, wrap, "candles")
        return replay

    def _init(self, candles: dict[str, list[Candle]], start: int | None, wrap: bool, origin: str) -> None:
        if not candles or not all(candles.values()):
            raise ConfigError(f"market data {origin}: no candles")
        lengths = {len(rows) for rows in candles.values()}
        if len(lengths) != 1:
            counts = ", ".join(f"{s} {len(r)}" for s, r in candles.items())
            raise ConfigError(f"market data {origin}: every symbol needs the same number of bars ({counts})")
        edges = {(rows[0].start, rows[-1].start) for rows in candles.values()}
        if len(edges) != 1:
            raise ConfigError(f"market data {origin}: symbols do not cover the same bars")
        self._candles = candles
        self._symbols = list(candles)
        first = candles[self._symbols[0]]
        self._bars = len(first)
        self.interval = first[1].start - first[0].start if self._bars > 1 else timedelta(minutes=1)
        self.wrap = wrap
        # One lap of the replay: timestamps shift by this much per lap, so time keeps moving forward.
        self.lap_length = first[-1].start - first[0].start + self.interval
        self._laps: dict[int, dict[str, list[Candle]]] = {0: candles}
        self._cursor = 0
        self.seek(min(WARMUP_BARS, self._bars - 1) if start is None else start)

    @property
    def cursor(self) -> int:
        return self._cursor

    @property
    def bars(self) -> int:
        """Bars in one pass of the replay."""
        return self._bars

    def symbols(self) -> list[str]:
        return list(self._symbols)

    def history(self, symbol: str, limit: int) -> list[Candle]:
        """Up to `limit` closed candles ending with the current bar, oldest first."""
        self._check(symbol)
        if limit <= 0:
            return []
        end = self._cursor + 1
        begin = max(0, end - limit)
        if end <= self._bars:
            return self._candles[symbol][begin:end]
        out: list[Candle] = []
        for lap in range(begin // self._bars, (end - 1) // self._bars + 1):
            offset = lap * self._bars
            rows = self._lap(lap)[symbol]
            out.extend(rows[max(begin - offset, 0) : min(end - offset, self._bars)])
        return out

    def latest(self, symbol: str) -> Candle:
        self._check(symbol)
        lap, index = divmod(self._cursor, self._bars)
        return (self._candles if lap == 0 else self._lap(lap))[symbol][index]

    def now(self) -> datetime:
        lap, index = divmod(self._cursor, self._bars)
        return self._candles[self._symbols[0]][index].start + self.interval + self.lap_length * lap

    def quote(self, symbol: str) -> tuple[Decimal, Decimal] | None:
        """A replay has no order book: the paper exchange quotes around the close."""
        self._check(symbol)
        return None

    def taker_price(self, symbol: str, side: Side, quantity: Decimal) -> Decimal | None:
        return None

    def advance(self) -> bool:
        if not self.wrap and self._cursor + 1 >= self._bars:
            return False
        self._cursor += 1
        return True

    def seek(self, cursor: int) -> None:
        if cursor < 0 or (not self.wrap and cursor >= self._bars):
            last = "any bar (wrap mode)" if self.wrap else str(self._bars - 1)
            raise ConfigError(f"market data cursor {cursor} is outside the replay: 0 to {last}")
        self._cursor = cursor

    def _check(self, symbol: str) -> None:
        if symbol not in self._candles:
            raise UnknownSymbol(f"unknown symbol {symbol}; available: {', '.join(self._symbols)}")

    def _lap(self, lap: int) -> dict[str, list[Candle]]:
        """Candles of one pass shifted to lap `lap`, played backwards on odd laps (open and close swapped) so the
        price runs on from where the last lap ended instead of jumping back to the first bar's; only the current
        and previous laps stay cached."""
        cached = self._laps.get(lap)
        if cached is None:
            shift = self.lap_length * lap
            cached = {s: _lap_rows(rows, shift, backwards=lap % 2 == 1) for s, rows in self._candles.items()}
            self._laps[lap] = cached
            current = self._cursor // self._bars
            for old in [k for k in self._laps if k not in (0, current, current - 1, lap)]:
                del self._laps[old]
        return cached


def _lap_rows(rows: list[Candle], shift: timedelta, *, backwards: bool) -> list[Candle]:
    if not backwards:
        return [replace(c, start=c.start + shift) for c in rows]
    starts = [c.start + shift for c in rows]
    return [
        replace(c, start=start, open=c.close, close=c.open) for start, c in zip(starts, reversed(rows), strict=True)
    ]
