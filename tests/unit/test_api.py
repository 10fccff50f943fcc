"""``drctl.api`` without servers: resume's refusals and the history's running / interrupted, against
a real state directory and an inventory with nothing to reach (the runs here are journaled, never
run). End-to-end runs through the same functions are in tests/e2e."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from drctl import api
from drctl.engine.store import LeaseStore, RunStore, new_run_id
from drctl.errors import RefusedError, UsageError
from drctl.model.load import builtin_playbook

SERVICE = """  {name}:
    primary: dc1
    backup: dc2
    sites:
      dc1: {{health: {{tcp: "127.0.0.1:1", retries: 1, timeout: 1s}}}}
      dc2: {{health: {{tcp: "127.0.0.1:1", retries: 1, timeout: 1s}}}}
"""


def write_inventory(path: Path, *services: str, description: str = "") -> Path:
    dc1 = f"{{description: {description}}}" if description else "{}"
    path.write_text(f"version: 1\nname: api\nsites:\n  dc1: {dc1}\n  dc2: {{}}\nservices:\n"
                    + "".join(SERVICE.format(name=s) for s in services))
    return path


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    return write_inventory(tmp_path / "inventory.yaml", "web", "app")


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def journal(state: Path, inventory: Path, services: list[str], finished: str | None = None,
            start: bool = True) -> str:
    """A run's journal as the runner starts it (and ends it, with ``finished``)."""
    store = RunStore(state)
    run_id = new_run_id("failover")
    if start:
        plan = api.plan(inventory, "failover", services, state_dir=state)
        store.append(run_id, {"event": "run_started", "operation": "failover", "plan": plan.to_dict(),
                              "inventory": str(inventory), "playbook": str(builtin_playbook("failover")),
                              "user": "tester", "force": False})
    else:
        store.append(run_id, {"event": "action_started", "action": "web/01-check_freshness"})
    if finished:
        store.append(run_id, {"event": "run_finished", "status": finished})
    store.close()
    return run_id


def never(*_args: Any) -> None:
    raise AssertionError("confirm was called, but the resume should have been refused before")


def test_a_run_without_a_start_record_is_not_resumed(inventory: Path, state: Path) -> None:
    run_id = journal(state, inventory, ["web"], start=False)
    with pytest.raises(UsageError, match="no start record"):
        api.resume(run_id, state_dir=state, confirm=never)


def test_a_succeeded_run_has_nothing_to_resume(inventory: Path, state: Path) -> None:
    run_id = journal(state, inventory, ["web"], finished="succeeded")
    assert api.resume(run_id, state_dir=state, confirm=never) is None


def test_a_run_whose_services_left_the_inventory_is_refused_even_when_changes_are_accepted(
        inventory: Path, state: Path) -> None:
    run_id = journal(state, inventory, ["web", "app"], finished="failed")
    write_inventory(inventory, "web")
    with pytest.raises(RefusedError, match="moves app, which the inventory .* no longer has"):
        api.resume(run_id, state_dir=state, accept_changes=True, confirm=never)


def test_a_changed_inventory_is_refused(inventory: Path, state: Path) -> None:
    run_id = journal(state, inventory, ["web"], finished="failed")
    write_inventory(inventory, "web", "app", description="changed since")
    with pytest.raises(RefusedError, match=f"changed since run {run_id} was planned") as e:
        api.resume(run_id, state_dir=state, confirm=never)
    assert "--accept-changes" in (e.value.hint or "")


def test_a_run_whose_services_a_later_run_moved_is_refused(inventory: Path, state: Path) -> None:
    first = journal(state, inventory, ["web", "app"], finished="failed")
    later = journal(state, inventory, ["app"], finished="succeeded")
    with pytest.raises(RefusedError, match=f"later runs moved these services since {first}: {later} "
                                           r"\(failover of app, succeeded\)"):
        api.resume(first, state_dir=state, confirm=never)


def test_history_tells_running_from_interrupted(inventory: Path, state: Path) -> None:
    done = journal(state, inventory, ["web"], finished="succeeded")
    interrupted = journal(state, inventory, ["app"])
    running = journal(state, inventory, ["web"])
    lease = LeaseStore(state).acquire("web", {"run_id": running})  # held as the running process holds it
    try:
        runs = api.history(state_dir=state)
    finally:
        lease.release()
    assert runs.where == str(state / "runs")
    assert [(r["run_id"], r["status"]) for r in runs.runs] == [
        (running, "running"), (interrupted, "interrupted"), (done, "succeeded")]
    assert runs.runs[0]["services"] == ["web"] and runs.runs[0]["user"] == "tester"
    assert [r["run_id"] for r in api.history(1, state_dir=state).runs] == [running]
    assert api.history(state_dir=state).runs[0]["status"] == "interrupted"  # its process is gone


def test_run_arguments_naming_unknown_services_or_sites_are_refused_before_anything(
        inventory: Path, state: Path) -> None:
    seen: list[Any] = []
    with pytest.raises(UsageError, match="--accept-mass-change names services that are not part of this run: db"):
        api.run(inventory, "failover", ["web"], state_dir=state, accept_mass_change=["db"], on_plan=seen.append)
    with pytest.raises(UsageError, match="--site-down dc2: this run moves services to that site"):
        api.run(inventory, "failover", ["web"], state_dir=state, site_down=["dc2"], on_plan=seen.append)
    with pytest.raises(UsageError, match="--site-down: unknown site dc9"):
        api.run(inventory, "failover", ["web"], state_dir=state, site_down=["dc9"], on_plan=seen.append)
    assert seen == [] and not (state / "runs").exists()
