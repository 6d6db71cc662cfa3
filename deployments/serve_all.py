"""Serve every deployment in prefect.yaml from this process (the embedded stack's runner).

Prefect starts each flow run in a spawned process that imports this module again (as multiprocessing's __mp_main__)
before it imports the flow: so this module imports nothing at load beyond the standard library, and the flow-run
process pays only for its own flow's imports.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.deployments.runner import RunnerDeployment

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PREFECT_YAML = PROJECT_ROOT / "prefect.yaml"
# Seconds between the runner's queries for runs to start (Prefect's PREFECT_RUNNER_POLL_FREQUENCY is whole seconds,
# default 10): a run triggered from the CLI or the UI starts within half a second, at two small queries a second.
RUNNER_QUERY_SECONDS = 0.5


def load_flow(entrypoint: str) -> Flow:
    """Import `flows/bot.py:trading_bot` as the module flows.bot and return its flow."""
    path, _, name = entrypoint.partition(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return getattr(module, name)


def runner_deployments(prefect_yaml: Path = PREFECT_YAML) -> list[RunnerDeployment]:
    """One RunnerDeployment per entry of prefect.yaml, with its schedules, parameters, tags and limits."""
    import yaml
    from prefect.deployments.runner import EntrypointType, RunnerDeployment
    from prefect.schedules import Cron

    spec = yaml.safe_load(prefect_yaml.read_text())
    deployments = []
    for entry in spec["deployments"]:
        flow = load_flow(entry["entrypoint"])
        parameters = dict(entry.get("parameters") or {})
        schedules = [
            Cron(s["cron"], timezone=s.get("timezone", "UTC"), active=s.get("active", True))
            for s in entry.get("schedules") or []
        ]
        deployment = flow.to_deployment(
            name=entry["name"],
            description=entry.get("description"),
            parameters=parameters,
            tags=entry.get("tags"),
            schedules=schedules or None,
            concurrency_limit=entry.get("concurrency_limit"),
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        assert isinstance(deployment, RunnerDeployment)  # sync flow: to_deployment returns, not a coroutine
        deployments.append(deployment)
    return deployments


def main() -> None:
    """Register and serve every deployment; stops on SIGTERM/Ctrl-C (runs it started are cancelled)."""
    sys.path.insert(0, str(PROJECT_ROOT))
    from prefect import serve

    from deployments.automations import BOT_HEARTBEAT_SECONDS

    # Flow runs inherit it: the bot's heartbeats drive the zombie automation (deployments/automations.py).
    os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", str(BOT_HEARTBEAT_SECONDS))
    serve(*runner_deployments(), print_starting_message=True, limit=None, query_seconds=RUNNER_QUERY_SECONDS)


if __name__ == "__main__":
    main()
