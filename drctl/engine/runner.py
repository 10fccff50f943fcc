"""Runs a Plan: the same loop for ``--dry-run`` and for real, for a new run and for ``resume``.

1. **Gate**: the playbook's leading read-only steps (freshness, health, integrity) run for every
   service in parallel, before anything changes. A failure refuses the whole run, with nothing
   changed, unless forced.
2. **Services**: each service runs its remaining actions in order, in its own thread, once the
   services it depends on have finished; a service whose dependency failed is *blocked*.

Every action is journaled before and after (``action_started`` / ``action_finished``, fsynced), so
``resume`` skips what finished and repeats only what was in flight (handlers are idempotent). In a
dry run, mutating actions and everything after them are reported as *planned* and not executed;
the gate still runs because it only looks.
"""

from __future__ import annotations

import getpass
import os
import socket
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

from drctl.core.plan import Action, Plan, ServicePlan
from drctl.engine.steps import Context, Outcome, execute
from drctl.engine.store import HeldLease, Journal, Leases
from drctl.errors import AbortedError, DrctlError, LockLostError

#: what the gate checks beyond the playbook's own read-only steps: every host the run may use
#: answers with a verified key (the site being left may not answer: a warning), each zone accepts
#: our TSIG key, the balancer knows the servers
PREFLIGHT_CHECKS = frozenset({"host", "tsig", "haproxy"})
#: gate failures that ``--force`` never passes: talking to a host whose key changed, moving users
#: onto a copy flagged as mass-changed (only its own acknowledgement passes that)
UNFORCEABLE_ERRORS = frozenset({"HostKeyError"})
PREFLIGHT_DEADLINE_S = 30.0


class Reporter(Protocol):
    def action_started(self, action: Action) -> None: ...
    def action_finished(self, action: Action, outcome: Outcome, elapsed_s: float) -> None: ...
    def message(self, text: str) -> None: ...


class SilentReporter:
    def action_started(self, action: Action) -> None:
        pass

    def action_finished(self, action: Action, outcome: Outcome, elapsed_s: float) -> None:
        pass

    def message(self, text: str) -> None:
        pass


@dataclass
class ActionRecord:
    action: Action
    outcome: Outcome
    started: float
    finished: float

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.action.id, "service": self.action.service, "kind": self.action.kind,
                "title": self.action.title, "started": self.started, "finished": self.finished,
                "elapsed_s": round(self.finished - self.started, 3), **self.outcome.to_dict()}


@dataclass
class RunResult:
    run_id: str | None
    operation: str
    status: str  # succeeded | failed | refused | aborted | dry-run
    dry_run: bool
    started: float
    finished: float
    services: dict[str, str] = field(default_factory=dict)  # service -> succeeded|failed|blocked|planned
    records: list[ActionRecord] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    message: str = ""
    warnings: list[str] = field(default_factory=list)  # what the operator must act on
    forceable: bool = True  # a refusal that --force would pass
    left_sites: list[dict[str, Any]] = field(default_factory=list)  # see left_site_summary

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "operation": self.operation, "status": self.status,
                "dry_run": self.dry_run, "started": self.started, "finished": self.finished,
                "elapsed_s": round(self.finished - self.started, 3), "services": self.services,
                "findings": self.findings, "message": self.message, "warnings": self.warnings,
                "forceable": self.forceable,
                "left_sites": self.left_sites,
                "actions": [r.to_dict() for r in sorted(self.records, key=lambda r: r.started)]}


def run_meta(extra: dict[str, Any]) -> dict[str, Any]:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return {"user": user, "host": socket.gethostname(), "pid": os.getpid(), **extra}


