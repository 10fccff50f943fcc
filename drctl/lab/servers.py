"""Real daemons on 127.0.0.1 for the local lab and the tests: sshd, BIND named, HAProxy, a
small HTTP origin and etcd cluster members, each in its own directory on free ports.

Every daemon runs in its own process session (``start_new_session=True``) with its output in
``DIR/<name>.log``. ``start()`` returns once the daemon really serves (port open, zones loaded),
or raises ``RuntimeError`` with the tail of that log. ``stop()`` signals the daemon's whole process
group (so sshd's per-connection children go too) and waits, bounded, until the PID is gone.
``stop_pid`` does the same for a daemon started by another process (``drctl lab down``).
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

SSHD = "/usr/sbin/sshd"
NAMED = "/usr/sbin/named"
HAPROXY = "/usr/sbin/haproxy"
ETCD = "/usr/bin/etcd"
STOP_GRACE_S = 1.0  # how long an etcd member may take to stop before SIGKILL

_ports_lock = threading.Lock()
_ports_given: set[int] = set()


def free_port() -> int:
    """A port free on 127.0.0.1 for both TCP and UDP, never handed out twice by this process."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind(("127.0.0.1", port))
            except OSError:
                continue
        with _ports_lock:
            if port in _ports_given:
                continue
            _ports_given.add(port)
        return port
    raise RuntimeError("no free port found on 127.0.0.1")


# --- processes by pid ------------------------------------------------------------------------------


def proc_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (guards against PID reuse), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[19])


def _proc_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()[0]


