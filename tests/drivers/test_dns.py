"""RFC 2136 driver against a real BIND named on 127.0.0.1 (zone example.test, TSIG-signed UPDATEs)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from drctl.drivers import dns_rfc2136 as rfc2136
from drctl.drivers.dns_rfc2136 import RecordChange, TsigKey
from drctl.errors import ConfigError, DNSConflictError, DNSError, DNSUnreachableError, TSIGError
from drctl.lab.servers import Daemon, NamedServer, free_port, write_tsig_key
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
"""
BAD_SECRET = "c2VjcmV0LXRoYXQtdGhlLXNlcnZlci1kb2VzLW5vdC1rbm93IQ=="


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tsig_key(tmp_path_factory.mktemp("keys") / "tsig.key", "drctl-test")


@pytest.fixture(scope="module")
def named(tmp_path_factory: pytest.TempPathFactory, key_file: Path,
          module_daemons: Callable[[Daemon], Daemon]) -> NamedServer:
    server = NamedServer(tmp_path_factory.mktemp("ns1"), {ZONE: ZONE_TEXT}, key_file, name="ns1")
    module_daemons(server)
    return server


@pytest.fixture
def srv(named: NamedServer) -> tuple[str, int]:
    return ("127.0.0.1", named.port)


@pytest.fixture
def key(key_file: Path) -> TsigKey:
    return rfc2136.load_tsig_key(key_file)


@pytest.fixture
def spare_named(tmp_path: Path, key_file: Path) -> Iterator[NamedServer]:
    """A named of this test's own, to stop or pause."""
    server = NamedServer(tmp_path / "ns", {ZONE: ZONE_TEXT}, key_file, name="ns-spare")
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --- keys ------------------------------------------------------------------------------------------


def test_load_key_from_tsig_keygen_file(key_file: Path) -> None:
    k = rfc2136.load_tsig_key(key_file)
    assert (k.name, k.algorithm) == ("drctl-test", "hmac-sha256")
    assert k.secret in key_file.read_text()
    assert k.secret not in repr(k) and k.secret not in str(k)


