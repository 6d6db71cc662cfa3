"""A checkpoint as the checkpoint flow's artifact shows it."""

from __future__ import annotations

from trader.state.checkpoints import CheckpointInfo


def checkpoint_markdown(info: CheckpointInfo, reason: str) -> str:
    """Id, reason, size (gzip or not), sha256 and the cold copy's key."""
    return (
        f"# Checkpoint {info.id}\n\n- reason: {reason}\n- size: {info.size_bytes} bytes"
        f"{' (gzip)' if info.compressed else ''}\n- sha256: `{info.sha256}`\n- cold copy: `{info.cold_key}`"
    )
