"""Drills: a real failover of services to their backup site and back, measured and recorded.

One drill, for the selected services, holding their leases from start to end:

1. **Start state**: every service must be served from its primary (DNS, HAProxy, journal);
   otherwise the drill is refused with nothing changed.
2. **Failover**: a journaled run of the drill playbook (its gate: backup fresh and healthy; a
   refusal ends the drill with nothing changed).
3. **Real path**: each service is checked as clients reach it: every authoritative DNS server
   answers the backup's values, and the load balancer's frontend serves what the backup's health
   check expects. The RTO achieved is the time from the drill's start until this check passed;
   the RPO exposure is the age of the newest backup at failover time (the gate measured it).
4. **Failback**: a journaled run of the failback playbook for every service the failover touched,
   forced past its gate (production goes back to where it was before the drill), then the real
   path checked again for the primary. A service whose failover failed is returned the same way.
5. **State**: DNS and HAProxy are read once more, and each service's final site is recorded.

The drill record ``<state>/drills/<drill_id>.json`` is rewritten atomically after each phase, so
an interrupted drill still says how far it got and which runs it started.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drctl.core import drill as verdict
from drctl.core.plan import build_plan, zone_of
from drctl.core.status import Location, locate
from drctl.engine.runner import Reporter, Runner, RunResult, SilentReporter, run_meta
from drctl.engine.steps import Context
from drctl.engine.store import HeldLease, State, new_run_id, open_state
from drctl.errors import DrctlError, RunNotFoundError
from drctl.model.inventory import HAProxyTraffic
from drctl.model.playbook import Playbook
from drctl.units import format_duration

_DRILL_ID = re.compile(r"^[0-9]{8}T[0-9]{6}Z-drill-[0-9a-f]{6}$")
DNS_PROBE_S = 5.0  # how long the real-path check waits for every server to answer the new values


# --- the record ----------------------------------------------------------------------------------


class DrillStore:
    """Drill records: ``<state>/drills/<drill_id>.json``, each written atomically."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "drills"

    @staticmethod
    def is_drill_id(drill_id: str) -> bool:
        return bool(_DRILL_ID.match(drill_id))

    def path(self, drill_id: str) -> Path:
        if not self.is_drill_id(drill_id):
            raise RunNotFoundError(f"{drill_id!r} is not a drill id")
        return self.dir / f"{drill_id}.json"

    def write(self, record: dict[str, Any]) -> Path:
        path = self.path(record["drill_id"])
        self.dir.mkdir(parents=True, exist_ok=True)
        from drctl.core.redact import redact

        write_atomic(path, json.dumps(redact(record), indent=1, sort_keys=False, default=str) + "\n")
        return path

    def read(self, drill_id: str) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.path(drill_id).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunNotFoundError(f"no drill {drill_id} in {self.dir}") from None
        except (OSError, ValueError) as e:
            raise RunNotFoundError(f"drill record {drill_id} is unreadable: {e}") from None
        return data

    def list(self) -> list[str]:
        """Drill ids, newest first."""
        if not self.dir.exists():
            return []
        return sorted((p.stem for p in self.dir.glob("*.json") if _DRILL_ID.match(p.stem)), reverse=True)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so readers see the old or the new content, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- the real path -------------------------------------------------------------------------------


@dataclass
class Probe:
    """The result of checking one service through the real path."""

    service: str
    phase: str
    site: str
    status: str  # ok | failed | skipped
    detail: str
    started: float
    finished: float

    def to_dict(self) -> dict[str, Any]:
        return {"id": f"{self.service}/real-path-{self.site}", "service": self.service, "phase": self.phase,
                "kind": "real_path", "title": f"{self.site} serves through the real path (DNS, load balancer)",
                "started": self.started, "finished": self.finished,
                "elapsed_s": round(self.finished - self.started, 3), "status": self.status,
                "detail": self.detail, "data": {"site": self.site}}


