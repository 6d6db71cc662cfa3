"""What an emergency procedure did, rendered for its artifacts, its incident's evidence and its log."""

from __future__ import annotations

from collections.abc import Sequence

from trader.emergency.procedures import ENV_NAMES, CancelResult, Switch, SwitchChange, switch_in_environment
from trader.settings import Settings


def turned_off(switches: Sequence[SwitchChange]) -> list[Switch]:
    """The switches this run turned off, each once, in name order."""
    return sorted({c.switch for c in switches if not c.after})


def still_set_notes(settings: Settings, switches: Sequence[Switch]) -> list[str]:
    """One warning per switch turned off here that this process's environment still sets (it stays ON there)."""
    return [
        f"{ENV_NAMES[s]} is still set in this process's environment: the switch stays ON where it is set"
        for s in switches
        if switch_in_environment(settings, s)
    ]


def procedure_rows(switches: Sequence[SwitchChange], cancelled: CancelResult | None) -> list[dict[str, str]]:
    """The table artifact's rows: each switch with its value before, then each order cancelled."""
    return [c.row() for c in switches] + (cancelled.rows() if cancelled is not None else [])


def procedure_summary(procedure: str, switches: Sequence[SwitchChange], cancelled: CancelResult | None) -> str:
    """One line: the procedure, then what it did to each switch and to the working orders."""
    return f"{procedure}: " + "; ".join(
        [c.describe() for c in switches] + ([cancelled.summary()] if cancelled is not None else [])
    )


def evidence_line(row: dict[str, str]) -> str:
    """One table row as a line of the incident's evidence."""
    return f"{row['step']}: {row['target']} {row['id']} {row['before']} -> {row['result']}".replace("  ", " ")


def incident_evidence(reason: str, rows: Sequence[dict[str, str]], limit: int = 40) -> str:
    """The SEV-1 incident's evidence: the operator's reason and the first `limit` rows."""
    return "\n".join([f"reason: {reason or 'not given'}", *(evidence_line(r) for r in rows[:limit])])


def procedure_markdown(
    procedure: str,
    reason: str,
    switches: Sequence[SwitchChange],
    cancelled: CancelResult | None,
    notes: Sequence[str],
    incident_id: int | None,
    resolved: Sequence[str],
) -> str:
    """The summary artifact: reason, switches, cancels, notes, the incident opened or those resolved."""
    return "\n".join(
        [f"# Emergency {procedure}", "", f"- reason: {reason or 'not given'}"]
        + [f"- {c.describe()}" for c in switches]
        + ([f"- {cancelled.summary()}"] if cancelled is not None else [])
        + [f"- **{n}**" for n in notes]
        + ([f"- SEV-1 incident #{incident_id} (emergency:{procedure})"] if incident_id is not None else [])
        + ([f"- resolved: {', '.join(resolved)}"] if resolved else [])
    )
