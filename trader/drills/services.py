"""Services a drill (or a test, or a bench) owns: a private redis-server on a free loopback port (no persistence) and
a private PostgreSQL cluster, which it may stop and start for real, and the fallback store that times its own S3
sync."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from trader.drills.namespace import DrillError, DrillUnavailable
from trader.state.cold import FallbackObjectStore


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str | None:
    """DRILL_REDIS_SERVER, else redis-server on PATH, else /usr/bin/redis-server; None when none exists."""
    configured = os.environ.get("DRILL_REDIS_SERVER", "").strip()
    if configured:
        return configured if Path(configured).exists() else None
    found = shutil.which("redis-server")
    if found:
        return found
    return "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None


class PrivateRedis:
    """redis-server on 127.0.0.1:<free port>, no RDB/AOF: stop() is a real outage, start() an empty Redis."""

    def __init__(self) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise DrillUnavailable(
                "no Redis for the drill: REDIS_URL is not set and redis-server is not installed "
                "(install redis-server, or set DRILL_REDIS_SERVER or DRILL_REDIS_URL)"
            )
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.exceptions.ConnectionError:
                    pass
                if self._process.poll() is not None or time.monotonic() > deadline:
                    code = self._process.poll()
                    self.stop()
                    raise DrillError(f"the drill's redis-server on port {self.port} did not start (exit {code})")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        """Terminate redis-server (SIGTERM, then SIGKILL after 5 s; resumed first if paused) and wait for it."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGCONT)  # a paused (SIGSTOP) server cannot act on SIGTERM
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=5)
        self._process = None


def postgres_binary(name: str) -> str:
    """PostgreSQL's server program `name` (initdb, pg_ctl) from the newest /usr/lib/postgresql/<version>/bin."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise DrillUnavailable(f"PostgreSQL's {name} is missing under /usr/lib/postgresql/*/bin: install postgresql")
    return found[-1]


class PrivatePostgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1:<free port>, trust auth, fsync off, in a temporary folder
    (initdb and the server run as the postgres user when this runs as root). `settings` are extra server settings
    (max_connections...). stop() is a real outage (connections refused), start() the same data again."""

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        self.initdb = postgres_binary("initdb")
        self.pg_ctl = postgres_binary("pg_ctl")
        self.settings = settings or {}
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="private-pg-"))
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self.data = self.root / "data"
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"
        self.running = False
        self._run([self.initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"])

    def _run(self, command: list[str]) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_postgres else []
        done = subprocess.run([*prefix, *command], capture_output=True, text=True)
        if done.returncode != 0:
            raise DrillError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-800:]}")

    def start(self) -> None:
        assert not self.running, "already running"
        extra = "".join(f" -c {name}={value}" for name, value in self.settings.items())
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off{extra}"
        log = str(self.root / "postgres.log")
        self._run([self.pg_ctl, "-D", str(self.data), "-o", options, "-l", log, "-w", "start"])
        self.running = True

    def stop(self) -> None:
        if self.running:
            self._run([self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop"])
            self.running = False

    def destroy(self) -> None:
        """Stop the server and remove its folder."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


class TimedFallbackStore(FallbackObjectStore):
    """FallbackObjectStore that remembers how long its last sync() took and how many objects it uploaded."""

    last_sync_ms: float | None = None
    last_synced: int | None = None
    last_sync_queued: int | None = None

    def sync(self) -> int:
        with self._lock:
            queued = len(self.pending)
            started = time.perf_counter()
            synced = super().sync()
            if self.available:
                self.last_sync_ms = (time.perf_counter() - started) * 1000
                self.last_synced = synced
                self.last_sync_queued = queued
            return synced