def probe_real_path(ctx: Context, name: str, site: str, phase: str) -> Probe:
    """Every authoritative server answers ``site``'s values for the service's records, and the
    balancer's frontend (when the inventory names one) serves what ``site``'s health check expects."""
    from drctl.drivers.dns_rfc2136 import normalize_values, query
    from drctl.drivers.health import check_health

    inv = ctx.inventory
    svc = inv.services[name]
    t0 = time.time()
    parts: list[str] = []
    ok = True
    pending = {(srv, rec.fqdn(), rec.type): normalize_values(rec.type, rec.values_for(site))
               for rec in svc.dns
               for srv in dict.fromkeys([zone_of(inv, rec.zone).primary, *zone_of(inv, rec.zone).servers])}
    last: dict[tuple[str, str, str], str] = {}
    deadline = time.monotonic() + DNS_PROBE_S
    asked = sorted({srv for srv, _name, _type in pending})
    while pending:
        for key in list(pending):
            srv, fqdn, rdtype = key
            addr, port, timeout = ctx.dns_server(srv)
            try:
                got = sorted(query((addr, port), fqdn, rdtype, timeout=min(timeout, 2.0)))
            except DrctlError as e:
                last[key] = f"no answer ({e.message})"
                continue
            if got == pending[key]:
                del pending[key]
            else:
                last[key] = "answers " + (",".join(got) or "nothing")
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    if pending:
        ok = False
        parts.append("DNS: " + "; ".join(f"{s} {n} {t}: {last.get((s, n, t), '?')}" for s, n, t in sorted(pending)))
    elif asked:
        parts.append(f"DNS: {', '.join(asked)} answer {site}'s values")
    hc = verdict.frontend_check(inv, name, site)
    if hc is not None:
        res = check_health(hc)
        ok = ok and res.ok
        served = f", serving {hc.expect_body!r}" if res.ok and hc.expect_body else ""
        parts.append(("through the load balancer: " if res.ok else "load balancer path FAILED: ") + res.detail + served)
    if not parts:
        return Probe(name, phase, site, "skipped", "no DNS records and no load-balancer frontend to check",
                     t0, time.time())
    return Probe(name, phase, site, "ok" if ok else "failed", "; ".join(parts), t0, time.time())


def _probe_all(ctx: Context, names: list[str], sites: dict[str, str], phase: str) -> dict[str, Probe]:
    if not names:
        return {}
    with ThreadPoolExecutor(max_workers=min(8, len(names)), thread_name_prefix="probe") as pool:
        probes = list(pool.map(lambda n: probe_real_path(ctx, n, sites[n], phase), names))
    return {p.service: p for p in probes}


# --- the drill -----------------------------------------------------------------------------------


def _observe_locations(ctx: Context, names: list[str], journal: dict[str, str]) -> dict[str, Location]:
    from drctl.engine.observe import observe

    facts = observe(ctx.inventory, names)
    return {n: locate(ctx.inventory, n, facts, journal.get(n)) for n in names}


def _touched(result: RunResult) -> list[str]:
    """Services for which a step that changes things was attempted."""
    return sorted({r.action.service for r in result.records
                   if not r.action.gate and r.action.mutating and r.outcome.status not in ("planned", "blocked")})


def _rpo_exposure(result: RunResult, name: str, site: str) -> float | None:
    for r in result.records:
        if (r.action.service == name and r.action.kind == "check_freshness" and r.action.params.get("site") == site
                and r.outcome.data.get("age_s") is not None):
            return max(float(r.outcome.data["age_s"]), 0.0)
    return None


def _failed_steps(result: RunResult | None, name: str, phase: str) -> list[str]:
    if result is None:
        return []
    return [f"{phase} {r.action.kind}: {r.outcome.detail}" for r in sorted(result.records, key=lambda r: r.started)
            if r.action.service == name and r.outcome.status == "failed"]


#: gate checks a drill's return trip goes past (never health_check)
RETURN_OVERRIDES = frozenset({"check_freshness", "verify_integrity"})


