"""The critical path against the lab's real HAProxy, BIND and sshd: the balancer checks the backup
servers before their wave needs them (drained: checked, sent nothing), a run that does not switch
puts them back, and disaster mode (``--site-down``) sends nothing to the site declared lost."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import yaml

from drctl.lab.lab import LabInfo
from tests.e2e.helpers import drctl, journal, only_run_id, spawn, wait_for

MAINT = 0x01  # srv_admin_state: forced maintenance
DRAIN = 0x08  # srv_admin_state: forced drain


def _admin(lab: LabInfo, backend: str, server: str) -> int:
    return lab.haproxy_state()[(backend, server)]["admin_state"]


def _slow_playbook(tmp_path: Path, *, fail: bool = False) -> Path:
    """Gate, then a 2 s command on the backup host (or one that fails), then the switch."""
    path = tmp_path / "slow.yaml"
    argv = ["false"] if fail else ["sleep", "2"]
    path.write_text(yaml.safe_dump({
        "version": 1, "name": "slow", "direction": "failover",
        "steps": [{"kind": "check_freshness"}, {"kind": "health_check"},
                  {"kind": "command", "site": "to", "argv": argv, "timeout": "30s"},
                  {"kind": "flip_dns"}, {"kind": "reroute_traffic"}]}))
    return path


def test_backup_servers_are_checked_before_their_switch_and_serve_nothing_until_it(
        lab: LabInfo, tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert _admin(lab, "web", "dc2") & MAINT
    proc = spawn("failover", "web", "--yes", "--playbook", str(_slow_playbook(tmp_path)), state_dir=state,
                 inventory=lab.inventory)
    try:
        run_id = wait_for(lambda: only_run_id(state), 30, "the run to start")
        wait_for(lambda: any(r.get("event") == "action_started" and r.get("kind") == "command"
                             for r in journal(state, run_id)), 30, "the command before the switch")
        # before the switch: dc2 is drained (no longer in maintenance, so HAProxy checks it) ...
        assert wait_for(lambda: (_admin(lab, "web", "dc2") & (MAINT | DRAIN)) == DRAIN, 5, "dc2 drained")
        assert wait_for(lambda: lab.haproxy_state()[("web", "dc2")]["op_state"] == 2, 5, "dc2 checked UP")
        # ... and no request reaches it
        answers = {lab.http_get_frontend("web").strip() for _ in range(40)}
        assert answers == {"web@dc1"}
    finally:
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert lab.http_get_frontend("web").strip() == "web@dc2"
    reroute = next(r for r in journal(state, run_id) if r.get("event") == "action_finished"
                   and r["action"].endswith("reroute_traffic"))
    assert reroute["data"]["waited_for_up_s"] < 0.1, reroute  # seen UP at the first look: no wait for a check


def test_a_refused_run_leaves_the_balancer_as_it_found_it(lab: LabInfo, tmp_path: Path) -> None:
    before = lab.haproxy_state()
    lab.daemons["origin-web-dc2"].stop()  # the backup fails its health check: the gate refuses
    r = drctl("failover", "web", "api", "--yes", inventory=lab.inventory, state_dir=tmp_path / "state")
    assert r.rc == 4, r.err
    assert {k: v["admin_state"] for k, v in lab.haproxy_state().items()} == \
        {k: v["admin_state"] for k, v in before.items()}


def test_a_failed_run_puts_back_the_servers_it_did_not_switch(lab: LabInfo, tmp_path: Path) -> None:
    state = tmp_path / "state"
    r = drctl("failover", "web", "--yes", "--playbook", str(_slow_playbook(tmp_path, fail=True)),
              inventory=lab.inventory, state_dir=state)
    assert r.rc == 5, r.err
    assert _admin(lab, "web", "dc2") & MAINT
    assert lab.http_get_frontend("web").strip() == "web@dc1"
    events = [x["event"] for x in journal(state, str(only_run_id(state)))]
    assert "prewarm" in events and "prewarm_restored" in events


def test_site_down_sends_nothing_to_the_lost_site(lab: LabInfo, tmp_path: Path) -> None:
    state = tmp_path / "state"
    # a baseline of the primary's data, recorded while it was up, for the integrity check
    rec = drctl("verify", "web", "--record-baseline", inventory=lab.inventory, state_dir=state)
    assert rec.rc == 0, rec.err
    log = Path(lab.daemons["ssh-app1"].log)
    logins_before = log.read_text(errors="replace").count("Accepted publickey")
    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:  # anything reaching app1's sshd during the run shows in its log
        while not stop.is_set():
            seen.append(log.read_text(errors="replace"))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        r = drctl("failover", "--site", "dc1", "--site-down", "dc1", "--yes", "--json", inventory=lab.inventory,
                  state_dir=state)
    finally:
        stop.set()
        watcher.join(5)
    assert r.rc == 0, r.err
    res = r.json()
    assert res["status"] == "succeeded"
    assert log.read_text(errors="replace").count("Accepted publickey") == logins_before
    assert "Connection from" not in log.read_text(errors="replace")[len(seen[0]) if seen else 0:]
    left = res["left_sites"][0]
    assert left["site"] == "dc1" and not left["answering"] and "--site-down" in left["silent_since"]
    assert left["services"]["db"]["status"] == "not_attempted"
    verify = next(a for a in res["actions"] if a["kind"] == "verify_integrity")
    assert verify["status"] == "ok" and "baseline" in verify["detail"], verify
    # no probe waited for the lost site (its hosts' connect budget is 3 s)
    assert not any(a["elapsed_s"] >= 3.0 for a in res["actions"]), res["actions"]
    start = journal(state, res["run_id"])[0]
    assert start["site_down"] == ["dc1"]


def test_site_down_cannot_name_the_site_moved_to(lab: LabInfo, tmp_path: Path) -> None:
    r = drctl("failover", "--site", "dc1", "--site-down", "dc2", "--yes", inventory=lab.inventory,
              state_dir=tmp_path / "state")
    assert r.rc == 2 and "moves services to that site" in r.err, r.err


def test_the_plan_expects_what_the_last_run_measured(lab: LabInfo, tmp_path: Path) -> None:
    """The plan's expectations come from the step times of the last run (how close they come to
    the next run is measured by bench/bench_plan.py, not asserted here)."""
    from drctl.engine.observe import measured_timings

    state = tmp_path / "state"
    first = drctl("failover", "--site", "dc1", "--yes", "--json", inventory=lab.inventory, state_dir=state)
    assert first.rc == 0, first.err
    plan = drctl("plan", "failover", "--site", "dc1", "--json", inventory=lab.inventory, state_dir=state).json()
    assert plan["timings_from"] == first.json()["run_id"]
    timings, run_id = measured_timings(state, "failover")
    assert run_id == first.json()["run_id"]
    actions = [a for sp in plan["services"] for a in sp["actions"]]
    for a in actions:
        assert a["expected_s"] == round(timings[a["kind"]] + timings.get("step_overhead", 0.005), 4), a
    assert plan["preflight_s"] == round(timings["gate"], 4)
    fresh = drctl("plan", "failover", "--site", "dc1", "--json", inventory=lab.inventory,
                  state_dir=tmp_path / "empty").json()
    assert fresh["timings_from"] == "" and fresh["expected_duration_s"] != plan["expected_duration_s"]
