"""The orchestrator poller: everything the trading-bot run needs from the Prefect API, kept off the cycle's path.

Invariant: a cycle never waits on Prefect. One daemon thread ("orchestrator-poller") reads the flow run's state
(a cancel in the UI) and the kill_switch/reduce_only Variables through one fail-fast client (short timeout, no client
retries) and publishes last-known values; the cycle reads only those. The run's log lines and artifacts go through
the same thread: lines wait in a bounded buffer (oldest dropped and counted while the API does not answer) and are
handed to Prefect's run logger only after a poll succeeded, because Prefect's own log queue (APILogWorker) is
unbounded and its client waits minutes on a hung server with retries.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import FlowRun, StateType

from prefect_adapter.variables import SwitchVariables, VariableReading, VariablesUnavailable, read_switch_values
from trader.emergency.procedures import Switch

log = logging.getLogger(__name__)

POLL_SECONDS = 2.0
TIMEOUT_SECONDS = 2.0
# The bot's own flow-run heartbeat (besides Prefect's every 30 s, its minimum): the zombie automation crashes a run
# 45 s after its last heartbeat (deployments/automations.py), and heartbeats sent while the server is down are lost,
# so a heartbeat every 5 s keeps a live bot from being declared dead by a server outage shorter than 40 s.
HEARTBEAT_SECONDS = 5.0
HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"
RUN_LOG_CAPACITY = 500
JOB_CAPACITY = 16

Job = Callable[[SyncPrefectClient], object]


@dataclass(frozen=True)
class LogLine:
    created: float
    level: int
    message: str


class RunLog:
    """Lines for the run's log in the Prefect UI, bounded in memory: when full, the oldest line goes and is counted."""

    def __init__(self, capacity: int = RUN_LOG_CAPACITY) -> None:
        self._lines: deque[LogLine] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self.dropped = 0  # lines dropped since the run started
        self.unreported = 0  # dropped lines not yet announced in the run's log

    def log(self, level: int, msg: str, *args: object) -> None:
        """Buffer one line (formatted now, so later changes to args do not show)."""
        line = LogLine(time.time(), level, msg % args if args else msg)
        with self._lock:
            if len(self._lines) == self._lines.maxlen:
                self.dropped += 1
                self.unreported += 1
            self._lines.append(line)

    def info(self, msg: str, *args: object) -> None:
        self.log(logging.INFO, msg, *args)

    def warning(self, msg: str, *args: object) -> None:
        self.log(logging.WARNING, msg, *args)

    def take(self) -> tuple[list[LogLine], int]:
        """Every buffered line and the number dropped since the last take."""
        with self._lock:
            lines, self._lines = list(self._lines), deque(maxlen=self._lines.maxlen)
            dropped, self.unreported = self.unreported, 0
        return lines, dropped

    def __len__(self) -> int:
        return len(self._lines)