class Drill:
    """One drill of ``services``; ``run()`` carries it out and returns the record (also stored)."""

    def __init__(self, ctx: Context, services: list[str], *, failover: Playbook, failback: Playbook,
                 state_dir: Path, meta: dict[str, Any] | None = None, reporter: Reporter | None = None,
                 max_workers: int = 8, clock: Callable[[], float] = time.time, state: State | None = None) -> None:
        """``state``: where the runs' journals and the leases are (default: the state directory)."""
        self.ctx = ctx
        self.inv = ctx.inventory
        self.services = list(services)
        self.failover_pb = failover
        self.failback_pb = failback
        self.state_dir = state_dir
        self.meta = dict(meta or {})
        self.reporter = reporter or SilentReporter()
        self.max_workers = max_workers
        self.clock = clock
        self.drill_id = new_run_id("drill")
        self.store = DrillStore(state_dir)
        self.state = state or open_state(None, state_dir)
        self.runs = self.state.runs
        self.record: dict[str, Any] = {}
        self._interrupted: str | None = None  # set by SIGINT / SIGTERM
        self._returning = False
        self._active: Runner | None = None

    # --- recording -------------------------------------------------------------------------------

    def _save(self) -> None:
        self.store.write(self.record)

    def _phase(self, phase: str, started: float, finished: float, status: str, run_id: str | None = None) -> None:
        self.record["phases"].append({"phase": phase, "run_id": run_id, "status": status, "started": started,
                                      "finished": finished})
        self._save()

    # --- running ---------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        started = self.clock()
        self.record = {
            "kind": "drill", "drill_id": self.drill_id, "status": "running", "exit_code": None,
            "started": started, "finished": None, **run_meta(self.meta),
            "services": {n: {"service": n, "status": "running", "primary": self.inv.services[n].primary,
                             "backup": self.inv.services[n].backup} for n in self.services},
            "phases": [], "runs": {"failover": None, "failback": None}, "probes": [], "final_state": {},
            "message": "",
        }
        leases = self._acquire()
        restore = self._catch_signals()
        try:
            self._save()
            return self._run(started)
        finally:
            restore()
            for lease in leases:
                lease.release()
            self.runs.close()

    def _catch_signals(self) -> Callable[[], None]:
        """Ctrl-C or SIGTERM (``systemctl stop``, a timer's timeout) during a drill: stop going
        forward, return every service it touched to the primary, record the result. The return
        trip itself is not interrupted. Returns what restores the previous handlers."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def on_signal(signum: int, _frame: Any) -> None:
            name = signal.Signals(signum).name
            if self._returning:
                self.reporter.message(f"{name}: the drill is returning services to the primary; waiting for it")
                return
            if self._interrupted is None:
                self._interrupted = f"interrupted by {name}"
                self.reporter.message(f"{name}: stopping the drill; every service it touched goes back to the primary")
            if self._active is not None:
                self._active.interrupt()

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

        def restore() -> None:
            for s, handler in old.items():
                signal.signal(s, handler)

        return restore

    def _acquire(self) -> list[HeldLease]:
        return list(self.state.leases.acquire_all(
            list(self.services), {"run_id": self.drill_id, "operation": "drill", "user": run_meta({})["user"]},
            on_lost=self._lock_lost))

    def _lock_lost(self, service: str, why: str) -> None:
        """The drill's lock can no longer be kept: stop going forward, like an interrupt."""
        if self._interrupted is None:
            self._interrupted = f"stopped: {why}"
        if self._active is not None:
            self._active.lock_lost(service, why)

    def _runner(self, plan: Any, operation: str, force: bool, override: frozenset[str] = frozenset(),
                interruptible: bool = True) -> tuple[Runner, dict[str, Any]]:
        run_id = new_run_id(operation)
        runner = Runner(plan, self.ctx, run_id=run_id, store=self.runs, leases=None, reporter=self.reporter,
                        force=force, override=override, interruptible=interruptible, max_workers=self.max_workers)
        start = runner.start_record(run_meta({**self.meta, "drill_id": self.drill_id, "argv": sys.argv[1:]}))
        return runner, start

    def _run(self, started: float) -> dict[str, Any]:
        from drctl.engine.observe import observe

        say = self.reporter.message
        names = self.services
        facts = observe(self.inv, names)
        before = {n: locate(self.inv, n, facts) for n in names}
        away = {n: loc for n, loc in before.items()
                if any(x is not None and x != loc.primary for x in (loc.dns, loc.traffic))}
        unknown = {n: loc for n, loc in before.items() if n not in away and (
            (self.inv.services[n].dns and loc.dns is None)
            or (isinstance(self.inv.services[n].traffic, HAProxyTraffic) and loc.traffic is None))}
        if unknown:  # a drill starts only from a known state: DNS and the balancer must answer
            why = {n: f"where it is served from is unknown at the start ({loc.dns_detail}; {loc.traffic_detail}); "
                      "a drill starts only when DNS and the load balancer answer" for n, loc in unknown.items()}
            return self._finish_refused(started, why, before)
        if away:
            why = {n: f"not served from its primary at the start ({loc.describe()}); a drill starts from the "
                      f"primary: fail it back first" for n, loc in away.items()}
            return self._finish_refused(started, why, before)

        # 1. failover
        plan = build_plan(self.inv, self.failover_pb, names, "failover", facts)
        runner, start = self._runner(plan, "failover", force=False)
        say(f"drill {self.drill_id}: failover of {', '.join(names)} to the backup ({runner.run_id})")
        t = self.clock()
        self._active = runner
        try:
            fo = runner.run(start)
        finally:
            self._active = None
        self.record["runs"]["failover"] = fo.to_dict()
        self._phase("failover", t, self.clock(), fo.status, fo.run_id)
        if fo.status == "refused":
            gate = {n: [f"{r.action.kind}: {r.outcome.detail}" for r in fo.records
                        if r.action.service == n and r.outcome.status == "failed"] for n in names}
            return self._finish(started, fo, {}, None, {}, [], gate_findings=gate)

        if self._interrupted and fo.status == "aborted" and not _touched(fo):
            return self._finish(started, fo, {}, None, {}, [], aborted=self._interrupted)

        # 2. the real path, on the backup
        moved = [n for n in names if fo.services.get(n) == "succeeded"]
        t = self.clock()
        on_backup = {} if self._interrupted else _probe_all(
            self.ctx, moved, {n: self.inv.services[n].backup for n in moved}, "failover")
        self._note_probes(on_backup)
        if moved:
            self._phase("real path (backup)", t, self.clock(),
                        "ok" if all(p.status != "failed" for p in on_backup.values()) else "failed")

        # 3. failback of everything the failover touched
        to_return = sorted(set(_touched(fo)) | set(moved))
        if fo.status != "succeeded" or any(p.status == "failed" for p in on_backup.values()):
            say("a drill step failed: returning " + (", ".join(to_return) or "nothing") + " to the primary")
        fb = self._failback(to_return)
        back = [n for n in to_return if fb is not None and fb.services.get(n) == "succeeded"]
        t = self.clock()
        on_primary = _probe_all(self.ctx, back, {n: self.inv.services[n].primary for n in back}, "failback")
        self._note_probes(on_primary)
        if back:
            self._phase("real path (primary)", t, self.clock(),
                        "ok" if all(p.status != "failed" for p in on_primary.values()) else "failed")
        return self._finish(started, fo, on_backup, fb, on_primary, to_return, aborted=self._interrupted)

    def _note_probes(self, probes: dict[str, Probe]) -> None:
        for p in probes.values():
            self.record["probes"].append(p.to_dict())
            mark = {"ok": "ok", "failed": "FAILED", "skipped": "skipped"}[p.status]
            self.reporter.message(f"{p.service}: real path ({p.site}): {mark} "
                                  f"({format_duration(p.finished - p.started)}) {p.detail}")

    def _failback(self, names: list[str]) -> RunResult | None:
        if not names:
            return None
        from drctl.engine.observe import observe

        self._returning = True
        self.ctx.cancel.clear()  # an interrupted failover must not cut the return trip short
        plan = build_plan(self.inv, self.failback_pb, names, "failback", observe(self.inv, names))
        # past the primary's backup age and data checks (they do not stop a return to the state
        # before the drill), never past its health: an unhealthy primary keeps the backup serving
        runner, start = self._runner(plan, "failback", force=False, override=RETURN_OVERRIDES,
                                     interruptible=False)
        self.reporter.message(f"drill {self.drill_id}: failback of {', '.join(names)} to the primary "
                              f"({runner.run_id})")
        t = self.clock()
        fb = runner.run(start)
        self.record["runs"]["failback"] = fb.to_dict()
        self._phase("failback", t, self.clock(), fb.status, fb.run_id)
        return fb

    def _finish_refused(self, started: float, why: dict[str, str], where: dict[str, Location]) -> dict[str, Any]:
        results = {}
        for n in self.services:
            svc = self.inv.services[n]
            results[n] = verdict.assess_service(
                n, failover="refused", probe_ok=None, probe_detail="", returned=None, final=where[n].describe(),
                rto_s=None, rto_target_s=svc.rto, rpo_s=None, rpo_target_s=svc.rpo, failed_steps=[],
                gate_findings=[why[n]] if n in why else ["another service of the drill is not on its primary"])
        self.record["final_state"] = {n: loc.to_dict() for n, loc in where.items()}
        message = "refused, nothing changed: " + "; ".join(f"{n} {w}" for n, w in why.items())
        return self._close(started, results, message)

    def _finish(self, started: float, fo: RunResult | None, on_backup: dict[str, Probe], fb: RunResult | None,
                on_primary: dict[str, Probe], returned_names: list[str], *,
                gate_findings: dict[str, list[str]] | None = None, aborted: str | None = None) -> dict[str, Any]:
        # traffic moved by commands cannot be observed: it is where the last run that succeeded put it
        journal = {n: self.inv.services[n].primary for n in returned_names
                   if fb is not None and fb.services.get(n) == "succeeded"}
        final = _observe_locations(self.ctx, self.services, journal)
        self.record["final_state"] = {n: loc.to_dict() for n, loc in final.items()}
        results = {}
        for n in self.services:
            svc = self.inv.services[n]
            probe = on_backup.get(n)
            rto = probe.finished - started if probe is not None and probe.status != "failed" else None
            if probe is not None and probe.status == "skipped" and fo is not None:
                ends = [r.finished for r in fo.records if r.action.service == n]
                rto = max(ends) - started if ends else None
            touched = n in returned_names
            # back means DNS and the load balancer say so (a failing real-path probe on the primary
            # is a finding of its own, not a reason to page that production is elsewhere)
            fb_ok = fb is not None and fb.services.get(n) == "succeeded"
            returned = (final[n].serving == svc.primary or (final[n].serving == "unknown" and fb_ok)
                        if touched else None)
            status = "aborted" if aborted else (fo.services.get(n, "refused") if fo is not None else "refused")
            failed = _failed_steps(fo, n, "failover") + _failed_steps(fb, n, "failback")
            if n in on_primary and on_primary[n].status == "failed":
                failed.append(f"failback real path: {on_primary[n].detail}")
            probe_ok = None if probe is None or probe.status == "skipped" else probe.status == "ok"
            results[n] = verdict.assess_service(
                n, failover=status, probe_ok=probe_ok,
                probe_detail=probe.detail if probe is not None else "", returned=returned,
                final=final[n].describe(), rto_s=rto, rto_target_s=svc.rto,
                rpo_s=_rpo_exposure(fo, n, svc.backup) if fo is not None else None, rpo_target_s=svc.rpo,
                failed_steps=failed, gate_findings=(gate_findings or {}).get(n, []))
        not_back = [n for n, r in results.items() if r["returned"] is False]
        if not_back:
            why = "; ".join(fb.findings) if fb is not None and fb.findings else ""
            message = ("PRODUCTION IS NOT BACK ON THE PRIMARY for " + ", ".join(
                f"{n} (now: {final[n].describe()})" for n in not_back)
                + (f". The return was refused: {why}. The backup keeps serving; once the primary is healthy, "
                   if why else ". ")
                + "`drctl failback " + " ".join(not_back) + "` returns it")
        elif aborted:
            message = f"{aborted}; every service the drill touched is back on its primary"
        elif fo is not None and fo.status == "refused":
            message = "refused, nothing changed: " + "; ".join(
                f"{n}: {'; '.join(f)}" for n, f in (gate_findings or {}).items() if f)
        elif any(r["status"] == "failed" for r in results.values()):
            message = ("a drill step failed; production was returned to the primary for "
                       + (", ".join(returned_names) or "(nothing had changed)"))
        elif any(r["status"] == "missed" for r in results.values()):
            message = "every step worked, but a target was missed: " + "; ".join(
                f"{n}: {', '.join(r['findings'])}" for n, r in results.items() if r["status"] == "missed")
        else:
            message = "drill passed: every service failed over, served from its backup, and returned to its primary"
        return self._close(started, results, message)

    def _close(self, started: float, results: dict[str, dict[str, Any]], message: str) -> dict[str, Any]:
        for n, r in results.items():
            r["primary"] = self.inv.services[n].primary
            r["backup"] = self.inv.services[n].backup
        status, code = verdict.overall(results)
        finished = self.clock()
        self.record.update({"services": results, "status": status, "exit_code": code, "finished": finished,
                            "elapsed_s": round(finished - started, 3), "message": message})
        self._save()
        return self.record


def latest_drills(state_dir: Path, services: list[str], limit: int = 200) -> dict[str, dict[str, Any]]:
    """Service -> summary of its newest finished drill (id, when, status, RTO) among the newest
    ``limit`` drill records."""
    store = DrillStore(state_dir)
    out: dict[str, dict[str, Any]] = {}
    for drill_id in store.list()[:limit]:
        if len(out) == len(services):
            break
        try:
            rec = store.read(drill_id)
        except RunNotFoundError:
            continue
        running = rec.get("status") == "running"
        if running and (rec.get("host") != socket.gethostname() or _pid_alive(rec.get("pid"))):
            continue  # under way (or on another machine): the previous drill is the latest result
        for name, r in (rec.get("services") or {}).items():
            if name in services and name not in out:
                # a "running" record whose process is gone was killed mid-way (e.g. SIGKILL): say so
                status = "interrupted" if running else r.get("status")
                out[name] = {"drill_id": drill_id, "finished": rec.get("finished") or rec.get("started"),
                             "status": status, "passed": status == "passed", "rto_s": r.get("rto_s"),
                             "rpo_exposure_s": r.get("rpo_exposure_s")}
    return out


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
