"""The parent's handle on an engine child: start it, read its lines, SIGKILL it, get its exit code.

Two ways to start the same engine_child.main(): a fresh interpreter (`python -m trader.drills.engine_child`, what
the engine-crash drill measures), or forked by a multiprocessing fork server that preloaded the engine's modules
(`forked=True`: a start in tens of milliseconds instead of a second, for tests that restart the engine 50 times).
Either way it is its own process and dies by a real SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, Any

from trader.drills.crash_points import ENV as KILL_AT_ENV
from trader.errors import TraderError

# Variables that could point a child at the operator's services; the child forces its own anyway.
_SCRUBBED = ("DATABASE_URL", "REDIS_URL", "COLD_STORAGE_URL", "STATE_DIR", "LOG_DIR", "METRICS_FILE")


class EngineChildError(TraderError):
    """The engine child did not do what the drill expected (no READY, exited on its own, ...)."""


@dataclass(frozen=True)
class Line:
    tag: str  # STANDBY, READY, CYCLE, CRASH, DONE
    payload: dict[str, Any]
    at: float  # time.monotonic() when the parent read it


class EngineProcess:
    """One engine child: its stdout lines arrive on a queue, stamped with the parent's monotonic clock."""

    def __init__(
        self,
        state_dir: Path,
        *,
        kill_at: str | None = None,
        handshake: bool = False,
        args: list[str] | None = None,
        stderr_path: Path | None = None,
        forked: bool = False,
    ) -> None:
        argv = ["--state-dir", str(state_dir), *(["--handshake"] if handshake else []), *(args or [])]
        if kill_at:
            argv += ["--kill-at", kill_at]
        self._stderr: IO[bytes] | int = subprocess.DEVNULL
        self._connection: Connection | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: queue.Queue[Line | None] = queue.Queue()
        self.seen: list[Line] = []
        self.launched = time.monotonic()
        if forked:
            from trader.drills.engine_child import run_forked

            if stderr_path is not None:
                argv += ["--log-file", str(stderr_path)]
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["trader.drills.engine_preload"])
            self._connection, theirs = context.Pipe()
            self._process = context.Process(target=run_forked, args=(argv, theirs), daemon=True)
            self._process.start()
            theirs.close()
            assert self._process.pid is not None
            self.pid = self._process.pid
            source = self._read_connection
        else:
            env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED and k != KILL_AT_ENV}
            env["METRICS_ENABLED"] = "0"
            env["PYTHONUNBUFFERED"] = "1"
            if stderr_path is not None:
                self._stderr = stderr_path.open("ab")
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "trader.drills.engine_child", *argv],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                env=env,
                cwd=os.getcwd(),
            )
            self.pid = self.proc.pid
            source = self._read_stdout
        self._reader = threading.Thread(target=source, name=f"engine-child-{self.pid}", daemon=True)
        self._reader.start()

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._take(raw.decode("utf-8", "replace").strip())
        self.lines.put(None)

    def _read_connection(self) -> None:
        assert self._connection is not None
        while True:
            try:
                self._take(self._connection.recv_bytes().decode("utf-8", "replace").strip())
            except (EOFError, OSError):
                break
        self.lines.put(None)

    def _take(self, text: str) -> None:
        tag, _, rest = text.partition(" ")
        if tag == "CRASH":
            point, _, n = rest.partition(" ")
            self.lines.put(Line(tag, {"point": point, "n": int(n or 0)}, time.monotonic()))
        elif tag in ("STANDBY", "READY", "CYCLE", "DONE"):
            self.lines.put(Line(tag, json.loads(rest), time.monotonic()))

    def next_line(self, timeout: float) -> Line | None:
        """The next line, or None once the child's stdout closed; EngineChildError after `timeout` seconds."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise EngineChildError(f"engine child {self.pid}: no output within {timeout:g} s") from None
        if line is not None:
            self.seen.append(line)
        else:
            self.lines.put(None)  # stay closed for later calls
        return line

    def wait_for(self, *tags: str, timeout: float = 60.0) -> Line | None:
        """The next line with one of `tags`, or None when the child's output ended first."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.next_line(max(0.0, deadline - time.monotonic()))
            if line is None or line.tag in tags:
                return line

    def send(self, command: str) -> None:
        """A command for a --handshake child: go (trade) or stop."""
        if self._connection is not None:
            self._connection.send_bytes(command.encode())
            return
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(f"{command}\n".encode())
        self.proc.stdin.flush()

    def kill(self) -> float:
        """SIGKILL the child now; returns the monotonic time of the kill."""
        at = time.monotonic()
        os.kill(self.pid, signal.SIGKILL)
        return at

    def alive(self) -> bool:
        if self._process is not None:
            return self._process.is_alive()
        assert self.proc is not None
        return self.proc.poll() is None

    def wait(self, timeout: float = 60.0) -> int:
        """The exit code (-9 after a SIGKILL); the child is killed if it outlives `timeout`."""
        try:
            if self._process is not None:
                self._process.join(timeout)
                code = self._process.exitcode
                if code is None:
                    self.kill()
                    self._process.join()
                    raise EngineChildError(f"engine child {self.pid} still ran after {timeout:g} s; killed")
                return code
            assert self.proc is not None
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise EngineChildError(f"engine child {self.pid} still ran after {timeout:g} s; killed") from None
        finally:
            self._close()

    def _close(self) -> None:
        self._reader.join(timeout=5)
        streams: list[Any] = [self._connection]
        if self.proc is not None:
            streams += [self.proc.stdin, self.proc.stdout]
        for stream in streams:
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if not isinstance(self._stderr, int):
            self._stderr.close()

    def __enter__(self) -> EngineProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.alive():
            self.kill()
            with contextlib.suppress(EngineChildError):
                self.wait(10)
        self._close()
