"""The one place that picks implementations from settings: broker, ledger, strategy, risk, bot."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from trader.alerts.incidents import IncidentDesk
from trader.brokers.base import Broker
from trader.ledger import Ledger
from trader.market.source import MarketDataSource
from trader.risk import RiskManager
from trader.risk.incidents import GuardIncidents
from trader.risk.monitor import GuardMonitor, rules_from_settings
from trader.settings import Settings
from trader.strategy import MovingAverageCrossover, Strategy

if TYPE_CHECKING:
    from trader.bot import Mode, TradingBot
    from trader.brokers.coinbase_user import UserOrderStream
    from trader.metrics.exporter import MetricsServer
    from trader.quality.market_data import MarketDataGate
    from trader.state.checkpoints import CheckpointStore
    from trader.state.manager import StateManager


@contextmanager
def open_ledger(settings: Settings, *, migrate: bool = True) -> Iterator[Ledger]:
    """The ledger of the settings' account for one piece of work (a task, a CLI command), its connections closed
    when the work ends."""
    with Ledger(settings.database_url, account=settings.account, migrate=migrate) as ledger:
        yield ledger


def build_broker(settings: Settings, *, persist: bool = True, read_only: bool = False) -> Broker:
    """The broker for this profile; the simulated exchange keeps its paper account in the state folder."""
    if settings.broker_kind == "coinbase":
        from trader.brokers.coinbase import CoinbaseBroker

        return CoinbaseBroker.from_settings(settings)
    from trader.brokers.simulated import SimulatedExchange

    # Paper accounts on replayed and on live prices live in separate files: their market clocks differ.
    name = "paper_exchange_live.json" if settings.market_data != "replay" else "paper_exchange.json"
    state_path = settings.state_dir / name if persist else None
    return SimulatedExchange(
        build_market_data(settings),
        state_path=state_path,
        read_only=read_only,
        derivatives=settings.coinbase_enable_derivatives,
    )


def build_market_data(settings: Settings) -> MarketDataSource:
    """Replayed candles (MARKET_DATA=replay) or Coinbase's public live data (MARKET_DATA=coinbase, no key; with
    coinbase-ws the best bid/ask from the WebSocket ticker)."""
    if settings.market_data == "coinbase-ws":
        from trader.market.coinbase_ws import CoinbaseWsMarketData

        return CoinbaseWsMarketData.from_settings(settings)
    if settings.market_data == "coinbase":
        from trader.market.coinbase_live import CoinbaseLiveMarketData

        return CoinbaseLiveMarketData.from_settings(settings)
    from trader.market import ReplayMarketData

    return ReplayMarketData(settings.market_data_file, start=settings.market_data_start, wrap=settings.market_data_loop)


def build_strategy(settings: Settings) -> Strategy:
    return MovingAverageCrossover(
        settings.strategy_fast_window, settings.strategy_slow_window, settings.position_size_usd
    )


def build_risk(settings: Settings) -> RiskManager:
    """Pre-trade checks plus every runbook guard with the thresholds from the settings."""
    return RiskManager(
        settings.risk_max_position_usd,
        settings.risk_daily_loss_limit_pct,
        monitor=GuardMonitor(rules_from_settings(settings)),
    )


def build_bot(
    settings: Settings, *, mode: Mode | None = None, broker: Broker | None = None, ledger: Ledger | None = None
) -> TradingBot:
    """A ready TradingBot: paper on the simulated exchange, live on Coinbase, or dry-run (nothing sent)."""
    from trader.bot import TradingBot  # the bot and its state tiers (redis): loaded only to build a bot

    broker = broker or build_broker(settings, persist=mode != "dry_run")
    attach_ws_market_data(settings, broker)
    mode = mode or ("paper" if broker.name == "simulated" else "live")
    checkpoints = state = incidents = None
    # A bot stopped mid-transaction (its machine lost) holds the lease row at most one TTL (trader/ledger/db.py).
    ledger = ledger or Ledger(
        settings.database_url, account=settings.account, idle_in_transaction_seconds=settings.lease_ttl_seconds
    )
    if mode != "dry_run":
        state, checkpoints = build_state(settings)
        incidents = GuardIncidents(IncidentDesk.on(ledger, settings))
    return TradingBot(
        settings,
        broker,
        ledger,
        build_strategy(settings),
        build_risk(settings),
        mode=mode,
        heartbeat_file=None if mode == "dry_run" else Path(settings.state_dir) / "heartbeat.json",
        checkpoints=checkpoints,
        state=state,
        gate=build_gate(settings),
        incidents=incidents,
        user_orders=build_user_orders(settings, broker) if mode != "dry_run" else None,
    )


def attach_ws_market_data(settings: Settings, broker: Broker) -> None:
    """MARKET_DATA=coinbase-ws for a live Coinbase broker: its touch from the WebSocket ticker, its bars fetched once
    closed (the paper exchange gets the same source from build_market_data)."""
    if settings.market_data != "coinbase-ws" or broker.name != "coinbase":
        return
    from trader.brokers.coinbase import CoinbaseBroker
    from trader.market.coinbase_ws import CoinbaseWsMarketData

    if isinstance(broker, CoinbaseBroker) and broker.market is None:
        broker.market = CoinbaseWsMarketData.from_settings(settings)


def build_user_orders(settings: Settings, broker: Broker) -> UserOrderStream | None:
    """The WebSocket user channel beside a live Coinbase broker (ORDER_UPDATES=coinbase-ws); not started."""
    if settings.order_updates != "coinbase-ws" or broker.name != "coinbase":
        return None
    import time

    from trader.brokers.coinbase import CoinbaseBroker
    from trader.brokers.coinbase_user import UserOrderStream

    live = broker if isinstance(broker, CoinbaseBroker) else CoinbaseBroker.from_settings(settings)
    return UserOrderStream.from_settings(settings, clock_skew=lambda: time.time() - live.server_time().timestamp())


def build_gate(settings: Settings) -> MarketDataGate | None:
    """The Great Expectations gate on each cycle's candles (DATA_GATE_ENABLED); gx itself loads later."""
    if not settings.data_gate_enabled:
        return None
    from trader.quality.market_data import MarketDataGate

    return MarketDataGate(interval_seconds=60.0, max_age_seconds=settings.risk_max_data_age_seconds)


