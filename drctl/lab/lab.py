"""The local lab: two sites of real daemons on 127.0.0.1 and the inventory that describes them.

``lab_up(dir)`` starts, in ``dir``:

- ``ssh-app1`` (site dc1) and ``ssh-app2`` (site dc2): two sshd processes with their own host keys,
  one shared client key and one shared ``known_hosts``; each host's data root is
  ``dir/hosts/<host>/`` with fresh backups in ``backups/<service>/<service>-<timestamp>.tar.gz``;
- ``named-ns1`` primary for ``example.test`` and ``internal.test`` (UPDATE with the TSIG key in
  ``dir/keys/tsig.key``) and ``named-ns2``, its secondary (NOTIFY + IXFR);
- ``origin-<service>-<site>`` HTTP origins answering ``<service>@<site>``, and ``haproxy-lb1`` with
  backends ``web`` and ``api`` (server ``dc1`` enabled, ``dc2`` disabled);

- with ``etcd=True`` (``drctl lab up --etcd``), a 3-member etcd cluster: ``etcd-dc1``, ``etcd-dc2``
  and ``etcd-witness`` (one member per site and a witness), named in the inventory's ``state:``;

then writes ``dir/inventory.yaml`` (services ``db``, ``api`` -> db, ``web``) and ``dir/lab.json``
(what runs: names, pids, ports). ``lab_down`` stops what ``lab.json`` lists and waits until every
PID is gone; ``lab_status`` reports each process. The ``LabInfo`` helpers (``dig``,
``http_get_frontend``, ``haproxy_state``...) read the lab with plain tools, not drctl's drivers,
so tests can check what drctl did.
"""

from __future__ import annotations

import fcntl
import gzip
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from drctl.errors import LabError
from drctl.lab.servers import (
    STOP_GRACE_S,
    Backend,
    Daemon,
    EtcdCluster,
    HAProxyServer,
    HttpOrigin,
    NamedServer,
    SshServer,
    free_port,
    missing_binaries,
    pid_alive,
    proc_start_time,
    ssh_keygen,
    stop_pids,
    write_tsig_key,
)

STATE_FILE = "lab.json"
INVENTORY_FILE = "inventory.yaml"
TSIG_NAME = "drctl-lab"
SITES = ("dc1", "dc2")
HOSTS = {"dc1": "app1", "dc2": "app2"}
HTTP_SERVICES = ("web", "api")
SERVICES = ("db", "api", "web")
RECORDS: dict[str, tuple[str, str, dict[str, str]]] = {
    # service -> (zone, name, site -> A value)
    "web": ("example.test", "www", {"dc1": "192.0.2.10", "dc2": "198.51.100.10"}),
    "api": ("example.test", "api", {"dc1": "192.0.2.11", "dc2": "198.51.100.11"}),
    "db": ("internal.test", "db", {"dc1": "10.1.0.5", "dc2": "10.2.0.5"}),
}
ZONES = ("example.test", "internal.test")
TTL = 30
ETCD_MEMBERS = ("etcd-dc1", "etcd-dc2", "etcd-witness")  # one per site, and a witness
ETCD_PREFIX = "/drctl-lab"
BACKUP_AGES = (2400, 1200, 60)  # seconds before lab_up; the newest is fresh, all within the 1h RPO


@dataclass
class ProcStatus:
    name: str
    pid: int
    port: int
    alive: bool


