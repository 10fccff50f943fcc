"""The readiness check of integrity baselines reads the state directory only."""

from __future__ import annotations

from pathlib import Path

from drctl.drivers.baseline import BaselineWriter
from drctl.engine.readiness import check_readiness
from drctl.engine.steps import Context
from drctl.model.inventory import Inventory
from drctl.model.load import load_inventory

ROOT = Path(__file__).resolve().parents[2]


def _tree(name: str, max_age: str | None) -> dict[str, object]:
    t: dict[str, object] = {"kind": "files", "name": name, "sites": {"dc1": {"host": "app1", "path": f"/srv/{name}"},
                                                                     "dc2": {"host": "app2", "path": f"/srv/{name}"}}}
    if max_age is not None:
        t["baseline_max_age"] = max_age
    return t


def test_baselines_are_checked_against_their_limit(tmp_path: Path) -> None:
    data = load_inventory(ROOT / "inventory/example.yaml").model_dump()
    data["services"]["web"]["integrity"] = [_tree("www", "1h"), _tree("media", "1h"), _tree("logs", None)]
    inv = Inventory.model_validate(data)
    writer = BaselineWriter(tmp_path, "web", "www", kind="files", meta={"site": "dc1"})
    writer.commit()
    findings = check_readiness(Context(inv, state_dir=tmp_path), ["web"], checks=frozenset({"baseline"}))
    got = {f.subject: (f.level, f.detail) for f in findings}
    assert set(got) == {"integrity baseline www", "integrity baseline media"}  # logs sets no limit
    assert got["integrity baseline www"][0] == "ok" and "(limit 60m)" in got["integrity baseline www"][1]
    assert got["integrity baseline media"][0] == "warn" and "no baseline" in got["integrity baseline media"][1]
