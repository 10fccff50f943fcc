"""Crash harness: ``drctl failover`` killed with SIGKILL at a random moment, then ``drctl resume``.

What it measures, on the real local lab (sshd, BIND, HAProxy, HTTP origins on 127.0.0.1), with
the lab's three services chained ``db <- api <- web``:

- whether the end state is consistent after the resume: every authoritative server (ns1, ns2)
  answers the dc2 values, HAProxy serves dc2 for web and api with dc1 in maintenance, the db
  marker file is on app2 and not on app1, and ``drctl history`` and ``drctl status`` agree that
  the run succeeded and every service is served from dc2;
- side effects applied twice: DNS UPDATEs beyond one per record (SOA serial bumps per zone
  against the records that had to flip) and HAProxy ``set server B/S state X`` commands sent
  more than once, counted by a relay between drctl and HAProxy's runtime API. A repeat of the
  action that was in flight when the run was killed is by design (resume repeats the in-flight
  step): those count as ``inflight``, every other repeat as ``completed``;
- how long the resume took, how often the kill came before the run journaled its start (a new
  failover is started instead) or after it finished (nothing to resume).

The moment of the kill is uniform between 0 and the wall time of a full failover, measured first;
``--seed`` makes the sequence repeatable and ``--kill-at`` replays given moments. One lab serves
every trial: each ends with ``drctl failback --site dc1 --yes``, and the reset state is checked
before the next trial. Last line: one JSON object.

Usage: python bench/crash_harness.py --trials N [--seed S] [--kill-at SECONDS ...]
"""

from __future__ import annotations

import argparse
import json
import os
import random
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
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from drctl.lab.lab import LabInfo, lab_down, lab_up

DC1 = {"www.example.test": "192.0.2.10", "api.example.test": "192.0.2.11", "db.internal.test": "10.1.0.5"}
DC2 = {"www.example.test": "198.51.100.10", "api.example.test": "198.51.100.11", "db.internal.test": "10.2.0.5"}
ZONES = {"example.test": ("www.example.test", "api.example.test"), "internal.test": ("db.internal.test",)}
SERVICES = ("db", "api", "web")
BACKENDS = {"web": "web", "api": "api"}  # HAProxy backend -> service
NAMESERVERS = ("ns1", "ns2")
INVENTORY_NAME = "crash-inventory.yaml"

RUN_TIMEOUT_S = 180.0  # one drctl failover / resume / failback process, at most
READ_TIMEOUT_S = 60.0  # drctl history / status
RESUME_ATTEMPTS = 3  # a resume is repeated only when it says to resume again


class HarnessError(Exception):
    """The harness cannot go on (the lab could not be reset, a process hung)."""


# --- the counting relay in front of HAProxy's runtime API ---------------------------------------


@dataclass
class RelayEvent:
    t: float  # time.monotonic()
    phase: str
    command: str


class _RelayServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    relay: CountingRelay


class _RelayHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server = self.server
        assert isinstance(server, _RelayServer)
        relay = server.relay
        client: socket.socket = self.request
        client.settimeout(10.0)
        buf = b""
        try:
            while b"\n" not in buf:
                chunk = client.recv(4096)
                if not chunk:
                    break
                buf += chunk
        except OSError:
            return
        line, sep, _ = buf.partition(b"\n")
        if not sep:  # the client went away before the end of its command: HAProxy would not run it
            return
        relay.record(line.decode("utf-8", errors="replace").strip())
        try:
            with socket.create_connection(relay.upstream, timeout=10.0) as up:
                up.sendall(buf)
                while data := up.recv(65536):
                    try:
                        client.sendall(data)
                    except OSError:  # the client died; HAProxy still got the whole command
                        break
        except OSError:
            return


