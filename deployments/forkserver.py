"""Lighter flow-run processes: a fork server per machine that holds Prefect, the flows and Great Expectations
imported, and the launcher that the process worker runs as each flow run's command.

A flow run started by the process worker is a fresh `python -m prefect.engine`: it imports Prefect, the bot and
Great Expectations again (~5 CPU-seconds and ~240 MB each; docs/performance.md). Forty bots restarted at once after
a machine is lost queue for the same two cores. The fork server imports all of it once; each run is a fork of it
that shares those pages copy-on-write and starts in a fraction of a second.

What it keeps: a flow run started through the fork server behaves as the `python -m prefect.engine` the worker
would have started:
- the same arguments, environment, working directory and stdio (the launcher's own descriptors, passed over the
  socket), so logs, the run's settings and the control channel are the worker's;
- a signal sent to the launcher (the worker's cancel, a group-wide SIGKILL) reaches the engine: SIGTERM, SIGINT and
  SIGHUP are forwarded, and the engine SIGKILLs itself as soon as its launcher's end of the socket closes, so it
  never trades on after its launcher (and the worker above it) is gone;
- the launcher ends with the engine's status (a death by signal is re-raised on the launcher);
- when the fork server cannot be reached, or refuses because the project's code changed since it started, the
  launcher execs `python -m prefect.engine` itself and says why on stderr: the run starts the slow way, never not.

The fork server is single-threaded and forks from its main loop (nothing else runs while it forks). Stopping or
losing it does not stop the runs it started: they carry on, and their launchers then end with status 1 when they
end (their real status went with the fork server).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

SOCKET_ENV = "GPT_TRADER_FORK_SERVER"
ENGINE_ARGV = ["-m", "prefect.engine"]
LAUNCH_COMMAND = "python -m deployments.forkserver launch"
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
PRELOAD = (
    "prefect.engine",
    "prefect.flow_engine",
    "flows.bot",
    "flows.checklists",
    "flows.reconcile",
    "flows.checkpoint",
    "flows.backup",
    "flows.maintenance",
    "flows.drills",
    "flows.emergency",
)
PROJECT_PACKAGES = ("trader", "flows", "tasks", "prefect_adapter", "deployments")
MAX_REQUEST_BYTES = 1 << 20
# How long the launcher waits for the fork server to accept and answer with the engine's pid (it answers in
# milliseconds; a stopped or wedged fork server must not hold a flow run's start). On timeout the launcher closes the
# socket, so an engine forked after all ends itself at once (its launcher is gone), and starts the engine itself.
HANDSHAKE_SECONDS = 10.0
HANDSHAKE_ENV = "GPT_TRADER_FORK_HANDSHAKE_SECONDS"  # overrides HANDSHAKE_SECONDS (the tests' wedged fork server)


# --- the launcher: the process worker's command for each flow run ----------------------------------------------


def launch() -> int:
    """Start this flow run's engine in a fork of the fork server, or exec it here; return (or die by) its status."""
    path = os.environ.get(SOCKET_ENV, "").strip()
    if not path:
        _exec_engine()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(float(os.environ.get(HANDSHAKE_ENV) or HANDSHAKE_SECONDS))
    try:
        sock.connect(path)
        request = {"argv": ENGINE_ARGV, "env": dict(os.environ), "cwd": os.getcwd()}
        socket.send_fds(sock, [json.dumps(request).encode()], [0, 1, 2])
        reply = json.loads(sock.recv(MAX_REQUEST_BYTES) or b"{}")
        sock.settimeout(None)  # from here on: as long as the engine runs
    except (OSError, ValueError) as error:  # TimeoutError is an OSError
        _say(f"fork server {path} unreachable ({error}): starting the engine in this process")
        sock.close()
        _exec_engine()
    if "pid" not in reply:
        _say(f"fork server {path} refused: {reply.get('refused', 'no answer')}; starting the engine in this process")
        sock.close()
        _exec_engine()
    child = int(reply["pid"])
    for number in FORWARDED_SIGNALS:
        signal.signal(number, lambda signum, _frame: _forward(child, signum))
    message = sock.recv(4096)  # the engine's wait status, sent when the fork server reaps it
    if not message:
        _say(f"engine {child} ended while its fork server was gone: its status is unknown")
        return 1
    status = int(json.loads(message)["status"])
    if os.WIFSIGNALED(status):
        death = os.WTERMSIG(status)
        signal.signal(death, signal.SIG_DFL)
        os.kill(os.getpid(), death)
    return os.waitstatus_to_exitcode(status)


