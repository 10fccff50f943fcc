"""The worst day, against the lab's real servers: each fault with its message, exit code and end state.

- The site being left vanishes at every step boundary of a dependent 3-service failover
  (``db`` <- ``api`` <- ``web``): its sshd and all its children frozen (SIGSTOP), or its packets
  dropped (nftables). The run converges to the backup, says the old site is not answering and
  whether it was fenced, and never waits a command's whole timeout for it.
- A primary whose host key changed: refused, with and without ``--force``; ``check`` says not ready.
- A backup encrypted in place: refused (exit 4, nothing changed), with and without ``--force``;
  only ``--accept-mass-change`` passes it, recorded in the journal.
- HAProxy restarted mid-run (its runtime state lost): resume puts traffic where the run said.
- A service removed from the inventory before resume: a clean refusal.

The fault is injected when the run's journal shows the k-th finished step (or the run's start):
within a few milliseconds of that boundary, wherever the next step is by then.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from drctl.lab.lab import LabInfo, lab_down, lab_up
from drctl.lab.servers import process_tree
from tests.e2e.helpers import drctl, journal, kill_at_first, only_run_id, spawn, wait_for

DC1 = {"www.example.test": "192.0.2.10", "api.example.test": "192.0.2.11", "db.internal.test": "10.1.0.5"}
DC2 = {"www.example.test": "198.51.100.10", "api.example.test": "198.51.100.11", "db.internal.test": "10.2.0.5"}
#: gate steps of the chain with the default failover playbook: freshness x3, health x3, integrity (web)
GATE_STEPS = 7
#: then db, api, web in turn: flip_dns, wait_dns, reroute_traffic, health_check
SERVICE_STEPS = 12


def served(lab: LabInfo, values: dict[str, str]) -> bool:
    return all(lab.dig(name, "A", server=s) == [v] for name, v in values.items() for s in ("ns1", "ns2"))


def on_site(lab: LabInfo, site: str) -> bool:
    values = DC1 if site == "dc1" else DC2
    backup_active = (lab.host_root("app2") / "db-active").exists()
    return (served(lab, values) and backup_active == (site == "dc2")
            and lab.http_get_frontend("web").strip() == f"web@{site}"
            and lab.http_get_frontend("api").strip() == f"api@{site}")


def chain_inventory(lab: LabInfo, **changes: Any) -> Path:
    """The lab's inventory with ``web`` depending on ``api`` (which depends on ``db``)."""
    inv = yaml.safe_load(lab.inventory.read_text())
    inv["services"]["web"]["depends_on"] = ["api"]
    for site in inv["sites"].values():  # a shorter connect budget keeps the matrix quick
        for host in site["hosts"].values():
            host["connect_timeout"] = "1500ms"
    for service, value in changes.items():
        if value is None:
            del inv["services"][service]
        else:
            inv["services"][service] = value
    path = lab.inventory.with_name("chain.yaml")
    path.write_text(yaml.safe_dump(inv, sort_keys=False))
    return path


class Fault:
    """A way for the site being left to vanish, and to come back."""

    def __init__(self, lab: LabInfo, kind: str) -> None:
        self.lab, self.kind = lab, kind
        self.frozen: list[int] = []
        self.table = f"drctlworst{os.getpid()}"

    def apply(self) -> None:
        if self.kind == "frozen":
            pid = self.lab.daemons["ssh-app1"].pid
            assert pid is not None
            self.frozen = process_tree(pid)
            for p in self.frozen:
                os.kill(p, signal.SIGSTOP)
        else:
            ports = [self.lab.ports["ssh-app1"], self.lab.ports["origin-web-dc1"], self.lab.ports["origin-api-dc1"]]
            rules = (f"table inet {self.table} {{\n chain out {{ type filter hook output priority 0; policy accept;\n"
                     f"  ip daddr 127.0.0.1 tcp dport {{ {', '.join(map(str, ports))} }} drop\n }}\n}}\n")
            subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True, timeout=10)

    def undo(self) -> None:
        if self.kind == "frozen":
            for p in self.frozen:
                try:
                    os.kill(p, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            self.frozen = []
        else:
            subprocess.run(["nft", "delete", "table", "inet", self.table], check=False, timeout=10,
                           capture_output=True)


def inject_at(state: Path, boundary: int, fault: Fault) -> threading.Thread:
    """Apply ``fault`` once the run's journal shows ``boundary`` finished steps (0: the run's start)."""
    def watch() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            run_id = only_run_id(state)
            if run_id is not None:
                records = journal(state, run_id)
                finished = sum(1 for r in records if r.get("event") == "action_finished")
                if (boundary == 0 and records) or (boundary > 0 and finished >= boundary):
                    fault.apply()
                    return
            time.sleep(0.002)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


@pytest.fixture(scope="module")
def shared_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabInfo]:
    info = lab_up(tmp_path_factory.mktemp("worst") / "lab")
    try:
        yield info
    finally:
        lab_down(info.dir)


