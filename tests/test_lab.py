"""The local lab and the real servers it is made of: up, serving, down, nothing left running."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from drctl.errors import LabError
from drctl.lab.lab import LabInfo, lab_down, lab_status, lab_up
from drctl.lab.servers import (
    Backend,
    HAProxyServer,
    HttpOrigin,
    NamedServer,
    SshServer,
    free_port,
    pid_alive,
    pid_gone,
    stop_pid,
)
from drctl.model.load import load_inventory

DAEMONS = {"ssh-app1", "ssh-app2", "named-ns1", "named-ns2", "origin-web-dc1", "origin-web-dc2",
           "origin-api-dc1", "origin-api-dc2", "haproxy-lb1"}


def ssh_run(lab: LabInfo, host: str, command: str, *, known_hosts: Path | None = None,
            port: int | None = None) -> subprocess.CompletedProcess[str]:
    """The real OpenSSH client with strict host key checking against the lab's known_hosts."""
    inv = load_inventory(lab.inventory)
    _site, h = inv.host(host)
    argv = ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={known_hosts or lab.known_hosts}", "-o", "ConnectTimeout=5",
            "-i", str(lab.client_key), "-p", str(port or h.port), f"{h.user}@127.0.0.1", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=20)


def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``check`` until true or ``timeout``: a bounded wait, not a speed assertion."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# --- the lab -------------------------------------------------------------------------------------


def test_lab_serves_the_dc1_values(lab: LabInfo) -> None:
    assert set(lab.daemons) == DAEMONS
    assert all(d.alive() for d in lab.daemons.values())
    assert {s.name for s in lab_status(lab.dir) if s.alive} == DAEMONS

    # DNS: both authoritative servers answer the dc1 values
    for server in ("ns1", "ns2"):
        assert lab.dig("www.example.test", server=server) == ["192.0.2.10"]
        assert lab.dig("api.example.test", server=server) == ["192.0.2.11"]
        assert lab.dig("db.internal.test", server=server) == ["10.1.0.5"]
        assert lab.soa_serial("example.test", server) == lab.soa_serial("example.test", "ns1")

    # traffic: through HAProxy to the dc1 origins; dc2 is in configured maintenance
    assert lab.http_get_frontend("web") == "web@dc1"
    assert lab.http_get_frontend("api") == "api@dc1"
    assert lab.http_get_origin("web", "dc2", "/health") == "web@dc2"
    state = lab.haproxy_state()
    for backend in ("web", "api"):
        assert state[(backend, "dc1")]["admin_state"] == 0
        assert state[(backend, "dc2")]["admin_state"] & 0x04  # configured maintenance (`disabled`)


def test_lab_inventory_describes_the_lab(lab: LabInfo) -> None:
    inv = load_inventory(lab.inventory)
    assert set(inv.sites) == {"dc1", "dc2"}
    assert inv.host("app1")[0] == "dc1" and inv.host("app2")[0] == "dc2"
    assert inv.host("app1")[1].port == lab.ports["ssh-app1"]
    assert inv.resolve_path(inv.host("app2")[1].known_hosts) == lab.known_hosts
    assert inv.resolve_path(inv.zones["example.test"].tsig.file) == lab.tsig_key
    assert {n: s.port for n, s in inv.dns_servers.items()} == {
        "ns1": lab.ports["named-ns1"], "ns2": lab.ports["named-ns2"]}
    assert inv.load_balancers["lb1"].admin == f"tcp://127.0.0.1:{lab.ports['haproxy-lb1']}"
    assert list(inv.services) == ["db", "api", "web"]
    assert inv.services["api"].depends_on == ["db"]
    for name, svc in inv.services.items():
        assert (svc.primary, svc.backup) == ("dc1", "dc2")
        assert svc.rto == 300 and svc.rpo == 3600
        for site, host in (("dc1", "app1"), ("dc2", "app2")):
            backup = svc.sites[site].backup
            assert backup is not None and backup.host == host and backup.max_age == 3600
            assert Path(backup.path or "") == lab.backup_dir(host, name)
    assert inv.services["web"].dns[0].values_for("dc2") == ["198.51.100.10"]
    health = inv.services["web"].sites["dc2"].health
    assert health is not None and health.http is not None
    with urllib.request.urlopen(health.http, timeout=3) as resp:
        assert resp.read().decode() == health.expect_body == "web@dc2"