def wait_ready(path: Path, running: Callable[[], bool], timeout: float = 120.0) -> bool:
    """Wait until the fork server started for `path` listens there; False if it exited (running() False) or the
    timeout passed first. Its imports take several seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not path.exists():
        if not running() or time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _forward(child: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(child, signum)


def _exec_engine() -> NoReturn:
    os.execv(sys.executable, [sys.executable, *ENGINE_ARGV])


def _say(line: str) -> None:
    print(f"gpt-trader launcher: {line}", file=sys.stderr, flush=True)


# --- the fork server ---------------------------------------------------------------------------------------------


def preload() -> dict[str, float]:
    """Import what every flow run needs; the modification times of the project's modules now loaded."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    from trader.quality import gx_runtime

    gx_runtime.gx()
    return project_files()


def project_files() -> dict[str, float]:
    """The project's loaded modules' files and their modification times."""
    root = Path(__file__).resolve().parent.parent
    files: dict[str, float] = {}
    for module in list(sys.modules.values()):
        name = getattr(module, "__name__", "")
        path = getattr(module, "__file__", None)
        if path and name.split(".")[0] in PROJECT_PACKAGES and Path(path).resolve().is_relative_to(root):
            try:
                files[path] = os.stat(path).st_mtime
            except OSError:
                files[path] = -1.0
    return files


def changed_file(files: dict[str, float]) -> str | None:
    """The first of `files` whose modification time is no longer the one recorded, or None."""
    for path, mtime in files.items():
        try:
            now = os.stat(path).st_mtime
        except OSError:
            now = -1.0
        if now != mtime:
            return path
    return None


