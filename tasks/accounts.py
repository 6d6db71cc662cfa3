"""One account's share of a runbook run as a task run of its own (flows/accounts.py maps it over the accounts).

Never retried: the work inside is tasks with their own retry policies, and a second attempt of the whole share would
repeat the ones that succeeded (a checklist recorded twice, an incident announced twice).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import task

from tasks.policies import ACCOUNT_SHARE
from trader.settings import Settings


@task(name="account", task_run_name="{runbook}: {account}", **ACCOUNT_SHARE.options())
def account_share(runbook: str, account: str, work: Callable[[Settings], Any], settings: Settings) -> Any:
    """work(settings) for one account; the tasks it calls are nested under this task run."""
    return work(settings)
