"""PowerDNS driver against a real pdns_server (gsqlite3 backend) on 127.0.0.1: zone example.test
changed through the HTTP API, served over DNS."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from drctl.drivers import dns_rfc2136 as rfc2136
from drctl.drivers.dns_powerdns import ApiKey, PowerDnsApi, RecordChange, load_api_key
from drctl.errors import ConfigError, DNSConflictError, DNSError, DNSUnreachableError, DrctlError, TSIGError
from drctl.lab.servers import Daemon, PowerDnsServer, free_port
from tests.drivers.conftest import wait_stopped

pytestmark = pytest.mark.servers

ZONE = "example.test"
ZONE_TEXT = """$TTL 60
@\tIN SOA ns1.example.test. hostmaster.example.test. ( 1 3600 600 86400 60 )
@\tIN NS ns1.example.test.
ns1\tIN A 127.0.0.1
www\tIN A 192.0.2.10
multi\tIN A 192.0.2.2
multi\tIN A 192.0.2.1
note\tIN TXT "hello world"
alias\tIN CNAME WWW.Example.test.
"""
WRONG_KEY = "wrong-key-3f9c1e7a5b2d4c6e8f0a1b2c3d4e5f60"


@pytest.fixture(scope="module")
def pdns(tmp_path_factory: pytest.TempPathFactory, module_daemons: Callable[[Daemon], Daemon]) -> PowerDnsServer:
    server = PowerDnsServer(tmp_path_factory.mktemp("pdns"), {ZONE: ZONE_TEXT}, name="pdns1")
    module_daemons(server)
    return server


@pytest.fixture
def dns_srv(pdns: PowerDnsServer) -> tuple[str, int]:
    return ("127.0.0.1", pdns.port)


@pytest.fixture
def api(pdns: PowerDnsServer) -> PowerDnsApi:
    return PowerDnsApi(pdns.api_url, load_api_key(file=pdns.api_key_file), timeout=2)


@pytest.fixture
def spare_pdns(tmp_path: Path, start_daemon: Callable[[PowerDnsServer], PowerDnsServer]) -> PowerDnsServer:
    """A pdns_server of this test's own, to stop or pause."""
    return start_daemon(PowerDnsServer(tmp_path / "pdns", {ZONE: ZONE_TEXT}, name="pdns-spare"))


def serial(srv: tuple[str, int]) -> int:
    return rfc2136.soa_serial(srv, ZONE)


def secret_free(exc: BaseException, *secrets: str) -> None:
    """Neither the message nor the hint of a drctl error quotes a key."""
    assert isinstance(exc, DrctlError)
    for secret in secrets:
        assert secret not in str(exc)
        assert secret not in (exc.hint or "")
        assert secret not in repr(exc)


# --- reading ---------------------------------------------------------------------------------------


def test_read_is_canonical_and_matches_what_dns_serves(api: PowerDnsApi, dns_srv: tuple[str, int]) -> None:
    assert api.read(ZONE, "www.example.test.", "A") == ["192.0.2.10"]
    assert api.read(ZONE, "multi.example.test", "a") == ["192.0.2.1", "192.0.2.2"]
    assert api.read(ZONE, "note.example.test.", "TXT") == ['"hello world"']
    assert api.read(ZONE, "alias.example.test.", "CNAME") == ["www.example.test."]  # lower case, dot
    assert api.read(ZONE, "missing.example.test.", "A") == []
    assert api.read(ZONE, "www.example.test.", "AAAA") == []
    for name, rdtype in [("www", "A"), ("multi", "A"), ("note", "TXT")]:
        fqdn = f"{name}.example.test."
        assert api.read(ZONE, fqdn, rdtype) == rfc2136.query(dns_srv, fqdn, rdtype)
    assert rfc2136.normalize_values("TXT", ["hello world"]) == api.read(ZONE, "note.example.test.", "TXT")


