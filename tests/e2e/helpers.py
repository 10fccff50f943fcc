"""Running drctl the way operators do: as a process, with its exit code, stdout and stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def drctl_env(state_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRCTL_")}
    env.update({"DRCTL_STATE_DIR": str(state_dir), "NO_COLOR": "1", "COLUMNS": "200"}, **extra)
    return env


def drctl(*args: str, state_dir: Path, inventory: Path | None = None, timeout: float = 120,
          stdin: str | None = None, **env: str) -> Result:
    argv = [sys.executable, "-m", "drctl", *args]
    e = drctl_env(state_dir, **env)
    if inventory is not None:
        e["DRCTL_INVENTORY"] = str(inventory)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=e,
                          input=stdin if stdin is not None else "", check=False)
    assert "Traceback" not in done.stderr, done.stderr
    return Result(done.returncode, done.stdout, done.stderr)


def spawn(*args: str, state_dir: Path, inventory: Path) -> subprocess.Popen[str]:
    e = drctl_env(state_dir, DRCTL_INVENTORY=str(inventory))
    return subprocess.Popen([sys.executable, "-m", "drctl", *args], env=e, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def journal(state_dir: Path, run_id: str) -> list[dict[str, Any]]:
    path = state_dir / "runs" / f"{run_id}.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def only_run_id(state_dir: Path) -> str | None:
    runs = sorted((state_dir / "runs").glob("*.jsonl")) if (state_dir / "runs").exists() else []
    return runs[-1].stem if runs else None


def kill_at_first(kind: str, *args: str, state_dir: Path, inventory: Path) -> str:
    """Start ``drctl ARGS``, SIGKILL it once its journal shows a step of ``kind`` started (the
    control node dies mid-run), and return the run id."""
    import signal

    proc = spawn(*args, state_dir=state_dir, inventory=inventory)
    try:
        run_id: str = wait_for(lambda: only_run_id(state_dir), 30, "the run to start")
        wait_for(lambda: any(r.get("event") == "action_started" and r.get("kind") == kind
                             for r in journal(state_dir, run_id)), 30, f"a {kind} step to start")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    return run_id
