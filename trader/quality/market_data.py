"""The market data gate: a Great Expectations suite on the candles a cycle is about to trade on.

One DataFrame per cycle holds every symbol's window, with derived columns computed in pandas so each expectation
is one cheap column check:

- step_seconds: the time from the previous bar of the same symbol (the first bar: the interval). step == interval
  is monotonic timestamps, no gaps and no duplicates in one expectation.
- min_price, body_high = max(open, close), body_low = min(open, close): positive prices and OHLC consistency.
- complete: every bar has open, high, low, close and volume (gx ignores NaN in its range checks).
- last_bar_age_seconds: now - the newest bar's start, on that bar's row only (NaN elsewhere, which gx skips), so a
  stale symbol is one unexpected row named by its symbol.

The bot's cycle validates what is new, BOOLEAN_ONLY, on a warm suite (gx_runtime.WarmSuite). Every expectation but
freshness is a per-row check whose value for a bar depends only on that bar and its predecessor's start (with the
gate's fixed interval and max age), and gx's map expectations pass a DataFrame exactly when they pass every row of
it. So a bar already found good with the same predecessor need not be shown to gx again: each cycle gx sees the
bars not yet known good plus each symbol's newest bar (the only row that carries an age, which moves with `now`),
and the verdict and failure lines are those of validating the whole window. A bar that fails is never remembered,
so it fails every cycle it stays in the window. Only when something fails are the failed expectations validated
again with every offending row (gx's public path), to name the symbols and bars. The daily checklist (detail=True)
validates every bar with counts. Great Expectations decides; pandas only shapes the data. Nothing here imports
great_expectations or pandas at import time: the bot pays gx's import in warm_up(), off its hot path.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Collection, Hashable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from trader.domain import Candle
from trader.quality import gx_runtime
from trader.quality.gx_runtime import Check, GateResult, Outcome

if TYPE_CHECKING:
    import pandas as pd

ASSET = "market_data"
INDEX_COLUMNS = ("symbol", "start")
MAX_LINES_PER_CHECK = 5  # failure lines per expectation (one per symbol); the rest is counted, not listed
MAX_BARS_PER_LINE = 3


def market_data_checks(interval_seconds: float, max_age_seconds: float) -> list[Check]:
    """The suite's expectations, in the order they are reported."""
    interval = f"{interval_seconds:g}"
    return [
        Check(
            "bar_spacing",
            f"gap/out-of-order bars (step_seconds != {interval})",
            lambda e: e.ExpectColumnValuesToBeBetween(
                column="step_seconds",
                min_value={"$PARAMETER": "interval_seconds"},
                max_value={"$PARAMETER": "interval_seconds"},
            ),
        ),
        Check(
            "positive_prices",
            "non-positive price (min(open, high, low, close) <= 0)",
            lambda e: e.ExpectColumnValuesToBeBetween(column="min_price", min_value=0, strict_min=True),
        ),
        Check(
            "volume_non_negative",
            "negative volume",
            lambda e: e.ExpectColumnValuesToBeBetween(column="volume", min_value=0),
        ),
        Check(
            "high_consistent",
            "high below open/close",
            lambda e: e.ExpectColumnPairValuesAToBeGreaterThanB(column_A="high", column_B="body_high", or_equal=True),
        ),
        Check(
            "low_consistent",
            "low above open/close",
            lambda e: e.ExpectColumnPairValuesAToBeGreaterThanB(column_A="body_low", column_B="low", or_equal=True),
        ),
        Check(
            "complete_bars",
            "bar missing a value (NaN open/high/low/close/volume)",
            lambda e: e.ExpectColumnValuesToBeInSet(column="complete", value_set=[True]),
        ),
        Check(
            "freshness",
            f"stale data (newest bar older than {max_age_seconds:g} s, or in the future)",
            lambda e: e.ExpectColumnValuesToBeBetween(
                column="last_bar_age_seconds", min_value=0, max_value={"$PARAMETER": "max_age_seconds"}
            ),
        ),
    ]


