"""The orchestrator poller against a real Prefect server behind a loopback proxy that can hang like a paused server."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from prefect import flow
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import StateType
from prefect.states import Cancelling, Running

from deployments.automations import ensure_automation, zombie_automation
from flows.bot import StopBetweenCycles
from prefect_adapter.controls import BotControls
from prefect_adapter.orchestrator import OrchestratorPoller
from prefect_adapter.variables import read_switch_values
from tests.flows.conftest import set_variable
from trader.risk import RiskControls
from trader.settings import Settings, load_settings

pytestmark = pytest.mark.e2e


class HangingProxy:
    """Forwards 127.0.0.1:<port> to the Prefect server; hang() stops answering (accepts, reads nothing back)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.answering = threading.Event()
        self.answering.set()
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def hang(self) -> None:
        self.answering.clear()

    def resume(self) -> None:
        self.answering.set()

    def close(self) -> None:
        self.closed.set()
        self.answering.set()
        self.listener.close()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self.answering.wait()  # a hung server: bytes sit here until resume()
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def proxy(prefect_server: dict[str, str]) -> Iterator[HangingProxy]:
    url = urlsplit(prefect_server["PREFECT_API_URL"])
    proxy = HangingProxy((url.hostname or "127.0.0.1", url.port or 4200))
    yield proxy
    proxy.close()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(profile="dev", state_dir=tmp_path / "state", log_dir=tmp_path / "logs", broker="simulated")


def poller_through(proxy: HangingProxy, flow_run_id: str | None = None, **options: object) -> OrchestratorPoller:
    options = {"interval_seconds": 0.2, "timeout_seconds": 0.5, **options}
    return OrchestratorPoller(flow_run_id, api_url=f"http://127.0.0.1:{proxy.port}/api", **options)  # type: ignore[arg-type]


def wait_until(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} not within {timeout} s"
        time.sleep(0.05)


