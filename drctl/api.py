"""drctl for programs, and for its own CLI: load an inventory, plan, run, resume, list runs,
verify data. Every decision these commands need is taken here or below (core, engine, drivers):
``drctl.cli`` only parses arguments, asks the operator, renders and maps results to exit codes.

    from drctl import api

    inv = api.load(Path("inventory.yaml"))
    plan = api.plan(inv, "failover", site="dc1")          # reads DNS and balancers; changes nothing
    result = api.run(Path("inventory.yaml"), "failover", site="dc1")
    if result.status != "succeeded":
        result = api.resume(result.run_id)                # or None: it had already succeeded

Failures raise ``drctl.errors`` (``DrctlError`` and its subclasses, each with its exit code);
outcomes are values (``Plan``, ``RunResult``, ``History``, ``Verified``). A run's own outcome
(refused by its gate, failed, aborted) is its ``RunResult.status``, not an exception. Callers take
part through hooks: ``on_plan`` sees the plan before anything changes, ``confirm`` may stop the
run there (raise ``AbortedError``), ``approve`` answers ``pause`` steps (none: declined),
``reporter`` follows each step. ``argv`` is recorded in the journal.

Where runs are kept: ``state`` (an ``etcd://`` spec), else the inventory's ``state:``, else the
state directory ``state_dir`` (default ``$DRCTL_STATE_DIR``, ``$XDG_STATE_HOME/drctl`` or
``~/.local/state/drctl``). Heavy modules are imported when a function is called: importing this
module costs nothing at start-up.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drctl.engine.store import default_state_dir, ensure_state_dir
from drctl.errors import DrctlError, LockHeldError, RefusedError, UsageError

if TYPE_CHECKING:
    from drctl.core.integrity import IntegrityReport
    from drctl.core.plan import Action, Plan
    from drctl.engine.runner import Reporter, RunResult
    from drctl.engine.steps import Approver
    from drctl.engine.store import State
    from drctl.model.inventory import Inventory

__all__ = ["History", "Verified", "history", "inventory_state", "load", "open_state", "plan", "resume", "run",
           "verify"]

#: action statuses that ``resume`` does not repeat
FINISHED = ("ok", "skipped", "warn")


# --- inventory and state ---------------------------------------------------------------------------


def load(inventory: Path) -> Inventory:
    """The inventory in the file ``inventory``, validated. Raises ``ConfigError`` naming every
    problem (``file:line: field: message``); for a file that does not exist, with a hint."""
    from drctl.errors import ConfigError
    from drctl.model.load import load_inventory

    try:
        return load_inventory(inventory)
    except ConfigError as e:
        if not inventory.exists():
            e.hint = "pass --inventory FILE or set DRCTL_INVENTORY (`drctl lab up` prints a lab's inventory)"
        raise


def open_state(spec: str | None, state_dir: Path | None, inventory: Inventory | Path | None = None) -> State:
    """The state a command uses: ``spec`` (``--state`` / ``DRCTL_STATE``), else the inventory's
    ``state:`` (a path that is not a file has none), else the state directory alone
    (``state_dir``, ``--state-dir`` / ``DRCTL_STATE_DIR``). The state directory is created either
    way: drill records and baseline files stay on this control node. Close it after use."""
    from drctl.engine.store import open_state as _open

    if not spec and inventory is not None:
        spec = inventory_state(inventory)
    return _open(spec or None, ensure_state_dir(state_dir or default_state_dir()))


def inventory_state(inventory: Inventory | Path) -> str | None:
    """The inventory's ``state:`` key (loading it when given a path to a file), else None."""
    if isinstance(inventory, Path):
        if not inventory.is_file():
            return None
        inventory = load(inventory)
    return getattr(inventory, "state", None)


# --- plan and run ----------------------------------------------------------------------------------


