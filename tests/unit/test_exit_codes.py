"""Documented exit codes where storage fails, never 1 (an internal error): a journal that cannot be
written mid-run (5), a lock that cannot be written (4), an output file that cannot be written (2,
refused before any work starts). drctl runs as a process, the way operators and schedulers run it."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.helpers import Result, drctl, drctl_env

# one service whose health checks are refused at once: a run is refused by its gate in well under a
# second, after its lock is taken and its journal started (nothing to reach, nothing to change)
INVENTORY = """version: 1
name: exit-codes
sites:
  dc1: {}
  dc2: {}
services:
  web:
    primary: dc1
    backup: dc2
    sites:
      dc1: {health: {tcp: "127.0.0.1:1", retries: 1, timeout: 1s}}
      dc2: {health: {tcp: "127.0.0.1:1", retries: 1, timeout: 1s}}
"""


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    path = tmp_path / "inventory.yaml"
    path.write_text(INVENTORY)
    return path


def drctl_limited(*args: str, state_dir: Path, inventory: Path, file_size: int) -> Result:
    """drctl with RLIMIT_FSIZE: no file it writes may grow beyond ``file_size`` bytes (a disk
    that fills up, without root; Python ignores SIGXFSZ, so the write fails with EFBIG)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))

    env = drctl_env(state_dir, DRCTL_INVENTORY=str(inventory), PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run([sys.executable, "-m", "drctl", *args], capture_output=True, text=True, timeout=60,
                          env=env, stdin=subprocess.DEVNULL, preexec_fn=limit, check=False)
    assert "Traceback" not in done.stderr, done.stderr
    return Result(done.returncode, done.stdout, done.stderr)


def flat(text: str) -> str:
    """Messages with the terminal's line wrapping undone."""
    return " ".join(text.split())


def journals(state: Path) -> list[Path]:
    return sorted((state / "runs").glob("*.jsonl")) if (state / "runs").exists() else []


# --- the journal and the lock --------------------------------------------------------------------


def test_a_journal_that_fills_up_mid_run_exits_5_with_its_own_message(tmp_path: Path, inventory: Path) -> None:
    # how long is the first record? a run with room for it
    first = drctl("failover", "web", "--yes", inventory=inventory, state_dir=tmp_path / "measure")
    assert first.rc == 4, first.err
    (journal,) = journals(tmp_path / "measure")
    start_len = len(journal.read_text().splitlines()[0]) + 1
    # room for run_started, not for the next record: the run stops in its gate
    state = tmp_path / "state"
    r = drctl_limited("failover", "web", "--yes", state_dir=state, inventory=inventory, file_size=start_len + 60)
    err = flat(r.err)
    assert r.rc == 5, err
    assert err.count("cannot write the journal") == 1, err
    assert "File too large" in err and "drctl resume" in err, err
    assert "internal error" not in err
    (journal,) = journals(state)
    records = journal.read_text().splitlines()
    assert json.loads(records[0])["event"] == "run_started"  # it was mid-run: the start is recorded


def test_a_lock_that_cannot_be_written_is_refused_with_exit_4(tmp_path: Path, inventory: Path) -> None:
    state = tmp_path / "state"
    r = drctl_limited("failover", "web", "--yes", "--json", state_dir=state, inventory=inventory, file_size=40)
    err = flat(r.err)
    assert r.rc == 4, err
    assert err.count("cannot write the lock") == 1 and "nothing was changed" in err, err
    assert r.json()["error"] == "LockWriteError" and r.json()["exit_code"] == 4
    assert journals(state) == []  # stopped before the journal started
    assert (state / "locks" / "web.lock").read_text() == ""  # no half-written holder record


def _mount_tiny_tmpfs(where: Path) -> bool:
    where.mkdir()
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)],
                          capture_output=True, check=False)
    return done.returncode == 0


