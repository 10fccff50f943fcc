"""Failover and failback end to end, against the lab's real sshd, BIND, HAProxy and origins."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import yaml

from drctl.lab.lab import LabInfo
from tests.e2e.helpers import drctl, journal, only_run_id, spawn, wait_for

DC1 = {"www.example.test": "192.0.2.10", "api.example.test": "192.0.2.11", "db.internal.test": "10.1.0.5"}
DC2 = {"www.example.test": "198.51.100.10", "api.example.test": "198.51.100.11", "db.internal.test": "10.2.0.5"}


def served(lab: LabInfo, values: dict[str, str]) -> bool:
    """Every authoritative server answers these values."""
    return all(lab.dig(name, "A", server=s) == [v] for name, v in values.items() for s in ("ns1", "ns2"))


def frontends(lab: LabInfo) -> tuple[str, str]:
    return lab.http_get_frontend("web").strip(), lab.http_get_frontend("api").strip()


def age_backups(lab: LabInfo, host: str, service: str, seconds: float) -> None:
    old = time.time() - seconds
    for f in lab.backup_dir(host, service).iterdir():
        os.utime(f, (old, old))


def test_failover_then_failback_moves_dns_and_traffic(lab: LabInfo, tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert served(lab, DC1) and frontends(lab) == ("web@dc1", "api@dc1")

    r = drctl("failover", "--site", "dc1", "--yes", "--json", inventory=lab.inventory, state_dir=state)
    assert r.rc == 0, r.err
    result = r.json()
    assert result["status"] == "succeeded"
    assert result["services"] == {"db": "succeeded", "web": "succeeded", "api": "succeeded"}
    # named serves the backup addresses on every authoritative server, HAProxy sends traffic to dc2
    assert wait_for(lambda: served(lab, DC2), 5, "secondary to follow")
    assert frontends(lab) == ("web@dc2", "api@dc2")
    assert (lab.host_root("app2") / "db-active").exists()
    # api depends on db: it starts changing things only after db has finished
    acts = result["actions"]
    db_done = max(a["finished"] for a in acts if a["service"] == "db")
    api_first_change = min(a["started"] for a in acts if a["service"] == "api" and a["kind"] == "flip_dns")
    assert api_first_change >= db_done
    # one UPDATE per zone and service: the journal says what was updated
    flips = [a for a in acts if a["kind"] == "flip_dns"]
    assert sorted(u for a in flips for u in a["data"]["updated"]) == [
        "api.example.test.", "db.internal.test.", "www.example.test."]

    # running it again changes nothing (idempotent) and still succeeds
    again = drctl("failover", "--site", "dc1", "--yes", "--json", inventory=lab.inventory, state_dir=state)
    assert again.rc == 0, again.err
    assert all(a["data"]["updated"] == [] for a in again.json()["actions"] if a["kind"] == "flip_dns")

    back = drctl("failback", "--site", "dc1", "--yes", inventory=lab.inventory, state_dir=state)
    assert back.rc == 0, back.err
    assert wait_for(lambda: served(lab, DC1), 5, "failback served")
    assert frontends(lab) == ("web@dc1", "api@dc1")
    assert not (lab.host_root("app2") / "db-active").exists()

    hist = drctl("history", "--json", state_dir=state)
    assert [h["operation"] for h in hist.json()] == ["failback", "failover", "failover"]
    assert all(h["status"] == "succeeded" for h in hist.json())


def test_failover_completes_with_the_primary_gone(lab: LabInfo, tmp_path: Path) -> None:
    # the primary site burned: its sshd is frozen (connections hang), its origins are dead
    lab.daemons["ssh-app1"].pause()
    for svc in ("web", "api"):
        lab.daemons[f"origin-{svc}-dc1"].stop()
    playbook = tmp_path / "pb.yaml"
    playbook.write_text(yaml.safe_dump({
        "version": 1, "name": "failover-fence", "direction": "failover",
        "steps": [{"kind": "check_freshness"}, {"kind": "health_check"},
                  {"kind": "command", "site": "from", "argv": ["touch", "{service}-fenced"], "timeout": "5s"},
                  {"kind": "flip_dns"}, {"kind": "wait_dns", "timeout": "10s"}, {"kind": "reroute_traffic"},
                  {"kind": "health_check", "site": "to"}]}))
    try:  # a hang would hit drctl()'s subprocess timeout and fail the test
        r = drctl("failover", "--site", "dc1", "--yes", "--json", "--playbook", str(playbook),
                  inventory=lab.inventory, state_dir=tmp_path / "state")
    finally:
        lab.daemons["ssh-app1"].resume()
    assert r.rc == 0, r.err
    result = r.json()
    assert result["status"] == "succeeded"
    fences = [a for a in result["actions"] if a["kind"] == "command"]
    assert len(fences) == 3 and all(a["status"] == "skipped" for a in fences)
    assert all("app1" in a["detail"] for a in fences)
    db_reroute = next(a for a in result["actions"] if a["service"] == "db" and a["kind"] == "reroute_traffic")
    assert db_reroute["status"] == "warn" and "NOT fenced" in db_reroute["detail"]
    assert served(lab, DC2) and frontends(lab) == ("web@dc2", "api@dc2")


def test_stale_backup_refuses_and_changes_nothing(lab: LabInfo, tmp_path: Path) -> None:
    age_backups(lab, "app2", "api", 3 * 3600)
    serials = (lab.soa_serial("example.test"), lab.soa_serial("internal.test"))
    r = drctl("failover", "--site", "dc1", "--yes", inventory=lab.inventory, state_dir=tmp_path / "state")
    assert r.rc == 4, r.err
    assert "api" in r.err and "older than its RPO" in r.err and "nothing" in r.err
    assert served(lab, DC1) and frontends(lab) == ("web@dc1", "api@dc1")
    assert (lab.soa_serial("example.test"), lab.soa_serial("internal.test")) == serials
    assert not (lab.host_root("app2") / "db-active").exists()

    forced = drctl("failover", "api", "db", "--yes", "--force", inventory=lab.inventory, state_dir=tmp_path / "state")
    assert forced.rc == 0, forced.err
    assert lab.dig("api.example.test") == ["198.51.100.11"]
    assert lab.dig("www.example.test") == ["192.0.2.10"]  # web was not selected


def test_unhealthy_backup_refuses(lab: LabInfo, tmp_path: Path) -> None:
    lab.daemons["origin-web-dc2"].stop()
    r = drctl("failover", "web", "--yes", inventory=lab.inventory, state_dir=tmp_path / "state")
    assert r.rc == 4 and "fails its health check" in r.err, r.err
    assert lab.dig("www.example.test") == ["192.0.2.10"]


def test_dry_run_changes_nothing(lab: LabInfo, tmp_path: Path) -> None:
    state = tmp_path / "state"
    serials = (lab.soa_serial("example.test"), lab.soa_serial("internal.test"))
    before = lab.haproxy_state()
    r = drctl("failover", "--site", "dc1", "--dry-run", inventory=lab.inventory, state_dir=state)
    assert r.rc == 0, r.err
    assert "www.example.test. A: 192.0.2.10 -> 198.51.100.10" in r.err  # observed, not assumed
    assert "planned" in r.out and "would change" in r.out
    assert (lab.soa_serial("example.test"), lab.soa_serial("internal.test")) == serials
    assert lab.haproxy_state() == before
    assert frontends(lab) == ("web@dc1", "api@dc1")
    assert only_run_id(state) is None  # nothing journaled
    # plan prints the same actions, as JSON and Markdown
    plan = drctl("plan", "failover", "--site", "dc1", "--json", inventory=lab.inventory, state_dir=state)
    assert plan.rc == 0
    changes = [c for s in plan.json()["services"] for a in s["actions"] for c in a["changes"]]
    assert {"what": "lb1 web/dc2", "before": "maint", "after": "ready"} in changes
    md = drctl("plan", "failover", "web", "--format", "md", inventory=lab.inventory, state_dir=state)
    assert md.rc == 0 and "## web: dc1 → dc2" in md.out


def test_unknown_ssh_host_key_is_refused(lab: LabInfo, tmp_path: Path) -> None:
    # the backup host presents a key we do not know: a possible impostor, never trusted
    kh = lab.known_hosts
    kh.write_text("".join(line + "\n" for line in kh.read_text().splitlines()
                          if f"]:{lab.ports['ssh-app2']} " not in line))
    r = drctl("failover", "web", "--yes", inventory=lab.inventory, state_dir=tmp_path / "state")
    assert r.rc == 4, r.err
    assert "app2" in r.err and "known_hosts" in r.err
    assert lab.dig("www.example.test") == ["192.0.2.10"]


def test_wrong_tsig_key_is_refused_before_anything_changes(lab: LabInfo, tmp_path: Path) -> None:
    text = lab.tsig_key.read_text()
    secret = text.split('secret "')[1].split('"')[0]
    lab.tsig_key.write_text(text.replace(secret, "c2VjcmV0LWJ1dC13cm9uZy0xMjM0NTY3ODkwMTIzNDU2Nzg5MA=="))
    state = tmp_path / "state"
    r = drctl("failover", "web", "--yes", inventory=lab.inventory, state_dir=state)
    # the gate's pre-flight proves the key before DNS or traffic move: nothing is half done
    assert r.rc == 4, r.err
    assert "TSIG" in r.err and "drctl-lab" in r.err and "nothing" in r.err
    assert secret not in r.err + r.out
    assert lab.dig("www.example.test") == ["192.0.2.10"] and frontends(lab)[0] == "web@dc1"
    run_id = only_run_id(state)
    assert run_id and secret not in (state / "runs" / f"{run_id}.jsonl").read_text()
    lab.tsig_key.write_text(text)
    ok = drctl("failover", "web", "--yes", inventory=lab.inventory, state_dir=state)
    assert ok.rc == 0, ok.err
    assert lab.dig("www.example.test") == ["198.51.100.10"] and frontends(lab)[0] == "web@dc2"


def test_record_changed_by_someone_else_is_not_overwritten(lab: LabInfo, tmp_path: Path) -> None:
    import subprocess

    def set_www(value: str) -> None:
        upd = f"server 127.0.0.1 {lab.ports['named-ns1']}\nupdate delete www.example.test. A\n" \
              f"update add www.example.test. 30 A {value}\nsend\n"
        subprocess.run(["nsupdate", "-k", str(lab.tsig_key)], input=upd, text=True, check=True, timeout=10)

    set_www("203.0.113.7")
    state = tmp_path / "state"
    r = drctl("failover", "web", "--yes", inventory=lab.inventory, state_dir=state)
    assert r.rc == 5, r.err
    assert "203.0.113.7" in r.err and "www.example.test" in r.err
    assert lab.dig("www.example.test") == ["203.0.113.7"]
    run_id = only_run_id(state)
    assert run_id and f"drctl resume {run_id}" in r.err
    # the operator sorts it out with whoever changed it, and resumes: the run finishes where it stopped
    set_www("192.0.2.10")
    resumed = drctl("resume", run_id, "--yes", "--json", state_dir=state)
    assert resumed.rc == 0, resumed.err
    assert lab.dig("www.example.test") == ["198.51.100.10"] and frontends(lab)[0] == "web@dc2"


def test_interrupted_run_resumes_without_repeating_side_effects(lab: LabInfo, tmp_path: Path) -> None:
    state = tmp_path / "state"
    playbook = tmp_path / "slow.yaml"
    playbook.write_text(yaml.safe_dump({
        "version": 1, "name": "slow-failover", "direction": "failover",
        "steps": [{"kind": "check_freshness"}, {"kind": "flip_dns"},
                  {"kind": "command", "site": "to", "argv": ["sleep", "3"], "timeout": "30s"},
                  {"kind": "reroute_traffic"}]}))
    proc = spawn("failover", "web", "--yes", "--playbook", str(playbook), state_dir=state, inventory=lab.inventory)
    try:
        run_id = wait_for(lambda: only_run_id(state), 30, "the run to start")
        wait_for(lambda: any(r.get("event") == "action_started" and r.get("kind") == "command"
                             for r in journal(state, run_id)), 30, "the command step to start")
        # a second failover of the same service while this one runs is refused
        second = drctl("failover", "web", "--yes", inventory=lab.inventory, state_dir=state)
        assert second.rc == 4 and f"locked by run {run_id}" in second.err, second.err
        live = drctl("history", "--json", state_dir=state).json()
        assert live[0]["run_id"] == run_id and live[0]["status"] == "running"
        os.kill(proc.pid, signal.SIGKILL)  # the operator's laptop dies mid-run
    finally:
        proc.wait(timeout=30)
    assert lab.dig("www.example.test") == ["198.51.100.10"]
    assert frontends(lab)[0] == "web@dc1"  # traffic not moved yet
    serial = lab.soa_serial("example.test")
    hist = drctl("history", "--json", state_dir=state).json()
    assert hist[0]["run_id"] == run_id and hist[0]["status"] == "interrupted"

    r = drctl("resume", run_id, "--yes", "--json", state_dir=state)
    assert r.rc == 0, r.err
    res = r.json()
    flip = next(a for a in res["actions"] if a["kind"] == "flip_dns")
    assert flip["detail"].startswith("done in an earlier attempt")
    assert frontends(lab)[0] == "web@dc2"
    assert lab.soa_serial("example.test") == serial  # no second DNS UPDATE
    events = [r["event"] for r in journal(state, run_id)]
    assert events[0] == "run_started" and "run_resumed" in events and events[-1] == "run_finished"
    assert drctl("history", "--json", state_dir=state).json()[0]["status"] == "succeeded"


def test_confirmation_is_required_without_yes(lab: LabInfo, tmp_path: Path) -> None:
    r = drctl("failover", "web", inventory=lab.inventory, state_dir=tmp_path / "state")
    assert r.rc == 2 and "--yes" in r.err
    assert lab.dig("www.example.test") == ["192.0.2.10"]


def _with_extra_services(lab: LabInfo, n: int) -> Path:
    """The lab's inventory plus ``n`` services with one A record each in example.test."""
    import subprocess

    inv = yaml.safe_load(lab.inventory.read_text())
    web = inv["services"]["web"]
    lines = [f"server 127.0.0.1 {lab.ports['named-ns1']}", "zone example.test"]
    for i in range(n):
        inv["services"][f"extra{i}"] = {
            "primary": "dc1", "backup": "dc2",
            "sites": {s: {"backup": web["sites"][s]["backup"]} for s in ("dc1", "dc2")},
            "dns": [{"zone": "example.test", "name": f"extra{i}", "ttl": 30,
                     "values": {"dc1": f"192.0.2.{50 + i}", "dc2": f"198.51.100.{50 + i}"}}]}
        lines.append(f"update add extra{i}.example.test. 30 A 192.0.2.{50 + i}")
    subprocess.run(["nsupdate", "-k", str(lab.tsig_key)], input="\n".join([*lines, "send"]) + "\n", text=True,
                   check=True, timeout=10)
    path = lab.dir / "extra.yaml"
    path.write_text(yaml.safe_dump(inv, sort_keys=False))
    return path


