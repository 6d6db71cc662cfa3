"""Serve every deployment in prefect.yaml from this process (the embedded stack's runner)."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import yaml
from prefect import Flow, serve
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.schedules import Cron

from deployments.automations import BOT_HEARTBEAT_SECONDS

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PREFECT_YAML = PROJECT_ROOT / "prefect.yaml"


def load_flow(entrypoint: str) -> Flow:
    """Import `flows/bot.py:trading_bot` as the module flows.bot and return its flow."""
    path, _, name = entrypoint.partition(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return getattr(module, name)


def runner_deployments(prefect_yaml: Path = PREFECT_YAML) -> list[RunnerDeployment]:
    """One RunnerDeployment per entry of prefect.yaml, with its schedules, parameters, tags and limits."""
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
    # Flow runs inherit it: the bot's heartbeats drive the zombie automation (deployments/automations.py).
    os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", str(BOT_HEARTBEAT_SECONDS))
    serve(*runner_deployments(), print_starting_message=True, limit=None)


if __name__ == "__main__":
    main()
