"""trading-bot/<account> per declared account, from one function (deployments.serve_all.deployment_entries) for both
ways to run: served by `perps-bot up` and deployed for workers from `perps-bot accounts deployments`' prefect file;
both register the same deployments on a real Prefect server. The CLI's --account: an undeclared one is exit 2 and
the one line."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from deployments.cli import main
from deployments.serve_all import PREFECT_YAML, bot_deployment_names, deployment_entries, runner_deployments
from tests.paper_accounts import paper_accounts_yaml
from trader.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
PREFECT = Path(sys.executable).parent / "prefect"
ACCOUNTS_YAML = paper_accounts_yaml(beta={"profile": "canary"})


@pytest.fixture
def accounts_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Three paper accounts in ACCOUNTS_FILE; state in the test's folder."""
    path = tmp_path / "accounts.yaml"
    path.write_text(ACCOUNTS_YAML)
    monkeypatch.setenv("ACCOUNTS_FILE", str(path))
    monkeypatch.setenv("STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("BROKER", "simulated")
    for name in ("COINBASE_API_KEY", "COINBASE_API_SECRET", "COINBASE_KEY_FILE", "PERPS_PROFILE", "ACCOUNT"):
        monkeypatch.delenv(name, raising=False)
    return path


def bots(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in entries if e["entrypoint"] == "flows/bot.py:trading_bot"}


def test_each_declared_account_gets_its_trading_bot_deployment_naming_it(accounts_env: Path) -> None:
    entries = deployment_entries()

    found = bots(entries)
    assert list(found) == ["alpha", "beta", "gamma"]
    assert [found[name]["parameters"]["account"] for name in found] == ["alpha", "beta", "gamma"]
    assert found["beta"]["parameters"]["profile"] == "canary" and found["alpha"]["parameters"]["profile"] == "dev"
    assert all(e["concurrency_limit"] == 1 and "paper" in e["tags"] for e in found.values())
    assert "account:gamma" in found["gamma"]["tags"]
    assert bot_deployment_names() == ["trading-bot/alpha", "trading-bot/beta", "trading-bot/gamma"]
    others = [e for e in entries if e["entrypoint"] != "flows/bot.py:trading_bot"]
    assert len(others) == len(yaml.safe_load(PREFECT_YAML.read_text())["deployments"]) - 1


def test_without_an_accounts_file_the_single_bot_deployment_is_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ACCOUNTS_FILE", raising=False)

    entries = deployment_entries()

    assert entries == yaml.safe_load(PREFECT_YAML.read_text())["deployments"]
    assert list(bots(entries)) == ["paper"] and "account" not in bots(entries)["paper"]["parameters"]
    assert bot_deployment_names() == ["trading-bot/paper"]


def test_the_cli_writes_the_same_deployments_into_the_workers_prefect_file(
    accounts_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "prefect.accounts.yaml"

    assert main(["accounts", "deployments", "--prefect-file", str(path)]) == 0

    written = yaml.safe_load(path.read_text())
    assert written["deployments"] == deployment_entries()
    assert written["pull"] == yaml.safe_load(PREFECT_YAML.read_text())["pull"]
    assert f"prefect deploy --all --prefect-file {path}" in capsys.readouterr().out


def test_an_undeclared_account_on_the_command_line_is_exit_2_and_one_line(
    accounts_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--account", "nope", "checkpoint", "list"]) == 2

    err = capsys.readouterr().err
    assert err == (
        f"perps-bot: error: account 'nope' is not declared in {accounts_env} (declared: alpha, beta, gamma); "
        "add it there\n"
    )


def test_cancel_all_with_declared_accounts_needs_an_account(
    accounts_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["cancel-all"]) == 2

    assert "cancel-all: --account: required with" in capsys.readouterr().err


# --- the same deployments on a real Prefect server, served and deployed for workers ------------------------------


def registered(names: set[tuple[str, str]]) -> dict[str, tuple[Any, ...]]:
    """flow/deployment -> (parameters, tags, schedules, concurrency limit) of each of `names` on the server."""
    from prefect.client.orchestration import get_client

    found: dict[str, tuple[Any, ...]] = {}
    with get_client(sync_client=True) as client:
        for flow_name, name in sorted(names):
            d = client.read_deployment_by_name(f"{flow_name}/{name}")
            limit = d.global_concurrency_limit.limit if d.global_concurrency_limit else None
            schedules = sorted((s.schedule.cron, s.schedule.timezone) for s in d.schedules)  # type: ignore[union-attr]
            found[f"{flow_name}/{name}"] = (d.parameters, sorted(d.tags), schedules, limit)
    return found


def delete(names: set[tuple[str, str]]) -> None:
    """The shared server keeps none of them (a later test's runner registers its own)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for flow_name, name in names:
            with contextlib.suppress(ObjectNotFound):
                client.delete_deployment(client.read_deployment_by_name(f"{flow_name}/{name}").id)


@pytest.fixture
def work_pool(prefect_server: dict[str, str]) -> Iterator[dict[str, str]]:
    """The process work pool prefect.yaml names (gpt-trader) on the session's server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    # ObjectAlreadyExists: made by an earlier test of the session
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(name="gpt-trader", type="process"))
    yield prefect_server


def test_serving_and_deploying_for_workers_register_the_same_deployments(
    accounts_env: Path, work_pool: dict[str, str], tmp_path: Path
) -> None:
    settings = load_settings()
    served = runner_deployments(settings=settings)
    names = {(d.flow_name, d.name) for d in served}
    assert {f"{f}/{n}" for f, n in names} >= {"trading-bot/alpha", "trading-bot/beta", "trading-bot/gamma"}
    delete(names)
    try:
        for deployment in served:
            deployment.apply()
        by_serve = registered(names)
        delete(names)
        path = tmp_path / "prefect.accounts.yaml"
        assert main(["accounts", "deployments", "--prefect-file", str(path)]) == 0
        env = {**os.environ, **work_pool, "GPT_TRADER_HOME": str(ROOT), "PREFECT_CLI_PROMPT": "false"}
        result = subprocess.run(
            [str(PREFECT), "--no-prompt", "deploy", "--all", "--prefect-file", str(path)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        by_workers = registered(names)
    finally:
        delete(names)

    assert by_workers == by_serve
    assert by_serve["trading-bot/beta"][0]["account"] == "beta"
    assert by_serve["daily-checklist/daily"][2] == [("0 7 * * *", "UTC")]
