"""perps-bot preflight against the local Advanced Trade server: every check's row, and the exit code of the worst
(0 pass, 1 warn, 2 fail) caused by the exchange's state: a product cancel-only, the clock ahead, futures access."""

from __future__ import annotations

from pathlib import Path

from tests.deployments.test_cli import perps_bot
from tests.deployments.test_cli_coinbase import env_for
from trader.testing.advanced_trade import AdvancedTradeServer, CdpKey


def rows(stdout: str) -> dict[str, str]:
    """check name -> its table row."""
    found = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) >= 4 and cells[1]:
            found[cells[1]] = line
    return found


def test_a_ready_account_passes_every_check(tmp_path: Path, exchange: AdvancedTradeServer, cdp_key: CdpKey) -> None:
    result = perps_bot(tmp_path, "preflight", "--profile", "spot", **env_for(exchange, cdp_key, tmp_path))

    assert result.returncode == 0, result.stdout + result.stderr
    found = rows(result.stdout)
    expected = {"settings", "exchange and key", "derivatives", "product BTC-USD", "clock skew"}
    assert expected | {"redis", "ledger database", "cold storage"} <= set(found)
    assert all("PASS" in found[name] for name in expected)
    assert "portfolio DEFAULT" in found["exchange and key"] and "online" in found["product BTC-USD"]
    assert "preflight: PASS" in result.stdout


def test_a_cancel_only_product_warns_and_a_fast_clock_fails(
    tmp_path: Path, exchange: AdvancedTradeServer, cdp_key: CdpKey
) -> None:
    exchange.set_product_status("BTC-USD", cancel_only=True)
    env = env_for(exchange, cdp_key, tmp_path)

    warned = perps_bot(tmp_path, "preflight", "--profile", "spot", **env)

    assert warned.returncode == 1, warned.stdout + warned.stderr
    assert "WARN" in rows(warned.stdout)["product BTC-USD"] and "cancel_only" in rows(warned.stdout)["product BTC-USD"]

    exchange.clock_offset_seconds = -5.0  # the exchange 5 s behind: this machine's JWTs are not valid yet
    failed = perps_bot(tmp_path, "preflight", "--profile", "spot", **env)

    assert failed.returncode == 2, failed.stdout + failed.stderr
    found = rows(failed.stdout)
    assert "FAIL" in found["clock skew"] and "s ahead of the exchange" in found["clock skew"]
    assert "preflight: FAIL" in failed.stdout


def test_derivatives_are_checked_on_the_perps_profile(tmp_path: Path, start_exchange: object, cdp_key: CdpKey) -> None:
    server: AdvancedTradeServer = start_exchange(derivatives=True)  # type: ignore[operator]
    server.set_futures_cash("5000")
    env = {**env_for(server, cdp_key, tmp_path), "COINBASE_ENABLE_DERIVATIVES": "1"}

    result = perps_bot(tmp_path, "preflight", "--profile", "perps", **env)

    found = rows(result.stdout)
    assert "PASS" in found["derivatives"] and "buying power 5000" in found["derivatives"], result.stdout


def test_paper_futures_pass_the_derivatives_check_on_any_profile(tmp_path: Path) -> None:
    result = perps_bot(
        tmp_path, "preflight", "--profile", "dev", COINBASE_ENABLE_DERIVATIVES="1", TRADING_SYMBOLS="BIP-20DEC30-CDE"
    )

    assert result.returncode == 0, result.stdout + result.stderr
    found = rows(result.stdout)
    assert "PASS" in found["derivatives"] and "paper futures account readable" in found["derivatives"]
    assert "PASS" in found["product BIP-20DEC30-CDE"]
