"""SSH to the inventory's hosts (paramiko): one verified connection per host, opened lazily and
shared by every step of a run, with commands given as argv.

What this module guarantees:

* Host keys are always verified (a ``RejectPolicy``): against the Host's ``known_hosts`` file
  (relative to the inventory's directory), the user's ``~/.ssh/known_hosts`` (or the
  ``UserKnownHostsFile`` of ``~/.ssh/config``) and ``/etc/ssh/ssh_known_hosts``. An unknown key and
  a CHANGED key (possible man-in-the-middle) are told apart in the error.
* The TCP socket is opened here, with ``TCP_NODELAY`` (paramiko does not set it: each loopback
  round trip would stall ~40 ms) and the Host's ``connect_timeout`` as the budget for the TCP
  connect, the SSH banner and the key exchange together: a black-holed host fails in that time.
* ``~/.ssh/config`` is honoured for ``HostName``, ``Port``, ``User``, ``IdentityFile``,
  ``ConnectTimeout`` and ``UserKnownHostsFile`` (looked up by the Host's ``address``); what the
  inventory sets explicitly wins. The SSH agent is used unless ``use_agent=False``.
* ``argv`` is joined with ``shlex.join``: the remote shell sees each argument as one word.
* Every wait is bounded; a command past its timeout gets a best-effort ``KILL`` signal request, its
  channel is closed and ``SSHError`` names the host and the command.
* Connecting is retried (bounded, within the connect budget) on refused / timed-out connects;
  a command is never retried once sent. A pooled connection found dead is reopened once before
  a command is sent.

paramiko is imported inside the functions that connect, so importing this module is cheap.
paramiko's own logger ("paramiko") is silenced unless someone set its level (``--debug`` may set
it to DEBUG): it prints tracebacks for failures that our errors already explain.
"""

from __future__ import annotations

import contextlib
import getpass
import io
import logging
import select
import shlex
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn, cast

from drctl.drivers.retry import call_with_retry
from drctl.errors import HostKeyError, HostUnreachableError, SSHAuthError, SSHError
from drctl.model.inventory import Host

if TYPE_CHECKING:
    import paramiko

log = logging.getLogger("drctl.drivers.ssh")

DEFAULT_SSH_CONFIG = Path("~/.ssh/config")
DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts")
SYSTEM_KNOWN_HOSTS = Path("/etc/ssh/ssh_known_hosts")
KEEPALIVE_S = 30
_CHUNK = 65536
_STDERR_TAIL = 64 * 1024
_CMD_SHOWN = 200


#: channels open at once on one host's connection; sshd's MaxSessions defaults to 10
DEFAULT_MAX_SESSIONS = 8
#: after a host failed to answer, further connects within this many seconds fail at once
DOWN_MEMORY_S = 30.0

@dataclass(frozen=True)
class CommandResult:
    """What a remote command left: exit status (-1 when killed by a signal), stdout, stderr."""

    rc: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def text(self) -> str:
        return self.stdout.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class _Target:
    """A Host with ``~/.ssh/config`` applied: everything needed to connect."""

    name: str
    hostname: str
    port: int
    user: str
    key_files: tuple[Path, ...]
    known_hosts: tuple[Path, ...]
    connect_timeout: float
    proxy: str | None

    @property
    def label(self) -> str:
        host = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        return f"{self.name} ({self.user}@{host}:{self.port})"

    @property
    def host_key_name(self) -> str:
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"


def command_text(argv: Sequence[str]) -> str:
    """The remote shell command for ``argv``: every argument quoted (``shlex.join``)."""
    if isinstance(argv, str | bytes) or not argv:
        raise SSHError(f"a remote command must be a non-empty list of arguments, got {argv!r}")
    for a in argv:
        if not isinstance(a, str):
            raise SSHError(f"remote command arguments must be strings, got {a!r}")
        if "\0" in a:
            raise SSHError("a remote command argument cannot contain a NUL byte")
    return shlex.join(argv)


def _shown(cmd: str) -> str:
    return cmd if len(cmd) <= _CMD_SHOWN else cmd[:_CMD_SHOWN] + "..."


