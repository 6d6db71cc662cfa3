"""The runbook's morning checklist as checks: each returns pass, warn or fail with its evidence.

Thresholds are the runbook's where it gives one (daily loss -1% warn / -2% critical) and stated here otherwise.
Every check is independent and never raises: a check that cannot run is a `fail` saying why.
"market data quality" runs the Great Expectations market-data suite (trader/quality/market_data.py) over the last
24 h of 1-minute candles; it pays gx's import here, never in the bot.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from trader.brokers.base import Broker
from trader.coinbase.ws import MAX_CLOCK_SKEW_SECONDS
from trader.ledger import Ledger
from trader.quality.gx_runtime import GateResult
from trader.quality.market_data import MarketDataGate
from trader.settings import Settings
from trader.state.base import ObjectStore

Status = Literal["pass", "warn", "fail"]
RANK = {"pass": 0, "warn": 1, "fail": 2}

HEARTBEAT_WARN = timedelta(minutes=5)
HEARTBEAT_FAIL = timedelta(minutes=15)
# The same as perps-bot preflight's: a JWT's nbf is the local clock, so beyond a second or two requests fail.
CLOCK_SKEW_WARN_S = MAX_CLOCK_SKEW_SECONDS
CLOCK_SKEW_FAIL_S = 2 * MAX_CLOCK_SKEW_SECONDS
DAILY_LOSS_WARN_PCT = Decimal("-1")
DAILY_LOSS_FAIL_PCT = Decimal("-2")
LOG_ERRORS_FAIL = 10
DISK_FREE_WARN = 0.10
DISK_FREE_FAIL = 0.05
BACKUP_WARN = timedelta(hours=26)
BACKUP_FAIL = timedelta(hours=50)
MARKET_CLOCK_NOTE = timedelta(minutes=5)  # a broker clock this far from the wall clock is a replay: say so
LOG_LINE = re.compile(r"^(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ (?P<level>[A-Z]+) ")


@dataclass(frozen=True)
class CheckResult:
    item: str
    status: Status
    evidence: str  # a number, a timestamp or a log excerpt
    detail: str = ""

    def row(self) -> dict[str, Any]:
        return asdict(self)


def worst(results: list[CheckResult]) -> Status:
    return max((r.status for r in results), key=RANK.__getitem__, default="pass")


def guarded(item: str, check: Callable[[], CheckResult]) -> CheckResult:
    """Run a check; an exception becomes a fail naming it (one line), never an aborted checklist."""
    try:
        return check()
    except Exception as error:  # noqa: BLE001 - any failure of a check is that check's result
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        return CheckResult(item, "fail", f"{type(error).__name__}: {first}"[:300], "the check could not run")


# --- preflight ----------------------------------------------------------------------------------------------------


def preflight(settings: Settings, broker: Broker) -> CheckResult:
    """Credentials present and permitted, exchange reachable, clock skew, derivatives gating."""
    notes: list[str] = []
    status: Status = "pass"
    started = time.perf_counter()
    bid, ask = broker.best_bid_ask(settings.symbols[0])
    reach_ms = (time.perf_counter() - started) * 1000
    notes.append(f"{broker.name} reachable: {settings.symbols[0]} {bid}/{ask} in {reach_ms:.0f} ms")
    if broker.name == "coinbase":
        permissions = broker.account_snapshot().permissions
        notes.append(f"key can_view={permissions.can_view} can_trade={permissions.can_trade}")
        if not permissions.can_trade:
            status = "fail"
            notes.append("the key cannot trade")
        if permissions.can_transfer:
            status = _max(status, "warn")
            notes.append("the trading key can also transfer funds")
        server_time = getattr(broker, "server_time", None)
        if server_time is not None:
            skew = abs((server_time() - datetime.now(UTC)).total_seconds())
            notes.append(f"clock skew {skew:.2f} s")
            if skew > CLOCK_SKEW_FAIL_S:
                status = "fail"
            elif skew > CLOCK_SKEW_WARN_S:
                status = _max(status, "warn")
    else:
        notes.append("paper trading: no key needed")
    if settings.coinbase_enable_derivatives and settings.profile != "perps" and broker.name == "coinbase":
        status = _max(status, "warn")
        notes.append(
            f"COINBASE_ENABLE_DERIVATIVES=1 on profile {settings.profile}: unset it unless US futures (CFM) access "
            "is confirmed"
        )
    else:
        notes.append(f"derivatives {'on' if settings.coinbase_enable_derivatives else 'off'}")
    return CheckResult("preflight", status, "; ".join(notes))


def funding_schedule(settings: Settings, broker: Broker, ledger: Ledger, now: datetime) -> CheckResult:
    """The perpetuals runbook's check_funding_schedule: each future traded or held, its rate and next funding time
    (warn beyond |0.001|, the funding_rate_spike level), and the last 24 hours' funding paid or received."""
    from trader.funding import funding_summary

    now = broker.now()  # the account's clock: a replayed paper account's funding is on replay time
    if not settings.coinbase_enable_derivatives:
        return CheckResult("funding schedule", "pass", "derivatives off: no futures, no funding")
    account = broker.futures_account() if hasattr(broker, "futures_account") else None
    held = {p.symbol for p in account.positions} if account is not None else set()
    symbols = sorted(held | {s for s in settings.symbols if broker.get_product(s).futures is not None})
    if not symbols:
        return CheckResult("funding schedule", "pass", "no futures traded or held")
    status: Status = "pass"
    notes = []
    for symbol in symbols:
        product = broker.fresh_product(symbol)
        rate, when = product.funding_rate, product.funding_time
        if rate is None or when is None:
            status = _max(status, "warn")
            notes.append(f"{symbol}: no funding rate or time from the exchange")
            continue
        minutes = max((when - now).total_seconds() / 60, 0)
        notes.append(f"{symbol}{' (held)' if symbol in held else ''}: rate {rate} next at {when:%H:%M} UTC")
        notes[-1] += f" (in {minutes:.0f} min)"
        alert = settings.risk_funding_rate_abs  # the funding_rate guard's threshold (the runbook's 0.001)
        if abs(rate) > Decimal(str(alert)):
            status = _max(status, "warn")
            notes[-1] += f", above |{alert:g}|"
    total = next((r for r in funding_summary(ledger, now - timedelta(hours=24)) if r["symbol"] == "TOTAL"), None)
    notes.append(f"funding 24 h: net {total['net'] if total else '0.00'} USD")
    return CheckResult(
        "funding schedule", status, "; ".join(notes), "" if status == "pass" else "review futures entries"
    )


