"""Crash and resume: failovers killed with SIGKILL at random moments, then resumed, on the real lab.

Twenty trials of ``bench/crash_harness.py`` (seeded; ``DRCTL_CRASH_SEED`` replays another
sequence) with the lab's services chained ``db <- api <- web``. Each trial kills ``drctl
failover --site dc1`` at a moment uniform over a full run's duration, resumes it (or starts a new
run when it was killed before journaling its start), and measures:

- whether the end state is consistent: ns1 and ns2 answer dc2, HAProxy serves dc2 with dc1 in
  maintenance, the db marker is on app2 only, ``drctl history`` and ``drctl status`` agree;
- DNS UPDATEs applied twice (SOA serial bumps beyond one per record flipped): must be none;
- HAProxy ``set server`` commands sent twice, through a counting relay: repeats of the action in
  flight when killed are allowed (resume repeats the in-flight step), of a completed one not.

One lab serves every trial; each ends with ``drctl failback --site dc1 --yes`` and a check of the
reset state. The summary is printed as one JSON line (``pytest -s`` shows it).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from bench.crash_harness import CrashHarness, run_trials
from drctl.lab.lab import LabInfo

TRIALS = 20
SEED = int(os.environ.get("DRCTL_CRASH_SEED", "20261201"))


@pytest.mark.timeout(900)
def test_killed_failovers_resume_consistently_without_applying_a_change_twice(lab: LabInfo, tmp_path: Path) -> None:
    t0 = time.monotonic()
    with CrashHarness(lab, tmp_path / "crash", keep=tmp_path / "inconsistent") as harness:
        summary = run_trials(harness, TRIALS, SEED, measure_runs=1)
    summary["wall_s"] = round(time.monotonic() - t0, 1)
    print(json.dumps(summary))
    detail = json.dumps(summary, indent=2)
    assert summary["trials"] == TRIALS
    assert summary["inconsistent"] == 0, detail
    assert summary["dns_updates_applied_twice"] == 0, detail
    # a repeat of the step in flight when the run was killed is by design; of a finished one, not
    assert summary["haproxy_commands_repeated"]["completed"] == 0, detail