class ForkServer:
    """Accepts launchers on a Unix socket; forks one engine per launcher and reports its status back."""

    def __init__(self, path: Path, files: dict[str, float]) -> None:
        import selectors

        self.path = path
        self.files = files
        self.children: dict[int, socket.socket | None] = {}  # engine pid -> its launcher's connection
        self.stopping = False
        self.selector = selectors.DefaultSelector()
        if path.exists() or path.is_symlink():
            path.unlink()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        umask = os.umask(0o177)  # the launcher's environment carries the run's secrets: only this user may connect
        try:
            self.listener.bind(str(path))
        finally:
            os.umask(umask)
        self.listener.listen(128)
        self.wake_read, self.wake_write = os.pipe()
        os.set_blocking(self.wake_read, False)
        os.set_blocking(self.wake_write, False)
        signal.set_wakeup_fd(self.wake_write)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        self.selector.register(self.wake_read, selectors.EVENT_READ, "wake")

    def _stop(self, _signum: int, _frame: Any) -> None:
        self.stopping = True

    def serve(self) -> None:
        """Serve until SIGTERM or SIGINT; the engines started go on without it."""
        print(f"fork server ready on {self.path} (pid {os.getpid()})", flush=True)
        try:
            while not self.stopping:
                for key, _events in self.selector.select(timeout=1.0):
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        self._drain_wake()
                    else:
                        self._launcher_gone(key.fileobj)  # type: ignore[arg-type]
                self._reap()
        finally:
            self.selector.close()
            self.listener.close()
            self.path.unlink(missing_ok=True)

    def _drain_wake(self) -> None:
        try:
            while os.read(self.wake_read, 512):
                pass
        except BlockingIOError:
            pass

    def _accept(self) -> None:
        import selectors

        conn, _ = self.listener.accept()
        try:
            data, fds, _flags, _addr = socket.recv_fds(conn, MAX_REQUEST_BYTES, 3)
            request = json.loads(data)
        except (OSError, ValueError) as error:
            print(f"fork server: bad request ({error})", file=sys.stderr, flush=True)
            conn.close()
            return
        try:
            refused = self._refusal(request, fds)
            if refused is not None:
                with contextlib.suppress(OSError):
                    conn.send(json.dumps({"refused": refused}).encode())
                conn.close()
                return
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                self._become_engine(conn, fds, request)  # never returns
            self.children[pid] = conn
            self.selector.register(conn, selectors.EVENT_READ, "launcher")
            with contextlib.suppress(OSError):  # a launcher gone already: its engine sees that and ends itself
                conn.send(json.dumps({"pid": pid}).encode())
            print(f"forked engine {pid} in {request.get('cwd')}", flush=True)
        finally:
            for fd in fds:
                os.close(fd)

    def _refusal(self, request: Any, fds: list[int]) -> str | None:
        """Why this request is not forked, or None: only the engine, with the launcher's stdio, from current code."""
        if not isinstance(request, dict) or request.get("argv") != ENGINE_ARGV:
            return f"only {' '.join(ENGINE_ARGV)} is started here"
        if not isinstance(request.get("env"), dict) or not isinstance(request.get("cwd"), str):
            return "a request needs env and cwd"
        if len(fds) != 3:
            return f"expected 3 file descriptors (stdin, stdout, stderr), got {len(fds)}"
        changed = changed_file(self.files)
        if changed is not None:
            return f"{changed} changed since the fork server started: restart it"
        return None

    def _launcher_gone(self, conn: socket.socket) -> None:
        """The launcher's end closed: its engine kills itself; stop watching (the engine is still reaped)."""
        self.selector.unregister(conn)
        for pid, held in self.children.items():
            if held is conn:
                self.children[pid] = None
        conn.close()

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is not None:
                self.selector.unregister(conn)
                with contextlib.suppress(OSError):
                    conn.send(json.dumps({"status": status}).encode())
                conn.close()

    def _become_engine(self, conn: socket.socket, fds: list[int], request: dict[str, Any]) -> None:
        """In the fork: take the launcher's stdio, environment and folder, then run prefect.engine as __main__."""
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for number in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
                signal.signal(number, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self.selector.close()
            self.listener.close()
            os.close(self.wake_read)
            os.close(self.wake_write)
            for held in self.children.values():
                if held is not None:
                    held.close()
            os.setsid()  # a signal for the fork server's process group is not this run's
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
            for fd in fds:
                if fd > 2:
                    os.close(fd)
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            _watch_launcher(conn)
            code = _run_engine(list(request["argv"]))
        except BaseException:  # noqa: BLE001 - the fork must end here, whatever happened
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)


def _watch_launcher(conn: socket.socket) -> None:
    """SIGKILL this engine as soon as its launcher's end of the socket closes (worker and launcher gone)."""
    import threading

    def watch() -> None:
        try:
            while conn.recv(64):
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()


def _run_engine(argv: list[str]) -> int:
    """`python -m prefect.engine` in this process, with Prefect's settings and logging read from this environment."""
    import atexit
    import runpy

    from prefect.context import refresh_global_settings_context
    from prefect.logging.configuration import setup_logging

    refresh_global_settings_context()
    setup_logging(incremental=False)
    module = argv[argv.index("-m") + 1]
    sys.argv = [module, *argv[argv.index("-m") + 2 :]]
    sys.modules.pop(module, None)  # run a fresh __main__, as Prefect's own workspace bootstrap does
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.forkserver", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="preload and serve on a Unix socket (the worker's GPT_TRADER_FORK_SERVER)"
    )
    serve.add_argument("--socket", required=True, type=Path, help="the socket's path, e.g. var/workers/w1/fork.sock")
    commands.add_parser("launch", help="the process worker's command for a flow run")
    args = parser.parse_args(argv)
    if args.command == "launch":
        return launch()
    import gc

    files = preload()
    gc.collect()
    gc.freeze()  # the preloaded objects stay out of every fork's collections, so their pages stay shared
    ForkServer(args.socket.resolve(), files).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
