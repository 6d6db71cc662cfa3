"""perps-bot dashboard in a real terminal (tmux: new-session, capture-pane, send-keys) against a running paper bot:
what it draws, that it keeps drawing (the error on screen) when the bot goes away, and its bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deployments.test_cli import perps_bot
from tests.deployments.test_cli_metrics import PERPS_BOT, env_for, free_port
from tests.processes import http_ok, wait_for


@pytest.fixture
def tmux() -> Iterator[str]:
    """A tmux session name of its own (200x60); killed afterwards."""
    assert shutil.which("tmux"), "tmux is missing: apt-get install -y tmux"
    name = f"dash-{uuid.uuid4().hex[:8]}"
    yield name
    subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)


def screen(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout


def showing(session: str, needle: str) -> str | None:
    """The screen once it shows `needle` (None before)."""
    text = screen(session)
    return text if needle in text else None


def test_the_dashboard_draws_a_running_bot_and_keeps_drawing_when_it_goes_away(tmp_path: Path, tmux: str) -> None:
    port = free_port()
    env = env_for(
        tmp_path, METRICS_ENABLED="1", METRICS_PORT=str(port), PREFECT_API_URL=f"http://127.0.0.1:{free_port()}/api"
    )
    bot = subprocess.Popen(
        [str(PERPS_BOT), "--profile", "dev", "--interval", "0.2"], cwd=tmp_path, env=env, stderr=subprocess.PIPE
    )
    try:
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/health") or bot.poll() is not None, 60, "the bot")
        command = f"{PERPS_BOT} dashboard --refresh 1 --window-min 600 --url http://127.0.0.1:{port}"
        subprocess.run(
            ["tmux", "new-session", "-d", "-s", tmux, "-x", "200", "-y", "60", "-c", str(tmp_path), command],
            env=env,
            check=True,
        )
        drawn = wait_for(lambda: showing(tmux, "trading_state trading"), 30, "a frame")
        assert "daily_loss" in drawn and "error_rate" in drawn  # every guard, with its level and reading
        assert "lease holder: " in drawn and "pid" in drawn  # the bot on this host holds the account
        assert "orders and fills" in drawn and "open incidents (0)" in drawn
        assert "Prefect at http://127.0.0.1:" in drawn and "unreachable" in drawn  # said, and the rest drawn
    finally:
        bot.terminate()
        bot.wait(30)

    gone = wait_for(lambda: showing(tmux, f"bot at http://127.0.0.1:{port} unreachable"), 30, "the error on screen")
    assert f"bot at http://127.0.0.1:{port} unreachable" in gone
    frame = int(gone.split("refresh #")[1].split(",")[0])
    wait_for(lambda: f"refresh #{frame + 2}," in screen(tmux), 15, "two more frames with the bot gone")
    assert "lease holder" in screen(tmux)  # the ledger panel still drawn

    subprocess.run(["tmux", "send-keys", "-t", tmux, "C-c"], check=True)
    wait_for(
        lambda: subprocess.run(["tmux", "has-session", "-t", tmux], capture_output=True).returncode != 0, 15, "exit"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--refresh", "0"), "--refresh: must be above 0 seconds (got 0); e.g. --refresh 5"),
        (("--window-min", "-5"), "--window-min: must be above 0 minutes (got -5); e.g. --window-min 15"),
        (("--url", "bot-host:9108"), "--url: 'bot-host:9108' is not a bot's metrics address; use http://HOST:PORT"),
    ],
)
def test_bad_dashboard_input_is_one_line_and_exit_2(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    result = perps_bot(tmp_path, "dashboard", *args)

    assert result.returncode == 2 and result.stderr.startswith(f"perps-bot: error: {message}")
    assert result.stderr.count("\n") == 1 and result.stdout == ""


def test_the_dashboard_shows_each_deployments_last_run_from_prefect(
    tmp_path: Path, tmux: str, prefect_server_process: dict[str, str]
) -> None:
    api = prefect_server_process["PREFECT_API_URL"].rstrip("/")
    name = f"aaa-dashboard-{uuid.uuid4().hex[:6]}"  # sorts first among the session server's deployments
    flow = api_post(f"{api}/flows/", {"name": f"{name}-flow"})
    deployment = api_post(f"{api}/deployments/", {"name": name, "flow_id": flow["id"]})
    run = api_post(f"{api}/deployments/{deployment['id']}/create_flow_run", {})
    api_post(f"{api}/flow_runs/{run['id']}/set_state", {"state": {"type": "FAILED", "name": "Failed"}, "force": True})
    env = env_for(tmp_path, PREFECT_API_URL=api)
    command = f"{PERPS_BOT} dashboard --refresh 1 --url http://127.0.0.1:{free_port()}"  # no bot there
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", tmux, "-x", "200", "-y", "150", "-c", str(tmp_path), command],
        env=env,
        check=True,
    )

    drawn = wait_for(lambda: showing(tmux, name), 30, "the deployment's row")
    [row] = [line for line in drawn.splitlines() if name in line]
    assert "Failed" in row
    assert "unreachable" in drawn.split("runbook deployments")[0]  # the bot's panel says so; Prefect's is drawn
    subprocess.run(["tmux", "send-keys", "-t", tmux, "C-c"], check=True)


def api_post(url: str, body: dict[str, object]) -> dict[str, object]:
    """POST to the Prefect API; a 503 (the server's SQLite busy, as it answers then) is tried again."""

    def attempt() -> dict[str, object] | None:
        request = urllib.request.Request(
            url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return dict(json.loads(answer.read()))
        except urllib.error.HTTPError as error:
            if error.code != 503:
                raise
            return None

    return dict(wait_for(attempt, 30, f"POST {url}"))
