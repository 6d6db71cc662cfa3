"""What a graceful shutdown did, step by step: the steps, each one's result, the wait's progress, and how it reads
in the CLI's table, the flow's table artifact and the SEV-2 incident's evidence."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from trader.brokers.rules import fmt

StepStatus = Literal["ok", "failed", "not run"]


@dataclass(frozen=True)
class Step:
    """One step of the runbook's graceful shutdown: its number, its key (task names, dispatch) and its title."""

    number: int
    key: str
    title: str

    @property
    def label(self) -> str:
        return f"{self.number}. {self.title}"


STEPS: tuple[Step, ...] = (
    Step(1, "reduce-only", "reduce-only on"),
    Step(2, "wait-for-flat", "wait for flat"),
    Step(3, "cancel-all", "cancel all working orders"),
    Step(4, "verify-no-orders", "verify no open orders"),
    Step(5, "final-positions", "record final positions"),
    Step(6, "checkpoint", "checkpoint"),
    Step(7, "stop-bot", "stop the bot"),
)


@dataclass(frozen=True)
class StepResult:
    """A step's result: ok, failed (what is left, in the operator's words) or not run (an earlier step failed)."""

    step: Step
    status: StepStatus
    detail: str
    seconds: float = 0.0

    def row(self) -> dict[str, str]:
        """One table row: step, result, detail, seconds."""
        seconds = f"{self.seconds:.1f}" if self.status != "not run" else ""
        return {"step": self.step.label, "result": self.status, "detail": self.detail, "seconds": seconds}


@dataclass
class ShutdownResult:
    """The seven steps' results for one account, the positions the broker reported last and the checkpoint made."""

    account: str
    timeout_seconds: float
    steps: list[StepResult] = field(default_factory=list)
    final_positions: dict[str, Decimal] = field(default_factory=dict)
    checkpoint_id: str | None = None

    @property
    def ok(self) -> bool:
        return len(self.steps) == len(STEPS) and all(r.status == "ok" for r in self.steps)

    @property
    def failed(self) -> StepResult | None:
        """The step that stopped the sequence, if one did."""
        return next((r for r in self.steps if r.status == "failed"), None)

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.steps)

    def rows(self) -> list[dict[str, str]]:
        return [r.row() for r in self.steps]

    def summary(self) -> str:
        """One line: done, or the step that failed and why."""
        failed = self.failed
        if failed is None:
            return f"graceful shutdown of account {self.account}: all {len(STEPS)} steps ok in {self.seconds:.1f} s"
        return (
            f"graceful shutdown of account {self.account} stopped at step {failed.step.label}: {failed.detail}; "
            f"steps {failed.step.number + 1}-{len(STEPS)} not run"
        )

    def title(self) -> str:
        """The SEV-2 incident's title."""
        failed = self.failed
        where = failed.step.label if failed is not None else "?"
        return f"graceful shutdown stopped at step {where}: finish the shutdown by hand"

    def evidence(self, reason: str = "") -> str:
        """The SEV-2 incident's evidence: the operator's reason, then every step's row."""
        lines = [f"reason: {reason or 'not given'}", f"wait-for-flat timeout: {self.timeout_seconds:g} s"]
        lines += [f"{r.step.label}: {r.status}{f' - {r.detail}' if r.detail else ''}" for r in self.steps]
        return "\n".join(lines)


@dataclass(frozen=True)
class FlatProgress:
    """Where the wait for flat stands: what is still held in the account's symbols and its value at the touch."""

    elapsed_seconds: float
    timeout_seconds: float
    held: Mapping[str, Decimal]
    exposure_start: Decimal
    exposure_now: Decimal
    exits_sent: int

    @property
    def flat(self) -> bool:
        return not self.held

    @property
    def percent(self) -> float:
        """The share of the starting exposure closed so far (100 once flat)."""
        if self.flat:
            return 100.0
        if self.exposure_start <= 0:
            return 0.0
        return float(max(Decimal(0), 1 - self.exposure_now / self.exposure_start) * 100)

    def describe(self) -> str:
        clock = f"{self.elapsed_seconds:.0f} s of {self.timeout_seconds:g} s"
        if self.flat:
            return f"flat after {clock}; {self.exits_sent} reduce-only exit(s) sent"
        held = ", ".join(f"{symbol} {fmt(quantity)}" for symbol, quantity in sorted(self.held.items()))
        return (
            f"{len(self.held)} position(s) open ({held}), {self.exposure_now:,.2f} of {self.exposure_start:,.2f} "
            f"at the touch; {self.exits_sent} exit(s) sent; {clock}"
        )


@dataclass(frozen=True)
class RunStopped:
    """One of the account's bot runs as the orchestrator saw it: its state before the stop and after the wait."""

    run_id: str
    before: str  # a Prefect state type: RUNNING, SCHEDULED, COMPLETED...
    after: str

    @property
    def final(self) -> bool:
        return self.after in FINAL_RUN_STATES

    def describe(self) -> str:
        changed = f"{self.before} -> {self.after}" if self.before != self.after else self.after
        return f"run {self.run_id} {changed}"


FINAL_RUN_STATES = ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")
