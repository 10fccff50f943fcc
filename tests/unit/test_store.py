"""The journal and the service leases: durable records, torn lines, locks freed by a crash."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from drctl.engine.store import LeaseStore, RunStore, new_run_id
from drctl.errors import LockHeldError, RunNotFoundError


def test_journal_appends_and_reads_back(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    run_id = new_run_id("failover")
    store.append(run_id, {"event": "run_started", "x": 1})
    store.append(run_id, {"event": "action_started", "action": "a"})
    store.close()
    again = RunStore(tmp_path)
    again.append(run_id, {"event": "action_finished", "action": "a", "status": "ok"})
    recs = again.read(run_id)
    assert [r["event"] for r in recs] == ["run_started", "action_started", "action_finished"]
    assert [r["seq"] for r in recs] == [1, 2, 3]
    assert again.list_runs() == [run_id]


def test_torn_last_line_is_ignored(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    run_id = new_run_id("failover")
    store.append(run_id, {"event": "run_started"})
    store.close()
    with open(store.path(run_id), "a") as f:
        f.write('{"event": "action_sta')  # a crash in the middle of a write
    assert [r["event"] for r in RunStore(tmp_path).read(run_id)] == ["run_started"]
    # appending after the crash cuts the torn line off: later records are never hidden behind it
    again = RunStore(tmp_path)
    again.append(run_id, {"event": "run_resumed"})
    again.append(run_id, {"event": "run_finished"})
    again.close()
    assert [r["event"] for r in RunStore(tmp_path).read(run_id)] == ["run_started", "run_resumed", "run_finished"]
    assert store.path(run_id).read_text().count("\n") == 3


def test_unknown_run(tmp_path: Path) -> None:
    with pytest.raises(RunNotFoundError):
        RunStore(tmp_path).read("20260101T000000Z-failover-abcdef")
    with pytest.raises(RunNotFoundError, match="not a run id"):
        RunStore(tmp_path).read("../../etc/passwd")


def test_lease_is_exclusive_and_freed_when_the_holder_dies(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from drctl.engine.store import LeaseStore;"
         f"LeaseStore(Path({str(tmp_path)!r})).acquire('web', {{'run_id': 'R1', 'user': 'alice'}});"
         "print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(LockHeldError, match="run R1 by alice"):
            LeaseStore(tmp_path).acquire("web", {"run_id": "R2"})
        other = LeaseStore(tmp_path).acquire("db", {"run_id": "R2"})  # other services are free
        other.release()
    finally:
        holder.kill()
        holder.wait(timeout=10)
    deadline = time.monotonic() + 10
    while True:  # the kernel drops the flock with the process
        try:
            LeaseStore(tmp_path).acquire("web", {"run_id": "R3"}).release()
            break
        except LockHeldError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_a_journal_that_cannot_be_written_is_a_clear_error(tmp_path: Path) -> None:
    from drctl.engine.store import JournalError

    (tmp_path / "runs").write_text("not a directory")  # as good as a full or read-only disk here
    run_id = new_run_id("failover")
    with pytest.raises(JournalError, match=f"cannot write the journal .*{run_id}") as err:
        RunStore(tmp_path).append(run_id, {"event": "run_started"})
    assert err.value.exit_code == 5 and f"drctl resume {run_id}" in (err.value.hint or "")