def plan(inventory: Inventory | Path, operation: str, services: Sequence[str] | None = None,
         site: str | None = None, *, playbook: Path | None = None, state_dir: Path | None = None) -> Plan:
    """The plan of a failover or failback (``operation``) of ``services``, or of every service
    whose primary is ``site``: per service, the ordered actions and what each changes from -> to,
    with current DNS answers and balancer states read (in parallel, with short timeouts) and the
    durations measured in the last run kept in ``state_dir``. Changes nothing. ``playbook``:
    default, the built-in one for the operation. Raises ``ConfigError``, ``UsageError``."""
    return _plan(inventory, operation, services, site, playbook, state_dir)[1]


def _plan(inventory: Inventory | Path, operation: str, services: Sequence[str] | None, site: str | None,
          playbook: Path | None, state_dir: Path | None) -> tuple[Inventory, Plan, Path]:
    from drctl.core.plan import build_plan, select_services
    from drctl.engine.observe import measured_timings, observe
    from drctl.model.load import builtin_playbook, load_playbook

    inv = load(inventory) if isinstance(inventory, Path) else inventory
    pb_path = playbook or builtin_playbook(operation)
    pb = load_playbook(pb_path, inv)
    if pb.direction != operation:
        raise UsageError(f"playbook {pb_path} is a {pb.direction} playbook, not a {operation} one")
    selected = select_services(inv, list(services or []), site)
    facts = observe(inv, selected, timings=measured_timings(state_dir or default_state_dir(), operation))
    return inv, build_plan(inv, pb, selected, operation, facts), pb_path


def run(inventory: Path, operation: str, services: Sequence[str] | None = None, site: str | None = None, *,
        playbook: Path | None = None, dry_run: bool = False, force: bool = False, parallel: int = 32,
        accept_mass_change: Sequence[str] | None = None, site_down: Sequence[str] | None = None,
        state_dir: Path | None = None, state: str | None = None, approve: Approver | None = None,
        reporter: Reporter | None = None, on_plan: Callable[[Plan], None] | None = None,
        confirm: Callable[[Plan], None] | None = None, argv: Sequence[str] = ()) -> RunResult:
    """Plan (as ``plan``) and run a failover or failback: the gate for every service first, then
    each service's steps, independent services in parallel (at most ``parallel``), journaled so
    that ``resume`` can finish it. ``dry_run`` runs the read-only gate for real, changes nothing
    and journals nothing.

    ``force`` goes past failed gate checks (never a changed host key, or a copy flagged as
    mass-changed: ``accept_mass_change`` names the services whose copy may be served anyway).
    ``site_down`` declares sites lost: nothing is sent to their hosts. ``on_plan(plan)`` is called
    once the plan is made; then, for a real run, the services' locks are checked (``LockHeldError``
    naming the holder) and ``confirm(plan)`` is called, before anything changes.

    The outcome is in the result's ``status``: succeeded, dry-run, refused (nothing changed),
    failed, aborted, or stopped (the state store was lost). Raises ``ConfigError``, ``UsageError``
    (unknown services or sites in the arguments), ``LockHeldError``, and what ``confirm`` raises."""
    from drctl.engine.runner import Runner, run_meta
    from drctl.engine.steps import Context
    from drctl.engine.store import describe_holder, new_run_id

    inv, the_plan, pb_path = _plan(inventory, operation, services, site, playbook, state_dir)
    acked = _acknowledged(the_plan, accept_mass_change)
    down = _sites_down(inv, the_plan, site_down)
    st = open_state(state, state_dir, inv)
    try:
        if on_plan is not None:
            on_plan(the_plan)
        leases = st.leases
        if not dry_run:
            names = [sp.service for sp in the_plan.services]
            busy = {n: leases.holder(n) or {"run_id": r} for n in names if (r := leases.held_by(n))}
            if busy:  # say so before the operator is asked (the lease itself is taken by the runner)
                raise LockHeldError("; ".join(f"service {n} is locked by {describe_holder(h)}"
                                              for n, h in busy.items()),
                                    hint="wait for it to finish (`drctl history` shows it running)")
            if confirm is not None:
                confirm(the_plan)
        ctx = Context(inv, state_dir=st.dir, approve=approve, accept_mass_change=acked, site_down=down)
        try:
            runner = Runner(the_plan, ctx, run_id=None if dry_run else new_run_id(operation), store=st.runs,
                            leases=leases, reporter=reporter, dry_run=dry_run, force=force, max_workers=parallel)
            meta = run_meta({"inventory": str(inventory.resolve()), "playbook": str(pb_path.resolve()),
                             "argv": list(argv), "accept_mass_change": sorted(acked), "site_down": sorted(down)})
            return runner.run(runner.start_record(meta))
        finally:
            ctx.close()
    finally:
        st.close()