@pytest.fixture
def matrix_lab(shared_lab: LabInfo, tmp_path: Path) -> Iterator[LabInfo]:
    """The shared lab, on dc1 before the test and put back on dc1 after it, whatever happened."""
    assert on_site(shared_lab, "dc1"), "the lab did not start from dc1"
    try:
        yield shared_lab
    finally:
        back = drctl("failback", "--site", "dc1", "--yes", "--force", inventory=chain_inventory(shared_lab),
                     state_dir=tmp_path / "reset")
        assert back.rc == 0, back.err
        assert wait_for(lambda: on_site(shared_lab, "dc1"), 5, "the lab back on dc1")


BOUNDARIES = [0, *range(GATE_STEPS, GATE_STEPS + SERVICE_STEPS + 1)]


@pytest.mark.parametrize("kind", ["frozen", "black-holed"])
@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_site_being_left_vanishes_at_any_step(matrix_lab: LabInfo, tmp_path: Path, kind: str,
                                              boundary: int) -> None:
    lab = matrix_lab
    inventory = chain_inventory(lab)
    (lab.host_root("app1") / "db-active").touch()  # db is active at dc1
    state = tmp_path / "state"
    fault = Fault(lab, kind)
    watcher = inject_at(state, boundary, fault)
    try:
        r = drctl("failover", "--site", "dc1", "--yes", "--json", inventory=inventory, state_dir=state, timeout=90)
        watcher.join(5)
        # never split: every service converged to the backup, and the world says so
        assert r.rc == 0, r.err
        res = r.json()
        assert res["status"] == "succeeded", res["message"]
        assert res["services"] == {"db": "succeeded", "api": "succeeded", "web": "succeeded"}
        assert wait_for(lambda: on_site(lab, "dc2"), 5, "every service on dc2")
        # it never waited a command's (10 s) or the verification's (2 min) budget for the vanished host:
        # at most its connect budget (1.5 s) a few times
        assert res["elapsed_s"] < 12, res["elapsed_s"]
        left = res["left_sites"][0]
        assert left["site"] == "dc1"
        db_fence = left["services"]["db"]
        db_reroute = next(a for a in res["actions"] if a["service"] == "db" and a["kind"] == "reroute_traffic")
        if db_reroute["status"] == "warn":
            # the fence did not reach the frozen / black-holed host: said in the summary and warnings
            assert db_fence["status"] == "not_fenced" and not left["answering"]
            assert "NOT fenced" in db_reroute["detail"]
            assert any("NOT fenced for db" in w for w in res["warnings"]), res["warnings"]
            assert any("did not answer" in w for w in res["warnings"]), res["warnings"]
            # (the host may have run the command before it stopped answering: not confirmed = not fenced)
        else:
            assert db_fence["status"] == "fenced"
            assert not (lab.host_root("app1") / "db-active").exists()
        for svc in ("api", "web"):
            assert left["services"][svc]["status"] == "fenced"  # HAProxy: dc1 in maintenance
        if boundary == 0:
            assert not left["answering"] and left["silent_since"]
        history = drctl("history", "--json", state_dir=state).json()
        assert history[0]["status"] == "succeeded"
    finally:
        fault.undo()
        watcher.join(10)


def _replace_known_host(lab: LabInfo, host: str) -> Path:
    """Make the lab's known_hosts expect another key for ``host`` (as if the host's key changed)."""
    from drctl.lab.servers import ssh_keygen

    other = ssh_keygen(lab.dir / "keys" / "other_host_key", "other")
    new_key = " ".join(Path(f"{other}.pub").read_text().split()[:2])
    port = lab.ports[f"ssh-{host}"]
    lines = []
    for line in lab.known_hosts.read_text().splitlines():
        if line.startswith(f"[127.0.0.1]:{port} "):
            line = f"[127.0.0.1]:{port} {new_key}"
        lines.append(line)
    lab.known_hosts.write_text("\n".join(lines) + "\n")
    return lab.known_hosts


def test_changed_primary_host_key_is_refused_even_with_force(lab: LabInfo, tmp_path: Path) -> None:
    known = _replace_known_host(lab, "app1")
    state = tmp_path / "state"
    serials = (lab.soa_serial("example.test"), lab.soa_serial("internal.test"))
    for extra in ([], ["--force"]):
        r = drctl("failover", "--site", "dc1", "--yes", *extra, inventory=lab.inventory, state_dir=state)
        assert r.rc == 4, r.err
        err = " ".join(r.err.split())
        assert "HOST KEY CHANGED" in err and str(known) in err and "ssh-keygen -R" in err, err
        assert err.count("HOST KEY CHANGED") <= 3, err  # said once per place it is shown, not per service
        assert "--force does not pass a changed host key" in err, err
        assert "pass --force to override" not in err
    assert on_site(lab, "dc1")
    assert (lab.soa_serial("example.test"), lab.soa_serial("internal.test")) == serials
    check = drctl("check", "--all", inventory=lab.inventory, state_dir=state)
    assert check.rc == 7, check.out + check.err
    assert "HOST KEY CHANGED" in check.out + check.err


