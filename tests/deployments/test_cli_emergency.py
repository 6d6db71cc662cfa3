"""perps-bot kill-switch / reduce-only / cancel-all / flatten without Prefect: paper exchange, SQLite ledger."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from deployments.cli import main
from tests.flows.conftest import free_port
from trader.bot import read_controls
from trader.brokers.simulated import SimulatedExchange
from trader.domain import OrderRequest, OrderStatus, OrderType, Side
from trader.ledger import Ledger
from trader.market import ReplayMarketData
from trader.settings import load_settings

BTC = "BTC-USD"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A paper profile whose state and ledger live in the test's folder; no Prefect API configured."""
    for name in ("PREFECT_API_URL", "PERPS_PROFILE", "COINBASE_API_KEY", "COINBASE_API_SECRET", "COINBASE_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("RISK_KILL_SWITCH_ENABLED", "RISK_REDUCE_ONLY_MODE", "MARKET_DATA", "MARKET_DATA_START"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.setenv("BROKER", "simulated")
    return tmp_path


def account(home: Path) -> SimulatedExchange:
    return SimulatedExchange(ReplayMarketData(), state_path=home / "state" / "paper_exchange.json")


def ledger_of(home: Path) -> Ledger:
    return Ledger(f"sqlite:///{home / 'ledger.db'}")


def trade(home: Path, *, resting: int = 0, holding: str | None = None) -> None:
    exchange, ledger = account(home), ledger_of(home)
    requests = [OrderRequest(BTC, Side.BUY, OrderType.MARKET, Decimal(holding), "entry")] if holding else []
    price = (exchange.best_bid_ask(BTC)[0] / 2).quantize(Decimal("0.01"))
    requests += [
        OrderRequest(BTC, Side.BUY, OrderType.LIMIT, Decimal("0.0001"), f"rest-{n}", price) for n in range(resting)
    ]
    for request in requests:
        ledger.record_pending(request, None, exchange.now())
        ledger.apply_order(exchange.place_order(request))
    ledger.record_fills(exchange.list_fills())
    ledger.dispose()


def open_incidents(home: Path) -> dict[str, str]:
    return {i.fingerprint: i.severity for i in ledger_of(home).open_incidents()}


def test_kill_switch_on_sets_the_flag_cancels_orders_and_opens_a_sev1_incident(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trade(home, resting=3)

    code = main(["kill-switch", "on", "--note", "exchange misbehaving"])

    printed = capsys.readouterr().out
    assert code == 0
    assert read_controls(load_settings()).kill_switch
    assert "kill_switch ON in flag file" in printed and "(was OFF)" in printed
    assert "the flag file was set; the Prefect Variable kill_switch was not: PREFECT_API_URL is not set" in printed
    assert "cancel-all: 3 of 3 working order(s) cancelled in 1 batch(es)" in printed
    assert account(home).list_open_orders() == []
    assert {o.status for o in ledger_of(home).list_orders()} == {OrderStatus.CANCELLED.value}
    assert open_incidents(home) == {"emergency:kill-switch": "SEV-1"}


def test_kill_switch_off_clears_the_flag_and_resolves_the_incident(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["kill-switch", "on"])
    capsys.readouterr()

    code = main(["kill-switch", "off"])

    printed = capsys.readouterr().out
    assert code == 0
    assert not read_controls(load_settings()).kill_switch
    assert "kill_switch OFF in flag file" in printed and "(was ON)" in printed
    assert "incidents resolved: emergency:kill-switch" in printed
    assert open_incidents(home) == {}


def test_kill_switch_status_names_where_it_is_on(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["kill-switch", "on"])
    capsys.readouterr()

    code = main(["kill-switch", "status"])

    printed = capsys.readouterr().out
    assert code == 0
    assert "kill_switch: ON" in printed
    assert "not read: PREFECT_API_URL is not set" in printed


def test_reduce_only_on_then_off_is_idempotent(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reduce-only", "on"]) == 0
    assert main(["reduce-only", "on"]) == 0
    printed = capsys.readouterr().out

    assert read_controls(load_settings()).reduce_only
    assert "reduce_only ON in flag file" in printed and printed.count("(was ON)") == 1
    assert open_incidents(home) == {"emergency:reduce-only": "SEV-1"}

    assert main(["reduce-only", "off"]) == 0
    assert not read_controls(load_settings()).reduce_only


def test_an_unreachable_prefect_api_sets_the_flag_file_and_says_the_variable_was_not(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{free_port()}/api")

    code = main(["reduce-only", "on"])

    printed = capsys.readouterr().out
    assert code == 0
    assert read_controls(load_settings()).reduce_only
    assert "the flag file was set; the Prefect Variable reduce_only was not: unreachable" in printed


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["kill-switch"], "kill-switch: expected one of on, off, status"),
        (["kill-switch", "maybe"], "kill-switch: expected one of on, off, status (got 'maybe')"),
        (["reduce-only", "enable"], "reduce-only: expected one of on, off, status (got 'enable')"),
        (["cancel-all", "now"], "cancel-all: takes no action (got 'now')"),
    ],
)
def test_bad_input_is_one_line_naming_the_argument_and_exit_2(
    home: Path, capsys: pytest.CaptureFixture[str], argv: list[str], named: str
) -> None:
    code = main(argv)

    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == f"perps-bot: error: {named}"
    assert not (home / "state" / "KILL_SWITCH").exists()


def test_cancel_all_cancels_in_batches_and_a_second_run_finds_nothing(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trade(home, resting=120)

    assert main(["cancel-all"]) == 0
    first = capsys.readouterr().out
    assert main(["cancel-all"]) == 0
    second = capsys.readouterr().out

    assert "cancel-all: 120 of 120 working order(s) cancelled in 2 batch(es)" in first
    assert "nothing to cancel" in second
    assert account(home).list_open_orders() == []
    assert open_incidents(home) == {"emergency:cancel-all": "SEV-1"}


def test_flatten_without_yes_refuses_when_not_interactive(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trade(home, holding="0.01")

    code = main(["flatten"])

    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "--yes" in err
    assert {p.symbol: p.quantity for p in account(home).positions()} == {BTC: Decimal("0.01")}
    assert not (home / "state" / "REDUCE_ONLY").exists()


def test_flatten_yes_sells_the_position_reduce_only_once_per_request_id(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trade(home, holding="0.01", resting=1)

    assert main(["flatten", "--yes", "--request-id", "incident-42"]) == 0
    first = capsys.readouterr().out
    assert main(["flatten", "--yes", "--request-id", "incident-42"]) == 0
    second = capsys.readouterr().out

    sells = [f for f in account(home).list_fills() if f.side == Side.SELL]
    assert [f.quantity for f in sells] == [Decimal("0.01")]
    assert account(home).positions() == []
    assert read_controls(load_settings()).reduce_only
    assert "BTC-USD sell 0.01 reduce-only market" in first and "filled: sent" in first
    assert "flatten incident-42: 1 exit(s) sent" in first
    assert "already sent by an earlier attempt" in second and "0 exit(s) sent" in second
    assert open_incidents(home)["emergency:flatten"] == "SEV-1"


def test_the_reduce_only_bot_flag_still_runs_the_bot_reduce_only(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--reduce-only", "--dev-fast"])

    assert code == 0
    assert "1 cycle(s)" in capsys.readouterr().out
    assert not (home / "state" / "REDUCE_ONLY").exists()
