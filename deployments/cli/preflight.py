"""perps-bot preflight [--profile P]: the perpetuals runbook's startup checks before a bot is started
(production_preflight, preflight_check, capability_probe, check_market_status, validate_config).

One table row per check, each on its own (a failing one does not stop the others): settings valid, the exchange
reachable with the key authenticated and its permissions and portfolio type, derivatives access when enabled, each
symbol's product status (online, cancel_only, limit_only, post_only, trading_disabled), the clock against the
exchange's (JWTs fail beyond a second or two), and Redis, the ledger database and cold storage reachable. Exit 0
when every check passes, 1 with a warning, 2 with a failure.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from rich.table import Table
from rich.text import Text

from deployments.cli.output import say, wide
from trader.brokers.base import Broker
from trader.checklists.daily import CheckResult, guarded
from trader.coinbase.ws import MAX_CLOCK_SKEW_SECONDS
from trader.settings import Settings

EXIT = {"pass": 0, "warn": 1, "fail": 2}
STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red"}
RESTRICTED = {"cancel_only", "limit_only", "post_only"}
# A JWT's nbf is the local clock: ahead of the exchange by more than a second or two, requests are refused.
SKEW_WARN_S, SKEW_FAIL_S = MAX_CLOCK_SKEW_SECONDS, 2 * MAX_CLOCK_SKEW_SECONDS


def preflight_command(settings: Settings) -> int:
    from trader.runtime import build_broker

    results = [settings_check(settings)]
    broker: Broker | None = None
    try:
        broker = build_broker(settings, persist=False, read_only=True)
    except Exception as error:  # noqa: BLE001 - a broker that cannot be built is the exchange check's failure
        results.append(CheckResult("exchange", "fail", f"{type(error).__name__}: {error}"[:300]))
    if broker is not None:
        results.append(guarded("exchange and key", lambda: exchange_check(settings, broker)))
        results.append(guarded("derivatives", lambda: derivatives_check(settings, broker)))
        for symbol in settings.symbols:
            results.append(guarded(f"product {symbol}", _bind(product_check, broker, symbol)))
        results.append(guarded("clock skew", lambda: clock_check(broker)))
    results.append(guarded("redis", lambda: redis_check(settings)))
    results.append(guarded("ledger database", lambda: ledger_check(settings)))
    results.append(guarded("cold storage", lambda: cold_check(settings)))
    table = Table(title=f"preflight: account {settings.account}, profile {settings.profile}")
    for column in ("check", "result", "detail"):
        table.add_column(column)
    for result in results:
        table.add_row(result.item, Text(result.status.upper(), style=STYLE[result.status]), result.evidence)
    wide().print(table)
    worst = max((EXIT[r.status] for r in results), default=0)
    say(f"preflight: {('PASS', 'WARN', 'FAIL')[worst]} ({len(results)} checks)")
    return worst


def settings_check(settings: Settings) -> CheckResult:
    return CheckResult(
        "settings",
        "pass",
        f"profile {settings.profile}, broker {settings.broker_kind}, symbols {', '.join(settings.symbols)}, market "
        f"data {settings.market_data}, order updates {settings.order_updates}",
    )


def exchange_check(settings: Settings, broker: Broker) -> CheckResult:
    if broker.name != "coinbase":
        bid, ask = broker.best_bid_ask(settings.symbols[0])
        return CheckResult(
            "exchange and key", "pass", f"paper trading, no key needed; {settings.symbols[0]} {bid}/{ask}"
        )
    permissions = broker.account_snapshot().permissions
    detail = (
        f"authenticated; can_view={permissions.can_view} can_trade={permissions.can_trade} "
        f"can_transfer={permissions.can_transfer} portfolio {permissions.portfolio_type}"
    )
    if not (permissions.can_view and permissions.can_trade):
        return CheckResult("exchange and key", "fail", f"{detail}: the key cannot view and trade")
    if permissions.can_transfer:
        return CheckResult("exchange and key", "warn", f"{detail}: use a trading key without transfer")
    return CheckResult("exchange and key", "pass", detail)


def derivatives_check(settings: Settings, broker: Broker) -> CheckResult:
    if not settings.coinbase_enable_derivatives:
        return CheckResult("derivatives", "pass", "off (COINBASE_ENABLE_DERIVATIVES unset)")
    if settings.profile != "perps" and broker.name == "coinbase":  # live futures outside the perps profile
        return CheckResult(
            "derivatives",
            "warn",
            f"COINBASE_ENABLE_DERIVATIVES=1 on profile {settings.profile}: live futures belong to profile perps",
        )
    futures = getattr(broker, "futures_account", None)
    if futures is None:
        return CheckResult("derivatives", "warn", "on, but this broker has no futures account")
    account = futures()
    where = "paper futures account" if broker.name == "simulated" else "futures account"
    return CheckResult(
        "derivatives",
        "pass",
        f"{where} readable: buying power {account.buying_power} USD, liquidation buffer "
        f"{account.liquidation_buffer_pct}%, {len(account.positions)} positions",
    )


def product_check(broker: Broker, symbol: str) -> CheckResult:
    product = broker.get_product(symbol)
    status = "fail" if product.status == "trading_disabled" or product.trading_disabled else "pass"
    if product.status in RESTRICTED:
        status = "warn"
    return CheckResult(f"product {symbol}", status, product.status)  # type: ignore[arg-type]


def clock_check(broker: Broker) -> CheckResult:
    server_time = getattr(broker, "server_time", None)
    if server_time is None:
        return CheckResult("clock skew", "pass", "paper trading: the exchange's clock is not used")
    skew = (datetime.now(UTC) - server_time()).total_seconds()
    status = "fail" if abs(skew) > SKEW_FAIL_S else "warn" if abs(skew) > SKEW_WARN_S else "pass"
    side = "ahead of" if skew > 0 else "behind"
    return CheckResult("clock skew", status, f"local clock {abs(skew):.2f} s {side} the exchange's")  # type: ignore[arg-type]


def redis_check(settings: Settings) -> CheckResult:
    if not settings.redis_url:
        return CheckResult("redis", "pass", "not used (REDIS_URL unset: the hot tier is in-process)")
    import redis

    client = redis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
    client.ping()
    return CheckResult("redis", "pass", "answered PING")


def ledger_check(settings: Settings) -> CheckResult:
    from trader.runtime import open_ledger

    with open_ledger(settings, migrate=False) as ledger:
        ms = ledger.ping()
        return CheckResult("ledger database", "pass", f"{ledger.backend} answered in {ms:.1f} ms")


def cold_check(settings: Settings) -> CheckResult:
    from trader.state.cold import cold_store_from_settings

    store = cold_store_from_settings(settings, fallback=False)
    if not store.ping():
        return CheckResult("cold storage", "fail", "not reachable")
    return CheckResult("cold storage", "pass", "reachable")


def _bind(check: Callable[[Broker, str], CheckResult], broker: Broker, symbol: str) -> Callable[[], CheckResult]:
    return lambda: check(broker, symbol)
