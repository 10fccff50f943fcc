"""Commands that plan and run playbooks: plan, failover, failback, resume, history.

Parse -> ``drctl.api`` (plan, run, resume, history) -> render -> exit code. No decisions here:
the commands ask the operator (through the API's hooks) and show what it returns.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from drctl import api
from drctl.cli.common import (
    DEFAULT_INVENTORY,
    ENV,
    Approver,
    InventoryOpt,
    JsonOpt,
    ProgressReporter,
    StateDirOpt,
    StateInventoryOpt,
    StateOpt,
    YesOpt,
    confirm_typed,
    load_inventory,
)
from drctl.core import render
from drctl.errors import ExitStatus

if TYPE_CHECKING:
    from drctl.core.plan import Action, Plan

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

EXIT_BY_STATUS = {"succeeded": ExitStatus.OK, "dry-run": ExitStatus.OK, "refused": ExitStatus.REFUSED,
                  "failed": ExitStatus.FAILED, "aborted": ExitStatus.ABORTED, "stopped": ExitStatus.STATE_STORE}


class Operation(StrEnum):
    failover = "failover"
    failback = "failback"


class PlanFormat(StrEnum):
    table = "table"
    json = "json"
    md = "md"
    html = "html"


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
    inv = load_inventory(inventory)
    plan = api.plan(inv, operation.value, services, site, playbook=playbook, state_dir=state)
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
             parallel: int, accept_mass_change: list[str] | None = None, site_down: list[str] | None = None,
             state_spec: str | None = None) -> int:
    def show(plan: Plan) -> None:
        if not json_out:
            ENV.err.print(render.plan_table(plan))
            for n in plan.notes:
                ENV.err.print(f"note: {n}", markup=False)

    def confirm(plan: Plan) -> None:
        names = [sp.service for sp in plan.services]
        confirm_typed(site if site else " ".join(names),
                      f"{operation} of {', '.join(names)} will change DNS and traffic for real.", yes=yes)

    result = api.run(inventory, operation, services, site, playbook=playbook, dry_run=dry_run, force=force,
                     parallel=parallel, accept_mass_change=accept_mass_change, site_down=site_down, state_dir=state,
                     state=state_spec, approve=Approver(yes), reporter=ProgressReporter(quiet=json_out),
                     on_plan=show, confirm=confirm, argv=sys.argv[1:])
    return _report(result.to_dict(), json_out)


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
        if result["status"] in ("failed", "aborted", "stopped") and result.get("run_id"):
            ENV.err.print(f"the run is journaled: `drctl resume {result['run_id']}` continues it")
        if result["status"] == "refused":
            ENV.err.print("nothing was changed; fix the findings above"
                          + (", or pass --force to override them" if result.get("forceable", True) else ""))
    return EXIT_BY_STATUS.get(result["status"], ExitStatus.INTERNAL)


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
        state_spec: StateOpt = None,
    ) -> int:
        return _operate(operation, services, site, playbook, dry_run, yes, force, json_out, inventory, state,
                        parallel, accept_mass_change, site_down, state_spec=state_spec)

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
    state_spec: StateOpt = None,
    inventory: StateInventoryOpt = None,
) -> int:
    """Finish an interrupted run: skip the steps it completed, repeat the one in flight, go on.

    The gate (freshness, health, pre-flight) is checked again first; it is overridden only if the
    original run was started with --force."""

    def confirm(plan: Plan, pending: list[Action]) -> None:
        if not json_out:
            ENV.err.print(f"resuming {plan.operation} {run_id}: {len(pending)} of {len(plan.actions())} steps left")
        names = [sp.service for sp in plan.services]
        confirm_typed(" ".join(names), f"resume {plan.operation} of {', '.join(names)}.", yes=yes)

    result = api.resume(run_id, accept_changes=accept_changes, state_dir=state, state=state_spec,
                        inventory=inventory or DEFAULT_INVENTORY, approve=Approver(yes),
                        reporter=ProgressReporter(quiet=json_out), confirm=confirm, argv=sys.argv[1:])
    if result is None:
        ENV.err.print(f"run {run_id} already succeeded; nothing to resume")
        return ExitStatus.OK
    return _report(result.to_dict(), json_out)


def history_cmd(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="newest runs to list")] = 20,
    json_out: JsonOpt = False,
    state: StateDirOpt = None,
    state_spec: StateOpt = None,
    inventory: StateInventoryOpt = None,
) -> int:
    """List runs recorded in the state directory (or the etcd state), newest first."""
    from rich.table import Table

    runs = api.history(limit, state_dir=state, state=state_spec, inventory=inventory or DEFAULT_INVENTORY)
    if json_out:
        ENV.stdout.write(render.to_json(runs.runs) + "\n")
        return ExitStatus.OK
    t = Table(title=f"runs in {runs.where}", title_justify="left")
    for col in ("run", "operation", "started", "status", "services", "user"):
        t.add_column(col)
    for r in runs.runs:
        t.add_row(r["run_id"], r["operation"], r["started_at"], r["status"], ", ".join(r["services"]), r["user"])
    ENV.out.print(t)
    return ExitStatus.OK
