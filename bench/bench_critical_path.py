"""drctl's failover against the yardstick (``bench/floor.py``), and how it scales with the services.

Everything runs inside a network namespace made for the run (``ip netns add``; needs root, and
``ip`` and ``nft``): the lab, the floor, drctl, and the nftables rules that black-hole the primary,
so the host's own network and firewall are never touched. The namespace (and whatever was left
running in it) is removed at the end, whatever happened.

1. **Paired runs** on the lab's three services made dependent (``db`` <- ``api`` <- ``web``,
   written next to the lab's inventory as ``chain.yaml``): ``python bench/floor.py`` and
   ``python -m drctl failover --site dc1 --yes --json`` in turn (A B, B A, ...), whole processes
   timed from outside; after every run the lab is read back (both DNS servers, HAProxy, the
   db marker files) and put back with ``drctl failback --site dc1 --yes`` (not timed). Three
   cases: healthy; the primary black-holed (nftables drops app1's sshd port and dc1's origin
   ports) with ``--site-down dc1`` (floor: ``--site-down``); black-holed without it (both give
   app1 up after its ``connect_timeout``).
2. **Scaling**: N services (default 10, 100, 500) spread over 10 hosts per site (20 more sshd),
   in three dependency waves, in both lab zones; every fifth service behind a second HAProxy
   (``lb2``, reached through a relay that counts sessions and commands), every fifth (+1) with
   ``deactivate``/``activate`` commands, the rest DNS only; all with a backup and an HTTP health
   check (the origins: one more HAProxy answering with a static page, cheap enough for ``lb2``
   checking a hundred servers every 500 ms).
   Per N: drctl's and the floor's wall time (median), SSH logins per run (sshd's ``Accepted
   publickey``), DNS UPDATEs per run (SOA serial deltas), balancer sessions and commands, and
   drctl's peak RSS, open file descriptors and threads (sampled from /proc while it runs).

Figures go to stderr as they come; the last line on stdout is one JSON object. Options:
``--pairs N`` (default 7), ``--scale 10,100,500`` (empty: skip), ``--scale-runs N`` (default 3),
``--cases healthy,site-down,black-holed``, ``--keep`` (the work directory). A case or a size that
fails is reported in the JSON (``error``) and the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
FLOOR = ROOT / "bench" / "floor.py"
NS_PREFIX = "drctlbench"


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def med(values: list[float]) -> float:
    return round(statistics.median(values), 3)


# --- processes, measured from outside ---------------------------------------------------------------


@dataclass
class Measured:
    wall_s: float
    rc: int
    out: str
    err: str
    started: float  # time.time() just before the start
    maxrss_kb: int = 0
    peak_fds: int = 0
    peak_threads: int = 0

    def failure(self) -> str:
        """What a failed run said: its stderr's tail, and with ``--json`` the failed steps."""
        text = self.err[-1500:]
        try:
            res = json.loads(self.out)
            text += f" | status {res['status']}: {res['message'][:500]}; failed steps: " + "; ".join(
                f"{a['id']}: {a['detail'][:200]}" for a in res["actions"] if a["status"] == "failed")[:1500]
        except (ValueError, KeyError, TypeError):
            pass
        return text

    def json(self) -> Any:
        """drctl's ``--json`` document (the whole output), or the floor's last line."""
        try:
            return json.loads(self.out)
        except ValueError:
            return json.loads(self.out.strip().splitlines()[-1])


def _sample(pid: int, stop: threading.Event, peaks: dict[str, int]) -> None:
    while not stop.is_set():
        try:
            peaks["fds"] = max(peaks["fds"], len(os.listdir(f"/proc/{pid}/fd")))
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("Threads:"):
                    peaks["threads"] = max(peaks["threads"], int(line.split()[1]))
        except (OSError, ValueError):
            pass
        stop.wait(0.01)