class CountingRelay:
    """A TCP relay on 127.0.0.1 (port picked by the OS) that forwards each connection to HAProxy's
    admin port and records every command line, tagged with the harness's current ``phase``."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.phase = "setup"
        self.events: list[RelayEvent] = []
        self._lock = threading.Lock()
        self._server = _RelayServer(("127.0.0.1", 0), _RelayHandler)
        self._server.relay = self
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="haproxy-relay", daemon=True)

    def __enter__(self) -> CountingRelay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def record(self, command: str) -> None:
        with self._lock:
            self.events.append(RelayEvent(time.monotonic(), self.phase, command))

    def mark(self) -> int:
        with self._lock:
            return len(self.events)

    def since(self, mark: int) -> list[RelayEvent]:
        with self._lock:
            return list(self.events[mark:])


def set_server_commands(events: list[RelayEvent]) -> Counter[tuple[str, str, str]]:
    """(backend, server, state) -> how many ``set server B/S state X`` commands were sent."""
    out: Counter[tuple[str, str, str]] = Counter()
    for e in events:
        words = e.command.split()
        if len(words) == 5 and words[:2] == ["set", "server"] and words[3] == "state" and "/" in words[2]:
            backend, server = words[2].split("/", 1)
            out[(backend, server, words[4])] += 1
    return out


# --- drctl as a process ---------------------------------------------------------------------------


@dataclass
class Proc:
    rc: int | None  # None: killed
    out: str
    err: str
    seconds: float

    def json(self) -> Any:
        try:
            return json.loads(self.out)
        except ValueError:
            return None


def drctl_env(state: Path, inventory: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRCTL_")}
    env.update({"DRCTL_STATE_DIR": str(state), "DRCTL_INVENTORY": str(inventory), "NO_COLOR": "1",
                "COLUMNS": "200"})
    return env


def drctl(*args: str, state: Path, inventory: Path, timeout: float, log: Path | None = None) -> Proc:
    t0 = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-m", "drctl", *args], capture_output=True, text=True,
                              timeout=timeout, env=drctl_env(state, inventory), stdin=subprocess.DEVNULL,
                              check=False)
    except subprocess.TimeoutExpired as e:
        raise HarnessError(f"drctl {' '.join(args)} did not finish within {timeout:.0f}s") from e
    proc = Proc(done.returncode, done.stdout, done.stderr, time.monotonic() - t0)
    if log is not None:
        log.write_text(f"$ drctl {' '.join(args)}\nrc={proc.rc} in {proc.seconds:.3f}s\n--- stdout\n{proc.out}"
                       f"\n--- stderr\n{proc.err}\n")
    return proc


def read_journal(state: Path) -> tuple[str | None, list[dict[str, Any]]]:
    """(run id, its records) of the newest journal in ``state`` (a torn last line is dropped)."""
    runs = state / "runs"
    files = sorted(runs.glob("*.jsonl"), key=lambda p: p.stat().st_mtime) if runs.exists() else []
    if not files:
        return None, []
    records = []
    for line in files[-1].read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            break
    return files[-1].stem, records


def in_flight(records: list[dict[str, Any]]) -> list[str]:
    """Action ids started and not finished (in the order they started)."""
    open_: dict[str, None] = {}
    for r in records:
        if r.get("event") == "action_started":
            open_[r["action"]] = None
        elif r.get("event") == "action_finished":
            open_.pop(r["action"], None)
    return list(open_)


def action_kinds(records: list[dict[str, Any]]) -> dict[str, str]:
    """Action id -> its kind, from the journal's ``action_started`` records."""
    return {r["action"]: str(r.get("kind")) for r in records if r.get("event") == "action_started"}


# --- the lab ---------------------------------------------------------------------------------------


def chained_inventory(lab: LabInfo, relay_port: int) -> Path:
    """The lab's inventory with web -> api -> db and lb1's admin on the relay, next to the lab's
    own inventory (its relative key paths resolve against that directory)."""
    inv = yaml.safe_load(lab.inventory.read_text())
    inv["services"]["web"]["depends_on"] = ["api"]
    assert inv["services"]["api"].get("depends_on") == ["db"], inv["services"]["api"]
    inv["load_balancers"]["lb1"]["admin"] = f"tcp://127.0.0.1:{relay_port}"
    path = lab.inventory.parent / INVENTORY_NAME
    path.write_text(yaml.safe_dump(inv, sort_keys=False, width=120))
    return path


