"""trader/fsio.py, the one atomic-write helper: whole old file or whole new one, with the permissions asked for."""

from __future__ import annotations

from pathlib import Path

import pytest

from trader.fsio import atomic_write, atomic_writer


def test_atomic_write_replaces_the_file_owner_only_unless_a_mode_is_given(tmp_path: Path) -> None:
    private, shared = tmp_path / "a" / "journal.marker", tmp_path / "metrics.prom"
    private.parent.mkdir()
    private.write_text("old")

    atomic_write(private, "7\n")
    atomic_write(shared, b"up 1\n", mode=0o644)

    assert private.read_text() == "7\n" and shared.read_bytes() == b"up 1\n"
    assert (private.stat().st_mode & 0o777, shared.stat().st_mode & 0o777) == (0o600, 0o644)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "journal.marker", "metrics.prom"]  # no temp left


def test_a_failure_while_streaming_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "paper_exchange.json"
    target.write_text('{"cash": "1000"}')

    with pytest.raises(RuntimeError), atomic_writer(target) as handle:
        handle.write(b'{"cash": ')
        raise RuntimeError("crash mid-write")

    assert target.read_text() == '{"cash": "1000"}'
    assert [p.name for p in tmp_path.iterdir()] == ["paper_exchange.json"]


def test_a_write_that_need_not_be_durable_is_still_whole_but_never_fsyncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "paper_exchange.clock.json"
    target.write_text('{"market_cursor": 1}')
    synced: list[int] = []
    monkeypatch.setattr("os.fsync", synced.append)

    atomic_write(target, '{"market_cursor": 2}', durable=False)
    assert synced == [] and target.read_text() == '{"market_cursor": 2}'
    atomic_write(target, '{"market_cursor": 3}')
    assert len(synced) == 2  # the file, then its folder
    assert [p.name for p in tmp_path.iterdir()] == ["paper_exchange.clock.json"]