@dataclass
class LabInfo:
    """What a lab runs and where. ``daemons`` is filled only in the process that started it."""

    dir: Path
    inventory: Path
    ports: dict[str, int]  # daemon name -> its main port (admin port for HAProxy)
    frontends: dict[str, int]  # HAProxy backend -> frontend port
    pids: dict[str, int]
    startup_seconds: float
    admin_socket: Path  # HAProxy lb1's runtime API (also on ports["haproxy-lb1"])
    daemons: dict[str, Daemon] = field(default_factory=dict, repr=False)

    @property
    def tsig_key(self) -> Path:
        return self.dir / "keys" / "tsig.key"

    @property
    def client_key(self) -> Path:
        return self.dir / "keys" / "client_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "keys" / "known_hosts"

    @property
    def etcd_members(self) -> list[str]:
        """The lab's etcd members (``drctl lab up --etcd``), by name: etcd-dc1, etcd-dc2, etcd-witness."""
        return [n for n in ETCD_MEMBERS if n in self.ports]

    def state_spec(self, members: list[str] | None = None, **options: object) -> str:
        """An ``etcd://`` state spec for the lab's etcd members (default: all), with options (ttl=...)."""
        names = members if members is not None else self.etcd_members
        query = "&".join(f"{k}={v}" for k, v in options.items())
        return (f"etcd://{','.join(f'127.0.0.1:{self.ports[n]}' for n in names)}{ETCD_PREFIX}"
                + (f"?{query}" if query else ""))

    def host_root(self, host: str) -> Path:
        """The data root of a lab host (``app1``, ``app2``)."""
        return self.dir / "hosts" / host

    def backup_dir(self, host: str, service: str) -> Path:
        return self.host_root(host) / "backups" / service

    @classmethod
    def load(cls, dir: Path) -> LabInfo:
        """The lab described by ``dir/lab.json`` (without daemon objects)."""
        state = _read_state(Path(dir))
        if state is None:
            raise LabError(f"no lab in {dir} ({STATE_FILE} not found)")
        return cls(dir=Path(state["dir"]), inventory=Path(state["inventory"]),
                   ports={p["name"]: p["port"] for p in state["processes"]},
                   frontends=dict(state["frontends"]),
                   pids={p["name"]: p["pid"] for p in state["processes"]},
                   startup_seconds=float(state["startup_seconds"]),
                   admin_socket=Path(state["admin_socket"]))

    # --- read helpers for assertions: plain tools, never drctl's drivers -------------------------

    def dig(self, name: str, rdtype: str = "A", server: str = "ns1", timeout: float = 2.0) -> list[str]:
        """The answer of the real ``dig`` binary (``+short``, sorted) from ``ns1`` or ``ns2``."""
        port = self.ports[f"named-{server}"]
        dig = shutil.which("dig") or "/usr/bin/dig"
        argv = [dig, "+short", "+norecurse", f"+time={max(1, int(timeout))}", "+tries=1",
                "-p", str(port), "@127.0.0.1", name, rdtype]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 5, check=False)
        if done.returncode != 0 or done.stdout.startswith(";;"):
            raise LabError(f"dig {name} {rdtype} @{server} failed ({done.returncode}): "
                           f"{(done.stdout + done.stderr).strip()}")
        return sorted(line for line in done.stdout.splitlines() if line.strip())

    def soa_serial(self, zone: str, server: str = "ns1") -> int:
        answer = self.dig(zone, "SOA", server)
        if not answer:
            raise LabError(f"no SOA for {zone} at {server}")
        return int(answer[0].split()[2])

    def http_get(self, port: int, path: str = "/", timeout: float = 3.0) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:  # noqa: S310
            return str(resp.read().decode())

    def http_get_frontend(self, backend: str, path: str = "/", timeout: float = 3.0) -> str:
        """The body served through HAProxy's frontend for ``backend`` (``web``, ``api``)."""
        return self.http_get(self.frontends[backend], path, timeout)

    def http_get_origin(self, service: str, site: str, path: str = "/", timeout: float = 3.0) -> str:
        return self.http_get(self.ports[f"origin-{service}-{site}"], path, timeout)

    def haproxy_command(self, command: str, timeout: float = 3.0) -> str:
        """One runtime-API command on the admin port; the raw reply."""
        with socket.create_connection(("127.0.0.1", self.ports["haproxy-lb1"]), timeout=timeout) as s:
            s.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def haproxy_state(self) -> dict[tuple[str, str], dict[str, int]]:
        """(backend, server) -> {"op_state": 2 when UP, "admin_state": bitmask, "weight": ...}."""
        out: dict[tuple[str, str], dict[str, int]] = {}
        lines = self.haproxy_command("show servers state").splitlines()
        header = next((ln for ln in lines if ln.startswith("#")), "")
        cols = header.lstrip("# ").split()
        for line in lines:
            if not line or line.startswith("#") or line.strip() == "1":
                continue
            row = dict(zip(cols, line.split(), strict=False))
            out[(row["be_name"], row["srv_name"])] = {
                "op_state": int(row["srv_op_state"]),
                "admin_state": int(row["srv_admin_state"]),
                "weight": int(row["srv_uweight"]),
            }
        return out


# --- lab.json --------------------------------------------------------------------------------------


