"""The run lock and journal in etcd (``--state etcd://...``), against the lab started with its etcd
cluster (one member per site and a witness), drctl run as processes the way operators run it.

Control node A names the members ``etcd-dc1`` and ``etcd-witness`` (``DRCTL_STATE``), control
node B ``etcd-dc2`` and ``etcd-witness``; each has a state directory of its own. Runs use the
default failover playbook with one more step after ``wait_dns``: a command on the backup host
that waits for a marker file, so a test can act while a run is half-way (DNS moved, traffic not).

- The site of A burns mid-run: A and its etcd member are killed together. B sees the run
  ``running`` and is refused, naming A's run, user, host and pid, until the lease of the killed
  run expires (its TTL); then B resumes the run to its end.
- Two control nodes start conflicting failovers at the same moment: exactly one proceeds, the
  other is refused (exit 4) naming the holder, and journals nothing.
- Quorum is lost mid-run: the run stops at its next journal write (exit 9) without moving
  traffic; once the members are back (and the lease of the stopped run has expired), it resumes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from drctl.engine.store import open_state
from drctl.errors import LockHeldError
from drctl.lab.lab import LabInfo, lab_down, lab_up
from drctl.lab.servers import EtcdMember, pid_gone
from tests.e2e.helpers import Result, drctl, drctl_env, wait_for

pytestmark = pytest.mark.servers

TTL = 3  # seconds: the lease of a run's lock in these tests (the default is 10)
DC2 = {"www.example.test": "198.51.100.10", "api.example.test": "198.51.100.11", "db.internal.test": "10.2.0.5"}


@pytest.fixture
def etcd_lab(tmp_path: Path) -> Iterator[LabInfo]:
    info = lab_up(tmp_path / "lab", etcd=True)
    try:
        yield info
    finally:
        lab_down(info.dir)
        left = [n for n, d in info.daemons.items() if d.alive() or (d.pid is not None and not pid_gone(d.pid))]
        assert not left, f"still running after lab_down: {left}"


def hold_playbook(tmp_path: Path, marker: Path) -> Path:
    """The default failover with a step after wait_dns that waits until ``marker`` exists."""
    from drctl.model.load import builtin_playbook

    pb = yaml.safe_load(builtin_playbook("failover").read_text())
    at = next(i for i, s in enumerate(pb["steps"]) if s["kind"] == "wait_dns") + 1
    pb["steps"].insert(at, {"kind": "command", "name": "hold", "site": "to", "timeout": "60s",
                            "argv": ["sh", "-c", f"while ! test -e {marker}; do sleep 0.05; done"]})
    path = tmp_path / "hold.yaml"
    path.write_text(yaml.safe_dump(pb, sort_keys=False))
    return path


class Node:
    """A control node: its own state spec (etcd members it knows) and state directory."""

    def __init__(self, lab: LabInfo, tmp_path: Path, name: str, members: list[str]) -> None:
        self.lab = lab
        self.spec = lab.state_spec(members, ttl=TTL)
        self.dir = tmp_path / f"node-{name}"

    def run(self, *args: str, timeout: float = 120) -> Result:
        return drctl(*args, state_dir=self.dir, inventory=self.lab.inventory, timeout=timeout, DRCTL_STATE=self.spec)

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        env = drctl_env(self.dir, DRCTL_INVENTORY=str(self.lab.inventory), DRCTL_STATE=self.spec)
        return subprocess.Popen([sys.executable, "-m", "drctl", *args], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def journal(self, run_id: str) -> list[dict[str, Any]]:
        st = open_state(self.spec, self.dir)
        try:
            return st.runs.read(run_id)
        finally:
            st.close()

    def runs(self) -> list[str]:
        st = open_state(self.spec, self.dir)
        try:
            return st.runs.list_runs()
        finally:
            st.close()


def holding(node: Node) -> str | None:
    """The run id once some run's hold step has started, else None."""
    runs = node.runs()
    if runs and any(r.get("event") == "action_started" and r.get("kind") == "command" for r in node.journal(runs[0])):
        return runs[0]
    return None


def kill(member: EtcdMember) -> None:
    """SIGKILL an etcd member, as a site that burns does."""
    assert member.pid is not None
    os.kill(member.pid, signal.SIGKILL)
    assert member._proc is not None
    member._proc.wait(10)