def test_read_outside_the_zone_or_of_an_unknown_type_is_a_config_error(api: PowerDnsApi) -> None:
    with pytest.raises(ConfigError, match="not inside zone"):
        api.read(ZONE, "www.other.test.", "A")
    with pytest.raises(ConfigError, match="unknown record type"):
        api.read(ZONE, "www.example.test.", "BOGUS")


# --- changing --------------------------------------------------------------------------------------


def test_apply_is_served_over_dns_and_a_rerun_is_a_no_op(api: PowerDnsApi, dns_srv: tuple[str, int]) -> None:
    change = RecordChange("app1.example.test.", "A", 60, old=[], new=["192.0.2.50"])
    before = serial(dns_srv)
    assert api.apply(ZONE, [change]) == ["app1.example.test."]
    # served at once over DNS (PowerDNS purges its caches for the zone on an API change), with the
    # serial bumped so that secondaries follow
    assert rfc2136.query(dns_srv, "app1.example.test.", "A") == ["192.0.2.50"]
    assert serial(dns_srv) == before + 1
    assert api.apply(ZONE, [change]) == []
    assert serial(dns_srv) == before + 1
    flip = RecordChange("app1.example.test.", "A", 60, old=["192.0.2.50"], new=["198.51.100.50"])
    assert api.apply(ZONE, [flip]) == ["app1.example.test."]
    assert rfc2136.query(dns_srv, "app1.example.test.", "A") == ["198.51.100.50"]
    back = RecordChange("app1.example.test.", "A", 60, old=["198.51.100.50"], new=["192.0.2.50"])
    assert api.apply(ZONE, [back]) == ["app1.example.test."]
    assert rfc2136.query(dns_srv, "app1.example.test.", "A") == ["192.0.2.50"]
    assert api.read(ZONE, "app1.example.test.", "A") == ["192.0.2.50"]


def test_several_records_in_one_patch(api: PowerDnsApi, dns_srv: tuple[str, int]) -> None:
    api.apply(ZONE, [
        RecordChange("app2.example.test.", "A", 60, old=[], new=["192.0.2.60", "192.0.2.61"]),
        RecordChange("app2-txt.example.test.", "TXT", 60, old=[], new=["site=dc1"]),
    ])
    before = serial(dns_srv)
    changed = api.apply(ZONE, [
        RecordChange("app2.example.test.", "A", 60, old=["192.0.2.61", "192.0.2.60"], new=["198.51.100.60"]),
        RecordChange("app2-txt.example.test.", "TXT", 60, old=['"site=dc1"'], new=["site=dc2"]),
    ])
    assert changed == ["app2.example.test.", "app2-txt.example.test."]
    assert serial(dns_srv) == before + 1  # one PATCH
    assert rfc2136.query(dns_srv, "app2.example.test.", "A") == ["198.51.100.60"]
    assert rfc2136.query(dns_srv, "app2-txt.example.test.", "TXT") == ['"site=dc2"']


def test_ttl_only_change_and_delete(api: PowerDnsApi, dns_srv: tuple[str, int]) -> None:
    api.apply(ZONE, [RecordChange("ttl.example.test.", "A", 60, [], ["192.0.2.70"])])
    assert api.apply(ZONE, [RecordChange("ttl.example.test.", "A", 300, [], ["192.0.2.70"])]) == ["ttl.example.test."]
    assert api.apply(ZONE, [RecordChange("ttl.example.test.", "A", 300, [], ["192.0.2.70"])]) == []
    # a CNAME target given without its dot and in capitals is the same name
    api.apply(ZONE, [RecordChange("gone.example.test.", "CNAME", 60, [], ["WWW.example.test"])])
    assert rfc2136.query(dns_srv, "gone.example.test.", "CNAME") == ["www.example.test."]
    assert api.apply(ZONE, [RecordChange("gone.example.test.", "CNAME", 60, [], ["www.example.test."])]) == []
    assert api.apply(ZONE, [RecordChange("gone.example.test.", "CNAME", 60, ["www.example.test"], [])]) \
        == ["gone.example.test."]
    assert rfc2136.query(dns_srv, "gone.example.test.", "CNAME") == []
    assert api.apply(ZONE, [RecordChange("gone.example.test.", "CNAME", 60, ["www.example.test"], [])]) == []