# --- telemetry ----------------------------------------------------------------------------------------------------


def telemetry_freshness(ledger: Ledger, now: datetime) -> CheckResult:
    """Wall-clock age of the newest ledger heartbeat of any trading session (the bot writes one every few seconds);
    the session's market time (replay or live) is shown beside it, never used for the age."""
    beating = [(_utc(s.last_heartbeat_at), s) for s in ledger.list_sessions() if s.last_heartbeat_at is not None]
    if not beating:
        return CheckResult("telemetry freshness", "warn", "no heartbeat recorded yet", "is the bot running?")
    last, newest = max(beating, key=lambda beat: beat[0])
    age = now - last
    status: Status = "fail" if age > HEARTBEAT_FAIL else "warn" if age > HEARTBEAT_WARN else "pass"
    market = newest.last_market_time
    market_text = f" (market time {_utc(market):%Y-%m-%d %H:%M} UTC)" if market is not None else ""
    ended = ""
    if newest.ended_at is not None:  # nothing is trading: say why the last session ended
        ended = f", session {newest.status}" + (f" ({newest.note})" if newest.note else "")
    return CheckResult(
        "telemetry freshness",
        status,
        f"heartbeat {_age(age)} ago{market_text}, {newest.cycles} cycles{ended}",
        f"last heartbeat {last.isoformat()} (wall clock), session {newest.id}",
    )


def heartbeat_metrics(heartbeat_file: Path, now: datetime) -> CheckResult:
    """The bot's heartbeat file: cycles, market time, wall time."""
    if not heartbeat_file.exists():
        return CheckResult("heartbeat metrics", "warn", f"{heartbeat_file} missing", "the bot has not run here")
    beat = json.loads(heartbeat_file.read_text())
    wall = datetime.fromtimestamp(float(beat["wall_time"]), tz=UTC)
    age = now - wall
    status: Status = "fail" if age > HEARTBEAT_FAIL else "warn" if age > HEARTBEAT_WARN else "pass"
    return CheckResult(
        "heartbeat metrics",
        status,
        f"cycles={beat['cycles']} market_time={beat['market_time']} written {_age(age)} ago",
    )