def _tail(data: bytes, limit: int = 2000) -> str:
    text = data.decode("utf-8", errors="replace").strip()
    return text if len(text) <= limit else "..." + text[-limit:]


class SSHPool:
    """One SSH connection per host, opened on first use and reused; safe to share between threads
    (each command runs on its own channel of the host's connection)."""

    def __init__(
        self,
        hosts: Mapping[str, Host],
        *,
        base_dir: Path | None = None,
        ssh_config: Path | None = DEFAULT_SSH_CONFIG,
        use_agent: bool = True,
        user_known_hosts: Path | None = DEFAULT_KNOWN_HOSTS,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
    ) -> None:
        """``hosts``: inventory host name -> Host. Relative ``key`` / ``known_hosts`` paths resolve
        against ``base_dir``. ``ssh_config`` (read when it exists) and ``user_known_hosts`` may be
        None to ignore the user's files (tests do, to stay independent of the machine)."""
        self._hosts = dict(hosts)
        self._base_dir = base_dir or Path(".")
        self._ssh_config_path = ssh_config.expanduser() if ssh_config is not None else None
        self._use_agent = use_agent
        self._user_known_hosts = user_known_hosts.expanduser() if user_known_hosts is not None else None
        self._lock = threading.Lock()
        self._host_locks: dict[str, threading.Lock] = {}
        self._clients: dict[str, paramiko.SSHClient] = {}
        self._targets: dict[str, _Target] = {}
        self._ssh_config: Any = None
        self._down: dict[str, tuple[float, HostUnreachableError]] = {}
        self._probe_locks: dict[str, threading.Lock] = {}
        self._declared_down: dict[str, str] = {}
        self._max_sessions = max_sessions
        self._sessions: dict[str, threading.BoundedSemaphore] = {}

    def __enter__(self) -> SSHPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- public API ---------------------------------------------------------------------------

    def run(self, host: str, argv: Sequence[str], *, stdin: bytes | None = None,
            timeout: float = 60.0) -> CommandResult:
        """Run ``argv`` on ``host``; wait at most ``timeout`` seconds for it to finish.

        Returns the exit status and the whole output (use ``stream`` for very large outputs).
        A non-zero exit status is returned, not raised. Raises ``SSHError`` (with the host and the
        command) on timeout or lost connection, and the connect errors of ``reachable``."""
        cmd = command_text(argv)
        deadline = time.monotonic() + timeout
        silence = self._target(host).connect_timeout
        with self._started(host, cmd, stdin, deadline) as (chan, expired):
            out, err = bytearray(), bytearray()
            while True:
                if chan.recv_ready():
                    out += chan.recv(_CHUNK)
                    continue
                if chan.recv_stderr_ready():
                    err += chan.recv_stderr(_CHUNK)
                    continue
                if chan.eof_received or chan.closed:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0 or expired.is_set():
                    break
                if not select.select([chan], [], [], min(remaining, silence))[0]:
                    self._check_alive(host, chan, cmd)
            rc = self._exit_status(host, cmd, chan, expired, deadline, timeout, bytes(err))
            return CommandResult(rc, bytes(out), bytes(err))

    @contextlib.contextmanager
    def stream(self, host: str, argv: Sequence[str], *, stdin: bytes | None = None,
               timeout: float = 600.0) -> Iterator[BinaryIO]:
        """Run ``argv`` on ``host`` and yield its stdout as a binary file to read incrementally.

        Leaving the block normally reads what is left, then raises ``SSHError`` (with the tail of
        stderr) if the command exited non-zero; ``timeout`` bounds the whole stream. Leaving it by
        an exception closes the channel at once."""
        cmd = command_text(argv)
        deadline = time.monotonic() + timeout
        with self._started(host, cmd, stdin, deadline) as (chan, expired):
            raw = _ChannelReader(chan, deadline, expired, self._describe(host), cmd, timeout,
                                 silence=self._target(host).connect_timeout,
                                 check_alive=lambda: self._check_alive(host, chan, cmd))
            reader = io.BufferedReader(raw, _CHUNK)
            yield reader
            while raw.readinto(bytearray(_CHUNK)):
                pass
            rc = self._exit_status(host, cmd, chan, expired, deadline, timeout, bytes(raw.stderr))
            if rc != 0:
                raise SSHError(
                    f"{self._describe(host)}: `{_shown(cmd)}` exited with status {rc}"
                    + (f": {_tail(bytes(raw.stderr))}" if raw.stderr else ""))

    def reachable(self, host: str) -> None:
        """Connect to ``host`` (or prove the pooled connection still answers).

        Raises ``HostUnreachableError`` (refused, timed out, no SSH banner), ``HostKeyError``
        (unknown or changed host key), ``SSHAuthError`` (key refused) or ``SSHError``."""
        target = self._target(host)
        client = self._client(host)
        transport = client.get_transport()
        try:
            if transport is None:
                raise OSError("no transport")
            transport.open_session(timeout=target.connect_timeout).close()
        except Exception:  # noqa: BLE001 (any failure means the connection is gone)
            self._drop(host, client)
            self._client(host)

    def declare_down(self, host: str, reason: str) -> None:
        """Never connect to ``host`` (the operator declared its site lost): every use fails at once
        with ``HostUnreachableError(reason)``."""
        with self._lock:
            self._declared_down[host] = reason

    def close(self) -> None:
        """Close every connection (the pool can be used again afterwards)."""
        with self._lock:
            clients = list(self._clients.items())
            self._clients.clear()
        for _name, client in clients:
            with contextlib.suppress(Exception):
                client.close()

    def connected(self, host: str) -> bool:
        """Whether a connection to ``host`` is open in the pool (does not connect)."""
        with self._lock:
            client = self._clients.get(host)
        transport = client.get_transport() if client is not None else None
        return transport is not None and transport.is_active()

    def transport_id(self, host: str) -> int | None:
        """Identity of the pooled connection to ``host`` (to observe reuse), or None."""
        with self._lock:
            client = self._clients.get(host)
        transport = client.get_transport() if client is not None else None
        return id(transport) if transport is not None else None

    # --- commands -----------------------------------------------------------------------------

    def _describe(self, host: str) -> str:
        try:
            return self._target(host).label
        except SSHError:
            return host

    @contextlib.contextmanager
    def _started(self, host: str, cmd: str, stdin: bytes | None,
                 deadline: float) -> Iterator[tuple[Any, threading.Event]]:
        """Open a channel, start ``cmd``, feed stdin; a watchdog closes the channel at the deadline.
        At most ``max_sessions`` channels are open on a host's connection at once (sshd refuses
        more than its MaxSessions, 10 by default); the others wait their turn."""
        with self._lock:
            slots = self._sessions.setdefault(host, threading.BoundedSemaphore(self._max_sessions))
        if not slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise SSHError(f"{self._describe(host)}: `{_shown(cmd)}` did not get a session within its timeout "
                           f"({self._max_sessions} commands already running on this host)")
        try:
            with self._channel(host, cmd, stdin, deadline) as started:
                yield started
        finally:
            slots.release()

    @contextlib.contextmanager
    def _channel(self, host: str, cmd: str, stdin: bytes | None,
                 deadline: float) -> Iterator[tuple[Any, threading.Event]]:
        chan = self._open_channel(host, deadline)
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            _send_signal(chan, "KILL")
            with contextlib.suppress(Exception):
                chan.close()

        watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), expire)
        watchdog.daemon = True
        watchdog.start()
        # paramiko waits for the server's reply to the exec request with no timeout of its own: a
        # host that stops answering right after the channel opened would hold us until the command's
        # deadline. After the connect budget, ask the server for a keepalive reply; none means gone.
        started, stalled = threading.Event(), threading.Event()
        budget = self._target(host).connect_timeout

        def check_start() -> None:
            transport = chan.get_transport()
            if started.is_set() or transport is None:
                return
            with self._probe_lock(host):
                answers = _transport_answers(transport, budget)
            if not answers and not started.is_set():
                stalled.set()
                with contextlib.suppress(Exception):
                    chan.close()

        start_watch = threading.Timer(budget, check_start)
        start_watch.daemon = True
        start_watch.start()
        feeder: threading.Thread | None = None
        try:
            try:
                chan.exec_command(cmd)
                started.set()
            except Exception as exc:  # noqa: BLE001 (paramiko raises SSHException, EOFError, OSError)
                started.set()
                if stalled.is_set():
                    with self._lock:
                        client = self._clients.get(host)
                    raise self._stopped_answering(
                        host, client, f"no reply to `{_shown(cmd)}` being started, nor to an SSH keepalive, "
                                      f"within {2 * budget:g}s") from None
                if expired.is_set():
                    raise SSHError(f"{self._describe(host)}: `{_shown(cmd)}` did not start within the "
                                   "command timeout (is the host overloaded?)") from None
                raise SSHError(f"{self._describe(host)}: could not start `{_shown(cmd)}`: "
                               f"{exc or type(exc).__name__}") from None
            if stdin:
                feeder = threading.Thread(target=_feed, args=(chan, stdin), daemon=True,
                                          name=f"ssh-stdin-{host}")
                feeder.start()
            else:
                with contextlib.suppress(Exception):
                    chan.shutdown_write()
            yield chan, expired
        finally:
            watchdog.cancel()
            start_watch.cancel()
            with contextlib.suppress(Exception):
                chan.close()
            if feeder is not None:
                feeder.join(1.0)

    def _exit_status(self, host: str, cmd: str, chan: Any, expired: threading.Event, deadline: float,
                     timeout: float, stderr: bytes) -> int:
        if not expired.is_set():
            chan.status_event.wait(max(0.0, deadline - time.monotonic()))
        if expired.is_set() or not chan.status_event.is_set():
            raise SSHError(
                f"{self._describe(host)}: `{_shown(cmd)}` did not finish within {timeout:g}s; "
                "the command was sent a KILL signal and its channel closed",
                hint="raise the step's timeout if the command is legitimately slow")
        transport = chan.get_transport()
        if chan.exit_status == -1 and (transport is None or not transport.is_active()):
            raise SSHError(f"{self._describe(host)}: connection lost while running `{_shown(cmd)}`"
                           + (f": {_tail(stderr)}" if stderr else "")
                           + "; the command may or may not have completed")
        return int(chan.exit_status)

    def _open_channel(self, host: str, deadline: float) -> Any:
        """A session channel on the host's connection; a dead pooled connection is reopened once
        (nothing has been sent yet, so this is safe)."""
        import paramiko

        target = self._target(host)
        attempt, refused = 0, 0
        while True:
            attempt += 1
            client = self._client(host)
            transport = client.get_transport()
            wait = max(0.1, min(target.connect_timeout, deadline - time.monotonic()))
            try:
                if transport is None or not transport.is_active():
                    raise paramiko.SSHException("SSH session not active")
                return transport.open_session(timeout=wait)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                if (transport is not None and transport.is_active() and not isinstance(exc, paramiko.ChannelException)
                        and str(exc).startswith("Timeout opening channel")):
                    # the TCP connection is up but the channel did not open: a frozen sshd, a host that
                    # stopped mid-run, or only a very busy one. One keepalive within the same budget
                    # tells them apart: a busy host answers it and is asked again within the deadline
                    with self._probe_lock(host):
                        busy = _transport_answers(transport, target.connect_timeout)
                    if busy and time.monotonic() < deadline:
                        attempt -= 1
                        continue
                    why = f"no answer to a channel open within {wait:g}s, nor to a keepalive"
                    raise self._stopped_answering(host, client, why) from None
                if transport is not None and transport.is_active():
                    # the connection is fine; the server refused or was slow to open this channel
                    # (typically sessions it has not freed yet after their close, MaxSessions; with
                    # concurrent opens paramiko may report the refusal as "Unable to open channel").
                    # Nothing was sent: wait a little and ask again, within the deadline. Closing
                    # the connection would kill every other command running on it.
                    refused += 1
                    pause = min(0.5, 0.02 * 2 ** refused)
                    if time.monotonic() + pause >= deadline:
                        raise SSHError(f"{target.label}: could not open a session channel: "
                                       f"{exc or type(exc).__name__}",
                                       hint="the server may limit sessions per connection (sshd MaxSessions)") from None
                    attempt -= 1
                    time.sleep(pause)
                    continue
                self._drop(host, client)
                if attempt >= 2:
                    raise SSHError(f"{target.label}: could not open a session channel: {exc}") from None
                log.info("%s: pooled connection is gone (%s); reconnecting", target.label, exc)

    def _check_alive(self, host: str, chan: Any, cmd: str) -> None:
        """Called when a command has been silent for the host's ``connect_timeout``: ask the SSH
        server for a reply (a keepalive request) within that budget again. A live host answers in
        milliseconds even while the command works; a frozen or vanished one does not, and the
        command is abandoned then rather than at its own (much longer) timeout."""
        transport = chan.get_transport()
        budget = self._target(host).connect_timeout
        if transport is None or not transport.is_active():
            return  # the read loop sees the closed channel and reports the lost connection
        down = self._down.get(host)
        if down is not None and time.monotonic() - down[0] < DOWN_MEMORY_S:
            # another command on this host already found it gone: do not wait a second budget
            with contextlib.suppress(Exception):
                chan.close()
            raise HostUnreachableError(down[1].message, hint=down[1].hint)
        with self._probe_lock(host):  # twice: one reply lost to a moment of load is not a dead host
            if _transport_answers(transport, budget) or _transport_answers(transport, budget):
                return
        with contextlib.suppress(Exception):
            chan.close()
        with self._lock:
            client = self._clients.get(host)
        raise self._stopped_answering(
            host, client, f"no reply to two SSH keepalives of {budget:g}s each while `{_shown(cmd)}` ran; "
                          "the command may or may not have completed there")

    def _stopped_answering(self, host: str, client: paramiko.SSHClient | None, why: str) -> HostUnreachableError:
        """Forget the connection of a host that stopped answering and remember it as down, so the
        rest of the run does not wait for it again."""
        err = HostUnreachableError(f"{self._describe(host)} stopped answering: {why}",
                                   hint="the host or its sshd is frozen, overloaded or cut off")
        self._down[host] = (time.monotonic(), err)
        if client is not None:
            # closing may block on a dead peer's socket: do it off the caller's path
            threading.Thread(target=self._drop, args=(host, client), daemon=True, name=f"ssh-drop-{host}").start()
            with self._lock:
                if self._clients.get(host) is client:
                    del self._clients[host]
        log.warning("%s", err.message)
        return err

    def _probe_lock(self, host: str) -> threading.Lock:
        with self._lock:
            return self._probe_locks.setdefault(host, threading.Lock())

    # --- connections --------------------------------------------------------------------------

    def _host_lock(self, host: str) -> threading.Lock:
        with self._lock:
            return self._host_locks.setdefault(host, threading.Lock())

    def _client(self, host: str) -> paramiko.SSHClient:
        declared = self._declared_down.get(host)
        if declared is not None:
            raise HostUnreachableError(f"{host}: {declared}")
        target = self._target(host)
        with self._host_lock(host):
            with self._lock:
                client = self._clients.get(host)
            if client is not None:
                transport = client.get_transport()
                if transport is not None and transport.is_active():
                    return client
                self._drop(host, client)
            down = self._down.get(host)
            if down is not None and time.monotonic() - down[0] < DOWN_MEMORY_S:
                # a host that just did not answer is not waited for again by every step of the run
                raise HostUnreachableError(f"{down[1].message} (not retried: no answer "
                                           f"{time.monotonic() - down[0]:.0f}s ago)", hint=down[1].hint)
            try:
                client = call_with_retry(
                    lambda: self._connect(target, time.monotonic() + target.connect_timeout),
                    retry_on=(HostUnreachableError,),
                    what=f"ssh connect {target.label}",
                    budget=target.connect_timeout,
                )
            except HostUnreachableError as e:
                self._down[host] = (time.monotonic(), e)
                raise
            self._down.pop(host, None)
            with self._lock:
                self._clients[host] = client
            return client

    def _drop(self, host: str, client: paramiko.SSHClient) -> None:
        with self._lock:
            if self._clients.get(host) is client:
                del self._clients[host]
        with contextlib.suppress(Exception):
            client.close()

    def _connect(self, t: _Target, deadline: float) -> paramiko.SSHClient:
        import paramiko

        _quiet_paramiko()

        hint_proxy = (f" (note: {self._ssh_config_path} sets a proxy/jump host for it, which drctl "
                      "does not use)") if t.proxy else ""
        try:
            sock = socket.create_connection((t.hostname, t.port), timeout=t.connect_timeout)
        except TimeoutError:
            raise HostUnreachableError(
                f"{t.label}: TCP connect timed out after {t.connect_timeout:g}s{hint_proxy}",
                hint="is the host up and the port open through firewalls?") from None
        except ConnectionRefusedError:
            raise HostUnreachableError(
                f"{t.label}: connection refused{hint_proxy}",
                hint="is sshd running there, and on this port?") from None
        except OSError as exc:
            raise HostUnreachableError(f"{t.label}: cannot connect: {exc.strerror or exc}{hint_proxy}",
                                       hint="check the address and the network path") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        client = paramiko.SSHClient()
        known = client.get_host_keys()
        for path in t.known_hosts:
            try:
                known.load(str(path))
            except OSError as exc:
                sock.close()
                raise HostKeyError(f"{t.label}: cannot read known_hosts file {path}: "
                                   f"{exc.strerror}") from None
        client.set_missing_host_key_policy(_reject_policy(t))
        expected = known.lookup(t.host_key_name)
        remaining = max(0.05, deadline - time.monotonic())
        try:
            client.connect(
                t.hostname, port=t.port, username=t.user, sock=sock,
                key_filename=cast(Any, [str(k) for k in t.key_files] or None),  # paramiko takes a list
                allow_agent=self._use_agent, look_for_keys=not t.key_files,
                # the banner wait ends first, so a silent port is reported as such; a server that
                # stalls the key exchange ends in start_client's timeout ("No existing session")
                timeout=remaining + 0.2, banner_timeout=remaining, auth_timeout=max(remaining, 5.0),
                channel_timeout=t.connect_timeout,
            )
        except HostKeyError:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            want = f"{exc.expected_key.get_name()} {exc.expected_key.fingerprint}"
            where = _known_hosts_file_with(t.known_hosts, t.host_key_name) or (t.known_hosts or ("known_hosts",))[0]
            raise HostKeyError(
                f"{t.label}: HOST KEY CHANGED: the server offered {exc.key.get_name()} {exc.key.fingerprint}, "
                f"{where} expects {want}; possibly a man-in-the-middle, not connecting",
                hint=f"verify the new key out of band; if the host was reinstalled, fix {where}: "
                     f"ssh-keygen -R '{t.host_key_name}' -f {where}, then add the verified key. "
                     "--force never passes a changed host key") from None
        except paramiko.PasswordRequiredException:
            client.close()
            raise SSHAuthError(f"{t.label}: the private key is protected by a passphrase",
                               hint="load it into ssh-agent, or use a key without passphrase") from None
        except paramiko.AuthenticationException as exc:
            client.close()
            tried = ", ".join(map(str, t.key_files)) or "default keys in ~/.ssh"
            raise SSHAuthError(
                f"{t.label}: authentication failed ({exc}); tried {tried}"
                + (" and the SSH agent" if self._use_agent else ""),
                hint=f"check that user {t.user!r} exists there and its authorized_keys holds our key",
            ) from None
        except TimeoutError:
            client.close()
            raise HostUnreachableError(
                f"{t.label}: SSH handshake timed out after {t.connect_timeout:g}s",
                hint="the port answers but sshd does not (overloaded, hung?)") from None
        except paramiko.SSHException as exc:
            client.close()
            text = str(exc)
            if "banner" in text.lower():
                raise HostUnreachableError(
                    f"{t.label}: no SSH banner within {t.connect_timeout:g}s: the port accepts connections "
                    f"but no SSH server answers{hint_proxy}",
                    hint="is this the right port? is sshd hung or overloaded (MaxStartups)?") from None
            if text in ("No existing session", "Negotiation failed."):
                raise HostUnreachableError(
                    f"{t.label}: the SSH handshake did not complete within {t.connect_timeout:g}s",
                    hint="the port answers but sshd does not finish the key exchange (overloaded, hung?)",
                ) from None
            if expected is None and "known_hosts" in text:
                raise HostKeyError(f"{t.label}: host key unknown: {text}") from None
            raise SSHError(f"{t.label}: SSH handshake failed: {text}") from None
        except EOFError:
            client.close()
            raise SSHError(f"{t.label}: the server closed the connection during the handshake",
                           hint="check sshd's log there (MaxStartups, AllowUsers, DenyUsers)") from None
        except OSError as exc:
            client.close()
            raise HostUnreachableError(f"{t.label}: connection failed during the handshake: {exc}") from None
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(KEEPALIVE_S)
        log.debug("connected to %s", t.label)
        return client

    def _target(self, host: str) -> _Target:
        with self._lock:
            cached = self._targets.get(host)
        if cached is not None:
            return cached
        try:
            h = self._hosts[host]
        except KeyError:
            known = ", ".join(sorted(self._hosts)) or "(none)"
            raise SSHError(f"unknown host {host!r}; known: {known}") from None
        target = self._resolve(host, h)
        with self._lock:
            self._targets[host] = target
        return target

    def _resolve(self, name: str, h: Host) -> _Target:
        """Apply ``~/.ssh/config`` under what the inventory sets explicitly."""
        explicit = h.model_fields_set
        cfg = self._config_for(h.address)
        hostname = str(cfg.get("hostname", h.address))
        port = h.port
        if "port" not in explicit and "port" in cfg:
            port = int(cfg["port"])
        user = h.user or cfg.get("user") or getpass.getuser()
        timeout = h.connect_timeout
        if "connect_timeout" not in explicit and "connecttimeout" in cfg:
            timeout = float(cfg["connecttimeout"])
        keys: list[Path] = []
        if h.key is not None:
            key = self._path(h.key)
            if not key.is_file():
                raise SSHAuthError(f"{name}: key file {key} does not exist (inventory host {name!r})")
            keys.append(key)
        else:
            for k in cfg.get("identityfile", []):
                p = Path(k).expanduser()
                if p.is_file():
                    keys.append(p)
        known: list[Path] = []
        if h.known_hosts is not None:
            kh = self._path(h.known_hosts)
            if not kh.is_file():
                raise HostKeyError(f"{name}: known_hosts file {kh} does not exist (inventory host {name!r})")
            known.append(kh)
        if self._user_known_hosts is not None:
            user_files = [Path(p).expanduser() for p in str(cfg.get("userknownhostsfile", "")).split()]
            for p in user_files or [self._user_known_hosts]:
                if p.is_file():
                    known.append(p)
            if SYSTEM_KNOWN_HOSTS.is_file():
                known.append(SYSTEM_KNOWN_HOSTS)
        proxy = cfg.get("proxyjump") or cfg.get("proxycommand")
        if proxy and str(proxy).lower() == "none":
            proxy = None
        return _Target(name=name, hostname=hostname, port=port, user=str(user), key_files=tuple(keys),
                       known_hosts=tuple(known), connect_timeout=float(timeout),
                       proxy=str(proxy) if proxy else None)

    def _path(self, p: Path) -> Path:
        p = p.expanduser()
        return p if p.is_absolute() else self._base_dir / p

    def _config_for(self, address: str) -> dict[str, Any]:
        path = self._ssh_config_path
        if path is None or not path.is_file():
            return {}
        with self._lock:
            if self._ssh_config is None:
                import paramiko

                try:
                    self._ssh_config = paramiko.SSHConfig.from_path(str(path))
                except Exception as exc:  # noqa: BLE001 (a bad user config must not crash the run)
                    raise SSHError(f"cannot parse {path}: {exc}") from None
            config = self._ssh_config
        found = dict(config.lookup(address))
        # paramiko fills in hostname even without a match; only keep what the file really set
        if found.get("hostname") == address:
            found.pop("hostname")
        return found