def run(argv: list[str], env: dict[str, str], *, timeout: float = 600, sample: bool = False) -> Measured:
    """Run ``argv`` to its end: wall time, exit status, output, its own peak RSS (wait4), and, with
    ``sample``, the most file descriptors and threads it had open at once."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.time()
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
        peaks = {"fds": 0, "threads": 0}
        stop = threading.Event()
        sampler = threading.Thread(target=_sample, args=(proc.pid, stop, peaks), daemon=True)
        if sample:
            sampler.start()
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            _pid, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
            stop.set()
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if sample:
            sampler.join(1)
        out.seek(0)
        err.seek(0)
        return Measured(wall, proc.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace"),
                        started, usage.ru_maxrss, peaks["fds"], peaks["threads"])


def drctl_env(state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRCTL_")}
    env.update(DRCTL_STATE_DIR=str(state), NO_COLOR="1", COLUMNS="200")
    return env


def drctl_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "drctl", *args]


def journal(state: Path, run_id: str) -> list[dict[str, Any]]:
    path = state / "runs" / f"{run_id}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def where_time_goes(m: Measured, state: Path) -> dict[str, float]:
    """A drctl run's wall time in phases, from its journal's timestamps."""
    res = m.json()
    recs = journal(state, res["run_id"])
    ts = {r["event"]: r["ts"] for r in recs if r.get("event") in ("run_started", "run_finished")}
    acts = res["actions"]
    first_flip = min((a["started"] for a in acts if a["kind"] == "flip_dns"), default=float("inf"))
    gate_end = max((a["finished"] for a in acts if a["kind"] in ("check_freshness", "verify_integrity")
                    or (a["kind"] == "health_check" and a["started"] < first_flip)), default=ts["run_started"])
    pre = [r["ts"] for r in recs if r.get("event") == "preflight"]
    last_step = max(a["finished"] for a in acts)
    gate_end = max([gate_end, *pre])
    out = {
        "to_run_started_s": ts["run_started"] - m.started,  # interpreter, imports, inventory, observe, plan
        "gate_s": gate_end - ts["run_started"],
        "services_s": last_step - gate_end,
        "converge_s": ts["run_finished"] - last_step,
        "after_run_s": m.started + m.wall_s - ts["run_finished"],  # printing, closing connections, exit
    }
    kinds: dict[str, float] = {}
    for a in acts:
        kinds[a["kind"]] = max(kinds.get(a["kind"], 0.0), a["elapsed_s"])
    out.update({f"longest_{k}_s": v for k, v in kinds.items()})
    return {k: round(v, 3) for k, v in out.items()}


# --- the network namespace ---------------------------------------------------------------------------


def ns_pids(ns: str) -> list[int]:
    done = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False)
    return [int(p) for p in done.stdout.split()]


def outer(args: argparse.Namespace, argv: list[str]) -> int:
    """Make the namespace, run this script again inside it, and remove the namespace afterwards."""
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            print(json.dumps({"error": f"{tool} not found (make deps)"}))
            return 2
    ns = f"{NS_PREFIX}{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        print(json.dumps({"error": f"ip netns add failed (root needed): {made.stderr.strip()}"}))
        return 2
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        inner = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, __file__, "--inside", ns, *argv])
        try:
            return inner.wait()
        except KeyboardInterrupt:
            inner.send_signal(signal.SIGINT)
            return inner.wait()
    finally:
        for pid in ns_pids(ns):  # what the run started in there and left behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "del", ns], check=False)


class BlackHole:
    """nftables rules, inside this namespace, dropping what is sent to the given TCP ports."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.on = False

    def __enter__(self) -> BlackHole:
        rules = ("table inet drctlbench {\n chain out { type filter hook output priority 0; policy accept;\n"
                 f"  ip daddr 127.0.0.1 tcp dport {{ {', '.join(map(str, self.ports))} }} drop\n }}\n}}\n")
        subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True, timeout=10)
        self.on = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.on:
            subprocess.run(["nft", "delete", "table", "inet", "drctlbench"], check=False, timeout=10)
            self.on = False


# --- reading the world back ----------------------------------------------------------------------------