def test_services_flipping_together_share_one_update_per_zone(lab: LabInfo, tmp_path: Path) -> None:
    inventory = _with_extra_services(lab, 5)
    serial = lab.soa_serial("example.test")
    r = drctl("failover", *[f"extra{i}" for i in range(5)], "--yes", "--json", inventory=inventory,
              state_dir=tmp_path / "state")
    assert r.rc == 0, r.err
    assert all(lab.dig(f"extra{i}.example.test") == [f"198.51.100.{50 + i}"] for i in range(5))
    assert lab.soa_serial("example.test") == serial + 1  # five services, one UPDATE
    flips = [a for a in r.json()["actions"] if a["kind"] == "flip_dns"]
    assert all(a["data"]["batch"] == 5 for a in flips)


def test_a_conflicting_record_fails_only_its_service(lab: LabInfo, tmp_path: Path) -> None:
    import subprocess

    inventory = _with_extra_services(lab, 3)
    subprocess.run(["nsupdate", "-k", str(lab.tsig_key)], text=True, check=True, timeout=10,
                   input=f"server 127.0.0.1 {lab.ports['named-ns1']}\nupdate delete extra1.example.test. A\n"
                         "update add extra1.example.test. 30 A 203.0.113.9\nsend\n")
    r = drctl("failover", "extra0", "extra1", "extra2", "--yes", "--json", inventory=inventory,
              state_dir=tmp_path / "state")
    assert r.rc == 5, r.err
    assert r.json()["services"] == {"extra0": "succeeded", "extra1": "failed", "extra2": "succeeded"}
    assert lab.dig("extra0.example.test") == ["198.51.100.50"]
    assert lab.dig("extra1.example.test") == ["203.0.113.9"]  # someone else's change stands
    assert lab.dig("extra2.example.test") == ["198.51.100.52"]


