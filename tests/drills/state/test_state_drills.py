"""redis-outage, postgres-outage and s3-outage run for real: the drill's own Redis keys behind a fault proxy (or its
own redis-server, stopped), a scratch database on the shared PostgreSQL behind the proxy, a prefix of a moto S3
bucket behind the proxy; the live profile's keys are checked byte for byte afterwards."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from tests.drills.state.conftest import LiveProfile, database_exists, drill_redis_keys
from trader.drills.namespace import DrillNamespace
from trader.drills.runner import run_drill
from trader.drills.state_drills import StateDrillResult
from trader.state.checkpoints import CheckpointStore
from trader.state.cold import LocalFolderStore

SNAPSHOT = {
    "format": 1,
    "taken_at": "2026-11-21T05:00:00+00:00",
    "positions": {"BTC-USD": {"quantity": "0.5", "average_entry_price": "64000", "realized_pnl": "0"}},
    "open_orders": [
        {"client_order_id": f"c-{i}", "symbol": "BTC-USD", "side": "buy", "quantity": "0.001", "status": "open"}
        for i in range(120)
    ],
    "balances": {"USD": {"available": str(Decimal("90000")), "hold": "100"}},
    "broker_positions": {},
    "strategy_state": {"ma_fast": "64010.5"},
    "guard_counters": {"max_position": 2},
}


def database_name(result: StateDrillResult) -> str:
    return result.namespace.replace("-", "_")


def assert_clean(live: LiveProfile, result: StateDrillResult) -> None:
    assert result.details["left_behind"] == []
    assert drill_redis_keys(live.redis_url) == []
    assert not database_exists(live.settings.database_url, database_name(result))


def test_redis_outage_restores_every_seeded_key_from_the_warm_tier(live: LiveProfile, tmp_path: Path) -> None:
    store = CheckpointStore(live.settings.database_url, LocalFolderStore(tmp_path / "live-cold"))
    checkpoint = store.create(SNAPSHOT, reason="live")
    store.dispose()
    before = live.snapshot()
    seen: list[float] = []

    result = run_drill(live.settings, "redis-outage", keys=500, progress=lambda f, _m: seen.append(f))

    assert isinstance(result, StateDrillResult)
    assert result.details["seed_checkpoint"] == checkpoint.id
    assert result.detection_ms is not None and 0 < result.detection_ms <= 2000
    assert result.keys_recovered == result.keys_expected == 500
    assert result.orders_recovered == 120
    assert result.recovery_ms is not None and result.downtime_ms is not None
    assert result.downtime_ms >= 1000  # the outage held for outage_seconds (1 s) counts
    assert result.coherence_match is True and result.writes_lost == 0
    assert seen == sorted(seen) and seen[-1] >= 0.9
    assert_clean(live, result)
    live.assert_untouched(before)


def test_redis_outage_survives_its_redis_server_stopped_for_real(live: LiveProfile) -> None:
    before = live.snapshot()

    result = run_drill(live.settings, "redis-outage", keys=350, options={"fault": "stop", "outage_seconds": 0.5})

    assert isinstance(result, StateDrillResult)
    assert result.detection_ms is not None and result.detection_ms <= 2000
    assert result.keys_recovered == result.keys_expected == 350  # an empty Redis refilled from PostgreSQL
    assert result.coherence_match is True
    assert_clean(live, result)
    live.assert_untouched(before)


def test_redis_outage_detects_a_blackholed_redis_within_two_seconds(live: LiveProfile) -> None:
    result = run_drill(live.settings, "redis-outage", keys=350, options={"fault": "blackhole", "outage_seconds": 1.5})

    assert isinstance(result, StateDrillResult)
    # No RST, no refusal: the client's 0.5 s socket timeout (and its one retry) is what detects it.
    assert result.detection_ms is not None and 400 <= result.detection_ms <= 2000
    assert result.keys_recovered == 350 and result.coherence_match is True
    assert_clean(live, result)


def test_postgres_outage_replays_the_journal_exactly_once(live: LiveProfile) -> None:
    before = live.snapshot()

    result = run_drill(live.settings, "postgres-outage", keys=400)

    assert isinstance(result, StateDrillResult)
    assert result.detection_ms is not None and result.detection_ms <= 2000
    assert result.details["journaled_entries"] > 0
    assert result.keys_recovered == result.keys_expected >= result.details["journaled_entries"]
    assert result.details["journal_pending_after_replay"] == 0
    assert result.writes_lost == 0 and result.data_loss_estimate == "none"
    assert result.details["manager_data_loss_estimate_s"] >= 0
    assert result.coherence_match is True
    assert_clean(live, result)
    live.assert_untouched(before)


def test_s3_outage_queues_checkpoints_locally_then_syncs_them(live_with_s3: LiveProfile) -> None:
    live = live_with_s3
    before = live.snapshot()

    result = run_drill(live.settings, "s3-outage", keys=300, options={"s3_retry_interval": 1.0})

    assert isinstance(result, StateDrillResult)
    assert result.detection_ms is not None and result.detection_ms <= 2000
    assert result.details["s3_available_flag_during_outage"] is False
    assert result.details["s3_available_flag_after"] is True
    assert result.keys_expected and result.keys_recovered == result.keys_expected
    assert result.details["checkpoints_verified_in_s3"] >= 2
    assert result.coherence_match is True and result.writes_lost == 0
    assert any(note.startswith("Synced ") and "objects to S3" in note for note in result.notes)
    assert_clean(live, result)
    assert live.s3 is not None and not live.s3.keys(f"gpt-trader/cold/drills/{result.namespace}/")
    live.assert_untouched(before)


def test_a_corrupted_cached_value_gives_match_false(live: LiveProfile) -> None:
    result = run_drill(live.settings, "redis-outage", keys=350, options={"corrupt_before_verify": True})

    assert result.coherence_match is False and not result.passed
    assert "coherence: Match: False" in result.misses()
    assert len(result.details["coherence"]["mismatched"]) == 1
    assert_clean(live, result)


def test_without_a_checkpoint_the_drill_seeds_synthetic_keys_and_says_so(live: LiveProfile) -> None:
    result = run_drill(live.settings, "postgres-outage", keys=350)

    assert result.details["seed_checkpoint"] is None
    assert any("no checkpoint seeded" in note for note in result.notes)
    assert any("350 synthetic entries" in note for note in result.notes)


def test_s3_outage_does_not_apply_to_a_local_folder_cold_tier(live: LiveProfile) -> None:
    from trader.drills.namespace import DrillUnavailable

    with pytest.raises(DrillUnavailable, match="COLD_STORAGE_URL=s3://"):
        run_drill(live.settings, "s3-outage", keys=10)
    assert drill_redis_keys(live.redis_url) == []


def test_namespace_names_its_own_targets(live: LiveProfile, tmp_path: Path) -> None:
    ns = DrillNamespace.plan(live.settings, tmp_path)

    assert ns.id.startswith("drill-") and ns.redis_prefix == f"drill:{ns.id}:"
    assert ns.database_name == ns.id.replace("-", "_")
    ns.assert_not_live(live.settings)


def test_anything_left_in_the_namespace_is_a_miss() -> None:
    from datetime import UTC, datetime

    result = StateDrillResult("redis-outage", "drill-x", datetime.now(UTC), coherence_match=True)
    result.details["left_behind"] = ["3 Redis keys under drill:drill-x:"]

    assert not result.passed
    assert result.misses() == ["left behind in the drill namespace: 3 Redis keys under drill:drill-x:"]
