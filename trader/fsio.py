"""Durable file writes: a reader sees the whole old file or the whole new one, never a torn one, even after a crash.

The one way the code base replaces a file: write a temporary file beside the target (or in `tmp_dir`, which must
be on the same filesystem), flush and fsync it, `os.replace` it over the target, then fsync the folder so the
rename itself survives a power cut. A failure at any step leaves the old file and removes the temporary one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable (POSIX; skipped where a folder cannot be opened or synced)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems do not open directories; the rename is still atomic
        return
    try:
        with suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(
    path: Path, data: bytes | str, *, tmp_dir: Path | None = None, mode: int = 0o600, durable: bool = True
) -> None:
    """Replace `path` with `data` atomically and durably: temp file, fsync, os.replace, fsync the folder.

    The new file gets `mode` (default owner-only, as mkstemp makes it; 0o644 for a file a reader under another
    user must open, such as the metrics file node_exporter picks up). durable=False skips both fsyncs: readers and
    a process killed at any point still see the whole old or the whole new file (the kernel's page cache keeps
    it), but a power cut may bring back the old one, or leave an empty or missing one; only for data the caller
    can do without (the paper exchange's market clock)."""
    with atomic_writer(path, tmp_dir=tmp_dir, mode=mode, durable=durable) as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)


@contextmanager
def atomic_writer(
    path: Path, *, tmp_dir: Path | None = None, mode: int = 0o600, durable: bool = True
) -> Iterator[BinaryIO]:
    """Stream into a temp file that replaces `path` atomically and durably when the block exits cleanly (fsync,
    os.replace, fsync the folder); an exception inside the block removes the temp file and leaves `path` as it was.
    The new file gets `mode`; durable=False skips the fsyncs (see atomic_write)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = tmp_dir or path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)