def guard_counters(heartbeat_file: Path) -> CheckResult:
    """Risk guard trips and refusals since the bot started, and each guard's level now (the runbook's lookback)."""
    if not heartbeat_file.exists():
        return CheckResult("risk guard counters", "warn", "no heartbeat file: counters unknown")
    beat = json.loads(heartbeat_file.read_text())
    counters: dict[str, int] = beat.get("guard_counters", {})
    guards: dict[str, dict] = beat.get("guards", {})
    trips = {k: v for k, v in counters.items() if v}
    critical = sorted(name for name, guard in guards.items() if guard.get("level") == "critical")
    warning = sorted(name for name, guard in guards.items() if guard.get("level") == "warning")
    tripped = any(k.endswith(("_trip", "_warning")) for k in trips) or "kill_switch" in trips
    status: Status = "fail" if critical else "warn" if warning or tripped else "pass"
    parts = [f"critical now: {', '.join(critical)}"] if critical else []
    parts += [f"warning now: {', '.join(warning)}"] if warning else []
    parts.append(", ".join(f"{k}={v}" for k, v in sorted(trips.items())) or "no guard trips")
    return CheckResult("risk guard counters", status, "; ".join(parts))


# --- PnL and positions --------------------------------------------------------------------------------------------


def overnight_pnl_and_positions(ledger: Ledger, broker: Broker, now: datetime) -> CheckResult:
    """Fills of the last 24 h with pandas (count, notional, fees, realized flow) and the open positions.

    The window and the day are on the broker's clock, the one the bot stamps fills and balance snapshots with:
    the simulated exchange's replay time is years behind `now` (the wall clock), so a wall-clock window would find
    no fills and no start-of-day equity on the paper bot and always pass.
    """
    import pandas as pd  # lazily: the checklist process should not pay pandas' import before it is needed

    clock = broker.now()
    since = clock - timedelta(hours=24)
    fills = pd.DataFrame(
        [
            {
                "symbol": f.symbol,
                "side": f.side,
                "qty": float(f.quantity),
                "price": float(f.price * f.contract_size),  # a future's: per contract
                "fee": float(f.fee),
            }
            for f in ledger.list_fills()
            if since <= _utc(f.filled_at) <= clock
        ],
        columns=["symbol", "side", "qty", "price", "fee"],
    )
    fills["notional"] = fills["qty"] * fills["price"]
    fills["cash"] = fills["notional"].where(fills["side"] == "sell", -fills["notional"]) - fills["fee"]
    positions = {p.symbol: p for p in broker.positions()}
    start_equity = ledger.equity_at_start_of_day(clock.date())
    equity = _equity(broker)
    pnl_pct = (equity - start_equity) / start_equity * 100 if start_equity else Decimal(0)
    status: Status = "fail" if pnl_pct <= DAILY_LOSS_FAIL_PCT else "warn" if pnl_pct <= DAILY_LOSS_WARN_PCT else "pass"
    by_symbol = fills.groupby("symbol").agg(fills=("qty", "size"), fees=("fee", "sum")) if len(fills) else None
    per_symbol = (
        "; ".join(f"{s}: {int(r.fills)} fills, fees {r.fees:.2f}" for s, r in by_symbol.iterrows())
        if by_symbol is not None
        else "no fills"
    )
    held = ", ".join(f"{s} {p.quantity}" for s, p in sorted(positions.items())) or "flat"
    day = "day PnL n/a (no balance snapshot yet today)" if not start_equity else f"day PnL {pnl_pct:.2f}%"
    market = f" (market time {clock:%Y-%m-%d %H:%M} UTC)" if abs(clock - now) > MARKET_CLOCK_NOTE else ""
    return CheckResult(
        "overnight PnL and positions",
        status,
        f"{day}; 24h{market} {len(fills)} fills, notional {fills['notional'].sum():.2f}, "
        f"fees {fills['fee'].sum():.2f} ({per_symbol}); positions: {held}",
    )


