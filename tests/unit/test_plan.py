"""Planning is pure: the same inputs give the same ordered actions with from -> to changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from drctl.core.plan import Facts, Plan, build_plan, select_services
from drctl.errors import UsageError
from drctl.model.load import builtin_playbook, load_inventory, load_playbook

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def inv():  # type: ignore[no-untyped-def]
    return load_inventory(ROOT / "inventory/example.yaml")


def test_failover_plan_orders_dependencies_and_shows_changes(inv) -> None:  # type: ignore[no-untyped-def]
    pb = load_playbook(builtin_playbook("failover"))
    selected = select_services(inv, [], "dc1")
    assert selected == ["api", "db", "web"]
    plan = build_plan(inv, pb, selected, "failover")
    # db first; api after db; web independent of both, so in the first wave
    assert plan.levels == (("db", "web"), ("api",))
    api = plan.service("api")
    assert (api.from_site, api.to_site, api.depends_on) == ("dc1", "dc2", ("db",))
    kinds = [a.kind for a in api.actions]
    assert kinds == ["check_freshness", "health_check", "flip_dns", "wait_dns", "reroute_traffic", "health_check"]
    assert [a.gate for a in api.actions] == [True, True, False, False, False, False]
    flip = api.actions[2]
    assert flip.mutating and [c.render() for c in flip.changes] == [
        "api.example.test. A 192.0.2.11 (expected) -> 198.51.100.11"]
    lb = api.actions[4]
    assert [c.render() for c in lb.changes] == ["lb1 api/api_dc2 ? -> ready", "lb1 api/api_dc1 ? -> maint"]
    web = plan.service("web")
    assert [c.what for c in web.actions[2].changes] == ["www.example.test. A", "example.test. A"]
    # command traffic for db
    db_reroute = [a for a in plan.service("db").actions if a.kind == "reroute_traffic"][0]
    assert [c.render() for c in db_reroute.changes] == ["dc1 (db1) active -> inactive", "dc2 (db2) inactive -> active"]


def test_observed_facts_fill_before_values_and_mark_noop(inv) -> None:  # type: ignore[no-untyped-def]
    pb = load_playbook(builtin_playbook("failover"))
    facts = Facts(dns={("api.example.test.", "A"): ("198.51.100.11",)},
                  lb={("lb1", "api", "api_dc2"): "ready", ("lb1", "api", "api_dc1"): "maint"})
    plan = build_plan(inv, pb, ["api"], "failover", facts)
    flip, lb = plan.actions()[2], plan.actions()[4]
    assert flip.noop and flip.changes[0].before == "198.51.100.11"
    assert lb.noop
    assert "api depends on db, which is not part of this run" in plan.notes


def test_failback_reverses_direction(inv) -> None:  # type: ignore[no-untyped-def]
    plan = build_plan(inv, load_playbook(builtin_playbook("failback")), ["web"], "failback")
    sp = plan.service("web")
    assert (sp.from_site, sp.to_site) == ("dc2", "dc1")
    assert sp.actions[2].changes[0].after == "192.0.2.10"
    lb = sp.actions[4]
    assert [c.render() for c in lb.changes] == ["lb1 web/web_dc1 ? -> ready", "lb1 web/web_dc2 ? -> drain"]


def test_plan_round_trips_through_json(inv) -> None:  # type: ignore[no-untyped-def]
    plan = build_plan(inv, load_playbook(builtin_playbook("failover")), ["api", "db"], "failover")
    again = Plan.from_dict(plan.to_dict())
    assert again == plan
    assert plan.expected_duration_s() > 0


def test_selection_errors(inv) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError, match="unknown service"):
        select_services(inv, ["nope"], None)
    with pytest.raises(UsageError, match="one or the other"):
        select_services(inv, ["web"], "dc1")
    with pytest.raises(UsageError, match="unknown site"):
        select_services(inv, [], "dc7")


def test_expected_duration_follows_the_measured_times_and_the_runner_model() -> None:
    inv = load_inventory(Path(__file__).parents[2] / "inventory" / "example.yaml")
    pb = load_playbook(builtin_playbook("failover"), inv)
    names = sorted(inv.services)
    timings = {"check_freshness": 0.2, "health_check": 0.01, "verify_integrity": 0.3, "flip_dns": 0.01,
               "wait_dns": 0.02, "reroute_traffic": 0.03, "gate": 0.5, "step_overhead": 0.0, "converge": 0.04}
    plan = build_plan(inv, pb, names, "failover", Facts(timings=timings, timings_from="RUN"))
    assert plan.timings_from == "RUN"
    # the gate (its measured floor), then each wave's steps one after another, then the read-back
    waves = len(plan.levels)
    per_wave = 0.01 + 0.02 + 0.03 + 0.01  # flip, wait, reroute, health after the switch
    expected = 0.5 + waves * per_wave + 0.04
    assert abs(plan.expected_duration_s() - expected) < 0.05, (plan.expected_duration_s(), expected)