def test_record_changed_by_someone_else_is_not_overwritten(
        api: PowerDnsApi, pdns: PowerDnsServer, dns_srv: tuple[str, int]) -> None:
    api.apply(ZONE, [
        RecordChange("app3.example.test.", "A", 60, [], ["192.0.2.80"]),
        RecordChange("app3b.example.test.", "A", 60, [], ["192.0.2.81"]),
    ])
    pdns.set_records(ZONE, "app3.example.test.", "A", ["203.0.113.9"])  # an operator, by hand
    before = serial(dns_srv)
    with pytest.raises(DNSConflictError) as err:
        api.apply(ZONE, [
            RecordChange("app3b.example.test.", "A", 60, ["192.0.2.81"], ["198.51.100.81"]),
            RecordChange("app3.example.test.", "A", 60, ["192.0.2.80"], ["198.51.100.80"]),
        ])
    text = str(err.value)
    assert "app3.example.test. A" in text and "192.0.2.80" in text and "203.0.113.9" in text
    assert "nothing was sent" in text and "app3b" not in text
    assert api.read(ZONE, "app3.example.test.", "A") == ["203.0.113.9"]
    assert rfc2136.query(dns_srv, "app3.example.test.", "A") == ["203.0.113.9"]
    assert rfc2136.query(dns_srv, "app3b.example.test.", "A") == ["192.0.2.81"]  # all or nothing
    assert serial(dns_srv) == before


def test_a_writer_landing_right_after_our_patch_is_reported(
        api: PowerDnsApi, pdns: PowerDnsServer, dns_srv: tuple[str, int], monkeypatch: pytest.MonkeyPatch) -> None:
    """The read-back after the PATCH: a concurrent change that lands after ours is not claimed as
    our success."""
    api.apply(ZONE, [RecordChange("race.example.test.", "A", 60, [], ["192.0.2.90"])])
    real_request = api._request

    def request_then_someone_writes(method: str, path: str, what: str, body: object = None) -> tuple[int, bytes]:
        answer = real_request(method, path, what, body)
        if method == "PATCH":
            pdns.set_records(ZONE, "race.example.test.", "A", ["203.0.113.90"])
        return answer

    monkeypatch.setattr(api, "_request", request_then_someone_writes)
    with pytest.raises(DNSConflictError, match=r"right after our PATCH.*race\.example\.test\. A = 203\.0\.113\.90, "
                                               r"expected 198\.51\.100\.90"):
        api.apply(ZONE, [RecordChange("race.example.test.", "A", 60, ["192.0.2.90"], ["198.51.100.90"])])
    assert rfc2136.query(dns_srv, "race.example.test.", "A") == ["203.0.113.90"]


def test_the_api_refusing_a_value_is_a_dns_error(api: PowerDnsApi, dns_srv: tuple[str, int]) -> None:
    # valid on its own, refused by PowerDNS' zone checks: an A record beside a CNAME
    api.apply(ZONE, [RecordChange("both.example.test.", "CNAME", 60, [], ["www.example.test."])])
    before = serial(dns_srv)
    with pytest.raises(DNSError, match=r"refused the PATCH of zone example\.test\. \(HTTP 422\): "
                                           r"RRset both\.example\.test\. IN A: Conflicts"):
        api.apply(ZONE, [RecordChange("both.example.test.", "A", 60, [], ["192.0.2.1"])])
    assert serial(dns_srv) == before


