"""Reports are pure renderings: HTML self-contained and escaped, JUnit XML that parses with the
right counts, Prometheus text that a Prometheus parser accepts, runs rebuilt from journals."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from drctl.core import report
from drctl.core.plan import build_plan
from drctl.core.readiness import Finding, verdicts
from drctl.model.load import builtin_playbook, load_inventory, load_playbook

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0


def _action(service: str, n: int, kind: str, start: float, took: float, status: str = "ok",
            detail: str = "fine", **data: Any) -> dict[str, Any]:
    return {"id": f"{service}/{n:02d}-{kind}", "service": service, "kind": kind, "title": f"{kind} of {service}",
            "started": T0 + start, "finished": T0 + start + took, "elapsed_s": took, "status": status,
            "detail": detail, "data": data}


def make_drill(web_status: str = "passed") -> dict[str, Any]:
    failover = {"run_id": "20231114T221320Z-failover-aaaaaa", "operation": "failover", "status": "succeeded",
                "started": T0 + 0.1, "finished": T0 + 2.0, "services": {"web": "succeeded", "db": "succeeded"},
                "actions": [
                    _action("web", 1, "check_freshness", 0.1, 0.2, age_s=120.0),
                    _action("web", 2, "health_check", 0.1, 0.05),  # parallel with the freshness check
                    _action("db", 1, "check_freshness", 0.1, 0.3, age_s=60.0),
                    _action("web", 3, "flip_dns", 0.5, 0.01),
                    _action("web", 4, "wait_dns", 0.6, 0.5),
                    _action("db", 3, "flip_dns", 0.5, 0.01, status="failed",
                            detail='<script>alert("x")</script> & REFUSED'),
                ]}
    failback = {"run_id": "20231114T221322Z-failback-bbbbbb", "operation": "failback", "status": "succeeded",
                "started": T0 + 2.5, "finished": T0 + 3.5, "services": {"web": "succeeded", "db": "succeeded"},
                "actions": [_action("web", 3, "flip_dns", 2.6, 0.01), _action("db", 3, "flip_dns", 2.6, 0.01,
                                                                              status="skipped", detail="already")]}
    return {
        "kind": "drill", "drill_id": "20231114T221320Z-drill-cccccc", "status": "failed", "exit_code": 5,
        "started": T0, "finished": T0 + 4.0, "user": "ops", "host": "h", "message": "a drill step failed",
        "services": {
            "web": {"service": "web", "status": web_status, "rto_s": 1.2, "rto_target_s": 300.0, "rto_met": True,
                    "rpo_exposure_s": 120.0, "rpo_target_s": 3600.0, "rpo_met": True, "returned": True,
                    "final": "dc1 (primary)", "findings": []},
            "db": {"service": "db", "status": "failed", "rto_s": None, "rto_target_s": None, "rto_met": None,
                   "rpo_exposure_s": 60.0, "rpo_target_s": 30.0, "rpo_met": False, "returned": True,
                   "final": "dc1 (primary)", "findings": ["failover flip_dns: REFUSED"]},
        },
        "phases": [{"phase": "failover", "run_id": failover["run_id"], "status": "failed", "started": T0 + 0.1,
                    "finished": T0 + 2.0},
                   {"phase": "failback", "run_id": failback["run_id"], "status": "succeeded", "started": T0 + 2.5,
                    "finished": T0 + 3.5}],
        "runs": {"failover": failover, "failback": failback},
        "probes": [{"id": "web/real-path-dc2", "service": "web", "phase": "failover", "kind": "real_path",
                    "title": "dc2 serves", "started": T0 + 2.1, "finished": T0 + 2.2, "elapsed_s": 0.1,
                    "status": "ok", "detail": "DNS ok", "data": {}}],
        "final_state": {},
    }


# --- HTML ----------------------------------------------------------------------------------------


def assert_self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page.lower()
    assert not re.search(r"<(link|img|iframe|object|embed)\b", page, re.I)
    assert not re.search(r"\b(src|href)\s*=", page, re.I)
    assert "url(" not in page and "@import" not in page


def test_drill_html_is_one_self_contained_page_with_a_lane_per_service() -> None:
    page = report.drill_html(make_drill())
    assert_self_contained(page)
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; REFUSED" in page
    for lane in ("phases", "web", "db"):
        assert f'<div class="tl-label" title="{lane}">{lane}</div>' in page
    # the parallel gate checks of web are stacked in two tracks of its lane
    web_lane = page.split('title="web">web</div>', 1)[1].split('<div class="tl-lane">', 1)[0]
    assert web_lane.count('<div class="tl-track">') == 2
    # bars sit where their step ran: web's wait_dns started at 0.6 s of 4 s
    assert re.search(r'style="left:15\.000%;width:12\.500%" title="failover 04-wait_dns', page)
    assert "RTO achieved" in page and "1.2s" in page


def test_run_html_and_markdown_of_a_run() -> None:
    run = make_drill()["runs"]["failover"]
    page = report.run_html(run)
    assert_self_contained(page)
    assert "st-failed" in page and "failover" in page


# --- JUnit ---------------------------------------------------------------------------------------


def test_drill_junit_parses_with_one_case_per_service_step_and_target() -> None:
    root = ET.fromstring(report.drill_junit(make_drill()))
    assert root.tag == "testsuites"
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {"web", "db"}
    web_cases = [c.get("name") for c in suites["web"].findall("testcase")]
    # 4 failover steps, 1 real-path check, 1 failback step, RTO and RPO targets, the verdict
    assert len(web_cases) == 9 and web_cases[-3:] == ["RTO target", "RPO target", "drill result"]
    assert "failover real_path" in web_cases and "failback 03-flip_dns" in web_cases
    db = suites["db"]
    # db did not pass: its verdict is a failure of its own, beside the step that failed
    assert db.get("tests") == "6" and db.get("failures") == "3" and db.get("skipped") == "2"
    assert db.find("testcase[@name='drill result']/failure") is not None
    failure = db.find("testcase[@name='failover 03-flip_dns']/failure")
    assert failure is not None and '<script>alert("x")</script>' in (failure.text or "")
    assert root.get("tests") == str(len(root.findall(".//testcase"))) == "15"
    assert root.get("failures") == "3"


def test_run_junit_counts_cases() -> None:
    root = ET.fromstring(report.run_junit(make_drill()["runs"]["failover"]))
    assert [s.get("name") for s in root.findall("testsuite")] == ["web", "db"]
    assert root.get("tests") == "6" and root.get("failures") == "1"


# --- Prometheus ----------------------------------------------------------------------------------

_LINE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*",?)*\})? '
                   r'(NaN|[+-]Inf|-?[0-9.eE+-]+)$')


def assert_exposition_format(text: str) -> dict[str, Any]:
    assert text.endswith("\n")
    for line in text.splitlines():
        assert line.startswith(("# HELP ", "# TYPE ")) or _LINE.match(line), line
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for f in families.values():
        assert f.type == "gauge"
    return families


def test_drill_metrics_are_valid_prometheus_text() -> None:
    fams = assert_exposition_format(report.drill_metrics(make_drill()))
    success = {s.labels["service"]: s.value for s in fams["drctl_drill_success"].samples}
    assert success == {"web": 1.0, "db": 0.0}
    rto = {s.labels["service"]: s.value for s in fams["drctl_drill_rto_seconds"].samples}
    assert rto == {"web": 1.2}  # db never served from its backup: no RTO sample
    ages = {s.labels["service"]: s.value for s in fams["drctl_drill_backup_age_seconds"].samples}
    assert ages == {"web": 120.0, "db": 60.0}


def test_check_metrics_and_label_escaping() -> None:
    findings = [Finding("web", "backup", "dc2", "ok", "", {"site": "dc2", "age_s": 61.5}),
                Finding("web", "tsig", "zone", "fail", "BADSIG")]
    fams = assert_exposition_format(report.check_metrics(findings, verdicts(findings, ["web"]), T0))
    assert [s.value for s in fams["drctl_check_ready"].samples] == [0.0]
    assert [(s.labels, s.value) for s in fams["drctl_backup_age_seconds"].samples] == [
        ({"service": "web", "site": "dc2"}, 61.5)]
    text = report.metrics_text([("m", "help \\ text\nmore", "gauge", [({"l": 'a"b\\c\nd'}, 1.0)])])
    fams = assert_exposition_format(text)
    assert fams["m"].samples[0].labels == {"l": 'a"b\\c\nd'}


# --- runs from the journal, plans ----------------------------------------------------------------


def test_run_from_journal_marks_what_never_ran_and_what_was_interrupted() -> None:
    inv = load_inventory(ROOT / "inventory/example.yaml")
    plan = build_plan(inv, load_playbook(builtin_playbook("failover")), ["web"], "failover")
    ids = [a.id for a in plan.actions()]
    records = [{"event": "run_started", "ts": T0, "operation": "failover", "plan": plan.to_dict(), "user": "ops"},
               {"event": "action_started", "ts": T0 + 1, "action": ids[0]},
               {"event": "action_finished", "ts": T0 + 2, "action": ids[0], "status": "ok", "detail": "d",
                "data": {}, "elapsed_s": 1.0},
               {"event": "action_started", "ts": T0 + 2, "action": ids[1]}]
    run = report.run_from_journal("20231114T221320Z-failover-aaaaaa", records)
    status = {a["id"]: a["status"] for a in run["actions"]}
    assert status[ids[0]] == "ok" and status[ids[1]] == "interrupted"
    assert all(status[i] == "not run" for i in ids[2:])
    assert run["status"] == "interrupted"
    assert ET.fromstring(report.run_junit(run)).get("tests") == str(len(ids))
    assert_self_contained(report.run_html(run))


@pytest.mark.parametrize("operation", ["failover", "failback"])
def test_plan_reports_show_durations_timeline_and_findings(operation: str) -> None:
    inv = load_inventory(ROOT / "inventory/example.yaml")
    plan = build_plan(inv, load_playbook(builtin_playbook(operation)), ["api", "db", "web"], operation)
    sched = plan.schedule()
    start = {a.id: s for a, s, _e in sched}
    end = {a.id: e for a, _s, e in sched}
    # api depends on db: its first change starts after db's last step is expected to end
    api_flip = next(a.id for a in plan.service("api").actions if a.kind == "flip_dns")
    assert start[api_flip] >= max(end[a.id] for a in plan.service("db").actions)
    findings = [Finding("db", "host", "db2 (dc2)", "fail", "connection refused")]
    vs = verdicts(findings, ["api", "db", "web"])
    page = report.plan_html(plan, findings, vs)
    assert_self_contained(page)
    assert "connection refused" in page and "clients that cached the old answer follow within the TTL" in page
    assert page.count('<div class="tl-lane">') == 3
    md = report.plan_markdown(plan, findings, vs)
    assert "## Readiness" in md and "- **db**: NOT READY" in md and "## Durations" in md