def pid_alive(pid: int, start_time: int | None = None) -> bool:
    """True while the process runs (stopped by SIGSTOP counts; a zombie does not)."""
    state = _proc_state(pid)
    if state is None or state in ("Z", "X"):
        return False
    return start_time is None or proc_start_time(pid) == start_time


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def pid_gone(pid: int, start_time: int | None = None) -> bool:
    """True once the PID no longer exists (a zombie still exists), or now names another process."""
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return start_time is not None and proc_start_time(pid) not in (None, start_time)


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc): what a frozen host freezes."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _signal(pid: int, sig: int) -> None:
    """Signal the daemon's process group when it leads one, else the process alone."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def wait_gone(pid: int, timeout: float, start_time: int | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if pid_gone(pid, start_time):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def stop_pid(pid: int, timeout: float = 10.0, start_time: int | None = None) -> bool:
    """SIGTERM (then SIGKILL after ``timeout``) a daemon by PID and wait until the PID is gone.

    Returns False when there was nothing to stop (already gone, or the PID was reused: given
    ``start_time``, another process with the same PID is left alone). Raises RuntimeError when
    the PID is still there after SIGKILL and a further bounded wait."""
    if pid_gone(pid, start_time):
        return False
    _signal(pid, signal.SIGTERM)
    _signal(pid, signal.SIGCONT)  # a paused daemon acts on SIGTERM only once resumed
    if wait_gone(pid, timeout, start_time):
        return True
    _signal(pid, signal.SIGKILL)
    if wait_gone(pid, 10.0, start_time):
        return True
    raise RuntimeError(f"pid {pid} is still present after SIGKILL")


def stop_pids(pids: Sequence[tuple[int, int | None]], timeout: float = 10.0) -> list[int]:
    """Stop several daemons at once (signal all, then wait): the PIDs that were running."""
    running = [(p, st) for p, st in pids if not pid_gone(p, st)]
    for p, _st in running:
        _signal(p, signal.SIGTERM)
        _signal(p, signal.SIGCONT)
    deadline = time.monotonic() + timeout
    for p, st in running:
        if not wait_gone(p, max(0.0, deadline - time.monotonic()), st):
            stop_pid(p, 0.0, st)
    return [p for p, _st in running]


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _port_open(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


# --- the daemon base -------------------------------------------------------------------------------


class Daemon:
    """One server process. Subclasses say how to configure it (``_prepare``), how to run it
    (``_argv``) and when it is ready (``_ready_ports`` open, then ``_ready``)."""

    start_timeout = 20.0

    def __init__(self, name: str, dir: Path, port: int | None = None) -> None:
        self.name = name
        self.dir = Path(dir).resolve()
        self.port = port if port is not None else free_port()
        self.log = self.dir / f"{name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_fh: IO[bytes] | None = None
        self.start_time: int | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} port={self.port} pid={self.pid}>"

    # what subclasses provide
    def _prepare(self) -> None:
        """Write config files (called before every start)."""

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str] | None:
        return None

    def _ready_ports(self) -> list[int]:
        return [self.port]

    def _ready(self) -> bool:
        return True

    # lifecycle
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def alive(self) -> bool:
        if self._proc is None:
            return False
        if self._proc.poll() is not None:
            return False
        return pid_alive(self._proc.pid)

    def start(self) -> None:
        if self.alive():
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.dir.mkdir(parents=True, exist_ok=True)
        self._prepare()
        self._close_log()
        self._log_fh = open(self.log, "ab")  # kept open for the daemon's life
        self._proc = subprocess.Popen(
            self._argv(), stdin=subprocess.DEVNULL, stdout=self._log_fh, stderr=subprocess.STDOUT,
            cwd=self.dir, env=self._env(), start_new_session=True, close_fds=True,
        )
        self.start_time = proc_start_time(self._proc.pid)
        try:
            self._wait_ready()
        except BaseException:
            self.stop(timeout=3)
            raise

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        pending = list(self._ready_ports())
        while True:
            rc = self._proc.poll()
            if rc is not None:
                raise RuntimeError(f"{self.name} exited with status {rc} while starting; "
                                   f"log {self.log}:\n{log_tail(self.log)}")
            pending = [p for p in pending if not _port_open(p)]
            if not pending and self._ready():
                return
            if time.monotonic() >= deadline:
                what = f"port(s) {pending} not accepting" if pending else "not ready"
                raise RuntimeError(f"{self.name} did not come up within {self.start_timeout:.0f}s "
                                   f"({what}); log {self.log}:\n{log_tail(self.log)}")
            time.sleep(0.02)

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM the daemon's process group, SIGKILL after ``timeout``; wait until the PID is gone."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            _signal(proc.pid, signal.SIGTERM)
            _signal(proc.pid, signal.SIGCONT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal(proc.pid, signal.SIGKILL)
                proc.wait(10)
        else:
            _signal(proc.pid, signal.SIGTERM)  # leftovers of its process group, if any
        self._close_log()

    def pause(self) -> None:
        """SIGSTOP: the daemon keeps its port but answers nothing (clients hit their timeouts)."""
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError(f"{self.name} is not running")
        _signal(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError(f"{self.name} is not running")
        _signal(self._proc.pid, signal.SIGCONT)

    def _close_log(self) -> None:
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None


def _which(name: str) -> str:
    """A tool from PATH, or from /usr/sbin (not always on a user's PATH)."""
    found = shutil.which(name)
    if found:
        return found
    if os.access(f"/usr/sbin/{name}", os.X_OK):
        return f"/usr/sbin/{name}"
    raise RuntimeError(f"{name} is not installed; run `make deps`")


def _run(argv: list[str], timeout: float = 20.0) -> str:
    argv = [_which(argv[0]), *argv[1:]]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise RuntimeError(f"{argv[0]} is not installed; run `make deps`") from None
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _need(binary: str) -> str:
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"{binary} is not installed; run `make deps`")
    return binary


# --- OpenSSH ---------------------------------------------------------------------------------------