def on_dc2(lab: LabInfo) -> bool:
    return (all(lab.dig(name, "A", server=s) == [v] for name, v in DC2.items() for s in ("ns1", "ns2"))
            and lab.http_get_frontend("web").strip() == "web@dc2" and lab.http_get_frontend("api").strip() == "api@dc2"
            and (lab.host_root("app2") / "db-active").exists())


def resume_once_free(node: Node, run_id: str, limit: float) -> tuple[Result, float, list[Result]]:
    """``drctl resume`` until it is not refused for a held lock (bounded by ``limit`` seconds):
    (its result, seconds it took, the refusals)."""
    t0 = time.monotonic()
    refused: list[Result] = []
    while True:
        r = node.run("resume", run_id, "--yes")
        if r.rc != 4 or "is locked by" not in r.err:
            return r, time.monotonic() - t0, refused
        refused.append(r)
        assert time.monotonic() - t0 < limit, r.err
        time.sleep(0.2)


def test_a_run_killed_with_its_sites_etcd_member_is_resumed_from_the_other_site(etcd_lab: LabInfo,
                                                                                tmp_path: Path) -> None:
    lab = etcd_lab
    a = Node(lab, tmp_path, "a", ["etcd-dc1", "etcd-witness"])
    b = Node(lab, tmp_path, "b", ["etcd-dc2", "etcd-witness"])
    marker = tmp_path / "go"
    run = a.spawn("failover", "--site", "dc1", "--yes", "--playbook", str(hold_playbook(tmp_path, marker)))
    run_id = wait_for(lambda: holding(b), timeout=60, what="the run to reach its hold step (seen from B)")
    # the site burns: control node A and its etcd member at once
    run.kill()
    run.communicate(timeout=10)
    kill(lab.daemons["etcd-dc1"])  # type: ignore[arg-type]
    killed = time.monotonic()
    marker.touch()
    # B sees the lock held by the killed run (user, host, pid) until its lease expires
    view = open_state(b.spec, b.dir)
    with pytest.raises(LockHeldError, match=f"locked by run {run_id} by .*pid {run.pid}, failover.*lease of {TTL} s"):
        view.leases.acquire_all(["db", "api", "web"], {"run_id": "20260101T000000Z-failover-ffffff"})
    while view.leases.held_by("db") is not None:
        assert time.monotonic() - killed < TTL + 10, "the killed run's lock did not free itself"
        time.sleep(0.05)
    freed = time.monotonic() - killed
    view.close()
    print(f"the lock of the killed run freed itself {freed:.1f}s after the kill (lease ttl {TTL}s)")
    r = b.run("resume", run_id, "--yes")
    assert r.rc == 0, r.err
    assert on_dc2(lab)
    records = b.journal(run_id)
    events = [x["event"] for x in records]
    assert events.count("run_started") == 1 and events[-1] == "run_finished" and "run_resumed" in events
    assert records[-1]["status"] == "succeeded" and [x["seq"] for x in records] == list(range(1, len(records) + 1))
    hist = b.run("history", "--json")
    assert [x["status"] for x in hist.json() if x["run_id"] == run_id] == ["succeeded"]
    rep = b.run("report", run_id, "--format", "json")
    assert rep.rc == 0 and json.loads(rep.out)["status"] == "succeeded", rep.err
    status = b.run("status", "--json")
    assert status.rc == 0, status.err
    assert {s["service"]: s["last_run"]["result"] for s in status.json()["services"]} == dict.fromkeys(
        ("db", "api", "web"), "succeeded")
    assert a.runs() == [run_id]  # A's view (through the witness) is the same journal