class Runner:
    def __init__(self, plan: Plan, ctx: Context, *, run_id: str | None, store: Journal | None,
                 leases: Leases | None, reporter: Reporter | None = None, dry_run: bool = False,
                 force: bool = False, override: frozenset[str] = frozenset(), interruptible: bool = True,
                 max_workers: int = 8) -> None:
        """``force`` goes past every failed gate check; ``override`` only past those of these step
        kinds (a drill's return trip ignores the primary's backup age, never its health).
        ``interruptible=False``: Ctrl-C does not stop this run (a drill returning to the primary)."""
        self.plan = plan
        self.ctx = ctx
        self.run_id = run_id
        self.store = store
        self.leases = leases
        self.reporter = reporter or SilentReporter()
        self.dry_run = dry_run
        self.force = force
        self.override = override
        self.interruptible = interruptible
        self.max_workers = max(1, max_workers)
        self._records: list[ActionRecord] = []
        self._lock = threading.Lock()
        self._abort: DrctlError | None = None  # AbortedError, or LockLostError (status "stopped")
        self._gate_unanswered: dict[str, dict[str, Any]] = {}  # host -> the pre-flight's finding
        self._prewarmed: list[dict[str, Any]] = []  # balancer servers drained for the switch
        self._phases: dict[str, float] = {}  # measured phases besides the steps (for the next plan)
        self._converge_warnings: list[str] = []

    # --- journal ---------------------------------------------------------------------------------

    def _journal(self, record: dict[str, Any]) -> None:
        if self.store is not None and self.run_id is not None and not self.dry_run:
            self.store.append(self.run_id, record)

    def start_record(self, meta: dict[str, Any]) -> dict[str, Any]:
        """The journal's first record: everything ``resume`` needs to carry on."""
        return {"event": "run_started", "operation": self.plan.operation, "plan": self.plan.to_dict(),
                "force": self.force, **meta}

    # --- running ---------------------------------------------------------------------------------

    def run(self, start_event: dict[str, Any], done: dict[str, Outcome] | None = None) -> RunResult:
        """Run the plan. ``start_event`` is journaled once the services' leases are held;
        ``done`` maps action ids finished in an earlier attempt to their outcome (the gate is
        always checked again: what was true an hour ago may not be now).

        Ctrl-C (KeyboardInterrupt) stops the run cleanly: the steps in flight finish, nothing new
        starts, the journal records the end, and the result says ``aborted``."""
        done = dict(done or {})
        started = time.time()
        result = RunResult(run_id=self.run_id, operation=self.plan.operation, status="succeeded",
                           dry_run=self.dry_run, started=started, finished=started)
        leases = self._acquire()
        try:
            self._journal(start_event)
            findings, unforceable = self._gate(done)
            result.findings = findings
            if self._abort is not None:
                result.status = "aborted"
                result.message = self._abort.message + "; nothing was changed"
                result.services = {sp.service: "aborted" for sp in self.plan.services}
            elif unforceable or (findings and not self.force):
                result.status = "refused"
                result.message = "refused, nothing changed: " + "; ".join(findings)
                result.forceable = not unforceable
                if unforceable:
                    result.message += (" (--force does not pass a changed host key or a mass-changed copy"
                                       + (", and was not applied" if self.force else "") + ")")
                result.services = {sp.service: "refused" for sp in self.plan.services}
            else:
                if findings:
                    self.reporter.message("forced past: " + "; ".join(findings))
                    result.warnings += [f"forced past: {f}" for f in findings]
                result.services = self._services(done)
                if self._abort is None and not self.dry_run:
                    self._converge(result)
                if self._abort is not None:
                    result.status = "aborted"
                    result.message = self._abort.message
                elif self.dry_run:
                    result.status = "dry-run"
                elif any(v in ("failed", "blocked") for v in result.services.values()):
                    result.status = "failed"
            self._restore_prewarmed(result.services)  # what a refused, aborted or failed run did not switch
        finally:
            for lease in leases:
                lease.release()
        if result.status == "aborted" and isinstance(self._abort, LockLostError):
            result.status = "stopped"  # not the operator: the run's lock could not be kept (exit 9)
        result.finished = time.time()
        result.records = list(self._records)
        if result.status not in ("refused", "dry-run") or self._gate_unanswered:
            result.left_sites = left_site_summary(self.plan, result.records, result.services, self._gate_unanswered,
                                                  self.ctx.site_down)
        result.warnings += run_warnings(result.records, result.left_sites) + self._converge_warnings
        result.warnings = list(dict.fromkeys(result.warnings))
        self._journal({"event": "run_finished", "status": result.status, "services": result.services,
                       "findings": result.findings, "message": result.message, "warnings": result.warnings,
                       "left_sites": result.left_sites, "phases": self._phases,
                       "elapsed_s": round(result.finished - result.started, 3)})
        return result

    def _converge(self, result: RunResult) -> None:
        """Read the world back for every service that finished its steps; repair a difference once,
        or fail the service naming what differs (see ``drctl.engine.converge``)."""
        from drctl.engine.converge import converge

        moved = [self.plan.service(n) for n, st in result.services.items() if st == "succeeded"]
        if not moved:
            return
        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(moved)), thread_name_prefix="converge") as pool:
            futures = [pool.submit(converge, self.ctx, sp, self._run_action) for sp in moved]
            self._wait_all(list(futures))
        failed = []
        for f in futures:
            c = f.result()
            self._journal({"event": "converge", **c.to_dict()})
            self._converge_warnings += [f"{c.service}: {w}" for w in c.warnings]
            if c.found:
                self.reporter.message(f"{c.service}: the world differed from the target after the run: "
                                      + "; ".join(c.found) + ("; repaired" if c.ok else ""))
            if not c.ok:
                result.services[c.service] = "failed"
                failed.append(f"{c.service}: " + "; ".join(c.remaining))
        self._phases["converge_s"] = round(time.monotonic() - t0, 3)
        if failed:
            result.message = "the world does not match the run's target after a repair: " + "; ".join(failed)

    def _acquire(self) -> list[HeldLease]:
        if self.leases is None or self.dry_run:
            return []
        return list(self.leases.acquire_all([sp.service for sp in self.plan.services],
                                            {"run_id": self.run_id, "operation": self.plan.operation,
                                             "user": run_meta({})["user"]}, on_lost=self.lock_lost))

    def lock_lost(self, service: str, why: str) -> None:
        """A lease of this run can no longer be kept (a state store out of reach, or without quorum):
        stop at the next safe point, before another control node could take the lock over. Steps in
        flight are told to stop (``ctx.cancel``); nothing new starts."""
        first = self._abort is None
        if first:
            self._abort = LockLostError(
                f"{why}; stopped at the next safe point, before its lease could expire",
                hint=f"`drctl resume {self.run_id}` once the state store answers" if self.run_id else None)
        self.ctx.cancel.set()
        if first:
            self.reporter.message(f"lock of {service} lost: finishing the steps in flight, starting nothing new ...")

    def _run_action(self, action: Action) -> Outcome:
        self._journal({"event": "action_started", "action": action.id, "kind": action.kind,
                       "service": action.service})
        self.reporter.action_started(action)
        t0 = time.time()
        try:
            outcome = execute(action, self.ctx)
        except AbortedError as e:
            outcome = Outcome("failed", e.message, {"error": "AbortedError"})
            with self._lock:
                self._abort = self._abort or e
        except Exception as e:  # a bug in a handler: record it, never leave the journal without an end
            outcome = Outcome("failed", f"internal error: {type(e).__name__}: {e}", {"error": type(e).__name__})
        t1 = time.time()
        self._journal({"event": "action_finished", "action": action.id, "elapsed_s": round(t1 - t0, 6),
                       **outcome.to_dict()})
        self._note(action, outcome, t0, t1)
        return outcome

    def _note(self, action: Action, outcome: Outcome, t0: float, t1: float) -> None:
        with self._lock:
            self._records.append(ActionRecord(action, outcome, t0, t1))
        self.reporter.action_finished(action, outcome, t1 - t0)

    def _gate(self, done: dict[str, Outcome]) -> tuple[list[str], list[str]]:
        """The gate actions of every service, and the pre-flight checks that the steps to come
        will work (every host answers with a verified key, each zone's DNS server accepts our
        TSIG key, the load balancer knows the servers named), all at once. Returns (what failed,
        the part of it that ``--force`` does not pass).

        At the same time the balancers start health-checking the servers traffic will move to
        (maintenance -> drain: checked, but sent nothing), so no switch waits for a check later;
        a run that does not go ahead puts them back."""
        gate = [a for a in self.plan.actions() if a.gate]
        reroutes = [a for a in self.plan.actions() if a.kind == "reroute_traffic" and not _finished(done.get(a.id))]
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(gate) + 2), thread_name_prefix="gate") as pool:
            futures = [pool.submit(self._run_action, a) for a in gate]
            pre = pool.submit(self._preflight_checks)
            warm = pool.submit(self._prewarm, reroutes) if reroutes and not self.dry_run else None
            self._wait_all([*futures, pre, *([warm] if warm else [])])
        failed, unforceable = [], []
        for a, f in zip(gate, futures, strict=True):
            out = f.result()
            if out.status != "failed":
                continue
            text = f"{a.service}: {out.detail}"
            if out.data.get("error") in UNFORCEABLE_ERRORS or out.data.get("poisoned"):
                unforceable.append(text)
            elif a.kind in self.override:
                continue
            failed.append(text)
        pre_failed, pre_unforceable = pre.result()
        return failed + pre_failed, unforceable + pre_unforceable

    def _prewarm(self, reroutes: list[Action]) -> None:
        from drctl.engine.steps import prewarm_balancers

        self._prewarmed = prewarm_balancers(self.ctx, reroutes)
        if self._prewarmed:
            self._journal({"event": "prewarm", "servers": self._prewarmed})

    def _restore_prewarmed(self, services: dict[str, str]) -> None:
        """Put back the drained servers of services whose traffic did not move."""
        from drctl.engine.steps import restore_balancers

        back = [e for e in self._prewarmed if services.get(e["service"]) != "succeeded"]
        self._prewarmed = [e for e in self._prewarmed if e not in back]
        if not back:
            return
        problems = restore_balancers(self.ctx, back)
        self._journal({"event": "prewarm_restored", "servers": back, "problems": problems})
        for p in problems:
            self.reporter.message(f"could not put back a server drained for the switch: {p}")

    def _preflight_checks(self) -> tuple[list[str], list[str]]:
        from drctl.engine.readiness import check_readiness

        services = [sp.service for sp in self.plan.services if any(a.kind in ("flip_dns", "reroute_traffic")
                                                                      for a in sp.actions)]
        if not services:
            return [], []
        t0 = time.monotonic()
        found = check_readiness(self.ctx, services, operation=self.plan.operation, deadline_s=PREFLIGHT_DEADLINE_S,
                                checks=PREFLIGHT_CHECKS)
        self._phases["preflight_s"] = round(time.monotonic() - t0, 3)
        self._journal({"event": "preflight", "findings": [f.to_dict() for f in found],
                       "elapsed_s": self._phases["preflight_s"]})
        # one line per problem, naming every service it concerns (a host shared by three services
        # is one problem, said once)
        by_problem: dict[tuple[str, str, str], list[str]] = {}
        key_problems: set[tuple[str, str, str]] = set()
        for f in found:
            if f.check == "host" and f.data.get("unanswered") and not f.data.get("target"):
                self._gate_unanswered.setdefault(str(f.data["host"]), {"site": f.data["site"], "error": f.detail})
            if f.level == "fail":
                by_problem.setdefault((f.check, f.subject, f.detail), []).append(f.service)
                if f.data.get("host_key"):
                    key_problems.add((f.check, f.subject, f.detail))
        failed, unforceable = [], []
        for problem, services in by_problem.items():
            check, subject, detail = problem
            text = f"{', '.join(dict.fromkeys(services))}: {subject}: {detail}"
            self.reporter.message(f"pre-flight {check} FAILED for {text}")
            failed.append(text)
            if problem in key_problems:
                unforceable.append(text)
        return failed, unforceable

    def _wait_all(self, futures: list[Future[Any]]) -> None:
        """Wait for every future; Ctrl-C turns into a clean stop instead of leaving threads mid-step."""
        pending = set(futures)
        while pending:
            try:
                _, pending = wait(pending, timeout=0.2)
            except KeyboardInterrupt:
                if self.interruptible:
                    self.interrupt()
                else:
                    self.reporter.message("this run cannot be interrupted (it returns services to their "
                                          "primary); waiting for it to finish ...")

    def interrupt(self) -> None:
        """Stop starting steps; the ones in flight finish (each is bounded by its timeout)."""
        # no lock here: this may run in a signal handler while the main thread holds it
        first = self._abort is None
        if first:
            self._abort = AbortedError(
                "interrupted: the steps in flight were finished, nothing else was started",
                hint=f"`drctl resume {self.run_id}` continues" if self.run_id else None)
        self.ctx.cancel.set()
        if first:
            self.reporter.message("interrupted: finishing the steps in flight, starting nothing new ...")

    def _services(self, done: dict[str, Outcome]) -> dict[str, str]:
        status: dict[str, str] = {}
        finished = {sp.service: threading.Event() for sp in self.plan.services}
        lock = threading.Lock()
        expected: set[str] = set()

        def flips(sp: ServicePlan) -> list[Action]:
            return [a for a in sp.actions if a.kind == "flip_dns" and not _finished(done.get(a.id))]

        def expect_movable() -> None:
            """(under ``lock``) Services whose dependencies are all done can move now: the DNS
            batches wait for their flips, and for no one else's."""
            if self.dry_run:
                return
            for sp in self.plan.services:
                if sp.service in expected or sp.service in status:
                    continue
                if all(status.get(d) == "succeeded" for d in sp.depends_on):
                    expected.add(sp.service)
                    for a in flips(sp):
                        self.ctx.expect_flip(a)

        def run_service(name: str) -> None:
            sp = self.plan.service(name)
            try:
                for dep in sp.depends_on:
                    finished[dep].wait()  # bounded: every dependency's steps have timeouts
                with lock:
                    bad = [d for d in sp.depends_on if status.get(d) in ("failed", "blocked", "aborted")]
                if self._abort is not None:
                    st = "aborted"
                elif bad:
                    st = "blocked"
                    self.reporter.message(f"{name}: blocked, its dependency {', '.join(bad)} did not complete")
                    for a in sp.actions:
                        if not a.gate and not _finished(done.get(a.id)):
                            self._note(a, Outcome("blocked", f"dependency {', '.join(bad)} did not complete"),
                                       time.time(), time.time())
                else:
                    st = self._run_service_actions(sp.actions, done)
            except BaseException:
                st = "failed"
                raise
            finally:
                with lock:
                    status[name] = st
                    for a in flips(sp):
                        self.ctx.withdraw_flip(a)
                    expect_movable()
                finished[name].set()

        names = [s for level in self.plan.levels for s in level]
        with lock:
            expect_movable()
        with ThreadPoolExecutor(max_workers=min(self.max_workers, max(1, len(names))),
                                thread_name_prefix="svc") as pool:
            futures = [pool.submit(run_service, n) for n in names]
            self._wait_all(futures)
            for f in futures:
                f.result()
        return {n: status[n] for n in names}

    def _run_service_actions(self, actions: Iterable[Action], done: dict[str, Outcome]) -> str:
        planned = False
        for a in actions:
            if a.gate:
                continue
            previous = done.get(a.id)
            if _finished(previous):
                assert previous is not None
                self._note(a, Outcome(previous.status, "done in an earlier attempt: " + previous.detail,
                                      previous.data), time.time(), time.time())
                continue
            if self._abort is not None:
                return "aborted"
            if self.dry_run and (planned or a.mutating or a.kind in ("pause", "wait_dns")):
                planned = True
                detail = "would change: " + "; ".join(c.render() for c in a.changes) if a.changes else "would run"
                if a.noop:
                    detail = "already done (nothing to change)"
                self._note(a, Outcome("planned", detail), time.time(), time.time())
                continue
            outcome = self._run_action(a)
            if outcome.status == "failed":
                return "aborted" if self._abort is not None else "failed"
        return "planned" if planned else "succeeded"


