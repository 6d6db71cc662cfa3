"""Artifacts in the Prefect UI: markdown and tables (rendered in trader/, published here) and progress bars."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from uuid import UUID

from trader.account_names import DEFAULT_ACCOUNT


def account_key(key: str, account: str) -> str:
    """The artifact key of one account's result: `key` for the default account (as before accounts), else
    `key-<account>` in Prefect's key alphabet (lowercase letters, digits, dashes)."""
    if account == DEFAULT_ACCOUNT:
        return key
    return f"{key}-{re.sub(r'[^a-z0-9-]', '-', account.lower())}"


def publish_markdown(key: str, markdown: str, description: str | None = None) -> None:
    """A markdown artifact of the current flow or task run."""
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(key=key, markdown=markdown, description=description)


def publish_table(key: str, table: Sequence[Mapping[str, Any]], description: str | None = None) -> None:
    """A table artifact (one row per mapping) of the current flow or task run."""
    from prefect.artifacts import create_table_artifact

    create_table_artifact(key=key, table=[dict(row) for row in table], description=description)


def markdown_artifact_job(key: str, markdown: str, description: str, flow_run_id: str) -> Callable[[Any], object]:
    """A markdown artifact of the given run, created by whoever calls the job with a sync client (the poller)."""
    from prefect.client.schemas.actions import ArtifactCreate

    artifact = ArtifactCreate(
        key=key,
        type="markdown",
        data=markdown,
        description=description,
        flow_run_id=flow_run_id,  # type: ignore[arg-type]  # pydantic parses the UUID string
    )

    def create(client: Any) -> object:
        return client.create_artifact(artifact)

    return create


class ProgressArtifact:
    """A Prefect progress artifact fed by progress(stage, done, total) callbacks or set(percent) calls.

    `stages` maps a stage to its share of the bar, (start %, end %). Updates at most every `min_interval` seconds
    (or on a step of `min_step` %), so a 10 GB upload in 8 MiB chunks does not make a thousand API calls. Never fails
    the work it shows: an artifact that cannot be updated is skipped.
    """

    def __init__(
        self,
        key: str,
        description: str,
        *,
        stages: Mapping[str, tuple[float, float]] | None = None,
        min_interval: float = 1.0,
        min_step: float = 5.0,
    ) -> None:
        from prefect.artifacts import create_progress_artifact

        self.description = description
        self.stages = dict(stages or {})
        self.min_interval = min_interval
        self.min_step = min_step
        self.percent = 0.0
        self._shown = 0.0
        self._shown_at = 0.0
        self._lock = threading.Lock()
        created = create_progress_artifact(progress=0.0, key=key, description=description)
        self.artifact_id = created if isinstance(created, UUID) else None  # a UUID in sync flows

    def __call__(self, stage: str, done: int, total: int) -> None:
        start, end = self.stages.get(stage, (self.percent, self.percent))
        fraction = min(1.0, done / total) if total > 0 else 1.0
        self.set(start + (end - start) * fraction, f"{self.description}: {stage}")

    def set(self, percent: float, description: str | None = None, *, force: bool = False) -> None:
        from prefect.artifacts import update_progress_artifact

        with self._lock:
            self.percent = max(self.percent, min(100.0, percent))
            now = time.monotonic()
            due = self.percent - self._shown >= self.min_step or now - self._shown_at >= self.min_interval
            if self.artifact_id is None or not (force or due) or self.percent == self._shown:
                return
            try:
                update_progress_artifact(self.artifact_id, self.percent, description=description)
            except Exception:  # a progress bar is never worth a failed backup
                return
            self._shown, self._shown_at = self.percent, now

    def finish(self, description: str) -> None:
        self.set(100.0, description, force=True)
