"""Commands that plan and run playbooks: plan, failover, failback, resume, history.

Parse -> load -> plan (core) -> run (engine) -> render -> exit code. No decisions here.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from drctl.cli.common import (
    DEFAULT_INVENTORY,
    ENV,
    Approver,
    InventoryOpt,
    JsonOpt,
    ProgressReporter,
    StateDirOpt,
    YesOpt,
    confirm_typed,
    load_inventory,
    state_dir,
)
from drctl.core import render
from drctl.errors import DrctlError, LockHeldError, RefusedError, UsageError

if TYPE_CHECKING:
    from drctl.core.plan import Plan

ServicesArg = Annotated[list[str] | None, typer.Argument(help="services to move (or use --site)", show_default=False)]
SiteOpt = Annotated[str | None, typer.Option("--site", "-s", help="every service whose primary is SITE")]
PlaybookOpt = Annotated[Path | None, typer.Option("--playbook", "-p",
                                                  help="playbook YAML (default: the built-in one for the operation)")]
ParallelOpt = Annotated[int, typer.Option("--parallel", min=1, max=64, help="services run at the same time, at most")]
SiteDownOpt = Annotated[list[str] | None, typer.Option(
    "--site-down", metavar="SITE",
    help="disaster mode: declare SITE lost. Nothing is sent to its hosts (no probe waits for it), integrity is "
         "checked against the newest baseline, its fences are reported as not attempted", show_default=False)]
AcceptMassChangeOpt = Annotated[list[str] | None, typer.Option(
    "--accept-mass-change", metavar="SERVICE",
    help="move SERVICE onto its backup although integrity verification flags that copy as mass-changed "
         "(encrypted in place, renamed, mostly different); recorded in the journal. Repeat per service; "
         "--force never does this", show_default=False)]

EXIT_BY_STATUS = {"succeeded": 0, "dry-run": 0, "refused": 4, "failed": 5, "aborted": 130}


class Operation(StrEnum):
    failover = "failover"
    failback = "failback"


class PlanFormat(StrEnum):
    table = "table"
    json = "json"
    md = "md"
    html = "html"


def make_plan(inventory: Path, operation: str, services: list[str] | None, site: str | None,
              playbook: Path | None, state: Path | None = None) -> tuple[Any, Plan, Path]:
    from drctl.core.plan import build_plan, select_services
    from drctl.engine.observe import measured_timings, observe
    from drctl.engine.store import default_state_dir
    from drctl.model.load import builtin_playbook, load_playbook

    inv = load_inventory(inventory)
    pb_path = playbook or builtin_playbook(operation)
    pb = load_playbook(pb_path, inv)
    if pb.direction != operation:
        raise UsageError(f"playbook {pb_path} is a {pb.direction} playbook, not a {operation} one")
    selected = select_services(inv, services or [], site)
    facts = observe(inv, selected, timings=measured_timings(state or default_state_dir(), operation))
    return inv, build_plan(inv, pb, selected, operation, facts), pb_path


def plan_cmd(
    operation: Annotated[Operation, typer.Argument(help="failover or failback")],
    services: ServicesArg = None,
    site: SiteOpt = None,
    playbook: PlaybookOpt = None,
    fmt: Annotated[PlanFormat, typer.Option("--format", "-f", help="table, json, md or html")] = PlanFormat.table,
    check: Annotated[bool, typer.Option("--check/--no-check", help="md and html reports: include the findings "
                                                                   "of a readiness check")] = True,
    json_out: JsonOpt = False,
    inventory: InventoryOpt = DEFAULT_INVENTORY,
    state: StateDirOpt = None,
) -> int:
    """Show the ordered actions a failover or failback would take, and what each changes from -> to.

    Reads current DNS answers and load-balancer states to show real "from" values; changes nothing.
    The md and html reports add expected durations and the findings of a readiness check.
    """
    inv, plan, _ = make_plan(inventory, operation.value, services, site, playbook, state)
    if json_out or fmt is PlanFormat.json:
        ENV.stdout.write(render.to_json(plan.to_dict()) + "\n")
    elif fmt in (PlanFormat.md, PlanFormat.html):
        from drctl.cli.check import readiness_of
        from drctl.core import report

        findings, verdicts = (readiness_of(inv, [sp.service for sp in plan.services], None, operation.value)
                              if check else ([], {}))
        doc = report.plan_markdown if fmt is PlanFormat.md else report.plan_html
        ENV.stdout.write(doc(plan, findings, verdicts).rstrip("\n") + "\n")
    else:
        ENV.out.print(render.plan_table(plan))
        for n in plan.notes:
            ENV.err.print(f"note: {n}", markup=False)
    return 0


def _operate(operation: str, services: list[str] | None, site: str | None, playbook: Path | None,
             dry_run: bool, yes: bool, force: bool, json_out: bool, inventory: Path, state: Path | None,
             parallel: int, accept_mass_change: list[str] | None = None, site_down: list[str] | None = None) -> int:
    from drctl.engine.runner import Runner, run_meta
    from drctl.engine.steps import Context
    from drctl.engine.store import LeaseStore, RunStore, new_run_id

    inv, plan, pb_path = make_plan(inventory, operation, services, site, playbook, state)
    acked = _acknowledged(plan, accept_mass_change)
    down = _sites_down(inv, plan, site_down)
    sd = state_dir(state)
    if not json_out:
        ENV.err.print(render.plan_table(plan))
        for n in plan.notes:
            ENV.err.print(f"note: {n}", markup=False)
    leases = LeaseStore(sd)
    if not dry_run:
        names = [sp.service for sp in plan.services]
        busy = {n: r for n in names if (r := leases.held_by(n))}
        if busy:  # say so before the operator types anything (the lease itself is taken by the runner)
            raise LockHeldError("; ".join(f"service {n} is locked by run {r}" for n, r in busy.items()),
                                hint="wait for it to finish (`drctl history` shows it running)")
        expected = site if site else " ".join(names)
        confirm_typed(expected, f"{operation} of {', '.join(names)} will change DNS and traffic for real.", yes=yes)
    ctx = Context(inv, state_dir=sd, approve=Approver(yes), accept_mass_change=acked, site_down=down)
    run_id = None if dry_run else new_run_id(operation)
    store = RunStore(sd)
    runner = Runner(plan, ctx, run_id=run_id, store=store, leases=leases,
                    reporter=ProgressReporter(quiet=json_out), dry_run=dry_run, force=force, max_workers=parallel)
    meta = run_meta({"inventory": str(inventory.resolve()), "playbook": str(pb_path.resolve()),
                     "argv": sys.argv[1:], "accept_mass_change": sorted(acked), "site_down": sorted(down)})
    try:
        result = runner.run(runner.start_record(meta))
    finally:
        try:
            ctx.close()
        finally:
            store.close()
    return _report(result.to_dict(), json_out)


def _acknowledged(plan: Plan, names: list[str] | None) -> frozenset[str]:
    unknown = sorted(set(names or []) - {sp.service for sp in plan.services})
    if unknown:
        raise UsageError(f"--accept-mass-change names services that are not part of this run: {', '.join(unknown)}")
    return frozenset(names or [])


def _sites_down(inv: Any, plan: Plan, names: list[str] | None) -> frozenset[str]:
    """Sites declared lost: known sites, and never a site the run moves services to."""
    down = frozenset(names or [])
    unknown = sorted(down - set(inv.sites))
    if unknown:
        raise UsageError(f"--site-down: unknown site {', '.join(unknown)}; known: {', '.join(sorted(inv.sites))}")
    targets = sorted(down & {sp.to_site for sp in plan.services})
    if targets:
        raise UsageError(f"--site-down {', '.join(targets)}: this run moves services to that site")
    return down


def _report(result: dict[str, Any], json_out: bool) -> int:
    if json_out:
        ENV.stdout.write(render.to_json(result) + "\n")
    else:
        ENV.out.print(render.run_table(result))
        ENV.out.print(render.services_table(result))
        for left in result.get("left_sites", []):
            ENV.err.print(render.left_site_line(left), markup=False)
        for w in result.get("warnings", []):
            ENV.err.print(f"WARNING: {w}", markup=False)
        if result.get("message"):
            ENV.err.print(result["message"], markup=False)
        if result["status"] in ("failed", "aborted") and result.get("run_id"):
            ENV.err.print(f"the run is journaled: `drctl resume {result['run_id']}` continues it")
        if result["status"] == "refused":
            ENV.err.print("nothing was changed; fix the findings above"
                          + (", or pass --force to override them" if result.get("forceable", True) else ""))
    return EXIT_BY_STATUS.get(result["status"], 1)


def _run_command(operation: str) -> Callable[..., int]:
    def command(
        services: ServicesArg = None,
        site: SiteOpt = None,
        playbook: PlaybookOpt = None,
        dry_run: Annotated[bool, typer.Option(
            "--dry-run", "-n", help="run the read-only checks, print what would change, change nothing")] = False,
        yes: YesOpt = False,
        force: Annotated[bool, typer.Option("--force", help="go on even if the gate checks fail "
                                                             "(stale backup, unhealthy target); never past a "
                                                             "changed host key or a mass-changed copy")] = False,
        json_out: JsonOpt = False,
        parallel: ParallelOpt = 32,
        accept_mass_change: AcceptMassChangeOpt = None,
        site_down: SiteDownOpt = None,
        inventory: InventoryOpt = DEFAULT_INVENTORY,
        state: StateDirOpt = None,
    ) -> int:
        return _operate(operation, services, site, playbook, dry_run, yes, force, json_out, inventory, state,
                        parallel, accept_mass_change, site_down)

    command.__doc__ = {
        "failover": "Move services from their primary site to their backup site.\n\n"
                    "Checks first that each backup is fresh (RPO) and healthy, for every service, before "
                    "anything changes; then flips DNS, waits until every authoritative server serves the "
                    "new values, and reroutes traffic. Independent services run in parallel, dependents "
                    "after their dependencies. Steps that need the primary are skipped when it does not "
                    "answer.",
        "failback": "Move services back from their backup site to their primary site.\n\n"
                    "The same checks and steps as failover, in the other direction.",
    }[operation]
    return command


failover_cmd = _run_command("failover")
failback_cmd = _run_command("failback")


def resume_cmd(
    run_id: Annotated[str, typer.Argument(help="the run to continue (see `drctl history`)")],
    yes: YesOpt = False,
    accept_changes: Annotated[bool, typer.Option(
        "--accept-changes", help="resume even though the inventory changed, or later runs moved these services, "
                                 "since this run was planned (the gate is still checked)")] = False,
    json_out: JsonOpt = False,
    state: StateDirOpt = None,
) -> int:
    """Finish an interrupted run: skip the steps it completed, repeat the one in flight, go on.

    The gate (freshness, health, pre-flight) is checked again first; it is overridden only if the
    original run was started with --force."""
    from drctl.core.plan import Plan, inventory_digest
    from drctl.engine.runner import Runner, done_from_journal, run_meta
    from drctl.engine.steps import Context
    from drctl.engine.store import LeaseStore, RunStore

    sd = state_dir(state)
    store = RunStore(sd)
    records = store.read(run_id)
    start = next((r for r in records if r.get("event") == "run_started"), None)
    if start is None:
        raise UsageError(f"run {run_id} has no start record; it cannot be resumed")
    last = next((r for r in reversed(records) if r.get("event") == "run_finished"), None)
    if last is not None and last.get("status") == "succeeded":
        ENV.err.print(f"run {run_id} already succeeded; nothing to resume")
        return 0
    plan = Plan.from_dict(start["plan"])
    inv = load_inventory(Path(start["inventory"]))
    gone = [sp.service for sp in plan.services if sp.service not in inv.services]
    if gone:
        # even with --accept-changes: drctl cannot finish (or read back) a service it no longer knows
        raise RefusedError(
            f"run {run_id} moves {', '.join(gone)}, which the inventory {start['inventory']} no longer has; "
            "nothing was changed",
            hint=f"put {', '.join(gone)} back in the inventory to finish this run, or start a new run for the "
                 f"other services (`drctl status` shows where {', '.join(gone)} stand)")
    if not accept_changes:
        if inventory_digest(inv) != plan.inventory_digest:
            raise RefusedError(f"the inventory {start['inventory']} changed since run {run_id} was planned",
                               hint="review it, then resume with --accept-changes, or start a new run")
        mine = {sp.service for sp in plan.services}
        later = [s for s in (summarize_run(r, store.read(r)) for r in store.list_runs() if r != run_id)
                 if s["started_ts"] > start.get("ts", 0) and mine & set(s["services"])]
        if later:
            raise RefusedError(
                f"later runs moved these services since {run_id}: "
                + ", ".join(f"{s['run_id']} ({s['operation']} of {', '.join(sorted(mine & set(s['services'])))}, "
                            f"{s['status']})" for s in later),
                hint="resuming would replay an older decision; start a new run, or pass --accept-changes")
    plan = _with_unmasked_params(plan, inv, start)
    done = done_from_journal(records)
    pending = [a for a in plan.actions() if a.id not in done or done[a.id].status not in ("ok", "skipped", "warn")]
    if not json_out:
        ENV.err.print(f"resuming {plan.operation} {run_id}: {len(pending)} of {len(plan.actions())} steps left")
    confirm_typed(" ".join(sp.service for sp in plan.services),
                  f"resume {plan.operation} of {', '.join(sp.service for sp in plan.services)}.", yes=yes)
    ctx = Context(inv, state_dir=sd, approve=Approver(yes),
                  accept_mass_change=frozenset(start.get("accept_mass_change") or []),
                  site_down=frozenset(start.get("site_down") or []) & set(inv.sites))
    runner = Runner(plan, ctx, run_id=run_id, store=store, leases=LeaseStore(sd),
                    reporter=ProgressReporter(quiet=json_out), force=bool(start.get("force")))
    try:
        result = runner.run({"event": "run_resumed", **run_meta({"argv": sys.argv[1:]})}, done)
    finally:
        try:
            ctx.close()
        finally:
            store.close()
    return _report(result.to_dict(), json_out)


def _with_unmasked_params(plan: Plan, inv: Any, start: dict[str, Any]) -> Plan:
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


def history_cmd(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="newest runs to list")] = 20,
    json_out: JsonOpt = False,
    state: StateDirOpt = None,
) -> int:
    """List runs recorded in the state directory, newest first."""
    from rich.table import Table

    from drctl.engine.store import LeaseStore, RunStore

    sd = state_dir(state)
    store, leases = RunStore(sd), LeaseStore(sd)
    rows = sorted((summarize_run(run_id, store.read(run_id)) for run_id in store.list_runs()),
                  key=lambda r: r["started_ts"], reverse=True)[:limit]
    for r in rows:  # an unfinished run whose process still holds a lease is running, not interrupted
        if r["status"] == "interrupted" and any(leases.held_by(s) == r["run_id"] for s in r["services"]):
            r["status"] = "running"
    if json_out:
        ENV.stdout.write(render.to_json(rows) + "\n")
        return 0
    t = Table(title=f"runs in {store.dir}", title_justify="left")
    for col in ("run", "operation", "started", "status", "services", "user"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["run_id"], r["operation"], r["started_at"], r["status"], ", ".join(r["services"]), r["user"])
    ENV.out.print(t)
    return 0


def summarize_run(run_id: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    start = next((r for r in records if r.get("event") == "run_started"), {})
    started = start.get("ts")
    last = records[-1] if records else {}
    status = last["status"] if last.get("event") == "run_finished" else "interrupted"
    return {"run_id": run_id, "operation": start.get("operation", "?"), "started_ts": started or 0.0,
            "started_at": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?",
            "status": status, "services": [s["service"] for s in start.get("plan", {}).get("services", [])],
            "user": start.get("user", "?")}
