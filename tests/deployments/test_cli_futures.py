"""perps-bot's order tooling on the paper exchange's futures (COINBASE_ENABLE_DERIVATIVES=1): a leveraged order
through the one order path, the account snapshot's futures account, and the bad input refused before anything is
sent or written (leverage above the profile's cap, an unknown futures product, futures without derivatives)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from tests.deployments.test_cli import ledger_of, perps_bot

FUTURE = "BIP-20DEC30-CDE"
DERIVATIVES = {"COINBASE_ENABLE_DERIVATIVES": "1"}


def place(home: Path, *args: str, **env: str):  # type: ignore[no-untyped-def]
    return perps_bot(home, "--place-order", "--order-side", "buy", "--order-symbol", FUTURE, *args, **env)


def test_a_leveraged_futures_order_goes_through_the_order_path_and_shows_in_the_futures_account(tmp_path: Path) -> None:
    home = tmp_path
    placed = place(home, "--order-quantity", "3", "--order-leverage", "2", "--order-client-id", "fut-1", **DERIVATIVES)
    assert placed.returncode == 0, placed.stderr
    assert "leverage" in placed.stdout and "placed: order_id=" in placed.stdout

    ledger = ledger_of(home)
    try:
        order = ledger.get_order("fut-1")
        assert order is not None and order.status == "filled" and order.quantity == Decimal(3)
        assert [(f.symbol, f.quantity) for f in ledger.list_fills()] == [(FUTURE, Decimal(3))]
    finally:
        ledger.dispose()

    snapshot = perps_bot(home, "--account-snapshot", **DERIVATIVES)
    assert snapshot.returncode == 0, snapshot.stderr
    assert "futures: buying power" in snapshot.stdout and "liquidation buffer" in snapshot.stdout
    row = next(line for line in snapshot.stdout.splitlines() if FUTURE in line and "long" in line)
    assert " 3 " in f" {row} "


@pytest.mark.parametrize(
    ("args", "env", "names"),
    [
        (["--order-quantity", "1", "--order-leverage", "4"], DERIVATIVES, "RISK_MAX_LEVERAGE=3"),
        (
            ["--order-quantity", "1", "--order-leverage", "12"],
            {**DERIVATIVES, "RISK_MAX_LEVERAGE": "20"},
            "max_leverage",
        ),
        (["--order-quantity", "1", "--order-leverage", "0"], DERIVATIVES, "at least 1"),
        (["--order-quantity", "1", "--order-symbol", "BIT-99ZZZ99-CDE"], DERIVATIVES, "unknown symbol BIT-99ZZZ99-CDE"),
        (["--order-quantity", "1"], {}, f"unknown symbol {FUTURE}"),
    ],
    ids=["above-profile-cap", "above-product-max", "below-one", "unknown-future", "no-derivatives"],
)
def test_bad_futures_input_is_one_line_exit_2_nothing_sent_nothing_written(
    tmp_path: Path, args: list[str], env: dict[str, str], names: str
) -> None:
    home = tmp_path
    result = place(home, *args, **env)

    assert result.returncode == 2, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert names in result.stderr
    assert not (home / "var/state").exists() or not any((home / "var/state").iterdir())
