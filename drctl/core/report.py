"""Reports of runs, drills and plans: self-contained HTML with a timeline, Markdown, JUnit XML,
and Prometheus text format. Pure: values in, strings out (writing files is the CLI's job).

- HTML: one file, inline CSS, no script, no external resource: readable offline and attachable.
  Each service has a lane on a timeline of its steps (bars placed by start and duration; steps
  that overlapped in time, like the gate's parallel checks, are stacked).
- JUnit XML: a ``testsuite`` per service and a ``testcase`` per step (drills add the RTO and RPO
  targets as test cases), so a CI system shows drill results like test results.
- Prometheus: the text exposition format for node_exporter's textfile collector (no timestamps,
  one HELP and TYPE per family).

A *run* here is the dict of ``RunResult.to_dict()`` (or ``run_from_journal``); a *drill* is the
record ``drctl.engine.drill`` writes.

Every report is redacted (``drctl.core.redact``): the records are masked before they are
rendered, and the text once more after, so no password of a URL or connection string is shown.
"""

from __future__ import annotations

import html
import math
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from drctl.core import render
from drctl.core.plan import Action, Plan
from drctl.core.readiness import Finding, Verdict
from drctl.core.redact import redact, redact_text
from drctl.units import format_duration

# --- runs from the journal -----------------------------------------------------------------------


