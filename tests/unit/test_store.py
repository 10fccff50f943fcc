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
    from drctl.errors import JournalError

    (tmp_path / "runs").write_text("not a directory")  # as good as a full or read-only disk here
    run_id = new_run_id("failover")
    with pytest.raises(JournalError, match=f"cannot write the journal .*{run_id}") as err:
        RunStore(tmp_path).append(run_id, {"event": "run_started"})
    assert err.value.exit_code == 5 and f"drctl resume {run_id}" in (err.value.hint or "")


def test_the_journal_never_holds_a_secret(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    run_id = new_run_id("failover")
    rec = store.append(run_id, {"event": "action_finished", "detail": "GET http://mon:S3cr3tPW1@db/health: ok",
                                "data": {"password": "S3cr3tPW1", "conninfo": "host=db pass%77ord=S3cr3tPW1"},
                                "argv": ["psql", "postgresql://app:S3cr3tPW1@db/app"]})
    store.close()
    text = store.path(run_id).read_text()
    assert "S3cr3tPW1" not in text and "S3cr3tPW1" not in str(rec)
    (back,) = RunStore(tmp_path).read(run_id)
    assert back["detail"] == "GET http://mon:***@db/health: ok" and back["data"]["password"] == "***"


def test_close_after_a_failed_write_does_not_hide_the_error(tmp_path: Path) -> None:
    from drctl.errors import JournalError

    store = RunStore(tmp_path)
    run_id = new_run_id("failover")
    store.append(run_id, {"event": "run_started"})
    store._files[run_id].close()
    store._files[run_id] = open("/dev/full", "a", encoding="utf-8")  # the disk fills up mid-run  # noqa: SIM115
    with pytest.raises(JournalError, match="No space left on device"):
        store.append(run_id, {"event": "action_started", "action": "a"})
    store.close()  # what the failed write left in the buffer is not flushed again: no second error
    store.close()
    # room again: the run can be resumed, and the journal counts on from what it holds
    again = RunStore(tmp_path)
    again.append(run_id, {"event": "run_resumed"})
    again.close()
    assert [(r["seq"], r["event"]) for r in RunStore(tmp_path).read(run_id)] == [(1, "run_started"), (2, "run_resumed")]


def test_a_journal_that_fills_up_is_a_journal_error_and_close_stays_quiet(tmp_path: Path) -> None:
    """A real short write (RLIMIT_FSIZE in a child process): the first record fits, the second
    does not; append raises JournalError once, close() raises nothing."""
    code = (
        "import resource, sys; from pathlib import Path\n"
        "from drctl.engine.store import RunStore\n"
        "from drctl.errors import JournalError\n"
        f"store = RunStore(Path({str(tmp_path)!r})); run_id = '20260101T000000Z-failover-abcdef'\n"
        "store.append(run_id, {'event': 'run_started', 'pad': 'x' * 100})\n"
        "size = store.path(run_id).stat().st_size\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (size + 20, size + 20))\n"
        "try:\n"
        "    store.append(run_id, {'event': 'action_started', 'pad': 'y' * 100})\n"
        "except JournalError as e:\n"
        "    print('journal error:', e.exit_code, e.message)\n"
        "store.close()\n"
        "print('closed')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert "journal error: 5 cannot write the journal" in done.stdout and "File too large" in done.stdout
    assert done.stdout.rstrip().endswith("closed") and done.stderr == ""


def test_a_lock_that_cannot_be_written_is_refused_and_left_free(tmp_path: Path) -> None:
    code = (
        "import resource; from pathlib import Path\n"
        "from drctl.engine.store import LeaseStore\n"
        "from drctl.errors import LockWriteError\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (10, 10))\n"
        "try:\n"
        f"    LeaseStore(Path({str(tmp_path)!r})).acquire('web', {{'run_id': 'R1', 'user': 'alice'}})\n"
        "except LockWriteError as e:\n"
        "    print(e.exit_code, e.message)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("4 cannot write the lock") and "File too large; nothing was changed" in done.stdout
    leases = LeaseStore(tmp_path)
    assert leases.held_by("web") is None and leases.holder("web") is None  # no lock held, no torn record
    leases.acquire("web", {"run_id": "R2"}).release()