def _finished(outcome: Outcome | None) -> bool:
    return outcome is not None and outcome.status in ("ok", "skipped", "warn")


def done_from_journal(records: list[dict[str, Any]]) -> dict[str, Outcome]:
    """Outcomes of actions that finished in the journaled attempts (the last word wins)."""
    done: dict[str, Outcome] = {}
    for r in records:
        if r.get("event") == "action_finished":
            done[r["action"]] = Outcome(r["status"], r.get("detail", ""), r.get("data") or {})
    return done


def left_site_summary(plan: Plan, records: list[ActionRecord], services: dict[str, str],
                      gate_unanswered: dict[str, dict[str, Any]],
                      site_down: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """For each site the run leaves: whether it answered (and since which step it did not),
    whether each service was fenced there, and what the operator must still do about it."""
    out = []
    ordered = sorted(records, key=lambda r: r.started)
    for site in dict.fromkeys(sp.from_site for sp in plan.services):
        mine = [sp for sp in plan.services if sp.from_site == site]
        names = {sp.service for sp in mine}
        silent_since: str | None = "declared down by the operator (--site-down)" if site in site_down else None
        silent_hosts: dict[str, str] = {}
        for host, info in gate_unanswered.items():
            if info["site"] == site:
                silent_since = silent_since or "the gate (pre-flight)"
                silent_hosts.setdefault(host, str(info["error"]))
        fences: dict[str, dict[str, Any]] = {}
        for r in ordered:
            if r.action.service not in names:
                continue
            un = r.outcome.data.get("unanswered")
            if isinstance(un, dict) and un.get("site") == site:
                silent_since = silent_since or r.action.id
                silent_hosts.setdefault(str(un.get("host")), str(un.get("error")))
            fence = r.outcome.data.get("fence")
            if isinstance(fence, dict) and fence.get("site") == site:
                fences[r.action.service] = fence
        per_service = {}
        for sp in mine:
            st = services.get(sp.service, "?")
            if sp.service in fences:
                per_service[sp.service] = fences[sp.service]
            elif not any(a.kind == "reroute_traffic" for a in sp.actions):
                per_service[sp.service] = {"site": site, "status": "not_fenced",
                                           "detail": "no traffic step: only DNS moved; clients holding the old "
                                                     "answer, or using the address directly, still reach it"}
            elif st == "succeeded":
                per_service[sp.service] = {"site": site, "status": "fenced", "detail": "traffic moved earlier"}
            else:
                per_service[sp.service] = {"site": site, "status": "not_moved", "detail": f"service {st}"}
        unfenced = sorted(s for s, f in per_service.items() if f["status"] in ("not_fenced", "not_attempted"))
        if unfenced:
            todo = (f"{site} is NOT fenced for {', '.join(unfenced)}: before it comes back, make sure it cannot "
                    "serve (power it off or cut it off, or run its deactivate commands): a site that returns "
                    "unfenced may serve stale data")
        elif silent_since:
            todo = (f"{site} did not answer; traffic no longer reaches it through drctl's balancers, but check "
                    "it before it comes back")
        else:
            todo = "nothing"
        out.append({"site": site, "answering": silent_since is None, "silent_since": silent_since,
                    "silent_hosts": silent_hosts, "services": per_service, "todo": todo})
    return out


def run_warnings(records: list[ActionRecord], left_sites: list[dict[str, Any]]) -> list[str]:
    """The warnings the operator must act on, for the final summary."""
    out = []
    for left in left_sites:
        if not left["answering"]:
            hosts = ", ".join(sorted(left["silent_hosts"])) or "its hosts"
            out.append(f"site {left['site']} did not answer ({hosts}) since {left['silent_since']}")
        if left["todo"] != "nothing":
            out.append(left["todo"])
    for r in sorted(records, key=lambda r: r.started):
        d = r.outcome.data
        if d.get("acknowledged"):
            out.append(f"{r.action.service}: moved onto a copy flagged as mass-changed, acknowledged by the operator")
        elif r.action.kind == "wait_dns" and r.outcome.status == "warn":
            out.append(f"{r.action.service}: {r.outcome.detail}")
    return out