def build_state(settings: Settings) -> tuple[StateManager, CheckpointStore]:
    """The tiered StateManager (Redis or in-process, SQL warm) and the checkpoint store (SQL warm + cold).
    A cold-tier outage is recorded in state as system:s3_available."""
    from trader.state.checkpoints import checkpoint_store_from_settings
    from trader.state.cold import cold_store_from_settings
    from trader.state.manager import StateManager

    def s3_available(up: bool) -> None:
        state.set("system:s3_available", up)

    cold = cold_store_from_settings(settings, on_availability=s3_available)
    state = StateManager.from_settings(settings, cold=cold)
    return state, checkpoint_store_from_settings(settings, cold=cold)


def start_metrics(settings: Settings, bot: TradingBot) -> MetricsServer | None:
    """The Prometheus exporter and /health for this bot on METRICS_HOST:METRICS_PORT (METRICS_ENABLED), and the
    --metrics-file the bot rewrites every cycle (METRICS_FILE). A taken port is logged; trading goes on."""
    if not (settings.metrics_enabled or settings.metrics_file):
        return None
    from trader.errors import ConfigError
    from trader.metrics.exporter import BotMetrics, MetricsServer

    stale_after = max(180.0, 3 * settings.cycle_interval_seconds)
    ledger = bot.ledger

    def open_incidents() -> list[tuple[str, str]]:
        return [(incident.fingerprint, incident.severity) for incident in ledger.open_incidents()]

    bot.attach_metrics(
        BotMetrics(
            account=settings.account,
            stale_after_seconds=stale_after,
            disk_path=Path(settings.state_dir),
            open_incidents=open_incidents,
        )
    )
    if not settings.metrics_enabled:
        return None
    assert bot.metrics is not None
    try:
        server = MetricsServer(bot.metrics, settings.metrics_host, settings.metrics_port).start()
    except ConfigError as error:
        logging.getLogger(__name__).error("metrics exporter not started: %s", error)
        return None
    logging.getLogger(__name__).info("metrics on %s/metrics, health on %s/health", server.url, server.url)
    return server