class _ChannelReader(io.RawIOBase):
    """A channel's stdout as a raw binary stream; stderr is drained alongside (last 64 KiB kept)
    so a chatty stderr cannot stall the command."""

    def __init__(self, chan: Any, deadline: float, expired: threading.Event, label: str, cmd: str,
                 timeout: float, *, silence: float, check_alive: Any) -> None:
        super().__init__()
        self._silence = silence
        self._check_alive = check_alive
        self._chan = chan
        self._deadline = deadline
        self._expired = expired
        self._label = label
        self._cmd = cmd
        self._timeout = timeout
        self.stderr = bytearray()

    def readable(self) -> bool:
        return True

    def _drain_stderr(self) -> None:
        while self._chan.recv_stderr_ready():
            self.stderr += self._chan.recv_stderr(_CHUNK)
            if len(self.stderr) > _STDERR_TAIL:
                del self.stderr[:-_STDERR_TAIL]

    def _timed_out(self) -> SSHError:
        return SSHError(f"{self._label}: `{_shown(self._cmd)}` did not finish within {self._timeout:g}s; "
                        "the command was sent a KILL signal and its channel closed (output is incomplete)")

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        while True:
            if self._expired.is_set():
                raise self._timed_out()
            self._drain_stderr()
            if self._chan.recv_ready():
                data = self._chan.recv(len(view))
                view[: len(data)] = data
                return len(data)
            if self._chan.eof_received or self._chan.closed:
                self._drain_stderr()
                if self._expired.is_set():
                    raise self._timed_out()
                return 0
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise self._timed_out()
            if not select.select([self._chan], [], [], min(remaining, self._silence))[0]:
                self._check_alive()


