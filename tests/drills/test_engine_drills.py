"""engine-crash (a real engine process, a real SIGKILL) and exchange-degradation (the local HTTPS Advanced Trade
server answering 429s and time-outs) on a drill folder of their own; the live state folder is never touched."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from trader.drills.base import EXPECTED_DETECTION_MS, EXPECTED_ENGINE_RECOVERY_MS, DrillContext
from trader.drills.engine_drills import DEGRADATION_EXPECTED, engine_crash, exchange_degradation
from trader.drills.namespace import DrillRefused
from trader.drills.runner import load_scenarios
from trader.settings import Settings, load_settings


def _fingerprint(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture
def live(tmp_path: Path) -> Settings:
    """The operator's profile: a state folder with a ledger-looking file and a kill-switch flag in it."""
    state_dir = tmp_path / "live-state"
    state_dir.mkdir()
    (state_dir / "ledger.db").write_bytes(b"live ledger")
    (state_dir / "paper_exchange.json").write_text('{"live": true}')
    return load_settings(state_dir=state_dir)


def _context(tmp_path: Path, live: Settings, workdir: Path | None = None) -> DrillContext:
    return DrillContext("drill-test", workdir or tmp_path / "work", options={"settings": live})


def test_both_scenarios_are_registered() -> None:
    assert {"engine-crash", "exchange-degradation"} <= set(load_scenarios())


@pytest.mark.slow
def test_engine_crash_drill_recovers_the_killed_engines_orders_within_the_runbook_timings(
    tmp_path: Path, live: Settings
) -> None:
    before = _fingerprint(live.state_dir)

    result = engine_crash(_context(tmp_path, live))

    assert result.passed, result.misses()
    assert result.expected == {"detection_ms": EXPECTED_DETECTION_MS, "recovery_ms": EXPECTED_ENGINE_RECOVERY_MS}
    assert result.coherence_match is True, result.details["coherence"]
    assert result.data_loss_estimate == "none"
    assert result.detection_ms is not None and 0 < result.detection_ms <= EXPECTED_DETECTION_MS
    assert result.recovery_ms is not None and 0 < result.recovery_ms <= EXPECTED_ENGINE_RECOVERY_MS
    assert result.downtime_ms is not None and result.downtime_ms >= result.detection_ms
    # Every working order the dead engine left (120 far under the market, plus near-market ones) was cancelled.
    assert result.orders_recovered >= 120
    assert result.orders_recovered == result.details["working_orders_at_kill"]
    assert result.details["positions_checked"] >= 0 and result.details["positions_dropped"] == []
    assert _fingerprint(live.state_dir) == before


@pytest.mark.slow
def test_exchange_degradation_drill_flags_the_guards_and_duplicates_no_order(tmp_path: Path, live: Settings) -> None:
    before = _fingerprint(live.state_dir)

    result = exchange_degradation(_context(tmp_path, live))

    assert result.passed, (result.misses(), result.notes)
    assert result.expected == DEGRADATION_EXPECTED
    assert result.coherence_match is True, result.details["coherence"]
    assert result.details["duplicate_client_order_ids"] == {}
    assert result.detection_ms is not None and result.recovery_ms is not None
    assert result.details["guards_flagged"]["api_latency"] != "ok"
    faults = result.details["faults_injected"]
    assert faults["429"] > 0 and faults["timeout"] > 0 and faults["create-timeout"] > 0
    assert result.details["retries"] > 0 and result.details["first_retry_ms"] is not None
    # Creates that timed out after the order was made were found by client_order_id, not sent twice.
    assert result.details["creates_unclear"] >= 1 and result.orders_recovered >= 1
    assert _fingerprint(live.state_dir) == before


@pytest.mark.parametrize("run", [engine_crash, exchange_degradation], ids=["engine-crash", "exchange-degradation"])
def test_a_drill_folder_inside_the_live_state_folder_is_refused_before_anything_is_written(
    tmp_path: Path, live: Settings, run
) -> None:
    before = _fingerprint(live.state_dir)

    with pytest.raises(DrillRefused, match="live state folder"):
        run(_context(tmp_path, live, workdir=live.state_dir / "drills"))

    assert _fingerprint(live.state_dir) == before
    assert not (live.state_dir / "drills").exists()
