"""The runtime's wiring: the bot's StateManager records a real S3 outage as system:s3_available, and its
checkpoints taken during the outage reach S3 once it is back."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from trader.runtime import build_state
from trader.settings import load_settings
from trader.state.cold import AccountObjectStore, FallbackObjectStore

if TYPE_CHECKING:
    from tests.state.cold.conftest import MotoS3


def test_an_s3_outage_sets_system_s3_available_in_state_and_recovers(s3_outage: MotoS3, tmp_path: Path) -> None:
    settings = load_settings(
        state_dir=tmp_path / "state",
        cold_storage_url=s3_outage.url(),
        cold_storage_endpoint_url=s3_outage.endpoint,
    )
    state, checkpoints = build_state(settings)
    assert isinstance(checkpoints.cold, AccountObjectStore) and checkpoints.cold.prefix == "accounts/default/"
    cold = checkpoints.cold.store
    assert isinstance(cold, FallbackObjectStore)
    s3_outage.stop()

    info = checkpoints.create({"positions": {}}, reason="during outage")

    assert state.get("system:s3_available") is False
    assert checkpoints.restore(info.id) == {"positions": {}}  # served from the local fallback
    s3_outage.start()
    assert cold.sync() == 2  # payload and manifest
    assert state.get("system:s3_available") is True
    assert any(key.endswith(f"accounts/default/checkpoints/{info.id}.manifest.json") for key in s3_outage.keys(""))
    checkpoints.dispose()
    state.close()
