"""Retry and timeout policies of every task, defined once and named for what the task touches.

A task takes its policy with `@task(name=..., **POLICY.options())`. A policy retries only what can pass on its own
(a broker, database or cold tier that is briefly unreachable); a task whose second attempt would do its work twice
takes a policy without retries. Task-specific extras (tags, a retry condition of its own) stay on the task.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from prefect_adapter.variables import VariablesUnavailable
from trader.errors import BrokerUnavailable
from trader.supervision import RestartPolicy

RetryCondition = Callable[[Any, Any, Any], bool]


def raised(*kinds: type[BaseException]) -> RetryCondition:
    """A retry condition: retry only when the failed attempt raised one of `kinds` (not a refusal, not a bug)."""

    def condition(_task: Any, _task_run: Any, state: Any) -> bool:
        try:
            state.result()
        except kinds:
            return True
        except Exception:
            return False
        return False

    return condition


def is_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry what may pass on its own (broker or database unreachable), not a refused key or a bug."""
    from sqlalchemy.exc import OperationalError

    return raised(BrokerUnavailable, OperationalError)(task, task_run, state)


def retry_unless_lease_held(_task: Any, _task_run: Any, state: Any) -> bool:
    """Retry a broker or ledger hiccup; never a held lease (another bot trades the account: a retry changes nothing)."""
    from trader.ledger.lease import LeaseHeld

    return not isinstance(state.data, LeaseHeld)


@dataclass(frozen=True)
class TaskPolicy:
    """Retries, delays between them, jitter and a timeout: the keyword arguments of Prefect's @task."""

    retries: int = 0
    retry_delay_seconds: float | list[float] | Callable[[int], list[float]] | None = None
    retry_jitter_factor: float | None = None
    retry_condition_fn: RetryCondition | None = None
    timeout_seconds: float | None = None

    def options(self) -> dict[str, Any]:
        """Keyword arguments for @task (results are never cached: every run checks the world as it is now)."""
        options: dict[str, Any] = {"retries": self.retries, "cache_policy": NO_CACHE}
        for name in ("retry_delay_seconds", "retry_jitter_factor", "retry_condition_fn", "timeout_seconds"):
            value = getattr(self, name)
            if value is not None:
                options[name] = value
        return options


# A check of files on this machine (log file, heartbeat, disk): nothing to wait out, so no retry.
LOCAL_CHECK = TaskPolicy()
# One account's share of a runbook run (tasks/accounts.py): its own tasks retry; the share is never run twice.
ACCOUNT_SHARE = TaskPolicy()
# A read of the broker, the database or the cold tier: 2, 4, 8 s for a blip (checklists, reports, checkpoints).
NETWORK_READ = TaskPolicy(retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2))
# The audit's broker reads and idempotent repairs: longer backoff, jitter, and only a transient error is retried.
AUDIT = TaskPolicy(
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=5),
    retry_jitter_factor=0.5,
    retry_condition_fn=is_transient,
    timeout_seconds=300,
)
# An idempotent ledger write (an incident opened or resolved by fingerprint), retried while the database is away.
LEDGER_WRITE = TaskPolicy(
    retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2), retry_condition_fn=is_transient
)
# Orders cancelled or sent by an operator's procedure (idempotent by request id): transient errors only, bounded.
EXCHANGE_WRITE = TaskPolicy(
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
    retry_condition_fn=is_transient,
    timeout_seconds=300,
)
# A read of the broker whose answer is a verdict (orders still open, positions left): only an unreachable exchange or
# database is retried, never the verdict itself.
EXCHANGE_READ = TaskPolicy(
    retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2), retry_condition_fn=is_transient
)
# A flag file in STATE_DIR: a second try for a full or busy disk.
FLAG_FILE = TaskPolicy(retries=2, retry_delay_seconds=[1, 5])
# A write through the Prefect API (a Variable): retried while the API is unreachable, not when it refuses.
PREFECT_WRITE = TaskPolicy(
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_condition_fn=raised(VariablesUnavailable),
)
# An alert or an artifact: published twice at most, quickly.
ALERT = TaskPolicy(retries=2, retry_delay_seconds=[2, 10])
# An incident for a drill: the same, with room for a slow Slack.
DRILL_ALERT = TaskPolicy(retries=2, retry_delay_seconds=[5, 30], timeout_seconds=120)
# The bot's start (lease, reconciliation): a broker or ledger hiccup, never a held lease; 120 s for a hung broker.
BOT_START = TaskPolicy(
    retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=retry_unless_lease_held, timeout_seconds=120
)
# The restart decision: written into the SEV-1 thread, so never retried (a second attempt counts the restart twice);
# its timeout leaves room for the longest backoff it waits out.
RESTART_DECISION = TaskPolicy(timeout_seconds=RestartPolicy.max_delay_seconds + 120)
# A drill: never retried (each attempt is a new outage); the slowest takes ~10 s, a hung service must not hold the run.
DRILL = TaskPolicy(timeout_seconds=900)
# Backups: the database restarting or failing over; S3 throttling or a short outage (10, 20, 40, 80 s); restores.
BACKUP_DUMP = TaskPolicy(retries=2, retry_delay_seconds=[30, 120], timeout_seconds=3 * 3600)
BACKUP_UPLOAD = TaskPolicy(
    retries=4,
    retry_delay_seconds=exponential_backoff(backoff_factor=10),
    retry_jitter_factor=0.2,
    timeout_seconds=3 * 3600,
)
BACKUP_PRUNE = TaskPolicy(
    retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=5), retry_jitter_factor=0.2, timeout_seconds=600
)
BACKUP_RESTORE = TaskPolicy(retries=2, retry_delay_seconds=[60, 300], retry_jitter_factor=0.2, timeout_seconds=3 * 3600)