class MarketDataGate:
    """Validates each cycle's candles before they are traded on; a failed check means reduce-only for the cycle.

    Construction is cheap and imports nothing heavy; warm_up() (or the first check()) imports Great Expectations
    and builds the suite. `counters` counts cycles ("checked", "failed") and failures per expectation
    ("failed:freshness", "failed:no_candles", ...).
    """

    def __init__(self, *, interval_seconds: float = 60.0, max_age_seconds: float = 180.0) -> None:
        self.interval_seconds = float(interval_seconds)
        self.max_age_seconds = float(max_age_seconds)
        self.counters: collections.Counter[str] = collections.Counter()
        self.checks = market_data_checks(self.interval_seconds, self.max_age_seconds)
        self._by_name = {c.name: c for c in self.checks}
        self._suite: Any = None
        self._single: dict[str, Any] = {}  # one-expectation suites, to re-validate only what failed
        self._warm: gx_runtime.WarmSuite | None = None
        self._known_good: dict[str, set[Hashable]] = {}  # per symbol: (bar, previous start) keys that passed
        self._lock = threading.Lock()

    @property
    def parameters(self) -> dict[str, float]:
        return {"interval_seconds": self.interval_seconds, "max_age_seconds": self.max_age_seconds}

    @property
    def suite(self) -> Any:
        """The whole suite (an ExpectationSuite), built by warm_up()."""
        self.warm_up()
        return self._suite

    def warm_up(self) -> None:
        """Import Great Expectations, build its context and this gate's suites (seconds, once per process)."""
        with self._lock:
            if self._suite is not None:
                return
            gx_runtime.context()
            self._single = {c.name: gx_runtime.suite(f"market_data.{c.name}", [c]) for c in self.checks}
            suite = gx_runtime.suite("market_data", self.checks)
            self._warm = gx_runtime.WarmSuite(suite, self.parameters)
            self._suite = suite

    def check(self, candles: Mapping[str, Sequence[Candle]], now: datetime, *, detail: bool = False) -> GateResult:
        """Validate every symbol's window; `detail` validates every bar of every expectation with counts and offending
        rows (the daily checklist), otherwise only what is new, BOOLEAN_ONLY, with detail only for what failed (the
        bot's cycle; see the module docstring)."""
        started = time.perf_counter()
        self.warm_up()
        assert self._warm is not None
        failures: list[str] = []
        failed: list[str] = []
        empty = sorted(symbol for symbol, window in candles.items() if not window)
        if empty:
            failures += [f"{symbol}: no candles" for symbol in empty]
            failed.append("no_candles")
        windows = {s: w for s, w in candles.items() if w}
        checked_rows = sum(len(w) for w in windows.values())
        outcomes: list[Outcome] = []
        validated_rows = 0
        with self._lock:
            if detail:
                frame = market_data_frame(windows, now, self.interval_seconds)
                validated_rows = len(frame)
                if len(frame):
                    outcomes = gx_runtime.validate(
                        ASSET, frame, self._suite, parameters=self.parameters, detail=True, index_columns=INDEX_COLUMNS
                    )
                bad = [o for o in outcomes if not o.success]
            else:
                keys = {symbol: bar_keys(window) for symbol, window in windows.items()}
                rows = {
                    symbol: self._rows_to_validate(symbol, window, keys[symbol]) for symbol, window in windows.items()
                }
                frame = market_data_frame(windows, now, self.interval_seconds, rows=rows)
                validated_rows = len(frame)
                bad = []
                if len(frame):
                    try:
                        quick = self._warm.validate(frame)
                    except Exception:  # gx's public path turns a metric that raises into that expectation's error
                        quick = gx_runtime.validate(ASSET, frame, self._suite, parameters=self.parameters)
                    bad = [
                        outcome
                        for o in quick
                        if not o.success
                        for outcome in gx_runtime.validate(
                            ASSET,
                            frame,
                            self._single[o.check],
                            parameters=self.parameters,
                            detail=True,
                            index_columns=INDEX_COLUMNS,
                        )
                    ]
                self._remember(windows, keys, rows, bad)
        for outcome in bad:
            failed.append(outcome.check)
            failures += self._lines(outcome)
        passed = not failed
        self.counters["checked"] += 1
        if not passed:
            self.counters["failed"] += 1
            self.counters.update(f"failed:{name}" for name in failed)
        return GateResult(
            passed=passed,
            failures=tuple(failures),
            checked_rows=checked_rows,
            duration_ms=(time.perf_counter() - started) * 1000,
            outcomes=tuple(outcomes),
            failed_checks=tuple(failed),
            validated_rows=validated_rows,
        )

    def _rows_to_validate(self, symbol: str, window: Sequence[Candle], keys: list[Hashable | None]) -> list[int]:
        """Indexes of the bars gx must see: those not known good, and the newest bar (freshness is decided on it)."""
        known = self._known_good.get(symbol, set())
        newest = newest_index(window)
        return [i for i, key in enumerate(keys) if i == newest or key is None or key not in known]

    def _remember(
        self,
        windows: Mapping[str, Sequence[Candle]],
        keys: Mapping[str, list[Hashable | None]],
        rows: Mapping[str, list[int]],
        bad: Sequence[Outcome],
    ) -> None:
        """Keep, per symbol, the keys of this window's bars known good: those known before and those gx just passed
        (every bar validated, minus any bar a failed expectation named; nothing new when a failure names no bar)."""
        named = {(str(row.get("symbol")), float(row["start"])) for o in bad for row in o.unexpected_rows}
        attributable = all(o.error is None and o.unexpected_rows for o in bad)
        known: dict[str, set[Hashable]] = {}
        for symbol, window in windows.items():
            before = self._known_good.get(symbol, set())
            validated = set(rows[symbol])
            good: set[Hashable] = set()
            for i, key in enumerate(keys[symbol]):
                if key is None:
                    continue
                if i not in validated:
                    good.add(key)  # skipped because it was known good
                elif attributable and (symbol, window[i].start.timestamp()) not in named:
                    good.add(key)
                elif key in before:
                    good.add(key)  # the newest bar, re-validated for freshness only
            known[symbol] = good
        self._known_good = known

    def _lines(self, outcome: Outcome) -> list[str]:
        """One line per symbol with offending bars (the first few named), for the log and the artifact."""
        check = self._by_name.get(outcome.check)
        problem = check.problem if check else outcome.check
        if outcome.error is not None:
            return [f"market data: {problem}: the expectation could not run: {outcome.error}"]
        by_symbol: dict[str, list[Mapping[str, Any]]] = {}
        for row in outcome.unexpected_rows:
            by_symbol.setdefault(str(row.get("symbol")), []).append(row)
        if not by_symbol:
            return [f"market data: {problem} ({outcome.unexpected_count} bars)"]
        lines = []
        for symbol, rows in sorted(by_symbol.items())[:MAX_LINES_PER_CHECK]:
            shown = "; ".join(self.describe_bar(outcome.check, row) for row in rows[:MAX_BARS_PER_LINE])
            more = f" (+{len(rows) - MAX_BARS_PER_LINE} more)" if len(rows) > MAX_BARS_PER_LINE else ""
            lines.append(f"{symbol}: {problem}: {shown}{more}")
        if len(by_symbol) > MAX_LINES_PER_CHECK:
            lines.append(f"market data: {problem} in {len(by_symbol) - MAX_LINES_PER_CHECK} more symbols")
        return lines

    def describe_bar(self, check: str, row: Mapping[str, Any]) -> str:
        """One offending bar in words: "gap (step 120 s) at 2026-11-21T10:03:00+00:00"."""
        at = f"at {bar_time(row)}"
        if check == "bar_spacing":
            step = float(row["step_seconds"])
            if step == 0:
                return f"duplicate timestamp {at}"
            if step < 0:
                return f"out of order (step {step:g} s) {at}"
            if step > self.interval_seconds:
                return f"gap (step {step:g} s) {at}"
            return f"misaligned (step {step:g} s) {at}"
        if check == "positive_prices":
            return f"price {_number(row['min_price'])} {at}"
        if check == "volume_non_negative":
            return f"volume {_number(row['volume'])} {at}"
        if check == "high_consistent":
            return f"high {_number(row['high'])} < max(open, close) {_number(row['body_high'])} {at}"
        if check == "low_consistent":
            return f"low {_number(row['low'])} > min(open, close) {_number(row['body_low'])} {at}"
        if check == "freshness":
            age = float(row["last_bar_age_seconds"])
            if age < 0:
                return f"newest bar starts {-age:g} s in the future ({at})"
            return f"newest bar {age:g} s old (max {self.max_age_seconds:g} s) {at}"
        return at


