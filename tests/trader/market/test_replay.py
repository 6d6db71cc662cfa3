"""The candle replay, the shipped replay file and its generator, and Coinbase's candle JSON."""

from __future__ import annotations

import gzip
import importlib.util
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import ModuleType

import pytest

from trader.domain import Candle
from trader.errors import ConfigError, UnknownSymbol
from trader.market import (
    DEFAULT_REPLAY_FILE,
    WARMUP_BARS,
    MarketDataSource,
    ReplayMarketData,
    candles_from_coinbase,
    load_candles_csv,
    write_candles_csv,
)

ROOT = Path(__file__).resolve().parents[3]
T0 = datetime(2025, 1, 1, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def flat(count: int, price: str = "100.00") -> list[Candle]:
    """`count` one-minute candles from T0 whose close is their index (so a bar is easy to recognise)."""
    p = Decimal(price)
    return [Candle(T0 + MINUTE * i, p, p, p, Decimal(i), Decimal("1")) for i in range(count)]


def climbing(count: int) -> list[Candle]:
    """`count` one-minute candles from T0, bar i opening at i and closing at i + 1: one unbroken price path."""
    return [
        Candle(T0 + MINUTE * i, Decimal(i), Decimal(i + 1), Decimal(i), Decimal(i + 1), Decimal("1"))
        for i in range(count)
    ]


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_candles", ROOT / "scripts" / "generate_candles.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up while the class is built
    spec.loader.exec_module(module)
    return module


# --- replay ------------------------------------------------------------------------------------------------------


def test_replay_is_a_market_data_source() -> None:
    assert isinstance(ReplayMarketData.from_candles({"BTC-USD": flat(3)}), MarketDataSource)


def test_replay_starts_after_the_warmup_so_history_is_there_on_the_first_cycle() -> None:
    market = ReplayMarketData()

    assert market.cursor == WARMUP_BARS
    assert len(market.history("BTC-USD", 50)) == 50


def test_history_is_the_closed_candles_up_to_the_cursor_oldest_first() -> None:
    market = ReplayMarketData.from_candles({"BTC-USD": flat(10)}, start=5)

    history = market.history("BTC-USD", 3)

    assert [c.close for c in history] == [3, 4, 5]
    assert market.latest("BTC-USD") == history[-1]


def test_history_near_the_start_returns_what_there_is() -> None:
    market = ReplayMarketData.from_candles({"BTC-USD": flat(10)}, start=1)

    assert [c.close for c in market.history("BTC-USD", 5)] == [0, 1]


def test_now_is_the_close_time_of_the_current_bar_in_utc() -> None:
    market = ReplayMarketData.from_candles({"BTC-USD": flat(10)}, start=4)

    assert market.now() == T0 + 5 * MINUTE
    assert market.now().tzinfo == UTC


def test_advance_moves_one_bar_and_returns_false_at_the_end() -> None:
    market = ReplayMarketData.from_candles({"BTC-USD": flat(3)}, start=1)

    assert market.advance() is True
    assert market.cursor == 2
    assert market.advance() is False
    assert market.cursor == 2


def test_seek_moves_the_cursor_and_refuses_positions_outside_the_replay() -> None:
    market = ReplayMarketData.from_candles({"BTC-USD": flat(10)}, start=0)

    market.seek(7)

    assert market.latest("BTC-USD").close == 7
    with pytest.raises(ConfigError, match="cursor 10 is outside the replay: 0 to 9"):
        market.seek(10)


def test_history_of_an_unknown_symbol_is_refused() -> None:
    market = ReplayMarketData.from_candles({"BTC-USD": flat(3)})

    with pytest.raises(UnknownSymbol, match="unknown symbol DOGE-EUR; available: BTC-USD"):
        market.history("DOGE-EUR", 1)


def test_wrap_mode_loops_forever_and_time_keeps_moving_forward() -> None:
    market = ReplayMarketData.from_candles({"BTC-USD": climbing(4)}, start=0, wrap=True)
    times = [market.now()]

    for _ in range(10):
        assert market.advance()
        times.append(market.now())

    assert times == [T0 + MINUTE * (i + 1) for i in range(11)]
    closes = [1, 2, 3, 4, 3, 2, 1, 0, 1, 2, 3]  # forwards, then backwards: no jump back to the first bar's price
    assert market.latest("BTC-USD").close == closes[10]
    assert [c.close for c in market.history("BTC-USD", 11)] == closes[:11]


def test_wrap_mode_history_across_a_lap_is_one_minute_apart() -> None:
    market = ReplayMarketData.from_candles({"BTC-USD": climbing(4)}, start=5, wrap=True)

    history = market.history("BTC-USD", 4)

    assert [c.start for c in history] == [T0 + MINUTE * i for i in range(2, 6)]
    assert [c.close for c in history] == [3, 4, 3, 2]
    assert [c.open for c in history] == [2, 3, 4, 3]  # each bar opens where the one before it closed


def test_wrap_mode_over_the_shipped_file_stays_monotonic_past_the_end() -> None:
    market = ReplayMarketData(wrap=True)
    market.seek(market.bars - 2)
    before = market.now()

    for _ in range(3):
        market.advance()
        assert market.now() - before == timedelta(minutes=1)
        before = market.now()

    assert market.history("BTC-USD", 5)[-1].start == market.now() - timedelta(minutes=1)


def test_wrap_mode_over_the_shipped_file_continues_the_price_across_every_lap_end() -> None:
    market = ReplayMarketData(wrap=True)

    for lap_end in (market.bars, 2 * market.bars):
        market.seek(lap_end - 1)
        last = market.latest("BTC-USD")
        market.advance()
        first = market.latest("BTC-USD")
        assert first.open == last.close  # the lap turns where the price is, not at the replay's first bar
        assert first.low <= min(first.open, first.close) and first.high >= max(first.open, first.close)


def test_symbols_of_different_lengths_are_refused() -> None:
    with pytest.raises(ConfigError, match="same number of bars"):
        ReplayMarketData.from_candles({"BTC-USD": flat(3), "ETH-USD": flat(4)})


def test_csv_start_may_be_unix_seconds_or_iso_utc(tmp_path: Path) -> None:
    path = tmp_path / "candles.csv.gz"
    text = (
        "symbol,start,open,high,low,close,volume\n"
        "BTC-USD,1735689600,1.00,2.00,0.50,1.50,10\n"
        "BTC-USD,2025-01-01T00:01:00Z,1.50,2.00,1.00,1.75,11\n"
    )
    path.write_bytes(gzip.compress(text.encode()))

    market = ReplayMarketData(path, start=0)

    assert [c.start for c in market.history("BTC-USD", 1)] == [T0]
    market.advance()
    assert market.latest("BTC-USD") == Candle(
        T0 + MINUTE, Decimal("1.50"), Decimal("2.00"), Decimal("1.00"), Decimal("1.75"), Decimal("11")
    )


def test_written_candles_load_back_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "candles.csv.gz"
    candles = {"BTC-USD": flat(5), "ETH-USD": flat(5, "3200.00")}

    write_candles_csv(path, candles)

    assert load_candles_csv(path) == candles


def test_a_missing_replay_file_names_the_setting() -> None:
    with pytest.raises(ConfigError, match="MARKET_DATA_FILE .*nope.csv.gz does not exist"):
        ReplayMarketData(Path("nope.csv.gz"))


# --- the shipped file and its generator --------------------------------------------------------------------


def test_shipped_replay_has_14_days_of_one_minute_bars_for_btc_eth_and_the_btc_future() -> None:
    candles = load_candles_csv(DEFAULT_REPLAY_FILE)

    assert sorted(candles) == ["BIP-20DEC30-CDE", "BTC-USD", "ETH-USD"]
    for rows in candles.values():
        assert len(rows) == 20_160
        assert rows[0].start == datetime(2025, 9, 18, tzinfo=UTC)
        assert all(b.start - a.start == MINUTE for a, b in zip(rows, rows[1:], strict=False))
    assert candles["BTC-USD"][0].open == Decimal("65000.00")
    assert candles["ETH-USD"][0].open == Decimal("3200.00")
    assert DEFAULT_REPLAY_FILE.stat().st_size < 1_500_000
    # the future follows BTC within a small basis, each bar opening at the previous close
    future, spot = candles["BIP-20DEC30-CDE"], candles["BTC-USD"]
    basis = [f.close / s.close - 1 for f, s in zip(future, spot, strict=True)]
    assert max(abs(b) for b in basis) < Decimal("0.005")
    assert Decimal("0") < sum(basis) / len(basis) < Decimal("0.001")  # a premium on average: longs pay funding
    assert all(b.open == a.close for a, b in zip(future, future[1:], strict=False))


def test_shipped_replay_bars_are_ohlc_consistent_on_the_quote_increment_with_positive_volume() -> None:
    cent = Decimal("0.01")

    for symbol, rows in load_candles_csv(DEFAULT_REPLAY_FILE).items():
        for c in rows:
            assert c.low <= min(c.open, c.close) <= max(c.open, c.close) <= c.high, (symbol, c)
            assert c.low > 0 and c.volume > 0, (symbol, c)
            assert all(p % cent == 0 for p in (c.open, c.high, c.low, c.close)), (symbol, c)


def test_generator_gives_byte_identical_files_for_the_same_seed_and_matches_the_shipped_file(
    tmp_path: Path,
) -> None:
    module = generator()

    module.generate(tmp_path / "first.csv.gz", module.SEED)
    module.generate(tmp_path / "second.csv.gz", module.SEED)

    first = (tmp_path / "first.csv.gz").read_bytes()
    assert first == (tmp_path / "second.csv.gz").read_bytes()
    assert first == DEFAULT_REPLAY_FILE.read_bytes()


def test_generator_with_another_seed_gives_another_market() -> None:
    module = generator()

    assert module.generate_rows(1)["BTC-USD"][:50] != module.generate_rows(2)["BTC-USD"][:50]


# --- Coinbase candle JSON ------------------------------------------------------------------------------------


def test_candles_from_coinbase_parses_decimals_and_orders_oldest_first() -> None:
    payload = {
        "candles": [
            {"start": "1700000060", "low": "36990.5", "high": "37010", "open": "37000", "close": "37005.25",
             "volume": "12.5"},
            {"start": "1700000000", "low": "36980", "high": "37001", "open": "36990", "close": "37000",
             "volume": "8.25"},
        ]
    }  # fmt: skip

    candles = candles_from_coinbase(payload)

    assert [c.start for c in candles] == [
        datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC),
        datetime(2023, 11, 14, 22, 14, 20, tzinfo=UTC),
    ]
    assert candles[1] == Candle(
        candles[1].start, Decimal("37000"), Decimal("37010"), Decimal("36990.5"), Decimal("37005.25"), Decimal("12.5")
    )


def test_candles_from_coinbase_with_no_candles_is_empty() -> None:
    assert candles_from_coinbase({"candles": []}) == []