def test_a_frozen_secondary_dns_server_does_not_hold_the_failover(lab: LabInfo, tmp_path: Path) -> None:
    lab.daemons["named-ns2"].pause()  # answers nothing: queries time out
    try:
        r = drctl("failover", "web", "--yes", "--json", inventory=lab.inventory, state_dir=tmp_path / "state")
    finally:
        lab.daemons["named-ns2"].resume()
    assert r.rc == 0, r.err
    wait = next(a for a in r.json()["actions"] if a["kind"] == "wait_dns")
    assert wait["status"] == "warn" and "ns2" in wait["detail"] and "do not answer" in wait["detail"]
    assert lab.dig("www.example.test", server="ns1") == ["198.51.100.10"]
    assert wait["data"]["gave_up"] == "grace"  # not the step's 60 s timeout


def test_failover_with_the_primary_site_black_holed(lab: LabInfo, tmp_path: Path) -> None:
    """Packets to the primary site vanish (nftables drop): connects hit their timeouts, never hang."""
    import subprocess

    table = f"drctltest{os.getpid()}"
    ports = [lab.ports["ssh-app1"], lab.ports["origin-web-dc1"], lab.ports["origin-api-dc1"]]
    nft = ["nft", "-f", "-"]
    rules = (f"table inet {table} {{\n chain out {{ type filter hook output priority 0; policy accept;\n"
             f"  ip daddr 127.0.0.1 tcp dport {{ {', '.join(map(str, ports))} }} drop\n }}\n}}\n")
    subprocess.run(nft, input=rules, text=True, check=True, timeout=10)
    try:
        playbook = tmp_path / "pb.yaml"
        playbook.write_text(yaml.safe_dump({
            "version": 1, "name": "failover-fence", "direction": "failover",
            "steps": [{"kind": "check_freshness"}, {"kind": "health_check"},
                      {"kind": "command", "site": "from", "argv": ["touch", "{service}-fenced"]},
                      {"kind": "flip_dns"}, {"kind": "wait_dns"}, {"kind": "reroute_traffic"}]}))
        r = drctl("failover", "--site", "dc1", "--yes", "--json", "--playbook", str(playbook),
                  inventory=lab.inventory, state_dir=tmp_path / "state")
    finally:
        subprocess.run(["nft", "delete", "table", "inet", table], check=True, timeout=10)
    assert r.rc == 0, r.err
    fences = [a for a in r.json()["actions"] if a["kind"] == "command"]
    assert [a["status"] for a in fences] == ["skipped"] * 3
    assert served(lab, DC2) and frontends(lab) == ("web@dc2", "api@dc2")


