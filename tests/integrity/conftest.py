"""Fixtures for the integrity tests: one real sshd per module (both sites' hosts point at it, so
"primary" and "backup" are two trees on the same machine), two real PostgreSQL clusters for the
whole session, and builders for trees and inventories."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from drctl.drivers.ssh import SSHPool
from drctl.lab.postgres import PostgresCluster, cluster_base_dir, missing_postgres
from drctl.lab.servers import Daemon, SshServer, free_port, pid_gone
from drctl.model.inventory import Inventory

NASTY_NAMES = [
    "with space.txt",
    "it's.txt",
    'say "hi".txt',
    "new\nline.txt",
    "tab\there.txt",
    "$(touch CANARY).txt",
    "`touch CANARY`.txt",
    "; touch CANARY #.txt",
    "back\\slash.txt",
    "-n",
    "*",
    "ünïcødé ✓.txt",
]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory, module_daemons: Callable[[Daemon], Daemon]) -> SshServer:
    server = SshServer(tmp_path_factory.mktemp("sshd"))
    module_daemons(server)
    return server


@pytest.fixture(scope="session")
def pg_pair() -> Iterator[tuple[PostgresCluster, PostgresCluster]]:
    """Two running clusters, ``primary`` and ``backup``; the backup's TCP logins need the
    password ``backup-secret`` (its socket stays trusted)."""
    missing = missing_postgres()
    if missing:
        pytest.fail(f"missing for PostgreSQL tests: {', '.join(missing)}; run `make deps`", pytrace=False)
    base = cluster_base_dir()
    clusters = [PostgresCluster(base / "primary", name="pg-primary"),
                PostgresCluster(base / "backup", name="pg-backup", password="backup-secret")]
    try:
        for c in clusters:
            c.start()
        yield clusters[0], clusters[1]
    finally:
        for c in clusters:
            c.stop()
        left = [c.name for c in clusters if c.pid is not None and not pid_gone(c.pid)]
        shutil.rmtree(base, ignore_errors=True)
        assert not left, f"still running after stop: {left}"


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    root.mkdir(parents=True, exist_ok=True)
    return root


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def host(server: SshServer, *, port: int | None = None, timeout: float = 5) -> dict[str, Any]:
    return {"address": "127.0.0.1", "port": port or server.port, "user": server.user,
            "key": str(server.client_key), "known_hosts": str(server.known_hosts), "connect_timeout": timeout}


def make_inventory(base_dir: Path, server: SshServer, targets: list[dict[str, Any]], *,
                   primary_down: bool = False, service: str = "svc") -> Inventory:
    """Sites dc1 (host app1) and dc2 (host app2), both the same sshd unless ``primary_down``
    (then app1 is a closed port); one service, primary dc1, backup dc2."""
    app1 = host(server, port=free_port(), timeout=0.5) if primary_down else host(server)
    inv = Inventory.model_validate({
        "sites": {"dc1": {"hosts": {"app1": app1}}, "dc2": {"hosts": {"app2": host(server)}}},
        "services": {service: {"primary": "dc1", "backup": "dc2", "integrity": targets}},
        "base_dir": base_dir,
    })
    problems = inv.check_references()
    assert not problems, problems
    return inv


def files_target(primary: Path, backup: Path, cache_dir: Path, **extra: Any) -> dict[str, Any]:
    return {"kind": "files", "name": "data", "cache_dir": str(cache_dir), "cache_settle": 0,
            "sites": {"dc1": {"host": "app1", "path": str(primary)}, "dc2": {"host": "app2", "path": str(backup)}},
            **extra}


@pytest.fixture
def make_pool() -> Iterator[Callable[[Inventory], SSHPool]]:
    pools: list[SSHPool] = []

    def make(inv: Inventory) -> SSHPool:
        pool = SSHPool(inv.all_hosts(), base_dir=inv.base_dir, ssh_config=None, user_known_hosts=None,
                       use_agent=False)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close()
