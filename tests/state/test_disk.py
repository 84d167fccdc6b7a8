"""The disk tier: all-or-nothing writes under a hard budget, partitions dropped whole, idle
expiry spread over calls, and nothing left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_infer.state.disk import DiskFull, DiskTier


def rows(
    n: int, part: int = 0, seen: float = 0.0, size: int = 200
) -> list[tuple[str, int, float, float, bytes]]:
    return [(f"e{part}-{i}", part, seen, seen, bytes([i % 251]) * size) for i in range(n)]


def test_records_round_trip_and_are_counted(tmp_path: Path) -> None:
    d = DiskTier(tmp_path / "t", 8 << 20)
    assert d.put(rows(10)) == 10 and len(d) == 10
    got = d.get([("e0-3", 0), ("e0-3", 1), ("nope", 0)])
    assert got[0] == (0.0, 0.0, bytes([3]) * 200) and got[1] is None and got[2] is None
    live = d.live_bytes
    assert d.delete([("e0-3", 0, bytes([3]) * 200)]) == 1 and len(d) == 9 and d.get([("e0-3", 0)]) == [None]
    assert d.live_bytes == live - DiskTier.entry_bytes("e0-3", bytes([3]) * 200)
    assert d.bytes_used > 0


def test_a_full_tier_refuses_the_whole_write_and_keeps_what_it_had(tmp_path: Path) -> None:
    d = DiskTier(tmp_path / "t", 1 << 20)
    d.put(rows(100, size=1000))
    with pytest.raises(DiskFull, match="disk_max_bytes"):
        d.put(rows(5000, part=1, size=1000))
    assert len(d) == 100 and d.get([("e1-0", 1)]) == [None]
    assert d.get([("e0-99", 0)])[0] is not None


def test_dropping_partitions_removes_only_theirs(tmp_path: Path) -> None:
    d = DiskTier(tmp_path / "t", 8 << 20)
    for p in range(3):
        d.put(rows(7, part=p))
    assert d.drop_partitions({0, 2, 9}) == 14 and len(d) == 7
    assert [e for e, _, _ in d.entries()] == [f"e1-{i}" for i in range(7)]
    d.put(rows(2, part=0))  # the partition's database is usable again
    assert len(d) == 9


def test_idle_expiry_is_spread_over_calls_and_finds_every_idle_entry(tmp_path: Path) -> None:
    d = DiskTier(tmp_path / "t", 8 << 20)
    d.put(rows(30, part=0, seen=0.0))
    d.put(rows(30, part=1, seen=50.0))
    gone: list[tuple[str, int]] = []
    for _ in range(10):
        gone += d.expire(before_s=10.0, max_entries=13)
    assert sorted(gone) == sorted((f"e0-{i}", 0) for i in range(30))
    assert len(d) == 30


def test_a_new_tier_starts_empty_and_a_temporary_one_leaves_nothing(tmp_path: Path) -> None:
    d = DiskTier(tmp_path / "t", 8 << 20)
    d.put(rows(5))
    d.close()
    again = DiskTier(tmp_path / "t", 8 << 20)  # a restart: rebuilt from the changelog, not this
    assert len(again) == 0 and list(again.entries()) == []
    again.close()
    tmp = DiskTier(None, 8 << 20)
    path = tmp.path.parent
    tmp.put(rows(5))
    tmp.close()
    assert not path.exists()


def test_a_full_tier_trades_entries_in_one_swap(tmp_path: Path) -> None:
    d = DiskTier(tmp_path / "t", 1 << 20)
    first = rows(1000, size=1000)
    d.put(first)
    with pytest.raises(DiskFull):
        d.put(rows(100, part=1, size=1000))
    out = [(e, p, v) for e, p, _, _, v in first[:100]]
    assert d.swap(rows(100, part=1, size=1000), out) == 100  # the deletes make the room
    assert len(d) == 1000 and d.get([("e0-0", 0), ("e1-0", 1)])[0] is None


def test_the_tier_empties_only_its_own_folder_under_the_configured_directory(tmp_path: Path) -> None:
    keep = tmp_path / "operator-file.txt"
    keep.write_text("not the tier's")
    d = DiskTier(tmp_path, 8 << 20)
    d.put(rows(3))
    d.close()
    DiskTier(tmp_path, 8 << 20).close()
    assert keep.read_text() == "not the tier's"
