"""HAProxy runtime API driver against a real HAProxy with two real HTTP origins."""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from drctl.drivers.haproxy import HAProxyAdmin, ServerState
from drctl.errors import HAProxyError
from drctl.lab.servers import Backend, Daemon, HAProxyServer, HttpOrigin, free_port
from tests.drivers.conftest import wait_stopped

pytestmark = pytest.mark.servers


@pytest.fixture(scope="module")
def lb(tmp_path_factory: pytest.TempPathFactory, module_daemons: Callable[[Daemon], Daemon]) -> HAProxyServer:
    base = tmp_path_factory.mktemp("haproxy")
    dc1 = module_daemons(HttpOrigin(base / "dc1", "served-by-dc1", name="origin-dc1"))
    dc2 = module_daemons(HttpOrigin(base / "dc2", "served-by-dc2", name="origin-dc2"))
    server = HAProxyServer(base / "lb", [Backend("app", "http", free_port(), [
        ("dc1", f"127.0.0.1:{dc1.port}", False),
        ("dc2", f"127.0.0.1:{dc2.port}", True),
    ])])
    module_daemons(server)
    assert isinstance(server, HAProxyServer)
    return server


@pytest.fixture(params=["tcp", "unix"])
def admin(request: pytest.FixtureRequest, lb: HAProxyServer) -> Iterator[HAProxyAdmin]:
    url = f"tcp://127.0.0.1:{lb.admin_port}" if request.param == "tcp" else f"unix://{lb.admin_socket}"
    a = HAProxyAdmin(url, timeout=3)
    yield a
    # every test leaves the backend as configured: dc1 serving, dc2 in maintenance
    a.set_state("app", "dc1", "ready")
    a.set_state("app", "dc2", "maint")


def frontend_body(lb: HAProxyServer) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", lb.backends[0].frontend_port, timeout=3)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        resp = conn.getresponse()
        return f"{resp.status} {resp.read().decode()}"
    finally:
        conn.close()


def wait_for_body(lb: HAProxyServer, want: str, deadline_s: float = 10) -> str:
    """Ask the frontend until it answers ``want`` (bounded); the last answer."""
    deadline = time.monotonic() + deadline_s
    while True:
        got = frontend_body(lb)
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.02)


def wait_up(admin: HAProxyAdmin, server: str, deadline_s: float = 10) -> ServerState:
    deadline = time.monotonic() + deadline_s
    while True:
        st = admin.server("app", server)
        if st.up or time.monotonic() > deadline:
            return st
        time.sleep(0.05)


def test_servers_lists_state(admin: HAProxyAdmin, lb: HAProxyServer) -> None:
    servers = admin.servers("app")
    assert sorted(servers) == ["dc1", "dc2"]
    dc1, dc2 = servers["dc1"], servers["dc2"]
    assert dc1.state_text == "ready" and not dc1.maint
    assert dc1.address.startswith("127.0.0.1:")
    assert dc2.state_text == "maint" and dc2.maint
    assert dc2.status == "MAINT"
    assert wait_up(admin, "dc1").up


def test_switch_traffic_and_back(admin: HAProxyAdmin, lb: HAProxyServer) -> None:
    wait_up(admin, "dc1")
    assert wait_for_body(lb, "200 served-by-dc1") == "200 served-by-dc1"
    admin.set_state("app", "dc2", "ready")
    admin.set_state("app", "dc1", "maint")
    dc2 = wait_up(admin, "dc2")
    # dc2 was `disabled` in the configuration: HAProxy keeps its configured-maintenance flag
    # (0x04) after `state ready`, yet it serves, and we must call it ready
    assert dc2.admin_state & 0x04
    assert dc2.state_text == "ready" and not dc2.maint
    assert admin.server("app", "dc1").state_text == "maint"
    assert wait_for_body(lb, "200 served-by-dc2") == "200 served-by-dc2"
    admin.set_state("app", "dc1", "ready")
    admin.set_state("app", "dc2", "maint")
    wait_up(admin, "dc1")
    assert wait_for_body(lb, "200 served-by-dc1") == "200 served-by-dc1"


def test_set_state_is_idempotent(admin: HAProxyAdmin) -> None:
    for _ in range(2):
        admin.set_state("app", "dc2", "maint")
        admin.set_state("app", "dc1", "ready")
    assert admin.server("app", "dc2").state_text == "maint"


def test_drain(admin: HAProxyAdmin) -> None:
    admin.set_state("app", "dc1", "drain")
    st = admin.server("app", "dc1")
    assert st.state_text == "drain" and not st.maint
    assert st.status.startswith("DRAIN")


def test_unknown_server_and_backend(admin: HAProxyAdmin) -> None:
    with pytest.raises(HAProxyError, match="No such server"):
        admin.set_state("app", "dc9", "maint")
    with pytest.raises(HAProxyError, match="No such backend"):
        admin.set_state("nope", "dc1", "maint")
    with pytest.raises(HAProxyError, match="Can't find backend"):
        admin.servers("nope")
    with pytest.raises(HAProxyError, match="has no server 'dc9'; it has: dc1, dc2"):
        admin.server("app", "dc9")


def test_names_cannot_smuggle_commands(admin: HAProxyAdmin) -> None:
    with pytest.raises(HAProxyError, match="invalid HAProxy server name"):
        admin.set_state("app", "dc1 state maint;shutdown", "ready")
    with pytest.raises(HAProxyError, match="one command per call"):
        admin.command("show info\nshutdown sessions")
    with pytest.raises(HAProxyError, match="invalid server state"):
        admin.set_state("app", "dc1", "up")  # type: ignore[arg-type]


def test_unreachable_admin_endpoints(tmp_path: Path) -> None:
    with pytest.raises(HAProxyError, match="refused"):
        HAProxyAdmin(f"tcp://127.0.0.1:{free_port()}", timeout=1).servers("app")
    with pytest.raises(HAProxyError, match="does not exist"):
        HAProxyAdmin(f"unix://{tmp_path}/missing.sock", timeout=1).servers("app")
    with pytest.raises(HAProxyError, match="expected tcp://HOST:PORT"):
        HAProxyAdmin("http://127.0.0.1:1")


def test_paused_haproxy_times_out(tmp_path: Path) -> None:
    origin = HttpOrigin(tmp_path / "o", "x")
    origin.start()
    lb = HAProxyServer(tmp_path / "lb", [Backend("app", "http", free_port(), [("a", f"127.0.0.1:{origin.port}",
                                                                                 False)])])
    lb.start()
    try:
        lb.pause()
        wait_stopped(lb)
        with pytest.raises(HAProxyError, match="no complete reply"):
            HAProxyAdmin(f"tcp://127.0.0.1:{lb.admin_port}", timeout=0.5).servers("app")
    finally:
        lb.stop()
        origin.stop()


@pytest.mark.parametrize("admin_state, text", [
    (0, "ready"), (0x01, "maint"), (0x05, "maint"), (0x04, "ready"), (0x02, "maint"), (0x20, "maint"),
    (0x08, "drain"), (0x0C, "drain"), (0x09, "maint"), (0x40, "ready"),
])
def test_state_text_from_admin_bits(admin_state: int, text: str) -> None:
    st = ServerState("b", "s", "127.0.0.1:1", op_state=2, admin_state=admin_state, weight=1)
    assert st.state_text == text
