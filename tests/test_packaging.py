"""drctl as users install it: a wheel built from the source (``pip wheel``, the build ``pipx install
.`` and ``uv tool install .`` make too), installed into a fresh venv outside the repository, run
from a directory without ``playbooks/``. The default playbooks must come from the wheel, and the
wheel must hold every module of ``drctl/`` and the license.

Needs the package index for the build backend and drctl's dependencies (pip's cache makes a second
run faster); about 40 s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "drctl", "playbooks")


@dataclass
class Installed:
    wheel: Path
    venv: Path
    home: Path  # a directory outside the repository, without playbooks/

    @property
    def drctl(self) -> Path:
        return self.venv / "bin" / "drctl"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("DRCTL_", "PYTHON", "VIRTUAL_ENV"))}
        env.update(NO_COLOR="1", COLUMNS="200", XDG_STATE_HOME=str(self.home / "state"))
        return env

    def run(self, *argv: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(a) for a in argv], cwd=self.home, env=self.env(), capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
        assert "Traceback" not in done.stderr, done.stderr
        return done


def _pip(*args: str, timeout: float = 300) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        if not _index_reachable():
            pytest.skip(f"the package index is out of reach: pip {args[0]} failed")
        raise AssertionError(f"pip {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def _index_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    base = tmp_path_factory.mktemp("packaging")
    src = base / "src"  # a copy: the build writes build/ and *.egg-info next to the sources
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    dist = base / "dist"
    _pip("wheel", "--no-deps", "-q", "-w", str(dist), str(src))
    (wheel,) = dist.glob("drctl-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    _pip("--python", str(venv / "bin" / "python"), "install", "-q", "--no-compile", str(wheel))
    home = base / "home"
    home.mkdir()
    yield Installed(wheel, venv, home)


def test_the_wheel_holds_every_module_the_playbooks_and_the_license(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "drctl").rglob("*.py") if "__pycache__" not in p.parts}
    assert modules - names == set(), "modules missing from the wheel: list their package in pyproject.toml"
    for playbook in (ROOT / "playbooks").glob("*.yaml"):
        assert zipfile.ZipFile(installed.wheel).read(f"drctl/playbooks/{playbook.name}") == playbook.read_bytes()
    licenses = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    assert licenses and "Apache License" in zipfile.ZipFile(installed.wheel).read(licenses[0]).decode()
    assert not (ROOT / "drctl" / "playbooks").exists(), "the default playbooks live once, in playbooks/"


def test_help_lists_the_exit_codes(installed: Installed) -> None:
    done = installed.run(installed.drctl, "--help")
    assert done.returncode == 0, done.stderr
    assert "Exit codes:" in done.stdout and "130" in done.stdout


def test_the_default_playbooks_come_from_the_wheel(installed: Installed) -> None:
    done = installed.run(installed.python, "-c", "import json\nfrom drctl.model.load import builtin_playbook\n"
                         "print(json.dumps([str(builtin_playbook(n)) for n in ('failover', 'failback', 'drill')]))")
    assert done.returncode == 0, done.stderr
    paths = [Path(p) for p in json.loads(done.stdout)]
    site = installed.venv.resolve()
    assert all(p.is_file() and p.resolve().is_relative_to(site) for p in paths), paths

    inventory = installed.home / "example.yaml"
    shutil.copy2(ROOT / "inventory" / "example.yaml", inventory)
    done = installed.run(installed.drctl, "validate", "--inventory", inventory, *paths)
    assert done.returncode == 0, done.stderr
    assert "3 playbook(s) ok" in done.stderr


def test_plan_with_the_builtin_playbook_while_no_server_answers(installed: Installed) -> None:
    text = (ROOT / "inventory" / "example.yaml").read_text()
    text = re.sub(r"\b10\.\d+\.\d+\.\d+\b", "127.0.0.1", text)  # every host, DNS server and balancer ...
    text = text.replace("port: 53", "port: 9").replace(":9999", ":9")  # ... on a port where nothing listens
    inventory = installed.home / "silent.yaml"
    inventory.write_text(text)
    done = installed.run(installed.drctl, "plan", "failover", "--site", "dc1", "--format", "json",
                         "--inventory", inventory)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["operation"] == "failover" and plan["playbook"] == "failover"
    assert {s["service"] for s in plan["services"]} == {"api", "db", "web"}
    assert all(s["actions"] for s in plan["services"])
