"""perps-bot kill-switch / reduce-only with PREFECT_API_URL pointing at a real Prefect server: the Variable too."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from deployments.cli import main
from tests.flows.conftest import delete_variables, set_variable
from trader.ledger import Ledger

pytestmark = pytest.mark.e2e


@pytest.fixture
def home(prefect_server: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A paper profile in the test's folder, PREFECT_API_URL set (by prefect_server), no switch Variables."""
    for name in ("PERPS_PROFILE", "RISK_KILL_SWITCH_ENABLED", "RISK_REDUCE_ONLY_MODE", "COINBASE_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.setenv("BROKER", "simulated")
    delete_variables()
    yield tmp_path
    delete_variables()


def variable(name: str) -> object:
    with get_client(sync_client=True) as client:
        found = client.read_variable_by_name(name)
    return None if found is None else found.value


def test_kill_switch_on_sets_the_prefect_variable_and_says_so(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["kill-switch", "on"])

    printed = capsys.readouterr().out
    assert code == 0
    assert variable("kill_switch") is True
    assert (home / "state" / "KILL_SWITCH").exists()
    assert "kill_switch ON in Prefect Variable kill_switch (was OFF)" in printed
    assert "was not" not in printed


def test_status_reads_the_variable_and_off_clears_it(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["reduce-only", "on"])
    capsys.readouterr()

    main(["reduce-only", "status"])
    status = capsys.readouterr().out
    code = main(["reduce-only", "off"])
    off = capsys.readouterr().out

    assert re.search(r"Prefect Variable reduce_only\s*│ ON", status) and "reduce_only: ON" in status
    assert code == 0 and variable("reduce_only") is False
    assert "reduce_only OFF in Prefect Variable reduce_only (was ON)" in off
    assert not (home / "state" / "REDUCE_ONLY").exists()


@pytest.mark.parametrize("switch", ["kill_switch", "reduce_only"])
def test_place_order_is_refused_by_a_switch_set_only_as_a_prefect_variable(
    home: Path, switch: str, capsys: pytest.CaptureFixture[str]
) -> None:
    set_variable(switch, True)  # from the UI or an emergency flow elsewhere: no flag file, no environment

    code = main(["--place-order", "--order-symbol", "BTC-USD", "--order-side", "buy", "--order-quantity", "0.01"])

    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"perps-bot {switch.replace('_', '-')} off" in err
    assert not (home / "ledger.db").exists() or Ledger(f"sqlite:///{home / 'ledger.db'}").list_orders() == []
