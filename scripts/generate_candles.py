"""Generate the bundled replay: 14 days of 1-minute BTC-USD, ETH-USD and BIP-20DEC30-CDE candles
(trader/data/candles_1m.csv.gz).

Geometric Brownian motion stepped four times per minute, with a volatility that follows the UTC hour (quiet
Asian night, busiest at the US open), a random level per day, quieter weekends, and ETH 0.8-correlated with BTC.
BIP-20DEC30-CDE, a perpetual-style Bitcoin future (0.01 BTC a contract, COINBASE_ENABLE_DERIVATIVES=1), trades at
BTC-USD times (1 + basis): the basis is a mean-reverting walk around +2 bps from its own generator (seed + 1), so
the spot rows are the same as without it; its premium drives the paper funding rate (trader/brokers/futures.py).
Prices are quantized to the quote increment 0.01 and every bar is OHLC-consistent
(low <= min(open, close) <= max(open, close) <= high, volume > 0); each bar opens at the previous close.

Deterministic: seed 20251002 gives a byte-identical file on every platform (random.Random, only + - * / on
floats: normals are Irwin-Hall sums of 12 uniforms, so no libm function can differ; gzip mtime 0, no file
name in the header). Stdlib only. Run: .venv/bin/python scripts/generate_candles.py [--out PATH] [--seed N]
"""

from __future__ import annotations

import argparse
import gzip
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

SEED = 20251002
START = datetime(2025, 9, 18, tzinfo=UTC)  # first bar's open; the last bar closes 2025-10-02 00:00 UTC
BARS = 20_160  # 14 days of 1-minute bars
INTERVAL = timedelta(minutes=1)
SUBSTEPS = 4  # price steps inside one bar: they make the high and low
TICK = Decimal("0.01")  # quote_increment of both products
VOLUME_STEP = Decimal("0.0001")
ETH_CORRELATION = 0.8
ETH_INDEPENDENT = 0.6  # sqrt(1 - 0.8**2), so ETH's shocks stay unit-variance
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "trader" / "data" / "candles_1m.csv.gz"

# Volatility multiplier per UTC hour.
HOURLY_VOLATILITY = (
    0.80, 0.75, 0.70, 0.70, 0.70, 0.75, 0.80, 0.90, 1.00, 1.05, 1.10, 1.15,
    1.25, 1.45, 1.55, 1.45, 1.30, 1.20, 1.10, 1.00, 0.95, 0.90, 0.85, 0.85,
)  # fmt: skip
WEEKEND_VOLATILITY = 0.7


@dataclass(frozen=True)
class Market:
    symbol: str
    start_price: float
    minute_volatility: float  # standard deviation of one bar's return at multiplier 1
    base_volume: float  # typical base volume of one bar


MARKETS = (
    Market("BTC-USD", 65_000.0, 0.00065, 3.0),
    Market("ETH-USD", 3_200.0, 0.00085, 45.0),
)
FUTURE = "BIP-20DEC30-CDE"
BASIS_MEAN = 0.0002
BASIS_REVERSION = 0.01  # share of the gap to the mean closed each bar
BASIS_STEP = 0.00003  # the basis walk's standard deviation per bar
FUTURE_CONTRACTS_PER_BTC = 100.0  # 0.01 BTC a contract


def _normal(rng: random.Random) -> float:
    """Approximately standard normal: Irwin-Hall sum of 12 uniforms (basic arithmetic only)."""
    total = 0.0
    for _ in range(12):
        total += rng.random()
    return total - 6.0


def _price(value: float) -> Decimal:
    return Decimal(value).quantize(TICK, rounding=ROUND_HALF_EVEN)


def generate_rows(seed: int = SEED) -> dict[str, list[str]]:
    """CSV rows (without header) per symbol, oldest first."""
    rng = random.Random(seed)
    prices = [m.start_price for m in MARKETS]
    opens = [_price(p) for p in prices]
    rows: dict[str, list[str]] = {m.symbol: [] for m in MARKETS}
    day_level = 1.0
    for bar in range(BARS):
        start = START + INTERVAL * bar
        if bar % 1440 == 0:
            day_level = 0.75 + 0.5 * rng.random()
        level = HOURLY_VOLATILITY[start.hour] * day_level * (WEEKEND_VOLATILITY if start.weekday() >= 5 else 1.0)
        highs = list(prices)
        lows = list(prices)
        first = list(prices)
        for _ in range(SUBSTEPS):
            common = _normal(rng)
            shocks = (common, ETH_CORRELATION * common + ETH_INDEPENDENT * _normal(rng))
            for i, market in enumerate(MARKETS):
                # sqrt(SUBSTEPS) == 2: four steps add up to one bar's volatility
                prices[i] *= 1.0 + market.minute_volatility * level / 2.0 * shocks[i]
                highs[i] = max(highs[i], prices[i])
                lows[i] = min(lows[i], prices[i])
        stamp = int(start.timestamp())
        for i, market in enumerate(MARKETS):
            sigma = market.minute_volatility * level
            high = highs[i] * (1.0 + 0.25 * sigma * rng.random())
            low = lows[i] * (1.0 - 0.25 * sigma * rng.random())
            move = abs(prices[i] / first[i] - 1.0)
            volume = market.base_volume * level * (0.5 + rng.random()) * (1.0 + 400.0 * move)
            open_, close = opens[i], _price(prices[i])
            high_q = max(_price(high), open_, close)
            low_q = min(_price(low), open_, close)
            volume_q = max(Decimal(volume).quantize(VOLUME_STEP, rounding=ROUND_HALF_EVEN), VOLUME_STEP)
            rows[market.symbol].append(f"{market.symbol},{stamp},{open_},{high_q},{low_q},{close},{volume_q}")
            opens[i] = close
    rows[FUTURE] = future_rows(rows["BTC-USD"], seed + 1)
    return rows


def future_rows(spot: list[str], seed: int) -> list[str]:
    """The perpetual-style future's rows from the spot rows: each price x (1 + basis), the basis a walk of its own."""
    rng = random.Random(seed)
    basis = BASIS_MEAN
    out: list[str] = []
    previous: Decimal | None = None
    for row in spot:
        _, stamp, _open, high, low, close, volume = row.split(",")
        basis += BASIS_REVERSION * (BASIS_MEAN - basis) + BASIS_STEP * _normal(rng)
        factor = 1.0 + basis
        close_f = _price(float(close) * factor)
        open_f = previous if previous is not None else _price(float(_open) * factor)
        high_f = max(_price(float(high) * factor), open_f, close_f)
        low_f = min(_price(float(low) * factor), open_f, close_f)
        contracts = Decimal(float(volume) * FUTURE_CONTRACTS_PER_BTC * (0.5 + rng.random())).quantize(
            Decimal(1), rounding=ROUND_HALF_EVEN
        )
        out.append(f"{FUTURE},{stamp},{open_f},{high_f},{low_f},{close_f},{max(contracts, Decimal(1))}")
        previous = close_f
    return out


def generate(path: Path, seed: int = SEED) -> None:
    """Write the replay gzip CSV to path; same seed, same bytes."""
    lines = ["symbol,start,open,high,low,close,volume"]
    for symbol_rows in generate_rows(seed).values():
        lines.extend(symbol_rows)
    data = ("\n".join(lines) + "\n").encode("ascii")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
        gz.write(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    generate(args.out, args.seed)
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes, {BARS} bars x {len(MARKETS) + 1} symbols)")


if __name__ == "__main__":
    main()
