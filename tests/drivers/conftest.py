"""Fixtures for the driver tests: real daemons shared by the tests of one module (they start in
tens of milliseconds to a second, and most tests only read), plus SSH pools and hosts for them.
Tests that change server state either undo it or use names of their own."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from drctl.drivers.ssh import SSHPool
from drctl.lab.servers import Daemon, SshServer
from drctl.model.inventory import Host


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory, module_daemons: Callable[[Daemon], Daemon]) -> SshServer:
    server = SshServer(tmp_path_factory.mktemp("sshd"))
    module_daemons(server)
    return server


def host_for(server: SshServer, **overrides: object) -> Host:
    fields: dict[str, object] = {"address": "127.0.0.1", "port": server.port, "user": server.user,
                                 "key": server.client_key, "known_hosts": server.known_hosts,
                                 "connect_timeout": 5}
    fields.update(overrides)
    return Host.model_validate(fields)


@pytest.fixture
def make_pool() -> Iterator[Callable[..., SSHPool]]:
    """``make_pool({"name": Host, ...}, **kwargs)``: an SSHPool independent of the user's ~/.ssh
    (no config, no known_hosts, no agent unless asked); closed after the test."""
    pools: list[SSHPool] = []

    def make(hosts: dict[str, Host], **kwargs: object) -> SSHPool:
        opts: dict[str, object] = {"ssh_config": None, "user_known_hosts": None, "use_agent": False}
        opts.update(kwargs)
        pool = SSHPool(hosts, **opts)  # type: ignore[arg-type]
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close()


@pytest.fixture
def pool(sshd: SshServer, make_pool: Callable[..., SSHPool]) -> SSHPool:
    """A pool with one host, ``app``, the module's sshd."""
    return make_pool({"app": host_for(sshd)})


def accepted_logins(server: SshServer) -> int:
    """How many logins the server's log shows so far."""
    return Path(server.log).read_text(errors="replace").count("Accepted publickey")


def wait_stopped(daemon: Daemon, deadline_s: float = 5) -> None:
    """Until the kernel shows a paused daemon as stopped (SIGSTOP is delivered asynchronously)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        stat = Path(f"/proc/{daemon.pid}/stat").read_text()
        if stat[stat.rindex(")") + 2] == "T":
            return
        time.sleep(0.01)
    raise AssertionError(f"{daemon.name} did not stop")


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose kernel completes TCP handshakes (backlog), but where nobody ever says anything."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    try:
        yield srv.getsockname()[1]
    finally:
        srv.close()