def test_a_full_disk_under_the_lock_is_refused_with_exit_4(tmp_path: Path, inventory: Path) -> None:
    disk = tmp_path / "disk"
    if not _mount_tiny_tmpfs(disk):
        pytest.skip("mounting a tmpfs needs root (the RLIMIT_FSIZE test above covers the same path)")
    try:
        fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)  # fill it up (unbuffered)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        state = disk / "state"
        r = drctl("failover", "web", "--yes", inventory=inventory, state_dir=state)
        err = flat(r.err)
        assert r.rc == 4, err
        assert "cannot write the lock" in err and "No space left on device" in err, err
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# --- output files: refused before any work ---------------------------------------------------------


@pytest.mark.parametrize(("args", "option"), [
    (["drill", "web", "--yes", "--html", "{bad}/drill.html"], "--html"),
    (["drill", "web", "--yes", "--junit", "{bad}/drill.xml"], "--junit"),
    (["drill", "web", "--yes", "--metrics-file", "{bad}/drill.prom"], "--metrics-file"),
    (["check", "web", "--metrics-file", "{bad}/check.prom"], "--metrics-file"),
    (["report", "20260101T000000Z-failover-abcdef", "-o", "{bad}/run.md"], "--output"),
    (["report", "20260101T000000Z-drill-abcdef", "--format", "html", "--output", "{bad}/drill.html"], "--output"),
])
@pytest.mark.parametrize(("bad", "why"), [
    ("{tmp}/missing", "does not exist"),
    ("{tmp}/a-file", "is not a directory"),
    ("/sys", "cannot write in /sys"),
])
def test_an_output_file_that_cannot_be_written_is_refused_before_anything_runs(
        tmp_path: Path, inventory: Path, args: list[str], option: str, bad: str, why: str) -> None:
    (tmp_path / "a-file").write_text("")
    where = bad.format(tmp=tmp_path)
    argv = [a.format(bad=where) for a in args]
    path = argv[argv.index(option if option in argv else "-o") + 1]
    state = tmp_path / "state"
    r = drctl(*argv, inventory=inventory, state_dir=state)
    err = flat(r.err)
    assert r.rc == 2, err
    assert f"{option} {path}" in err and why in err, err
    assert err.count(path) == 1, err  # said once
    assert "[web]" not in err  # no step ran
    assert journals(state) == [] and not (state / "drills").exists()  # nothing was journaled


def test_an_output_path_that_is_a_directory_is_refused(tmp_path: Path, inventory: Path) -> None:
    r = drctl("drill", "web", "--yes", "--html", str(tmp_path), inventory=inventory, state_dir=tmp_path / "state")
    assert r.rc == 2 and f"--html {tmp_path}: is a directory" in flat(r.err), r.err
    assert not (tmp_path / "state" / "drills").exists()


def test_a_report_that_fills_the_disk_exits_2_and_leaves_no_partial_file(tmp_path: Path, inventory: Path) -> None:
    state = tmp_path / "state"
    assert drctl("failover", "web", "--yes", inventory=inventory, state_dir=state).rc == 4  # a refused run
    (journal,) = journals(state)
    out = tmp_path / "reports" / "run.html"
    out.parent.mkdir()
    r = drctl_limited("report", journal.stem, "--format", "html", "-o", str(out), state_dir=state,
                      inventory=inventory, file_size=200)
    assert r.rc == 2, r.err
    assert f"--output {out}: cannot write it: File too large" in flat(r.err)
    assert list(out.parent.iterdir()) == []  # neither the report nor its temporary file
    ok = drctl("report", journal.stem, "--format", "html", "-o", str(out), state_dir=state)
    assert ok.rc == 0 and f"wrote {out}" in ok.err and out.read_text().startswith("<!DOCTYPE html>")


def test_the_open_files_limit_is_raised_for_large_sites() -> None:
    """A run holds a lock per service: a soft limit below the hard one is raised at start-up."""
    import subprocess
    import sys

    code = ("import resource\n"
            "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
            "from drctl.cli.app import _raise_open_files_limit\n"
            "_raise_open_files_limit()\n"
            "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    now, hard = int(out[0]), int(out[1])
    assert now > 256 and (hard == -1 or now <= hard)
