"""daily-backup, full-backup and backup-restore-test run in-process under prefect_test_harness and publish a
progress artifact and a result artifact."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.states import State

from flows.backup import backup_restore_test, daily_backup, full_backup
from tests.backup.conftest import MotoS3
from trader.backup import BackupManager
from trader.state.cold import LocalFolderStore

pytestmark = pytest.mark.usefixtures("prefect_harness")


def artifacts_of(state: State) -> dict[str, Any]:
    """The flow run's artifacts by key."""
    run_id: UUID | None = state.state_details.flow_run_id
    assert run_id is not None
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    return {artifact.key: artifact for artifact in found if artifact.key}


def test_daily_backup_flow_verifies_a_postgres_backup_and_publishes_progress_and_result(
    pg_ledger: tuple[str, dict[str, int]], backup_env: Callable[..., Path], tmp_path: Path
) -> None:
    url, counts = pg_ledger
    backup_env(url, str(tmp_path / "cold"))

    state = daily_backup(profile="dev", return_state=True)

    assert state.is_completed(), state.message
    result = state.result()
    assert result["verified"] is True and result["kind"] == "daily" and result["name"].endswith(".dump")
    assert result["rows"] == sum(counts.values()) + 1  # + alembic_version
    artifacts = artifacts_of(state)
    assert artifacts["daily-backup-progress"].type == "progress"
    assert artifacts["daily-backup-progress"].data == 100.0
    assert artifacts["daily-backup-result"].type == "markdown"
    assert "daily backup verified" in str(artifacts["daily-backup-result"].data)
    assert LocalFolderStore(tmp_path / "cold").list() == [result["name"], result["name"][:-5] + ".manifest.json"]


def test_full_backup_to_s3_then_restore_test_flow_passes(
    sqlite_ledger: tuple[str, dict[str, int]], backup_env: Callable[..., Path], moto_s3: MotoS3
) -> None:
    url, _ = sqlite_ledger
    backup_env(url, moto_s3.url(), moto_s3.endpoint)

    backup = full_backup(profile="dev", return_state=True)
    restore = backup_restore_test(profile="dev", return_state=True)

    assert backup.is_completed(), backup.message
    assert restore.is_completed(), restore.message
    assert restore.result()["ok"] is True and restore.result()["backup"] == backup.result()["name"]
    artifacts = artifacts_of(restore)
    assert artifacts["backup-restore-test-progress"].data == 100.0
    assert "Restore test passed" in str(artifacts["backup-restore-test-result"].data)
    assert artifacts_of(backup)["full-backup-progress"].data == 100.0


def test_restore_test_flow_fails_and_says_why_when_the_stored_backup_is_damaged(
    sqlite_ledger: tuple[str, dict[str, int]], backup_env: Callable[..., Path], tmp_path: Path
) -> None:
    url, _ = sqlite_ledger
    state_dir = backup_env(url, str(tmp_path / "cold"))
    cold = LocalFolderStore(tmp_path / "cold")
    info = BackupManager(url, cold, workdir=state_dir / "backups").create("daily")
    data = bytearray(cold.get(info.name))
    data[100] ^= 0xFF
    cold.put(info.name, bytes(data))

    state = backup_restore_test(profile="dev", return_state=True)

    assert state.is_failed()
    assert "corrupt" in str(state.message)
    assert "Restore test FAILED" in str(artifacts_of(state)["backup-restore-test-result"].data)