def _known_hosts_file_with(files: Sequence[Path], name: str) -> Path | None:
    """The first known_hosts file that holds an entry for ``name`` (the one to fix)."""
    import paramiko

    for path in files:
        keys = paramiko.HostKeys()
        with contextlib.suppress(OSError):
            keys.load(str(path))
        if keys.lookup(name):
            return path
    return None


def _transport_answers(transport: Any, budget: float) -> bool:
    """Whether the SSH server replies to a global keepalive request within ``budget`` seconds
    (OpenSSH answers ``keepalive@openssh.com`` with a failure reply, which is an answer). paramiko's
    wait has no timeout of its own, so it waits in a thread that ends when the transport closes."""
    answered = threading.Event()

    def ask() -> None:
        with contextlib.suppress(Exception):
            transport.global_request("keepalive@openssh.com", wait=True)
            if transport.is_active():
                answered.set()

    threading.Thread(target=ask, daemon=True, name="ssh-keepalive").start()
    return answered.wait(budget)


def _quiet_paramiko() -> None:
    logger = logging.getLogger("paramiko")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.CRITICAL + 1)


def _feed(chan: Any, data: bytes) -> None:
    """Send stdin then EOF (in its own thread, so a command that writes before it reads cannot
    deadlock against us)."""
    with contextlib.suppress(Exception):
        chan.sendall(data)
        chan.shutdown_write()