def test_bad_values_names_and_duplicates_are_config_errors(api: PowerDnsApi) -> None:
    with pytest.raises(ConfigError, match="invalid value"):
        api.apply(ZONE, [RecordChange("x.example.test.", "A", 60, [], ["10.0.0.256"])])
    with pytest.raises(ConfigError, match="not inside zone"):
        api.apply(ZONE, [RecordChange("x.other.test.", "A", 60, [], ["10.0.0.1"])])
    with pytest.raises(ConfigError, match="appears twice"):
        api.apply(ZONE, [RecordChange("x.example.test.", "A", 60, [], ["10.0.0.1"]),
                         RecordChange("X.example.test", "a", 60, [], ["10.0.0.2"])])
    with pytest.raises(ConfigError, match="SOA"):
        api.apply(ZONE, [RecordChange("example.test.", "SOA", 60, [], ["a. b. 1 2 3 4 5"])])


# --- the key ---------------------------------------------------------------------------------------


def test_probe_key_changes_nothing(api: PowerDnsApi, pdns: PowerDnsServer, dns_srv: tuple[str, int]) -> None:
    before = serial(dns_srv)
    api.probe_key(ZONE)
    assert serial(dns_srv) == before
    with pytest.raises(DNSError, match=r"has no zone elsewhere\.test\. \(HTTP 404\)"):
        api.probe_key("elsewhere.test")
    other = PowerDnsApi(pdns.api_url, load_api_key(file=pdns.api_key_file), server_id="nosuch", timeout=2)
    with pytest.raises(DNSError, match="'nosuch'"):
        other.probe_key(ZONE)


def test_a_secondary_zone_is_refused(api: PowerDnsApi, pdns: PowerDnsServer) -> None:
    status, _ = pdns.api("POST", "/api/v1/servers/localhost/zones",
                         {"name": "copy.test.", "kind": "Slave", "masters": ["127.0.0.1:1"], "nameservers": []})
    assert status == 201
    with pytest.raises(DNSError, match="secondary zone|slave zone") as err:
        api.probe_key("copy.test")
    assert err.value.hint is not None and "primary" in err.value.hint


