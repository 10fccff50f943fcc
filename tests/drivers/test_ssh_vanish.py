"""SSHPool when a host stops answering after it was connected: a real sshd frozen with SIGSTOP (the
daemon and every process it started), mid-run and mid-command. Each failure comes within the
host's connect budget, names the host, and the host is then given up at once for the rest of the
run; a live host running a long silent command is not mistaken for a dead one."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from drctl.drivers.ssh import SSHPool
from drctl.errors import HostUnreachableError
from drctl.lab.servers import SshServer, process_tree
from tests.drivers.conftest import host_for

pytestmark = pytest.mark.servers

BUDGET = 1.0


@pytest.fixture
def freeze(ssh_server: SshServer) -> Iterator[Callable[[], None]]:
    """``freeze()`` stops sshd and all its children; they are continued after the test."""
    frozen: list[int] = []

    def do() -> None:
        assert ssh_server.pid is not None
        for p in process_tree(ssh_server.pid):
            os.kill(p, signal.SIGSTOP)
            frozen.append(p)

    yield do
    for p in frozen:
        try:
            os.kill(p, signal.SIGCONT)
        except ProcessLookupError:
            pass


@pytest.fixture
def vpool(ssh_server: SshServer, make_pool: Callable[..., SSHPool]) -> SSHPool:
    return make_pool({"app": host_for(ssh_server, connect_timeout=BUDGET)})


def test_a_host_frozen_after_connecting_fails_the_next_command_within_its_budget(
        vpool: SSHPool, freeze: Callable[[], None]) -> None:
    assert vpool.run("app", ["true"]).rc == 0  # connected, the connection pooled
    freeze()
    t0 = time.monotonic()
    with pytest.raises(HostUnreachableError, match="stopped answering"):
        vpool.run("app", ["true"], timeout=60)
    assert time.monotonic() - t0 < 4 * BUDGET + 1
    # the rest of the run does not wait for it again
    t1 = time.monotonic()
    with pytest.raises(HostUnreachableError):
        vpool.run("app", ["true"], timeout=60)
    assert time.monotonic() - t1 < 0.5


def test_a_host_frozen_while_a_command_runs_is_given_up_within_its_budget(
        vpool: SSHPool, freeze: Callable[[], None]) -> None:
    assert vpool.run("app", ["true"]).rc == 0
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["result"] = vpool.run("app", ["sleep", "30"], timeout=60)
        except HostUnreachableError as e:
            box["error"] = e
        box["t"] = time.monotonic()

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(0.3)  # the command is running on the host
    t0 = time.monotonic()
    freeze()
    worker.join(15)
    assert not worker.is_alive()
    assert isinstance(box.get("error"), HostUnreachableError), box
    assert "may or may not have completed" in str(box["error"])
    assert float(box["t"]) - t0 < 4 * BUDGET + 1  # type: ignore[arg-type]


def test_a_long_silent_command_on_a_live_host_is_not_mistaken_for_a_dead_host(vpool: SSHPool) -> None:
    t0 = time.monotonic()
    res = vpool.run("app", ["sleep", str(4 * BUDGET)], timeout=30)
    assert res.rc == 0
    assert time.monotonic() - t0 >= 4 * BUDGET


def test_a_stream_from_a_host_frozen_mid_read_ends_within_its_budget(
        vpool: SSHPool, freeze: Callable[[], None]) -> None:
    t0 = 0.0
    with pytest.raises(HostUnreachableError):  # noqa: PT012 - the freeze lands between two reads
        with vpool.stream("app", ["sh", "-c", "echo first; sleep 30; echo second"], timeout=60) as f:
            assert f.readline() == b"first\n"
            freeze()
            t0 = time.monotonic()
            f.readline()
    assert time.monotonic() - t0 < 4 * BUDGET + 1
