"""Named crash points: places in the bot's cycle where a drill can SIGKILL the process deterministically.

DRILL_KILL_AT="<point>:<n>" makes the n-th arrival at <point> kill this process with SIGKILL (no cleanup, no
finally blocks, no flush: what an OOM kill or a lost host does). Unset, crash_point() is one comparison.

The points (where the bot is when it dies):
- before_place: the order is recorded pending_submit in the ledger, not yet sent.
- after_place_before_apply: the broker has the order; the ledger still says pending_submit.
- after_apply: the broker's answer is in the ledger.
- before_record_fills: fills were listed from the broker, not yet written to the ledger.
- mid_fill_sync: fills are in the ledger, their orders' final status is not.
- mid_checkpoint: the checkpoint's cold copy is written; its manifest and warm row are not.
- after_advance: the paper market moved a bar and matched resting orders; the cycle has not looked yet.
- mid_recovery: engine recovery cancelled the dead engine's orders on the broker; the ledger does not know yet.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

ENV = "DRILL_KILL_AT"
POINTS: tuple[str, ...] = (
    "before_place",
    "after_place_before_apply",
    "after_apply",
    "before_record_fills",
    "mid_fill_sync",
    "mid_checkpoint",
    "after_advance",
    "mid_recovery",
)

_armed: tuple[str, int] | None = None
_hits: dict[str, int] = {}


def _to_stdout(line: str) -> None:
    os.write(sys.stdout.fileno(), f"{line}\n".encode())  # unbuffered: nothing is flushed after a SIGKILL


_announce: Callable[[str], None] = _to_stdout


def parse_plan(text: str | None) -> tuple[str, int] | None:
    """ "<point>:<n>" as (point, n); None for an empty value. Raises ValueError naming the known points."""
    if not text:
        return None
    point, _, count = text.partition(":")
    if point not in POINTS:
        raise ValueError(f"{ENV}: unknown crash point {point!r}; one of {', '.join(POINTS)}")
    n = int(count or "1")
    if n < 1:
        raise ValueError(f"{ENV}: the arrival to kill at must be 1 or more (got {n})")
    return point, n


def arm(plan: tuple[str, int] | None, announce: Callable[[str], None] | None = None) -> None:
    """Kill this process at the plan's n-th arrival at its point (None disarms); arrivals are counted afresh.
    `announce` gets the one CRASH line said before dying (default: stdout)."""
    global _armed, _announce
    _armed = plan
    _announce = announce or _to_stdout
    _hits.clear()


def crash_point(name: str) -> None:
    """SIGKILL this process when it is the armed point's n-th arrival; otherwise nothing."""
    if _armed is None or _armed[0] != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == _armed[1]:
        _announce(f"CRASH {name} {_hits[name]}")  # one line for the drill, then die without any cleanup
        os.kill(os.getpid(), signal.SIGKILL)
