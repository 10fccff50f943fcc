"""Drills, checks, status and reports against the lab's real sshd, BIND, HAProxy and origins."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from drctl.lab.lab import TSIG_NAME, LabInfo
from drctl.lab.servers import free_port, write_tsig_key
from tests.drill.test_reports import assert_exposition_format, assert_self_contained
from tests.e2e.helpers import drctl, journal

DC1 = {"www.example.test": "192.0.2.10", "api.example.test": "192.0.2.11", "db.internal.test": "10.1.0.5"}


def served(lab: LabInfo, values: dict[str, str]) -> bool:
    """Every authoritative server answers these values."""
    return all(lab.dig(name, "A", server=s) == [v] for name, v in values.items() for s in ("ns1", "ns2"))


def frontends(lab: LabInfo) -> tuple[str, str]:
    return lab.http_get_frontend("web").strip(), lab.http_get_frontend("api").strip()


def inventory_copy(lab: LabInfo, name: str, change: Any = None) -> Path:
    """The lab's inventory with HAProxy `frontend` URLs (the drill's HTTP real path), changed by
    ``change(data)``, written beside the original so relative key paths still resolve."""
    data = yaml.safe_load(lab.inventory.read_text())
    for svc in ("web", "api"):
        data["services"][svc]["traffic"]["frontend"] = f"http://127.0.0.1:{lab.frontends[svc]}/health"
    if change is not None:
        change(data)
    path = lab.dir / f"inventory-{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def runs_of(state: Path) -> list[str]:
    d = state / "runs"
    return sorted(p.stem for p in d.glob("*.jsonl")) if d.exists() else []


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def screenshot(html: Path, png: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed; run `make deps`", pytrace=False)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", f"--screenshot={png}", "--window-size=1200,900",
                        html.resolve().as_uri()],
                       capture_output=True, timeout=120, check=False, stdin=subprocess.DEVNULL)


def test_drill_passes_and_returns_everything_to_the_primary(lab: LabInfo, tmp_path: Path) -> None:
    inv = inventory_copy(lab, "drill")
    state = tmp_path / "state"
    out = {k: tmp_path / f"drill.{k}" for k in ("html", "xml", "prom")}
    r = drctl("drill", "--site", "dc1", "--yes", "--json", "--html", str(out["html"]), "--junit", str(out["xml"]),
              "--metrics-file", str(out["prom"]), inventory=inv, state_dir=state)
    assert r.rc == 0, r.err
    rec = r.json()
    assert rec["status"] == "passed" and rec["exit_code"] == 0, rec["message"]
    assert {n: s["status"] for n, s in rec["services"].items()} == {"api": "passed", "db": "passed", "web": "passed"}
    for s in rec["services"].values():
        assert 0 < s["rto_s"] <= s["rto_target_s"] and s["rto_met"] is True
        # the lab's newest backup was written 60 s before the lab started
        assert 55 <= s["rpo_exposure_s"] <= s["rpo_target_s"] and s["returned"] is True
        assert s["final"] == "dc1 (primary)"
    # the real path was checked on the backup, then on the primary; HTTP went through HAProxy
    probes = {(p["service"], p["phase"]): p for p in rec["probes"]}
    assert probes[("web", "failover")]["status"] == "ok"
    assert "through the load balancer" in probes[("web", "failover")]["detail"]
    assert "'web@dc2'" in probes[("web", "failover")]["detail"]
    assert "'api@dc1'" in probes[("api", "failback")]["detail"]
    assert "ns1, ns2 answer dc2's values" in probes[("db", "failover")]["detail"]

    # everything is back where it was
    assert served(lab, DC1)
    assert frontends(lab) == ("web@dc1", "api@dc1")
    assert (lab.host_root("app1") / "db-active").exists() and not (lab.host_root("app2") / "db-active").exists()
    states = lab.haproxy_state()
    assert all(states[(b, "dc2")]["admin_state"] & 0x01 for b in ("web", "api"))  # dc2 back in maintenance

    # recorded: the drill file, and two journaled runs that name the drill
    assert json.loads((state / "drills" / f"{rec['drill_id']}.json").read_text()) == rec
    runs = runs_of(state)
    assert sorted(r.split("-")[1] for r in runs) == ["failback", "failover"]
    for run_id in runs:
        start = journal(state, run_id)[0]
        assert start["drill_id"] == rec["drill_id"]

    # JUnit: a suite per service, a case per step, RTO and RPO cases
    root = ET.parse(out["xml"]).getroot()
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {"api", "db", "web"}
    assert root.get("failures") == "0" and int(root.get("tests", "0")) == len(root.findall(".//testcase"))
    web_cases = [c.get("name") for c in suites["web"].findall("testcase")]
    assert "failover 04-flip_dns" in web_cases and "failover real_path" in web_cases
    assert "failback 03-flip_dns" in web_cases and web_cases[-3:] == ["RTO target", "RPO target", "drill result"]

    # Prometheus textfile
    fams = assert_exposition_format(out["prom"].read_text())
    assert {s.labels["service"]: s.value for s in fams["drctl_drill_success"].samples} == {
        "api": 1.0, "db": 1.0, "web": 1.0}
    assert len(fams["drctl_drill_rto_seconds"].samples) == 3
    assert len(fams["drctl_drill_backup_age_seconds"].samples) == 3

    # the HTML report is self-contained and renders in headless Chromium
    page = out["html"].read_text()
    assert_self_contained(page)
    png = tmp_path / "drill.png"
    screenshot(out["html"], png)
    assert png.exists() and png_size(png) == (1200, 900)
    assert png.stat().st_size > 20_000  # a blank 1200x900 page compresses to a few kB

    # `report` renders the same drill again, and a run of it too
    again = drctl("report", rec["drill_id"], "--format", "junit", state_dir=state)
    assert again.rc == 0 and ET.fromstring(again.out).get("tests") == root.get("tests")
    md = drctl("report", next(r for r in runs if "-failover-" in r), "--format", "md", state_dir=state)
    assert md.rc == 0 and "| web | flip_dns | ok |" in md.out

    # status: served from the primary, last drill passed
    st = drctl("status", "--json", inventory=inv, state_dir=state)
    assert st.rc == 0, st.err
    rows = {row["service"]: row for row in st.json()["services"]}
    for name in ("api", "db", "web"):
        assert rows[name]["serving"] == "dc1", rows[name]
        assert rows[name]["last_drill"]["drill_id"] == rec["drill_id"] and rows[name]["last_drill"]["passed"]
        assert rows[name]["last_run"]["operation"] == "failback"
        assert {b["site"] for b in rows[name]["backups"]} == {"dc1", "dc2"}
    table = drctl("status", inventory=inv, state_dir=state)
    assert table.rc == 0 and "dc1 (primary)" in table.out and "passed" in table.out


def test_a_drill_that_misses_its_rto_exits_7_and_still_comes_back(lab: LabInfo, tmp_path: Path) -> None:
    def tight(data: dict[str, Any]) -> None:
        data["services"]["db"]["rto"] = "1ms"

    inv = inventory_copy(lab, "tight", tight)
    state = tmp_path / "state"
    prom = tmp_path / "drill.prom"
    r = drctl("drill", "db", "--yes", "--metrics-file", str(prom), inventory=inv, state_dir=state)
    assert r.rc == 7, r.err
    assert "missed" in r.out and "a target was missed" in r.err
    rec = drctl("report", json.loads((state / "drills" / os.listdir(state / "drills")[0]).read_text())["drill_id"],
                "--format", "json", state_dir=state).json()
    db = rec["services"]["db"]
    assert db["status"] == "missed" and db["rto_met"] is False and db["rpo_met"] is True and db["returned"] is True
    assert served(lab, {"db.internal.test": DC1["db.internal.test"]})
    assert (lab.host_root("app1") / "db-active").exists() and not (lab.host_root("app2") / "db-active").exists()
    fams = assert_exposition_format(prom.read_text())
    assert [s.value for s in fams["drctl_drill_success"].samples] == [0.0]
    assert [s.value for s in fams["drctl_drill_returned"].samples] == [1.0]


def _stale_backup(lab: LabInfo) -> None:
    old = time.time() - 3 * 3600
    for f in lab.backup_dir("app2", "web").iterdir():
        os.utime(f, (old, old))


def _backup_down(lab: LabInfo) -> None:
    lab.daemons["origin-web-dc2"].stop()


@pytest.mark.parametrize(("fault", "expect"), [
    (_stale_backup, "older than its RPO"),
    (_backup_down, "fails its health check"),
])
def test_a_drill_refused_by_its_gate_changes_nothing(lab: LabInfo, tmp_path: Path, fault: Any, expect: str) -> None:
    inv = inventory_copy(lab, "gate")
    state = tmp_path / "state"
    fault(lab)
    before = lab.haproxy_state()
    r = drctl("drill", "web", "api", "--yes", "--json", inventory=inv, state_dir=state)
    assert r.rc == 4, r.err
    rec = r.json()
    assert rec["status"] == "refused" and rec["services"]["web"]["status"] == "refused"
    assert any(expect in f for f in rec["services"]["web"]["findings"]), rec["services"]["web"]["findings"]
    if fault is _stale_backup:
        assert rec["services"]["web"]["rpo_met"] is False and rec["services"]["web"]["rpo_exposure_s"] > 3600
    assert rec["runs"]["failback"] is None
    # nothing changed: DNS, HAProxy, and the journal shows no step that changes anything
    assert served(lab, DC1)
    assert lab.haproxy_state() == before
    [run_id] = runs_of(state)
    started = [e["kind"] for e in journal(state, run_id) if e.get("event") == "action_started"]
    assert started and set(started) <= {"check_freshness", "health_check", "verify_integrity"}
    assert "refused, nothing changed" in rec["message"]


def test_a_drill_whose_backup_fails_through_the_real_path_is_rolled_back(lab: LabInfo, tmp_path: Path) -> None:
    # the backup origin is healthy, but HAProxy's dc2 server points at a port where nothing listens
    inv = inventory_copy(lab, "broken-path")
    state = tmp_path / "state"
    reply = lab.haproxy_command(f"set server web/dc2 addr 127.0.0.1 port {free_port()}")
    assert "port changed" in reply, reply
    r = drctl("drill", "web", "--yes", "--json", inventory=inv, state_dir=state)
    assert r.rc == 5, r.err
    rec = r.json()
    web = rec["services"]["web"]
    assert rec["status"] == "failed" and web["status"] == "failed"
    # the failover's reroute refuses to take dc1 out while HAProxy cannot see dc2 UP
    assert any("does not see web/dc2 UP" in f for f in web["findings"]), web["findings"]
    assert web["rto_s"] is None and web["returned"] is True and web["final"] == "dc1 (primary)"
    assert "production was returned to the primary for web" in rec["message"]
    # rolled back for real: DNS and traffic are on dc1 again
    assert served(lab, {"www.example.test": DC1["www.example.test"]})
    assert lab.http_get_frontend("web").strip() == "web@dc1"
    assert [rec["runs"]["failover"]["status"], rec["runs"]["failback"]["status"]] == ["failed", "succeeded"]
    assert len(runs_of(state)) == 2


def test_check_flags_an_unreachable_host_a_wrong_tsig_key_and_a_missing_haproxy_server(
        lab: LabInfo, tmp_path: Path) -> None:
    state = tmp_path / "state"
    good = drctl("check", "--all", inventory=inventory_copy(lab, "good"), state_dir=state)
    assert good.rc == 0, good.out + good.err
    assert "api: READY" in good.out and "web: READY" in good.out

    write_tsig_key(lab.dir / "keys" / "wrong.key", TSIG_NAME)  # same name, another secret

    def break_things(data: dict[str, Any]) -> None:
        data["zones"]["example.test"]["tsig"]["file"] = "keys/wrong.key"
        data["services"]["api"]["traffic"]["servers"]["dc2"] = "dc3"

    inv = inventory_copy(lab, "broken", break_things)
    lab.daemons["ssh-app2"].stop()
    prom = tmp_path / "check.prom"
    r = drctl("check", "--all", "--json", "--metrics-file", str(prom), inventory=inv, state_dir=state)
    assert r.rc == 7, r.err
    res = r.json()
    assert res["ready"] is False
    failed = {(f["service"], f["check"], f["subject"]) for f in res["findings"] if f["level"] == "fail"}
    for svc in ("api", "db", "web"):
        assert (svc, "host", "app2 (dc2)") in failed
        assert (svc, "host", "app1 (dc1)") not in failed
        assert (svc, "backup", "dc2") in failed
    for svc in ("api", "web"):
        assert (svc, "tsig", "zone example.test at ns1") in failed
    assert ("db", "tsig", "zone internal.test at ns1") not in failed  # that zone's key is right
    assert ("api", "haproxy", "lb1 backend api") in failed and ("web", "haproxy", "lb1 backend web") not in failed
    haproxy = next(f for f in res["findings"] if f["check"] == "haproxy" and f["service"] == "api")
    assert "no server dc3 (for dc2)" in haproxy["detail"]
    assert all(not v["ready"] for v in res["services"].values())
    fams = assert_exposition_format(prom.read_text())
    assert {s.labels["service"]: s.value for s in fams["drctl_check_ready"].samples} == {
        "api": 0.0, "db": 0.0, "web": 0.0}

    # the text output: one line per finding, a verdict per service
    text = drctl("check", "web", inventory=inv, state_dir=state)
    assert text.rc == 7
    lines = text.out.splitlines()
    assert any(ln.startswith("web") and "FAIL" in ln and "tsig" in ln for ln in lines)
    assert lines[-1].startswith("web: NOT READY (3 problems)")

    # the planning report carries the same findings, and the expected durations
    plan = drctl("plan", "failover", "api", "--format", "html", inventory=inv, state_dir=state)
    assert plan.rc == 0, plan.err
    assert_self_contained(plan.out)
    assert "no server dc3 (for dc2)" in plan.out and "not ready" in plan.out
    md = drctl("plan", "failover", "api", "--format", "md", inventory=inv, state_dir=state)
    assert "- **api**: NOT READY" in md.out and "TTL (30s)" in md.out


def test_a_drill_whose_real_path_serves_the_wrong_thing_is_rolled_back(lab: LabInfo, tmp_path: Path) -> None:
    # every step works, but the load balancer's address for web serves something else (api)
    def wrong_frontend(data: Any) -> None:
        data["services"]["web"]["traffic"]["frontend"] = f"http://127.0.0.1:{lab.frontends['api']}/health"

    inv = inventory_copy(lab, "wrong-frontend", wrong_frontend)
    r = drctl("drill", "web", "--yes", "--json", inventory=inv, state_dir=tmp_path / "state")
    assert r.rc == 5, r.err
    web = r.json()["services"]["web"]
    assert any("real-path check on the backup failed" in f and "load balancer path FAILED" in f
               for f in web["findings"]), web["findings"]
    assert web["rto_s"] is None and web["returned"] is True
    assert served(lab, {"www.example.test": DC1["www.example.test"]})
    assert lab.http_get_frontend("web").strip() == "web@dc1"


def _slow_drill_playbook(tmp_path: Path) -> Path:
    """The drill's failover with a pause after traffic has moved: time to break something."""
    pb = yaml.safe_load((Path(__file__).resolve().parents[2] / "playbooks" / "drill.yaml").read_text())
    at = next(i for i, s in enumerate(pb["steps"]) if s["kind"] == "reroute_traffic") + 1
    pb["steps"].insert(at, {"kind": "command", "site": "to", "argv": ["sleep", "3"], "timeout": "30s"})
    path = tmp_path / "slow-drill.yaml"
    path.write_text(yaml.safe_dump(pb))
    return path