def test_load_key_from_env_in_both_forms(key_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    k = rfc2136.load_tsig_key(key_file)
    monkeypatch.setenv("DRCTL_TEST_TSIG", key_file.read_text())
    assert rfc2136.load_tsig_key(env="DRCTL_TEST_TSIG") == k
    monkeypatch.setenv("DRCTL_TEST_TSIG", f"{k.name}:{k.algorithm}:{k.secret}")
    assert rfc2136.load_tsig_key(env="DRCTL_TEST_TSIG") == k


def test_key_file_with_several_keys_needs_a_name(tmp_path: Path) -> None:
    f = tmp_path / "keys"
    f.write_text('key "a" { algorithm hmac-sha256; secret "YWFhYQ=="; };\n'
                 '# a comment\nkey "b" {\n\talgorithm hmac-sha512;\n\tsecret "YmJiYg==";\n};\n')
    with pytest.raises(ConfigError, match="several TSIG keys"):
        rfc2136.load_tsig_key(f)
    assert rfc2136.load_tsig_key(f, name="b").algorithm == "hmac-sha512"
    with pytest.raises(ConfigError, match="no TSIG key named 'c'"):
        rfc2136.load_tsig_key(f, name="c")


def test_secret_containing_comment_markers_is_kept_whole(tmp_path: Path) -> None:
    # base64 secrets contain "/" and so, now and then, "//": not a comment inside quotes
    secret = "AB//cd+EFgh/ijk="
    f = tmp_path / "k.key"
    f.write_text(f'// generated\nkey "k" {{\n\talgorithm hmac-sha256; # the default\n\tsecret "{secret}";\n}};\n')
    assert rfc2136.load_tsig_key(f).secret == secret


@pytest.mark.parametrize("text, message", [
    ("nothing here", "no `key"),
    ('key "k" { algorithm hmac-sha256; };', "no `secret"),
    ('key "k" { algorithm hmac-foo; secret "YWFhYQ=="; };', "unsupported algorithm"),
    ('key "k" { algorithm hmac-sha256; secret "not base64!"; };', "not valid base64"),
])
def test_bad_key_files_are_config_errors(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "bad.key"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        rfc2136.load_tsig_key(f)
    assert "not base64!" not in str(err.value)


def test_missing_key_sources_are_config_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="does-not-exist"):
        rfc2136.load_tsig_key(tmp_path / "does-not-exist")
    monkeypatch.delenv("DRCTL_UNSET_VAR", raising=False)
    with pytest.raises(ConfigError, match="DRCTL_UNSET_VAR is not set"):
        rfc2136.load_tsig_key(env="DRCTL_UNSET_VAR")
    monkeypatch.setenv("DRCTL_BAD_VAR", "only:two")
    with pytest.raises(ConfigError, match="name:algorithm:secret"):
        rfc2136.load_tsig_key(env="DRCTL_BAD_VAR")
    with pytest.raises(ConfigError):
        rfc2136.load_tsig_key()


# --- queries ---------------------------------------------------------------------------------------


def test_query_returns_sorted_values_and_empty_for_nxdomain_and_nodata(srv: tuple[str, int]) -> None:
    assert rfc2136.query(srv, "www.example.test.", "A") == ["192.0.2.10"]
    assert rfc2136.query(srv, "multi.example.test", "A") == ["192.0.2.1", "192.0.2.2"]
    assert rfc2136.query(srv, "note.example.test.", "TXT") == ['"hello world"']
    assert rfc2136.query(srv, "missing.example.test.", "A") == []  # NXDOMAIN
    assert rfc2136.query(srv, "www.example.test.", "AAAA") == []  # NODATA
    assert rfc2136.soa_serial(srv, ZONE) >= 1


def test_query_outside_served_zones_is_a_dns_error(srv: tuple[str, int]) -> None:
    with pytest.raises(DNSError, match="REFUSED"):
        rfc2136.query(srv, "www.elsewhere.test.", "A")


# --- updates ---------------------------------------------------------------------------------------


def test_update_then_idempotent_rerun(srv: tuple[str, int], key: TsigKey) -> None:
    change = RecordChange("app1.example.test.", "A", 60, old=[], new=["192.0.2.50"])
    serial = rfc2136.soa_serial(srv, ZONE)
    assert rfc2136.update_zone(srv, ZONE, key, [change]) == ["app1.example.test."]
    assert rfc2136.query(srv, "app1.example.test.", "A") == ["192.0.2.50"]
    assert rfc2136.soa_serial(srv, ZONE) == serial + 1
    # the same change again: nothing to do, nothing sent
    assert rfc2136.update_zone(srv, ZONE, key, [change]) == []
    assert rfc2136.soa_serial(srv, ZONE) == serial + 1
    # fail over and back
    flip = RecordChange("app1.example.test.", "A", 60, old=["192.0.2.50"], new=["198.51.100.50"])
    assert rfc2136.update_zone(srv, ZONE, key, [flip]) == ["app1.example.test."]
    assert rfc2136.query(srv, "app1.example.test.", "A") == ["198.51.100.50"]
    back = RecordChange("app1.example.test.", "A", 60, old=["198.51.100.50"], new=["192.0.2.50"])
    assert rfc2136.update_zone(srv, ZONE, key, [back]) == ["app1.example.test."]
    assert rfc2136.query(srv, "app1.example.test.", "A") == ["192.0.2.50"]


def test_several_records_in_one_atomic_update(srv: tuple[str, int], key: TsigKey) -> None:
    rfc2136.update_zone(srv, ZONE, key, [
        RecordChange("app2.example.test.", "A", 60, old=[], new=["192.0.2.60", "192.0.2.61"]),
        RecordChange("app2-txt.example.test.", "TXT", 60, old=[], new=["site=dc1"]),
    ])
    serial = rfc2136.soa_serial(srv, ZONE)
    changed = rfc2136.update_zone(srv, ZONE, key, [
        RecordChange("app2.example.test.", "A", 60, old=["192.0.2.61", "192.0.2.60"], new=["198.51.100.60"]),
        RecordChange("app2-txt.example.test.", "TXT", 60, old=['"site=dc1"'], new=["site=dc2"]),
    ])
    assert changed == ["app2.example.test.", "app2-txt.example.test."]
    assert rfc2136.soa_serial(srv, ZONE) == serial + 1  # one UPDATE
    assert rfc2136.query(srv, "app2.example.test.", "A") == ["198.51.100.60"]
    assert rfc2136.query(srv, "app2-txt.example.test.", "TXT") == ['"site=dc2"']


def test_ttl_only_change_is_applied(srv: tuple[str, int], key: TsigKey) -> None:
    rfc2136.update_zone(srv, ZONE, key, [RecordChange("ttl.example.test.", "A", 60, [], ["192.0.2.70"])])
    assert rfc2136.update_zone(srv, ZONE, key, [RecordChange("ttl.example.test.", "A", 300, [], ["192.0.2.70"])]) \
        == ["ttl.example.test."]
    assert rfc2136.update_zone(srv, ZONE, key, [RecordChange("ttl.example.test.", "A", 300, [], ["192.0.2.70"])]) == []


def test_delete_a_record(srv: tuple[str, int], key: TsigKey) -> None:
    rfc2136.update_zone(srv, ZONE, key, [RecordChange("gone.example.test.", "CNAME", 60, [], ["www.example.test"])])
    assert rfc2136.query(srv, "gone.example.test.", "CNAME") == ["www.example.test."]
    rfc2136.update_zone(srv, ZONE, key, [RecordChange("gone.example.test.", "CNAME", 60, ["www.example.test."], [])])
    assert rfc2136.query(srv, "gone.example.test.", "CNAME") == []


def test_record_changed_by_someone_else_is_not_overwritten(srv: tuple[str, int], key: TsigKey) -> None:
    rfc2136.update_zone(srv, ZONE, key, [
        RecordChange("app3.example.test.", "A", 60, [], ["192.0.2.80"]),
        RecordChange("app3b.example.test.", "A", 60, [], ["192.0.2.81"]),
    ])
    # an operator moves app3 by hand
    rfc2136.update_zone(srv, ZONE, key, [RecordChange("app3.example.test.", "A", 60, ["192.0.2.80"], ["203.0.113.9"])])
    serial = rfc2136.soa_serial(srv, ZONE)
    with pytest.raises(DNSConflictError) as err:
        rfc2136.update_zone(srv, ZONE, key, [
            RecordChange("app3b.example.test.", "A", 60, ["192.0.2.81"], ["198.51.100.81"]),
            RecordChange("app3.example.test.", "A", 60, ["192.0.2.80"], ["198.51.100.80"]),
        ])
    text = str(err.value)
    assert "app3.example.test." in text and "192.0.2.80" in text and "203.0.113.9" in text
    assert "nothing was sent" in text
    assert rfc2136.query(srv, "app3.example.test.", "A") == ["203.0.113.9"]
    assert rfc2136.query(srv, "app3b.example.test.", "A") == ["192.0.2.81"]  # all or nothing
    assert rfc2136.soa_serial(srv, ZONE) == serial


def test_prerequisites_make_the_server_refuse_a_stale_update(srv: tuple[str, int], key: TsigKey) -> None:
    """What guards the window between our read and our UPDATE: the server checks the values read."""
    from dns import query as dq
    from dns import rcode

    rfc2136.update_zone(srv, ZONE, key, [RecordChange("race.example.test.", "A", 60, [], ["192.0.2.90"])])
    msg = rfc2136._update_message(ZONE, key)
    msg.present(rfc2136._name("race.example.test."), *rfc2136._rdatas("race", "A", ["192.0.2.99"]))  # stale read
    msg.replace(rfc2136._name("race.example.test."), 60, *rfc2136._rdatas("race", "A", ["198.51.100.90"]))
    answer = dq.tcp(msg, srv[0], port=srv[1], timeout=5)
    assert rcode.to_text(answer.rcode()) == "NXRRSET"
    with pytest.raises(DNSConflictError, match="NXRRSET"):
        rfc2136._check_update_answer(answer, srv, ZONE, key, "changed meanwhile")
    assert rfc2136.query(srv, "race.example.test.", "A") == ["192.0.2.90"]


def test_wrong_secret_is_a_tsig_error_and_changes_nothing(srv: tuple[str, int], key: TsigKey) -> None:
    bad = TsigKey(key.name, key.algorithm, BAD_SECRET)
    serial = rfc2136.soa_serial(srv, ZONE)
    with pytest.raises(TSIGError) as err:
        rfc2136.update_zone(srv, ZONE, bad,
                            [RecordChange("www.example.test.", "A", 60, ["192.0.2.10"], ["192.0.2.11"])])
    assert "rejected our TSIG key drctl-test: BADSIG" in str(err.value)
    assert BAD_SECRET not in str(err.value)
    assert rfc2136.query(srv, "www.example.test.", "A") == ["192.0.2.10"]
    assert rfc2136.soa_serial(srv, ZONE) == serial


def test_probe_update_key(srv: tuple[str, int], key: TsigKey) -> None:
    serial = rfc2136.soa_serial(srv, ZONE)
    rfc2136.probe_update_key(srv, ZONE, key)
    assert rfc2136.soa_serial(srv, ZONE) == serial
    with pytest.raises(TSIGError, match="BADSIG"):
        rfc2136.probe_update_key(srv, ZONE, TsigKey(key.name, key.algorithm, BAD_SECRET))
    with pytest.raises(TSIGError, match="BADKEY"):
        rfc2136.probe_update_key(srv, ZONE, TsigKey("unknown-key", key.algorithm, key.secret))
    with pytest.raises(DNSError, match="not authoritative for zone elsewhere.test"):
        rfc2136.probe_update_key(srv, "elsewhere.test", key)


def test_bad_values_and_names_are_config_errors(srv: tuple[str, int], key: TsigKey) -> None:
    with pytest.raises(ConfigError, match="invalid value"):
        rfc2136.update_zone(srv, ZONE, key, [RecordChange("x.example.test.", "A", 60, [], ["10.0.0.256"])])
    with pytest.raises(ConfigError, match="not inside zone"):
        rfc2136.update_zone(srv, ZONE, key, [RecordChange("x.other.test.", "A", 60, [], ["10.0.0.1"])])


# --- servers that do not answer -------------------------------------------------------------------


def test_stopped_server_is_unreachable(spare_named: NamedServer, key: TsigKey) -> None:
    srv = ("127.0.0.1", spare_named.port)
    assert rfc2136.query(srv, "www.example.test.", "A") == ["192.0.2.10"]
    spare_named.stop()
    with pytest.raises(DNSUnreachableError, match="refused"):
        rfc2136.query(srv, "www.example.test.", "A", timeout=1)
    with pytest.raises(DNSUnreachableError):
        rfc2136.update_zone(srv, ZONE, key, [RecordChange("www.example.test.", "A", 60, ["192.0.2.10"], ["192.0.2.9"])])
    with pytest.raises(DNSUnreachableError):
        rfc2136.probe_update_key(srv, ZONE, key, timeout=1)


def test_nothing_listening_is_unreachable() -> None:
    with pytest.raises(DNSUnreachableError, match="refused"):
        rfc2136.query(("127.0.0.1", free_port()), "www.example.test.", "A", timeout=1)


def test_paused_server_times_out_bounded(spare_named: NamedServer, key: TsigKey) -> None:
    srv = ("127.0.0.1", spare_named.port)
    spare_named.pause()
    wait_stopped(spare_named)
    try:
        start = time.monotonic()
        with pytest.raises(DNSUnreachableError, match="did not answer"):
            rfc2136.query(srv, "www.example.test.", "A", timeout=0.3)
        with pytest.raises(DNSUnreachableError):
            rfc2136.probe_update_key(srv, ZONE, key, timeout=0.3)
        # 3 tries of 0.3 s plus backoff, twice; generous slack for a loaded machine
        assert time.monotonic() - start < 10
    finally:
        spare_named.resume()


# --- an UPDATE whose answer is lost -------------------------------------------------------------


class LossyRelay:
    """A relay in front of a real named, on one port for UDP and TCP: UDP (our reads) passes both
    ways; on the first ``drop_replies`` TCP connections (our UPDATEs) the request reaches named but
    its answer is swallowed, as if the network lost it."""

    def __init__(self, upstream: int, drop_replies: int) -> None:
        self.upstream = upstream
        self.drop_replies = drop_replies
        self.tcp = socket.socket()
        self.tcp.bind(("127.0.0.1", 0))
        self.port = self.tcp.getsockname()[1]
        self.tcp.listen(8)
        self.tcp.settimeout(0.2)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", self.port))
        self.udp.settimeout(0.2)
        self.stopping = threading.Event()
        self.held: list[socket.socket] = []
        self.tcp_connections = 0
        self.threads = [threading.Thread(target=self._udp_loop, daemon=True),
                        threading.Thread(target=self._tcp_loop, daemon=True)]
        for t in self.threads:
            t.start()

    def _udp_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                data, client = self.udp.recvfrom(65535)
            except TimeoutError:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
                up.settimeout(2)
                up.sendto(data, ("127.0.0.1", self.upstream))
                try:
                    self.udp.sendto(up.recv(65535), client)
                except TimeoutError:
                    pass

    def _tcp_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.tcp.accept()
            except TimeoutError:
                continue
            conn.settimeout(2)
            self.tcp_connections += 1
            with socket.create_connection(("127.0.0.1", self.upstream), timeout=2) as up:
                try:
                    up.sendall(conn.recv(65535))
                    reply = up.recv(65535)
                except OSError:
                    conn.close()
                    continue
            if self.drop_replies > 0:
                self.drop_replies -= 1
                self.held.append(conn)  # keep it open and silent: the client times out
            else:
                with conn:
                    conn.sendall(reply)

    def close(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(5)
        for s in [self.tcp, self.udp, *self.held]:
            s.close()


@pytest.fixture
def lossy_relay(named: NamedServer) -> Iterator[LossyRelay]:
    relay = LossyRelay(named.port, drop_replies=1)
    try:
        yield relay
    finally:
        relay.close()


def test_update_whose_answer_was_lost_is_confirmed_not_repeated(
        lossy_relay: LossyRelay, named: NamedServer, key: TsigKey) -> None:
    direct = ("127.0.0.1", named.port)
    rfc2136.update_zone(direct, ZONE, key, [RecordChange("lost.example.test.", "A", 60, [], ["192.0.2.30"])])
    serial = rfc2136.soa_serial(direct, ZONE)
    via_relay = ("127.0.0.1", lossy_relay.port)
    change = RecordChange("lost.example.test.", "A", 60, old=["192.0.2.30"], new=["198.51.100.30"])
    # the UPDATE is applied but its answer never comes; the driver reads again, sees the new
    # value, and does not send the UPDATE a second time
    assert rfc2136.update_zone(via_relay, ZONE, key, [change], timeout=0.5) == ["lost.example.test."]
    assert rfc2136.query(direct, "lost.example.test.", "A") == ["198.51.100.30"]
    assert rfc2136.soa_serial(direct, ZONE) == serial + 1
    assert lossy_relay.tcp_connections == 1  # one UPDATE sent


def test_normalize_values_matches_what_query_returns(srv: tuple[str, int]) -> None:
    assert rfc2136.normalize_values("TXT", ["hello world"]) == rfc2136.query(srv, "note.example.test.", "TXT")
    assert rfc2136.normalize_values("A", ["192.0.2.2", "192.0.2.1"]) == rfc2136.query(srv, "multi.example.test.", "A")
    assert rfc2136.normalize_values("CNAME", ["www.example.test"]) == ["www.example.test."]
