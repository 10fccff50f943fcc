"""A PostgreSQL cluster as a lab daemon (tests, benchmarks, the local lab): ``initdb`` and
``postgres`` run as the ``postgres`` user (initdb refuses root), on a free port of 127.0.0.1, with
the Unix socket in the cluster's directory and ``fsync=off``.

Every directory above the cluster's must be traversable by ``postgres`` (``tempfile.mkdtemp``
makes 0700 directories: use ``cluster_base_dir()`` for a suitable parent). ``sql()`` runs psql as
the superuser over the socket, always with ``connect_timeout``. With ``password`` given, TCP
connections need it (scram-sha-256) while the socket stays trusted.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
from pathlib import Path

from drctl.lab.servers import Daemon

PG_USER = "postgres"
CONNECT_TIMEOUT = 5


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
                 password: str | None = None) -> None:
        super().__init__(name, dir, port)
        self.data = self.dir / "data"
        self.password = password
        self.bindir = pg_bindir()
        self._pw = pwd.getpwnam(PG_USER)

    @property
    def socket_dir(self) -> Path:
        return self.dir

    def conninfo(self, dbname: str = "postgres", *, tcp: bool = False) -> str:
        host = "127.0.0.1" if tcp else str(self.socket_dir)
        return f"host={host} port={self.port} user={PG_USER} dbname={dbname}"

    def _as_postgres(self, argv: list[str]) -> list[str]:
        return ["setpriv", f"--reuid={self._pw.pw_uid}", f"--regid={self._pw.pw_gid}", "--init-groups", "--", *argv]

    def _prepare(self) -> None:
        gids = {g for g in os.getgrouplist(PG_USER, self._pw.pw_gid)}
        blocked = _untraversable(self.dir, self._pw.pw_uid, gids)
        if blocked is not None:
            raise RuntimeError(f"{blocked} is not traversable by the {PG_USER} user, so PostgreSQL cannot use "
                               f"{self.dir}; put the cluster under a directory such as cluster_base_dir() makes")
        os.chown(self.dir, self._pw.pw_uid, self._pw.pw_gid)
        if (self.data / "PG_VERSION").exists():
            return
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
        return self._as_postgres([
            str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.socket_dir),
            "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off", "-c", "max_connections=50", "-c", "shared_buffers=64MB",
            "-c", "logging_collector=off", "-c", "log_min_messages=warning",
        ])

    def _ready(self) -> bool:
        done = subprocess.run([str(self.bindir / "pg_isready"), "-q", "-h", str(self.socket_dir), "-p",
                               str(self.port), "-t", "1"], capture_output=True, timeout=10, check=False)
        return done.returncode == 0

    def stop(self, timeout: float = 10) -> None:
        """Fast shutdown (SIGINT: sessions are ended, not waited for), then the usual stop."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGCONT)
                os.kill(proc.pid, signal.SIGINT)
                proc.wait(timeout)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        super().stop(timeout)

    def sql(self, text: str, dbname: str = "postgres", timeout: float = 120.0) -> str:
        """Run SQL as the superuser over the socket; the unaligned, tuples-only output."""
        argv = ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                "-d", f"{self.conninfo(dbname)} connect_timeout={CONNECT_TIMEOUT}"]
        done = subprocess.run(argv, input=text, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"psql failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        return done.stdout
