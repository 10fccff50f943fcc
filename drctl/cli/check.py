"""``drctl check``: is every selected service ready to fail over? Changes nothing.

One line per finding on stdout, then a verdict per service; exit 7 when any service is not ready.
"""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from drctl.cli.common import (
    DEFAULT_INVENTORY,
    ENV,
    InventoryOpt,
    JsonOpt,
    StateDirOpt,
    check_output_path,
    load_inventory,
    write_output,
)
from drctl.core import render
from drctl.core.readiness import Finding, Verdict, all_ready, verdicts
from drctl.errors import NotReadyError

if TYPE_CHECKING:
    from drctl.model.inventory import Inventory

ServicesArg = Annotated[list[str] | None, typer.Argument(help="services to check (or --site / --all)",
                                                         show_default=False)]
SiteOpt = Annotated[str | None, typer.Option("--site", "-s", help="every service whose primary is SITE")]
AllOpt = Annotated[bool, typer.Option("--all", "-a", help="every service of the inventory")]
MetricsOpt = Annotated[Path | None, typer.Option(
    "--metrics-file", help="also write Prometheus metrics (textfile collector format) to this file, atomically")]
DeadlineOpt = Annotated[float, typer.Option("--deadline", min=1, max=3600,
                                            help="seconds after which whatever has not answered is a finding")]


class Direction(StrEnum):
    failover = "failover"
    failback = "failback"


def readiness_of(inv: Inventory, selected: list[str], state: Path | None, operation: str = "failover",
                 deadline: float = 60.0) -> tuple[list[Finding], dict[str, Verdict]]:
    """Check ``selected`` services: (findings, verdicts). Also used by the planning reports."""
    from drctl.engine.readiness import check_readiness
    from drctl.engine.steps import Context
    from drctl.engine.store import default_state_dir

    ctx = Context(inv, state_dir=state or default_state_dir())
    try:
        findings = check_readiness(ctx, selected, operation=operation, deadline_s=deadline)
    finally:
        ctx.close()
    return findings, verdicts(findings, selected)


def check_cmd(
    services: ServicesArg = None,
    site: SiteOpt = None,
    all_services: AllOpt = False,
    direction: Annotated[Direction, typer.Option(
        "--for", help="readiness for a failover (to the backup) or a failback (to the primary)")] = Direction.failover,
    json_out: JsonOpt = False,
    metrics_file: MetricsOpt = None,
    deadline: DeadlineOpt = 60.0,
    inventory: InventoryOpt = DEFAULT_INVENTORY,
    state: StateDirOpt = None,
) -> int:
    """Check that services are ready to fail over, changing nothing.

    Every host answers SSH with a verified host key; the newest backups are within their limits
    (and the RPO); the target site is healthy; each zone's primary DNS server accepts our TSIG key
    (a signed UPDATE whose prerequisite fails on purpose: the zone does not change); HAProxy knows
    the backend servers; integrity baselines are recent enough. Exit 0 when every service is
    ready, 7 when any is not; 2 when the --metrics-file cannot be written (checked first).
    """
    from drctl.core.plan import select_services

    check_output_path("--metrics-file", metrics_file)
    started = time.time()
    inv = load_inventory(inventory)
    selected = select_services(inv, services or [], site, all_services)
    findings, vs = readiness_of(inv, selected, state, direction.value, deadline)
    ready = all_ready(vs)
    if metrics_file is not None:
        from drctl.core.report import check_metrics

        write_output("--metrics-file", metrics_file, check_metrics(findings, vs, started))
    if json_out:
        ENV.stdout.write(render.to_json({
            "ready": ready, "operation": direction.value, "checked_at": started,
            "elapsed_s": round(time.time() - started, 3),
            "services": {s: v.to_dict() for s, v in vs.items()},
            "findings": [f.to_dict() for f in findings]}) + "\n")
    else:
        for f in findings:
            ENV.out.print(f.line(), markup=False, soft_wrap=True,
                          style={"fail": "red", "warn": "yellow"}.get(f.level, ""))
        for v in vs.values():
            ENV.out.print(v.line(), markup=False, soft_wrap=True, style="bold green" if v.ready else "bold red")
        n_bad = sum(not v.ready for v in vs.values())
        ENV.err.print(f"{len(selected)} service(s) checked in {time.time() - started:.1f}s: "
                      + ("all ready" if ready else f"{n_bad} not ready"))
    return 0 if ready else NotReadyError.exit_code
