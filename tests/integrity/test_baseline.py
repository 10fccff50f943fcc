"""Baseline storage in the state directory: atomic, checksummed, damaged ones skipped."""

from __future__ import annotations

from pathlib import Path

import pytest

from drctl.core.integrity import Entry, format_record
from drctl.drivers.baseline import (
    BaselineWriter,
    baseline_age,
    baseline_dir,
    list_baselines,
    newest_baseline,
    open_baseline,
)
from drctl.errors import BaselineError

ENTRIES = [Entry(b"a", 1, "aa"), Entry(b"new\nline", 2, "bb"), Entry(b"z/\xff", 3, "cc")]


def record(state: Path, entries: list[Entry] = ENTRIES, **meta: object) -> Path:
    w = BaselineWriter(state, "svc", "data", kind="files", meta={"site": "dc1", "host": "app1", "location": "/d",
                                                                 **meta})
    try:
        for e in entries:
            w.add(format_record(e))
        return w.commit()
    finally:
        w.discard()


def test_round_trip(tmp_path: Path) -> None:
    path = record(tmp_path, algorithm="sha256")
    assert path.parent == baseline_dir(tmp_path, "svc", "data")
    base = open_baseline(path)
    assert list(base.entries()) == ENTRIES
    assert base.meta["algorithm"] == "sha256" and base.ref.site == "dc1"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "temporary file left behind"
    age = baseline_age(tmp_path, "svc", "data")
    assert age is not None and age >= 0
    assert baseline_age(tmp_path, "svc", "other") is None


def test_damaged_baseline_is_skipped_for_the_previous_one(tmp_path: Path) -> None:
    old = record(tmp_path, [Entry(b"old", 1, "aa")])
    new = record(tmp_path)
    data = bytearray(new.read_bytes())
    data[data.index(b"bb")] = ord("X")  # one byte flipped inside a digest
    new.write_bytes(bytes(data))
    with pytest.raises(BaselineError, match="checksum"):
        open_baseline(new)
    base, notes = newest_baseline(tmp_path, "svc", "data")
    assert base is not None and base.path == old
    assert notes and "damaged" in notes[0]


def test_truncated_baseline_is_refused(tmp_path: Path) -> None:
    path = record(tmp_path)
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(BaselineError, match="truncated|checksum"):
        open_baseline(path)
    assert newest_baseline(tmp_path, "svc", "data")[0] is None


def test_discard_leaves_nothing(tmp_path: Path) -> None:
    w = BaselineWriter(tmp_path, "svc", "data", kind="files", meta={})
    w.add(format_record(ENTRIES[0]))
    w.discard()
    assert list_baselines(baseline_dir(tmp_path, "svc", "data")) == []
    assert list(baseline_dir(tmp_path, "svc", "data").iterdir()) == []


def test_only_the_newest_are_kept(tmp_path: Path) -> None:
    paths = []
    for _ in range(4):
        w = BaselineWriter(tmp_path, "svc", "data", kind="files", meta={}, keep=2)
        paths.append(w.commit())
    assert list_baselines(baseline_dir(tmp_path, "svc", "data")) == [paths[3], paths[2]]