def refresh_backups(lab: LabInfo, max_age_s: float = 1800.0) -> None:
    """Keep the newest backup of each service well within its 1h RPO on a long bench run."""
    now = time.time()
    for host in ("app1", "app2"):
        for service in SERVICES:
            files = sorted(lab.backup_dir(host, service).glob("*.tar.gz"), key=lambda p: p.stat().st_mtime)
            if files and now - files[-1].stat().st_mtime > max_age_s:
                os.utime(files[-1], (now - 60, now - 60))


def serials(lab: LabInfo) -> dict[str, int]:
    return {zone: lab.soa_serial(zone) for zone in ZONES}


def world_differences(lab: LabInfo, site: str) -> list[str]:
    """What in the lab is not as it should be with every service on ``site`` (read with plain
    tools: dig, HTTP through HAProxy's frontends, HAProxy's own server states, the marker file)."""
    want = DC2 if site == "dc2" else DC1
    other = "dc1" if site == "dc2" else "dc2"
    out = []

    def dig(ns: str, name: str) -> list[str]:
        try:
            return lab.dig(name, "A", server=ns)
        except Exception as e:  # noqa: BLE001 - reported as a difference
            return [f"error: {e}"]

    asks = [(ns, name) for ns in NAMESERVERS for name in want]
    with ThreadPoolExecutor(max_workers=len(asks), thread_name_prefix="dig") as pool:
        answers = list(pool.map(lambda a: dig(*a), asks))
    for (ns, name), got in zip(asks, answers, strict=True):
        if got != [want[name]]:
            out.append(f"{ns} answers {name} {got}, expected [{want[name]}] ({site})")
    for backend in BACKENDS:
        for _ in range(3):  # a few requests: the other site must never answer
            try:
                body = lab.http_get_frontend(backend).strip()
            except Exception as e:  # noqa: BLE001
                body = f"error: {e}"
            if body != f"{backend}@{site}":
                out.append(f"HAProxy frontend {backend} serves {body!r}, expected {backend}@{site}")
                break
    try:
        states = lab.haproxy_state()
    except Exception as e:  # noqa: BLE001
        states = {}
        out.append(f"HAProxy state unreadable: {e}")
    for backend in BACKENDS:
        on, off = states.get((backend, site)), states.get((backend, other))
        if on is None or off is None:
            out.append(f"HAProxy does not list {backend}/{site} and {backend}/{other}")
            continue
        if on["admin_state"] & 0x01 or on["op_state"] != 2:
            out.append(f"HAProxy {backend}/{site} is not UP and ready: {on}")
        if not off["admin_state"] & 0x01:
            out.append(f"HAProxy {backend}/{other} is not in maintenance: {off}")
    here = "app2" if site == "dc2" else "app1"
    there = "app1" if site == "dc2" else "app2"
    if not (lab.host_root(here) / "db-active").exists():
        out.append(f"db marker missing on {here}")
    if (lab.host_root(there) / "db-active").exists():
        out.append(f"db marker still on {there}")
    return out


# --- one trial --------------------------------------------------------------------------------------


@dataclass
class TrialResult:
    index: int
    kill_at: float
    run_id: str | None
    kind: str  # killed_mid_run | killed_before_start | killed_after_finish | finished_before_kill
    last_event: str  # the journal's last record when killed
    in_flight: list[str]  # action ids in flight when killed
    consistent: bool = True
    reasons: list[str] = field(default_factory=list)
    resume_seconds: float | None = None
    resume_attempts: int = 0
    serial_delta: dict[str, int] = field(default_factory=dict)
    dns_applied_twice: int = 0
    dns_updated_by_journal: dict[str, int] = field(default_factory=dict)  # name -> times in flip_dns "updated"
    set_server: dict[str, int] = field(default_factory=dict)  # "B/S state X" -> commands sent
    haproxy_repeated_inflight: int = 0
    haproxy_repeated_completed: int = 0
    converge: list[dict[str, Any]] = field(default_factory=list)  # the journal's converge records with findings
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each phase of the trial
    dir: str = ""