def _send_signal(chan: Any, signame: str) -> None:
    """RFC 4254 6.9 "signal" request (paramiko has no API for it; OpenSSH honours it). Best effort:
    the remote process may survive if the server ignores the request."""
    try:
        from paramiko.common import cMSG_CHANNEL_REQUEST
        from paramiko.message import Message

        if chan.closed:
            return
        m = Message()
        m.add_byte(cMSG_CHANNEL_REQUEST)
        m.add_int(chan.remote_chanid)
        m.add_string("signal")
        m.add_boolean(False)
        m.add_string(signame)
        chan.transport._send_user_message(m)
    except Exception:  # noqa: BLE001,S110 (best effort by design)
        pass


def _reject_policy(t: _Target) -> paramiko.MissingHostKeyPolicy:
    """paramiko's RejectPolicy, raising our HostKeyError with the offered key's fingerprint."""
    import paramiko

    class RejectUnknownHostKey(paramiko.RejectPolicy):
        def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> NoReturn:
            files = ", ".join(map(str, t.known_hosts)) or "(no known_hosts file)"
            raise HostKeyError(
                f"{t.label}: host key unknown: the server offered {key.get_name()} {key.fingerprint}, "
                f"and no known_hosts entry exists for {hostname} (checked: {files}). Not connecting.",
                hint="verify the fingerprint out of band (on the host: ssh-keygen -lf "
                     "/etc/ssh/ssh_host_ed25519_key.pub) and add the key to the Host's known_hosts file")

    return RejectUnknownHostKey()
