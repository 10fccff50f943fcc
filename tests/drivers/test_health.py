"""Health checks against a real HTTP origin and real sockets."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from drctl.drivers.health import check_health
from drctl.lab.servers import Daemon, HttpOrigin, free_port
from drctl.model.inventory import HealthCheck

pytestmark = pytest.mark.servers


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory, module_daemons: Callable[[Daemon], Daemon]) -> HttpOrigin:
    server = HttpOrigin(tmp_path_factory.mktemp("origin"), "all good: dc1")
    module_daemons(server)
    assert isinstance(server, HttpOrigin)
    return server


def hc(**fields: object) -> HealthCheck:
    return HealthCheck.model_validate({"retries": 1, "interval": 0.05, "timeout": 2, **fields})


def test_http_ok(origin: HttpOrigin) -> None:
    r = check_health(hc(http=f"http://127.0.0.1:{origin.port}/health"))
    assert r.ok, r.detail
    assert "status 200" in r.detail and r.elapsed_s >= 0


def test_http_body_expectation(origin: HttpOrigin) -> None:
    url = f"http://127.0.0.1:{origin.port}/"
    assert check_health(hc(http=url, expect_body="dc1")).ok
    r = check_health(hc(http=url, expect_body="dc2"))
    assert not r.ok and "does not contain 'dc2'" in r.detail


def test_http_bad_status_after_retries(origin: HttpOrigin) -> None:
    r = check_health(hc(http=f"http://127.0.0.1:{origin.port}/missing", retries=3))
    assert not r.ok
    assert "status 404 (expected 200-399)" in r.detail and "3 tries" in r.detail
    assert check_health(hc(http=f"http://127.0.0.1:{origin.port}/missing", expect_status=[404])).ok


def test_http_refused_and_timeout(silent_port: int) -> None:
    r = check_health(hc(http=f"http://127.0.0.1:{free_port()}/"))
    assert not r.ok and "connection refused" in r.detail
    r = check_health(hc(http=f"http://127.0.0.1:{silent_port}/", timeout=0.3))
    assert not r.ok and "no answer within 0.3s" in r.detail


def test_credentials_never_appear_in_detail(origin: HttpOrigin) -> None:
    r = check_health(hc(http=f"http://monitor:s3cr3t@127.0.0.1:{origin.port}/health"))
    assert r.ok and "s3cr3t" not in r.detail and "monitor" not in r.detail


def test_tcp_ok_and_refused(origin: HttpOrigin) -> None:
    r = check_health(hc(tcp=f"127.0.0.1:{origin.port}"))
    assert r.ok and "connected" in r.detail
    r = check_health(hc(tcp=f"127.0.0.1:{free_port()}", retries=2))
    assert not r.ok and "connection refused" in r.detail and "2 tries" in r.detail
