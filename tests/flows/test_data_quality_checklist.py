"""The daily checklist's "market data quality" item in-process on the session's Prefect server: the paper exchange's
day of candles through the market-data suite, the bot's gate counters from its heartbeat, the data-quality table."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

from flows.checklists import daily_checklist
from tasks.checklists import DATA_QUALITY_ARTIFACT
from trader.domain import Candle
from trader.ledger import Ledger
from trader.market.source import write_candles_csv

ITEM = "market data quality"


@pytest.fixture
def harness(prefect_server: dict[str, str]) -> None:
    """The session's Prefect server (tests/conftest.py): flows run in-process against it; a test reads only the
    artifacts of its own flow run."""


@pytest.fixture
def env(harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A paper profile whose ledger, state and logs live in the test's folder."""
    state, logs = tmp_path / "state", tmp_path / "logs"
    url = f"sqlite:///{(tmp_path / 'ledger.db').as_posix()}"
    for name, value in {"STATE_DIR": str(state), "LOG_DIR": str(logs), "DATABASE_URL": url}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("BROKER", "simulated")
    monkeypatch.setenv("TRADING_SYMBOLS", "BTC-USD,ETH-USD")
    for name in ("COINBASE_API_KEY", "COINBASE_API_SECRET", "COINBASE_KEY_FILE", "PERPS_PROFILE", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    for name in ("COLD_STORAGE_URL", "MARKET_DATA", "MARKET_DATA_FILE", "MARKET_DATA_START"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    state.mkdir(parents=True)
    logs.mkdir()
    return {"url": url, "state": state, "tmp": tmp_path}


def beat(state: Path, data_gate: dict[str, Any]) -> None:
    (state / "heartbeat.json").write_text(json.dumps({"cycles": 10, "data_gate": data_gate}))


def table(flow_run_id: Any) -> list[dict[str, Any]]:
    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[DATA_QUALITY_ARTIFACT])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
        )
    return json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data


def test_a_clean_replay_passes_and_publishes_one_row_per_expectation(env: dict[str, Any]) -> None:
    beat(env["state"], {"checked": 10, "failed": 0, "last_failures": []})

    state = daily_checklist(profile="dev", return_state=True)

    assert state.is_completed() and state.result()[ITEM] == "pass"
    rows = table(state.state_details.flow_run_id)
    assert [r["expectation"] for r in rows] == [
        "bar_spacing",
        "positive_prices",
        "volume_non_negative",
        "high_consistent",
        "low_consistent",
        "complete_bars",
        "freshness",
        "bot gate (live cycles)",
    ]
    assert all(r["success"] for r in rows) and rows[0]["symbols"] == "BTC-USD, ETH-USD"
    [run] = Ledger(env["url"], migrate=False).checklist_runs("daily")
    item = next(r for r in json.loads(run.results_json) if r["item"] == ITEM)
    assert item["detail"] == "bot gate: checked=10 failed=0"


def test_a_gap_in_the_days_candles_fails_the_item_and_opens_its_incident(
    env: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    start = datetime(2026, 11, 20, 7, 0, tzinfo=UTC)
    bars = [start + timedelta(minutes=i) for i in range(200) if i != 50]  # 07:50 missing

    def candles(price: str) -> list[Candle]:
        p = Decimal(price)
        return [Candle(at, p, p + 2, p - 1, p + 1, Decimal(1)) for at in bars]

    replay = env["tmp"] / "gap.csv.gz"
    write_candles_csv(replay, {"BTC-USD": candles("64000"), "ETH-USD": candles("3000")})
    monkeypatch.setenv("MARKET_DATA_FILE", str(replay))
    beat(env["state"], {"checked": 10, "failed": 4, "last_failures": ["BTC-USD: gap/out-of-order bars"]})

    state = daily_checklist(profile="dev", return_state=True)

    assert state.is_completed() and state.result()[ITEM] == "fail"
    rows = {r["expectation"]: r for r in table(state.state_details.flow_run_id)}
    spacing = rows["bar_spacing"]
    assert (spacing["success"], spacing["symbols"], spacing["unexpected_count"]) == (False, "BTC-USD, ETH-USD", 2)
    assert "gap (step 120 s) at 2026-11-20T07:51:00+00:00" in spacing["observed_value"]
    assert (rows["bot gate (live cycles)"]["success"], rows["bot gate (live cycles)"]["unexpected_count"]) == (False, 4)
    incidents = Ledger(env["url"], migrate=False).open_incidents()
    assert f"checklist:daily:{ITEM}" in {i.fingerprint for i in incidents}