def test_wrong_key_is_refused_clearly_and_changes_nothing(
        pdns: PowerDnsServer, dns_srv: tuple[str, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    key_file = tmp_path / "wrong.key"
    key_file.write_text(WRONG_KEY + "\n")
    monkeypatch.setenv("DRCTL_TEST_PDNS_KEY", WRONG_KEY)
    right_key = pdns.api_key_file.read_text().strip()
    before = serial(dns_srv)
    for key, source in [(load_api_key(file=key_file), f"file {key_file}"),
                        (load_api_key(env="DRCTL_TEST_PDNS_KEY"), "environment variable DRCTL_TEST_PDNS_KEY")]:
        bad = PowerDnsApi(pdns.api_url, key, timeout=2)
        assert WRONG_KEY not in repr(bad) and WRONG_KEY not in repr(key) and WRONG_KEY not in str(key)
        with pytest.raises(TSIGError) as err:
            bad.probe_key(ZONE)
        assert f"rejected our API key from {source}" in str(err.value) and "HTTP 401" in str(err.value)
        assert "api-key" in (err.value.hint or "")
        secret_free(err.value, WRONG_KEY, right_key)
        with pytest.raises(TSIGError) as err:
            bad.apply(ZONE, [RecordChange("www.example.test.", "A", 60, ["192.0.2.10"], ["192.0.2.11"])])
        secret_free(err.value, WRONG_KEY, right_key)
        with pytest.raises(TSIGError) as err:
            bad.read(ZONE, "www.example.test.", "A")
        secret_free(err.value, WRONG_KEY, right_key)
    assert rfc2136.query(dns_srv, "www.example.test.", "A") == ["192.0.2.10"]
    assert serial(dns_srv) == before
    assert WRONG_KEY not in caplog.text and right_key not in caplog.text


def test_loading_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "k"
    f.write_text("\n  s3cret-value  \n\n")
    assert load_api_key(file=f) == ApiKey("s3cret-value", f"file {f}")
    monkeypatch.setenv("K", "s3cret-value")
    assert load_api_key(env="K").secret == "s3cret-value"
    bad_inputs: list[tuple[Callable[[], ApiKey], str]] = [
        (lambda: load_api_key(file=tmp_path / "none"), "No such file"),
        (lambda: load_api_key(), "exactly one"),
        (lambda: load_api_key(env="DRCTL_TEST_UNSET_VARIABLE"), "is not set"),
    ]
    (tmp_path / "two").write_text("s3cret-value\nmore-s3cret\n")
    bad_inputs.append((lambda: load_api_key(file=tmp_path / "two"), "alone on one line"))
    monkeypatch.setenv("CTRL", "s3cret\x07value")
    bad_inputs.append((lambda: load_api_key(env="CTRL"), "cannot carry"))
    (tmp_path / "empty").write_text("\n")
    bad_inputs.append((lambda: load_api_key(file=tmp_path / "empty"), "is empty"))
    for load, message in bad_inputs:
        with pytest.raises(ConfigError, match=message) as err:
            load()
        assert "s3cret" not in str(err.value)
    with pytest.raises(ConfigError, match="must not carry credentials"):
        PowerDnsApi("http://user:s3cret@127.0.0.1:1", ApiKey("k"))
    with pytest.raises(ConfigError, match="file or an environment variable"):
        PowerDnsApi("http://127.0.0.1:1", "inline-key")  # type: ignore[arg-type]


# --- servers that do not answer -------------------------------------------------------------------


def test_stopped_server_is_unreachable_within_the_timeout(spare_pdns: PowerDnsServer) -> None:
    key = load_api_key(file=spare_pdns.api_key_file)
    api = PowerDnsApi(spare_pdns.api_url, key, timeout=1)
    assert api.read(ZONE, "www.example.test.", "A") == ["192.0.2.10"]
    spare_pdns.stop()
    start = time.monotonic()
    with pytest.raises(DNSUnreachableError, match="refused the connection") as err:
        api.probe_key(ZONE)
    assert err.value.hint is not None and "api=yes" in err.value.hint
    secret_free(err.value, key.secret)
    with pytest.raises(DNSUnreachableError, match="refused"):
        api.read(ZONE, "www.example.test.", "A")
    with pytest.raises(DNSUnreachableError, match="refused") as err:
        api.apply(ZONE, [RecordChange("www.example.test.", "A", 60, ["192.0.2.10"], ["192.0.2.9"])])
    secret_free(err.value, key.secret)
    assert time.monotonic() - start < 5  # refused at once; 3 tries with backoff each


def test_nothing_listening_is_unreachable() -> None:
    api = PowerDnsApi(f"http://127.0.0.1:{free_port()}", ApiKey("k"), timeout=1)
    with pytest.raises(DNSUnreachableError, match="refused"):
        api.probe_key(ZONE)


def test_paused_server_is_a_bounded_error(spare_pdns: PowerDnsServer) -> None:
    key = load_api_key(file=spare_pdns.api_key_file)
    api = PowerDnsApi(spare_pdns.api_url, key, timeout=0.5)
    spare_pdns.pause()
    wait_stopped(spare_pdns)
    try:
        for op in (lambda: api.probe_key(ZONE), lambda: api.read(ZONE, "www.example.test.", "A"),
                   lambda: api.apply(ZONE, [RecordChange("www.example.test.", "A", 60,
                                                         ["192.0.2.10"], ["192.0.2.9"])])):
            start = time.monotonic()
            with pytest.raises(DNSUnreachableError, match=r"did not answer .*no answer within 0\.5s") as err:
                op()
            # the kernel accepts the connection, the server says nothing: one timeout of 0.5 s (no
            # retry of a request the server may have received); generous slack for a loaded machine
            assert time.monotonic() - start < 3
            secret_free(err.value, key.secret)
    finally:
        spare_pdns.resume()
    assert api.read(ZONE, "www.example.test.", "A") == ["192.0.2.10"]  # nothing was changed


def test_silent_port_is_a_bounded_error(silent_port: int) -> None:
    api = PowerDnsApi(f"http://127.0.0.1:{silent_port}", ApiKey("k"), timeout=0.3)
    start = time.monotonic()
    with pytest.raises(DNSUnreachableError, match=r"no answer within 0\.3s"):
        api.probe_key(ZONE)
    assert time.monotonic() - start < 3


# --- a PATCH whose answer is lost ----------------------------------------------------------------


class LossyHttpRelay:
    """A TCP relay in front of the API: requests pass; the answer to the first ``drop_patches``
    PATCH requests is swallowed (the PATCH reaches the server, the client never hears back)."""

    def __init__(self, upstream: int, drop_patches: int) -> None:
        self.upstream = upstream
        self.drop_patches = drop_patches
        self.patches = 0
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        up = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
        request = b""
        try:
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(65536)
                if not chunk:
                    raise ConnectionResetError
                request += chunk
            head, _, body = request.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(body) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    raise ConnectionResetError
                body += chunk
            up.sendall(head + b"\r\n\r\n" + body)
            reply = b""
            while chunk := up.recv(65536):
                reply += chunk
        except OSError:
            conn.close()
            return
        finally:
            up.close()
        if request.startswith(b"PATCH"):
            self.patches += 1
            if self.drop_patches > 0:
                self.drop_patches -= 1
                self.held.append(conn)  # open and silent: the client times out
                return
        with conn:
            conn.sendall(reply)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        for s in [self.listener, *self.held]:
            s.close()


@pytest.fixture
def lossy_relay(pdns: PowerDnsServer) -> Iterator[LossyHttpRelay]:
    relay = LossyHttpRelay(pdns.api_port, drop_patches=1)
    try:
        yield relay
    finally:
        relay.close()


def test_patch_whose_answer_was_lost_is_confirmed_not_repeated(
        lossy_relay: LossyHttpRelay, pdns: PowerDnsServer, api: PowerDnsApi, dns_srv: tuple[str, int]) -> None:
    api.apply(ZONE, [RecordChange("lost.example.test.", "A", 60, [], ["192.0.2.30"])])
    before = serial(dns_srv)
    via_relay = PowerDnsApi(f"http://127.0.0.1:{lossy_relay.port}", load_api_key(file=pdns.api_key_file),
                            timeout=0.5)
    change = RecordChange("lost.example.test.", "A", 60, old=["192.0.2.30"], new=["198.51.100.30"])
    assert via_relay.apply(ZONE, [change]) == ["lost.example.test."]
    assert rfc2136.query(dns_srv, "lost.example.test.", "A") == ["198.51.100.30"]
    assert serial(dns_srv) == before + 1
    assert lossy_relay.patches == 1  # one PATCH sent


def test_lost_patch_answer_without_the_change_visible_says_it_may_have_been_applied(
        lossy_relay: LossyHttpRelay, pdns: PowerDnsServer, api: PowerDnsApi) -> None:
    """The PATCH reaches the server, its answer is lost, and an operator's change replaces ours
    before we look again: we cannot tell, and say so instead of sending the PATCH again."""
    api.apply(ZONE, [RecordChange("lost2.example.test.", "A", 60, [], ["192.0.2.31"])])
    via_relay = PowerDnsApi(f"http://127.0.0.1:{lossy_relay.port}", load_api_key(file=pdns.api_key_file),
                            timeout=0.5)
    real_once = via_relay._once

    def once_then_someone_writes(method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        try:
            return real_once(method, path, body)
        finally:
            if method == "PATCH":
                pdns.set_records(ZONE, "lost2.example.test.", "A", ["203.0.113.31"])

    via_relay._once = once_then_someone_writes  # type: ignore[method-assign]
    with pytest.raises(DNSUnreachableError, match="may or may not have been applied"):
        via_relay.apply(ZONE, [RecordChange("lost2.example.test.", "A", 60, ["192.0.2.31"], ["198.51.100.31"])])
    assert lossy_relay.patches == 1
    assert api.read(ZONE, "lost2.example.test.", "A") == ["203.0.113.31"]