def test_operator_types_the_service_name_to_confirm(lab: LabInfo, tmp_path: Path) -> None:
    """At a terminal, a run waits for the operator to type what it will move."""
    import pty
    import subprocess
    import sys

    from tests.e2e.helpers import drctl_env

    def at_terminal(answer: str) -> tuple[int, str]:
        leader, follower = pty.openpty()
        env = drctl_env(tmp_path / "state", DRCTL_INVENTORY=str(lab.inventory))
        proc = subprocess.Popen([sys.executable, "-m", "drctl", "failover", "web"], stdin=follower,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        os.close(follower)
        os.write(leader, answer.encode() + b"\n")
        out, err = proc.communicate(timeout=120)
        os.close(leader)
        return proc.returncode, err

    rc, err = at_terminal("wbe")
    assert rc == 130 and "Type web to confirm" in err and "nothing was changed" in err
    assert lab.dig("www.example.test") == ["192.0.2.10"]
    rc, err = at_terminal("web")
    assert rc == 0, err
    assert lab.dig("www.example.test") == ["198.51.100.10"]


def test_a_server_name_haproxy_does_not_know_is_refused_before_anything_changes(
        lab: LabInfo, tmp_path: Path) -> None:
    inv = yaml.safe_load(lab.inventory.read_text())
    inv["services"]["web"]["traffic"]["servers"]["dc2"] = "dc2-typo"
    inventory = lab.dir / "typo.yaml"
    inventory.write_text(yaml.safe_dump(inv, sort_keys=False))
    r = drctl("failover", "web", "--yes", inventory=inventory, state_dir=tmp_path / "state")
    assert r.rc == 4 and "dc2-typo" in r.err, r.err
    assert lab.dig("www.example.test") == ["192.0.2.10"]  # DNS did not move without the traffic


def test_traffic_stays_when_the_balancer_cannot_reach_the_backup(lab: LabInfo, tmp_path: Path) -> None:
    from drctl.lab.servers import free_port

    # HAProxy itself cannot reach dc2 (its health checks fail), although dc2 answers drctl directly
    lab.haproxy_command(f"set server web/dc2 addr 127.0.0.1 port {free_port()}")
    r = drctl("failover", "web", "--yes", "--json", inventory=lab.inventory, state_dir=tmp_path / "state")
    assert r.rc == 5, r.err
    reroute = next(a for a in r.json()["actions"] if a["kind"] == "reroute_traffic")
    assert reroute["status"] == "failed" and "does not see web/dc2 UP" in reroute["detail"]
    assert frontends(lab)[0] == "web@dc1"  # the old site still serves: no outage


def test_ctrl_c_stops_cleanly_and_the_run_resumes(lab: LabInfo, tmp_path: Path) -> None:
    state = tmp_path / "state"
    playbook = tmp_path / "slow.yaml"
    playbook.write_text(yaml.safe_dump({
        "version": 1, "name": "slow-failover", "direction": "failover",
        "steps": [{"kind": "check_freshness"},
                  {"kind": "command", "site": "to", "argv": ["sleep", "2"], "timeout": "30s"},
                  {"kind": "flip_dns"}, {"kind": "reroute_traffic"}]}))
    proc = spawn("failover", "--site", "dc1", "--yes", "--json", "--playbook", str(playbook),
                 state_dir=state, inventory=lab.inventory)
    run_id = wait_for(lambda: only_run_id(state), 30, "the run to start")
    wait_for(lambda: any(r.get("kind") == "command" for r in journal(state, run_id)), 30, "the first sleep")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    result = json.loads(out)
    assert result["status"] == "aborted" and "interrupted" in result["message"]
    # db and web were sleeping: they finished that step and stopped; api (after db) never started
    assert result["services"]["api"] == "aborted"
    assert not any(a["service"] == "api" and a["kind"] == "command" for a in result["actions"])
    assert lab.dig("www.example.test") == ["192.0.2.10"]
    events = [r["event"] for r in journal(state, run_id)]
    assert events[-1] == "run_finished"
    resumed = drctl("resume", run_id, "--yes", state_dir=state)
    assert resumed.rc == 0, resumed.err
    assert served(lab, DC2)


def test_aaaa_cname_and_txt_records_compare_in_canonical_form(lab: LabInfo, tmp_path: Path) -> None:
    """Values written the way people write them (uncompressed IPv6, a CNAME target without its
    dot, bare TXT) still count as "already so" once the server serves them."""
    import subprocess

    inv = yaml.safe_load(lab.inventory.read_text())
    web = inv["services"]["web"]
    inv["services"]["multi"] = {
        "primary": "dc1", "backup": "dc2",
        "sites": {s: {"backup": web["sites"][s]["backup"]} for s in ("dc1", "dc2")},
        "dns": [{"zone": "example.test", "name": "v6", "type": "AAAA",
                 "values": {"dc1": "2001:DB8:0:0::10", "dc2": "2001:db8:1::10"}},
                {"zone": "example.test", "name": "alias", "type": "CNAME",
                 "values": {"dc1": "web-dc1.example.test", "dc2": "web-dc2.example.test"}},
                {"zone": "example.test", "name": "info", "type": "TXT",
                 "values": {"dc1": "site=dc1 primary", "dc2": "site=dc2 backup"}}]}
    inventory = lab.dir / "multi.yaml"
    inventory.write_text(yaml.safe_dump(inv, sort_keys=False))
    subprocess.run(["nsupdate", "-k", str(lab.tsig_key)], text=True, check=True, timeout=10, input=(
        f"server 127.0.0.1 {lab.ports['named-ns1']}\nzone example.test\n"
        "update add v6.example.test. 30 AAAA 2001:db8::10\n"
        "update add alias.example.test. 30 CNAME web-dc1.example.test.\n"
        'update add info.example.test. 30 TXT "site=dc1 primary"\nsend\n'))
    state = tmp_path / "state"
    r = drctl("failover", "multi", "--yes", inventory=inventory, state_dir=state)
    assert r.rc == 0, r.err
    assert lab.dig("v6.example.test", "AAAA") == ["2001:db8:1::10"]
    assert lab.dig("alias.example.test", "CNAME") == ["web-dc2.example.test."]
    plan = drctl("plan", "failover", "multi", "--json", inventory=inventory, state_dir=state).json()
    flip = next(a for a in plan["services"][0]["actions"] if a["kind"] == "flip_dns")
    assert flip["noop"] is True, flip["changes"]
    status = drctl("status", "multi", "--json", inventory=inventory, state_dir=state)
    assert status.rc == 0, status.err
    [row] = status.json()["services"]
    assert row["where"] == "dc2 (backup)", row


def test_integrity_verification_that_does_not_finish_in_time_is_bounded_by_its_policy(
        lab: LabInfo, tmp_path: Path) -> None:
    def playbook(policy: str) -> Path:
        path = tmp_path / f"verify-{policy}.yaml"
        path.write_text(yaml.safe_dump({
            "version": 1, "name": f"verify-{policy}", "direction": "failover",
            "steps": [{"kind": "verify_integrity", "policy": policy, "timeout": "1ms"}, {"kind": "flip_dns"}]}))
        return path

    state = tmp_path / "state"
    blocked = drctl("failover", "web", "--yes", "--playbook", str(playbook("block")), inventory=lab.inventory,
                    state_dir=state)
    assert blocked.rc == 4 and "did not finish within" in blocked.err, blocked.err
    assert lab.dig("www.example.test") == ["192.0.2.10"]
    warned = drctl("failover", "web", "--yes", "--json", "--playbook", str(playbook("warn")),
                   inventory=lab.inventory, state_dir=state)
    assert warned.rc == 0, warned.err
    step = next(a for a in warned.json()["actions"] if a["kind"] == "verify_integrity")
    assert step["status"] == "warn" and "did not finish within" in step["detail"]
    assert lab.dig("www.example.test") == ["198.51.100.10"]