def test_two_control_nodes_starting_conflicting_failovers_at_once_exactly_one_proceeds(tmp_path: Path) -> None:
    # this lab is started by the CLI, as an operator would: `drctl lab up --etcd`
    up = drctl("lab", "up", "--etcd", "--dir", str(tmp_path / "lab"), "--json", state_dir=tmp_path / "state")
    assert up.rc == 0, up.err
    lab = LabInfo.load(tmp_path / "lab")
    try:
        assert yaml.safe_load(lab.inventory.read_text())["state"] == up.json()["state"] == lab.state_spec()
        a = Node(lab, tmp_path, "a", ["etcd-dc1", "etcd-witness"])
        b = Node(lab, tmp_path, "b", ["etcd-dc2", "etcd-witness"])
        marker = tmp_path / "go"
        pb = str(hold_playbook(tmp_path, marker))
        runs = [n.spawn("failover", "--site", "dc1", "--yes", "--playbook", pb) for n in (a, b)]
        # the loser is refused at once; the winner holds at its marker until then
        loser = wait_for(lambda: next((p for p in runs if p.poll() is not None), None), timeout=60,
                         what="one of the two runs to be refused")
        winner = next(p for p in runs if p is not loser)
        out, err = loser.communicate(timeout=10)
        err = " ".join(err.split())
        assert loser.returncode == 4, err
        assert "is locked by run " in err and f"(pid {winner.pid}, failover" in err, err
        assert winner.poll() is None
        marker.touch()
        out, err = winner.communicate(timeout=120)
        assert winner.returncode == 0, err
        assert on_dc2(lab)
        assert len(a.runs()) == 1 == len(b.runs())  # the refused run journaled nothing
        # without DRCTL_STATE, the inventory's state: says where the runs are; `--state dir` overrides it
        via_inventory = drctl("history", "--json", state_dir=tmp_path / "c", inventory=lab.inventory)
        assert [r["run_id"] for r in via_inventory.json()] == a.runs(), via_inventory.err
        via_dir = drctl("history", "--json", "--state", "dir", state_dir=tmp_path / "c", inventory=lab.inventory)
        assert via_dir.rc == 0 and via_dir.json() == [], via_dir.err
    finally:
        down = drctl("lab", "down", "--dir", str(tmp_path / "lab"), state_dir=tmp_path / "state")
        assert down.rc == 0, down.err


def test_quorum_lost_mid_run_stops_it_with_exit_9_and_it_resumes_when_quorum_is_back(etcd_lab: LabInfo,
                                                                                   tmp_path: Path) -> None:
    lab = etcd_lab
    a = Node(lab, tmp_path, "a", ["etcd-dc1", "etcd-dc2", "etcd-witness"])
    marker = tmp_path / "go"
    run = a.spawn("failover", "--site", "dc1", "--yes", "--playbook", str(hold_playbook(tmp_path, marker)))
    run_id = wait_for(lambda: holding(a), timeout=60, what="the run to reach its hold step")
    lost = [lab.daemons["etcd-dc2"], lab.daemons["etcd-witness"]]
    for m in lost:
        kill(m)  # type: ignore[arg-type]
    t0 = time.monotonic()
    marker.touch()
    out, err = run.communicate(timeout=60)
    stopped_after = time.monotonic() - t0
    err = " ".join(err.split())
    assert run.returncode == 9, err
    assert "Traceback" not in err
    assert "does not answer or has no quorum" in err or "lock of" in err, err
    assert f"drctl resume {run_id}" in err, err
    print(f"quorum lost: the run stopped {stopped_after:.1f}s later (exit 9)")
    # stopped at a safe point: DNS had moved, traffic had not
    state = lab.haproxy_state()
    assert state[("web", "dc1")]["admin_state"] == 0 and lab.http_get_frontend("web").strip() == "web@dc1"
    # while there is no quorum, reading the state says so (exit 9), it does not guess
    hist = a.run("history", timeout=60)
    assert hist.rc == 9 and "does not answer or has no quorum" in " ".join(hist.err.split()), hist.err
    for m in lost:
        m.start()
    r, waited, _refused = resume_once_free(a, run_id, limit=TTL + 20)
    assert r.rc == 0, r.err
    print(f"quorum back: resumed {waited:.1f}s after the members were")
    assert on_dc2(lab)
    records = a.journal(run_id)
    assert records[-1]["event"] == "run_finished" and records[-1]["status"] == "succeeded"
    # the steps in flight when the run stopped were repeated; none that had finished was
    started = [x["action"] for x in records if x["event"] == "action_started"
               and x["kind"] in ("flip_dns", "wait_dns", "reroute_traffic")]
    assert len(started) == 9 and len(set(started)) == 9, started