def dns_answers(server: tuple[str, int], names: list[str], *, dig: bool = False) -> dict[str, list[str]]:
    """The A records of ``names`` as ``server`` serves them: with the ``dig`` binary, or (for
    hundreds of names) dnspython."""
    import dns.flags
    import dns.message
    import dns.query

    out = {}
    for name in names:
        if dig:
            done = subprocess.run(["dig", "+short", "+norecurse", "+time=2", "+tries=1", "-p", str(server[1]),
                                   f"@{server[0]}", name, "A"], capture_output=True, text=True, check=True, timeout=10)
            out[name] = sorted(line for line in done.stdout.splitlines() if line.strip())
            continue
        q = dns.message.make_query(name, "A")
        q.flags &= ~dns.flags.RD
        a = dns.query.udp(q, server[0], port=server[1], timeout=2)
        out[name] = sorted(rd.to_text() for rrset in a.answer for rd in rrset)
    return out


def haproxy_states(port: int) -> dict[tuple[str, str], str]:
    """(backend, server) -> ready | maint | drain, from ``show servers state``."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"show servers state\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    out = {}
    for line in data.decode().splitlines():
        f = line.split()
        if len(f) > 6 and not line.startswith("#"):
            admin = int(f[6])
            out[(f[1], f[3])] = "maint" if admin & 0x23 else "drain" if admin & 0x18 else "ready"
    return out


@dataclass
class World:
    """What a run must leave: every record on both DNS servers, the balancers, the marker files."""

    servers: list[tuple[str, int]]
    records: dict[str, dict[str, list[str]]]  # fqdn -> site -> values
    balancers: dict[int, list[tuple[str, dict[str, str]]]]  # admin port -> [(backend, site -> server)]
    markers: dict[str, dict[str, Path]] = field(default_factory=dict)  # service -> site -> file

    def differences(self, site: str, *, fenced: bool = True) -> list[str]:
        other = {"dc1": "dc2", "dc2": "dc1"}[site]
        diffs = []
        for srv in self.servers:
            got = dns_answers(srv, list(self.records), dig=len(self.records) <= 10)
            diffs += [f"{srv[1]} {n}: {v}" for n, v in got.items() if v != sorted(self.records[n][site])]
        for port, backends in self.balancers.items():
            states = haproxy_states(port)
            for backend, servers in backends:
                if states.get((backend, servers[site])) != "ready" or states.get((backend, servers[other])) != "maint":
                    diffs.append(f"{backend}: {servers[site]} {states.get((backend, servers[site]))}, "
                                 f"{servers[other]} {states.get((backend, servers[other]))}")
        for svc, files in self.markers.items():
            if not files[site].exists():
                diffs.append(f"{svc}: not active at {site}")
            if fenced and files[other].exists():
                diffs.append(f"{svc}: still active at {other}")
        return diffs


def world_of(inventory: Path) -> World:
    inv = yaml.safe_load(inventory.read_text())
    servers = [("127.0.0.1", int(s["port"])) for s in inv["dns_servers"].values()]
    records, balancers, markers = {}, {}, {}
    for name, s in inv["services"].items():
        for r in s.get("dns", []):
            zone = r["zone"].rstrip(".")
            records[f"{r['name']}.{zone}."] = {k: [v] if isinstance(v, str) else v for k, v in r["values"].items()}
        tr = s.get("traffic") or {}
        if tr.get("kind") == "haproxy":
            port = int(inv["load_balancers"][tr["balancer"]]["admin"].rpartition(":")[2])
            balancers.setdefault(port, []).append((tr["backend"], tr["servers"]))
        elif tr.get("kind") == "command":
            markers[name] = {site: Path(spec["argv"][-1]) for site, spec in tr["activate"].items()}
    return World(servers, records, balancers, markers)


# --- a counting relay in front of a balancer's runtime API ---------------------------------------------------


class Relay:
    """Forwards each connection to HAProxy's admin port; counts connections and command lines."""

    def __init__(self, upstream: int) -> None:
        relay = self
        self.sessions = 0
        self.commands = 0
        self._lock = threading.Lock()

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                client: socket.socket = self.request
                client.settimeout(10)
                buf = b""
                while b"\n" not in buf:
                    chunk = client.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                with relay._lock:
                    relay.sessions += 1
                    relay.commands += sum(len([c for c in line.split(b";") if c.strip()])
                                          for line in buf.splitlines())
                try:
                    with socket.create_connection(("127.0.0.1", upstream), timeout=10) as up:
                        up.sendall(buf)
                        while data := up.recv(65536):
                            client.sendall(data)
                except OSError:
                    pass

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.sessions, self.commands

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# --- part 1: paired runs on the lab's three dependent services ------------------------------------------