def market_data_frame(
    candles: Mapping[str, Sequence[Candle]],
    now: datetime,
    interval_seconds: float,
    *,
    rows: Mapping[str, Collection[int]] | None = None,
) -> pd.DataFrame:
    """Every symbol's bars in one DataFrame, with the derived columns the suite checks (see the module docstring);
    `rows` keeps only those bars of each symbol (by index in its window; derived columns still come from the whole
    window). `start` is the bar's start in epoch seconds (bar_time() words it); numpy keeps this to ~1 ms for 600
    bars."""
    import numpy as np
    import pandas as pd

    symbols: list[str] = []
    stamps: list[float] = []
    steps: list[float] = []
    ages: list[float] = []
    values: list[tuple[float, float, float, float, float]] = []
    reference = now.timestamp()
    for symbol, window in candles.items():
        times = [c.start.timestamp() for c in window]
        newest = max(range(len(times)), key=times.__getitem__)
        keep = range(len(window)) if rows is None else sorted(rows.get(symbol, ()))
        for i in keep:
            c = window[i]
            symbols.append(symbol)
            stamps.append(times[i])
            steps.append(times[i] - (times[i - 1] if i else times[0] - interval_seconds))
            ages.append(reference - times[i] if i == newest else math.nan)
            values.append((float(c.open), float(c.high), float(c.low), float(c.close), float(c.volume)))
    ohlcv = np.array(values, dtype=float).reshape(-1, 5)
    open_, high, low, close, volume = ohlcv.T
    return pd.DataFrame(
        {
            "symbol": symbols,
            "start": stamps,
            "step_seconds": steps,
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": volume,
            "last_bar_age_seconds": ages,
            "min_price": np.fmin.reduce(ohlcv[:, :4], axis=1),  # NaN-skipping, like gx: NaN is complete_bars' job
            "body_high": np.fmax(open_, close),
            "body_low": np.fmin(open_, close),
            "complete": ~np.isnan(ohlcv).any(axis=1),
        }
    )


def newest_index(window: Sequence[Candle]) -> int:
    """The index of the bar with the latest start (the first of equals): the one bar whose age is checked."""
    return max(range(len(window)), key=lambda i: window[i].start)


def bar_keys(window: Sequence[Candle]) -> list[Hashable | None]:
    """Per bar, what its per-row checks depend on: the bar's values and its predecessor's start, as one flat tuple
    (hashed in C; None when it cannot be hashed: a signalling NaN, never remembered, always validated)."""
    keys: list[Hashable | None] = []
    previous = None
    for c in window:
        key: Hashable | None = (c.start, c.open, c.high, c.low, c.close, c.volume, previous)
        try:
            hash(key)
        except TypeError:
            key = None
        keys.append(key)
        previous = c.start
    return keys


def bar_time(row: Mapping[str, Any]) -> str:
    """An offending row's bar start (epoch seconds in the frame) as ISO-8601 UTC."""
    return datetime.fromtimestamp(float(row["start"]), tz=UTC).isoformat()


def _number(value: Any) -> str:
    return f"{float(value):g}"


__all__ = ["GateResult", "MarketDataGate", "Outcome", "bar_keys", "market_data_checks", "market_data_frame"]
