"""A PostgreSQL cluster as a lab daemon (tests, benchmarks, the local lab): ``initdb`` and
``postgres`` run as the ``postgres`` user (initdb refuses root), on a free port of 127.0.0.1, with
the Unix socket in the cluster's directory and ``fsync=off``.

Every directory above the cluster's must be traversable by ``postgres`` (``tempfile.mkdtemp``
makes 0700 directories: use ``cluster_base_dir()`` for a suitable parent). ``sql()`` runs psql as
the superuser over the socket, always with ``connect_timeout``. With ``password`` given, TCP
connections need it (scram-sha-256) while the socket stays trusted, and the cluster's ``pgpass``
file holds it for the ``postgres`` user's own clients (``pg_basebackup``, a standby's WAL receiver).

The settings are written into a marked block at the end of ``data/postgresql.conf`` at every start,
and given on the command line too: a cluster stopped and started again with ``pg_ctl`` (as the
failover driver does when it re-attaches an old primary) comes back with the same settings.

Streaming replication: a primary started with ``settings=REPLICATION_SETTINGS`` (``wal_level``,
WAL senders, ``wal_log_hints`` and ``full_page_writes`` for ``pg_rewind``) and a standby made with
``standby.clone_from(primary)`` (``pg_basebackup -R``) before its ``start()``; initdb's default
``pg_hba.conf`` already lets 127.0.0.1 connect for replication.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from drctl.lab.servers import Daemon

PG_USER = "postgres"
CONNECT_TIMEOUT = 5

#: what the lab runs every cluster with (``settings`` adds to it or overrides it)
BASE_SETTINGS: dict[str, str] = {
    "listen_addresses": "127.0.0.1", "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
    "max_connections": "50", "shared_buffers": "64MB", "logging_collector": "off", "log_min_messages": "warning",
}

#: a primary that a hot standby can stream from, and that ``pg_rewind`` can rewind or rewind from
REPLICATION_SETTINGS: dict[str, str] = {
    "wal_level": "replica", "max_wal_senders": "10", "wal_keep_size": "256MB", "hot_standby": "on",
    "wal_log_hints": "on", "full_page_writes": "on", "wal_receiver_status_interval": "1s",
    "wal_retrieve_retry_interval": "500ms", "checkpoint_timeout": "30min",
}

_CONF_BEGIN = "# --- drctl lab settings (rewritten at every start) ---"
_CONF_END = "# --- end of drctl lab settings ---"


def pg_bindir() -> Path:
    """The newest installed PostgreSQL's bin directory (Debian layout)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    if not found:
        raise RuntimeError("PostgreSQL is not installed; run `make deps`")
    return Path(found[-1]).parent


def missing_postgres() -> list[str]:
    out = []
    try:
        pg_bindir()
    except RuntimeError:
        out.append("postgresql")
    if shutil.which("psql") is None:
        out.append("psql")
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        out.append(f"user {PG_USER}")
    return out


def _untraversable(path: Path, uid: int, gids: set[int]) -> Path | None:
    """The first directory from / down to ``path`` that ``uid`` cannot enter, or None."""
    for p in [*reversed(path.parents), path]:
        try:
            st = p.stat()
        except FileNotFoundError:
            return None
        mode = st.st_mode
        if st.st_uid == uid:
            ok = bool(mode & stat.S_IXUSR)
        elif st.st_gid in gids:
            ok = bool(mode & stat.S_IXGRP)
        else:
            ok = bool(mode & stat.S_IXOTH)
        if not ok:
            return p
    return None