def _acknowledged(plan: Plan, names: Sequence[str] | None) -> frozenset[str]:
    unknown = sorted(set(names or []) - {sp.service for sp in plan.services})
    if unknown:
        raise UsageError(f"--accept-mass-change names services that are not part of this run: {', '.join(unknown)}")
    return frozenset(names or [])


def _sites_down(inv: Inventory, plan: Plan, names: Sequence[str] | None) -> frozenset[str]:
    """Sites declared lost: known sites, and never a site the run moves services to."""
    down = frozenset(names or [])
    unknown = sorted(down - set(inv.sites))
    if unknown:
        raise UsageError(f"--site-down: unknown site {', '.join(unknown)}; known: {', '.join(sorted(inv.sites))}")
    targets = sorted(down & {sp.to_site for sp in plan.services})
    if targets:
        raise UsageError(f"--site-down {', '.join(targets)}: this run moves services to that site")
    return down


# --- resume ----------------------------------------------------------------------------------------


def resume(run_id: str, *, accept_changes: bool = False, state_dir: Path | None = None, state: str | None = None,
           inventory: Path | None = None, approve: Approver | None = None, reporter: Reporter | None = None,
           confirm: Callable[[Plan, list[Action]], None] | None = None,
           argv: Sequence[str] = ()) -> RunResult | None:
    """Finish an interrupted or failed run: skip the steps it completed, repeat the one in flight,
    go on. The gate is checked again first (overridden only if the run was started with force).
    Returns None when the run had already succeeded: there is nothing to resume.

    ``inventory`` only says where the runs are (its ``state:``); the inventory resumed is the one
    the run was started with. Refused (``RefusedError``, nothing changed) when that inventory no
    longer has one of the run's services, and, unless ``accept_changes``, when it changed since
    the run was planned or a later run moved one of its services. ``confirm(plan, pending)`` is
    called before anything changes, with the actions still to run. Raises ``RunNotFoundError``,
    ``UsageError`` (a run without a start record)."""
    from drctl.core.plan import Plan, inventory_digest
    from drctl.engine.runner import Runner, done_from_journal, run_meta
    from drctl.engine.steps import Context

    st = open_state(state, state_dir, inventory)
    try:
        store = st.runs
        records = store.read(run_id)
        start = next((r for r in records if r.get("event") == "run_started"), None)
        if start is None:
            raise UsageError(f"run {run_id} has no start record; it cannot be resumed")
        last = next((r for r in reversed(records) if r.get("event") == "run_finished"), None)
        if last is not None and last.get("status") == "succeeded":
            return None
        the_plan = Plan.from_dict(start["plan"])
        inv = load(Path(start["inventory"]))
        gone = [sp.service for sp in the_plan.services if sp.service not in inv.services]
        if gone:
            # even with accept_changes: drctl cannot finish (or read back) a service it no longer knows
            raise RefusedError(
                f"run {run_id} moves {', '.join(gone)}, which the inventory {start['inventory']} no longer has; "
                "nothing was changed",
                hint=f"put {', '.join(gone)} back in the inventory to finish this run, or start a new run for the "
                     f"other services (`drctl status` shows where {', '.join(gone)} stand)")
        if not accept_changes:
            if inventory_digest(inv) != the_plan.inventory_digest:
                raise RefusedError(f"the inventory {start['inventory']} changed since run {run_id} was planned",
                                   hint="review it, then resume with --accept-changes, or start a new run")
            mine = {sp.service for sp in the_plan.services}
            later = [s for s in (_summarize_run(r, store.read(r)) for r in store.list_runs() if r != run_id)
                     if s["started_ts"] > start.get("ts", 0) and mine & set(s["services"])]
            if later:
                raise RefusedError(
                    f"later runs moved these services since {run_id}: "
                    + ", ".join(f"{s['run_id']} ({s['operation']} of "
                                f"{', '.join(sorted(mine & set(s['services'])))}, {s['status']})" for s in later),
                    hint="resuming would replay an older decision; start a new run, or pass --accept-changes")
        the_plan = _with_unmasked_params(the_plan, inv, start)
        done = done_from_journal(records)
        pending = [a for a in the_plan.actions() if a.id not in done or done[a.id].status not in FINISHED]
        if confirm is not None:
            confirm(the_plan, pending)
        ctx = Context(inv, state_dir=st.dir, approve=approve,
                      accept_mass_change=frozenset(start.get("accept_mass_change") or []),
                      site_down=frozenset(start.get("site_down") or []) & set(inv.sites))
        try:
            runner = Runner(the_plan, ctx, run_id=run_id, store=store, leases=st.leases, reporter=reporter,
                            force=bool(start.get("force")))
            return runner.run({"event": "run_resumed", **run_meta({"argv": list(argv)})}, done)
        finally:
            ctx.close()
    finally:
        st.close()


