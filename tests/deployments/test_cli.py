"""The runbook's perps-bot command lines, run as the installed console script on the paper exchange."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from trader.brokers.simulated import SimulatedExchange
from trader.ledger import Ledger
from trader.market import ReplayMarketData
from trader.strategy import MovingAverageCrossover

ROOT = Path(__file__).resolve().parents[2]
PERPS_BOT = Path(sys.executable).parent / "perps-bot"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A working folder with no state: the CLI writes var/ here."""
    return tmp_path


def perps_bot(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    assert PERPS_BOT.exists(), f"console script missing: {PERPS_BOT}; install the project with pip install -e ."
    prefixes = ("COINBASE_", "RISK_", "PERPS_", "BROKER", "MARKET_DATA")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    clean.update({"STATE_DIR": str(home / "var/state"), "LOG_DIR": str(home / "var/logs"), **env})
    return subprocess.run([str(PERPS_BOT), *args], cwd=home, env=clean, capture_output=True, text=True, timeout=120)


def ledger_of(home: Path) -> Ledger:
    return Ledger(f"sqlite:///{home / 'var/state/ledger.db'}")


def test_dev_fast_runs_one_cycle_and_exits_zero(home: Path) -> None:
    result = perps_bot(home, "--profile", "dev", "--dev-fast")

    assert result.returncode == 0, result.stderr
    assert "1 cycle(s)" in result.stdout
    sessions = ledger_of(home).list_sessions()
    assert [(s.profile, s.status, s.cycles) for s in sessions] == [("dev", "stopped", 1)]
    log = (home / "var/logs/perps_bot.log").read_text()
    pnl = [line for line in log.splitlines() if "PnL" in line]  # the runbook's grep "PnL" var/logs/perps_bot.log
    assert pnl and all("heartbeat" in line and "PnL daily=" in line and "equity=" in line for line in pnl)


def test_consecutive_dev_fast_runs_continue_the_same_paper_account(home: Path) -> None:
    def saved_cursor() -> int:  # the account's clock, or the clock file's when only the clock moved since
        paper = SimulatedExchange(ReplayMarketData(), state_path=home / "var/state/paper_exchange.json", read_only=True)
        return paper.market.cursor

    perps_bot(home, "--profile", "dev", "--dev-fast")
    first = saved_cursor()
    perps_bot(home, "--profile", "dev", "--dev-fast")

    assert saved_cursor() == first + 1


def crossing_start() -> int:
    """A replay position where the 2/4 crossover fires with no position held (computed, not hard-coded)."""
    market = ReplayMarketData()
    exchange = SimulatedExchange(market)
    strategy = MovingAverageCrossover(2, 4, Decimal("1000"))
    product = exchange.get_product("BTC-USD")
    while not strategy.decide(product, market.history("BTC-USD", strategy.warmup), Decimal(0)):
        assert market.advance()
    return market.cursor


def test_canary_dry_run_prints_what_would_be_sent_and_sends_nothing(home: Path) -> None:
    env = {"STRATEGY_FAST_WINDOW": "2", "STRATEGY_SLOW_WINDOW": "4", "MARKET_DATA_START": str(crossing_start())}

    # canary trades on live prices by default; MARKET_DATA=replay keeps this run on the recorded bars
    result = perps_bot(home, "--profile", "canary", "--dry-run", MARKET_DATA="replay", **env)

    assert result.returncode == 0, result.stderr
    assert "would send: buy" in result.stdout and "BTC-USD market" in result.stdout
    assert not (home / "var/state/paper_exchange.json").exists()
    assert ledger_of(home).list_orders() == []


def test_account_snapshot_lists_balances_permissions_and_fee_tier(home: Path) -> None:
    result = perps_bot(home, "--account-snapshot")

    assert result.returncode == 0, result.stderr
    assert "USD" in result.stdout and "100000" in result.stdout
    assert "can_view=True can_trade=True can_transfer=False" in result.stdout
    assert "fee tier:" in result.stdout and "taker=0.006" in result.stdout


def test_preview_market_buy_prints_the_estimate_and_writes_nothing(home: Path) -> None:
    result = perps_bot(
        home,
        "--preview-order",
        "--order-symbol",
        "BTC-USD",
        "--order-side",
        "buy",
        "--order-type",
        "market",
        "--order-quantity",
        "0.01",
    )

    assert result.returncode == 0, result.stderr
    assert "estimated price" in result.stdout and "commission" in result.stdout
    assert not (home / "var/state/ledger.db").exists()


def test_preview_then_apply_an_edit_of_a_resting_limit_order(home: Path) -> None:
    placed = perps_bot(
        home,
        "--place-order",
        "--order-symbol",
        "BTC-USD",
        "--order-side",
        "buy",
        "--order-type",
        "limit",
        "--order-quantity",
        "0.01",
        "--order-price",
        "1000",
        "--order-client-id",
        "demo-001",
    )
    assert placed.returncode == 0, placed.stderr
    order_id = placed.stdout.split("order_id=")[1].split()[0]

    preview = perps_bot(
        home, "--preview-order", "--order-id", order_id, "--order-quantity", "0.02", "--order-price", "1100"
    )
    assert preview.returncode == 0, preview.stderr
    spec = preview.stdout.split("--apply-order-edit ")[1].split()[0]
    edited = perps_bot(home, "--apply-order-edit", spec)

    assert edited.returncode == 0, edited.stderr
    assert "quantity=0.02" in edited.stdout and "limit_price=1100" in edited.stdout
    assert ledger_of(home).get_order("demo-001").quantity == Decimal("0.01")


def test_reduce_only_stop_exit_is_refused_without_a_position(home: Path) -> None:
    result = perps_bot(
        home,
        "--preview-order",
        "--order-symbol",
        "BTC-USD",
        "--order-side",
        "sell",
        "--order-type",
        "stop_limit",
        "--order-quantity",
        "0.01",
        "--order-price",
        "60000",
        "--order-stop",
        "59500",
        "--order-reduce-only",
    )

    assert result.returncode == 2
    assert "reduce-only" in result.stderr


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--order-symbol", "DOGE-EUR", "--order-quantity", "1"], "DOGE-EUR"),
        (["--order-symbol", "BTC-USD", "--order-quantity", "0"], "0"),
        (["--order-symbol", "BTC-USD", "--order-quantity", "-1"], "-1"),
        (["--order-symbol", "BTC-USD", "--order-quantity", "abc"], "--order-quantity"),
        (
            [
                "--order-symbol",
                "BTC-USD",
                "--order-quantity",
                "0.01",
                "--order-type",
                "limit",
                "--order-price",
                "65000.005",
            ],
            "quote_increment",
        ),
        (["--order-symbol", "BTC-USD", "--order-quantity", "0.01", "--order-type", "limit"], "price"),
        (["--profile", "staging", "--order-symbol", "BTC-USD", "--order-quantity", "0.01"], "--profile"),
    ],
    ids=[
        "unknown-symbol",
        "zero-quantity",
        "negative-quantity",
        "not-a-number",
        "price-off-tick",
        "limit-without-price",
        "unknown-profile",
    ],
)
def test_bad_order_input_is_one_line_exit_2_nothing_sent_nothing_written(
    home: Path, args: list[str], names: str
) -> None:
    result = perps_bot(home, "--place-order", "--order-side", "buy", *args)

    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert names in result.stderr
    assert not (home / "var/state").exists() or not any((home / "var/state").iterdir())


def test_spot_reduce_only_runs_on_paper_when_asked_and_refuses_without_credentials(home: Path) -> None:
    refused = perps_bot(home, "--profile", "spot", "--reduce-only")
    paper = perps_bot(
        home, "--profile", "spot", "--reduce-only", "--cycles", "2", "--interval", "0", BROKER="simulated"
    )

    assert refused.returncode == 2 and "COINBASE_API_KEY" in refused.stderr
    assert paper.returncode == 0, paper.stderr
    assert "2 cycle(s)" in paper.stdout


def test_each_cycle_is_one_line_when_the_output_is_piped(home: Path) -> None:
    result = perps_bot(home, "--profile", "dev", "--cycles", "3", "--interval", "0", TRADING_SYMBOLS="BTC-USD,ETH-USD")

    assert result.returncode == 0, result.stderr
    cycles = [line for line in result.stdout.splitlines() if line.startswith("cycle ")]
    assert len(cycles) == 3 and all(line.endswith(" ms") and len(line) > 80 for line in cycles), result.stdout
