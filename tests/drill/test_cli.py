"""The drill, check, status and report commands as operators and schedulers run them."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.helpers import drctl

ROOT = Path(__file__).resolve().parents[2]


def test_a_drill_without_yes_and_without_a_terminal_refuses_at_once(tmp_path: Path) -> None:
    r = drctl("drill", "web", inventory=ROOT / "inventory/example.yaml", state_dir=tmp_path / "state")
    assert r.rc == 2
    assert "needs confirmation, but stdin is not a terminal" in r.err and "--yes" in r.err
    assert not (tmp_path / "state" / "drills").exists()  # nothing started


def test_report_of_an_unknown_run_exits_8(tmp_path: Path) -> None:
    r = drctl("report", "20260101T000000Z-drill-abcdef", state_dir=tmp_path)
    assert r.rc == 8 and "no drill" in r.err
    r = drctl("report", "not-a-run", state_dir=tmp_path)
    assert r.rc == 8