def _with_unmasked_params(plan: Plan, inv: Inventory, start: dict[str, Any]) -> Plan:
    """The journal masks secrets, also in the arguments of commands. Resume takes each action's
    parameters from the inventory and playbook again (the same ones: the inventory's digest is
    checked, and an action whose parameters differ other than by a mask is refused)."""
    from dataclasses import replace

    from drctl.core.plan import Plan, ServicePlan, build_plan
    from drctl.model.load import load_playbook

    def masked(value: Any) -> bool:
        return "***" in json.dumps(value, default=str)

    if not any(masked(a.params) for a in plan.actions()):
        return plan
    try:
        pb = load_playbook(Path(start["playbook"]), inv)
        fresh = {a.id: a for a in build_plan(inv, pb, [sp.service for sp in plan.services], plan.operation).actions()}
    except DrctlError as e:
        raise RefusedError(f"the run's commands were journaled with secrets masked, and its playbook cannot be read "
                           f"again to restore them: {e.message}", hint="start a new run") from None
    services = []
    for sp in plan.services:
        actions = []
        for a in sp.actions:
            if masked(a.params):
                f = fresh.get(a.id)
                if f is None or f.kind != a.kind or not _same_but_masked(a.params, f.params):
                    raise RefusedError(f"step {a.id} was journaled with secrets masked and the playbook "
                                       f"{start['playbook']} no longer has it as it was", hint="start a new run")
                a = replace(a, params=f.params)
            actions.append(a)
        services.append(ServicePlan(sp.service, sp.from_site, sp.to_site, sp.depends_on, tuple(actions)))
    return Plan(plan.operation, plan.playbook, tuple(services), plan.levels, plan.notes, plan.inventory_digest)


def _same_but_masked(journaled: Any, fresh: Any) -> bool:
    from drctl.core.redact import redact

    return json.dumps(journaled, default=str, sort_keys=True) == json.dumps(redact(fresh), default=str,
                                                                           sort_keys=True)