def logins(logs: list[Path]) -> int:
    return sum(p.read_text(errors="replace").count("Accepted publickey") for p in logs if p.exists())


class Paired:
    def __init__(self, lab: Any, state: Path) -> None:
        self.lab = lab
        self.state = state
        self.env = drctl_env(state)
        inv = yaml.safe_load(lab.inventory.read_text())
        inv["services"]["web"]["depends_on"] = ["api"]
        self.inventory = lab.inventory.with_name("chain.yaml")
        self.inventory.write_text(yaml.safe_dump(inv, sort_keys=False))
        self.connect_timeout = float(str(inv["sites"]["dc1"]["hosts"]["app1"]["connect_timeout"]).rstrip("s"))
        self.world = world_of(self.inventory)
        self.hole_ports = [lab.ports["ssh-app1"], lab.ports["origin-web-dc1"], lab.ports["origin-api-dc1"]]

    def reset(self) -> None:
        back = run(drctl_argv("failback", "--site", "dc1", "--yes", "--force", "-i", str(self.inventory)),
                   drctl_env(self.state.with_name("reset-state")), timeout=120)
        if back.rc != 0:
            raise RuntimeError(f"failback exited {back.rc}: {back.err[-2000:]}")
        deadline = time.monotonic() + 10
        while (diffs := self.world.differences("dc1")) and time.monotonic() < deadline:
            time.sleep(0.1)
        if diffs:
            raise RuntimeError(f"the lab is not back on dc1: {diffs}")

    def one(self, who: str, case: str) -> Measured:
        down = case == "site-down"
        if who == "floor":
            argv = [sys.executable, str(FLOOR), "-i", str(self.inventory), "--site", "dc1",
                    *(["--site-down"] if down else [])]
        else:
            argv = drctl_argv("failover", "--site", "dc1", "--yes", "--json", "-i", str(self.inventory),
                              *(["--site-down", "dc1"] if down else []))
        with BlackHole(self.hole_ports) if case != "healthy" else _nothing():
            m = run(argv, self.env, timeout=180, sample=who == "drctl")
            if m.rc != 0:
                raise RuntimeError(f"{who} ({case}) exited {m.rc}: {m.failure()}")
            diffs = self.world.differences("dc2", fenced=case == "healthy")
        if diffs:
            raise RuntimeError(f"{who} ({case}) did not move the lab: {diffs}")
        self.reset()
        return m

    def case(self, case: str, pairs: int, warmup: int) -> dict[str, Any]:
        self.reset()
        for _ in range(warmup):
            self.one("floor", case)
            self.one("drctl", case)
        floor: list[Measured] = []
        drctl: list[Measured] = []
        for i in range(pairs):
            order = ("floor", "drctl") if i % 2 == 0 else ("drctl", "floor")
            got = {who: self.one(who, case) for who in order}
            floor.append(got["floor"])
            drctl.append(got["drctl"])
            say(f"  {case} pair {i + 1}: floor {got['floor'].wall_s:.3f}s, drctl {got['drctl'].wall_s:.3f}s "
                f"({got['drctl'].wall_s / got['floor'].wall_s:.2f}x)")
        ratios = [d.wall_s / f.wall_s for f, d in zip(floor, drctl, strict=True)]
        excess = [d.wall_s - f.wall_s for f, d in zip(floor, drctl, strict=True)]
        median_run = sorted(drctl, key=lambda m: m.wall_s)[len(drctl) // 2]
        median_floor = sorted(floor, key=lambda m: m.wall_s)[len(floor) // 2]
        out: dict[str, Any] = {
            "pairs": pairs, "floor_s": med([m.wall_s for m in floor]), "drctl_s": med([m.wall_s for m in drctl]),
            "ratio": med(ratios), "ratio_min": round(min(ratios), 3), "ratio_max": round(max(ratios), 3),
            "excess_s": med(excess),
            "drctl_engine_s": med([m.json()["elapsed_s"] for m in drctl]),
            "drctl_phases": where_time_goes(median_run, self.state),
            "floor_phases": {k: v for k, v in median_floor.json().items() if k.endswith("_s")},
            "drctl_peak_rss_mb": round(max(m.maxrss_kb for m in drctl) / 1024, 1),
            "floor_peak_rss_mb": round(max(m.maxrss_kb for m in floor) / 1024, 1),
        }
        if case == "healthy":
            out.update(target="drctl <= 1.5x floor", met=out["ratio"] <= 1.5)
        elif case == "site-down":
            out.update(target="drctl <= 1.2x floor", met=out["ratio"] <= 1.2)
        else:
            out.update(target=f"drctl <= floor + connect_timeout ({self.connect_timeout:g}s)",
                       connect_timeout_s=self.connect_timeout, met=out["excess_s"] <= self.connect_timeout)
        return out


@contextmanager
def _nothing() -> Iterator[None]:
    yield


# --- part 2: scaling -----------------------------------------------------------------------------------


HOSTS_PER_SITE = 10
WAVES = 3


def write_backups(root: Path, service: str, now: float) -> None:
    d = root / "backups" / service
    d.mkdir(parents=True, exist_ok=True)
    for age in (1200, 60):
        p = d / f"{service}-{int(now - age)}.tar.gz"
        p.write_bytes(b"backup of " + service.encode())
        os.utime(p, (now - age, now - age))


def static_origins(dir: Path) -> Any:
    """One HAProxy answering GET with 200 ``scale@dc1`` on one port and ``scale@dc2`` on another: HTTP
    origins cheap enough for a balancer health-checking a hundred servers every 500 ms."""
    from drctl.lab.servers import HAPROXY, Daemon, free_port

    class StaticOrigins(Daemon):
        def __init__(self) -> None:
            super().__init__("origins-scale", dir)
            self.ports = {"dc1": self.port, "dc2": free_port()}

        def _prepare(self) -> None:
            lines = ["global", "  maxconn 4096", "defaults", "  mode http", "  timeout connect 2s",
                     "  timeout client 10s", "  timeout server 10s"]
            for site, port in self.ports.items():
                lines += [f"frontend {site}", f"  bind 127.0.0.1:{port}",
                          f'  http-request return status 200 content-type text/plain string "scale@{site}"']
            (self.dir / "origins.cfg").write_text("\n".join(lines) + "\n")

        def _argv(self) -> list[str]:
            return [HAPROXY, "-db", "-f", str(self.dir / "origins.cfg")]

        def _ready_ports(self) -> list[int]:
            return list(self.ports.values())

    return StaticOrigins()


class Scale:
    """20 more sshd, HTTP origins, a second HAProxy behind a counting relay, and inventories of N
    services."""

    def __init__(self, lab: Any, work: Path, max_n: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from drctl.lab.servers import Backend, HAProxyServer, SshServer, free_port

        self.lab, self.work = lab, work
        self.hosts = {site: [f"{'h' if site == 'dc1' else 'b'}{k}" for k in range(HOSTS_PER_SITE)]
                      for site in ("dc1", "dc2")}
        names = [h for hs in self.hosts.values() for h in hs]
        self.ssh = {h: SshServer(work / f"ssh-{h}", client_key=lab.client_key, name=f"ssh-{h}") for h in names}
        self.origins = static_origins(work / "origins")
        daemons: list[Any] = [*self.ssh.values(), self.origins]
        self.started: list[Any] = []
        with ThreadPoolExecutor(8) as pool:
            for d, f in [(d, pool.submit(d.start)) for d in daemons]:
                f.result()
                self.started.append(d)
        self.haproxy_services = [i for i in range(max_n) if i % 5 == 0]
        backends = [Backend(f"be{i:03d}", "http", free_port(),
                            [(site, f"127.0.0.1:{self.origins.ports[site]}", site != "dc1") for site in ("dc1", "dc2")])
                    for i in self.haproxy_services]
        self.lb2 = HAProxyServer(work / "haproxy-lb2", backends, name="haproxy-lb2")
        self.lb2.start()
        self.started.append(self.lb2)
        self.relay = Relay(self.lb2.port)
        self.known_hosts = work / "known_hosts"
        self.known_hosts.write_text("".join(s.host_key_line() + "\n" for s in self.ssh.values()))
        now = time.time()
        for i in range(max_n):
            for site in ("dc1", "dc2"):
                write_backups(self.root(self.host(i, site)), f"s{i:03d}", now)
        # the records, at their dc1 values: one UPDATE per zone
        lines = [f"server 127.0.0.1 {lab.ports['named-ns1']}"]
        for zone in ("example.test", "internal.test"):
            lines.append(f"zone {zone}")
            lines += [f"update add s{i:03d}.{zone}. 30 A {self.value(i, 'dc1')}"
                      for i in range(max_n) if self.zone(i) == zone]
            lines.append("send")
        subprocess.run(["nsupdate", "-k", str(lab.tsig_key)], input="\n".join(lines) + "\n", text=True,
                       check=True, timeout=60)
        for i in range(max_n):  # a command-steered service is active on dc1
            if i % 5 == 1:
                self.marker(i, "dc1").touch()

    def root(self, host: str) -> Path:
        return self.work / "hosts" / host

    def host(self, i: int, site: str) -> str:
        return self.hosts[site][i % HOSTS_PER_SITE]

    def zone(self, i: int) -> str:
        return ("example.test", "internal.test")[(i // WAVES) % 2]

    def value(self, i: int, site: str) -> str:
        return f"{'192.0.2' if site == 'dc1' else '198.51.100'}.{1 + i % 250}"

    def marker(self, i: int, site: str) -> Path:
        return self.root(self.host(i, site)) / f"s{i:03d}-active"

    def inventory(self, n: int) -> Path:
        lab_inv = yaml.safe_load(self.lab.inventory.read_text())
        sites: dict[str, Any] = {}
        for site, hosts in self.hosts.items():
            sites[site] = {"hosts": {h: {"address": "127.0.0.1", "port": self.ssh[h].port, "user": self.ssh[h].user,
                                         "key": str(self.lab.client_key), "known_hosts": str(self.known_hosts),
                                         "connect_timeout": "3s"} for h in hosts}}
        services: dict[str, Any] = {}
        for i in range(n):
            name = f"s{i:03d}"
            svc: dict[str, Any] = {
                "primary": "dc1", "backup": "dc2",
                "sites": {site: {
                    "backup": {"host": self.host(i, site), "glob": "*.tar.gz", "max_age": "1h",
                               "path": str(self.root(self.host(i, site)) / "backups" / name)},
                    "health": {"http": f"http://127.0.0.1:{self.origins.ports[site]}/health",
                               "expect_body": f"scale@{site}", "timeout": "2s", "retries": 2, "interval": "500ms"},
                } for site in ("dc1", "dc2")},
                "dns": [{"zone": self.zone(i), "name": name, "type": "A", "ttl": 30,
                         "values": {site: self.value(i, site) for site in ("dc1", "dc2")}}],
            }
            if i % WAVES:
                svc["depends_on"] = [f"s{i - 1:03d}"]
            if i % 5 == 0:
                svc["traffic"] = {"kind": "haproxy", "balancer": "lb2", "backend": f"be{i:03d}",
                                  "servers": {"dc1": "dc1", "dc2": "dc2"}}
            elif i % 5 == 1:
                def cmd(argv: list[str], site: str, i: int = i) -> dict[str, Any]:
                    return {"host": self.host(i, site), "argv": [*argv, str(self.marker(i, site))], "timeout": "10s"}

                svc["traffic"] = {"kind": "command", "activate": {s: cmd(["touch"], s) for s in ("dc1", "dc2")},
                                  "deactivate": {s: cmd(["rm", "-f"], s) for s in ("dc1", "dc2")}}
            services[name] = svc
        inv = {"version": 1, "name": f"scale-{n}", "sites": sites, "dns_servers": lab_inv["dns_servers"],
               "zones": lab_inv["zones"],
               "load_balancers": {"lb2": {"kind": "haproxy", "admin": f"tcp://127.0.0.1:{self.relay.port}",
                                          "timeout": "2s"}},
               "services": services}
        path = self.lab.dir / f"scale-{n}.yaml"  # next to the lab's keys (the zones' TSIG file is relative)
        path.write_text(yaml.safe_dump(inv, sort_keys=False))
        return path

    def world(self, inventory: Path) -> World:
        w = world_of(inventory)
        w.balancers = {self.lb2.port: [b for bs in w.balancers.values() for b in bs]}
        return w

    def serials(self) -> int:
        return sum(self.lab.soa_serial(z) for z in ("example.test", "internal.test"))

    def logins(self) -> int:
        return logins([s.log for s in self.ssh.values()])

    def stop(self) -> None:
        self.relay.close()
        for d in reversed(self.started):
            d.stop()

    def measure(self, n: int, runs: int, state: Path) -> dict[str, Any]:
        inventory = self.inventory(n)
        world = self.world(inventory)
        env = drctl_env(state)

        def counted(argv: list[str], sample: bool) -> tuple[Measured, dict[str, int]]:
            s0, l0, (b0, c0) = self.serials(), self.logins(), self.relay.counts()
            m = run(argv, env, timeout=900, sample=sample)
            if m.rc != 0:
                raise RuntimeError(f"{argv[1:4]} on {n} services exited {m.rc}: {m.failure()}")
            b1, c1 = self.relay.counts()
            return m, {"updates": self.serials() - s0, "logins": self.logins() - l0, "lb_sessions": b1 - b0,
                       "lb_commands": c1 - c0}

        def back() -> Measured:
            m, _ = counted(drctl_argv("failback", "--site", "dc1", "--yes", "-i", str(inventory)), False)
            diffs = world.differences("dc1")
            if diffs:
                raise RuntimeError(f"{n} services not back on dc1: {diffs[:5]}")
            return m

        results: dict[str, list[tuple[Measured, dict[str, int]]]] = {"drctl": [], "floor": []}
        backs = []
        for r in range(runs):
            for who in (("drctl", "floor") if r % 2 == 0 else ("floor", "drctl")):
                argv = (drctl_argv("failover", "--site", "dc1", "--yes", "--json", "-i", str(inventory))
                        if who == "drctl" else [sys.executable, str(FLOOR), "-i", str(inventory), "--site", "dc1"])
                m, c = counted(argv, who == "drctl")
                diffs = world.differences("dc2")
                if diffs:
                    raise RuntimeError(f"{who} did not move {n} services: {len(diffs)} differ, e.g. {diffs[:5]}")
                results[who].append((m, c))
                backs.append(back())
            say(f"  {n} services, round {r + 1}: drctl {results['drctl'][-1][0].wall_s:.2f}s, "
                f"floor {results['floor'][-1][0].wall_s:.2f}s, failback {backs[-1].wall_s:.2f}s")
        drctl = [m for m, _ in results["drctl"]]
        median_run = sorted(drctl, key=lambda m: m.wall_s)[len(drctl) // 2]
        counts = results["drctl"][-1][1]
        floor_counts = results["floor"][-1][1]
        return {
            "services": n, "hosts": 2 * HOSTS_PER_SITE, "waves": WAVES, "zones": 2,
            "haproxy_services": len([i for i in range(n) if i % 5 == 0]),
            "drctl_s": med([m.wall_s for m in drctl]), "floor_s": med([m.wall_s for m, _ in results["floor"]]),
            "drctl_failback_s": med([m.wall_s for m in backs]),
            "drctl_engine_s": med([m.json()["elapsed_s"] for m in drctl]),
            "drctl_phases": where_time_goes(median_run, state),
            "ssh_logins": counts["logins"], "dns_updates": counts["updates"], "lb_sessions": counts["lb_sessions"],
            "lb_commands": counts["lb_commands"],
            "floor_ssh_logins": floor_counts["logins"], "floor_dns_updates": floor_counts["updates"],
            "floor_lb_sessions": floor_counts["lb_sessions"],
            "peak_rss_mb": round(max(m.maxrss_kb for m in drctl) / 1024, 1),
            "peak_fds": max(m.peak_fds for m in drctl), "peak_threads": max(m.peak_threads for m in drctl),
        }


# --- main --------------------------------------------------------------------------------------------


def machine() -> str:
    mem = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal:")), 0)
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.machine())
    return f"{os.cpu_count()} x {model}, {mem / 1024 / 1024:.0f} GiB, Linux {platform.release()}, " \
           f"Python {platform.python_version()}"


def inside(args: argparse.Namespace) -> int:
    from drctl.lab.lab import lab_down, lab_up

    result: dict[str, Any] = {"machine": machine(), "netns": args.inside,
                              "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    work = Path(tempfile.mkdtemp(prefix="drctl-bench-cp-"))
    lab = None
    scale: Scale | None = None
    try:
        lab = lab_up(work / "lab")
        state = work / "state"
        paired = Paired(lab, state)
        rec = run(drctl_argv("verify", "web", "--record-baseline", "-i", str(paired.inventory)), paired.env)
        if rec.rc != 0:  # the site-down case then verifies without one (a warning, policy warn)
            result["baseline_error"] = " ".join(rec.err.split())[-500:]
            say(f"recording web's baseline failed: {result['baseline_error']}")
        for case in [c for c in args.cases.split(",") if c]:
            say(f"{case}: {args.pairs} pairs (floor, drctl in turn), lab reset after each run")
            try:
                result[case] = r = paired.case(case, args.pairs, args.warmup)
            except Exception as e:  # noqa: BLE001 - said in the JSON; the other cases still run
                result[case] = {"error": f"{type(e).__name__}: {e}"[-1500:]}
                say(f"{case}: FAILED: {result[case]['error']}")
                continue
            say(f"{case}: median floor {r['floor_s']:.3f}s, drctl {r['drctl_s']:.3f}s, ratio {r['ratio']:.2f} "
                f"(excess {r['excess_s']:.3f}s): {r['target']}: {'met' if r['met'] else 'NOT met'}")
        sizes = [int(x) for x in args.scale.split(",") if x]
        if sizes:
            say(f"scaling: starting {2 * HOSTS_PER_SITE} sshd, lb2 and {max(sizes)} services' records")
            scale = Scale(lab, work / "scale", max(sizes))
            result["scale"] = {}
            for n in sizes:
                try:
                    result["scale"][str(n)] = r = scale.measure(n, args.scale_runs, work / f"state-{n}")
                except Exception as e:  # noqa: BLE001 - said in the JSON
                    result["scale"][str(n)] = {"error": f"{type(e).__name__}: {e}"[-1500:]}
                    say(f"{n} services: FAILED: {result['scale'][str(n)]['error']}")
                    continue
                say(f"{n} services: drctl {r['drctl_s']:.2f}s (floor {r['floor_s']:.2f}s); per run: SSH logins "
                    f"{r['ssh_logins']} ({r['hosts']} hosts), DNS UPDATEs {r['dns_updates']} ({r['zones']} zones x "
                    f"{r['waves']} waves), balancer sessions {r['lb_sessions']} / commands {r['lb_commands']}; peak "
                    f"RSS {r['peak_rss_mb']} MiB, fds {r['peak_fds']}, threads {r['peak_threads']}")
            ok = [r for r in result["scale"].values() if "error" not in r]
            if len(ok) >= 2:
                big, small = max(ok, key=lambda r: r["services"]), min(ok, key=lambda r: r["services"])
                result["scale_summary"] = {
                    "services_ratio": round(big["services"] / small["services"], 1),
                    "wall_ratio": round(big["drctl_s"] / small["drctl_s"], 2),
                    "one_login_per_host": all(r["ssh_logins"] <= r["hosts"] for r in ok),
                    "one_update_per_zone_and_wave": all(r["dns_updates"] <= r["zones"] * r["waves"] for r in ok),
                    "one_balancer_session": all(r["lb_sessions"] <= 1 for r in ok),
                }
    except Exception as e:  # noqa: BLE001 - the JSON line says what stopped the benchmark
        result["error"] = f"{type(e).__name__}: {e}"[-2000:]
        say(f"FAILED: {result['error']}")
    finally:
        if scale is not None:
            scale.stop()
        if lab is not None:
            lab_down(lab.dir)
        result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))
    return 1 if "error" in result else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=7, help="paired runs per case (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="uncounted runs of each before a case")
    ap.add_argument("--cases", default="healthy,site-down,black-holed")
    ap.add_argument("--scale", default="10,100,500", help="service counts, comma-separated; empty to skip")
    ap.add_argument("--scale-runs", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--inside", help=argparse.SUPPRESS)
    args, _ = ap.parse_known_args()
    if args.inside:
        return inside(args)
    return outer(args, [a for a in sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