def _spawn_drill(lab: LabInfo, state: Path, *args: str) -> subprocess.Popen[str]:
    from tests.e2e.helpers import spawn

    return spawn("drill", "web", "--yes", "--json", *args, state_dir=state, inventory=lab.inventory)


def _wait_for_the_sleep(state: Path) -> None:
    from tests.e2e.helpers import wait_for

    def sleeping() -> bool:
        runs = runs_of(state)
        return bool(runs) and any(r.get("event") == "action_started" and r.get("kind") == "command"
                                  for r in journal(state, runs[0]))

    wait_for(sleeping, 60, "the drill's failover to reach its sleep")


def test_sigterm_during_a_drill_returns_to_the_primary_and_records_it(lab: LabInfo, tmp_path: Path) -> None:
    import signal

    state = tmp_path / "state"
    proc = _spawn_drill(lab, state, "--playbook", str(_slow_drill_playbook(tmp_path)))
    _wait_for_the_sleep(state)
    assert lab.dig("www.example.test") == ["198.51.100.10"]  # production is on the backup now
    proc.send_signal(signal.SIGTERM)  # `systemctl stop`, or the timer's TimeoutStartSec
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    rec = json.loads(out)
    assert rec["status"] == "aborted" and "SIGTERM" in rec["message"]
    assert rec["services"]["web"]["returned"] is True
    assert served(lab, {"www.example.test": DC1["www.example.test"]})
    assert lab.http_get_frontend("web").strip() == "web@dc1"
    stored = json.loads(next((state / "drills").glob("*.json")).read_text())
    assert stored["status"] == "aborted"


