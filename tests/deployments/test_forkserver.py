"""The fork server and its launcher (deployments/forkserver.py), with real processes and signals.

The engine here is Prefect's own `python -m prefect.engine`: with a malformed run id it ends at once with status 1;
pointed at an API that accepts connections and never answers, it waits in its first request, a long-running engine
to signal. The e2e use (bots on workers, a worker SIGKILLed) is tests/deployments/test_workers_failover.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import trader
from deployments import forkserver
from tests.processes import pid_alive as alive
from tests.processes import wait_for

ROOT = Path(__file__).resolve().parents[2]
HANDSHAKE = 2.0  # seconds a launcher waits on a wedged fork server here (GPT_TRADER_FORK_HANDSHAKE_SECONDS)


class Server:
    """One fork server of this module's own, its log read for the engines it forked."""

    def __init__(self, folder: Path) -> None:
        self.socket = folder / "fork.sock"
        self.log = folder / "forkserver.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "deployments.forkserver", "serve", "--socket", str(self.socket)],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self.socket.exists, timeout=120, what="the fork server's socket")

    def forked(self) -> list[int]:
        return [int(pid) for pid in re.findall(r"forked engine (\d+)", self.log.read_text())]

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    started = Server(tmp_path_factory.mktemp("forkserver"))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture()
def silent_api() -> Iterator[tuple[str, list[socket.socket]]]:
    """An HTTP address that accepts connections and never answers: the engine waits there until signalled."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/api", held
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


def launcher(socket_path: Path | str, run_id: str, api_url: str = "http://127.0.0.1:9/api") -> subprocess.Popen[str]:
    env = {
        **os.environ,
        forkserver.SOCKET_ENV: str(socket_path),
        "PREFECT__FLOW_RUN_ID": run_id,
        "PREFECT_API_URL": api_url,
        "PREFECT_CLIENT_MAX_RETRIES": "0",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "deployments.forkserver", "launch"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def new_engine(server: Server, before: list[int]) -> int:
    return int(
        wait_for(lambda: [p for p in server.forked() if p not in before], timeout=10, what="the forked engine")[0]
    )


def waiting_engine(server: Server, silent_api: tuple[str, list[socket.socket]]) -> tuple[subprocess.Popen[str], int]:
    """A launcher and its forked engine, the engine waiting in its first API request (signal handling set up)."""
    url, connections = silent_api
    before = server.forked()
    process = launcher(server.socket, str(uuid.uuid4()), url)
    engine = new_engine(server, before)
    wait_for(lambda: connections, timeout=30, what="the engine's first API request")
    return process, engine


def test_a_run_is_forked_with_the_launchers_stdio_and_ends_with_the_engines_status(server: Server) -> None:
    before = server.forked()

    process = launcher(server.socket, "not-a-uuid")
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == 1  # prefect.engine's exit(1) for a malformed run id, as the launcher's status
    assert "Invalid flow run id" in stderr  # the engine wrote to the launcher's stderr
    assert "gpt-trader launcher" not in stderr  # no fallback: it ran in a fork
    assert len(server.forked()) == len(before) + 1


def test_without_a_reachable_fork_server_the_launcher_runs_the_engine_itself(tmp_path: Path) -> None:
    process = launcher(tmp_path / "nobody.sock", "not-a-uuid")
    _, stderr = process.communicate(timeout=120)

    assert process.returncode == 1
    assert "unreachable" in stderr and "starting the engine in this process" in stderr
    assert "Invalid flow run id" in stderr  # the engine still ran, the slow way


def test_a_fork_server_older_than_the_code_refuses_and_the_launcher_runs_the_engine_itself(server: Server) -> None:
    module = Path(trader.__file__)
    stat = module.stat()
    before = server.forked()
    os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    try:
        process = launcher(server.socket, "not-a-uuid")
        _, stderr = process.communicate(timeout=120)
    finally:
        os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    assert process.returncode == 1 and "Invalid flow run id" in stderr
    assert f"{module} changed since the fork server started: restart it" in stderr
    assert server.forked() == before  # nothing forked from the stale code


def test_sigterm_to_the_launcher_reaches_the_engine_and_the_launcher_ends_as_it_did(
    server: Server, silent_api: tuple[str, list[socket.socket]]
) -> None:
    process, engine = waiting_engine(server, silent_api)

    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)

    wait_for(lambda: not alive(engine), timeout=30, what="the engine ended")
    assert process.returncode != 0  # an engine terminated mid-start did not succeed, and the launcher says so
    assert alive(server.process.pid)


def test_an_engine_never_outlives_its_sigkilled_launcher(
    server: Server, silent_api: tuple[str, list[socket.socket]]
) -> None:
    process, engine = waiting_engine(server, silent_api)

    process.kill()  # the worker's machine is gone: nothing is forwarded
    process.wait(timeout=10)

    wait_for(lambda: not alive(engine), timeout=10, what="the engine ended with its launcher")
    assert alive(server.process.pid)  # the fork server serves on


def test_the_fork_server_starts_nothing_but_the_engine(server: Server) -> None:
    before = server.forked()
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.connect(str(server.socket))
        request = {"argv": ["-m", "http.server"], "env": {}, "cwd": str(ROOT)}
        socket.send_fds(sock, [json.dumps(request).encode()], [0, 1, 2])
        reply = json.loads(sock.recv(4096))

    assert reply == {"refused": "only -m prefect.engine is started here"}
    assert server.forked() == before


def test_a_wedged_fork_server_delays_a_start_by_the_handshake_only_and_runs_nothing_twice(
    server: Server, tmp_path: Path
) -> None:
    before = server.forked()
    os.kill(server.process.pid, signal.SIGSTOP)  # wedged: it accepts nothing and answers nothing
    try:
        with (tmp_path / "out").open("w") as out, (tmp_path / "err").open("w") as err:
            env = {
                **os.environ,
                forkserver.SOCKET_ENV: str(server.socket),
                forkserver.HANDSHAKE_ENV: str(HANDSHAKE),
                "PREFECT__FLOW_RUN_ID": "not-a-uuid",
            }
            started = time.monotonic()
            process = subprocess.Popen(
                [sys.executable, "-m", "deployments.forkserver", "launch"], cwd=ROOT, env=env, stdout=out, stderr=err
            )
            code = process.wait(timeout=120)
        waited = time.monotonic() - started
    finally:
        os.kill(server.process.pid, signal.SIGCONT)

    stderr = (tmp_path / "err").read_text()
    assert code == 1 and "Invalid flow run id" in stderr  # the launcher ran the engine itself
    assert "unreachable" in stderr and "timed out" in stderr
    assert HANDSHAKE <= waited < HANDSHAKE + 60
    # the request it left behind is served late: the engine forked for it finds its launcher gone and ends at once
    late = wait_for(lambda: [p for p in server.forked() if p not in before], timeout=20, what="the late fork")
    wait_for(lambda: not any(alive(p) for p in late), timeout=10, what="the late fork ended")
    assert stderr.count("Invalid flow run id") == 1  # one engine ran this run, not two
