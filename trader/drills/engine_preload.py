"""What the crash drill's fork server loads once, so each engine child it forks starts in milliseconds.

Imported by multiprocessing's fork server (set_forkserver_preload): the engine child's modules and the bundled
replay candles (parsed once; the parse is cached per file and never mutated). The forked child then builds its
bot from scratch: nothing of a previous engine is in this process.
"""

from __future__ import annotations

from trader.drills import engine_child
from trader.market.source import DEFAULT_REPLAY_FILE, load_candles_csv

load_candles_csv(DEFAULT_REPLAY_FILE)

__all__ = ["engine_child"]