# --- history ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class History:
    """Runs, newest first: each a dict with ``run_id``, ``operation``, ``started_ts``,
    ``started_at`` (local time), ``status`` (succeeded, failed, refused, aborted, stopped, or
    running / interrupted for a run without an end), ``services`` and ``user``."""

    where: str  # the state directory's runs, or the etcd cluster and prefix
    runs: list[dict[str, Any]]


def history(limit: int = 20, *, state_dir: Path | None = None, state: str | None = None,
            inventory: Path | None = None) -> History:
    """The newest ``limit`` runs. A run without an end whose services' leases are still held by
    it is ``running``; without them, ``interrupted`` (``resume`` finishes it)."""
    st = open_state(state, state_dir, inventory)
    try:
        store, leases = st.runs, st.leases
        rows = sorted((_summarize_run(run_id, store.read(run_id)) for run_id in store.list_runs()),
                      key=lambda r: r["started_ts"], reverse=True)[:limit]
        for r in rows:  # an unfinished run whose process still holds a lease is running, not interrupted
            if r["status"] == "interrupted" and any(leases.held_by(s) == r["run_id"] for s in r["services"]):
                r["status"] = "running"
        return History(store.where, rows)
    finally:
        st.close()


def _summarize_run(run_id: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    start = next((r for r in records if r.get("event") == "run_started"), {})
    started = start.get("ts")
    last = records[-1] if records else {}
    status = last["status"] if last.get("event") == "run_finished" else "interrupted"
    return {"run_id": run_id, "operation": start.get("operation", "?"), "started_ts": started or 0.0,
            "started_at": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?",
            "status": status, "services": [s["service"] for s in start.get("plan", {}).get("services", [])],
            "user": start.get("user", "?")}


# --- verify ----------------------------------------------------------------------------------------


@dataclass
class Verified:
    """One service's verification: its ``report`` (differences are values there: ``report.ok``),
    or the ``error`` that kept it from being verified, or why it was ``skipped``."""

    service: str
    report: IntegrityReport | None = None
    error: DrctlError | None = None
    skipped: str | None = None

    @property
    def differ(self) -> bool:
        return self.report is not None and not self.report.ok


def verify(inventory: Inventory | Path, services: Sequence[str] | None = None, site: str | None = None, *,
           targets: Sequence[str] | None = None, full: bool = False, record_baseline: bool = False,
           state_dir: Path | None = None, state: str | None = None,
           on_start: Callable[[str], None] | None = None,
           on_result: Callable[[Verified], None] | None = None) -> list[Verified]:
    """Compare each selected service's data (file trees, PostgreSQL tables) between its primary and
    its backup, hashed where the data lives; against the newest baseline when the primary does not
    answer. One service after the other: ``on_start(service)`` before one with integrity targets,
    ``on_result(verified)`` after each. A service that cannot be verified does not stop the others
    (its ``error``). ``targets``: only these integrity targets; ``full``: re-hash every file;
    ``record_baseline``: also store the primary's manifest. Raises ``ConfigError``, ``UsageError``."""
    from drctl.core.plan import select_services
    from drctl.drivers.integrity import verify_service
    from drctl.drivers.ssh import SSHPool

    inv = load(inventory) if isinstance(inventory, Path) else inventory
    names = select_services(inv, list(services or []), site)
    results: list[Verified] = []
    st = open_state(state, state_dir, inv)  # with etcd: the baselines' index
    try:
        with SSHPool(inv.all_hosts(), base_dir=inv.base_dir) as pool:
            for name in names:
                if not inv.services[name].integrity:
                    result = Verified(name, skipped="no integrity targets")
                else:
                    if on_start is not None:
                        on_start(name)
                    try:
                        result = Verified(name, report=verify_service(
                            inv, name, pool, st.dir, full=full, record_baseline=record_baseline, targets=targets))
                    except DrctlError as e:
                        result = Verified(name, error=e)
                results.append(result)
                if on_result is not None:
                    on_result(result)
    finally:
        st.close()
    return results
