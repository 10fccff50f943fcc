"""Pure verdicts: readiness findings, drill results against targets, where a service is served."""

from __future__ import annotations

from pathlib import Path

import pytest

from drctl.core import drill as verdict
from drctl.core.plan import Facts
from drctl.core.readiness import (
    Finding,
    all_ready,
    backup_finding,
    baseline_finding,
    haproxy_finding,
    sort_findings,
    verdicts,
)
from drctl.core.status import journal_sites, last_runs, locate
from drctl.model.inventory import Inventory
from drctl.model.load import load_inventory

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def inv() -> Inventory:
    return load_inventory(ROOT / "inventory/example.yaml")


# --- readiness -----------------------------------------------------------------------------------


def test_a_failed_finding_makes_its_service_not_ready_and_warnings_do_not() -> None:
    findings = [
        Finding("web", "host", "app2 (dc2)", "ok", "reachable"),
        Finding("web", "backup", "dc1", "warn", "old"),
        Finding("api", "tsig", "zone example.test at ns1", "fail", "BADSIG"),
    ]
    vs = verdicts(findings, ["api", "web", "db"])
    assert not vs["api"].ready and vs["api"].problems == ("zone example.test at ns1: BADSIG",)
    assert vs["web"].ready and vs["web"].warnings == ("dc1: old",)
    assert vs["db"].ready and vs["db"].problems == ()  # nothing found about it: nothing against it
    assert not all_ready(vs)
    assert vs["api"].line().startswith("api: NOT READY (1 problem)")
    assert [f.check for f in sort_findings(findings, ["web", "api"])] == ["host", "backup", "tsig"]


def test_backup_age_against_its_limit_and_the_rpo_target() -> None:
    def level(age: float | None, target: bool = True, rpo: float | None = None) -> str:
        return backup_finding("db", "dc2", "app2:/b/*", age_s=age, max_age_s=3600, rpo_s=rpo, newest="f",
                              target=target).level

    assert level(60) == "ok"
    assert level(7200) == "fail"
    assert level(None) == "fail"  # no backup at all
    assert level(7200, target=False) == "warn"  # the site a failback would need
    assert level(1800, rpo=900) == "warn"  # within max_age, past the service's RPO target
    err = backup_finding("db", "dc2", "w", age_s=None, max_age_s=1, rpo_s=None, newest=None, target=True,
                         error="app2 (drctl@10.2.0.10:22): connection refused")
    assert err.level == "fail" and "connection refused" in err.detail
    assert "older than its limit 60m" in backup_finding("db", "dc2", "w", age_s=7200, max_age_s=3600, rpo_s=None,
                                                        newest="f", target=True).detail


def test_haproxy_must_know_every_server_the_inventory_names() -> None:
    ok = haproxy_finding("web", "lb1", "web", {"dc1": "web_dc1", "dc2": "web_dc2"},
                         {"web_dc1": "ready", "web_dc2": "maint"})
    assert ok.level == "ok" and "web_dc1 ready, web_dc2 maint" in ok.detail
    missing = haproxy_finding("web", "lb1", "web", {"dc1": "web_dc1", "dc2": "web_dc3"}, {"web_dc1": "ready"})
    assert missing.level == "fail" and "web_dc3 (for dc2)" in missing.detail
    down = haproxy_finding("web", "lb1", "web", {"dc1": "a"}, None, "connection refused")
    assert down.level == "fail" and down.detail == "connection refused"


def test_an_old_or_missing_integrity_baseline_is_a_warning() -> None:
    assert baseline_finding("db", "orders", age_s=10, limit_s=86400).level == "ok"
    old = baseline_finding("db", "orders", age_s=90000, limit_s=86400)
    assert old.level == "warn" and "older than its limit 24h" in old.detail
    assert "no baseline" in baseline_finding("db", "orders", age_s=None, limit_s=86400).detail


def test_findings_round_trip_through_json_dicts() -> None:
    f = Finding("web", "haproxy", "lb1 backend web", "fail", "x", {"present": {"a": "ready"}})
    assert Finding.from_dict(f.to_dict()) == f


# --- drill results -------------------------------------------------------------------------------


def _assess(**kw: object) -> dict[str, object]:
    args: dict[str, object] = dict(failover="succeeded", probe_ok=True, probe_detail="", returned=True,
                                   final="dc1 (primary)", rto_s=30.0, rto_target_s=300.0, rpo_s=600.0,
                                   rpo_target_s=3600.0, failed_steps=[], gate_findings=[])
    args.update(kw)
    return verdict.assess_service("web", **args)  # type: ignore[arg-type]


