"""``drctl drill``: rehearse a failover for real, measure it against the targets, and come back.

Exit codes: 0 passed; 7 a target (RTO/RPO) was missed; 4 refused with nothing changed (stale
backup, unhealthy backup, not on its primary, lock held); 5 a step failed and production was
returned to the primary (or, if even that failed, the message says what is where); 130 aborted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from drctl.cli.common import (
    DEFAULT_INVENTORY,
    ENV,
    Approver,
    InventoryOpt,
    JsonOpt,
    ProgressReporter,
    StateDirOpt,
    StateOpt,
    YesOpt,
    check_output_path,
    confirm_typed,
    load_inventory,
    open_state,
    write_output,
)
from drctl.core import render
from drctl.errors import UsageError
from drctl.units import format_duration

ServicesArg = Annotated[list[str] | None, typer.Argument(help="services to drill (or use --site)", show_default=False)]
SiteOpt = Annotated[str | None, typer.Option("--site", "-s", help="every service whose primary is SITE")]
OutOpt = Annotated[Path | None, typer.Option(help="also write this report file")]


def _playbook(path: Path | None, name: str, direction: str, inv: Any) -> tuple[Any, Path]:
    from drctl.model.load import builtin_playbook, load_playbook

    p = path or builtin_playbook(name)
    pb = load_playbook(p, inv)
    if pb.direction != direction:
        raise UsageError(f"playbook {p} is a {pb.direction} playbook; the drill needs a {direction} one here")
    return pb, p


def drill_cmd(
    services: ServicesArg = None,
    site: SiteOpt = None,
    playbook: Annotated[Path | None, typer.Option(
        "--playbook", "-p", help="failover half of the drill (default: the built-in drill.yaml)")] = None,
    failback_playbook: Annotated[Path | None, typer.Option(
        "--failback-playbook", help="how services return (default: the built-in failback.yaml)")] = None,
    yes: YesOpt = False,
    json_out: JsonOpt = False,
    html: Annotated[Path | None, typer.Option("--html", help="also write the HTML report to this file")] = None,
    junit: Annotated[Path | None, typer.Option("--junit", help="also write JUnit XML to this file")] = None,
    metrics_file: Annotated[Path | None, typer.Option(
        "--metrics-file", help="also write Prometheus metrics (textfile collector format), atomically")] = None,
    parallel: Annotated[int, typer.Option("--parallel", min=1, max=64, help="services at the same time, at most")] = 8,
    inventory: InventoryOpt = DEFAULT_INVENTORY,
    state: StateDirOpt = None,
    state_spec: StateOpt = None,
) -> int:
    """Rehearse a failover for real, measure RTO and RPO against the targets, and fail back.

    Fails over to the backup, checks it through the real path (DNS answers and HTTP through the
    load balancer), verifies integrity where configured, and fails back. Measures per service the
    RTO achieved (start until the backup serves) and the RPO exposure (age of the newest backup at
    failover time) and compares them with the inventory's `rto` and `rpo`. If a step fails, every
    service the drill touched is returned to its primary. The drill is recorded in the state
    directory; `drctl report DRILL_ID` renders it.

    Exit codes: 0 passed; 7 a target was missed; 4 refused, nothing changed; 5 a step failed
    (production was returned to the primary: the message says where everything is); 130 aborted;
    2 an output file (--html, --junit, --metrics-file) cannot be written (checked before the drill
    starts; if writing still fails afterwards, the drill's own exit code wins when it is not 0).
    """
    for option, path in (("--html", html), ("--junit", junit), ("--metrics-file", metrics_file)):
        check_output_path(option, path)
    from drctl.core.report import drill_html, drill_junit, drill_metrics
    from drctl.engine.drill import Drill
    from drctl.engine.steps import Context

    inv = load_inventory(inventory)
    from drctl.core.plan import select_services

    selected = select_services(inv, services or [], site)
    fo_pb, fo_path = _playbook(playbook, "drill", "failover", inv)
    fb_pb, fb_path = _playbook(failback_playbook, "failback", "failback", inv)
    st = open_state(state_spec, state, inv)
    sd = st.dir
    confirm_typed(site if site else " ".join(selected),
                  f"a drill of {', '.join(selected)} (a real failover to the backup and back)", yes=yes)
    ctx = Context(inv, state_dir=sd, approve=Approver(yes))
    meta = {"inventory": str(inventory.resolve()), "playbook": str(fo_path.resolve()),
            "failback_playbook": str(fb_path.resolve())}
    drill = Drill(ctx, selected, failover=fo_pb, failback=fb_pb, state_dir=sd, meta=meta,
                  reporter=ProgressReporter(quiet=json_out), max_workers=parallel, state=st)
    try:
        record = drill.run()
    finally:
        try:
            ctx.close()
        finally:
            st.close()
    unwritten: list[UsageError] = []
    for option, path, text in (("--html", html, drill_html), ("--junit", junit, drill_junit),
                               ("--metrics-file", metrics_file, drill_metrics)):
        if path is not None:
            try:
                write_output(option, path, text(record))
            except UsageError as e:
                unwritten.append(e)
    if json_out:
        ENV.stdout.write(render.to_json(record) + "\n")
    else:
        ENV.out.print(drill_table(record))
        ENV.err.print(record["message"], markup=False, style="bold" if record["exit_code"] else "")
        ENV.err.print(f"recorded as drill {record['drill_id']}: `drctl report {record['drill_id']} --format html`")
    for err in unwritten:
        ENV.err.print(f"drctl: {err.label}: {err.message} (the drill is recorded: `drctl report "
                      f"{record['drill_id']} -o FILE` writes its report again)", markup=False)
    code = int(record["exit_code"])
    return code if code or not unwritten else UsageError.exit_code


def drill_table(record: dict[str, Any]) -> Any:
    from rich.markup import escape
    from rich.table import Table

    from drctl.core.redact import redact_text

    t = Table(title=f"drill {record['drill_id']}: {record['status']}", title_justify="left")
    for col in ("service", "result", "RTO (target)", "RPO exposure (target)", "now served from", "findings"):
        t.add_column(col, overflow="fold")
    style = {"passed": "green", "missed": "yellow", "refused": "red", "failed": "red", "aborted": "red"}
    for name, r in record["services"].items():
        t.add_row(name, f"[{style.get(r['status'], '')}]{r['status']}[/]",
                  f"{_d(r.get('rto_s'))} ({_d(r.get('rto_target_s'))})",
                  f"{_d(r.get('rpo_exposure_s'))} ({_d(r.get('rpo_target_s'))})",
                  escape(redact_text(r.get("final", "?"))), escape(redact_text("\n".join(r.get("findings") or []))))
    return t


def _d(x: float | None) -> str:
    return "-" if x is None else format_duration(x)
