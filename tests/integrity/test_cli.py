"""``drctl verify`` as operators run it (a process: exit code, stdout, stderr), and the
``verify_integrity`` step of a run with its block / warn policy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from drctl.core.plan import Action
from drctl.engine.steps import Context, execute
from drctl.lab.servers import SshServer, free_port
from drctl.model.load import load_inventory
from tests.integrity.conftest import NASTY_NAMES, copy_tree, files_target, host, write_tree

pytestmark = pytest.mark.servers

FILES = {f"d/f{i}.txt": f"file {i}".encode() for i in range(12)}
FILES.update({f"n/{n}": n.encode() for n in NASTY_NAMES})


def write_inventory(tmp_path: Path, sshd: SshServer, primary: Path, backup: Path, *,
                    primary_down: bool = False) -> Path:
    app1 = host(sshd, port=free_port(), timeout=0.5) if primary_down else host(sshd)
    data: dict[str, Any] = {
        "sites": {"dc1": {"hosts": {"app1": app1}}, "dc2": {"hosts": {"app2": host(sshd)}}},
        "services": {
            "svc": {"primary": "dc1", "backup": "dc2",
                    "integrity": [files_target(primary, backup, tmp_path / "cache")]},
            "plain": {"primary": "dc1", "backup": "dc2"},
        },
    }
    path = tmp_path / ("inventory-down.yaml" if primary_down else "inventory.yaml")
    path.write_text(yaml.safe_dump(data))
    return path


def drctl(inventory: Path, state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRCTL_")}
    env.update(DRCTL_STATE_DIR=str(state), DRCTL_INVENTORY=str(inventory), NO_COLOR="1", COLUMNS="200")
    done = subprocess.run([sys.executable, "-m", "drctl", "verify", *args], capture_output=True, text=True,
                          timeout=120, env=env, check=False)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def test_verify_exit_codes_text_and_json(tmp_path: Path, sshd: SshServer) -> None:
    primary = write_tree(tmp_path / "primary", FILES)
    backup = copy_tree(primary, tmp_path / "backup")
    inv = write_inventory(tmp_path, sshd, primary, backup)
    state = tmp_path / "state"

    ok = drctl(inv, state, "svc", "--record-baseline")
    assert ok.returncode == 0, ok.stderr
    assert "svc (dc1 -> dc2): OK" in ok.stdout and "baseline recorded" in ok.stdout

    (backup / "d/f3.txt").write_text("tampered")
    (backup / "n" / NASTY_NAMES[3]).unlink()
    for i in range(30):
        (backup / f"extra{i}.bin").write_bytes(b"x")
    bad = drctl(inv, state, "svc", "--limit", "5")
    assert bad.returncode == 6, bad.stderr
    assert "1 missing on backup" in bad.stdout and "30 extra on backup" in bad.stdout and "1 differ" in bad.stdout
    assert "differs: 'd/f3.txt'" in bad.stdout and "--json lists every path" in bad.stdout

    js = drctl(inv, state, "svc", "--json")
    assert js.returncode == 6
    doc = json.loads(js.stdout)
    (t,) = doc["services"][0]["targets"]
    assert t["missing_on_backup"]["paths"] == ["n/" + NASTY_NAMES[3]]
    assert len(t["extra_on_backup"]["paths"]) == 30 and t["differ"]["paths"] == ["d/f3.txt"]
    assert doc["ok"] is False

    down = write_inventory(tmp_path, sshd, primary, backup, primary_down=True)
    base = drctl(down, state, "--site", "dc1", "--json")
    assert base.returncode == 6
    services = {s["service"]: s for s in json.loads(base.stdout)["services"]}
    assert services["plain"]["skipped"] == "no integrity targets"
    (t,) = services["svc"]["targets"]
    assert t["reference"] == "baseline" and t["baseline"]["site"] == "dc1"


def test_verify_failure_exit_code(tmp_path: Path, sshd: SshServer) -> None:
    primary = write_tree(tmp_path / "primary", FILES)
    inv = write_inventory(tmp_path, sshd, primary, primary, primary_down=True)
    done = drctl(inv, tmp_path / "state", "svc")
    assert done.returncode == 5  # HostUnreachableError: could not verify, nothing to compare with
    assert "no intact baseline" in done.stderr and "--record-baseline" in done.stderr


def test_unknown_service_is_a_usage_error(tmp_path: Path, sshd: SshServer) -> None:
    primary = write_tree(tmp_path / "primary", FILES)
    inv = write_inventory(tmp_path, sshd, primary, primary)
    assert drctl(inv, tmp_path / "state", "nope").returncode == 2


@pytest.mark.parametrize(("policy", "tamper", "status"), [
    ("block", False, "ok"), ("block", True, "failed"), ("warn", True, "warn"),
])
def test_verify_integrity_step(tmp_path: Path, sshd: SshServer, policy: str, tamper: bool, status: str) -> None:
    primary = write_tree(tmp_path / "primary", FILES)
    backup = copy_tree(primary, tmp_path / "backup")
    if tamper:
        (backup / "d/f1.txt").unlink()
    inv = load_inventory(write_inventory(tmp_path, sshd, primary, backup))
    action = Action(id="svc-1", service="svc", index=1, kind="verify_integrity", title="verify", from_site="dc1",
                    to_site="dc2", mutating=False, gate=True, params={"policy": policy})
    ctx = Context(inv, state_dir=tmp_path / "state")
    try:
        outcome = execute(action, ctx)
    finally:
        ctx.close()
    assert outcome.status == status, outcome.detail
    if tamper:
        assert "1 missing on backup" in outcome.detail
        assert outcome.data["targets"][0]["missing_on_backup"]["paths"] == ["d/f1.txt"]