class CrashHarness:
    """One lab, one relay, one chained inventory; ``trial()`` as many times as wanted."""

    def __init__(self, lab: LabInfo, work: Path, *, keep: Path | None = None, verbose: bool = False) -> None:
        self.lab = lab
        self.work = Path(work)
        self.keep = keep
        self.verbose = verbose
        self.relay = CountingRelay(lab.ports["haproxy-lb1"])
        self.inventory = Path()
        self.full_run_s: float | None = None
        self._reset_checked = False

    def __enter__(self) -> CrashHarness:
        self.work.mkdir(parents=True, exist_ok=True)
        self.relay.__enter__()
        self.inventory = chained_inventory(self.lab, self.relay.port)
        return self

    def __exit__(self, *exc: object) -> None:
        self.relay.__exit__(*exc)

    def say(self, text: str) -> None:
        if self.verbose:
            print(text, file=sys.stderr, flush=True)

    # --- measuring and resetting -------------------------------------------------------------

    def measure(self, runs: int = 2) -> float:
        """The median wall time of a full failover process (spawn to exit), each followed by a reset."""
        times = []
        for i in range(runs):
            d = self.work / f"measure-{i}"
            d.mkdir(parents=True, exist_ok=True)
            refresh_backups(self.lab)
            self.relay.phase = "measure"
            p = drctl("failover", "--site", "dc1", "--yes", "--json", state=d / "state", inventory=self.inventory,
                      timeout=RUN_TIMEOUT_S, log=d / "failover.log")
            result = p.json() or {}
            if p.rc != 0 or result.get("status") != "succeeded":
                raise HarnessError(f"a full failover failed (rc {p.rc}): {p.err.strip()[-2000:]}")
            problems = world_differences(self.lab, "dc2")
            if problems:
                raise HarnessError(f"a full failover left: {problems}")
            times.append(p.seconds)
            self.reset(d)
        self.full_run_s = statistics.median(times)
        self.say(f"full failover: {', '.join(f'{t:.2f}' for t in times)} s; median {self.full_run_s:.2f} s")
        return self.full_run_s

    def reset(self, d: Path) -> None:
        """``drctl failback --site dc1 --yes`` and check the lab is back on dc1."""
        self.relay.phase = "reset"
        p = drctl("failback", "--site", "dc1", "--yes", "--json", state=d / "reset-state",
                  inventory=self.inventory, timeout=RUN_TIMEOUT_S, log=d / "reset.log")
        problems = world_differences(self.lab, "dc1")
        if p.rc != 0 or problems:
            if self.keep is not None:
                shutil.copytree(d, self.keep / d.name, dirs_exist_ok=True)
                d = self.keep / d.name
            self._reset_checked = False
            raise HarnessError(f"reset to dc1 failed (rc {p.rc}; see {d / 'reset.log'}): {problems}")
        self._reset_checked = True

    # --- a trial -------------------------------------------------------------------------------

    def trial(self, index: int, kill_at: float) -> TrialResult:
        d = self.work / f"trial-{index:03d}"
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        state = d / "state"
        refresh_backups(self.lab)
        before = serials(self.lab)
        if not self._reset_checked:  # afterwards, every reset checks the state it leaves
            start_problems = world_differences(self.lab, "dc1")
            if start_problems:
                raise HarnessError(f"trial {index} does not start from dc1: {start_problems}")
            self._reset_checked = True
        mark = self.relay.mark()

        # 1. the failover, killed at kill_at seconds after it was spawned
        t_phase = time.monotonic()
        self.relay.phase = "failover"
        with open(d / "failover.out", "w") as out, open(d / "failover.err", "w") as err:
            proc = subprocess.Popen([sys.executable, "-m", "drctl", "failover", "--site", "dc1", "--yes", "--json"],
                                    env=drctl_env(state, self.inventory), stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=err)
            killed = False
            try:
                proc.wait(timeout=kill_at)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                killed = True
            finally:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        run_id, records = read_journal(state)
        killed_records = records
        events = [r.get("event") for r in records]
        flying = in_flight(records)
        if "run_started" not in events:
            kind = "killed_before_start"
        elif "run_finished" in events:
            kind = "killed_after_finish" if killed else "finished_before_kill"
        else:
            kind = "killed_mid_run"
        last = records[-1] if records else {}
        last_event = f"{last.get('event', '-')} {last.get('action', '')}".strip()
        res = TrialResult(index, round(kill_at, 3), run_id, kind, last_event, flying, dir=str(d))
        res.seconds["failover"] = round(time.monotonic() - t_phase, 3)
        t_phase = time.monotonic()
        self.say(f"trial {index}: killed at {kill_at:.2f}s: {kind}, last {last_event}, in flight {flying}")

        # 2. carry on: a new failover, a resume, or nothing
        if kind == "killed_before_start":
            self.relay.phase = "rerun"
            p = drctl("failover", "--site", "dc1", "--yes", "--json", state=state, inventory=self.inventory,
                      timeout=RUN_TIMEOUT_S, log=d / "rerun.log")
            run_id = res.run_id = (p.json() or {}).get("run_id")
            if p.rc != 0:
                res.reasons.append(f"the new failover failed with rc {p.rc}: {p.err.strip()[-500:]}")
        elif run_id is not None and (kind == "killed_mid_run" or _final_status(records) != "succeeded"):
            self.relay.phase = "resume"
            t0 = time.monotonic()
            for attempt in range(1, RESUME_ATTEMPTS + 1):
                res.resume_attempts = attempt
                p = drctl("resume", run_id, "--yes", "--json", state=state, inventory=self.inventory,
                          timeout=RUN_TIMEOUT_S, log=d / f"resume-{attempt}.log")
                result = p.json() or {}
                if p.rc == 0 and result.get("status") == "succeeded":
                    break
                says = f"{p.err} {result.get('message', '')} {' '.join(result.get('warnings') or [])}"
                if "resume" not in says.lower() or attempt == RESUME_ATTEMPTS:
                    res.reasons.append(f"resume attempt {attempt} ended rc {p.rc}, status {result.get('status')}: "
                                       f"{result.get('message') or p.err.strip()[-500:]}")
                    break
            res.resume_seconds = round(time.monotonic() - t0, 3)
            if res.resume_attempts > 1:
                res.reasons.append(f"note: resume needed {res.resume_attempts} attempts")

        res.seconds["carry_on"] = round(time.monotonic() - t_phase, 3)

        # 3. the end state: the world read with plain tools while drctl status runs (drctl history
        # reads only the journal: it runs during the reset, below)
        t_check = time.monotonic()
        self.relay.phase = "check"
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="check") as pool:
            status_f = pool.submit(drctl, "status", "--json", state=state, inventory=self.inventory,
                                   timeout=READ_TIMEOUT_S, log=d / "status.log")
            res.reasons += world_differences(self.lab, "dc2")
            status = status_f.result()
        res.seconds["check"] = round(time.monotonic() - t_check, 3)
        srows = {r.get("service"): r for r in (status.json() or {}).get("services", [])}
        for svc in SERVICES:
            row = srows.get(svc)
            if row is None:
                res.reasons.append(f"drctl status (rc {status.rc}) does not list {svc}")
            elif (row.get("serving"), row.get("dns"), row.get("traffic")) != ("dc2", "dc2", "dc2"):
                res.reasons.append(f"drctl status says {svc}: {row.get('where')} (DNS {row.get('dns')}: "
                                   f"{row.get('dns_detail')}; traffic {row.get('traffic')}: "
                                   f"{row.get('traffic_detail')})")
            elif (row.get("last_run") or {}).get("run_id") != run_id or row["last_run"].get("result") != "succeeded":
                res.reasons.append(f"drctl status's last run of {svc}: {row.get('last_run')}")

        # 4. side effects applied twice
        after = serials(self.lab)
        res.serial_delta = {z: after[z] - before[z] for z in ZONES}
        res.dns_applied_twice = sum(max(0, res.serial_delta[z] - len(names)) for z, names in ZONES.items())
        records = _read(state, run_id) if run_id else []
        kinds = action_kinds(records)
        names: Counter[str] = Counter()
        for r in records:
            if r.get("event") == "action_finished" and kinds.get(r.get("action", "")) == "flip_dns":
                names.update(str(n).rstrip(".") for n in (r.get("data") or {}).get("updated") or [])
            if r.get("event") == "converge" and (r.get("found") or r.get("repairs")):
                res.converge.append({k: r.get(k) for k in ("service", "found", "remaining", "repairs")})
        res.dns_updated_by_journal = dict(names)
        if res.dns_applied_twice:
            res.reasons.append(f"DNS UPDATE applied twice: SOA serials went up by {res.serial_delta} for "
                               f"{ {z: len(n) for z, n in ZONES.items()} } records to flip; journal: {dict(names)}")
        sent = set_server_commands([e for e in self.relay.since(mark) if e.phase in ("failover", "rerun", "resume")])
        res.set_server = {f"{b}/{s} state {st}": n for (b, s, st), n in sorted(sent.items())}
        flying_kinds = action_kinds(killed_records)
        flying_services = {a.split("/")[0] for a in flying if flying_kinds.get(a) == "reroute_traffic"}
        for (backend, _server, _state), n in sent.items():
            repeats = n - 1
            if repeats <= 0:
                continue
            allowed = 1 if BACKENDS.get(backend) in flying_services else 0
            res.haproxy_repeated_inflight += min(repeats, allowed)
            res.haproxy_repeated_completed += repeats - min(repeats, allowed)
        if res.haproxy_repeated_completed:
            res.reasons.append(f"HAProxy commands of a completed action sent again: {res.set_server} "
                               f"(in flight when killed: {flying})")

        # 5. back to dc1 for the next trial, while drctl history reads this trial's journal
        t_phase = time.monotonic()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="history") as pool:
            hist_f = pool.submit(drctl, "history", "--json", state=state, inventory=self.inventory,
                                 timeout=READ_TIMEOUT_S, log=d / "history.log")
            self.reset(d)
            hist = hist_f.result()
        res.seconds["reset"] = round(time.monotonic() - t_phase, 3)
        rows = hist.json() or []
        mine = next((r for r in rows if r.get("run_id") == run_id), None)
        if hist.rc != 0 or mine is None or mine.get("status") != "succeeded":
            res.reasons.append(f"drctl history: run {run_id} is {mine and mine.get('status')} (rc {hist.rc})")

        res.consistent = not [r for r in res.reasons if not r.startswith("note:")]
        if not res.consistent and self.keep is not None:
            self.keep.mkdir(parents=True, exist_ok=True)
            (d / "relay.jsonl").write_text("".join(json.dumps(asdict(e)) + "\n" for e in self.relay.since(mark)))
            (d / "trial.json").write_text(json.dumps(asdict(res), indent=2) + "\n")
            shutil.copytree(d, self.keep / d.name, dirs_exist_ok=True)
            res.dir = str(self.keep / d.name)
        self.say(f"trial {index}: {'consistent' if res.consistent else 'INCONSISTENT'}; serials {res.serial_delta}; "
                 f"set server {res.set_server}; resume {res.resume_seconds}s; {res.reasons}")
        return res


