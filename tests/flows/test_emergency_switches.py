"""The kill switch and reduce-only as Prefect Variables on a real Prefect server, applied by the bot every cycle."""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path

import pytest
from prefect import flow
from prefect.settings import PREFECT_API_URL, temporary_settings

from deployments.embedded import prefect_env, spawn, stop_children, wait_for_api
from prefect_adapter.controls import BotControls
from prefect_adapter.orchestrator import OrchestratorPoller
from prefect_adapter.variables import parse_switch
from tests.flows.conftest import ROOT, free_port, set_variable
from trader.bot import TradingBot
from trader.brokers.simulated import SimulatedExchange
from trader.domain import Candle, Product, Side
from trader.ledger import Ledger
from trader.market import ReplayMarketData
from trader.risk import RiskControls, RiskManager
from trader.settings import Settings, load_settings
from trader.strategy import OrderIntent, Strategy

pytestmark = pytest.mark.e2e


class BuyEveryCycle(Strategy):
    """Wants a small buy every cycle, so whether an order went out shows what the switches allowed."""

    name = "buy-every-cycle"

    @property
    def warmup(self) -> int:
        return 1

    def decide(self, product: Product, candles: Sequence[Candle], position: Decimal) -> list[OrderIntent]:
        return [OrderIntent(product.symbol, Side.BUY, Decimal("0.001"), "test: buy every cycle")]


@pytest.fixture
def poller(prefect_server: dict[str, str]) -> Iterator[OrchestratorPoller]:
    """The bot's background reader of the Variables, polling fast so a test waits for one poll, not a timer."""
    poller = OrchestratorPoller(None, interval_seconds=0.1).start()
    yield poller
    poller.close()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(profile="dev", state_dir=tmp_path / "state", log_dir=tmp_path / "logs", broker="simulated")


def paper_bot(settings: Settings, controls: BotControls) -> TradingBot:
    bot = TradingBot(
        settings,
        SimulatedExchange(ReplayMarketData()),
        Ledger(settings.database_url),
        BuyEveryCycle(),
        RiskManager(Decimal("1000000"), Decimal("50")),
        mode="paper",
        controls=controls,
    )
    bot.start()
    return bot


def test_kill_switch_variable_stops_new_orders_at_the_next_cycle_after_a_poll_and_trading_resumes_when_cleared(
    clean_variables: None, settings: Settings, poller: OrchestratorPoller
) -> None:
    @flow(name="kill-switch-variable-test")
    def trade_while_the_operator_flips_the_variable() -> list[tuple[int, int]]:
        bot = paper_bot(settings, BotControls(settings, poller.variables))
        sent: list[tuple[int, int]] = []
        for value in (False, True, "1", "off"):
            set_variable("kill_switch", value)
            assert poller.wait_for_poll(10)
            report = bot.run_cycle()
            sent.append((len(report.orders), bot.risk.counters["kill_switch"]))
        bot.stop()
        return sent

    sent = trade_while_the_operator_flips_the_variable()

    # false: an order; true: none (refused, counted); "1" by hand: none; "off": trading resumes
    assert sent == [(1, 0), (0, 1), (0, 2), (1, 2)]


def test_reduce_only_variable_typed_by_hand_refuses_buys(
    clean_variables: None, settings: Settings, poller: OrchestratorPoller
) -> None:
    @flow(name="reduce-only-variable-test")
    def trade_with_reduce_only_on() -> tuple[int, int]:
        bot = paper_bot(settings, BotControls(settings, poller.variables))
        set_variable("reduce_only", "ON")
        assert poller.wait_for_poll(10)
        report = bot.run_cycle()
        bot.stop()
        return len(report.orders), bot.risk.counters["reduce_only"]

    assert trade_with_reduce_only_on() == (0, 1)


def test_a_switch_turned_on_is_logged_once_with_its_source(
    clean_variables: None, settings: Settings, poller: OrchestratorPoller, caplog: pytest.LogCaptureFixture
) -> None:
    controls = BotControls(settings, poller.variables)
    set_variable("kill_switch", True)
    assert poller.wait_for_poll(10)

    with caplog.at_level(logging.WARNING, logger="prefect_adapter.controls"):
        first, second = controls(), controls()

    assert first == second == RiskControls(kill_switch=True, reduce_only=False)
    messages = [r.getMessage() for r in caplog.records if r.name == "prefect_adapter.controls"]
    assert messages == ["kill switch ON (Prefect Variable kill_switch)"]


def test_the_flag_file_and_the_variable_both_count(
    clean_variables: None, settings: Settings, poller: OrchestratorPoller
) -> None:
    controls = BotControls(settings, poller.variables)
    settings.state_dir.mkdir(parents=True)
    (settings.state_dir / "REDUCE_ONLY").touch()
    set_variable("kill_switch", False)
    assert poller.wait_for_poll(10)

    assert controls() == RiskControls(kill_switch=False, reduce_only=True)
    assert controls.sources("reduce_only") == [f"flag file {settings.state_dir / 'REDUCE_ONLY'}"]


@pytest.fixture
def own_prefect_server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A second Prefect server this test may stop: yields its API URL and its process."""
    home = tmp_path / "prefect-home"
    home.mkdir()
    port = free_port()
    env = prefect_env(home, port)
    server = spawn(
        ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)], home / "server.log", env, ROOT
    )
    try:
        wait_for_api(port, timeout=180, process=server)
    except RuntimeError as error:
        stop_children([server])
        pytest.fail(f"Prefect server did not start: {error}")
    yield env["PREFECT_API_URL"], server
    stop_children([server], grace=20)


def test_prefect_api_going_away_keeps_the_last_values_and_warns_once(
    own_prefect_server: tuple[str, subprocess.Popen[bytes]], settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    api_url, server = own_prefect_server
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        set_variable("kill_switch", True)
        poller = OrchestratorPoller(None, interval_seconds=0.2, timeout_seconds=1, api_url=api_url).start()
        controls = BotControls(settings, poller.variables)
        assert poller.wait_for_poll(10) and controls().kill_switch

        stop_children([server], grace=20)
        assert poller.wait_for_poll(10) and poller.api_down
        with caplog.at_level(logging.WARNING, logger="prefect_adapter.controls"):
            started = time.monotonic()
            during = [controls() for _ in range(3)]
            elapsed = time.monotonic() - started
        poller.close()

    assert all(c.kill_switch for c in during), "an outage turned the kill switch off"
    assert elapsed < 0.1, f"three cycles' controls took {elapsed:.2f} s while the API was down"
    outage = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(outage) == 1 and "keeping the last values (kill_switch=ON, reduce_only=OFF)" in outage[0]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        ("1", True),
        ("0", False),
        ("on", True),
        ("OFF", False),
        (" yes ", True),
        ("true", True),
        ('"false"', False),
        (1, True),
        (0, False),
        ("maybe", None),
        (2, None),
        ({"on": True}, None),
    ],
)
def test_parse_switch_understands_values_typed_in_the_ui(value: object, expected: bool | None) -> None:
    assert parse_switch(value) is expected


def test_an_unrecognised_variable_value_counts_as_on(
    clean_variables: None, settings: Settings, poller: OrchestratorPoller
) -> None:
    set_variable("kill_switch", "maybe")
    assert poller.wait_for_poll(10)

    assert BotControls(settings, poller.variables)().kill_switch
