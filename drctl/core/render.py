"""Plans and runs as text: rich tables for people, Markdown for tickets, JSON for machines.

Pure: takes values, returns values (strings or rich renderables); printing is the CLI's job.
Everything returned is redacted (``drctl.core.redact``): no password of a URL or connection
string reaches a table, a Markdown document or JSON.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from drctl.core.redact import redact, redact_text
from drctl.units import format_duration

if TYPE_CHECKING:
    from drctl.core.plan import Plan

_STATUS_STYLE = {"ok": "green", "succeeded": "green", "skipped": "yellow", "warn": "yellow",
                 "planned": "cyan", "dry-run": "cyan", "failed": "red", "blocked": "red", "refused": "red",
                 "aborted": "red"}


def to_json(value: Any) -> str:
    """``value`` as indented JSON, every secret masked (values of secret-named keys, passwords in
    URLs and connection strings, also in objects JSON has no type for)."""
    return json.dumps(redact(value), indent=2, sort_keys=False, default=lambda o: redact_text(str(o)))


def plan_table(plan: Plan) -> Table:
    t = Table(title=f"{plan.operation} plan ({plan.playbook}), expected ~{format_duration(plan.expected_duration_s())}",
              title_justify="left")
    for col in ("#", "service", "step", "what", "from -> to"):
        t.add_column(col, overflow="fold")
    for n, (wave, sp, a) in enumerate(plan.in_order(), 1):
        changes = "\n".join(f"{c.what}: {c.before} -> {c.after}" for c in a.changes)
        if a.noop:
            changes = (changes + "\n" if changes else "") + "(already so: no change)"
        step = a.kind + (" (gate)" if a.gate else "")
        t.add_row(str(n), escape(f"{sp.service} ({sp.from_site}->{sp.to_site}, wave {wave})"), step,
                  escape(redact_text(a.title)), escape(redact_text(changes)))
    return t


def plan_markdown(plan: Plan) -> str:
    lines = [f"# {plan.operation} plan: {plan.playbook}", "",
             f"Expected duration: about {format_duration(plan.expected_duration_s())}.", ""]
    lines.append("Order: " + " → ".join(" + ".join(level) for level in plan.levels))
    lines.append("")
    if plan.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in plan.notes] + [""]
    for level in plan.levels:
        for name in level:
            sp = plan.service(name)
            deps = f", after {', '.join(sp.depends_on)}" if sp.depends_on else ""
            lines += [f"## {name}: {sp.from_site} → {sp.to_site}{deps}", "",
                      "| # | step | what | changes |", "|---|---|---|---|"]
            for i, a in enumerate(sp.actions, 1):
                changes = "<br>".join(f"`{_md(c.what)}` {_md(c.before)} → {_md(c.after)}" for c in a.changes)
                if a.noop:
                    changes += " (already so)"
                lines.append(f"| {i} | {a.kind}{' (gate)' if a.gate else ''} | {_md(a.title)} | {changes} |")
            lines.append("")
    return redact_text("\n".join(lines))


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def run_table(result: dict[str, Any]) -> Table:
    t = Table(title=f"{result['operation']} {result.get('run_id') or ''}: {result['status']}", title_justify="left")
    for col in ("service", "step", "status", "time", "detail"):
        t.add_column(col, overflow="fold")
    for a in result["actions"]:
        style = _STATUS_STYLE.get(a["status"], "")
        t.add_row(escape(a["service"]), a["kind"], f"[{style}]{a['status']}[/]" if style else a["status"],
                  format_duration(a["elapsed_s"]), escape(redact_text(a["detail"])))
    return t


def left_site_line(left: dict[str, Any]) -> str:
    """One paragraph on a site the run left: answering or not, fenced or not."""
    answering = "answering" if left["answering"] else f"NOT answering (since {left['silent_since']})"
    fences = "; ".join(f"{svc}: {f['status'].replace('_', ' ')} ({f['detail']})" for svc, f in left["services"].items())
    return f"site left: {left['site']}, {answering}. {fences}."  # what to do follows among the warnings


def services_table(result: dict[str, Any]) -> Table:
    t = Table(title="services", title_justify="left")
    t.add_column("service")
    t.add_column("result")
    for name, st in result["services"].items():
        style = _STATUS_STYLE.get(st, "")
        t.add_row(escape(name), f"[{style}]{st}[/]" if style else st)
    return t


def run_markdown(result: dict[str, Any]) -> str:
    result = redact(result)
    lines = [f"# {result['operation']} {result.get('run_id') or ''}: {result['status']}", ""]
    if result.get("message"):
        lines += [result["message"], ""]
    lines += ["| service | result |", "|---|---|"] + [f"| {s} | {st} |" for s, st in result["services"].items()]
    lines += ["", "| service | step | status | time | detail |", "|---|---|---|---|---|"]
    for a in result["actions"]:
        lines.append(f"| {a['service']} | {a['kind']} | {a['status']} | {format_duration(a['elapsed_s'])} "
                     f"| {_md(a['detail'])} |")
    return redact_text("\n".join(lines) + "\n")