def _final_status(records: list[dict[str, Any]]) -> str | None:
    ends = [r for r in records if r.get("event") == "run_finished"]
    return ends[-1].get("status") if ends else None


def _read(state: Path, run_id: str) -> list[dict[str, Any]]:
    path = state / "runs" / f"{run_id}.jsonl"
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except ValueError:
            break
    return out


def summarize(results: list[TrialResult], *, seed: int | None, full_run_s: float | None) -> dict[str, Any]:
    resumes = [r.resume_seconds for r in results if r.resume_seconds is not None]
    bad = [r for r in results if not r.consistent]
    return {
        "trials": len(results),
        "seed": seed,
        "full_run_s": None if full_run_s is None else round(full_run_s, 3),
        "consistent": len(results) - len(bad),
        "inconsistent": len(bad),
        "inconsistencies": [{"trial": r.index, "kill_at": r.kill_at, "run_id": r.run_id, "kind": r.kind,
                             "in_flight": r.in_flight, "reasons": r.reasons, "dir": r.dir} for r in bad],
        "dns_updates_applied_twice": sum(r.dns_applied_twice for r in results),
        "haproxy_commands_repeated": {"inflight": sum(r.haproxy_repeated_inflight for r in results),
                                      "completed": sum(r.haproxy_repeated_completed for r in results)},
        "killed_before_start": sum(r.kind == "killed_before_start" for r in results),
        "killed_mid_run": sum(r.kind == "killed_mid_run" for r in results),
        "killed_after_finish": sum(r.kind in ("killed_after_finish", "finished_before_kill") for r in results),
        "converge_repairs": sum(bool(r.converge) for r in results),
        "phase_seconds_median": {k: round(statistics.median(r.seconds[k] for r in results if k in r.seconds), 3)
                                 for k in ("failover", "carry_on", "check", "reset")
                                 if any(k in r.seconds for r in results)},
        "resume_attempts_max": max((r.resume_attempts for r in results), default=0),
        "resume_seconds": {"median": round(statistics.median(resumes), 3) if resumes else None,
                           "max": round(max(resumes), 3) if resumes else None, "count": len(resumes)},
    }