def ssh_keygen(path: Path, comment: str = "drctl-lab") -> Path:
    """An ed25519 key pair without passphrase at ``path`` and ``path.pub`` (OpenSSH format)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    return path


class SshServer(Daemon):
    """OpenSSH sshd accepting one client key for ``user``; host key verified through
    ``known_hosts``. ``client_key`` may be shared between servers (pass an existing key)."""

    def __init__(self, dir: Path, *, port: int | None = None, user: str | None = None,
                 client_key: Path | None = None, name: str = "sshd") -> None:
        super().__init__(name, dir, port)
        self.user = user or pwd.getpwuid(os.getuid()).pw_name
        self.host_key = self.dir / "host_ed25519"
        self.client_key = Path(client_key).resolve() if client_key else self.dir / "client_ed25519"
        self.known_hosts = self.dir / "known_hosts"
        self.authorized_keys = self.dir / "authorized_keys"
        self.config = self.dir / "sshd_config"

    def host_key_line(self) -> str:
        """``[127.0.0.1]:PORT ssh-ed25519 AAAA...`` (the server must have been prepared or started)."""
        kind, blob = Path(str(self.host_key) + ".pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {blob}"

    def _prepare(self) -> None:
        _need(SSHD)
        os.chmod(self.dir, 0o755)  # noqa: S103 (sshd reads authorized_keys as the target user)
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
        ssh_keygen(self.host_key, f"{self.name}-host")
        ssh_keygen(self.client_key, "drctl-lab-client")
        self.authorized_keys.write_text(Path(str(self.client_key) + ".pub").read_text())
        os.chmod(self.authorized_keys, 0o644)
        self.known_hosts.write_text(self.host_key_line() + "\n")
        sftp = next((p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/sftp-server")
                     if os.path.exists(p)), None)
        lines = [
            "ListenAddress 127.0.0.1",
            f"Port {self.port}",
            f"HostKey {self.host_key}",
            f"PidFile {self.dir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            f"AllowUsers {self.user}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "StrictModes no",
            "UsePAM no",
            "UseDNS no",
            "PrintMotd no",
            "X11Forwarding no",
            "MaxStartups 100:30:200",
            "LoginGraceTime 20",
            # bash sources ~/.bashrc for sshd sessions only at shell level 1; root's rc here runs slow
            # init code (about +100 ms per command), which a lab host does not need
            "SetEnv SHLVL=1",
        ]
        if sftp:
            lines.append(f"Subsystem sftp {sftp}")
        self.config.write_text("\n".join(lines) + "\n")

    def _argv(self) -> list[str]:
        return [SSHD, "-D", "-e", "-f", str(self.config)]


# --- BIND named ------------------------------------------------------------------------------------


def write_tsig_key(path: Path, name: str, algorithm: str = "hmac-sha256") -> Path:
    """Run ``tsig-keygen`` and write its output (a ``key "NAME" { ... };`` block) to ``path``."""
    text = _run(["tsig-keygen", "-a", algorithm, name])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return path


def tsig_key_name(path: Path) -> str:
    m = re.search(r'key\s+"([^"]+)"', Path(path).read_text())
    if not m:
        raise RuntimeError(f"{path}: no key \"NAME\" {{ ... }} block")
    return m.group(1)


def _soa_authoritative(port: int, zone: str, timeout: float = 0.3) -> bool:
    """True when the server on ``port`` answers SOA for ``zone`` with NOERROR, AA and an answer."""
    qid = secrets.randbits(16)
    qname = b"".join(bytes([len(label)]) + label.encode() for label in zone.strip(".").split(".")) + b"\0"
    query = struct.pack("!HHHHHH", qid, 0, 1, 0, 0, 0) + qname + struct.pack("!HH", 6, 1)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.connect(("127.0.0.1", port))
            s.send(query)
            reply = s.recv(4096)
    except OSError:
        return False
    if len(reply) < 12:
        return False
    rid, flags, _qd, ancount = struct.unpack("!HHHH", reply[:8])
    return rid == qid and flags & 0x000F == 0 and bool(flags & 0x0400) and ancount > 0


class NamedServer(Daemon):
    """BIND 9 (``named -g``) serving ``zones`` (name -> zone file text) as primary, UPDATE only with
    the TSIG key; or, given ``primary``, a secondary of the primary's zones (NOTIFY + IXFR).
    A secondary registers itself with its primary (which then sends it NOTIFYs and allows it
    transfers): construct every secondary before starting the primary, and start the primary first."""

    def __init__(self, dir: Path, zones: dict[str, str], tsig_key_file: Path, *, port: int | None = None,
                 secondaries: list[NamedServer] | None = None, primary: NamedServer | None = None,
                 name: str = "named") -> None:
        super().__init__(name, dir, port)
        self.tsig_key_file = Path(tsig_key_file).resolve()
        self.primary = primary
        self.secondaries: list[NamedServer] = list(secondaries or [])
        self.zones: dict[str, str]
        if primary is not None:
            self.zones = dict(zones) if zones else dict.fromkeys(primary.zones, "")
            if self not in primary.secondaries:
                primary.secondaries.append(self)
        else:
            self.zones = dict(zones)
        self.config = self.dir / "named.conf"
        self.zone_dir = self.dir / "zones"
        self._zone_files_written = False

    def zone_file(self, zone: str) -> Path:
        return self.zone_dir / f"{zone.strip('.')}.zone"

    def _prepare(self) -> None:
        _need(NAMED)
        self.zone_dir.mkdir(parents=True, exist_ok=True)
        if self.primary is None and not self._zone_files_written:
            # zone files are written once; a restart keeps what UPDATEs changed (the .jnl files)
            for zone, text in self.zones.items():
                for jnl in self.zone_dir.glob(f"{zone.strip('.')}.zone.jnl"):
                    jnl.unlink()
                self.zone_file(zone).write_text(text)
            self._zone_files_written = True
        key = tsig_key_name(self.tsig_key_file)
        d = self.dir
        out = [
            f'include "{self.tsig_key_file}";',
            "options {",
            f'  directory "{d}";',
            f'  pid-file "{d}/named.pid";',
            f'  session-keyfile "{d}/session.key";',
            f'  managed-keys-directory "{d}";',
            f'  dump-file "{d}/named_dump.db";',
            f'  statistics-file "{d}/named.stats";',
            f"  listen-on port {self.port} {{ 127.0.0.1; }};",
            "  listen-on-v6 { none; };",
            "  recursion no;",
            "  dnssec-validation no;",
            "  max-ixfr-ratio unlimited;",
            "  notify-rate 1000;",
            "  notify-delay 0;",
            "  startup-notify-rate 1000;",
            "  serial-query-rate 1000;",
            "  transfers-in 100;",
            "  transfers-out 100;",
            "  notify no;",
            "};",
            "controls { };",
        ]
        for zone in self.zones:
            z = zone.strip(".")
            out.append(f'zone "{z}" {{')
            if self.primary is None:
                out += ["  type primary;", f'  file "{self.zone_file(z)}";',
                        f'  allow-update {{ key "{key}"; }};',
                        f'  allow-transfer {{ 127.0.0.1; key "{key}"; }};']
                if self.secondaries:
                    notify = " ".join(f"127.0.0.1 port {s.port};" for s in self.secondaries)
                    out += ["  notify explicit;", f"  also-notify {{ {notify} }};"]
            else:
                out += ["  type secondary;", f'  file "{self.zone_file(z)}";',
                        "  masterfile-format text;",
                        f"  primaries {{ 127.0.0.1 port {self.primary.port}; }};",
                        "  allow-notify { 127.0.0.1; };",
                        f'  allow-transfer {{ 127.0.0.1; key "{key}"; }};']
            out.append("};")
        self.config.write_text("\n".join(out) + "\n")

    def _argv(self) -> list[str]:
        return [NAMED, "-g", "-n", "2", "-c", str(self.config)]

    def _ready(self) -> bool:
        return all(_soa_authoritative(self.port, z) for z in self.zones)


# --- HAProxy ---------------------------------------------------------------------------------------


@dataclass
class Backend:
    """A backend and its one frontend. ``servers`` are (name, "127.0.0.1:PORT", disabled)."""

    name: str
    mode: Literal["http", "tcp"]
    frontend_port: int
    servers: list[tuple[str, str, bool]]
    health_path: str = "/health"


def _unix_socket_path(wanted: Path) -> Path:
    """``wanted``, or a short path in the temp dir when ``wanted`` is too long for AF_UNIX (108 bytes)."""
    if len(os.fsencode(wanted)) < 100:
        return wanted
    digest = hashlib.sha256(os.fsencode(wanted)).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"drctl-{digest}.sock"


class HAProxyServer(Daemon):
    """HAProxy with one frontend per backend, health checks every 500 ms, and the runtime API
    at ``admin_socket`` and on ``admin_port`` (both ``level admin``). Start origins first."""

    def __init__(self, dir: Path, backends: list[Backend], *, admin_port: int | None = None,
                 name: str = "haproxy") -> None:
        self.admin_port = admin_port if admin_port is not None else free_port()
        super().__init__(name, dir, self.admin_port)
        self.backends = list(backends)
        self.admin_socket = _unix_socket_path(self.dir / "admin.sock")
        self.config = self.dir / "haproxy.cfg"
        self.pidfile = self.dir / "haproxy.pid"

    def _prepare(self) -> None:
        _need(HAPROXY)
        out = [
            "global",
            f"  stats socket {self.admin_socket} mode 600 level admin",
            f"  stats socket ipv4@127.0.0.1:{self.admin_port} level admin",
            "  stats timeout 30s",
            "  maxconn 512",
            "defaults",
            "  timeout connect 2s",
            "  timeout client 30s",
            "  timeout server 30s",
            "  timeout check 2s",
        ]
        for b in self.backends:
            out += ["", f"frontend fe_{b.name}", f"  bind 127.0.0.1:{b.frontend_port}", f"  mode {b.mode}",
                    f"  default_backend {b.name}",
                    "", f"backend {b.name}", f"  mode {b.mode}"]
            if b.mode == "http":
                out.append(f"  option httpchk GET {b.health_path}")
            for srv, addr, disabled in b.servers:
                out.append(f"  server {srv} {addr} check inter 500ms" + (" disabled" if disabled else ""))
        self.config.write_text("\n".join(out) + "\n")
        self.admin_socket.unlink(missing_ok=True)

    def stop(self, timeout: float = 10) -> None:
        super().stop(timeout)
        self.admin_socket.unlink(missing_ok=True)

    def _argv(self) -> list[str]:
        return [HAPROXY, "-db", "-f", str(self.config), "-p", str(self.pidfile)]

    def _ready_ports(self) -> list[int]:
        return [self.admin_port, *(b.frontend_port for b in self.backends)]

    def _ready(self) -> bool:
        return self.admin_socket.exists()


# --- HTTP origin -----------------------------------------------------------------------------------


class HttpOrigin(Daemon):
    """``python -m drctl.lab.origin``: GET / and GET /health answer 200 with ``body``."""

    start_timeout = 15.0

    def __init__(self, dir: Path, body: str, *, port: int | None = None, name: str = "origin") -> None:
        super().__init__(name, dir, port)
        self.body = body

    def _argv(self) -> list[str]:
        return [sys.executable, "-m", "drctl.lab.origin", "--port", str(self.port), "--body", self.body]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return env


# --- etcd ------------------------------------------------------------------------------------------


def _etcd_healthy(port: int, timeout: float = 0.5, tls: EtcdTls | None = None) -> bool:
    """True when the member on ``port`` says it is healthy: it has a leader, so a quorum is up."""
    import ssl

    context = None
    if tls is not None:
        context = ssl.create_default_context(cafile=str(tls.ca))
        if tls.client_cert is not None and tls.client_key is not None:
            context.load_cert_chain(str(tls.client_cert), str(tls.client_key))
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:  # noqa: S310
            return bool(json.loads(resp.read()).get("health") == "true")
    except (OSError, ValueError):
        return False


@dataclass(frozen=True)
class EtcdTls:
    """TLS for an etcd member's clients: its certificate and key, the CA that signed them, and,
    given ``client_cert`` (signed by the same CA), client certificates are required."""

    cert: Path
    key: Path
    ca: Path
    client_cert: Path | None = None
    client_key: Path | None = None


class EtcdMember(Daemon):
    """One member of an etcd v3 cluster: clients on ``port``, peers on ``peer_port``, data in
    ``DIR/data`` (kept across restarts: a member stopped and started again rejoins). Ready when its
    ``/health`` is true, which needs a quorum of the cluster: start the members together
    (``EtcdCluster``). Tuned for loopback (heartbeat 50 ms, election 500 ms)."""

    start_timeout = 30.0

    def __init__(self, dir: Path, *, port: int | None = None, peer_port: int | None = None,
                 name: str = "etcd", tls: EtcdTls | None = None) -> None:
        super().__init__(name, dir, port)
        self.tls = tls
        self.peer_port = peer_port if peer_port is not None else free_port()
        self.initial_cluster = f"{name}=http://127.0.0.1:{self.peer_port}"
        self.token = f"drctl-{secrets.token_hex(4)}"
        self.data_dir = self.dir / "data"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _argv(self) -> list[str]:
        _need(ETCD)
        client = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        tls: list[str] = []
        if self.tls is not None:
            tls = ["--cert-file", str(self.tls.cert), "--key-file", str(self.tls.key)]
            if self.tls.client_cert is not None:
                tls += ["--client-cert-auth", "--trusted-ca-file", str(self.tls.ca)]
        return [ETCD, "--name", self.name, "--data-dir", str(self.data_dir), *tls,
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", self.initial_cluster, "--initial-cluster-token", self.token,
                "--initial-cluster-state", "new", "--heartbeat-interval", "50", "--election-timeout", "500",
                "--logger", "zap", "--log-level", "warn"]

    def _env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}

    def _ready(self) -> bool:
        return _etcd_healthy(self.port, tls=self.tls)

    def stop(self, timeout: float = 10) -> None:
        """A leader stopped with SIGTERM first hands its leadership over, waiting up to ~6 s when
        its peers stop too: one second of grace, then SIGKILL (every write is on disk already)."""
        super().stop(timeout=min(timeout, STOP_GRACE_S))


class EtcdCluster:
    """``size`` etcd members on 127.0.0.1 forming one cluster (``names`` default etcd-1..N);
    ``start()`` starts them all at once and returns when every one is healthy."""

    def __init__(self, dir: Path, size: int = 3, names: Sequence[str] | None = None,
                 tls: EtcdTls | None = None) -> None:
        names = list(names or [f"etcd-{i + 1}" for i in range(size)])
        self.members = [EtcdMember(Path(dir) / n, name=n, tls=tls) for n in names]
        self.tls = tls
        cluster = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self.members)
        token = f"drctl-{secrets.token_hex(4)}"
        for m in self.members:
            m.initial_cluster, m.token = cluster, token

    def __getitem__(self, name: str) -> EtcdMember:
        return next(m for m in self.members if m.name == name)

    def spec(self, members: Sequence[str] | None = None, prefix: str = "/drctl", **options: object) -> str:
        """An ``etcd://`` state spec naming ``members`` (default: all), with options (ttl=...)."""
        chosen = [m for m in self.members if members is None or m.name in members]
        query = "&".join(f"{k}={v}" for k, v in options.items())
        return (f"{'etcds' if self.tls else 'etcd'}://{','.join(m.endpoint for m in chosen)}{prefix}"
                + (f"?{query}" if query else ""))

    def start(self, members: Sequence[str] | None = None) -> None:
        """Start ``members`` (default: all) together; on failure every one started is stopped."""
        chosen = [m for m in self.members if members is None or m.name in members]
        errors: list[BaseException] = []
        threads = [threading.Thread(target=_collect(m.start, errors), name=f"start-{m.name}") for m in chosen]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            for m in chosen:
                m.stop(timeout=3)
            raise RuntimeError("the etcd cluster did not start:\n" + "\n".join(str(e) for e in errors))

    def stop(self, members: Sequence[str] | None = None) -> None:
        for m in self.members:
            if members is None or m.name in members:
                m.stop()

    def alive(self) -> bool:
        return any(m.alive() for m in self.members)


