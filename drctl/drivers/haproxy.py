"""HAProxy's runtime API (stats socket, ``level admin``): observe servers and set their state.

One command per connection: send the command and a newline, read until HAProxy closes. A
command that changes something answers with a bare newline on success and plain text on error,
so any non-empty reply to ``set server`` is an error.

Server state comes from ``show servers state`` (the admin bitmask and operational state) and
``show stat`` (HAProxy's own status words, for messages). A server counts as in maintenance when
forced (0x01), inherited from a tracked server (0x02) or down on DNS resolution (0x20). The 0x04
"configured maintenance" flag of a server declared ``disabled`` stays set after it is made ready
at run time while the server takes traffic, so it alone does not mean maintenance.

Connecting is retried (bounded) on refused / timed-out connects; nothing is retried once a
command is sent. Standard library only.
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass
from typing import Literal

from drctl.drivers.retry import call_with_retry
from drctl.errors import HAProxyError

State = Literal["ready", "maint", "drain"]

OP_STOPPED, OP_STARTING, OP_RUNNING, OP_STOPPING = 0, 1, 2, 3
ADMIN_FMAINT = 0x01  # forced into maintenance (set server ... state maint)
ADMIN_IMAINT = 0x02  # inherited from a tracked server
ADMIN_CMAINT = 0x04  # `disabled` in the configuration (stays after a runtime `state ready`)
ADMIN_FDRAIN = 0x08  # forced drain (set server ... state drain)
ADMIN_IDRAIN = 0x10  # inherited drain
ADMIN_RMAINT = 0x20  # down because its address does not resolve
ADMIN_MAINT_MASK = ADMIN_FMAINT | ADMIN_IMAINT | ADMIN_RMAINT
ADMIN_DRAIN_MASK = ADMIN_FDRAIN | ADMIN_IDRAIN

_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")
_MAX_REPLY = 64 * 1024 * 1024


@dataclass(frozen=True)
class ServerState:
    """One server of a backend as HAProxy sees it now."""

    backend: str
    server: str
    address: str
    op_state: int
    admin_state: int
    weight: int
    status: str = ""  # `show stat` status column: UP, DOWN, MAINT, DRAIN, "UP 1/3", "no check", ...

    @property
    def up(self) -> bool:
        return self.op_state == OP_RUNNING

    @property
    def proven_up(self) -> bool:
        """UP with a passed health check behind it. A server just taken out of maintenance shows
        "UP 1/3" (check status INI) until its first check: not yet proof that it can serve."""
        return self.up and self.status in ("", "UP", "no check")

    @property
    def maint(self) -> bool:
        return bool(self.admin_state & ADMIN_MAINT_MASK)

    @property
    def drain(self) -> bool:
        return not self.maint and bool(self.admin_state & ADMIN_DRAIN_MASK)

    @property
    def state_text(self) -> State:
        if self.maint:
            return "maint"
        if self.drain:
            return "drain"
        return "ready"


def _check_name(kind: str, name: str) -> None:
    if not _NAME.match(name):
        raise HAProxyError(f"invalid HAProxy {kind} name {name!r} (letters, digits, '_', '.', ':', '-')")


class _ConnectFailed(Exception):
    def __init__(self, reason: str, hint: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.hint = hint


class HAProxyAdmin:
    """A client of one HAProxy's runtime API, at ``tcp://HOST:PORT`` or ``unix:///path``."""

    def __init__(self, admin: str, *, timeout: float = 3.0) -> None:
        self.admin = admin
        self.timeout = timeout
        if admin.startswith("unix://"):
            path = admin[len("unix://"):]
            if not path.startswith("/"):
                raise HAProxyError(f"HAProxy admin {admin!r}: a unix socket needs an absolute path (unix:///...)")
            self._family = socket.AF_UNIX
            self._address: str | tuple[str, int] = path
        elif admin.startswith("tcp://"):
            m = re.match(r"^tcp://(\[([0-9a-fA-F:]+)\]|([^/:\[\]]+)):(\d+)$", admin)
            if not m:
                raise HAProxyError(f"HAProxy admin {admin!r}: expected tcp://HOST:PORT")
            host = m.group(2) or m.group(3)
            self._family = socket.AF_INET6 if m.group(2) else socket.AF_INET
            self._address = (host, int(m.group(4)))
        else:
            raise HAProxyError(f"HAProxy admin {admin!r}: expected tcp://HOST:PORT or unix:///path")

    def __repr__(self) -> str:
        return f"HAProxyAdmin({self.admin!r})"

    # --- transport ----------------------------------------------------------------------------

    def _connect(self) -> socket.socket:
        sock = socket.socket(self._family, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._address)
        except BaseException as exc:
            sock.close()
            if isinstance(exc, FileNotFoundError):
                raise _ConnectFailed("the admin socket does not exist",
                                     "is HAProxy running, with this `stats socket` configured?") from None
            if isinstance(exc, ConnectionRefusedError):
                raise _ConnectFailed("connection refused",
                                     "is HAProxy running, with this `stats socket` configured?") from None
            if isinstance(exc, TimeoutError):
                raise _ConnectFailed(f"connect timed out after {self.timeout:g}s",
                                     "is HAProxy hung, or the address firewalled?") from None
            if isinstance(exc, PermissionError):
                raise HAProxyError(f"HAProxy admin {self.admin}: permission denied on the socket",
                                   hint="run drctl as a user allowed to use the stats socket") from None
            if isinstance(exc, OSError):
                raise _ConnectFailed(exc.strerror or str(exc), "check the admin address") from None
            raise
        return sock

    def command(self, cmd: str) -> str:
        """Send one command, return HAProxy's whole reply (read until it closes the connection)."""
        if "\n" in cmd or "\r" in cmd or ";" in cmd:
            raise HAProxyError(f"refusing to send {cmd!r}: one command per call (no newline or ';')")
        try:
            sock = call_with_retry(self._connect, retry_on=(_ConnectFailed,),
                                   what=f"HAProxy admin {self.admin}")
        except _ConnectFailed as exc:
            raise HAProxyError(f"HAProxy admin {self.admin}: {exc.reason}", hint=exc.hint) from None
        deadline = time.monotonic() + self.timeout
        chunks: list[bytes] = []
        size = 0
        with sock:
            try:
                sock.sendall(cmd.encode() + b"\n")
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError
                    sock.settimeout(remaining)
                    data = sock.recv(65536)
                    if not data:
                        break
                    chunks.append(data)
                    size += len(data)
                    if size > _MAX_REPLY:
                        raise HAProxyError(f"HAProxy admin {self.admin}: reply to {cmd!r} is larger than "
                                           f"{_MAX_REPLY} bytes")
            except TimeoutError:
                raise HAProxyError(f"HAProxy admin {self.admin}: no complete reply to {cmd!r} within "
                                   f"{self.timeout:g}s", hint="is HAProxy hung or overloaded?") from None
            except OSError as exc:
                raise HAProxyError(f"HAProxy admin {self.admin}: connection failed during {cmd!r}: "
                                   f"{exc.strerror or exc}") from None
        return b"".join(chunks).decode("utf-8", errors="replace")

    # --- servers ------------------------------------------------------------------------------

    def servers(self, backend: str) -> dict[str, ServerState]:
        """Every server of ``backend`` by name. HAProxyError if the backend is unknown."""
        _check_name("backend", backend)
        reply = self.command(f"show servers state {backend}")
        lines = reply.splitlines()
        header: list[str] | None = None
        rows: list[dict[str, str]] = []
        for line in lines:
            if line.startswith("# "):
                header = line[2:].split()
            elif header is not None and line.strip():
                rows.append(dict(zip(header, line.split(), strict=False)))
        if header is None:
            text = reply.strip() or "(empty reply)"
            raise HAProxyError(f"HAProxy admin {self.admin}: cannot list backend {backend!r}: {text}",
                               hint="check the backend name in the inventory against haproxy.cfg")
        status = self._status(backend)
        out: dict[str, ServerState] = {}
        for r in rows:
            if r.get("be_name") != backend:
                continue
            try:
                name = r["srv_name"]
                port = r.get("srv_port", "")
                addr = r["srv_addr"] + (f":{port}" if port and port not in ("0", "-") else "")
                out[name] = ServerState(
                    backend=backend, server=name, address=addr, op_state=int(r["srv_op_state"]),
                    admin_state=int(r["srv_admin_state"]), weight=int(r["srv_uweight"]),
                    status=status.get(name, ""),
                )
            except (KeyError, ValueError) as exc:
                raise HAProxyError(f"HAProxy admin {self.admin}: unexpected `show servers state` line "
                                   f"for backend {backend!r}: {exc}") from None
        return out

    def _status(self, backend: str) -> dict[str, str]:
        """Server name -> `show stat` status column (best effort: {} if unavailable)."""
        try:
            reply = self.command(f"show stat {backend} 4 -1")
        except HAProxyError:
            return {}
        lines = reply.splitlines()
        if not lines or not lines[0].startswith("# "):
            return {}
        cols = lines[0][2:].split(",")
        try:
            ipx, isv, ist = cols.index("pxname"), cols.index("svname"), cols.index("status")
        except ValueError:
            return {}
        out: dict[str, str] = {}
        for line in lines[1:]:
            f = line.split(",")
            if len(f) > max(ipx, isv, ist) and f[ipx] == backend:
                out[f[isv]] = f[ist]
        return out

    def server(self, backend: str, server: str) -> ServerState:
        """One server; HAProxyError naming the servers there if it is unknown."""
        _check_name("server", server)
        found = self.servers(backend)
        if server not in found:
            raise HAProxyError(f"HAProxy admin {self.admin}: backend {backend!r} has no server {server!r}; "
                               f"it has: {', '.join(sorted(found)) or '(none)'}")
        return found[server]

    def set_state(self, backend: str, server: str, state: State) -> None:
        """``set server BACKEND/SERVER state STATE``; setting the state it already has is a no-op.
        Reads the server back and raises HAProxyError if HAProxy did not take the state (e.g. a
        maintenance inherited from a tracked server cannot be cleared here)."""
        if state not in ("ready", "maint", "drain"):
            raise HAProxyError(f"invalid server state {state!r}: ready, maint or drain")
        _check_name("backend", backend)
        _check_name("server", server)
        reply = self.command(f"set server {backend}/{server} state {state}").strip()
        if reply:
            raise HAProxyError(f"HAProxy admin {self.admin}: `set server {backend}/{server} state {state}` "
                               f"failed: {reply}",
                               hint="check backend and server names; the stats socket needs `level admin`")
        now = self.server(backend, server)
        if now.state_text != state:
            why = ""
            if now.admin_state & ADMIN_IMAINT:
                why = " (maintenance inherited from a tracked server)"
            elif now.admin_state & ADMIN_RMAINT:
                why = " (its address does not resolve)"
            raise HAProxyError(f"HAProxy admin {self.admin}: {backend}/{server} is {now.state_text} after "
                               f"setting it {state}{why}")
