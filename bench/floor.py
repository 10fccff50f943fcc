"""The yardstick: the least a failover of a site can do, with the same round trips as drctl's.

A minimal script, not drctl: it reads the same inventory (plain YAML, no models, no validation) and
moves every service whose primary is ``--site`` to its backup site with paramiko, dnspython and
sockets only. No journal, no locks, no plan, no pre-flight, no read-back, no integrity check, no
repair: only what the switch itself needs, in dependency waves, each independent thing at the same
time:

1. at once: an SSH connection (TCP_NODELAY) to every host of the backup site, and to the hosts of
   the site being left that hold a ``deactivate`` command (given up after the host's
   ``connect_timeout``; never attempted with ``--site-down``); the balancers' backup servers taken
   from maintenance to drain (checked by HAProxy, sent nothing), one connection per balancer;
2. the gate: per service, the newest backup's mtime against the remote clock (one command on the
   backup host's connection) and the backup site's health check (HTTP GET or TCP connect);
3. per dependency wave: one signed RFC 2136 UPDATE per zone with compare-and-set prerequisites
   (each record must still hold the primary's values); every authoritative server queried until it
   serves the new values; traffic: HAProxy ``set server`` (backup ``ready`` once HAProxy has seen
   it UP, primary ``maint``, one connection), or the ``deactivate`` command on the site being left
   (skipped when that host did not answer) then ``activate`` on the backup site; a health check of
   the backup after.

Exit 0 when every service moved; the last line on stdout is one JSON object with the phases'
times. Usage: ``python bench/floor.py -i INVENTORY --site dc1 [--site-down]``. Failover only: the
benchmarks put the lab back with ``drctl failback``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import shlex
import socket
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

T0 = time.perf_counter()

import dns.flags  # noqa: E402
import dns.message  # noqa: E402
import dns.query  # noqa: E402
import dns.rcode  # noqa: E402
import dns.rdata  # noqa: E402
import dns.tsigkeyring  # noqa: E402
import dns.update  # noqa: E402
import paramiko  # noqa: E402
import yaml  # noqa: E402

IMPORTED = time.perf_counter()
POLL_S = 0.01  # how often DNS servers and balancers are asked again while waiting


class Failed(Exception):
    pass


def seconds(value: Any) -> float:
    if isinstance(value, int | float):
        return float(value)
    m = re.fullmatch(r"\s*([\d.]+)\s*(ms|s|m|h|d)?\s*", str(value))
    if not m:
        raise Failed(f"not a duration: {value!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2) or "s"]


def fqdn(name: str, zone: str) -> str:
    zone = zone.rstrip(".")
    if name.endswith("."):
        return name
    return f"{zone}." if name == "@" else f"{name}.{zone}."


def as_list(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


# --- SSH ------------------------------------------------------------------------------------------


class Host:
    """One SSH connection, opened in the background as soon as the script starts."""

    def __init__(self, name: str, conf: dict[str, Any], base: Path) -> None:
        self.name = name
        self.timeout = seconds(conf.get("connect_timeout", 5))
        self.conf, self.base = conf, base
        self.client: paramiko.SSHClient | None = None
        self.error: str | None = None
        self.ready = threading.Event()
        self.sessions = threading.Semaphore(6)  # below sshd's MaxSessions (10)
        threading.Thread(target=self._connect, daemon=True, name=f"ssh-{name}").start()

    def _connect(self) -> None:
        c = self.conf
        try:
            sock = socket.create_connection((c["address"], int(c.get("port", 22))), timeout=self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client = paramiko.SSHClient()
            client.load_host_keys(str(self.base / c["known_hosts"]))
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            client.connect(c["address"], int(c.get("port", 22)), username=c["user"],
                           key_filename=str(self.base / c["key"]), sock=sock, timeout=self.timeout,
                           banner_timeout=self.timeout, auth_timeout=self.timeout, look_for_keys=False,
                           allow_agent=False)
            self.client = client
        except Exception as e:  # noqa: BLE001 - a host that does not answer is reported, not raised here
            self.error = f"{type(e).__name__}: {e}"
        finally:
            self.done_at = time.perf_counter()
            self.ready.set()

    def run(self, argv: list[str], timeout: float = 30.0) -> str:
        self.ready.wait(self.timeout + 1)
        if self.client is None:
            raise Failed(f"{self.name} did not answer within {self.timeout:g}s: {self.error or 'no connection'}")
        transport = self.client.get_transport()
        assert transport is not None
        with self.sessions:
            for attempt in range(50):  # sshd may still count a session just closed against MaxSessions
                try:
                    chan = transport.open_session(timeout=self.timeout)
                    break
                except paramiko.ChannelException:
                    if attempt == 49:
                        raise
                    time.sleep(0.01)
            chan.settimeout(timeout)
            chan.exec_command(shlex.join(argv))
            out = b""
            while data := chan.recv(65536):
                out += data
            rc = chan.recv_exit_status()
            chan.close()
        if rc != 0:
            raise Failed(f"{self.name}: {shlex.join(argv)} exited {rc}")
        return out.decode()


def newest_backup_age(host: Host, path: str, glob: str) -> float:
    script = ('date +%s.%N; find "$1" -type f -name "$2" -printf \'%T@\\n\' | sort -n -r | head -n 1')
    lines = host.run(["sh", "-c", script, "floor", path, glob]).split()
    if len(lines) < 2:
        raise Failed(f"{host.name}: no backup matching {glob} under {path}")
    return float(lines[0]) - float(lines[1])


# --- health, DNS, HAProxy ---------------------------------------------------------------------------


def healthy(conf: dict[str, Any]) -> None:
    timeout = seconds(conf.get("timeout", 3))
    if "tcp" in conf:
        host, _, port = str(conf["tcp"]).rpartition(":")
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
        return
    u = urlsplit(conf["http"])
    conn = http.client.HTTPConnection(u.hostname or "", u.port or 80, timeout=timeout)
    try:
        conn.request("GET", u.path or "/", headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read().decode(errors="replace")
    finally:
        conn.close()
    if resp.status not in conf.get("expect_status", range(200, 400)):
        raise Failed(f"GET {conf['http']}: status {resp.status}")
    if conf.get("expect_body") and conf["expect_body"] not in body:
        raise Failed(f"GET {conf['http']}: body without {conf['expect_body']!r}")


def tsig_keyring(path: Path) -> tuple[Any, str, str]:
    text = path.read_text()
    name = re.search(r'key\s+"([^"]+)"', text)
    alg = re.search(r"algorithm\s+([\w-]+)\s*;", text)
    secret = re.search(r'secret\s+"([^"]+)"', text)
    if not (name and alg and secret):
        raise Failed(f"{path}: not a tsig-keygen key")
    return dns.tsigkeyring.from_text({name.group(1): secret.group(1)}), name.group(1), alg.group(1)


def haproxy(admin: str, commands: list[str], timeout: float = 3.0) -> str:
    """Commands joined by ';' on one connection to the runtime API; the whole reply."""
    host, _, port = admin.removeprefix("tcp://").rpartition(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall("; ".join(commands).encode() + b"\n")
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    return reply.decode(errors="replace")


def checked_up(admin: str, backend: str, server: str) -> bool:
    """HAProxy has health-checked the server and found it UP (not merely taken out of maintenance)."""
    lines = haproxy(admin, [f"show stat {backend} 4 -1"]).splitlines()
    cols = lines[0].lstrip("# ").split(",")
    i_sv, i_st = cols.index("svname"), cols.index("status")
    for line in lines[1:]:
        f = line.split(",")
        if len(f) > i_st and f[i_sv] == server:
            return f[i_st] in ("UP", "DRAIN")
    raise Failed(f"{admin}: {backend}/{server} unknown")


# --- the run ------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-i", "--inventory", type=Path, required=True)
    ap.add_argument("--site", required=True, help="every service whose primary is SITE moves to its backup")
    ap.add_argument("--site-down", action="store_true", help="send nothing to the site being left")
    ap.add_argument("-v", "--verbose", action="store_true", help="each phase's time on stderr")
    args = ap.parse_args()
    base = args.inventory.resolve().parent
    inv = yaml.load(args.inventory.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    services = {n: s for n, s in inv["services"].items() if s["primary"] == args.site}
    if not services:
        raise Failed(f"no service has primary {args.site}")
    to_site = {n: s["backup"] for n, s in services.items()}
    hosts_conf = {h: (site, c) for site, sc in inv["sites"].items() for h, c in sc["hosts"].items()}

    # 1. connections, at once
    wanted: set[str] = set()
    for n, s in services.items():
        backup = s["sites"][to_site[n]].get("backup")
        if backup:
            wanted.add(backup["host"])
        tr = s.get("traffic") or {}
        if tr.get("kind") == "command":
            if to_site[n] in tr.get("activate", {}):
                wanted.add(tr["activate"][to_site[n]]["host"])
            if args.site in tr.get("deactivate", {}) and not args.site_down:
                wanted.add(tr["deactivate"][args.site]["host"])
    hosts = {h: Host(h, hosts_conf[h][1], base) for h in sorted(wanted)}
    lbs = {name: c["admin"] for name, c in (inv.get("load_balancers") or {}).items()}
    pool = ThreadPoolExecutor(max_workers=32)
    prewarm: dict[str, list[str]] = {}
    for s in services.values():
        tr = s.get("traffic") or {}
        if tr.get("kind", "haproxy") == "haproxy" and tr:
            prewarm.setdefault(tr["balancer"], []).append(
                f"set server {tr['backend']}/{tr['servers'][s['backup']]} state drain")
    warm = [pool.submit(haproxy, lbs[lb], cmds) for lb, cmds in prewarm.items()]

    # 2. the gate: every backup's age and every backup site's health, all at once
    def fresh(name: str, backup: dict[str, Any]) -> None:
        age = newest_backup_age(hosts[backup["host"]], backup["path"], backup.get("glob", "*"))
        if age > seconds(backup.get("max_age", "1d")):
            raise Failed(f"{name}: backup {age:.0f}s old")

    ages: list[Future[Any]] = []
    health: list[Future[Any]] = []
    for n, s in services.items():
        conf = s["sites"][to_site[n]]
        if conf.get("backup"):
            ages.append(pool.submit(fresh, n, conf["backup"]))
        if conf.get("health"):
            health.append(pool.submit(healthy, conf["health"]))
    gate: dict[str, float] = {}
    for label, jobs in (("health_done_s", health), ("ages_done_s", ages)):
        for f in jobs:
            f.result()
        gate[label] = round(time.perf_counter() - IMPORTED, 3)
    gate["connected_s"] = round(max((h.done_at for h in hosts.values() if h.client is not None),
                                    default=IMPORTED) - IMPORTED, 3)
    for f in warm:
        if f.result().strip():
            raise Failed(f"prewarm: {f.result().strip()}")
    gate_done = time.perf_counter()

    # 3. dependency waves
    waves: list[list[str]] = []
    placed: set[str] = set()
    while len(placed) < len(services):
        wave = [n for n in services if n not in placed
                and all(d in placed or d not in services for d in services[n].get("depends_on", []))]
        if not wave:
            raise Failed("depends_on cycle")
        waves.append(wave)
        placed.update(wave)
    keys: dict[str, tuple[Any, str, str]] = {}
    not_fenced: list[str] = []
    updates = 0
    phases: list[dict[str, float]] = []
    for wave in waves:
        w0 = time.perf_counter()
        by_zone: dict[str, list[dict[str, Any]]] = {}
        for n in wave:
            for rec in services[n].get("dns", []):
                by_zone.setdefault(rec["zone"].rstrip("."), []).append({**rec, "service": n})

        def flip(zone: str, records: list[dict[str, Any]]) -> None:
            zc = inv["zones"][zone]
            if zone not in keys:
                keys[zone] = tsig_keyring(base / zc["tsig"]["file"])
            ring, keyname, alg = keys[zone]
            up = dns.update.UpdateMessage(zone + ".", keyring=ring, keyname=keyname, keyalgorithm=alg)
            for r in records:
                name, site = fqdn(r["name"], zone), to_site[r["service"]]
                up.present(name, *(dns.rdata.from_text("IN", r["type"], v) for v in as_list(r["values"][args.site])))
                up.replace(name, int(r.get("ttl", 300)), r["type"], *as_list(r["values"][site]))
            primary = inv["dns_servers"][zc["primary"]]
            answer = dns.query.tcp(up, primary["address"], port=int(primary.get("port", 53)), timeout=5)
            if answer.rcode() != dns.rcode.NOERROR:
                raise Failed(f"UPDATE of {zone}: {dns.rcode.to_text(answer.rcode())}")
            servers = list(dict.fromkeys([zc["primary"], *zc.get("servers", [])]))
            todo = {(srv, fqdn(r["name"], zone), r["type"]): sorted(as_list(r["values"][to_site[r["service"]]]))
                    for srv in servers for r in records}
            deadline = time.monotonic() + 60
            while todo and time.monotonic() < deadline:
                for key in list(todo):
                    srv, name, rdtype = key
                    q = dns.message.make_query(name, rdtype)
                    q.flags &= ~dns.flags.RD
                    ns = inv["dns_servers"][srv]
                    a = dns.query.udp(q, ns["address"], port=int(ns.get("port", 53)), timeout=1)
                    got = sorted(rd.to_text() for rrset in a.answer for rd in rrset)
                    if got == todo[key]:
                        del todo[key]
                if todo:
                    time.sleep(POLL_S)
            if todo:
                raise Failed(f"not served everywhere: {sorted(todo)}")

        for f in [pool.submit(flip, z, rs) for z, rs in by_zone.items()]:
            f.result()
        updates += len(by_zone)
        w1 = time.perf_counter()

        def traffic(name: str) -> None:
            s, site = services[name], to_site[name]
            tr = s.get("traffic")
            if tr and tr.get("kind", "haproxy") == "haproxy":
                admin, backend = lbs[tr["balancer"]], tr["backend"]
                new, old = tr["servers"][site], tr["servers"][args.site]
                deadline = time.monotonic() + 15
                while not checked_up(admin, backend, new):
                    if time.monotonic() > deadline:
                        raise Failed(f"{backend}/{new} not seen UP")
                    time.sleep(POLL_S)
                reply = haproxy(admin, [f"set server {backend}/{new} state ready",
                                        f"set server {backend}/{old} state {tr.get('mode', 'maint')}"])
                if reply.strip():
                    raise Failed(f"{backend}: {reply.strip()}")
            elif tr:
                off = tr.get("deactivate", {}).get(args.site)
                if off and not args.site_down:
                    try:
                        hosts[off["host"]].run(off["argv"], seconds(off.get("timeout", 60)))
                    except Failed:
                        not_fenced.append(name)
                elif off:
                    not_fenced.append(name)
                on = tr.get("activate", {}).get(site)
                if on:
                    hosts[on["host"]].run(on["argv"], seconds(on.get("timeout", 60)))
            if s["sites"][site].get("health"):
                healthy(s["sites"][site]["health"])

        for f in [pool.submit(traffic, n) for n in wave]:
            f.result()
        phases.append({"services": len(wave), "dns_s": round(w1 - w0, 3),
                       "traffic_and_health_s": round(time.perf_counter() - w1, 3)})
        if args.verbose:
            print(f"wave {len(phases)}: {phases[-1]}", file=sys.stderr)
    done = time.perf_counter()
    print(json.dumps({"services": len(services), "waves": len(waves), "updates": updates,
                      "not_fenced": sorted(not_fenced), "imports_s": round(IMPORTED - T0, 3),
                      "gate_s": round(gate_done - IMPORTED, 3), "switch_s": round(done - gate_done, 3),
                      "elapsed_s": round(done - T0, 3), "gate_detail": gate,
                      "waves_detail": phases}))
    sys.stdout.flush()
    for h in hosts.values():
        if h.client is not None:
            h.client.close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Failed as e:
        print(f"floor: {e}", file=sys.stderr)
        sys.exit(5)