def _add_files(lab: LabInfo, n: int) -> None:
    for host in ("app1", "app2"):
        base = lab.host_root(host) / "data" / "web" / "docs"
        base.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (base / f"doc{i:03d}.txt").write_text(f"document {i} " * 20 + "\n")


def _encrypt_in_place(root: Path) -> int:
    """What ransomware leaves: every file's content replaced, names and sizes kept."""
    n = 0
    for p in root.rglob("*"):
        if p.is_file():
            p.write_bytes(os.urandom(p.stat().st_size))
            n += 1
    return n


def test_poisoned_backup_is_refused_unless_acknowledged(lab: LabInfo, tmp_path: Path) -> None:
    _add_files(lab, 20)
    assert _encrypt_in_place(lab.host_root("app2") / "data" / "web") >= 20
    state = tmp_path / "state"
    for extra in ([], ["--force"]):
        r = drctl("failover", "web", "--yes", "--json", *extra, inventory=lab.inventory, state_dir=state)
        assert r.rc == 4, r.err
        res = r.json()
        assert res["status"] == "refused" and "MASS CHANGE" in res["message"], res["message"]
        assert "--accept-mass-change web" in res["message"]
        assert lab.dig("www.example.test") == ["192.0.2.10"]
        assert lab.http_get_frontend("web").strip() == "web@dc1"
    ok = drctl("failover", "web", "--yes", "--json", "--accept-mass-change", "web", inventory=lab.inventory,
               state_dir=state)
    assert ok.rc == 0, ok.err
    res = ok.json()
    assert any("mass-changed, acknowledged" in w for w in res["warnings"]), res["warnings"]
    verify = next(a for a in res["actions"] if a["kind"] == "verify_integrity")
    assert verify["status"] == "warn" and verify["data"]["acknowledged"] is True
    start = journal(state, res["run_id"])[0]
    assert start["accept_mass_change"] == ["web"]
    assert lab.http_get_frontend("web").strip() == "web@dc2"


def test_resume_after_the_balancer_restarted_puts_traffic_where_the_run_said(lab: LabInfo, tmp_path: Path) -> None:
    state = tmp_path / "state"
    playbook = tmp_path / "slow.yaml"
    playbook.write_text(yaml.safe_dump({
        "version": 1, "name": "slow-failover", "direction": "failover",
        "steps": [{"kind": "check_freshness"}, {"kind": "flip_dns"}, {"kind": "reroute_traffic"},
                  {"kind": "command", "site": "to", "argv": ["sleep", "5"], "timeout": "30s"}]}))
    run_id = kill_at_first("command", "failover", "web", "--yes", "--playbook", str(playbook), state_dir=state,
                           inventory=lab.inventory)
    assert lab.http_get_frontend("web").strip() == "web@dc2"  # the traffic had moved
    # the balancer restarts: its runtime changes are lost, web traffic is back on dc1
    haproxy = lab.daemons["haproxy-lb1"]
    haproxy.stop()
    haproxy.start()
    wait_for(lambda: lab.http_get_frontend("web").strip() == "web@dc1", 10, "haproxy back, serving dc1")
    r = drctl("resume", run_id, "--yes", "--json", state_dir=state)
    assert r.rc == 0, r.err
    res = r.json()
    assert res["status"] == "succeeded"
    assert "differed from the target" in r.err and "repaired" in r.err, r.err
    assert lab.http_get_frontend("web").strip() == "web@dc2"
    records = journal(state, run_id)
    converged = [x for x in records if x.get("event") == "converge" and x["service"] == "web"]
    assert converged and converged[-1]["found"] and not converged[-1]["remaining"]
    assert drctl("history", "--json", state_dir=state).json()[0]["status"] == "succeeded"
    status = drctl("status", "web", "--json", inventory=lab.inventory, state_dir=state)
    assert status.rc == 0, status.err
    assert "dc2" in status.out and "mixed" not in status.out