def _read_state(dir: Path) -> dict[str, Any] | None:
    path = dir / STATE_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise LabError(f"{path}: unreadable lab state: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("processes"), list):
        raise LabError(f"{path}: not a lab state file")
    return data


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _running(state: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in state["processes"] if pid_alive(p["pid"], p.get("start_time"))]


# --- building the lab ------------------------------------------------------------------------------


def _zone_text(zone: str) -> str:
    lines = [
        f"$TTL {TTL}",
        f"@\tIN SOA ns1.{zone}. hostmaster.{zone}. ( 1 3600 600 86400 {TTL} )",
        f"@\tIN NS ns1.{zone}.",
        f"@\tIN NS ns2.{zone}.",
        "ns1\tIN A 127.0.0.1",
        "ns2\tIN A 127.0.0.1",
    ]
    for z, name, values in RECORDS.values():
        if z == zone:
            lines.append(f"{name}\t{TTL}\tIN A {values['dc1']}")
    return "\n".join(lines) + "\n"


def _write_backups(root: Path, now: float) -> None:
    for service in SERVICES:
        bdir = root / "backups" / service
        bdir.mkdir(parents=True, exist_ok=True)
        for age in BACKUP_AGES:
            t = now - age
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(t))
            path = bdir / f"{service}-{stamp}.tar.gz"
            payload = f"{service} backup taken {stamp}\n".encode()
            raw = io.BytesIO()
            with tarfile.open(fileobj=raw, mode="w") as tar:
                info = tarfile.TarInfo(f"{service}/dump.txt")
                info.size = len(payload)
                info.mtime = int(t)
                tar.addfile(info, io.BytesIO(payload))
            path.write_bytes(gzip.compress(raw.getvalue(), mtime=int(t)))
            os.utime(path, (t, t))


def _write_site_content(root: Path) -> None:
    """The web service's content, the same on both hosts: what `drctl verify web` compares."""
    base = root / "data" / "web"
    for rel, text in (("index.html", "<h1>drctl lab</h1>\n"), ("about/team.html", "<p>on call</p>\n"),
                      ("assets/app.css", "body { font-family: sans-serif }\n"),
                      ("uploads/report 2026 (final).txt", "quarterly figures\n")):
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _inventory(info: LabInfo, ssh: dict[str, SshServer]) -> dict[str, Any]:
    d = info.dir
    sites: dict[str, Any] = {}
    for site in SITES:
        host = HOSTS[site]
        sites[site] = {
            "description": f"{'primary' if site == 'dc1' else 'backup'} site of the local lab",
            "hosts": {host: {"address": "127.0.0.1", "port": ssh[host].port, "user": ssh[host].user,
                             "key": "keys/client_ed25519", "known_hosts": "keys/known_hosts",
                             "connect_timeout": "3s"}},
        }
    services: dict[str, Any] = {}
    for svc in SERVICES:
        zone, name, values = RECORDS[svc]
        svc_sites: dict[str, Any] = {}
        for site in SITES:
            host = HOSTS[site]
            if svc in HTTP_SERVICES:
                port = info.ports[f"origin-{svc}-{site}"]
                health: dict[str, Any] = {"http": f"http://127.0.0.1:{port}/health",
                                          "expect_body": f"{svc}@{site}"}
            else:
                health = {"tcp": f"127.0.0.1:{ssh[host].port}"}
            svc_sites[site] = {
                "backup": {"host": host, "path": str(d / "hosts" / host / "backups" / svc),
                           "glob": "*.tar.gz", "max_age": "1h"},
                "health": {**health, "timeout": "2s", "retries": 2, "interval": "500ms"},
            }
        entry: dict[str, Any] = {
            "description": {"db": "database (active site marked by a file on its host)",
                            "api": "HTTP API behind lb1", "web": "web site behind lb1"}[svc],
            "primary": "dc1",
            "backup": "dc2",
            "sites": svc_sites,
            "dns": [{"zone": zone, "name": name, "type": "A", "ttl": TTL, "values": dict(values)}],
        }
        if svc in HTTP_SERVICES:
            entry["traffic"] = {"kind": "haproxy", "balancer": "lb1", "backend": svc,
                                "servers": {"dc1": "dc1", "dc2": "dc2"},
                                "frontend": f"http://127.0.0.1:{info.frontends[svc]}/health"}
        else:
            marker = {site: str(d / "hosts" / HOSTS[site] / "db-active") for site in SITES}
            entry["traffic"] = {
                "kind": "command",
                "activate": {s: {"host": HOSTS[s], "argv": ["touch", marker[s]], "timeout": "10s"}
                             for s in SITES},
                "deactivate": {s: {"host": HOSTS[s], "argv": ["rm", "-f", marker[s]], "timeout": "10s"}
                               for s in SITES},
            }
        if svc == "api":
            entry["depends_on"] = ["db"]
        if svc == "web":
            entry["integrity"] = [{"kind": "files", "name": "site-content", "baseline_max_age": "1d", "sites": {
                site: {"host": HOSTS[site], "path": str(d / "hosts" / HOSTS[site] / "data" / "web")}
                for site in SITES}}]
        entry["rto"] = "5m"
        entry["rpo"] = "1h"
        services[svc] = entry
    return {
        "version": 1,
        "name": "drctl-lab",
        **({"state": info.state_spec()} if info.etcd_members else {}),
        "sites": sites,
        "dns_servers": {ns: {"address": "127.0.0.1", "port": info.ports[f"named-{ns}"], "timeout": "2s"}
                        for ns in ("ns1", "ns2")},
        "zones": {z: {"primary": "ns1", "servers": ["ns2"], "tsig": {"file": "keys/tsig.key"}}
                  for z in ZONES},
        "load_balancers": {"lb1": {"kind": "haproxy", "admin": f"tcp://127.0.0.1:{info.ports['haproxy-lb1']}",
                                   "timeout": "2s"}},
        "services": services,
    }


