"""perps-bot websocket test | monitor | stability | capture, as an operator types them, against the local WebSocket
server (trader/testing/advanced_trade/ws.py) with a real CDP key file for the user channel."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deployments.test_cli import PERPS_BOT, perps_bot
from trader.testing.advanced_trade import generate_cdp_key
from trader.testing.advanced_trade.ws import WsTestServer

KEY = generate_cdp_key("organizations/test/apiKeys/ws-cli")


@pytest.fixture
def server() -> Iterator[WsTestServer]:
    with WsTestServer(key_name=KEY.name, public_key_pem=KEY.public_key_pem, heartbeat_seconds=0.1) as running:
        yield running


def env_for(server: WsTestServer, tmp_path: Path) -> dict[str, str]:
    return {
        "COINBASE_WS_URL": server.url,
        "COINBASE_WS_USER_URL": server.url,
        "COINBASE_KEY_FILE": str(KEY.write_key_file(tmp_path / "cdp_key.json")),
    }


def test_websocket_test_reports_the_first_message_of_each_channel_and_exits_0_or_1(
    server: WsTestServer, tmp_path: Path
) -> None:
    env = env_for(server, tmp_path)

    good = perps_bot(tmp_path, "websocket", "test", "--channels", "heartbeats,user", **env)
    silent = perps_bot(tmp_path, "websocket", "test", "--channels", "heartbeats,ticker", "--duration", "1", **env)

    assert good.returncode == 0, good.stdout + good.stderr
    assert "heartbeats: first message after" in good.stdout and "user: first message after" in good.stdout
    assert {(s.channel, s.authenticated) for s in server.subscribes} >= {("user", True), ("heartbeats", False)}
    assert silent.returncode == 1 and "ticker: no message within 1 s" in silent.stdout  # nothing traded here
    assert KEY.private_key_pem.splitlines()[1] not in good.stdout + good.stderr + silent.stdout + silent.stderr


def test_capture_saves_one_json_object_a_line_and_a_summary(server: WsTestServer, tmp_path: Path) -> None:
    dump = tmp_path / "ws_dump.json"

    result = perps_bot(
        tmp_path, "websocket", "capture", "--duration", "1.5", "--save", str(dump), **env_for(server, tmp_path)
    )

    assert result.returncode == 0, result.stdout + result.stderr
    lines = [json.loads(line) for line in dump.read_text().splitlines()]
    beats = [m for m in lines if m["channel"] == "heartbeats"]
    assert len(beats) >= 5 and {"channel", "timestamp", "sequence_num", "events"} <= set(beats[0])
    assert f"saved {len(lines)} messages to {dump}" in result.stdout
    assert f"heartbeats {len(beats)}" in result.stdout and "reconnects 0" in result.stdout


def test_stability_counts_the_reconnect_after_a_dropped_connection(server: WsTestServer, tmp_path: Path) -> None:
    def drop_once() -> None:
        deadline = time.monotonic() + 10
        while server.connections < 1 or not server.subscribes:
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        time.sleep(0.5)
        server.drop()

    dropper = threading.Thread(target=drop_once)
    dropper.start()
    result = perps_bot(tmp_path, "websocket", "stability", "--duration", "3", **env_for(server, tmp_path))
    dropper.join()

    assert result.returncode == 0, result.stdout + result.stderr
    assert "reconnects 1; disconnects 1; gaps 0" in result.stdout
    assert server.connections == 2


def test_monitor_prints_a_status_line_every_interval(server: WsTestServer, tmp_path: Path) -> None:
    result = perps_bot(
        tmp_path, "websocket", "monitor", "--interval", "0.5", "--duration", "1.6", **env_for(server, tmp_path)
    )

    assert result.returncode == 0, result.stdout + result.stderr
    status = [line for line in result.stdout.splitlines() if "messages" in line]
    assert len(status) >= 3 and all("connected;" in line for line in status[1:])


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (("websocket", "test", "--channels", "heartbeat"), {}, "unknown WebSocket channel 'heartbeat'"),
        (("websocket", "stability", "--duration", "0"), {}, "--duration: must be more than 0 seconds"),
        (("websocket", "monitor", "--interval", "-1"), {}, "--interval: must be more than 0 seconds"),
        (("websocket", "frobnicate"), {}, "websocket: expected one of test, monitor, stability, capture"),
        (("websocket", "capture"), {}, "give --save FILE"),
        (("websocket", "test"), {"COINBASE_WS_URL": "https://advanced-trade-ws.coinbase.com"}, "COINBASE_WS_URL:"),
        (("websocket", "capture", "--save", "ws_dump.json", "--channels", "user"), {}, "need a CDP key"),
    ],
)
def test_bad_input_is_one_line_naming_it_and_exit_2(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], named: str
) -> None:
    result = perps_bot(tmp_path, *args, **env)

    assert result.returncode == 2, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and named in result.stderr
    assert not (tmp_path / "ws_dump.json").exists()


def test_ctrl_c_ends_monitor_with_exit_0(server: WsTestServer, tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("COINBASE_")}
    environ.update(env_for(server, tmp_path))
    process = subprocess.Popen(
        [str(PERPS_BOT), "websocket", "monitor", "--interval", "0.3"],
        cwd=tmp_path,
        env=environ,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    first = process.stdout.readline()  # a status line: it runs
    os.killpg(process.pid, signal.SIGINT)
    assert process.wait(timeout=20) == 0 and "messages" in first