def test_a_run_whose_balancer_cannot_be_read_back_does_not_claim_success(lab: LabInfo, tmp_path: Path) -> None:
    state = tmp_path / "state"
    playbook = tmp_path / "stop-lb.yaml"
    # the balancer dies right after the switch, before the run reads it back
    playbook.write_text(yaml.safe_dump({
        "version": 1, "name": "lb-dies", "direction": "failover",
        "steps": [{"kind": "flip_dns"}, {"kind": "reroute_traffic"},
                  {"kind": "command", "site": "to", "argv": ["kill", "-STOP", str(lab.daemons["haproxy-lb1"].pid)]}]}))
    try:
        r = drctl("failover", "web", "--yes", "--playbook", str(playbook), inventory=lab.inventory, state_dir=state)
    finally:
        lab.daemons["haproxy-lb1"].resume()
    assert r.rc == 5, r.err
    run_id = only_run_id(state)
    assert "lb1 cannot be read" in r.err and "does not match the run's target" in r.err, r.err
    assert f"drctl resume {run_id}" in r.err
    assert drctl("history", "--json", state_dir=state).json()[0]["status"] == "failed"
    # once the balancer answers again, resume reads it back and finishes
    again = drctl("resume", str(run_id), "--yes", state_dir=state)
    assert again.rc == 0, again.err
    assert lab.http_get_frontend("web").strip() == "web@dc2"


def test_resume_with_a_service_removed_from_the_inventory_refuses_cleanly(lab: LabInfo, tmp_path: Path) -> None:
    state = tmp_path / "state"
    playbook = tmp_path / "slow.yaml"
    playbook.write_text(yaml.safe_dump({
        "version": 1, "name": "slow-failover", "direction": "failover",
        "steps": [{"kind": "flip_dns"},
                  {"kind": "command", "site": "to", "argv": ["sleep", "5"], "timeout": "30s"},
                  {"kind": "reroute_traffic"}]}))
    inventory = chain_inventory(lab)
    run_id = kill_at_first("command", "failover", "--site", "dc1", "--yes", "--playbook", str(playbook),
                           state_dir=state, inventory=inventory)
    chain_inventory(lab, web=None)  # the operator removes web from the inventory
    for extra in ([], ["--accept-changes"]):
        r = drctl("resume", run_id, "--yes", *extra, state_dir=state)
        assert r.rc == 4, r.err
        assert "no longer has" in r.err and "web" in r.err and "internal error" not in r.err, r.err
    assert drctl("history", "--json", state_dir=state).json()[0]["status"] == "interrupted"


def test_wait_dns_honours_sigterm_within_a_second(lab: LabInfo, tmp_path: Path) -> None:
    """A wait that cannot end (the secondary is frozen, the timeout long) stops on SIGTERM."""
    state = tmp_path / "state"
    playbook = tmp_path / "wait.yaml"
    playbook.write_text(yaml.safe_dump({
        "version": 1, "name": "long-wait", "direction": "failover",
        "steps": [{"kind": "flip_dns"}, {"kind": "wait_dns", "timeout": "10m", "interval": "30s"}]}))
    lab.daemons["named-ns2"].pause()
    try:
        proc = spawn("failover", "web", "--yes", "--playbook", str(playbook), state_dir=state,
                     inventory=lab.inventory)
        run_id = wait_for(lambda: only_run_id(state), 30, "the run to start")
        wait_for(lambda: any(r.get("event") == "action_started" and r.get("kind") == "wait_dns"
                             for r in journal(state, run_id)), 30, "wait_dns to start")
        time.sleep(0.5)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=10)
        assert time.monotonic() - t0 < 2.0
        assert rc == 130, proc.stderr.read() if proc.stderr else ""
    finally:
        lab.daemons["named-ns2"].resume()
    assert journal(state, run_id)[-1]["event"] == "run_finished"



def test_resume_runs_commands_with_their_real_arguments_though_the_journal_masks_them(
        lab: LabInfo, tmp_path: Path) -> None:
    state = tmp_path / "state"
    mark = lab.host_root("app2") / "secret-ok"
    playbook = tmp_path / "secret.yaml"
    playbook.write_text(yaml.safe_dump({
        "version": 1, "name": "secret-args", "direction": "failover",
        "steps": [{"kind": "flip_dns"},
                  {"kind": "command", "site": "to", "argv": ["sleep", "5"], "timeout": "30s"},
                  {"kind": "command", "site": "to", "timeout": "10s",
                   "argv": ["sh", "-c", 'test "$1" = password=Zq9secret && touch "$2"', "sh", "password=Zq9secret",
                            str(mark)]}]}))
    run_id = kill_at_first("command", "failover", "web", "--yes", "--playbook", str(playbook), state_dir=state,
                           inventory=lab.inventory)
    assert "Zq9secret" not in (state / "runs" / f"{run_id}.jsonl").read_text()
    r = drctl("resume", run_id, "--yes", state_dir=state)
    assert r.rc == 0, r.err
    assert mark.exists()  # the command ran with the real argument, not the journal's mask
    assert "Zq9secret" not in (state / "runs" / f"{run_id}.jsonl").read_text() + r.out + r.err