def _equity(broker: Broker) -> Decimal:
    total = Decimal(0)
    for balance in broker.balances():
        if balance.total == 0:
            continue
        if balance.currency in ("USD", "USDC"):
            total += balance.total
        else:
            bid, _ = broker.best_bid_ask(f"{balance.currency}-USD")
            total += balance.total * bid
    return total


# --- market data quality ------------------------------------------------------------------------------------------

GATE_COUNTERS = re.compile(r"bot gate: checked=(?P<checked>\d+) failed=(?P<failed>\d+)")
DAY_OF_BARS = 1440  # 24 h of 1-minute candles


@dataclass(frozen=True)
class DataQualityReport:
    """The checklist item and its artifact table (one row per expectation, then the bot's live gate)."""

    result: CheckResult
    rows: list[dict[str, Any]]


def market_data_quality(
    broker: Broker,
    symbols: Sequence[str],
    heartbeat_file: Path,
    *,
    previous_gate_failed: int | None,
    max_age_seconds: float,
    interval_seconds: float = 60.0,
    bars: int = DAY_OF_BARS,
) -> DataQualityReport:
    """The market-data suite over the last 24 h of candles per symbol, and the bot's live gate counters from its
    heartbeat: fail if the 24 h suite fails, warn if the bot's gate failed a cycle since the previous checklist."""
    gate = MarketDataGate(interval_seconds=interval_seconds, max_age_seconds=max_age_seconds)
    candles = {symbol: broker.candles(symbol, bars) for symbol in symbols}
    suite = gate.check(candles, broker.now(), detail=True)
    rows = _expectation_rows(gate, suite, sorted(symbols))
    checked, failed, last_failures = _gate_counters(heartbeat_file)
    status: Status = "pass" if suite.passed else "fail"
    if checked is None or failed is None:
        live = "bot gate: no gate counters yet"
    else:
        new = (
            failed - previous_gate_failed
            if previous_gate_failed is not None and failed >= previous_gate_failed
            else failed
        )
        window = "since the previous checklist" if previous_gate_failed is not None else "since the bot started"
        live = f"bot gate: {failed} of {checked} cycles failed, {new} {window}"
        if new:
            status = _max(status, "warn")
            live += f" (last: {'; '.join(last_failures[-3:]) or 'not reported'})"
        rows.append(
            {
                "expectation": "bot gate (live cycles)",
                "symbols": "",
                "success": not new,
                "unexpected_count": new,
                "unexpected_percent": round(100 * failed / checked, 3) if checked else 0.0,
                "observed_value": "; ".join(last_failures[-3:]),
            }
        )
    passing = sum(o.success for o in suite.outcomes)
    expectations = f"{passing}/{len(suite.outcomes)} expectations pass"
    day = f"24 h suite: {len(symbols)} symbols, {suite.checked_rows} bars, {expectations}"
    if not suite.passed:
        day += f" - FAILED: {'; '.join(suite.failures[:3])}"
    detail = f"bot gate: checked={checked} failed={failed}" if checked is not None else ""
    return DataQualityReport(CheckResult("market data quality", status, f"{day}; {live}"[:1000], detail), rows)


def previous_gate_failed(results_json: str | None) -> int | None:
    """The bot gate's failed-cycle count the previous checklist saw (kept in its item's detail), or None."""
    if not results_json:
        return None
    for row in json.loads(results_json):
        if row.get("item") == "market data quality":
            match = GATE_COUNTERS.search(str(row.get("detail") or ""))
            return int(match["failed"]) if match else None
    return None