def run_from_journal(run_id: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """A run as ``RunResult.to_dict()`` shapes it, rebuilt from its journal records. Actions the
    journal has no record of (never started) are listed with status ``not run``; an action
    started but never finished (the process died) is ``interrupted``."""
    start = next((r for r in records if r.get("event") == "run_started"), {})
    end = next((r for r in reversed(records) if r.get("event") == "run_finished"), None)
    plan = start.get("plan") or {}
    started: dict[str, float] = {}
    finished: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.get("event") == "action_started":
            started[r["action"]] = float(r["ts"])
        elif r.get("event") == "action_finished":
            finished[r["action"]] = r
    t_first = float(start.get("ts") or (records[0]["ts"] if records else time.time()))
    t_last = float(records[-1]["ts"]) if records else t_first
    actions = []
    for sp in plan.get("services", []):
        for a in sp.get("actions", []):
            aid = a["id"]
            fin = finished.get(aid)
            t0 = started.get(aid)
            if fin is not None:
                t1 = float(fin["ts"])
                t0 = t0 if t0 is not None else t1 - float(fin.get("elapsed_s") or 0)
                status, detail, data = fin.get("status", "?"), fin.get("detail", ""), fin.get("data") or {}
            elif t0 is not None:
                t1, status, detail, data = t_last, "interrupted", "started, no end recorded", {}
            else:
                t0 = t1 = t_last
                status, detail, data = "not run", "", {}
            actions.append({"id": aid, "service": a["service"], "kind": a["kind"], "title": a["title"],
                            "started": t0, "finished": t1, "elapsed_s": round(t1 - t0, 3), "status": status,
                            "detail": detail, "data": data})
    services = dict((end or {}).get("services") or {sp["service"]: "interrupted" for sp in plan.get("services", [])})
    return redact({"run_id": run_id, "operation": start.get("operation", "?"),
            "status": end.get("status", "?") if end else "interrupted", "dry_run": False,
            "started": t_first, "finished": float(end["ts"]) if end else t_last,
            "elapsed_s": round((float(end["ts"]) if end else t_last) - t_first, 3), "services": services,
            "findings": list((end or {}).get("findings") or []), "message": (end or {}).get("message", ""),
            "user": start.get("user"), "host": start.get("host"), "drill_id": start.get("drill_id"),
            "actions": sorted(actions, key=lambda a: (a["started"], a["id"]))})


def drill_steps(drill: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every step of a drill in time order, each with its ``phase`` (failover / failback)."""
    steps: list[dict[str, Any]] = []
    for phase in ("failover", "failback"):
        run = (drill.get("runs") or {}).get(phase)
        for a in (run or {}).get("actions", []):
            steps.append({**a, "phase": phase, "name": f"{phase} {a['id'].split('/', 1)[-1]}"})
    for p in drill.get("probes") or []:
        steps.append({**p, "name": f"{p['phase']} {p['kind']}"})
    return sorted(steps, key=lambda s: (s["started"], s["finished"]))


# --- timeline (HTML) -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    lane: str
    label: str
    start: float
    end: float
    status: str
    tip: str


_CSS = """
:root{--ok:#2e7d32;--warn:#e69500;--failed:#c62828;--skipped:#8d8d8d;--planned:#1e6bb8;--blocked:#6d1b1b;
--notrun:#c9c9c9;--phase:#5c4d9a;--fg:#1d1d1d;--muted:#666;--line:#ddd}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);margin:24px auto;
max-width:1180px;padding:0 16px;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid var(--line)}
.meta{color:var(--muted);margin:0 0 12px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-weight:600;font-size:12px;
white-space:nowrap}
table{border-collapse:collapse;width:100%;margin:6px 0}
th,td{border:1px solid var(--line);padding:4px 6px;text-align:left;vertical-align:top;overflow-wrap:anywhere}
th{background:#f4f4f4}td.num{text-align:right;white-space:nowrap}
code{font-size:12px}
.st-ok,.st-passed,.st-succeeded{background:var(--ok)}.st-warn,.st-missed{background:var(--warn)}
.st-failed,.st-refused,.st-aborted,.st-interrupted{background:var(--failed)}
.st-skipped,.st-dry-run{background:var(--skipped)}.st-planned{background:var(--planned)}
.st-blocked{background:var(--blocked)}.st-not-run{background:var(--notrun);color:#333}
.st-phase{background:var(--phase)}
.tl{border:1px solid var(--line);padding:8px 8px 4px;border-radius:4px}
.tl-axis{position:relative;height:18px;margin-left:150px;border-bottom:1px solid #999;font-size:11px;color:var(--muted)}
.tl-axis span{position:absolute;bottom:2px;transform:translateX(-50%);white-space:nowrap}
.tl-axis span.first{transform:none}.tl-axis span.last{transform:translateX(-100%)}
.tl-lane{display:flex;border-bottom:1px dashed #eee}
.tl-label{width:150px;flex:none;font-weight:600;padding:5px 6px 0 0;overflow:hidden;text-overflow:ellipsis}
.tl-tracks{flex:1;position:relative;background:repeating-linear-gradient(90deg,transparent 0,transparent
calc(25% - 1px),#eee calc(25% - 1px),#eee 25%)}
.tl-track{position:relative;height:22px;margin:4px 0}
.tl-bar{position:absolute;top:0;height:100%;min-width:3px;border-radius:3px;overflow:hidden;white-space:nowrap;
font-size:11px;line-height:22px;color:#fff;padding:0 4px}
.legend span{margin-right:12px;font-size:12px}.legend i{display:inline-block;width:10px;height:10px;
border-radius:2px;margin-right:4px;vertical-align:middle}
ul.findings{margin:4px 0;padding-left:20px}
.fail{color:var(--failed);font-weight:600}.warn{color:#9a6400;font-weight:600}.okk{color:var(--ok)}
footer{margin-top:32px;color:var(--muted);font-size:12px}
"""


def _e(text: Any) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def _cls(status: str) -> str:
    return "st-" + re.sub(r"[^a-z]+", "-", str(status).lower()).strip("-")


def _badge(status: str) -> str:
    return f'<span class="badge {_cls(status)}">{_e(status)}</span>'


def _stack(bars: list[Bar]) -> list[list[Bar]]:
    """Bars of one lane in rows so that bars in a row do not overlap (first fit, by start)."""
    rows: list[list[Bar]] = []
    for b in sorted(bars, key=lambda b: (b.start, b.end)):
        for row in rows:
            if row[-1].end <= b.start + 1e-9:
                row.append(b)
                break
        else:
            rows.append([b])
    return rows


def timeline_html(bars: Sequence[Bar], lanes: Sequence[str], t0: float, t1: float) -> str:
    """A time axis and one lane per name in ``lanes``: positions are percentages of [t0, t1]."""
    span = max(t1 - t0, 1e-3)

    def pct(t: float) -> float:
        return min(max((t - t0) / span * 100.0, 0.0), 100.0)

    ticks = []
    for i in range(5):
        cls = ' class="first"' if i == 0 else (' class="last"' if i == 4 else "")
        ticks.append(f'<span{cls} style="left:{i * 25}%">{_e(format_duration(span * i / 4))}</span>')
    out = ['<div class="tl">', f'<div class="tl-axis">{"".join(ticks)}</div>']
    for lane in lanes:
        rows = _stack([b for b in bars if b.lane == lane]) or [[]]
        out.append(f'<div class="tl-lane"><div class="tl-label" title="{_e(lane)}">{_e(lane)}</div>'
                   '<div class="tl-tracks">')
        for row in rows:
            out.append('<div class="tl-track">')
            for b in row:
                left = pct(b.start)
                width = max(pct(b.end) - left, 0.35)
                left = min(left, 100.0 - width)
                out.append(f'<div class="tl-bar {_cls(b.status)}" style="left:{left:.3f}%;width:{width:.3f}%" '
                           f'title="{_e(b.tip)}">{_e(b.label)}</div>')
            out.append("</div>")
        out.append("</div></div>")
    out.append("</div>")
    legend = ["ok", "warn", "skipped", "failed", "blocked", "planned", "not run"]
    out.append('<p class="legend">' + "".join(f'<span><i class="{_cls(s)}"></i>{_e(s)}</span>' for s in legend)
               + "</p>")
    return "\n".join(out)


def _page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n{body}\n"
            f"<footer>drctl report, generated {_e(_ts(time.time()))}</footer></body></html>\n")


def _ts(t: float | None) -> str:
    if t is None:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t))


def _step_bar(lane: str, s: Mapping[str, Any]) -> Bar:
    tip = (f"{s.get('name') or s['kind']}: {s['status']} in {format_duration(s.get('elapsed_s') or 0)}\n"
           f"{s.get('title', '')}\n{s.get('detail', '')}").strip()
    return Bar(lane, s["kind"], float(s["started"]), float(s["finished"]), s["status"], tip)


def _steps_table(steps: Iterable[Mapping[str, Any]], t0: float, with_phase: bool = False) -> str:
    head = ["service"] + (["phase"] if with_phase else []) + ["step", "what", "status", "at", "took", "detail"]
    rows = ["<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for s in steps:
        cells = [_e(s["service"])] + ([_e(s.get("phase", ""))] if with_phase else [])
        at = "" if s["status"] == "not run" else "+" + format_duration(max(float(s["started"]) - t0, 0))
        cells += [f"<code>{_e(s['kind'])}</code>", _e(s.get("title", "")), _badge(s["status"]),
                  f'<span class="num">{_e(at)}</span>', _e(format_duration(s.get("elapsed_s") or 0)),
                  _e(s.get("detail", ""))]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    rows.append("</table>")
    return "\n".join(rows)


def run_html(run: Mapping[str, Any]) -> str:
    """A run (failover, failback, resume) as one self-contained HTML page."""
    run = redact(run)
    actions = list(run.get("actions", []))
    t0 = float(run["started"])
    t1 = max([float(run.get("finished") or t0)] + [float(a["finished"]) for a in actions])
    lanes = list(run.get("services", {})) or sorted({a["service"] for a in actions})
    bars = [_step_bar(a["service"], a) for a in actions if a["status"] != "not run"]
    title = f"{run['operation']} {run.get('run_id') or ''}: {run['status']}"
    body = [f"<h1>{_e(run['operation'])} <code>{_e(run.get('run_id') or '')}</code> {_badge(run['status'])}</h1>",
            f'<p class="meta">started {_e(_ts(t0))}, took {_e(format_duration(t1 - t0))}'
            + (f", by {_e(run['user'])}@{_e(run.get('host'))}" if run.get("user") else "")
            + (f", part of drill <code>{_e(run['drill_id'])}</code>" if run.get("drill_id") else "") + "</p>"]
    if run.get("message"):
        body.append(f"<p>{_e(run['message'])}</p>")
    results = "".join(f"<tr><td>{_e(s)}</td><td>{_badge(st)}</td></tr>" for s, st in run.get("services", {}).items())
    body.append(f"<h2>Services</h2><table><tr><th>service</th><th>result</th></tr>{results}</table>")
    if run.get("findings"):
        body.append("<h2>Findings</h2><ul class=\"findings\">"
                    + "".join(f"<li>{_e(f)}</li>" for f in run["findings"]) + "</ul>")
    body.append("<h2>Timeline</h2>" + timeline_html(bars, lanes, t0, t1))
    body.append("<h2>Steps</h2>" + _steps_table(actions, t0))
    return redact_text(_page(title, "\n".join(body)))


def _fmt_s(x: float | None) -> str:
    return "–" if x is None else format_duration(x)


def _met(met: bool | None, target: float | None) -> str:
    if target is None:
        return '<span class="meta">no target</span>'
    if met is None:
        return ""  # not measured: the result column says why
    return '<span class="okk">met</span>' if met else '<span class="fail">missed</span>'


def drill_html(drill: Mapping[str, Any]) -> str:
    """A drill as one self-contained HTML page: per-service results against targets, a timeline
    of every step per service (failover, real-path checks, failback), and the final state."""
    drill = redact(drill)
    steps = drill_steps(drill)
    t0 = float(drill["started"])
    t1 = max([float(drill.get("finished") or t0)] + [float(s["finished"]) for s in steps])
    services = drill.get("services") or {}
    lanes = list(services)
    bars = [_step_bar(s["service"], s) for s in steps if s["status"] != "not run"]
    phases = []
    for p in drill.get("phases") or []:
        if p.get("started") is not None and p.get("finished") is not None:
            phases.append(Bar("phases", p["phase"], float(p["started"]), float(p["finished"]), "phase",
                              f"{p['phase']}: {p.get('status', '')} {p.get('run_id') or ''}".strip()))
    title = f"drill {drill['drill_id']}: {drill['status']}"
    body = [f"<h1>drill <code>{_e(drill['drill_id'])}</code> {_badge(drill['status'])}</h1>",
            f'<p class="meta">started {_e(_ts(t0))}, took {_e(format_duration(t1 - t0))}'
            + (f", by {_e(drill['user'])}@{_e(drill.get('host'))}" if drill.get("user") else "")
            + f", exit code {_e(drill.get('exit_code'))}</p>"]
    if drill.get("message"):
        body.append(f"<p><strong>{_e(drill['message'])}</strong></p>")
    rows = ["<table><tr><th>service</th><th>result</th><th>RTO achieved</th><th>RTO target</th>"
            "<th>RPO exposure</th><th>RPO target</th><th>now served from</th><th>findings</th></tr>"]
    for name, r in services.items():
        findings = "".join(f"<li>{_e(f)}</li>" for f in r.get("findings") or [])
        rto_target, rpo_target = r.get("rto_target_s"), r.get("rpo_target_s")
        rows.append(
            f"<tr><td>{_e(name)}</td><td>{_badge(r['status'])}</td>"
            f"<td class=\"num\">{_e(_fmt_s(r.get('rto_s')))}</td>"
            f"<td class=\"num\">{_e(_fmt_s(rto_target))} {_met(r.get('rto_met'), rto_target)}</td>"
            f"<td class=\"num\">{_e(_fmt_s(r.get('rpo_exposure_s')))}</td>"
            f"<td class=\"num\">{_e(_fmt_s(rpo_target))} {_met(r.get('rpo_met'), rpo_target)}</td>"
            f"<td>{_e(r.get('final', '?'))}</td>"
            f"<td>{'<ul class=findings>' + findings + '</ul>' if findings else ''}</td></tr>")
    rows.append("</table>")
    body.append("<h2>Services</h2>" + "\n".join(rows))
    body.append("<h2>Timeline</h2>" + timeline_html(phases + bars, (["phases"] if phases else []) + lanes, t0, t1))
    body.append("<h2>Steps</h2>" + _steps_table(steps, t0, with_phase=True))
    runs = drill.get("runs") or {}
    linked = [f"{ph}: <code>{_e(r.get('run_id'))}</code> ({_e(r.get('status'))})" for ph, r in runs.items() if r]
    if linked:
        body.append("<h2>Runs</h2><p>" + "; ".join(linked) + " — each is journaled; "
                    "<code>drctl report RUN_ID</code> shows it alone.</p>")
    return redact_text(_page(title, "\n".join(body)))


# --- plans ---------------------------------------------------------------------------------------


def _worst_case_s(a: Action) -> float | None:
    t = a.params.get("timeout")
    return float(t) if t is not None else None


def _plan_notes(plan: Plan) -> list[str]:
    notes = []
    ttls = sorted({int(a.params["ttl"]) for a in plan.actions() if a.kind == "wait_dns" and "ttl" in a.params})
    if ttls:
        notes.append(f"After the DNS change, clients that cached the old answer follow within the TTL "
                     f"({', '.join(f'{t}s' for t in ttls)}).")
    bounded = [a for a in plan.actions() if _worst_case_s(a) is not None]
    if bounded:
        worst = sum(_worst_case_s(a) or 0 for a in bounded)
        notes.append(f"Steps with a timeout could take up to {format_duration(worst)} in all if every one "
                     "of them ran to its timeout.")
    return notes


def _findings_html(findings: Sequence[Finding], verdicts: Mapping[str, Verdict]) -> str:
    if not findings and not verdicts:
        return "<p class=\"meta\">readiness not checked</p>"
    out = ["<table><tr><th>service</th><th>verdict</th><th>findings</th></tr>"]
    for name, v in verdicts.items():
        items = []
        for f in findings:
            if f.service != name:
                continue
            cls = {"fail": "fail", "warn": "warn", "ok": "okk"}[f.level]
            items.append(f'<li><span class="{cls}">{_e(f.level)}</span> {_e(f.check)} {_e(f.subject)}: '
                         f"{_e(f.detail)}</li>")
        verdict = _badge("ready" if v.ready else "not ready").replace(
            "st-ready", "st-ok").replace("st-not-ready", "st-failed")
        out.append(f"<tr><td>{_e(name)}</td><td>{verdict}</td><td><ul class=findings>{''.join(items)}</ul></td></tr>")
    out.append("</table>")
    return "\n".join(out)


def plan_html(plan: Plan, findings: Sequence[Finding] = (), verdicts: Mapping[str, Verdict] | None = None) -> str:
    """The planning report: ordered steps, what each changes, expected durations (with TTL waits
    and timeouts), an expected timeline per service, and the readiness findings."""
    verdicts = verdicts or {}
    sched = plan.schedule()
    total = max((end for _a, _s, end in sched), default=0.0)
    lanes = [n for level in plan.levels for n in level]
    bars = [Bar(a.service, a.kind, s, e, "planned", f"{a.kind}: {a.title} (expected {format_duration(a.expected_s)})")
            for a, s, e in sched]
    body = [f"<h1>{_e(plan.operation)} plan <code>{_e(plan.playbook)}</code></h1>",
            f'<p class="meta">expected duration about {_e(format_duration(total))}; '
            f"order: {_e(' → '.join(' + '.join(lv) for lv in plan.levels))}; inventory digest "
            f"<code>{_e(plan.inventory_digest)}</code></p>"]
    notes = list(plan.notes) + _plan_notes(plan)
    if notes:
        body.append("<ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    body.append("<h2>Readiness</h2>" + _findings_html(findings, verdicts))
    body.append("<h2>Expected timeline</h2>" + timeline_html(bars, lanes, 0.0, max(total, 0.001)))
    rows = ["<table><tr><th>#</th><th>service</th><th>step</th><th>what</th><th>changes</th>"
            "<th>expected</th><th>at most</th></tr>"]
    for n, (_wave, sp, a) in enumerate(plan.in_order(), 1):
        changes = "<br>".join(f"<code>{_e(c.what)}</code> {_e(c.before)} → {_e(c.after)}" for c in a.changes)
        if a.noop:
            changes += " <em>(already so: no change)</em>"
        worst = _worst_case_s(a)
        rows.append(f"<tr><td>{n}</td><td>{_e(sp.service)} ({_e(sp.from_site)} → {_e(sp.to_site)})</td>"
                    f"<td><code>{_e(a.kind)}</code>{' (gate)' if a.gate else ''}</td><td>{_e(a.title)}</td>"
                    f"<td>{changes}</td><td class=\"num\">{_e(format_duration(a.expected_s))}</td>"
                    f"<td class=\"num\">{_e(format_duration(worst) if worst is not None else '')}</td></tr>")
    rows.append("</table>")
    body.append("<h2>Steps</h2>" + "\n".join(rows))
    return redact_text(_page(f"{plan.operation} plan {plan.playbook}", "\n".join(body)))


def plan_markdown(plan: Plan, findings: Sequence[Finding] = (), verdicts: Mapping[str, Verdict] | None = None) -> str:
    """``render.plan_markdown`` plus expected durations and the readiness findings."""
    lines = [render.plan_markdown(plan).rstrip(), ""]
    notes = _plan_notes(plan)
    if notes:
        lines += ["## Durations", ""] + [f"- {n}" for n in notes] + [""]
    if verdicts:
        lines += ["## Readiness", ""]
        for name, v in verdicts.items():
            lines.append(f"- **{name}**: {'ready' if v.ready else 'NOT READY'}")
            for f in findings:
                if f.service == name:
                    lines.append(f"  - {f.level}: {f.check} {f.subject}: {render._md(f.detail)}")
        lines.append("")
    return redact_text("\n".join(lines))


# --- Markdown for drills -------------------------------------------------------------------------


def drill_markdown(drill: Mapping[str, Any]) -> str:
    drill = redact(drill)
    t0 = float(drill["started"])
    lines = [f"# drill {drill['drill_id']}: {drill['status']}", "",
             f"Started {_ts(t0)}, took {format_duration(float(drill.get('finished') or t0) - t0)}, "
             f"exit code {drill.get('exit_code')}.", ""]
    if drill.get("message"):
        lines += [f"**{drill['message']}**", ""]
    lines += ["| service | result | RTO | RTO target | RPO exposure | RPO target | now served from |",
              "|---|---|---|---|---|---|---|"]
    for name, r in (drill.get("services") or {}).items():
        lines.append(f"| {name} | {r['status']} | {_fmt_s(r.get('rto_s'))} | {_fmt_s(r.get('rto_target_s'))} "
                     f"| {_fmt_s(r.get('rpo_exposure_s'))} | {_fmt_s(r.get('rpo_target_s'))} "
                     f"| {render._md(r.get('final', '?'))} |")
    findings = [(n, f) for n, r in (drill.get("services") or {}).items() for f in r.get("findings") or []]
    if findings:
        lines += ["", "## Findings", ""] + [f"- {n}: {render._md(f)}" for n, f in findings]
    lines += ["", "## Steps", "", "| service | phase | step | status | at | took | detail |",
              "|---|---|---|---|---|---|---|"]
    for s in drill_steps(drill):
        lines.append(f"| {s['service']} | {s['phase']} | {s['kind']} | {s['status']} "
                     f"| +{format_duration(max(float(s['started']) - t0, 0))} "
                     f"| {format_duration(s.get('elapsed_s') or 0)} | {render._md(s.get('detail', ''))} |")
    return redact_text("\n".join(lines) + "\n")


# --- JUnit XML -----------------------------------------------------------------------------------

_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _x(text: Any) -> str:
    return _XML_BAD.sub("?", "" if text is None else str(text))


def _testcase(suite: ET.Element, classname: str, name: str, seconds: float, status: str, detail: str,
              counts: dict[str, int]) -> None:
    tc = ET.SubElement(suite, "testcase", classname=_x(classname), name=_x(name), time=f"{max(seconds, 0):.3f}")
    counts["tests"] += 1
    if status in ("failed", "interrupted", "missed", "refused", "aborted"):
        counts["failures"] += 1
        ET.SubElement(tc, "failure", message=_x(detail)[:500] or status, type=_x(status)).text = _x(detail)
    elif status in ("skipped", "planned", "blocked", "not run"):
        counts["skipped"] += 1
        ET.SubElement(tc, "skipped", message=_x(f"{status}: {detail}".rstrip(": ")))
    if detail:
        ET.SubElement(tc, "system-out").text = _x(f"{status}: {detail}")


def _junit(name: str, suites: dict[str, list[tuple[str, float, str, str]]], timestamp: float, prefix: str) -> str:
    root = ET.Element("testsuites", name=_x(name))
    total = {"tests": 0, "failures": 0, "skipped": 0}
    total_time = 0.0
    for service, cases in suites.items():
        suite = ET.Element("testsuite", name=_x(service), timestamp=time.strftime(
            "%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp)))
        counts = {"tests": 0, "failures": 0, "skipped": 0}
        seconds = 0.0
        for case_name, secs, status, detail in cases:
            _testcase(suite, f"{prefix}.{service}", case_name, secs, status, detail, counts)
            seconds += max(secs, 0)
        suite.set("tests", str(counts["tests"]))
        suite.set("failures", str(counts["failures"]))
        suite.set("errors", "0")
        suite.set("skipped", str(counts["skipped"]))
        suite.set("time", f"{seconds:.3f}")
        root.append(suite)
        for k in total:
            total[k] += counts[k]
        total_time += seconds
    for k, v in total.items():
        root.set(k, str(v))
    root.set("errors", "0")
    root.set("time", f"{total_time:.3f}")
    ET.indent(root)
    return redact_text('<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n")


def run_junit(run: Mapping[str, Any]) -> str:
    """JUnit XML for a run: a testsuite per service, a testcase per step."""
    run = redact(run)
    suites: dict[str, list[tuple[str, float, str, str]]] = {s: [] for s in run.get("services", {})}
    for a in run.get("actions", []):
        suites.setdefault(a["service"], []).append(
            (a["id"].split("/", 1)[-1], float(a.get("elapsed_s") or 0), a["status"], a.get("detail", "")))
    return _junit(f"drctl {run['operation']} {run.get('run_id') or ''}".strip(), suites,
                  float(run["started"]), f"drctl.{run['operation']}")


def drill_junit(drill: Mapping[str, Any]) -> str:
    """JUnit XML for a drill: a testsuite per service; a testcase per step of the failover, the
    real-path checks and the failback, plus one each for the RTO and RPO targets."""
    drill = redact(drill)
    services = drill.get("services") or {}
    suites: dict[str, list[tuple[str, float, str, str]]] = {s: [] for s in services}
    for s in drill_steps(drill):
        suites.setdefault(s["service"], []).append(
            (s["name"], float(s.get("elapsed_s") or 0), s["status"], s.get("detail", "")))
    for name, r in services.items():
        for what, met, got, target in (("RTO", r.get("rto_met"), r.get("rto_s"), r.get("rto_target_s")),
                                       ("RPO", r.get("rpo_met"), r.get("rpo_exposure_s"), r.get("rpo_target_s"))):
            label = "RTO achieved" if what == "RTO" else "RPO exposure (newest backup's age at failover)"
            if met is None:
                status = "skipped"
                detail = "no target in the inventory" if target is None else f"not measured ({r['status']})"
            else:
                status = "ok" if met else "missed"
                detail = f"{label} {_fmt_s(got)}, target {_fmt_s(target)}"
            suites[name].append((f"{what} target", 0.0, status, detail))
        # the drill's verdict for the service: a service blocked by its dependency, or refused,
        # did not pass, even when none of its own steps failed
        passed = r.get("status") == "passed"
        suites[name].append(("drill result", 0.0, "ok" if passed else "failed",
                             f"{r.get('status')}: " + "; ".join(r.get("findings") or []) if not passed
                             else "passed"))
    return _junit(f"drctl drill {drill['drill_id']}", suites, float(drill["started"]), "drctl.drill")


# --- Prometheus text format ----------------------------------------------------------------------

Sample = tuple[dict[str, str], float]


def _label_value(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


def metrics_text(families: Sequence[tuple[str, str, str, list[Sample]]]) -> str:
    """(name, help, type, samples) -> exposition text; families without samples are left out."""
    out = []
    for name, help_text, kind, samples in families:
        if not samples:
            continue
        out.append(f"# HELP {name} {help_text.replace(chr(92), chr(92) * 2).replace(chr(10), ' ')}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lab = ",".join(f'{k}="{_label_value(v)}"' for k, v in sorted(labels.items()))
            out.append(f"{name}{{{lab}}} {_number(value)}" if lab else f"{name} {_number(value)}")
    return redact_text("\n".join(out) + "\n")


def drill_metrics(drill: Mapping[str, Any]) -> str:
    """Per service: drill success, RTO achieved and its target, backup age at failover (the RPO
    exposure) and its target, whether it is back on its primary, and when the drill ran."""
    services = drill.get("services") or {}
    fams: list[tuple[str, str, str, list[Sample]]] = [
        ("drctl_drill_success", "1 if the service's last drill passed: every step worked, targets met, back on "
         "its primary", "gauge", []),
        ("drctl_drill_rto_seconds", "RTO achieved by the last drill: from its start until the backup answered "
         "through the real path", "gauge", []),
        ("drctl_drill_rto_target_seconds", "the service's RTO target (inventory `rto`)", "gauge", []),
        ("drctl_drill_backup_age_seconds", "age of the newest backup at failover time in the last drill "
         "(RPO exposure)", "gauge", []),
        ("drctl_drill_rpo_target_seconds", "the service's RPO target (inventory `rpo`)", "gauge", []),
        ("drctl_drill_returned", "1 if the service served from its primary again when the last drill ended",
         "gauge", []),
        ("drctl_drill_timestamp_seconds", "when the last drill of the service ended (Unix time)", "gauge", []),
    ]
    for name, r in services.items():
        labels = {"service": name}
        values = [1.0 if r["status"] == "passed" else 0.0, r.get("rto_s"), r.get("rto_target_s"),
                  r.get("rpo_exposure_s"), r.get("rpo_target_s"),
                  None if r.get("returned") is None else float(bool(r["returned"])),
                  float(drill.get("finished") or drill["started"])]
        for fam, v in zip(fams, values, strict=True):
            if v is not None:
                fam[3].append((labels, float(v)))
    return metrics_text(fams)


def check_metrics(findings: Sequence[Finding], verdicts: Mapping[str, Verdict], when: float) -> str:
    """Per service: ready or not, failed findings, and the age of each site's newest backup."""
    ready: list[Sample] = [({"service": s}, 1.0 if v.ready else 0.0) for s, v in verdicts.items()]
    problems: list[Sample] = [({"service": s}, float(len(v.problems))) for s, v in verdicts.items()]
    ages: list[Sample] = []
    for f in findings:
        if f.check == "backup" and f.data.get("age_s") is not None:
            ages.append(({"service": f.service, "site": str(f.data.get("site"))}, float(f.data["age_s"])))
    stamp: list[Sample] = [({"service": s}, when) for s in verdicts]
    return metrics_text([
        ("drctl_check_ready", "1 if the readiness check found nothing blocking a failover of the service", "gauge",
         ready),
        ("drctl_check_problems", "failed findings of the last readiness check", "gauge", problems),
        ("drctl_backup_age_seconds", "age of the newest backup at each site, at the last readiness check", "gauge",
         ages),
        ("drctl_check_timestamp_seconds", "when the last readiness check ran (Unix time)", "gauge", stamp),
    ])