class OrchestratorPoller:
    """One background thread between the bot and the Prefect API; read cancel_reason() and variables() any time."""

    def __init__(
        self,
        flow_run_id: str | None,
        run_logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
        *,
        interval_seconds: float = POLL_SECONDS,
        timeout_seconds: float = TIMEOUT_SECONDS,
        log_capacity: int = RUN_LOG_CAPACITY,
        api_url: str | None = None,
        heartbeat_flow: str | None = None,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
    ) -> None:
        """Built in the flow's thread: the client and the thread take that thread's Prefect settings and run context.
        heartbeat_flow: the flow's name; with it, the run's heartbeat event goes out every heartbeat_seconds while
        the run is Running (the zombie automation matches the flow by name)."""
        self.flow_run_id = UUID(flow_run_id) if flow_run_id else None
        self.heartbeat_flow = heartbeat_flow
        self.heartbeat_seconds = heartbeat_seconds
        self.heartbeats = 0  # heartbeat events the API accepted
        self._last_heartbeat: float | None = None
        self.run_logger = run_logger
        self.interval_seconds = interval_seconds
        self.client = SwitchVariables(timeout_seconds, api_url=api_url)
        self.run_log = RunLog(log_capacity)
        self.jobs_dropped = 0
        self._jobs: deque[tuple[str, Job]] = deque()
        self._reading = VariableReading(None)
        self._cancel: str | None = None
        self._polls = 0
        self._down_since: float | None = None
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # --- what the cycle reads (never blocks on the network) --------------------------------------------------

    def variables(self) -> VariableReading:
        """The Variables as last read, and why the latest read failed (None: it answered)."""
        return self._reading

    def cancel_reason(self) -> str | None:
        """Set once the flow run was seen CANCELLING or CANCELLED on the API."""
        return self._cancel

    @property
    def api_down(self) -> bool:
        return self._down_since is not None

    # --- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> OrchestratorPoller:
        """Start the daemon thread (it runs in a copy of this thread's context: run logger, settings)."""
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._loop,), name="orchestrator-poller", daemon=True)
        self._thread.start()
        return self

    def submit(self, name: str, job: Job) -> None:
        """Run job(client) on the poller thread once the API answers (an artifact); bounded, oldest dropped."""
        with self._changed:
            if len(self._jobs) >= JOB_CAPACITY:
                dropped, _ = self._jobs.popleft()
                self.jobs_dropped += 1
                log.warning("Prefect API job %s dropped: more than %d waiting", dropped, JOB_CAPACITY)
            self._jobs.append((name, job))

    def wait_for_first_poll(self, timeout: float) -> bool:
        """Before the first cycle: wait (at most timeout) for the first read; True when the Variables were read."""
        with self._changed:
            self._changed.wait_for(lambda: self._polls >= 1, timeout)
            return self._reading.values is not None

    def wait_for_poll(self, timeout: float) -> bool:
        """Wait until a poll that started after this call has finished; False on timeout."""
        with self._changed:
            target = self._polls + 2  # the poll in flight may have started before the call
            return self._changed.wait_for(lambda: self._polls >= target, timeout)

    def close(self, flush_seconds: float = 5.0) -> None:
        """Stop the thread; one last bounded try to ship the buffered lines and jobs (an outage loses them)."""
        self._stopping.set()
        with self._changed:
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(flush_seconds + self.client.timeout_seconds * 4)
            if self._thread.is_alive():
                log.warning("orchestrator poller still waiting on the Prefect API; left behind (daemon thread)")
        left = len(self.run_log) + len(self._jobs)
        if left:
            log.warning("%d run-log lines and Prefect API jobs not delivered: the API did not answer", left)
        self.client.close()

    # --- the thread ------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._poll_and_ship()
            self._stopping.wait(self.interval_seconds)
        if self._poll_and_ship() and (len(self.run_log) or self._jobs):
            self._ship()  # a second pass for what the last cycles added while we shipped

    def _poll_and_ship(self) -> bool:
        ok = self._poll()
        if ok:
            self._ship()
        return ok

    def _poll(self) -> bool:
        try:
            state, values = self.client.call(self._read)
        except VariablesUnavailable as error:
            self._publish(VariableReading(self._reading.values, str(error)), None)
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.warning("%s; trading goes on with the last values read", error)
            return False
        except Exception as error:  # the poller must never die: it is the bot's only view of the orchestrator
            log.exception("orchestrator poll failed: %s", error)
            self._publish(VariableReading(self._reading.values, f"{type(error).__name__}: {error}"), None)
            return False
        cancel = f"flow run is {state.value}" if state in (StateType.CANCELLING, StateType.CANCELLED) else None
        self._publish(VariableReading(values), cancel)
        if self._down_since is not None:
            log.warning("Prefect API answers again after %.0f s", time.monotonic() - self._down_since)
            self._down_since = None
        return True

    def _read(self, client: SyncPrefectClient) -> tuple[StateType | None, dict[Switch, object]]:
        state = None
        if self.flow_run_id is not None:
            run = client.read_flow_run(self.flow_run_id)
            state = run.state.type if run.state is not None else None
            if state == StateType.RUNNING and not self._stopping.is_set():
                self._heartbeat(client, run)
        return state, read_switch_values(client)

    def _heartbeat(self, client: SyncPrefectClient, run: FlowRun) -> None:
        """The run's heartbeat event, as Prefect's own heartbeat thread sends it, when one is due."""
        now = time.monotonic()
        if self.heartbeat_flow is None or (
            self._last_heartbeat is not None and now - self._last_heartbeat < self.heartbeat_seconds
        ):
            return
        flow = {"prefect.resource.role": "flow", "prefect.resource.name": self.heartbeat_flow}
        related = [{"prefect.resource.id": f"prefect.flow.{run.flow_id}", **flow}]
        if run.deployment_id is not None:
            deployment = f"prefect.deployment.{run.deployment_id}"
            related.append({"prefect.resource.id": deployment, "prefect.resource.role": "deployment"})
        event = {
            "id": str(uuid4()),
            "occurred": datetime.now(UTC).isoformat(),
            "event": HEARTBEAT_EVENT,
            "resource": {"prefect.resource.id": f"prefect.flow-run.{run.id}", "prefect.resource.name": run.name},
            "related": related,
            "payload": {},
        }
        client.request("POST", "/events", json=[event])
        self._last_heartbeat = now
        self.heartbeats += 1

    def _publish(self, reading: VariableReading, cancel: str | None) -> None:
        with self._changed:
            self._reading = reading
            if cancel is not None and self._cancel is None:
                self._cancel = cancel
            self._polls += 1
            self._changed.notify_all()

    def _ship(self) -> None:
        """Hand the buffered lines to the run logger, then run waiting jobs; a failed job waits for the next poll."""
        lines, dropped = self.run_log.take()
        if dropped:
            self._emit(
                LogLine(
                    time.time(),
                    logging.WARNING,
                    f"{dropped} run-log lines dropped while the Prefect API did not answer "
                    f"(oldest first; {self.run_log.dropped} in this run)",
                )
            )
        for line in lines:
            self._emit(line)
        while self._jobs:
            name, job = self._jobs[0]
            try:
                self.client.call(job)
            except VariablesUnavailable as error:
                log.warning("Prefect API job %s not done yet: %s", name, error)
                return
            with self._changed:
                if self._jobs and self._jobs[0][1] is job:
                    self._jobs.popleft()

    def _emit(self, line: LogLine) -> None:
        if self.run_logger is None:
            return
        adapter = self.run_logger
        logger = adapter.logger if isinstance(adapter, logging.LoggerAdapter) else adapter
        if not logger.isEnabledFor(line.level):
            return
        extra: Any = None
        if isinstance(adapter, logging.LoggerAdapter):
            _, kwargs = adapter.process(line.message, {})
            extra = kwargs.get("extra")
        record = logger.makeRecord(logger.name, line.level, "(bot)", 0, line.message, (), None, extra=extra)
        record.created, record.msecs = line.created, (line.created % 1) * 1000  # the time it happened, not now
        logger.handle(record)
