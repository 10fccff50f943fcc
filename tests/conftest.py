"""Shared fixtures: real servers on 127.0.0.1 (never mocks).

- ``lab``: a complete local lab (``drctl.lab.lab.lab_up``) in ``tmp_path``, torn down after the
  test with a check that no process is left. It is a ``LabInfo``: ``.dir``, ``.inventory``,
  ``.daemons["ssh-app1" | "named-ns1" | "origin-web-dc1" | "haproxy-lb1" | ...]`` (stop / pause
  them), and read helpers that use plain tools, not drctl's drivers (``.dig``,
  ``.http_get_frontend``, ``.haproxy_state``, ``.host_root``...).
- ``start_daemon``: start any ``drctl.lab.servers`` daemon; it is stopped after the test.
- ``ssh_server``, ``tsig_key``, ``dns_pair``, ``http_origin``: single servers for driver tests.
- ``etcd_cluster``: a 3-member etcd cluster (``EtcdCluster``: members etcd-1..3, ``.spec(...)``),
  shared by a test module; a test that stops or pauses a member starts or resumes it again.

Tests that start servers carry ``pytest.mark.servers`` (added automatically for the fixtures
above). When a server binary is missing they fail and say to run ``make deps``; they never skip.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from drctl.lab.lab import LabInfo, lab_down, lab_status, lab_up
from drctl.lab.servers import Daemon, EtcdCluster, HttpOrigin, NamedServer, SshServer, pid_gone, write_tsig_key

SERVER_FIXTURES = {"lab", "start_daemon", "module_daemons", "ssh_server", "tsig_key", "dns_pair", "http_origin",
                   "etcd_cluster"}

D = TypeVar("D", bound=Daemon)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers",
                            "servers: starts real daemons (sshd, named, haproxy); needs `make deps`")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.servers)


_missing: list[str] | None = None


@pytest.fixture(autouse=True)
def _servers_installed(request: pytest.FixtureRequest) -> None:
    """Fail (not skip) a server test when a binary it needs is not installed."""
    global _missing
    if request.node.get_closest_marker("servers") is None:
        return
    if _missing is None:
        from drctl.lab.servers import missing_binaries

        _missing = missing_binaries()
    if _missing:
        pytest.fail(f"missing programs for server tests: {', '.join(_missing)}; run `make deps`",
                    pytrace=False)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[LabInfo]:
    info = lab_up(tmp_path / "lab")
    try:
        yield info
    finally:
        recorded = {s.name: s.pid for s in lab_status(info.dir)}
        lab_down(info.dir)
        left = [n for n, d in info.daemons.items()
                if d.alive() or (d.pid is not None and not pid_gone(d.pid))]
        left += [f"{n} (pid {pid})" for n, pid in recorded.items() if not pid_gone(pid)]
        assert not left, f"still running after lab_down: {left}"


def _daemon_starter() -> Iterator[Callable[[D], D]]:
    """Yields ``start(daemon)``; afterwards stops every daemon started and checks none is left."""
    started: list[Daemon] = []

    def start(daemon: D) -> D:
        started.append(daemon)
        daemon.start()
        return daemon

    yield start
    for daemon in reversed(started):
        daemon.stop()
    left = [d.name for d in started if d.alive() or (d.pid is not None and not pid_gone(d.pid))]
    assert not left, f"still running after stop: {left}"


@pytest.fixture
def start_daemon() -> Iterator[Callable[[D], D]]:
    """``start_daemon(SshServer(tmp_path / "ssh"))`` starts it and returns it; stopped after the test."""
    yield from _daemon_starter()


@pytest.fixture(scope="module")
def module_daemons() -> Iterator[Callable[[D], D]]:
    """Like ``start_daemon``, for daemons shared by a whole test module."""
    yield from _daemon_starter()


@pytest.fixture(scope="module")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A 3-member etcd cluster on 127.0.0.1 for a test module (about a second to start)."""
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
        left = [m.name for m in cluster.members if m.alive() or (m.pid is not None and not pid_gone(m.pid))]
        assert not left, f"still running after stop: {left}"


@pytest.fixture
def ssh_server(tmp_path: Path, start_daemon: Callable[[SshServer], SshServer]) -> SshServer:
    """A running sshd for the current user: ``.port``, ``.user``, ``.client_key``, ``.known_hosts``."""
    return start_daemon(SshServer(tmp_path / "sshd"))


@pytest.fixture
def tsig_key(tmp_path: Path) -> Path:
    """A TSIG key file named ``drctl-test`` (hmac-sha256), as ``tsig-keygen`` writes it."""
    return write_tsig_key(tmp_path / "keys" / "tsig.key", "drctl-test")


TEST_ZONE = """$TTL 30
@\tIN SOA ns1.example.test. hostmaster.example.test. ( 1 3600 600 86400 30 )
@\tIN NS ns1.example.test.
ns1\tIN A 127.0.0.1
www\tIN A 192.0.2.10
api\tIN A 192.0.2.11
"""


@pytest.fixture
def dns_pair(tmp_path: Path, tsig_key: Path,
             start_daemon: Callable[[NamedServer], NamedServer]) -> tuple[NamedServer, NamedServer]:
    """(primary, secondary) BIND servers for ``example.test`` (``www`` 192.0.2.10, ``api``
    192.0.2.11, TTL 30); UPDATEs need the ``tsig_key``; the secondary follows by NOTIFY + IXFR."""
    primary = NamedServer(tmp_path / "ns1", {"example.test": TEST_ZONE}, tsig_key, name="ns1")
    secondary = NamedServer(tmp_path / "ns2", {}, tsig_key, primary=primary, name="ns2")
    start_daemon(primary)
    start_daemon(secondary)
    return primary, secondary


@pytest.fixture
def http_origin(tmp_path: Path, start_daemon: Callable[[HttpOrigin], HttpOrigin]) -> HttpOrigin:
    """An HTTP origin answering ``hello`` on / and /health."""
    return start_daemon(HttpOrigin(tmp_path / "origin", "hello"))
