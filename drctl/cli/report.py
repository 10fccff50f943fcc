"""``drctl report RUN_ID``: a run or a drill as Markdown, self-contained HTML, JSON or JUnit XML."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from drctl.cli.common import (
    DEFAULT_INVENTORY,
    ENV,
    StateDirOpt,
    StateInventoryOpt,
    StateOpt,
    check_output_path,
    open_state,
    write_output,
)
from drctl.core import render

if TYPE_CHECKING:
    from drctl.engine.store import State


class ReportFormat(StrEnum):
    md = "md"
    html = "html"
    json = "json"
    junit = "junit"


def load_record(sd: Path, run_id: str, state: State | None = None) -> tuple[str, dict[str, Any]]:
    """("drill", drill record) or ("run", run rebuilt from its journal, in ``state`` or else the
    state directory ``sd``)."""
    from drctl.core.report import run_from_journal
    from drctl.engine.drill import DrillStore
    from drctl.engine.store import RunStore

    if DrillStore.is_drill_id(run_id):
        return "drill", DrillStore(sd).read(run_id)
    return "run", run_from_journal(run_id, (state.runs if state is not None else RunStore(sd)).read(run_id))


def render_record(kind: str, record: dict[str, Any], fmt: ReportFormat) -> str:
    from drctl.core import report

    if fmt is ReportFormat.json:
        return render.to_json(record) + "\n"
    if kind == "drill":
        return {ReportFormat.md: report.drill_markdown, ReportFormat.html: report.drill_html,
                ReportFormat.junit: report.drill_junit}[fmt](record)
    return {ReportFormat.md: render.run_markdown, ReportFormat.html: report.run_html,
            ReportFormat.junit: report.run_junit}[fmt](record)


def report_cmd(
    run_id: Annotated[str, typer.Argument(help="a run id (`drctl history`) or a drill id")],
    fmt: Annotated[ReportFormat, typer.Option("--format", "-f", help="md, html, json or junit")] = ReportFormat.md,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write to this file instead of stdout")] = None,
    state: StateDirOpt = None,
    state_spec: StateOpt = None,
    inventory: StateInventoryOpt = None,
) -> int:
    """Render a run or a drill as Markdown, self-contained HTML, JSON or JUnit XML.

    HTML is one file with a timeline of steps per service, readable offline; JUnit XML has a test
    case per service and step, for CI systems. An --output file whose directory is missing or
    cannot be written is refused (exit 2) before anything is read.
    """
    check_output_path("--output", output)
    st = open_state(state_spec, state, inventory or DEFAULT_INVENTORY)
    try:
        kind, record = load_record(st.dir, run_id, st)
    finally:
        st.close()
    text = render_record(kind, record, fmt)
    if output is None:
        ENV.stdout.write(text)
    else:
        write_output("--output", output, text)
        ENV.err.print(f"wrote {output}", markup=False)
    return 0