def test_drill_result_of_a_service() -> None:
    assert _assess()["status"] == "passed"
    missed = _assess(rto_s=400.0)
    assert missed["status"] == "missed" and missed["rto_met"] is False
    assert "RTO 6.7m missed its target 5m" in missed["findings"]
    assert _assess(rpo_s=7200.0)["status"] == "missed"
    assert _assess(rto_target_s=None, rpo_target_s=None)["rto_met"] is None
    refused = _assess(failover="refused", probe_ok=None, returned=None, rto_s=None, rpo_s=7200.0,
                      gate_findings=["check_freshness: backup is 2h old"])
    assert refused["status"] == "refused" and refused["rpo_met"] is False
    assert refused["findings"][0] == "check_freshness: backup is 2h old"
    failed = _assess(probe_ok=False, probe_detail="load balancer path FAILED: 503", rto_s=None)
    assert failed["status"] == "failed" and "503" in failed["findings"][0]
    stuck = _assess(returned=False, final="mixed: DNS at dc2, traffic at dc1")
    assert stuck["status"] == "failed" and "NOT back on its primary: mixed" in stuck["findings"][-1]


def test_the_drill_takes_the_worst_result_and_its_exit_code() -> None:
    assert verdict.overall({"a": {"status": "passed"}}) == ("passed", 0)
    assert verdict.overall({"a": {"status": "passed"}, "b": {"status": "missed"}}) == ("missed", 7)
    assert verdict.overall({"a": {"status": "refused"}, "b": {"status": "refused"}}) == ("refused", 4)
    assert verdict.overall({"a": {"status": "missed"}, "b": {"status": "failed"}}) == ("failed", 5)


def test_the_real_path_check_uses_the_frontend_with_the_sites_expectations(inv: Inventory) -> None:
    assert verdict.frontend_check(inv, "api", "dc2") is None  # no frontend in the inventory
    data = inv.model_dump()
    data["services"]["api"]["traffic"]["frontend"] = "http://lb.example.test/health"
    with_fe = Inventory.model_validate(data)
    hc = verdict.frontend_check(with_fe, "api", "dc2")
    assert hc is not None and hc.http == "http://lb.example.test/health" and hc.expect_status == [200]
    assert verdict.frontend_check(with_fe, "db", "dc2") is None  # traffic moved by commands


# --- where a service is served -------------------------------------------------------------------


def test_locate_from_dns_and_haproxy(inv: Inventory) -> None:
    at_dc1 = Facts(dns={("api.example.test.", "A"): ("192.0.2.11",)},
                   lb={("lb1", "api", "api_dc1"): "ready", ("lb1", "api", "api_dc2"): "maint"})
    loc = locate(inv, "api", at_dc1)
    assert (loc.serving, loc.dns, loc.traffic, loc.on_primary) == ("dc1", "dc1", "dc1", True)
    half = Facts(dns={("api.example.test.", "A"): ("198.51.100.11",)}, lb=at_dc1.lb)
    loc = locate(inv, "api", half)
    assert loc.serving == "mixed" and loc.describe() == "mixed: DNS at dc2, traffic at dc1"
    both = Facts(dns=half.dns, lb={("lb1", "api", "api_dc1"): "ready", ("lb1", "api", "api_dc2"): "ready"})
    assert locate(inv, "api", both).traffic == "both"
    assert locate(inv, "api", Facts()).serving == "unknown"
    # web has two records: one answering dc2's value is enough to call it mixed
    web = Facts(dns={("www.example.test.", "A"): ("192.0.2.10",), ("example.test.", "A"): ("198.51.100.10",)})
    assert locate(inv, "web", web).dns == "mixed"
    # db's traffic moves by command: the journal says where
    db = Facts(dns={("db.internal.test.", "A"): ("10.2.0.20",)})
    assert locate(inv, "db", db, journal_site="dc2").serving == "dc2"
    assert locate(inv, "db", db, journal_site="dc1").serving == "mixed"


def _journal(run_id: str, ts: float, op: str, to: str, status: str) -> tuple[str, list[dict[str, object]]]:
    return run_id, [
        {"event": "run_started", "ts": ts, "operation": op,
         "plan": {"services": [{"service": "db", "to_site": to}]}},
        {"event": "run_finished", "ts": ts + 1, "status": status, "services": {"db": status}},
    ]


def test_journal_order_is_by_start_time_not_by_run_id() -> None:
    # both started in the same second: "failover" sorts after "failback" by id, but started first
    runs = [_journal("20260101T000000Z-failover-aaaaaa", 100.0, "failover", "dc2", "succeeded"),
            _journal("20260101T000000Z-failback-bbbbbb", 100.5, "failback", "dc1", "succeeded")]
    assert journal_sites(runs) == {"db": "dc1"}
    assert last_runs(runs)["db"]["operation"] == "failback"
    failed = [_journal("20260101T000001Z-failback-cccccc", 200.0, "failback", "dc1", "failed"),
              _journal("20260101T000000Z-failover-aaaaaa", 100.0, "failover", "dc2", "succeeded")]
    assert journal_sites(failed) == {"db": "dc2"}  # a failed run moved nothing for sure
    assert last_runs(failed)["db"]["result"] == "failed"
