"""Failover drills: the result every scenario measures, the runbook's expectations, and the scenario registry.

A drill runs on its own namespace (trader.drills.namespace), injects its fault for real, lets the automatic
recovery work, and reports what it measured beside what the runbook expects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

# The runbook's expected timings (operations runbook, "State Recovery & Failover Procedures").
EXPECTED_DETECTION_MS = 2000.0  # "detection 1-2 s"
EXPECTED_REDIS_RECOVERY_MS = 20.0  # "Redis recovery 8-20 ms" (350-1000 keys)
EXPECTED_ENGINE_RECOVERY_MS = 100.0  # "engine recovery under 100 ms"


@dataclass
class DrillResult:
    """What one drill measured; passed only when every expectation held and coherence matched."""

    scenario: str
    namespace: str
    started_at: datetime
    detection_ms: float | None = None
    recovery_ms: float | None = None
    downtime_ms: float | None = None
    keys_recovered: int = 0
    orders_recovered: int = 0
    data_loss_estimate: str = "none"
    coherence_match: bool | None = None  # cache against storage, byte for byte ("Match: True")
    expected: dict[str, float] = field(default_factory=dict)  # e.g. {"detection_ms": 2000, "recovery_ms": 20}
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def misses(self) -> list[str]:
        """Each expectation this drill missed, in one line each."""
        out = []
        for name, limit in self.expected.items():
            value = getattr(self, name, None)
            if value is None:
                out.append(f"{name}: not measured (expected <= {limit:g})")
            elif value > limit:
                out.append(f"{name}: {value:.1f} > expected {limit:g}")
        if self.coherence_match is False:
            out.append("coherence: Match: False")
        return out

    @property
    def passed(self) -> bool:
        return not self.misses() and self.coherence_match is not False

    def rows(self) -> list[dict[str, str]]:
        """The measured table: metric, measured, expected."""

        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.1f} ms"

        def expected(name: str) -> str:
            return f"<= {self.expected[name]:g} ms" if name in self.expected else "-"

        return [
            {"metric": "detection", "measured": ms(self.detection_ms), "expected": expected("detection_ms")},
            {"metric": "recovery", "measured": ms(self.recovery_ms), "expected": expected("recovery_ms")},
            {"metric": "total downtime", "measured": ms(self.downtime_ms), "expected": expected("downtime_ms")},
            {"metric": "keys recovered", "measured": str(self.keys_recovered), "expected": "all"},
            {"metric": "orders recovered", "measured": str(self.orders_recovered), "expected": "all"},
            {"metric": "data_loss_estimate", "measured": self.data_loss_estimate, "expected": "none"},
            {
                "metric": "coherence",
                "measured": "-" if self.coherence_match is None else f"Match: {self.coherence_match}",
                "expected": "Match: True",
            },
        ]


@dataclass
class DrillContext:
    """Where a drill runs: its namespace, a scratch folder, and a progress callback (0..1, message)."""

    namespace: str
    workdir: Path
    progress: Callable[[float, str], None] = lambda _fraction, _message: None
    options: dict[str, Any] = field(default_factory=dict)


Scenario = Callable[[DrillContext], DrillResult]
SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str) -> Callable[[Scenario], Scenario]:
    """Register a drill scenario under its runbook name (redis-outage, engine-crash, ...)."""

    def register(run: Scenario) -> Scenario:
        SCENARIOS[name] = run
        return run

    return register