def _collect(fn: Callable[[], None], errors: list[BaseException]) -> Callable[[], None]:
    def run() -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 (reported by the caller)
            errors.append(e)
    return run


def missing_binaries() -> list[str]:
    """The server binaries the lab needs that are not installed."""
    needed = [SSHD, NAMED, HAPROXY]
    out = [b for b in needed if not os.access(b, os.X_OK)]
    for tool in ("ssh-keygen", "tsig-keygen", "dig"):
        try:
            _which(tool)
        except RuntimeError:
            out.append(tool)
    return out


# --- PowerDNS Authoritative ------------------------------------------------------------------------

PDNS_SERVER = "/usr/sbin/pdns_server"
PDNS_SQLITE_SCHEMAS = (
    "/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql",
    "/usr/share/doc/pdns-backend-sqlite3/schema.sqlite3.sql",
)


def _pdns_sqlite_schema() -> Path:
    for path in PDNS_SQLITE_SCHEMAS:
        if os.path.exists(path):
            return Path(path)
    raise RuntimeError("the gsqlite3 schema of PowerDNS is not installed (pdns-backend-sqlite3); run `make deps`")


class PowerDnsServer(Daemon):
    """PowerDNS Authoritative (``pdns_server``, gsqlite3 backend) answering DNS for ``zones`` (name
    -> zone file text, as for NamedServer) on ``port``, with its HTTP API on ``api_port``
    (``api_url``, server id ``localhost``). The API key is random and lives in ``api_key_file``
    (mode 0600; an existing file is used as it is) and in the daemon's own ``pdns.conf`` (0600).

    The database ``DIR/pdns.sqlite3`` is created from the schema the package ships. Zones are
    created through the API at the first start (kind Native, ``soa_edit_api`` DEFAULT, so every
    change through the API bumps the serial); a restart keeps them and every change made since.
    ``start()`` returns once the API answers and every zone's SOA is served authoritatively."""

    def __init__(self, dir: Path, zones: dict[str, str], *, port: int | None = None,
                 api_port: int | None = None, api_key_file: Path | None = None, name: str = "pdns") -> None:
        super().__init__(name, dir, port)
        self.api_port = api_port if api_port is not None else free_port()
        self.zones = dict(zones)
        self.api_key_file = Path(api_key_file).resolve() if api_key_file else self.dir / "api.key"
        self.config = self.dir / "pdns.conf"
        self.database = self.dir / "pdns.sqlite3"
        # pdns.controlsocket must fit in an AF_UNIX path
        self.socket_dir = _unix_socket_path(self.dir / "pdns.controlsocket").parent
        if self.socket_dir != self.dir:
            digest = hashlib.sha256(os.fsencode(self.dir)).hexdigest()[:16]
            self.socket_dir = Path(tempfile.gettempdir()) / f"drctl-pdns-{digest}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def _api_key(self) -> str:
        return self.api_key_file.read_text().strip()

    def _prepare(self) -> None:
        import sqlite3

        _need(PDNS_SERVER)
        if not self.api_key_file.exists():
            self.api_key_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.api_key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(32) + "\n")
        if not self.database.exists():
            fresh = self.dir / "pdns.sqlite3.new"
            fresh.unlink(missing_ok=True)
            db = sqlite3.connect(fresh)
            try:
                db.executescript(_pdns_sqlite_schema().read_text())
                db.commit()
            finally:
                db.close()
            fresh.replace(self.database)
        self.socket_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        lines = [
            "launch=gsqlite3",
            f"gsqlite3-database={self.database}",
            "local-address=127.0.0.1",
            f"local-port={self.port}",
            "reuseport=no",
            "api=yes",
            f"api-key={self._api_key()}",
            "webserver=yes",
            "webserver-address=127.0.0.1",
            f"webserver-port={self.api_port}",
            "webserver-allow-from=127.0.0.1",
            "webserver-loglevel=none",
            "guardian=no",
            "daemon=no",
            f"socket-dir={self.socket_dir}",
            "disable-syslog=yes",
            "security-poll-suffix=",  # no DNS lookups of PowerDNS' own security status
            "receiver-threads=1",
            "distributor-threads=1",
        ]
        fd = os.open(self.config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(lines) + "\n")

    def _argv(self) -> list[str]:
        return [PDNS_SERVER, f"--config-dir={self.dir}", "--daemon=no", "--guardian=no"]

    def _ready_ports(self) -> list[int]:
        return [self.port, self.api_port]

    def _ready(self) -> bool:
        try:
            status, _ = self.api("GET", "/api/v1/servers/localhost", timeout=1.0)
        except OSError:
            return False
        return status == 200

    def api(self, method: str, path: str, body: object = None, *, timeout: float = 5.0) -> tuple[int, bytes]:
        """One request to the API with the server's key: (status, body). For the lab and tests;
        drctl itself goes through ``drctl.drivers.dns_powerdns``."""
        import http.client
        import json

        conn = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=timeout)
        try:
            conn.request(method, path, body=json.dumps(body) if body is not None else None,
                         headers={"X-API-Key": self._api_key(), "Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, resp.read()
        except http.client.HTTPException as exc:
            raise OSError(f"bad HTTP answer from {self.name}: {type(exc).__name__}") from None
        finally:
            conn.close()

    @staticmethod
    def _zone_path(zone: str) -> str:
        return f"/api/v1/servers/localhost/zones/{zone.strip('.')}."

    def set_records(self, zone: str, name: str, rdtype: str, values: list[str], ttl: int = 60) -> None:
        """Replace (or, given no values, delete) one RRset through the API, as an operator would."""
        fqdn = name if name.endswith(".") else name + "."
        rrset: dict[str, object] = {"name": fqdn, "type": rdtype, "changetype": "REPLACE" if values else "DELETE"}
        if values:
            rrset.update(ttl=ttl, records=[{"content": v, "disabled": False} for v in values])
        status, data = self.api("PATCH", self._zone_path(zone), {"rrsets": [rrset]})
        if status != 204:
            raise RuntimeError(f"{self.name}: PATCH of {fqdn} {rdtype} answered {status}: {data[:300]!r}")

    def start(self) -> None:
        super().start()
        try:
            self._create_zones()
        except BaseException:
            self.stop(timeout=3)
            raise

    def _create_zones(self) -> None:
        for zone, text in self.zones.items():
            status, data = self.api("GET", self._zone_path(zone) + "?rrsets=false")
            if status == 200:
                continue
            if status != 404:
                raise RuntimeError(f"{self.name}: reading zone {zone} answered {status}: {data[:300]!r}")
            fqdn = zone.strip(".") + "."
            status, data = self.api("POST", "/api/v1/servers/localhost/zones",
                                    {"name": fqdn, "kind": "Native", "zone": text, "nameservers": []})
            if status != 201:
                raise RuntimeError(f"{self.name}: creating zone {zone} answered {status}: {data[:300]!r}; "
                                   f"log {self.log}:\n{log_tail(self.log)}")
        deadline = time.monotonic() + self.start_timeout
        while not all(_soa_authoritative(self.port, z) for z in self.zones):
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{self.name} does not serve its zones; log {self.log}:\n{log_tail(self.log)}")
            time.sleep(0.02)

    def stop(self, timeout: float = 10) -> None:
        super().stop(timeout)
        if self.socket_dir != self.dir:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