def _expectation_rows(gate: MarketDataGate, suite: GateResult, symbols: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    empty = [line.split(":")[0] for line in suite.failures if line.endswith(": no candles")]
    if empty:
        rows.append(
            {
                "expectation": "no_candles",
                "symbols": ", ".join(empty),
                "success": False,
                "unexpected_count": len(empty),
                "unexpected_percent": round(100 * len(empty) / len(symbols), 3),
                "observed_value": "no candles returned",
            }
        )
    for outcome in suite.outcomes:
        offending = sorted({str(row.get("symbol")) for row in outcome.unexpected_rows})
        examples = [
            f"{row.get('symbol')}: {gate.describe_bar(outcome.check, row)}" for row in outcome.unexpected_rows[:2]
        ]
        rows.append(
            {
                "expectation": outcome.check,
                "symbols": ", ".join(offending if not outcome.success else symbols),
                "success": outcome.success,
                "unexpected_count": outcome.unexpected_count,
                "unexpected_percent": round(outcome.unexpected_percent, 3),
                "observed_value": outcome.error or outcome.observed_value or "; ".join(examples),
            }
        )
    return rows


def _gate_counters(heartbeat_file: Path) -> tuple[int | None, int | None, list[str]]:
    """The bot's live data gate counters ("data_gate" in its heartbeat), or Nones when it has published none."""
    if not heartbeat_file.exists():
        return None, None, []
    gate = json.loads(heartbeat_file.read_text()).get("data_gate")
    if not isinstance(gate, dict):
        return None, None, []
    return int(gate.get("checked", 0)), int(gate.get("failed", 0)), [str(x) for x in gate.get("last_failures", [])]


# --- logs, disk, database, backups ---------------------------------------------------------------------------------


def log_scan(log_file: Path, since: datetime | None) -> CheckResult:
    """ERROR/CRITICAL lines in perps_bot.log since the previous run of this checklist."""
    if not log_file.exists():
        return CheckResult("ERROR/CRITICAL scan", "warn", f"{log_file} missing")
    hits: list[str] = []
    with log_file.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            match = LOG_LINE.match(line)
            if not match or match["level"] not in ("ERROR", "CRITICAL"):
                continue
            at = datetime.strptime(match["ts"], "%Y-%m-%d %H:%M:%S").astimezone(UTC)
            if since is None or at >= since:
                hits.append(line.strip())
    window = f"since {since.isoformat()}" if since else "in the whole log"
    if not hits:
        return CheckResult("ERROR/CRITICAL scan", "pass", f"0 lines {window}")
    status: Status = "fail" if len(hits) >= LOG_ERRORS_FAIL else "warn"
    return CheckResult("ERROR/CRITICAL scan", status, f"{len(hits)} lines {window}; last: {hits[-1][:200]}")


def disk_space(path: Path) -> CheckResult:
    path.mkdir(parents=True, exist_ok=True)
    usage = shutil.disk_usage(path)
    free = usage.free / usage.total
    status: Status = "fail" if free < DISK_FREE_FAIL else "warn" if free < DISK_FREE_WARN else "pass"
    return CheckResult(
        "disk space", status, f"{usage.free / 2**30:.1f} GiB free of {usage.total / 2**30:.1f} ({free:.0%})"
    )


def database(ledger: Ledger) -> CheckResult:
    """Connectivity (SELECT 1 round trip) and size of the ledger database."""
    ms = ledger.ping()
    size = ledger.database_size()
    counts = ledger.counts()
    return CheckResult(
        "database size and connectivity",
        "pass",
        f"{ledger.backend} answered in {ms:.1f} ms; {size / 2**20:.1f} MiB; "
        f"{counts['orders']} orders, {counts['fills']} fills",
    )


def backup_age(cold: ObjectStore, now: datetime) -> CheckResult:
    """Age of the newest verified backup manifest in the cold tier (backups/<kind>/*.manifest.json)."""
    manifests = [n for n in cold.list("backups/") if n.endswith(".manifest.json")]
    newest: datetime | None = None
    for name in manifests:
        manifest = json.loads(cold.get(name))
        if not manifest.get("verified"):
            continue
        created = datetime.fromisoformat(str(manifest["created_at"]))
        newest = created if newest is None or created > newest else newest
    if newest is None:
        return CheckResult("backup age", "warn", "no verified backup yet", "run the daily-backup deployment")
    age = now - newest
    status: Status = "fail" if age > BACKUP_FAIL else "warn" if age > BACKUP_WARN else "pass"
    return CheckResult("backup age", status, f"newest verified backup {newest.isoformat()} ({_age(age)} old)")


def _utc(at: datetime) -> datetime:
    """An aware UTC datetime (a naive one from the ledger or a manifest is UTC already)."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _age(delta: timedelta) -> str:
    seconds = max(delta.total_seconds(), 0)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _max(a: Status, b: Status) -> Status:
    return a if RANK[a] >= RANK[b] else b
