"""SSHPool against a real OpenSSH sshd on 127.0.0.1."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from drctl.drivers.ssh import SSHPool, command_text
from drctl.errors import HostKeyError, HostUnreachableError, SSHAuthError, SSHError
from drctl.lab.servers import SshServer, free_port, ssh_keygen
from drctl.model.inventory import Host
from tests.drivers.conftest import accepted_logins, host_for, wait_stopped

pytestmark = pytest.mark.servers

NASTY = [
    "two words",
    "it's",
    'say "hi"',
    "line1\nline2",
    "$(touch {canary})",
    "`touch {canary}`",
    "; touch {canary}",
    "&& touch {canary} ||",
    "| touch {canary}",
    "> {canary}",
    "*",
    "$HOME ${{PATH}}",
    "-n",
    "back\\slash",
    "",
    "tab\there",
    "ünïcødé ✓",
    "#not a comment",
    "~",
]


def test_nasty_arguments_arrive_verbatim(pool: SSHPool, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    args = [a.format(canary=canary) for a in NASTY]
    res = pool.run("app", ["printf", "%s\\0", *args])
    assert res.rc == 0, res.stderr
    assert res.stdout.split(b"\0")[:-1] == [a.encode() for a in args]
    assert not canary.exists(), "an argument was interpreted by the remote shell"


def test_command_text_quotes_and_rejects_non_argv() -> None:
    assert command_text(["echo", "a b"]) == "echo 'a b'"
    with pytest.raises(SSHError):
        command_text("echo hi")  # a string is not an argv
    with pytest.raises(SSHError):
        command_text([])
    with pytest.raises(SSHError):
        command_text(["printf", "a\0b"])


def test_stdin_stdout_stderr_and_exit_status(pool: SSHPool) -> None:
    res = pool.run("app", ["sh", "-c", "cat; echo oops >&2; exit 3"], stdin=b"payload\n")
    assert (res.rc, res.stdout, res.stderr) == (3, b"payload\n", b"oops\n")
    assert not res.ok


def test_large_stdin_while_output_flows(pool: SSHPool) -> None:
    data = bytes(range(256)) * 16384  # 4 MiB, larger than the SSH window
    res = pool.run("app", ["cat"], stdin=data, timeout=60)
    assert res.rc == 0
    assert hashlib.sha256(res.stdout).digest() == hashlib.sha256(data).digest()


def test_one_connection_reused_by_many_commands(pool: SSHPool, sshd: SshServer) -> None:
    before = accepted_logins(sshd)
    pool.reachable("app")
    transport = pool.transport_id("app")
    for i in range(10):
        assert pool.run("app", ["echo", str(i)]).stdout == f"{i}\n".encode()
    # more at once than sshd's default MaxSessions (10): the pool queues them on one connection
    with ThreadPoolExecutor(24) as ex:
        outs = list(ex.map(lambda i: pool.run("app", ["sh", "-c", f"sleep 0.2; echo {i}"]).stdout, range(32)))
    assert outs == [f"{i}\n".encode() for i in range(32)]
    assert pool.transport_id("app") == transport
    assert accepted_logins(sshd) - before == 1


def test_parallel_first_use_opens_one_connection(pool: SSHPool, sshd: SshServer) -> None:
    before = accepted_logins(sshd)
    barrier = threading.Barrier(6)

    def go(_: int) -> int:
        barrier.wait(10)
        return pool.run("app", ["true"]).rc

    with ThreadPoolExecutor(6) as ex:
        assert list(ex.map(go, range(6))) == [0] * 6
    assert accepted_logins(sshd) - before == 1


def test_unknown_host_key_is_refused(sshd: SshServer, make_pool: Callable[..., SSHPool], tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("# nothing known yet\n")
    pool = make_pool({"app": host_for(sshd, known_hosts=empty)})
    with pytest.raises(HostKeyError) as err:
        pool.run("app", ["true"])
    text = str(err.value)
    assert "unknown" in text and "CHANGED" not in text
    assert f"[127.0.0.1]:{sshd.port}" in text and "SHA256:" in text
    assert err.value.hint and "known_hosts" in err.value.hint


def test_changed_host_key_is_refused_with_changed_message(
        sshd: SshServer, make_pool: Callable[..., SSHPool], tmp_path: Path) -> None:
    other = ssh_keygen(tmp_path / "other_host_key")
    kind, blob = Path(str(other) + ".pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {kind} {blob}\n")
    pool = make_pool({"app": host_for(sshd, known_hosts=known)})
    with pytest.raises(HostKeyError) as err:
        pool.reachable("app")
    text = str(err.value)
    assert "HOST KEY CHANGED" in text and "man-in-the-middle" in text
    assert not pool.connected("app")


def test_user_known_hosts_is_used_when_the_host_has_none(
        sshd: SshServer, make_pool: Callable[..., SSHPool]) -> None:
    pool = make_pool({"app": host_for(sshd, known_hosts=None)}, user_known_hosts=sshd.known_hosts)
    assert pool.run("app", ["true"]).rc == 0


def test_missing_known_hosts_file_is_a_clear_error(
        sshd: SshServer, make_pool: Callable[..., SSHPool], tmp_path: Path) -> None:
    pool = make_pool({"app": host_for(sshd, known_hosts=tmp_path / "nope")})
    with pytest.raises(HostKeyError, match="does not exist"):
        pool.reachable("app")


def test_wrong_client_key_is_an_auth_error(
        sshd: SshServer, make_pool: Callable[..., SSHPool], tmp_path: Path) -> None:
    stranger = ssh_keygen(tmp_path / "stranger")
    pool = make_pool({"app": host_for(sshd, key=stranger)})
    with pytest.raises(SSHAuthError, match="authentication failed"):
        pool.reachable("app")


def test_black_holed_host_fails_within_its_connect_timeout(
        silent_port: int, sshd: SshServer, make_pool: Callable[..., SSHPool]) -> None:
    pool = make_pool({"hole": host_for(sshd, port=silent_port, connect_timeout=0.5)})
    start = time.monotonic()
    with pytest.raises(HostUnreachableError, match="no SSH banner"):
        pool.reachable("hole")
    # bounded by the host's connect_timeout (plus slack for a loaded machine), not paramiko's 15 s
    assert time.monotonic() - start < 5


def test_refused_port_is_unreachable(sshd: SshServer, make_pool: Callable[..., SSHPool]) -> None:
    pool = make_pool({"down": host_for(sshd, port=free_port(), connect_timeout=1)})
    with pytest.raises(HostUnreachableError, match="refused") as err:
        pool.run("down", ["true"])
    assert "down" in str(err.value)


def test_unknown_inventory_host(pool: SSHPool) -> None:
    with pytest.raises(SSHError, match="unknown host 'nope'"):
        pool.run("nope", ["true"])


def test_command_timeout_names_host_and_command_and_pool_survives(pool: SSHPool) -> None:
    with pytest.raises(SSHError) as err:
        pool.run("app", ["sleep", "2"], timeout=0.3)
    text = str(err.value)
    assert "app" in text and "`sleep 2`" in text and "did not finish within 0.3s" in text
    assert pool.run("app", ["echo", "still here"]).stdout == b"still here\n"


def test_stream_large_output_incrementally(pool: SSHPool) -> None:
    n = 1_500_000  # about 11 MB of text
    expected = hashlib.sha256("".join(f"{i}\n" for i in range(1, n + 1)).encode()).hexdigest()
    digest = hashlib.sha256()
    lines = 0
    with pool.stream("app", ["seq", "1", str(n)], timeout=120) as out:
        for line in out:
            digest.update(line)
            lines += 1
    assert lines == n
    assert digest.hexdigest() == expected


def test_stream_raises_on_non_zero_exit_with_stderr(pool: SSHPool) -> None:
    with pytest.raises(SSHError, match="status 4: boom"):
        with pool.stream("app", ["sh", "-c", "echo partial; echo boom >&2; exit 4"]) as out:
            assert out.read() == b"partial\n"


def test_stream_left_early_by_an_exception_closes_the_channel(pool: SSHPool) -> None:
    with pytest.raises(KeyError):
        with pool.stream("app", ["yes"]) as out:
            out.read(10)
            raise KeyError("consumer gave up")
    assert pool.run("app", ["true"]).rc == 0


def test_stream_timeout_is_an_error_not_a_short_read(pool: SSHPool) -> None:
    with pytest.raises(SSHError, match="did not finish"):
        with pool.stream("app", ["sh", "-c", "echo start; sleep 2; echo end"], timeout=0.5) as out:
            out.read()


def test_dead_pooled_connection_is_reopened(tmp_path: Path, make_pool: Callable[..., SSHPool]) -> None:
    server = SshServer(tmp_path / "sshd")
    server.start()
    try:
        pool = make_pool({"app": host_for(server)})
        assert pool.run("app", ["true"]).rc == 0
        server.stop()
        server.start()  # same port and host key
        assert pool.run("app", ["echo", "again"]).stdout == b"again\n"
    finally:
        server.stop()


def test_ssh_config_supplies_hostname_port_user_and_key(
        sshd: SshServer, make_pool: Callable[..., SSHPool], tmp_path: Path) -> None:
    config = tmp_path / "ssh_config"
    config.write_text(f"Host app-alias\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User {sshd.user}\n"
                      f"  IdentityFile {sshd.client_key}\n  ConnectTimeout 3\n")
    host = Host.model_validate({"address": "app-alias", "known_hosts": sshd.known_hosts})
    pool = make_pool({"app": host}, ssh_config=config)
    assert pool.run("app", ["echo", "via config"]).stdout == b"via config\n"


def test_inventory_settings_win_over_ssh_config(
        sshd: SshServer, make_pool: Callable[..., SSHPool], tmp_path: Path) -> None:
    config = tmp_path / "ssh_config"
    config.write_text(f"Host app-alias\n  HostName 127.0.0.1\n  Port {sshd.port}\n")
    closed = free_port()
    host = Host.model_validate({"address": "app-alias", "port": closed, "key": sshd.client_key,
                                "known_hosts": sshd.known_hosts})
    pool = make_pool({"app": host}, ssh_config=config)
    with pytest.raises(HostUnreachableError, match=f":{closed}"):
        pool.reachable("app")


def test_paused_sshd_fails_within_connect_timeout(tmp_path: Path, make_pool: Callable[..., SSHPool]) -> None:
    server = SshServer(tmp_path / "sshd")
    server.start()
    try:
        server.pause()  # SIGSTOP: the kernel still accepts connections, sshd says nothing
        wait_stopped(server)
        pool = make_pool({"app": host_for(server, connect_timeout=0.5)})
        start = time.monotonic()
        with pytest.raises(HostUnreachableError, match="no SSH banner"):
            pool.reachable("app")
        assert time.monotonic() - start < 5
    finally:
        server.stop()


@pytest.fixture
def banner_then_silence() -> Iterator[int]:
    """A port that sends an SSH banner, then never takes part in the key exchange."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(10)
    held: list[socket.socket] = []

    def serve() -> None:
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        conn.sendall(b"SSH-2.0-OpenSSH_9.2p1 stalled\r\n")
        held.append(conn)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        srv.close()
        t.join(10)
        for c in held:
            c.close()


def test_stalled_key_exchange_fails_within_connect_timeout(
        banner_then_silence: int, sshd: SshServer, make_pool: Callable[..., SSHPool]) -> None:
    pool = make_pool({"stall": host_for(sshd, port=banner_then_silence, connect_timeout=0.5)})
    start = time.monotonic()
    with pytest.raises(HostUnreachableError, match="did not complete"):
        pool.reachable("stall")
    assert time.monotonic() - start < 5


def test_a_host_that_did_not_answer_is_not_waited_for_again(
        silent_port: int, sshd: SshServer, make_pool: Callable[..., SSHPool]) -> None:
    pool = make_pool({"hole": host_for(sshd, port=silent_port, connect_timeout=0.5)})
    with pytest.raises(HostUnreachableError, match="no SSH banner"):
        pool.reachable("hole")
    # every later step of the run learns it at once, instead of each paying the timeout again
    with pytest.raises(HostUnreachableError, match="not retried"):
        pool.run("hole", ["true"])