def test_a_variable_changed_while_the_api_hung_applies_at_the_first_poll_that_answers(
    clean_variables: None, proxy: HangingProxy, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    set_variable("kill_switch", True)
    poller = poller_through(proxy).start()
    controls = BotControls(settings, poller.variables)
    assert poller.wait_for_poll(10)
    assert controls().kill_switch

    proxy.hang()
    wait_until(lambda: poller.api_down, 10, "the poller seeing the hang")
    set_variable("kill_switch", False)  # the operator clears it; the bot cannot read it yet
    with caplog.at_level(logging.WARNING, logger="prefect_adapter.controls"):
        started = time.monotonic()
        during = [controls() for _ in range(50)]
        elapsed = time.monotonic() - started
    proxy.resume()
    wait_until(lambda: not controls().kill_switch, 10, "the cleared kill switch applied after the API answered")
    poller.close()

    assert all(c == RiskControls(kill_switch=True, reduce_only=False) for c in during), "an outage turned it off"
    assert elapsed < 0.5, f"50 reads of the controls took {elapsed:.2f} s while the API hung"
    outage = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(outage) == 1 and "keeping the last values (kill_switch=ON, reduce_only=OFF)" in outage[0]


def test_run_log_lines_are_bounded_during_an_outage_oldest_dropped_and_counted(proxy: HangingProxy) -> None:
    shipped: list[str] = []
    run_logger = logging.getLogger(f"test.run.{id(shipped)}")
    run_logger.setLevel(logging.INFO)
    run_logger.propagate = False

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            shipped.append(record.getMessage())

    run_logger.addHandler(Keep())
    poller = poller_through(proxy, run_logger=run_logger, log_capacity=100).start()
    assert poller.wait_for_poll(10)
    proxy.hang()
    wait_until(lambda: poller.api_down, 10, "the poller seeing the hang")
    for n in range(1000):
        poller.run_log.info("cycle %d", n)
    held = len(poller.run_log)
    proxy.resume()
    wait_until(lambda: "cycle 999" in shipped, 10, "the buffered lines shipped after the API answered")
    poller.close()

    assert held == 100
    assert poller.run_log.dropped == 900
    assert shipped[0] == (
        "900 run-log lines dropped while the Prefect API did not answer (oldest first; 900 in this run)"
    )
    assert shipped[1:] == [f"cycle {n}" for n in range(900, 1000)]


def test_a_job_waits_for_the_api_and_runs_once_when_it_answers(proxy: HangingProxy) -> None:
    done: list[str] = []
    poller = poller_through(proxy).start()
    assert poller.wait_for_poll(10)
    proxy.hang()
    wait_until(lambda: poller.api_down, 10, "the poller seeing the hang")

    def job(client: SyncPrefectClient) -> object:
        client.read_variable_by_name("kill_switch")
        done.append("ran")
        return None

    started = time.monotonic()
    poller.submit("test job", job)
    submit_took = time.monotonic() - started
    for _ in range(3):  # three polls fail while the API hangs: the job must not have run
        assert poller.wait_for_poll(10)
    ran_during_outage = list(done)
    proxy.resume()
    wait_until(lambda: done, 10, "the job run after the API answered")
    poller.close()

    assert submit_took < 0.05 and ran_during_outage == [] and done == ["ran"]


def test_a_cancel_in_the_ui_is_seen_by_the_poller_and_stops_between_cycles(proxy: HangingProxy) -> None:
    @flow(name="poller-cancel-target")
    def target() -> None:
        pass

    with get_client(sync_client=True) as client:
        run = client.create_flow_run(target)
        poller = poller_through(proxy, str(run.id)).start()
        stop = StopBetweenCycles(poller)
        assert poller.wait_for_poll(10) and not stop()
        client.set_flow_run_state(run.id, Cancelling(), force=True)
    wait_until(stop, 10, "the cancel seen between cycles")
    stop.restore()
    poller.close()

    assert stop.reason == "flow run is CANCELLING"


def test_both_switch_variables_are_read_in_one_request_and_a_missing_one_is_none(
    clean_variables: None, prefect_server: dict[str, str]
) -> None:
    requests: list[str] = []
    set_variable("kill_switch", True)
    with get_client(sync_client=True) as client:
        client._client.event_hooks["request"].append(lambda request: requests.append(request.url.path))  # type: ignore[attr-defined]
        only_one = read_switch_values(client)
        set_variable("reduce_only", "true")
        both = read_switch_values(client)

    assert only_one == {"kill_switch": True, "reduce_only": None}
    assert both == {"kill_switch": True, "reduce_only": "true"}
    variable_requests = [path for path in requests if "/variables" in path]
    assert variable_requests == ["/api/variables/filter"] * 2  # one request per read, not one per switch


def test_the_pollers_heartbeats_keep_a_live_run_from_the_zombie_automation_and_their_end_lets_it_crash(
    prefect_server: dict[str, str],
) -> None:
    """The zombie automation (here with a 10 s window, Prefect's least, on a flow of the test's own) crashes a run
    whose heartbeats stop; the poller's heartbeats, every 1 s here, are what keep a live run Running past it."""

    @flow(name="poller-heartbeat-target")
    def target() -> None:
        pass

    automation = ensure_automation(
        zombie_automation(flow="poller-heartbeat-target", within=10, name="test: zombie poller-heartbeat-target")
    )
    api = f"{prefect_server['PREFECT_API_URL']}"
    try:
        with get_client(sync_client=True) as client:
            run = client.create_flow_run(target)
            client.set_flow_run_state(run.id, Running(), force=True)
            poller = OrchestratorPoller(
                str(run.id),
                api_url=api,
                interval_seconds=0.2,
                heartbeat_flow="poller-heartbeat-target",
                heartbeat_seconds=1,
            ).start()
            try:
                started = time.monotonic()
                wait_until(lambda: time.monotonic() - started > 15, 20, "one and a half zombie windows")
                state = client.read_flow_run(run.id).state
                assert state is not None and state.type == StateType.RUNNING, "a heartbeating run was crashed"
                assert poller.heartbeats >= 10
            finally:
                poller.close()
            stopped = time.monotonic()  # the process is gone: no more heartbeats
            wait_until(
                lambda: (s := client.read_flow_run(run.id).state) is not None and s.type == StateType.CRASHED,
                60,
                "the zombie automation crashing the run whose heartbeats stopped",
            )
            assert time.monotonic() - stopped >= 9  # not before its window
            events = client.request(
                "POST",
                "/events/filter",
                json={
                    "filter": {
                        "event": {"name": ["prefect.flow-run.heartbeat"]},
                        "resource": {"id": [f"prefect.flow-run.{run.id}"]},
                    }
                },
            ).json()["events"]
        assert len(events) >= 10  # the heartbeats the poller sent, each an event on the server
        flows = [r for r in events[0]["related"] if r["prefect.resource.role"] == "flow"]
        assert flows and flows[0]["prefect.resource.name"] == "poller-heartbeat-target"
    finally:
        with get_client(sync_client=True) as client:
            client.delete_automation(automation)