def test_lab_hosts_over_ssh_with_verified_host_keys(lab: LabInfo) -> None:
    for host in ("app1", "app2"):
        newest = sorted(lab.backup_dir(host, "db").glob("*.tar.gz"))[-1]
        done = ssh_run(lab, host, f"ls -t {shlex.quote(str(lab.backup_dir(host, 'db')))} | head -n 1")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == newest.name
        assert re.fullmatch(r"db-\d{8}T\d{6}Z\.tar\.gz", newest.name)
        assert time.time() - newest.stat().st_mtime < 3600
    # app2's port with only app1's host key known: the real client refuses
    only_app1 = lab.dir / "only-app1"
    line = next(ln for ln in lab.known_hosts.read_text().splitlines() if f"]:{lab.ports['ssh-app1']} " in ln)
    only_app1.write_text(line.replace(f"]:{lab.ports['ssh-app1']} ", f"]:{lab.ports['ssh-app2']} ") + "\n")
    done = ssh_run(lab, "app2", "true", known_hosts=only_app1)
    assert done.returncode != 0 and "host key" in done.stderr.lower()


def test_lab_db_activation_command_runs_on_the_host(lab: LabInfo) -> None:
    inv = load_inventory(lab.inventory)
    traffic = inv.services["db"].traffic
    assert traffic is not None and traffic.kind == "command"
    spec = traffic.activate["dc2"]
    done = ssh_run(lab, spec.host, shlex.join(spec.argv))
    assert done.returncode == 0, done.stderr
    assert (lab.host_root("app2") / "db-active").exists()


def test_lab_secondary_follows_a_signed_update(lab: LabInfo) -> None:
    script = (f"server 127.0.0.1 {lab.ports['named-ns1']}\nzone example.test\n"
              "update delete www.example.test. A\nupdate add www.example.test. 30 A 198.51.100.10\nsend\n")
    unsigned = subprocess.run(["nsupdate", "-t", "3"], input=script, capture_output=True, text=True,
                              timeout=15)
    assert unsigned.returncode != 0 and "REFUSED" in unsigned.stdout + unsigned.stderr
    signed = subprocess.run(["nsupdate", "-t", "3", "-k", str(lab.tsig_key)], input=script,
                            capture_output=True, text=True, timeout=15)
    assert signed.returncode == 0, signed.stderr
    assert lab.dig("www.example.test", server="ns1") == ["198.51.100.10"]
    assert wait_for(lambda: lab.dig("www.example.test", server="ns2") == ["198.51.100.10"])
    assert lab.soa_serial("example.test", "ns2") == lab.soa_serial("example.test", "ns1") > 1


def test_lab_daemons_can_be_paused_and_stopped(lab: LabInfo) -> None:
    ns2 = lab.daemons["named-ns2"]
    ns2.pause()
    with pytest.raises(LabError):
        lab.dig("www.example.test", server="ns2", timeout=1)
    ns2.resume()
    assert lab.dig("www.example.test", server="ns2") == ["192.0.2.10"]
    origin = lab.daemons["origin-web-dc1"]
    pid = origin.pid
    assert pid is not None
    origin.stop()
    assert pid_gone(pid) and not origin.alive()
    assert {s.name for s in lab_status(lab.dir) if not s.alive} == {"origin-web-dc1"}
    # HAProxy's health check marks dc1 DOWN; no server is left for the frontend
    assert wait_for(lambda: lab.haproxy_state()[("web", "dc1")]["op_state"] == 0)
    with pytest.raises(urllib.error.HTTPError) as err:
        lab.http_get_frontend("web")
    assert err.value.code == 503