def test_a_drill_never_returns_onto_a_dead_primary(lab: LabInfo, tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = _spawn_drill(lab, state, "--playbook", str(_slow_drill_playbook(tmp_path)))
    _wait_for_the_sleep(state)
    lab.daemons["origin-web-dc1"].stop()  # the primary dies while the drill runs on the backup
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, err
    rec = json.loads(out)
    assert rec["services"]["web"]["returned"] is False
    assert "PRODUCTION IS NOT BACK ON THE PRIMARY" in rec["message"] and "health check" in rec["message"]
    # the backup keeps serving: no outage caused by the drill
    assert lab.dig("www.example.test") == ["198.51.100.10"]
    assert lab.http_get_frontend("web").strip() == "web@dc2"


def test_a_drill_starts_only_from_a_known_state(lab: LabInfo, tmp_path: Path) -> None:
    lab.daemons["named-ns1"].pause()  # the primary DNS server does not answer: where is web served?
    try:
        r = drctl("drill", "web", "--yes", "--json", inventory=lab.inventory, state_dir=tmp_path / "state")
    finally:
        lab.daemons["named-ns1"].resume()
    assert r.rc == 4, r.err
    rec = r.json()
    assert rec["status"] == "refused" and "unknown at the start" in rec["message"]
    assert rec["runs"]["failover"] is None  # nothing was attempted
    assert lab.dig("www.example.test") == ["192.0.2.10"]


def test_status_shows_a_killed_drill_as_interrupted(lab: LabInfo, tmp_path: Path) -> None:
    import signal

    state = tmp_path / "state"
    proc = _spawn_drill(lab, state, "--playbook", str(_slow_drill_playbook(tmp_path)))
    _wait_for_the_sleep(state)
    proc.send_signal(signal.SIGKILL)  # no handler can run: the record is left "running"
    proc.communicate(timeout=60)
    r = drctl("status", "web", "--json", inventory=lab.inventory, state_dir=state)
    assert r.rc == 0, r.err
    [row] = r.json()["services"]
    assert row["last_drill"]["status"] == "interrupted" and row["last_drill"]["passed"] is False
    assert row["where"] == "dc2 (backup)"  # and status says where production really is


def test_a_drill_refuses_a_backup_whose_data_differs_before_it_serves(lab: LabInfo, tmp_path: Path) -> None:
    page = lab.host_root("app2") / "data" / "web" / "index.html"
    page.write_text(page.read_text() + "<!-- changed on the backup only -->\n")
    r = drctl("drill", "web", "--yes", "--json", inventory=lab.inventory, state_dir=tmp_path / "state")
    assert r.rc == 4, r.err
    rec = r.json()
    assert rec["status"] == "refused"
    assert any("verify_integrity" in f and "1 differ" in f for f in rec["services"]["web"]["findings"])
    assert served(lab, {"www.example.test": DC1["www.example.test"]})  # users never saw the backup
    assert lab.http_get_frontend("web").strip() == "web@dc1"