def run_trials(h: CrashHarness, trials: int, seed: int | None, kill_at: list[float] | None = None,
               measure_runs: int = 2) -> dict[str, Any]:
    """Measure a full run, then ``trials`` trials killed at seeded random moments (or at ``kill_at``).
    A trial the harness could not finish (a reset that failed, a process that hung) counts as
    inconsistent; after a second failed reset the remaining trials are not run."""
    full = h.measure(measure_runs) if not kill_at else h.full_run_s
    rng = random.Random(seed)
    moments = list(kill_at) if kill_at else [rng.uniform(0.0, full or 0.0) for _ in range(trials)]
    results: list[TrialResult] = []
    stopped = None
    for i, t in enumerate(moments):
        try:
            results.append(h.trial(i, t))
        except HarnessError as e:
            d = h.work / f"trial-{i:03d}"
            results.append(TrialResult(i, round(t, 3), None, "harness_error", "", [], consistent=False,
                                       reasons=[f"harness: {e}"], dir=str(d)))
            h.say(f"trial {i}: harness error: {e}")
            try:
                h.reset(d)
            except HarnessError as again:
                stopped = f"after trial {i}: the lab could not be reset: {again}"
                break
    summary = summarize(results, seed=seed, full_run_s=full)
    if stopped:
        summary["stopped"] = stopped
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=None, help="seed of the kill moments (default: random, printed)")
    ap.add_argument("--kill-at", type=float, nargs="+", default=None, metavar="SECONDS",
                    help="replay these kill moments (seconds after spawn) instead of random ones")
    ap.add_argument("--measure-runs", type=int, default=3, help="full failovers timed before the trials")
    ap.add_argument("--keep", type=Path, default=None,
                    help="copy inconsistent trials (journal, outputs, relay log) here (default: a new /tmp dir)")
    ap.add_argument("-v", "--verbose", action="store_true", help="one line per trial on stderr")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    keep = args.keep or Path(tempfile.mkdtemp(prefix="drctl-crash-repro-"))
    with tempfile.TemporaryDirectory(prefix="drctl-crash-") as tmp:
        lab = lab_up(Path(tmp) / "lab")
        try:
            with CrashHarness(lab, Path(tmp) / "work", keep=keep, verbose=args.verbose) as h:
                if args.kill_at:
                    h.measure(1)
                summary = run_trials(h, args.trials, seed, args.kill_at, args.measure_runs)
        finally:
            lab_down(lab.dir)
    if summary["inconsistent"]:
        print(f"inconsistent trials kept in {keep}", file=sys.stderr)
    elif not args.keep:
        shutil.rmtree(keep, ignore_errors=True)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