def cluster_base_dir(prefix: str = "drctl-pg-") -> Path:
    """A new directory under the system temp dir that ``postgres`` can traverse (mode 0755)."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(d, 0o755)  # noqa: S103 (the cluster inside is 0700 and owned by postgres)
    return d


class PostgresCluster(Daemon):
    """``initdb`` once into ``dir/data``, then ``postgres -D dir/data`` as a foreground daemon."""

    start_timeout = 30.0

    def __init__(self, dir: Path, *, port: int | None = None, name: str = "postgres",
                 password: str | None = None, settings: Mapping[str, str] | None = None) -> None:
        super().__init__(name, dir, port)
        self.data = self.dir / "data"
        self.password = password
        self.extra_settings = dict(settings or {})
        self.bindir = pg_bindir()
        self._pw = pwd.getpwnam(PG_USER)

    @property
    def passfile(self) -> Path | None:
        """The ``pgpass`` file (owned by ``postgres``, mode 0600) holding the password, if any."""
        return self.dir / "pgpass" if self.password is not None else None

    def settings(self) -> dict[str, str]:
        """Every setting the cluster runs with: port, socket directory, the lab's, the extra ones."""
        return {"port": str(self.port), "unix_socket_directories": str(self.socket_dir), **BASE_SETTINGS,
                **self.extra_settings}

    @property
    def socket_dir(self) -> Path:
        return self.dir

    def conninfo(self, dbname: str = "postgres", *, tcp: bool = False) -> str:
        host = "127.0.0.1" if tcp else str(self.socket_dir)
        return f"host={host} port={self.port} user={PG_USER} dbname={dbname}"

    def _as_postgres(self, argv: list[str]) -> list[str]:
        return ["setpriv", f"--reuid={self._pw.pw_uid}", f"--regid={self._pw.pw_gid}", "--init-groups", "--", *argv]

    def _own_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        gids = {g for g in os.getgrouplist(PG_USER, self._pw.pw_gid)}
        blocked = _untraversable(self.dir, self._pw.pw_uid, gids)
        if blocked is not None:
            raise RuntimeError(f"{blocked} is not traversable by the {PG_USER} user, so PostgreSQL cannot use "
                               f"{self.dir}; put the cluster under a directory such as cluster_base_dir() makes")
        os.chown(self.dir, self._pw.pw_uid, self._pw.pw_gid)
        if self.passfile is not None and self.password is not None:
            escaped = self.password.replace("\\", "\\\\").replace(":", "\\:")
            self._write_owned(self.passfile, f"*:*:*:*:{escaped}\n")

    def _write_owned(self, path: Path, text: str) -> None:
        """Write a file owned by ``postgres``, mode 0600 (atomically)."""
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chown(tmp, self._pw.pw_uid, self._pw.pw_gid)
        os.replace(tmp, path)

    def _write_conf(self) -> None:
        """Put this cluster's settings in the marked block at the end of postgresql.conf (a copy
        made by pg_basebackup carries its primary's block: it is replaced here)."""
        conf = self.data / "postgresql.conf"
        text = conf.read_text(encoding="utf-8")
        if _CONF_BEGIN in text:
            head, _, rest = text.partition(_CONF_BEGIN)
            text = head + rest.partition(_CONF_END)[2].lstrip("\n")
        lines = [_CONF_BEGIN] + [f"{k} = '{v.replace(chr(39), chr(39) * 2)}'" for k, v in self.settings().items()]
        self._write_owned(conf, text.rstrip("\n") + "\n\n" + "\n".join([*lines, _CONF_END]) + "\n")

    def init(self) -> None:
        """Create the cluster's files (``initdb``, settings) without starting it; a copy of its
        data directory (``cp -a``) is a quick start for more clusters with the same password."""
        self._prepare()

    def _prepare(self) -> None:
        self._own_dir()
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        self._write_conf()

    def _initdb(self) -> None:
        argv = [str(self.bindir / "initdb"), "-D", str(self.data), "-U", PG_USER, "--no-sync",
                "--locale=C.UTF-8", "-E", "UTF8", "--auth-local=trust"]
        pwfile = None
        if self.password is not None:
            pwfile = self.dir / "pwfile"
            fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(self.password + "\n")
            os.chown(pwfile, self._pw.pw_uid, self._pw.pw_gid)
            argv += ["--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
        else:
            argv += ["--auth-host=trust"]
        try:
            done = subprocess.run(self._as_postgres(argv), capture_output=True, text=True, timeout=120,
                                  check=False, cwd=self.dir)
        finally:
            if pwfile is not None:
                pwfile.unlink(missing_ok=True)
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}): {done.stderr.strip()[-2000:]}")

    def _argv(self) -> list[str]:
        argv = [str(self.bindir / "postgres"), "-D", str(self.data)]
        for k, v in self.settings().items():
            argv += ["-c", f"{k}={v}"]
        return self._as_postgres(argv)

    def _ready(self) -> bool:
        done = subprocess.run([str(self.bindir / "pg_isready"), "-q", "-h", str(self.socket_dir), "-p",
                               str(self.port), "-t", "1"], capture_output=True, timeout=10, check=False)
        return done.returncode == 0

    def stop(self, timeout: float = 10) -> None:
        """Fast shutdown (SIGINT: sessions are ended, not waited for), then the usual stop; a
        postmaster that ``pg_ctl`` started on this data directory since is stopped too."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGCONT)
                os.kill(proc.pid, signal.SIGINT)
                proc.wait(timeout)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        super().stop(timeout)
        pid = self.postmaster_pid()
        if pid is not None:
            _stop_postmaster(pid, timeout)

    def postmaster_pid(self) -> int | None:
        """The PID of the postmaster running on this data directory (whoever started it), or None.
        Read from ``postmaster.pid`` and confirmed by the process's working directory, so a stale
        file whose PID now names another process is ignored."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except (OSError, ValueError):
            return None
        if Path(cwd) != self.data or not _pid_running(pid):
            return None
        return pid

    def clone_from(self, primary: PostgresCluster, timeout: float = 120.0) -> None:
        """Make this (not yet started) cluster a hot standby of ``primary``: ``pg_basebackup -R``
        over TCP (WAL streamed alongside), so ``start()`` brings it up streaming from it."""
        if (self.data / "PG_VERSION").exists():
            raise RuntimeError(f"{self.data} already holds a cluster")
        self._own_dir()
        conninfo = f"host=127.0.0.1 port={primary.port} user={PG_USER} application_name={self.name} " \
                   f"connect_timeout={CONNECT_TIMEOUT}"
        if self.passfile is not None:
            conninfo += f" passfile={self.passfile}"
        argv = [str(self.bindir / "pg_basebackup"), "-D", str(self.data), "-X", "stream", "-R", "-c", "fast",
                "--no-sync", "-w", "-d", conninfo]
        rc, _out, err = run_as_postgres(argv, timeout)
        if rc != 0:
            raise RuntimeError(f"pg_basebackup from {primary.name} failed ({rc}): {err.strip()[-2000:]}")

    def sql(self, text: str, dbname: str = "postgres", timeout: float = 120.0) -> str:
        """Run SQL as the superuser over the socket; the unaligned, tuples-only output."""
        argv = ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                "-d", f"{self.conninfo(dbname)} connect_timeout={CONNECT_TIMEOUT}"]
        done = subprocess.run(argv, input=text, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"psql failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        return done.stdout


def _pid_running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def _stop_postmaster(pid: int, timeout: float) -> None:
    """Fast shutdown of a postmaster by PID (resumed first if paused), SIGKILL after ``timeout``;
    returns once it has exited (a zombie waiting for its parent to reap it has)."""
    for sig in (signal.SIGCONT, signal.SIGINT):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while _pid_running(pid):
        if time.monotonic() >= deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
        time.sleep(0.02)


def postgres_env() -> dict[str, str]:
    """The environment of a program run as ``postgres``: its home (libpq's ~/.pgpass), no PG*
    variables of the caller."""
    pw = pwd.getpwnam(PG_USER)
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": pw.pw_dir, "LANG": "C.UTF-8", "USER": PG_USER}


def run_as_postgres(argv: Sequence[str], timeout: float) -> tuple[int, str, str]:
    """Run ``argv`` as the ``postgres`` user on this machine (in ``/``, with ``postgres_env()``):
    exit status, stdout, stderr. The shape of the failover driver's command runner, so the lab
    stands in for a database host reached over SSH. Raises ``subprocess.TimeoutExpired``."""
    pw = pwd.getpwnam(PG_USER)
    full = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--", *argv]
    done = subprocess.run(full, capture_output=True, text=True, timeout=timeout, check=False, cwd="/",
                          env=postgres_env(), stdin=subprocess.DEVNULL)
    return done.returncode, done.stdout, done.stderr