class _DirLock:
    """An exclusive, non-blocking lock on ``dir/.lab.lock`` while a lab starts or stops."""

    def __init__(self, dir: Path) -> None:
        self.path = dir / ".lab.lock"
        self.fd: int | None = None

    def __enter__(self) -> _DirLock:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise LabError(f"another lab command is working in {self.path.parent}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)


_started: dict[Path, dict[str, Daemon]] = {}  # daemons this process started, by lab directory


def lab_up(dir: Path, etcd: bool = False) -> LabInfo:
    """Start a complete lab in ``dir`` (with ``etcd``: and an etcd cluster holding its state);
    error if one is already running there."""
    t0 = time.monotonic()
    dir = Path(dir).resolve()
    missing = missing_binaries()
    if missing:
        raise LabError(f"missing programs: {', '.join(missing)}", hint="run `make deps`")
    dir.mkdir(parents=True, exist_ok=True)
    with _DirLock(dir):
        state = _read_state(dir)
        if state is not None:
            running = _running(state)
            if running:
                names = ", ".join(f"{p['name']} (pid {p['pid']})" for p in running)
                raise LabError(f"a lab is already running in {dir}: {names}",
                               hint=f"stop it first: drctl lab down --dir {dir}")
        for sub in ("run", "hosts", "keys"):  # leftovers of a lab that is no longer running
            shutil.rmtree(dir / sub, ignore_errors=True)
        for f in (STATE_FILE, INVENTORY_FILE):
            (dir / f).unlink(missing_ok=True)
        daemons = _start_all(dir, etcd)
        _started[dir] = daemons
        try:
            info = _finish(dir, daemons, t0)
        except BaseException:
            _stop_daemons(daemons)
            _started.pop(dir, None)
            raise
    return info


def _start_all(dir: Path, etcd: bool = False) -> dict[str, Daemon]:
    keys, run = dir / "keys", dir / "run"
    keys.mkdir(parents=True)
    run.mkdir()
    now = time.time()
    with ThreadPoolExecutor(max_workers=4) as pool:
        tsig_f = pool.submit(write_tsig_key, keys / "tsig.key", TSIG_NAME)
        key_f = pool.submit(ssh_keygen, keys / "client_ed25519", "drctl-lab")
        files = [pool.submit(write, dir / "hosts" / HOSTS[site], *extra)
                 for site in SITES for write, extra in ((_write_backups, (now,)), (_write_site_content, ()))]
        tsig, client_key = tsig_f.result(), key_f.result()
        for f in files:
            f.result()

    ssh = {HOSTS[s]: SshServer(run / f"ssh-{HOSTS[s]}", client_key=client_key, name=f"ssh-{HOSTS[s]}")
           for s in SITES}
    ns1 = NamedServer(run / "named-ns1", {z: _zone_text(z) for z in ZONES}, tsig, name="named-ns1")
    ns2 = NamedServer(run / "named-ns2", {}, tsig, primary=ns1, name="named-ns2")
    origins = {f"origin-{svc}-{site}": HttpOrigin(run / f"origin-{svc}-{site}", f"{svc}@{site}",
                                                  name=f"origin-{svc}-{site}")
               for svc in HTTP_SERVICES for site in SITES}
    backends = [Backend(svc, "http", free_port(),
                        [(site, f"127.0.0.1:{origins[f'origin-{svc}-{site}'].port}", site != "dc1")
                         for site in SITES])
                for svc in HTTP_SERVICES]
    lb1 = HAProxyServer(run / "haproxy-lb1", backends, name="haproxy-lb1")
    daemons: dict[str, Daemon] = {d.name: d for d in [*ssh.values(), ns1, ns2, *origins.values(), lb1]}

    def chain(*ds: Daemon) -> Callable[[], None]:
        def go() -> None:
            for d in ds:
                d.start()
        return go

    def origins_then_lb() -> None:
        with ThreadPoolExecutor(max_workers=len(origins)) as inner:
            for f in [inner.submit(o.start) for o in origins.values()]:
                f.result()
        lb1.start()

    jobs = [chain(ssh["app1"]), chain(ssh["app2"]), chain(ns1, ns2), origins_then_lb]
    if etcd:
        cluster = EtcdCluster(run, names=ETCD_MEMBERS)
        daemons.update({m.name: m for m in cluster.members})
        jobs.append(cluster.start)
    errors: list[BaseException] = []
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        for fut in [pool.submit(j) for j in jobs]:
            try:
                fut.result()
            except BaseException as e:  # noqa: BLE001 (collected, all daemons stopped below)
                errors.append(e)
    if errors:
        _stop_daemons(daemons)
        raise LabError("the lab did not start:\n" + "\n".join(str(e) for e in errors),
                       hint="run `make deps` if a program is missing")
    (dir / "keys" / "known_hosts").write_text("".join(s.host_key_line() + "\n" for s in ssh.values()))
    return daemons


def _finish(dir: Path, daemons: dict[str, Daemon], t0: float) -> LabInfo:
    lb1 = daemons["haproxy-lb1"]
    assert isinstance(lb1, HAProxyServer)
    info = LabInfo(dir=dir, inventory=dir / INVENTORY_FILE,
                   ports={n: d.port for n, d in daemons.items()},
                   frontends={b.name: b.frontend_port for b in lb1.backends},
                   pids={n: d.pid or 0 for n, d in daemons.items()},
                   startup_seconds=0.0, admin_socket=lb1.admin_socket, daemons=daemons)
    ssh = {h: d for h in HOSTS.values() if isinstance(d := daemons[f"ssh-{h}"], SshServer)}
    header = ("# The local lab's inventory, written by `drctl lab up`; every daemon listens on 127.0.0.1.\n"
              "# Relative paths resolve against this file's directory.\n")
    info.inventory.write_text(header + yaml.safe_dump(_inventory(info, ssh), sort_keys=False, width=120))
    info.startup_seconds = round(time.monotonic() - t0, 3)
    processes = []
    for name, d in daemons.items():
        assert d.pid is not None
        entry: dict[str, Any] = {"name": name, "pid": d.pid, "start_time": proc_start_time(d.pid),
                                 "port": d.port, "dir": str(d.dir), "log": str(d.log)}
        if isinstance(d, HAProxyServer):
            entry["admin_socket"] = str(d.admin_socket)
            entry["frontends"] = {b.name: b.frontend_port for b in d.backends}
        processes.append(entry)
    _write_json(dir / STATE_FILE, {
        "version": 1, "dir": str(dir), "inventory": str(info.inventory),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "startup_seconds": info.startup_seconds, "frontends": info.frontends,
        "admin_socket": str(info.admin_socket), "processes": processes,
    })
    return info


def _stop_daemons(daemons: dict[str, Daemon]) -> list[str]:
    running = [d for d in daemons.values() if d.alive()]
    with ThreadPoolExecutor(max_workers=max(1, len(daemons))) as pool:
        list(pool.map(lambda d: d.stop(), daemons.values()))
    return [d.name for d in running]


def lab_down(dir: Path, timeout: float = 10.0) -> list[str]:
    """Stop every process of the lab in ``dir`` and wait until each PID is gone: their names."""
    dir = Path(dir).resolve()
    state = _read_state(dir)
    if state is None:
        return []
    with _DirLock(dir):
        daemons = _started.pop(dir, {})
        stopped = _stop_daemons(daemons) if daemons else []
        rest = [p for p in state["processes"] if p["name"] not in daemons]
        etcd = [p for p in rest if p["name"] in ETCD_MEMBERS]  # see EtcdMember.stop
        pids = stop_pids([(p["pid"], p.get("start_time")) for p in etcd], min(timeout, STOP_GRACE_S))
        pids += stop_pids([(p["pid"], p.get("start_time")) for p in rest if p not in etcd], timeout)
        stopped += [p["name"] for p in rest if p["pid"] in pids]
        left = _running(state)
        if left:
            names = ", ".join(f"{p['name']} (pid {p['pid']})" for p in left)
            raise LabError(f"still running after stop: {names}")
        state["stopped_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        _write_json(dir / STATE_FILE, state)
    return stopped


def lab_status(dir: Path) -> list[ProcStatus]:
    """Each process of the lab in ``dir`` and whether it runs (empty when there is no lab)."""
    state = _read_state(Path(dir).resolve())
    if state is None:
        return []
    return [ProcStatus(p["name"], p["pid"], p["port"], pid_alive(p["pid"], p.get("start_time")))
            for p in state["processes"]]
