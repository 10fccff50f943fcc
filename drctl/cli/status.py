"""``drctl status``: one screen saying, per service, which site serves it now, how old its backups
are, and when its last drill ran and whether it passed. Read from DNS, HAProxy, the backup hosts
and the state directory (journal and drill records); changes nothing."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

import typer

from drctl.cli.common import DEFAULT_INVENTORY, ENV, InventoryOpt, JsonOpt, StateDirOpt, StateOpt, load_inventory
from drctl.core import render
from drctl.core.redact import redact_text
from drctl.units import format_duration

RUNS_READ = 200  # newest journals read for "last run" and command-moved traffic


def gather_status(inventory: Path, services: list[str] | None, state: Path | None,
                  state_spec: str | None = None) -> list[dict[str, Any]]:
    from drctl.core.status import journal_sites, last_runs, locate, status_row
    from drctl.engine.drill import latest_drills
    from drctl.engine.observe import observe
    from drctl.engine.readiness import check_readiness
    from drctl.engine.steps import Context
    from drctl.engine.store import default_state_dir, open_state
    from drctl.errors import RunNotFoundError

    inv = load_inventory(inventory)
    from drctl.core.plan import select_services

    selected = select_services(inv, services or [], None, all_services=not services)
    sd = state or default_state_dir()
    ctx = Context(inv, state_dir=sd)
    try:
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="status") as pool:
            facts_f = pool.submit(observe, inv, selected)
            backups_f = pool.submit(check_readiness, ctx, selected, checks=frozenset({"backup"}), deadline_s=30.0)
            facts, backups = facts_f.result(), backups_f.result()
    finally:
        ctx.close()
    if not state_spec:
        from drctl.cli.common import inventory_state

        state_spec = inventory_state(inv)
    st = open_state(state_spec, sd)
    store = st.runs
    runs = []
    try:
        for run_id in store.list_runs()[:RUNS_READ]:
            try:
                runs.append((run_id, store.read(run_id)))
            except RunNotFoundError:
                continue
    finally:
        st.close()
    sites, last, drills = journal_sites(runs), last_runs(runs), latest_drills(sd, selected)
    rows = []
    for name in selected:
        ages = [{"site": f.data.get("site"), "age_s": f.data.get("age_s"), "max_age_s": f.data.get("max_age_s"),
                 "level": f.level, "detail": f.detail} for f in backups if f.service == name]
        rows.append(status_row(locate(inv, name, facts, sites.get(name)), ages, drills.get(name), last.get(name)))
    return rows


def status_cmd(
    services: Annotated[list[str] | None, typer.Argument(help="services to show (default: all)",
                                                         show_default=False)] = None,
    json_out: JsonOpt = False,
    inventory: InventoryOpt = DEFAULT_INVENTORY,
    state: StateDirOpt = None,
    state_spec: StateOpt = None,
) -> int:
    """Which site serves each service now, how old its backups are, its last drill and run.

    Read from DNS, HAProxy, the backup hosts, the journal and the drill records; changes nothing.
    """
    from rich.markup import escape
    from rich.table import Table

    rows = gather_status(inventory, services, state, state_spec)
    if json_out:
        ENV.stdout.write(render.to_json({"checked_at": time.time(), "services": rows}) + "\n")
        return 0
    now = time.time()
    t = Table(title="drctl status", title_justify="left")
    for col in ("service", "served from", "DNS", "traffic", "newest backup", "last drill", "last run"):
        t.add_column(col, overflow="fold")
    for r in rows:
        where = escape(r["where"])
        where = where if r["on_primary"] else f"[bold yellow]{where}[/]"
        backups = []
        for b in r["backups"]:
            age = "none" if b["age_s"] is None else format_duration(max(b["age_s"], 0))
            style = {"fail": "red", "warn": "yellow"}.get(b["level"], "")
            text = f"{b['site']}: {age}"
            if b["age_s"] is None and b["level"] != "ok":
                text = f"{b['site']}: ? ({redact_text(b['detail'])[:60]})"  # masked before it is cut
            backups.append(f"[{style}]{escape(text)}[/]" if style else escape(text))
        d = r["last_drill"]
        drill = "never"
        if d:
            style = "green" if d["passed"] else "red"
            ago = f" {format_duration(now - d['finished'])} ago" if d.get("finished") else ""
            rto = f", RTO {format_duration(d['rto_s'])}" if d.get("rto_s") is not None else ""
            drill = f"[{style}]{escape(str(d['status']))}[/]{ago}{rto}"
        run = r["last_run"]
        last = "none"
        if run:
            ago = f" {format_duration(now - run['started'])} ago" if run.get("started") else ""
            last = escape(f"{run['operation']} {run['result']}{ago}")
        t.add_row(escape(r["service"]), where, escape(_short(r["dns"], r["dns_detail"])),
                  escape(_short(r["traffic"], r["traffic_detail"])), "\n".join(backups) or "-", drill, last)
    ENV.out.print(t)
    return 0


def _short(site: str | None, detail: str) -> str:
    return site if site is not None else f"? ({redact_text(detail)})"