def test_lab_up_down_and_again(tmp_path: Path) -> None:
    d = tmp_path / "lab"
    info = lab_up(d)
    pids = dict(info.pids)
    assert all(pid_alive(pid) for pid in pids.values())
    state = json.loads((d / "lab.json").read_text())
    assert {p["name"]: p["pid"] for p in state["processes"]} == pids
    with pytest.raises(LabError, match="already running"):
        lab_up(d)
    assert all(pid_alive(pid) for pid in pids.values())  # the failed second start touched nothing

    assert sorted(lab_down(d)) == sorted(DAEMONS)
    assert all(pid_gone(pid) for pid in pids.values())
    assert not any(s.alive for s in lab_status(d))
    assert lab_down(d) == []  # idempotent

    # a stale lab.json (nothing running) does not stop a new lab; as with the CLI, one process
    # starts the lab and exits, another stops it by the PIDs in lab.json
    code = "import sys; from drctl.lab.lab import lab_up; print(lab_up(sys.argv[1]).startup_seconds)"
    done = subprocess.run([sys.executable, "-c", code, str(d)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    info = LabInfo.load(d)
    assert set(info.pids) == DAEMONS and all(pid_alive(pid) for pid in info.pids.values())
    assert info.dig("www.example.test", server="ns2") == ["192.0.2.10"]
    assert sorted(lab_down(d)) == sorted(DAEMONS)
    assert all(pid_gone(pid) for pid in info.pids.values())
    assert lab_status(tmp_path / "nothing") == []


# --- single servers ------------------------------------------------------------------------------


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[0]))


def test_origin_answers_root_and_health_only(http_origin: HttpOrigin) -> None:
    base = f"http://127.0.0.1:{http_origin.port}"
    for path in ("/", "/health", "/health?probe=1"):
        with urllib.request.urlopen(base + path, timeout=3) as resp:
            assert resp.status == 200 and resp.read() == b"hello"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(base + "/other", timeout=3)
    assert err.value.code == 404


def test_sshd_for_the_current_user(ssh_server: SshServer) -> None:
    assert ssh_server.known_hosts.read_text().strip() == ssh_server.host_key_line()
    assert ssh_server.host_key_line().startswith(f"[127.0.0.1]:{ssh_server.port} ssh-ed25519 AAAA")
    assert ssh_server.client_key.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    argv = ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={ssh_server.known_hosts}", "-i", str(ssh_server.client_key),
            "-p", str(ssh_server.port), f"{ssh_server.user}@127.0.0.1", "echo", "ok"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr


def test_dns_pair_serves_the_zone(dns_pair: tuple[NamedServer, NamedServer]) -> None:
    for server in dns_pair:
        done = subprocess.run(["dig", "+short", "+norecurse", "-p", str(server.port), "@127.0.0.1",
                               "www.example.test", "A"], capture_output=True, text=True, timeout=10)
        assert done.stdout.split() == ["192.0.2.10"]


def test_haproxy_admin_socket_with_a_long_directory(
        tmp_path: Path, http_origin: HttpOrigin,
        start_daemon: Callable[[HAProxyServer], HAProxyServer]) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    hap = start_daemon(HAProxyServer(deep, [Backend("web", "tcp", free_port(),
                                                    [("a", f"127.0.0.1:{http_origin.port}", False)])]))
    assert len(os.fsencode(hap.admin_socket)) < 108
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(3)
        s.connect(str(hap.admin_socket))
        s.sendall(b"show servers state web\n")
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert b" web " in reply and b" a " in reply
    frontend = hap.backends[0].frontend_port
    with urllib.request.urlopen(f"http://127.0.0.1:{frontend}/", timeout=3) as resp:
        assert resp.read() == b"hello"
    hap.stop()
    assert not hap.admin_socket.exists()


def test_a_paused_daemon_still_stops(tmp_path: Path) -> None:
    origin = HttpOrigin(tmp_path / "o", "x")
    origin.start()
    pid = origin.pid
    assert pid is not None
    origin.pause()
    assert origin.alive()
    origin.stop(timeout=5)
    assert pid_gone(pid)
    assert stop_pid(pid) is False  # nothing left to stop


def test_a_daemon_that_cannot_start_says_why(tmp_path: Path) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        hap = HAProxyServer(tmp_path / "hap", [Backend("web", "http", port, [("a", "127.0.0.1:1", False)])])
        with pytest.raises(RuntimeError, match="haproxy") as err:
            hap.start()
        assert "log" in str(err.value)
        assert not hap.alive()
    finally:
        holder.close()
