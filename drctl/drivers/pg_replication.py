"""PostgreSQL streaming replication, the database half of a failover: how far a hot standby is
behind, fencing the old primary, promoting the standby, proving it takes writes, and putting the
old primary back as a standby of the new one (``pg_rewind`` when their timelines diverged).

- **SQL** goes through ``psql`` on drctl's machine over TCP, like the integrity driver's local
  mode: ``-X -v ON_ERROR_STOP=1``, libpq's ``connect_timeout`` in the connection string, a
  ``statement_timeout`` and the output settings pinned in every session, and a hard deadline on
  the whole call (psql is killed when it passes). A server that does not answer (refused, timed
  out, paused, shutting down) raises ``DatabaseUnreachableError``, anything else
  ``DatabaseError``. Passwords come from an environment variable (``password_env``) or a file
  (``password_file``, its first line), handed to psql as ``PGPASSWORD`` in its environment; with
  neither, libpq reads a pgpass file (``passfile``, else ``PGPASSFILE`` / ``~/.pgpass``). A
  password never appears in argv, in a connection string or in an error message.
- **Lag** (``replica_status``) is read from the standby itself: ``pg_last_wal_receive_lsn``,
  ``pg_last_wal_replay_lsn``, ``pg_last_xact_replay_timestamp``, and the primary's
  ``pg_current_wal_lsn`` when it answers (read first, so WAL the primary writes meanwhile is not
  counted against the standby). Bytes behind = primary's LSN (or, without the primary, the WAL
  received) minus the WAL replayed; seconds behind = 0 when nothing is left to replay, else the
  standby's clock minus the commit time of the last transaction it replayed (the usual measure;
  clock skew between the hosts adds to it). ``rpo_verdict`` compares the seconds with an RPO.
- **Fence** (``fence_primary``): ``ALTER SYSTEM SET default_transaction_read_only = on`` and a
  reload; once a new session sees it, every other client session is terminated and waited for
  (so no transaction commits later), then ``pg_switch_wal()`` flushes the WAL and the flush LSN
  is the final LSN a standby must replay. Replication connections are left alone. A primary that
  does not answer is reported *not fenced*; it is never an exception. Sessions that explicitly
  start ``READ WRITE`` transactions are not stopped by this: a hard fence is a command (pg_hba,
  a firewall, stopping the server) run through the traffic ``deactivate`` commands.
- **Promote** (``promote``): ``pg_promote(wait => true, wait_seconds => N)``, idempotent; a
  read-only fence the standby inherited in ``postgresql.auto.conf`` is reset. ``prove_writable``
  then writes and reads back a row of ``drctl.failover_probe`` (schema and table created when
  missing; a schema of its own keeps it out of the tables integrity targets compare).
- **Re-attach** (``reattach_as_standby``) acts on the old primary's host through a command
  runner, ``run(argv, timeout) -> (rc, stdout, stderr)``: over SSH (``ssh_runner``) or locally
  (``local_runner``). It stops the server, runs ``pg_rewind --source-server`` (which rewinds only
  when the timelines diverged, and says so), keeps the host's configuration files (pg_rewind
  would copy the source's), writes ``standby.signal`` and ``primary_conninfo``, starts the
  server and waits until it streams. Every command runs under coreutils ``timeout`` on the host.
  The host's own credentials for the new primary come from a pgpass file there (``passfile``).
- ``observe`` reads every server's role (primary / standby / down) at once; ``failover_plan``
  and ``failback_plan`` describe the steps, pure.

Every function is bounded by its ``timeout``; the waits also stop within a second of a
``cancel`` event being set (``AbortedError``). Needs PostgreSQL 14 or later on the servers
(``pg_terminate_backend`` with a wait, ``pg_get_wal_replay_pause_state``).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shlex
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from drctl.drivers import psql
from drctl.errors import AbortedError, ConfigError, DatabaseError, DatabaseUnreachableError, DriverError

if TYPE_CHECKING:
    from drctl.drivers.ssh import SSHPool
    from drctl.model.integrity import PostgresSite

APPLICATION_NAME = "drctl-failover"
PROBE_TABLE = "drctl.failover_probe"
DEFAULT_BINDIR = "/usr/lib/postgresql/15/bin"
#: configuration files pg_rewind would overwrite with the source's copies: kept as they were
PRESERVED_FILES = ("postgresql.conf", "postgresql.auto.conf", "pg_hba.conf", "pg_ident.conf")
_SLICE = 0.1  # how often a running psql checks the deadline and the cancel event
_DOWN = re.compile(psql.UNREACHABLE.pattern + r"|not yet accepting connections|in recovery mode|network is unreachable|"
                   r"host is down|could not receive data from server", re.I)
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.,:/@%+=~-]+$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# === LSNs ===========================================================================================


def parse_lsn(text: str) -> int:
    """``'16/B374D848'`` -> its byte position."""
    hi, sep, lo = text.strip().partition("/")
    if not sep:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(hi, 16) << 32) | int(lo, 16)


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def _lsn(text: Any) -> int | None:
    return parse_lsn(text) if isinstance(text, str) and text else None


def _timeline(walfile: Any) -> int | None:
    return int(walfile[:8], 16) if isinstance(walfile, str) and len(walfile) >= 8 else None


# === endpoints and running SQL =====================================================================


@dataclass(frozen=True)
class PgEndpoint:
    """How drctl's machine reaches one PostgreSQL server over TCP.

    The password comes from ``password_env`` (an environment variable's name) or
    ``password_file`` (a file whose first line it is), at most one of them; with neither, libpq
    reads a pgpass file: ``passfile`` if given, else ``PGPASSFILE`` or ``~/.pgpass``."""

    host: str
    port: int = 5432
    dbname: str = "postgres"
    user: str = "postgres"
    password_env: str | None = None
    password_file: Path | None = None
    passfile: Path | None = None
    connect_timeout: int = 5
    psql: tuple[str, ...] = ("psql",)
    name: str | None = None

    def __post_init__(self) -> None:
        for what, value in (("host", self.host), ("dbname", self.dbname), ("user", self.user)):
            if not value or not _SAFE_VALUE.match(value):
                raise ConfigError(f"{self.label}: {what} {value!r} is empty or holds characters other than "
                                  "letters, digits and _.,:/@%+=~-")
        if not 0 < self.port < 65536:
            raise ConfigError(f"{self.label}: port {self.port} is not between 1 and 65535")
        if not 1 <= self.connect_timeout <= 300:
            raise ConfigError(f"{self.label}: connect_timeout {self.connect_timeout} is not between 1 and 300 s")
        if self.password_env is not None and self.password_file is not None:
            raise ConfigError(f"{self.label}: give at most one of password_env and password_file")
        if self.passfile is not None and not _SAFE_VALUE.match(str(self.passfile)):
            raise ConfigError(f"{self.label}: passfile path {str(self.passfile)!r} holds unusual characters")
        if not self.psql or not self.psql[0]:
            raise ConfigError(f"{self.label}: psql: the program to run is empty")

    @property
    def label(self) -> str:
        return self.name or f"{self.host}:{self.port}"

    def conninfo(self, application_name: str = APPLICATION_NAME) -> str:
        """The libpq connection string, never with a password."""
        parts = [f"host={self.host}", f"port={self.port}", f"dbname={self.dbname}", f"user={self.user}",
                 f"connect_timeout={max(2, self.connect_timeout)}", f"application_name={application_name}"]
        if self.passfile is not None:
            parts.append(f"passfile={self.passfile}")
        return " ".join(parts)

    def password(self) -> str | None:
        """The password from the environment or the file, or None (libpq's pgpass). Raises
        ConfigError when the source is missing or unreadable, without the value."""
        if self.password_env is not None:
            if self.password_env not in os.environ:
                raise ConfigError(f"{self.label}: environment variable {self.password_env} (password_env) is not set")
            pw = os.environ[self.password_env]
        elif self.password_file is not None:
            path = self.password_file.expanduser()
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
                raise ConfigError(f"{self.label}: cannot read the password file {path}: {reason}") from None
            pw = text.splitlines()[0] if text else ""
        else:
            return None
        if "\n" in pw or "\r" in pw or "\0" in pw:
            raise ConfigError(f"{self.label}: the password contains a line break or NUL")
        return pw


def psql_argv(endpoint: PgEndpoint, application_name: str = APPLICATION_NAME) -> list[str]:
    """The psql command line for ``endpoint`` (what the driver runs; it never holds a password)."""
    return [*endpoint.psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", endpoint.conninfo(application_name)]


def _preamble(timeout_s: float) -> str:
    ms = max(1000, int(timeout_s * 1000))
    return "\n".join([
        f"SET statement_timeout = {ms};", f"SET lock_timeout = {ms};",
        f"SET idle_in_transaction_session_timeout = {ms};",
        "SET TimeZone = 'UTC';", "SET DateStyle = 'ISO, YMD';", "SET search_path = pg_catalog, pg_temp;",
        "SET client_min_messages = warning;", "SET extra_float_digits = 3;", ""])


def _scrub(text: str, password: str | None) -> str:
    return text.replace(password, "***") if password else text


def run_sql(endpoint: PgEndpoint, sql: str, *, timeout: float, cancel: threading.Event | None = None,
            what: str = "psql") -> list[Any]:
    """Run ``sql`` (after the pinned settings); every non-empty output line is parsed as JSON.

    Bounded by ``timeout`` (psql is killed past it: ``DatabaseUnreachableError``); stops within
    0.1 s of ``cancel`` being set (``AbortedError``)."""
    password = endpoint.password()
    argv = psql_argv(endpoint)
    env = dict(os.environ)
    env.pop("PGPASSWORD", None)
    if password is not None:
        env["PGPASSWORD"] = password
    data: bytes | None = (_preamble(timeout) + sql).encode("utf-8")
    deadline = time.monotonic() + timeout
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                start_new_session=True)
    except FileNotFoundError:
        raise DatabaseError(f"{endpoint.label}: {endpoint.psql[0]} is not installed on this machine") from None
    try:
        while True:
            if cancel is not None and cancel.is_set():
                raise AbortedError(f"{endpoint.label}: {what} cancelled")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DatabaseUnreachableError(f"{endpoint.label}: {what}: no answer within {timeout:g}s")
            try:
                out, err = proc.communicate(data, timeout=min(_SLICE, remaining))
                break
            except subprocess.TimeoutExpired:
                data = None  # sent once; communicate() carries on with the rest
    finally:
        if proc.poll() is None:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=5)
    def scrub(text: str) -> str:
        return _scrub(text, password)

    if proc.returncode != 0:
        text = psql.error_text(err, proc.returncode, scrub)
        if proc.returncode == 2 and _DOWN.search(text):
            raise DatabaseUnreachableError(f"{endpoint.label}: the database does not answer: {text}")
        raise DatabaseError(f"{endpoint.label}: {what} failed: {text}")
    return psql.json_rows(endpoint.label, out, scrub)


def _one(rows: list[Any], endpoint: PgEndpoint, what: str) -> dict[str, Any]:
    for row in reversed(rows):
        if isinstance(row, dict):
            return row
    raise DatabaseError(f"{endpoint.label}: {what}: no answer row from psql")


def _lit(value: str) -> str:
    if "\0" in value:
        raise ValueError("SQL text cannot contain a NUL character")
    return "'" + value.replace("'", "''") + "'"


def _qualified(table: str) -> tuple[str, str]:
    schema, _, name = table.rpartition(".")
    schema = schema or "public"
    if not _IDENT.match(schema) or not _IDENT.match(name):
        raise ConfigError(f"probe table {table!r}: expected SCHEMA.TABLE of plain identifiers")
    return schema, name


def integrity_site(endpoint: PgEndpoint) -> PostgresSite:
    """The endpoint as the integrity driver's site (psql from drctl's machine), so the table
    checksums of ``drctl verify`` run against a promoted server."""
    from drctl.model.integrity import PostgresSite

    conninfo = f"host={endpoint.host} port={endpoint.port} dbname={endpoint.dbname} user={endpoint.user}"
    if endpoint.passfile is not None:
        conninfo += f" passfile={endpoint.passfile}"
    return PostgresSite.model_validate({
        "conninfo": conninfo, "password_env": endpoint.password_env, "password_file": endpoint.password_file,
        "psql": list(endpoint.psql), "connect_timeout": endpoint.connect_timeout})


def _bounded(deadline: float, endpoint: PgEndpoint, what: str) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise DatabaseError(f"{endpoint.label}: {what}: out of time")
    return remaining


def _pause(cancel: threading.Event | None, seconds: float) -> None:
    if cancel is not None:
        cancel.wait(seconds)
    else:
        time.sleep(seconds)


# === lag and the RPO gate ===========================================================================


@dataclass(frozen=True)
class ReplicaStatus:
    """What a standby reports about itself (and the primary's LSN when it answered)."""

    standby: str
    in_recovery: bool
    receive_lsn: str | None
    replay_lsn: str | None
    replay_lag_bytes: int | None
    replay_lag_s: float | None
    primary_lsn: str | None
    timeline: int | None
    last_replay_at: float | None = None  # epoch seconds: commit time of the last transaction replayed
    replay_paused: bool = False
    receiver_status: str | None = None  # streaming, waiting, ... (None: no WAL receiver running)
    upstream: str | None = None  # host:port the WAL receiver streams from
    last_contact_s: float | None = None  # since the WAL receiver last heard from its primary
    primary_error: str | None = None  # why primary_lsn is missing

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_STANDBY_SQL = """SELECT json_build_object(
  'in_recovery', pg_is_in_recovery(),
  'receive_lsn', pg_last_wal_receive_lsn()::text,
  'replay_lsn', pg_last_wal_replay_lsn()::text,
  'replay_ts', extract(epoch FROM pg_last_xact_replay_timestamp()),
  'now', extract(epoch FROM clock_timestamp()),
  'paused', CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() <> 'not paused' ELSE false END,
  'walfile', CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END,
  'ckpt_tli', (SELECT timeline_id FROM pg_control_checkpoint()),
  'receiver', (SELECT json_build_object('status', status, 'tli', received_tli, 'host', sender_host,
                                        'port', sender_port, 'last_msg', extract(epoch FROM last_msg_receipt_time))
               FROM pg_stat_wal_receiver)
)::text;
"""

_PRIMARY_SQL = """SELECT json_build_object(
  'in_recovery', pg_is_in_recovery(),
  'lsn', CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END
)::text;
"""


def lag_from(standby: str, row: Mapping[str, Any], primary_lsn: str | None,
             primary_error: str | None = None) -> ReplicaStatus:
    """A ReplicaStatus from the standby's answer to the status query (pure)."""
    receiver = row.get("receiver") or {}
    in_recovery = bool(row.get("in_recovery"))
    receive, replay = _lsn(row.get("receive_lsn")), _lsn(row.get("replay_lsn"))
    ref = _lsn(primary_lsn) if primary_lsn is not None else receive
    now = float(row["now"])
    replay_ts = row.get("replay_ts")
    lag_bytes: int | None = None
    lag_s: float | None = None
    if in_recovery and replay is not None and ref is not None:
        lag_bytes = max(0, ref - replay)
        if lag_bytes == 0:
            lag_s = 0.0
        elif replay_ts is not None:
            lag_s = max(0.0, now - float(replay_ts))
    timeline = receiver.get("tli") if in_recovery else _timeline(row.get("walfile"))
    if timeline is None:
        timeline = row.get("ckpt_tli")
    last_msg = receiver.get("last_msg")
    upstream = f"{receiver['host']}:{receiver['port']}" if receiver.get("host") else None
    return ReplicaStatus(
        standby=standby, in_recovery=in_recovery, receive_lsn=row.get("receive_lsn"), replay_lsn=row.get("replay_lsn"),
        replay_lag_bytes=lag_bytes, replay_lag_s=lag_s, primary_lsn=primary_lsn,
        timeline=int(timeline) if timeline is not None else None,
        last_replay_at=float(replay_ts) if replay_ts is not None else None, replay_paused=bool(row.get("paused")),
        receiver_status=receiver.get("status"), upstream=upstream,
        last_contact_s=max(0.0, now - float(last_msg)) if last_msg is not None else None,
        primary_error=primary_error)


def replica_status(standby: PgEndpoint, primary: PgEndpoint | None = None, *, timeout: float = 15.0) -> ReplicaStatus:
    """How far ``standby`` is behind: the primary's LSN first (when ``primary`` is given and
    answers: a primary that does not answer within its ``connect_timeout`` is noted, not raised),
    then the standby's own view. The standby must answer (``DatabaseUnreachableError``)."""
    deadline = time.monotonic() + timeout
    primary_lsn: str | None = None
    primary_error: str | None = None
    if primary is not None:
        try:
            # a one-row query: a primary that takes the connection and then hangs is given up
            # soon, so the standby keeps the rest of the budget
            budget = min(_bounded(deadline, primary, "primary LSN") / 2, primary.connect_timeout + 3.0)
            p = _one(run_sql(primary, _PRIMARY_SQL, timeout=budget, what="reading the primary's LSN"),
                     primary, "primary LSN")
            if p.get("in_recovery"):
                primary_error = f"{primary.label} is in recovery (not a primary)"
            else:
                primary_lsn = p.get("lsn")
        except DatabaseUnreachableError as e:
            primary_error = e.message
    row = _one(run_sql(standby, _STANDBY_SQL, timeout=_bounded(deadline, standby, "standby status"),
                       what="reading the replication status"), standby, "replication status")
    return lag_from(standby.label, row, primary_lsn, primary_error)


def rpo_verdict(status: ReplicaStatus, rpo_s: float | None) -> tuple[bool, str]:
    """Whether promoting the standby now keeps within the RPO, and why (pure). Refused when the
    server is not a standby, or its lag in seconds cannot be told."""
    who = status.standby
    if not status.in_recovery:
        return False, f"{who} is not a standby (not in recovery): already promoted, or never a standby"
    against = "the primary" if status.primary_lsn is not None else (
        f"the WAL it received (the primary's LSN unknown: {status.primary_error})" if status.primary_error
        else "the WAL it received")
    extra = "; replay is paused" if status.replay_paused else ""
    if status.receiver_status not in (None, "streaming"):
        extra += f"; WAL receiver {status.receiver_status}"
    if status.replay_lag_s is None:
        what = ("nothing replayed yet" if status.last_replay_at is None else "no WAL position to compare with")
        return False, (f"{who}: replay lag unknown ({what}; {status.replay_lag_bytes} bytes behind {against})"
                       f"{extra}")
    text = (f"{who}: replay lag {status.replay_lag_s:.1f}s, {status.replay_lag_bytes} bytes behind {against}"
            f"{extra}")
    if rpo_s is None:
        return True, text + "; no rpo set"
    if status.replay_lag_s > rpo_s:
        return False, text + f": over the rpo of {rpo_s:g}s"
    return True, text + f": within the rpo of {rpo_s:g}s"


# === fence ==========================================================================================


@dataclass(frozen=True)
class FenceResult:
    """What fencing the old primary achieved. ``fenced`` False with ``reachable`` False: it did
    not answer (disaster mode carries on, and says so)."""

    primary: str
    fenced: bool
    reachable: bool
    final_lsn: str | None = None  # everything committed there is at or before this LSN
    timeline: int | None = None
    sessions_terminated: int = 0
    sessions_left: int = 0
    was_standby: bool = False
    detail: str = ""
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_FENCE_SET = """SELECT pg_is_in_recovery() AS drctl_in_recovery \\gset
\\if :drctl_in_recovery
SELECT json_build_object('in_recovery', true, 'lsn', pg_last_wal_replay_lsn()::text)::text;
\\else
ALTER SYSTEM SET default_transaction_read_only = on;
SELECT json_build_object('in_recovery', false, 'reloaded', pg_reload_conf())::text;
\\endif
"""

_FENCE_DRAIN = """SELECT current_setting('default_transaction_read_only') = 'on' AS drctl_ro \\gset
\\if :drctl_ro
WITH t AS (SELECT pg_terminate_backend(pid, {wait_ms}) AS ended FROM pg_stat_activity
           WHERE pid <> pg_backend_pid() AND backend_type = 'client backend')
SELECT json_build_object('ended', count(*) FILTER (WHERE ended),
                         'left', count(*) FILTER (WHERE NOT ended))::text FROM t;
SELECT json_build_object('switch', pg_switch_wal()::text)::text;
SELECT json_build_object('ro', true, 'lsn', pg_current_wal_flush_lsn()::text,
                         'walfile', pg_walfile_name(pg_current_wal_lsn()))::text;
\\else
SELECT json_build_object('ro', false)::text;
\\endif
"""


def fence_primary(primary: PgEndpoint, *, timeout: float = 30.0) -> FenceResult:
    """Stop the old primary's writes and return its final LSN. Idempotent. A primary that does
    not answer gives ``fenced=False`` (never raises for that); other errors (authentication,
    permissions) raise ``DatabaseError``."""
    started = time.monotonic()
    deadline = started + timeout

    def done(**kw: Any) -> FenceResult:
        return FenceResult(primary=primary.label, elapsed_s=round(time.monotonic() - started, 3), **kw)

    try:
        first = _one(run_sql(primary, _FENCE_SET, timeout=_bounded(deadline, primary, "fencing"),
                             what="setting default_transaction_read_only"), primary, "fencing")
    except DatabaseUnreachableError as e:
        return done(fenced=False, reachable=False, detail=f"NOT fenced: {e.message}")
    if first.get("in_recovery"):
        return done(fenced=True, reachable=True, was_standby=True, final_lsn=first.get("lsn"),
                    detail=f"{primary.label} is a standby (in recovery): it takes no writes")
    wait_ms = max(1000, int(min(10.0, timeout / 3) * 1000))
    settle = min(deadline, time.monotonic() + 5.0)  # a reload shows in new sessions within milliseconds
    delay = 0.05
    while True:
        try:
            row = run_sql(primary, _FENCE_DRAIN.format(wait_ms=wait_ms),
                          timeout=_bounded(deadline, primary, "fencing"), what="ending client sessions")
        except DatabaseUnreachableError as e:
            return done(fenced=False, reachable=False,
                        detail=f"NOT fenced: it stopped answering after default_transaction_read_only was set: "
                               f"{e.message}")
        last = _one(row, primary, "fencing")
        if last.get("ro"):
            break
        if time.monotonic() + delay >= settle:  # the reload does not show in new sessions
            return done(fenced=False, reachable=True,
                        detail="NOT fenced: default_transaction_read_only = on does not show in new sessions "
                               "(overridden for the database or role?)")
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
    counts = next((r for r in row if isinstance(r, dict) and "ended" in r), {"ended": 0, "left": 0})
    ended, left = int(counts["ended"]), int(counts["left"])
    text = f"default_transaction_read_only = on; {ended} client session(s) ended; WAL switched, final LSN {last['lsn']}"
    if left:
        return done(fenced=False, reachable=True, final_lsn=last["lsn"], timeline=_timeline(last.get("walfile")),
                    sessions_terminated=ended, sessions_left=left,
                    detail=f"NOT fenced: {left} client session(s) did not end within {wait_ms / 1000:g}s; {text}")
    return done(fenced=True, reachable=True, final_lsn=last["lsn"], timeline=_timeline(last.get("walfile")),
                sessions_terminated=ended, detail=text)


# === waiting for replay =============================================================================


@dataclass(frozen=True)
class Replayed:
    standby: str
    target_lsn: str
    replay_lsn: str
    waited_s: float


_REPLAY_SQL = """SELECT json_build_object('in_recovery', pg_is_in_recovery(), 'replay', pg_last_wal_replay_lsn()::text,
  'receive', pg_last_wal_receive_lsn()::text,
  'paused', CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() <> 'not paused' ELSE false END
)::text;
"""


def wait_replayed(standby: PgEndpoint, lsn: str, *, timeout: float = 60.0,
                  cancel: threading.Event | None = None) -> Replayed:
    """Wait until ``standby`` has replayed the WAL up to ``lsn``. Raises ``DatabaseError`` past
    ``timeout`` (or when it was promoted short of ``lsn``), ``AbortedError`` within a second of
    ``cancel`` being set. A standby that does not answer is asked again until the deadline
    (``DatabaseUnreachableError`` when it never answered)."""
    target = parse_lsn(lsn)
    started = time.monotonic()
    deadline = started + timeout
    delay = 0.02
    last: dict[str, Any] = {}
    last_error: DatabaseUnreachableError | None = None
    while True:
        if cancel is not None and cancel.is_set():
            raise AbortedError(f"{standby.label}: waiting for replay up to {lsn} cancelled")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            row = _one(run_sql(standby, _REPLAY_SQL, timeout=remaining, cancel=cancel, what="reading the replay LSN"),
                       standby, "replay LSN")
        except DatabaseUnreachableError as e:
            last_error = e
            _pause(cancel, min(0.25, max(0.0, deadline - time.monotonic())))
            continue
        last, last_error = row, None
        replay = _lsn(last.get("replay"))
        if replay is not None and replay >= target:
            return Replayed(standby.label, lsn, last["replay"], round(time.monotonic() - started, 3))
        if not last.get("in_recovery"):
            raise DatabaseError(f"{standby.label}: promoted at {last.get('replay')}, short of {lsn}: the WAL "
                                "between them was never replayed there")
        _pause(cancel, min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.25)
    if not last:
        raise DatabaseUnreachableError(f"{standby.label}: did not replay up to {lsn} within {timeout:g}s: "
                                       f"{last_error.message if last_error else 'no answer'}")
    paused = "; replay is paused there" if last.get("paused") else ""
    raise DatabaseError(f"{standby.label}: did not replay up to {lsn} within {timeout:g}s (replayed "
                        f"{last.get('replay')}, received {last.get('receive')}){paused}")


# === promote and prove ==============================================================================


@dataclass(frozen=True)
class PromoteResult:
    standby: str
    promoted: bool  # it is a primary now
    already_primary: bool
    timeline: int | None
    lsn: str | None
    fence_cleared: bool = False
    detail: str = ""
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_PROMOTE_SQL = """SELECT pg_is_in_recovery() AS drctl_in_recovery \\gset
\\if :drctl_in_recovery
SELECT json_build_object('promoted', pg_promote(true, {wait_s}), 'already', false)::text;
\\else
SELECT json_build_object('promoted', true, 'already', true)::text;
\\endif
"""

_AFTER_PROMOTE_SQL = """SELECT json_build_object('in_recovery', pg_is_in_recovery(),
  'lsn', CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END,
  'walfile', CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END,
  'ro', current_setting('default_transaction_read_only'),
  'ro_source', (SELECT source FROM pg_settings WHERE name = 'default_transaction_read_only'),
  'ro_file', (SELECT sourcefile FROM pg_settings WHERE name = 'default_transaction_read_only'))::text;
"""


def promote(standby: PgEndpoint, *, timeout: float = 60.0) -> PromoteResult:
    """Promote ``standby`` with ``pg_promote(wait => true)``; a server that already is a primary is
    left as it is (``already_primary``). A read-only fence it carries in ``postgresql.auto.conf``
    (set by ``fence_primary`` when it was a primary before) is reset, so clients can write."""
    started = time.monotonic()
    deadline = started + timeout
    wait_s = max(1, int(timeout - 3))
    first = _one(run_sql(standby, _PROMOTE_SQL.format(wait_s=wait_s), timeout=_bounded(deadline, standby, "promote"),
                         what="pg_promote"), standby, "promote")
    already = bool(first.get("already"))
    if not first.get("promoted"):
        raise DatabaseError(f"{standby.label}: not promoted within {wait_s}s (pg_promote returned false)")
    cleared = False
    notes: list[str] = []
    while True:
        state = _one(run_sql(standby, _AFTER_PROMOTE_SQL, timeout=_bounded(deadline, standby, "promote"),
                             what="reading the promoted state"), standby, "promote")
        if state.get("in_recovery"):
            raise DatabaseError(f"{standby.label}: pg_promote returned, but the server is still in recovery")
        if state.get("ro") != "on":
            break
        auto_conf = (state.get("ro_source") == "configuration file"
                     and str(state.get("ro_file") or "").endswith("postgresql.auto.conf"))
        if auto_conf and not cleared:
            run_sql(standby, "ALTER SYSTEM RESET default_transaction_read_only;\n"
                             "SELECT json_build_object('reloaded', pg_reload_conf())::text;\n",
                    timeout=_bounded(deadline, standby, "promote"), what="resetting default_transaction_read_only")
            cleared = True
            continue
        if not auto_conf:
            notes.append(f"default_transaction_read_only is on ({state.get('ro_source')} "
                         f"{state.get('ro_file') or ''}".rstrip() + "): clients cannot write")
            break
        if time.monotonic() + 0.05 >= deadline:
            notes.append("default_transaction_read_only was reset but new sessions still see it on")
            break
        time.sleep(0.05)
    timeline = _timeline(state.get("walfile"))
    detail = (f"already a primary (timeline {timeline})" if already else f"promoted: timeline {timeline}")
    if cleared:
        detail += "; reset the read-only fence it carried"
    detail = "; ".join([detail, *notes])
    return PromoteResult(standby=standby.label, promoted=True, already_primary=already, timeline=timeline,
                         lsn=state.get("lsn"), fence_cleared=cleared, detail=detail,
                         elapsed_s=round(time.monotonic() - started, 3))


@dataclass(frozen=True)
class WriteProof:
    server: str
    table: str
    row_id: int
    token: str
    synchronous_standby_names: str
    elapsed_s: float
    detail: str = ""


def prove_writable(endpoint: PgEndpoint, *, timeout: float = 30.0, table: str = PROBE_TABLE) -> WriteProof:
    """Write a row into ``table`` (schema and table created when missing) in a transaction, read
    it back in it, commit, and read it again from a new session. Raises ``DatabaseError`` when the
    server does not take the write. The commit does not wait for synchronous standbys
    (``synchronous_commit = local``): that is noted in ``detail`` instead of hanging."""
    started = time.monotonic()
    deadline = started + timeout
    schema, name = _qualified(table)
    qualified = f'"{schema}"."{name}"'
    token = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(6)}"
    sql = f"""SET synchronous_commit = local;
CREATE SCHEMA IF NOT EXISTS "{schema}";
CREATE TABLE IF NOT EXISTS {qualified} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, token text NOT NULL,
  written_at timestamptz NOT NULL DEFAULT clock_timestamp(), written_by text NOT NULL DEFAULT current_user);
BEGIN;
INSERT INTO {qualified} (token) VALUES ({_lit(token)});
SELECT json_build_object('id', id, 'token', token, 'sync', current_setting('synchronous_standby_names'))::text
  FROM {qualified} WHERE token = {_lit(token)};
DELETE FROM {qualified} WHERE id < (SELECT max(id) - 99 FROM {qualified});
COMMIT;
"""  # noqa: S608 (identifiers checked by _qualified, values quoted by _lit)
    rows = run_sql(endpoint, sql, timeout=_bounded(deadline, endpoint, "write probe"), what="the write probe")
    row = _one(rows, endpoint, "write probe")
    if row.get("token") != token:
        raise DatabaseError(f"{endpoint.label}: the probe row written to {table} did not read back")
    check = _one(run_sql(endpoint, f"SELECT json_build_object('n', count(*))::text FROM {qualified} "  # noqa: S608
                                   f"WHERE id = {int(row['id'])} AND token = {_lit(token)};\n",
                         timeout=_bounded(deadline, endpoint, "write probe"), what="reading the probe back"),
                 endpoint, "write probe")
    if check.get("n") != 1:
        raise DatabaseError(f"{endpoint.label}: the probe row committed to {table} is not visible to a new session")
    sync = str(row.get("sync") or "")
    detail = (f"synchronous_standby_names = {sync!r}: clients with synchronous_commit on wait for such a standby"
              if sync else "")
    return WriteProof(endpoint.label, f"{schema}.{name}", int(row["id"]), token, sync,
                      round(time.monotonic() - started, 3), detail)


# === observe ========================================================================================


Role = Literal["primary", "standby", "down", "unknown"]


@dataclass(frozen=True)
class NodeState:
    """One server as it answered: ``role`` primary / standby / down (no answer) / unknown (it
    answered with an error, e.g. authentication)."""

    name: str
    role: Role
    timeline: int | None = None
    lsn: str | None = None  # primary: current WAL LSN; standby: replayed
    read_only: bool = False  # default_transaction_read_only (a fenced primary)
    upstream: str | None = None  # standby: host:port it streams from
    receiver_status: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_OBSERVE_SQL = """SELECT json_build_object('in_recovery', pg_is_in_recovery(),
  'lsn', (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text,
  'walfile', CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END,
  'ckpt_tli', (SELECT timeline_id FROM pg_control_checkpoint()),
  'ro', current_setting('default_transaction_read_only'),
  'receiver', (SELECT json_build_object('status', status, 'tli', received_tli, 'host', sender_host, 'port', sender_port)
               FROM pg_stat_wal_receiver))::text;
"""


def observe_one(name: str, endpoint: PgEndpoint, *, timeout: float = 10.0) -> NodeState:
    try:
        row = _one(run_sql(endpoint, _OBSERVE_SQL, timeout=timeout, what="reading its role"), endpoint, "role")
    except DatabaseUnreachableError as e:
        return NodeState(name, "down", error=e.message)
    except DatabaseError as e:
        return NodeState(name, "unknown", error=e.message)
    receiver = row.get("receiver") or {}
    if row.get("in_recovery"):
        tli = receiver.get("tli") or row.get("ckpt_tli")
        upstream = f"{receiver['host']}:{receiver['port']}" if receiver.get("host") else None
        return NodeState(name, "standby", int(tli) if tli else None, row.get("lsn"), True, upstream,
                         receiver.get("status"))
    return NodeState(name, "primary", _timeline(row.get("walfile")), row.get("lsn"), row.get("ro") == "on")


def observe(endpoints: Mapping[str, PgEndpoint], *, timeout: float = 10.0) -> dict[str, NodeState]:
    """Every server's role, read at the same time; each bounded by ``timeout``."""
    if not endpoints:
        return {}
    with ThreadPoolExecutor(max_workers=min(16, len(endpoints)), thread_name_prefix="pg-observe") as ex:
        futures = {n: ex.submit(observe_one, n, ep, timeout=timeout) for n, ep in endpoints.items()}
        return {n: f.result() for n, f in futures.items()}


def writable_primaries(states: Mapping[str, NodeState]) -> list[str]:
    """The servers that answer as primaries without the read-only fence: more than one is a
    split brain."""
    return sorted(n for n, s in states.items() if s.role == "primary" and not s.read_only)


# === re-attaching the old primary ===================================================================


class Runner(Protocol):
    """Runs a command on the database host: ``(exit status, stdout, stderr)``. Raises a
    ``DrctlError`` (e.g. ``HostUnreachableError``) when the host cannot be reached."""

    def __call__(self, argv: Sequence[str], timeout: float) -> tuple[int, str, str]: ...


def ssh_runner(pool: SSHPool, host: str) -> Runner:
    """A Runner on ``host`` through drctl's SSH pool."""

    def run(argv: Sequence[str], timeout: float) -> tuple[int, str, str]:
        res = pool.run(host, list(argv), timeout=timeout)
        return res.rc, res.stdout.decode("utf-8", "replace"), res.stderr.decode("utf-8", "replace")

    return run


def local_runner(prefix: Sequence[str] = (), *, env: Mapping[str, str] | None = None, cwd: str = "/") -> Runner:
    """A Runner on drctl's own machine, each command after ``prefix`` (e.g. ``runuser -u postgres --``)."""

    def run(argv: Sequence[str], timeout: float) -> tuple[int, str, str]:
        try:
            done = subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=timeout, check=False,
                                  cwd=cwd, env=dict(env) if env is not None else None, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise DriverError(f"{(list(prefix) or list(argv))[0]} is not installed on this machine") from None
        except subprocess.TimeoutExpired:
            raise DriverError(f"{shlex.join(argv)} did not finish within {timeout:g}s") from None
        return done.returncode, done.stdout, done.stderr

    return run


@dataclass(frozen=True)
class ReattachConfig:
    """The old primary's side: where its data directory is, how to stop and start it, and how it
    reaches the new primary (its own pgpass file there holds the password, if one is needed).

    ``start_argv`` / ``stop_argv`` replace the default ``pg_ctl`` commands (e.g. ``systemctl
    start postgresql@15-main``). ``rewind``: ``auto`` runs ``pg_rewind``, which rewinds only when
    the timelines diverged; ``never`` skips it."""

    datadir: str
    bindir: str = DEFAULT_BINDIR
    port: int | None = None
    name: str = "old-primary"
    upstream_host: str | None = None  # the new primary as this host reaches it (default: its endpoint's host)
    upstream_port: int | None = None
    replication_user: str | None = None  # default: the new primary endpoint's user
    rewind_user: str | None = None
    passfile: str | None = None  # pgpass file on this host
    application_name: str | None = None  # default: name
    log_file: str | None = None  # pg_ctl start -l (default: drctl-pg_ctl.log beside the data directory)
    start_argv: tuple[str, ...] | None = None
    stop_argv: tuple[str, ...] | None = None
    command_prefix: tuple[str, ...] = ()  # to run as the server's user, e.g. (sudo, -n, -u, postgres, --)
    preserve: tuple[str, ...] = PRESERVED_FILES
    rewind: Literal["auto", "never"] = "auto"

    def __post_init__(self) -> None:
        if not self.datadir.startswith("/") or "\0" in self.datadir or "\n" in self.datadir:
            raise ConfigError(f"{self.name}: datadir must be an absolute path")
        for f in self.preserve:
            if "/" in f or f in ("", ".", ".."):
                raise ConfigError(f"{self.name}: preserve: {f!r} must be a file name in the data directory")
        for what, v in (("upstream_host", self.upstream_host), ("replication_user", self.replication_user),
                        ("rewind_user", self.rewind_user), ("passfile", self.passfile),
                        ("application_name", self.application_name)):
            if v is not None and not _SAFE_VALUE.match(v):
                raise ConfigError(f"{self.name}: {what} {v!r} holds characters other than letters, digits and "
                                  "_.,:/@%+=~-")

    def tool(self, name: str) -> str:
        return f"{self.bindir.rstrip('/')}/{name}"


@dataclass
class ReattachResult:
    server: str
    upstream: str
    already_attached: bool = False
    was_running: bool = False
    rewound: bool = False
    diverged_at: str | None = None  # LSN where the timelines parted (pg_rewind's word)
    streaming: bool | None = None  # None: not checked (no endpoint given)
    timeline: int | None = None
    steps: list[str] = field(default_factory=list)
    rewind_output: str = ""
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_REWIND_SCRIPT = r"""
set -u
d=$1; rewind=$2; src=$3; shift 3
keep=$(mktemp -d) || exit 90
trap 'rm -rf -- "$keep"' EXIT
for f in "$@"; do [ -f "$d/$f" ] && { cp -p -- "$d/$f" "$keep/$f" || exit 90; }; done
"$rewind" --target-pgdata="$d" --source-server="$src"
rc=$?
for f in "$@"; do [ -f "$keep/$f" ] && { cp -p -- "$keep/$f" "$d/$f" || exit 91; }; done
exit $rc
"""

_STANDBY_SCRIPT = r"""
set -u
d=$1; conninfo=$2
auto=$d/postgresql.auto.conf
tmp=$d/postgresql.auto.conf.drctl-tmp
{
  if [ -f "$auto" ]; then grep -v -E '^[[:space:]]*(primary_conninfo|primary_slot_name)[[:space:]]*=' "$auto"; fi
  printf "primary_conninfo = '%s'\n" "$conninfo"
} > "$tmp" || exit 91
chmod 600 "$tmp" && mv -f -- "$tmp" "$auto" || exit 91
: > "$d/standby.signal" || exit 91
rm -f -- "$d/recovery.signal"
"""


_CHECKPOINT_SQL = """SELECT pg_is_in_recovery() AS drctl_in_recovery \\gset
\\if :drctl_in_recovery
SELECT json_build_object('in_recovery', true)::text;
\\else
CHECKPOINT;
SELECT json_build_object('in_recovery', false, 'tli', (SELECT timeline_id FROM pg_control_checkpoint()))::text;
\\endif
"""


def _upstream(cfg: ReattachConfig, new_primary: PgEndpoint) -> tuple[str, int]:
    return cfg.upstream_host or new_primary.host, cfg.upstream_port or new_primary.port


def standby_conninfo(cfg: ReattachConfig, new_primary: PgEndpoint) -> str:
    """The ``primary_conninfo`` the old primary gets (no password: its pgpass file has it)."""
    host, port = _upstream(cfg, new_primary)
    parts = [f"host={host}", f"port={port}", f"user={cfg.replication_user or new_primary.user}",
             f"application_name={cfg.application_name or cfg.name}",
             f"connect_timeout={max(2, new_primary.connect_timeout)}"]
    if cfg.passfile:
        parts.append(f"passfile={cfg.passfile}")
    return " ".join(parts)


def rewind_source(cfg: ReattachConfig, new_primary: PgEndpoint) -> str:
    """``pg_rewind --source-server``: a superuser connection to the new primary (no password)."""
    host, port = _upstream(cfg, new_primary)
    parts = [f"host={host}", f"port={port}", f"user={cfg.rewind_user or new_primary.user}",
             f"dbname={new_primary.dbname}", f"connect_timeout={max(2, new_primary.connect_timeout)}",
             "application_name=drctl-rewind"]
    if cfg.passfile:
        parts.append(f"passfile={cfg.passfile}")
    return " ".join(parts)


def reattach_commands(cfg: ReattachConfig, new_primary: PgEndpoint, step_timeout: float) -> dict[str, list[str]]:
    """The commands ``reattach_as_standby`` runs on the old primary's host (pure)."""
    t = str(max(1, int(step_timeout)))
    data = cfg.datadir.rstrip("/") or "/"
    log = cfg.log_file or f"{os.path.dirname(data)}/drctl-pg_ctl.log"
    start = list(cfg.start_argv) if cfg.start_argv else [cfg.tool("pg_ctl"), "start", "-D", data, "-w", "-t", t,
                                                         "-l", log]
    if not cfg.start_argv and cfg.port is not None:
        start += ["-o", f"-p {int(cfg.port)}"]
    stop = list(cfg.stop_argv) if cfg.stop_argv else [cfg.tool("pg_ctl"), "stop", "-D", data, "-m", "fast", "-w",
                                                      "-t", t]
    return {
        "status": [cfg.tool("pg_ctl"), "status", "-D", data],
        "stop": stop,
        "rewind": ["sh", "-c", _REWIND_SCRIPT, "drctl-rewind", data, cfg.tool("pg_rewind"),
                   rewind_source(cfg, new_primary), *cfg.preserve],
        "standby": ["sh", "-c", _STANDBY_SCRIPT, "drctl-standby", data, standby_conninfo(cfg, new_primary)],
        "start": start,
    }


def on_host_argv(cfg: ReattachConfig, argv: Sequence[str], timeout: float) -> list[str]:
    """How a command runs on the host: after ``command_prefix``, in ``/`` (PostgreSQL's tools
    refuse to run in a directory their user cannot read, such as an SSH user's home), under
    coreutils ``timeout`` so a command past its time is killed there."""
    t = max(1, int(timeout))
    return [*cfg.command_prefix, "sh", "-c", 'cd / && exec "$@"', "drctl-cd", "timeout", "-k", "5", str(t), *argv]


def _on_host(run: Runner, cfg: ReattachConfig, argv: Sequence[str], timeout: float) -> tuple[int, str, str]:
    return run(on_host_argv(cfg, argv, timeout), max(1, int(timeout)) + 10)


def _tail(text: str, n: int = 1500) -> str:
    return text.strip()[-n:]


def reattach_as_standby(cfg: ReattachConfig, new_primary: PgEndpoint, run: Runner, *, timeout: float = 300.0,
                        old_endpoint: PgEndpoint | None = None,
                        cancel: threading.Event | None = None) -> ReattachResult:
    """Make the old primary a standby of ``new_primary``: stop it, ``pg_rewind`` from the new
    primary when its timeline diverged, write ``standby.signal`` + ``primary_conninfo``, start it.

    With ``old_endpoint`` (how drctl reaches the old server over SQL) a server already streaming
    from the new primary is left alone, and after the start the call waits until it streams
    (``DatabaseError`` if it does not within ``timeout``). Failed commands raise ``DriverError``
    with their output; an unreachable host raises what ``run`` raises. ``cancel`` is honoured
    between commands and within a second while waiting for streaming (a command that runs, such
    as pg_rewind, is not interrupted: it is bounded by ``timeout`` on the host)."""
    started = time.monotonic()
    deadline = started + timeout
    host, port = _upstream(cfg, new_primary)
    res = ReattachResult(server=cfg.name, upstream=f"{host}:{port}")

    def left() -> float:
        if cancel is not None and cancel.is_set():
            raise AbortedError(f"{cfg.name}: re-attaching as a standby cancelled")
        remaining = deadline - time.monotonic()
        if remaining <= 1:
            raise DriverError(f"{cfg.name}: re-attaching as a standby of {res.upstream} ran out of time "
                              f"({timeout:g}s); done so far: {'; '.join(res.steps) or 'nothing'}")
        return remaining

    def finish() -> ReattachResult:
        res.elapsed_s = round(time.monotonic() - started, 3)
        return res

    if old_endpoint is not None:
        state = observe_one(cfg.name, old_endpoint, timeout=min(left(), 10 + old_endpoint.connect_timeout))
        if (state.role == "standby" and state.receiver_status == "streaming" and state.upstream == res.upstream):
            res.already_attached, res.streaming, res.timeline = True, True, state.timeline
            res.steps.append(f"already a standby streaming from {res.upstream}: nothing to do")
            return finish()
    # the new primary must be one before the old is touched; pg_rewind reads the source's timeline
    # from its control file, which a recently promoted server updates only at its next checkpoint:
    # without one it would find "the same timeline" and rewind nothing
    sql = _CHECKPOINT_SQL if cfg.rewind == "auto" else _PRIMARY_SQL
    ck = _one(run_sql(new_primary, sql, timeout=min(left(), 120), what="checking the new primary (CHECKPOINT)"),
              new_primary, "checkpoint")
    if ck.get("in_recovery"):
        raise DatabaseError(f"{new_primary.label} is in recovery: not a primary to re-attach {cfg.name} to; "
                            f"nothing was changed on {cfg.name}")
    cmds = reattach_commands(cfg, new_primary, max(1.0, min(left() - 5, 120.0)))

    rc, out, err = _on_host(run, cfg, cmds["status"], min(left(), 30))
    if rc not in (0, 3):
        raise DriverError(f"{cfg.name}: pg_ctl status -D {cfg.datadir} failed (exit {rc}): {_tail(err or out)}")
    res.was_running = rc == 0
    if res.was_running:
        rc, out, err = _on_host(run, cfg, cmds["stop"], left())
        if rc != 0:
            raise DriverError(f"{cfg.name}: stopping the server failed (exit {rc}): {_tail(err or out)}")
        res.steps.append(f"stopped ({shlex.join(cmds['stop'])})")
    else:
        res.steps.append("was not running")

    if cfg.rewind == "auto":
        rc, out, err = _on_host(run, cfg, cmds["rewind"], left())
        text = (out + "\n" + err).strip()
        res.rewind_output = _tail(text, 4000)
        if rc != 0:
            raise DriverError(f"{cfg.name}: pg_rewind from {res.upstream} failed (exit {rc}): {_tail(text)}",
                              hint="the configuration files were put back; the data directory may need a new "
                                   "base backup (pg_basebackup) if pg_rewind stopped half-way")
        m = re.search(r"servers diverged at WAL location (\S+) on timeline (\d+)", text)
        res.diverged_at = m.group(1) if m else None
        res.rewound = "no rewind required" not in text and m is not None
        res.steps.append(f"pg_rewind: timelines diverged at {res.diverged_at} (timeline {m.group(2)}); rewound from "
                         f"{res.upstream}" if res.rewound and m else "pg_rewind: no rewind required")

    rc, out, err = _on_host(run, cfg, cmds["standby"], min(left(), 30))
    if rc != 0:
        raise DriverError(f"{cfg.name}: writing standby.signal / primary_conninfo failed (exit {rc}): "
                          f"{_tail(err or out)}")
    res.steps.append(f"standby.signal and primary_conninfo ({standby_conninfo(cfg, new_primary)}) written")

    rc, out, err = _on_host(run, cfg, cmds["start"], left())
    if rc != 0:
        raise DriverError(f"{cfg.name}: starting the server as a standby failed (exit {rc}): {_tail(err or out)}")
    res.steps.append("started as a standby")

    if old_endpoint is not None:
        delay = 0.05
        while True:
            state = observe_one(cfg.name, old_endpoint, timeout=min(left(), 10 + old_endpoint.connect_timeout))
            if state.role == "standby" and state.receiver_status == "streaming":
                res.streaming, res.timeline = True, state.timeline
                res.steps.append(f"streaming from {state.upstream or res.upstream} (timeline {state.timeline})")
                break
            if time.monotonic() + delay >= deadline - 1:
                raise DatabaseError(f"{cfg.name}: started as a standby of {res.upstream} but not streaming within "
                                    f"{timeout:g}s (role {state.role}, receiver {state.receiver_status}"
                                    f"{', ' + state.error if state.error else ''})")
            _pause(cancel, delay)
            delay = min(delay * 2, 0.5)
    return finish()


# === plans ==========================================================================================


@dataclass(frozen=True)
class PlannedStep:
    kind: str  # check_rpo | fence_primary | wait_replayed | promote | prove_writable | verify_integrity | reattach
    target: str
    what: str


def failover_plan(primary: str, standby: str, *, rpo_s: float | None, disaster: bool = False) -> list[PlannedStep]:
    """The database steps of a failover from ``primary`` to its hot standby (pure)."""
    rpo = f"{rpo_s:g}s" if rpo_s is not None else "none set"
    steps = [PlannedStep("check_rpo", standby, f"replay lag of {standby} (bytes, seconds) against the rpo ({rpo})")]
    if disaster:
        steps.append(PlannedStep("fence_primary", primary, f"try to stop writes on {primary}; when it does not "
                                 "answer, record NOT fenced and go on"))
    else:
        steps += [PlannedStep("fence_primary", primary, f"stop writes on {primary}: default_transaction_read_only, "
                              "end client sessions, switch WAL; its final LSN"),
                  PlannedStep("wait_replayed", standby, f"until {standby} has replayed {primary}'s final LSN: "
                              "nothing committed is lost")]
    steps += [PlannedStep("promote", standby, f"pg_promote(wait => true) on {standby}"),
              PlannedStep("prove_writable", standby, f"write and read back a row in {PROBE_TABLE} on {standby}"),
              PlannedStep("verify_integrity", standby, f"table checksums of {standby}")]
    return steps


def failback_plan(old_primary: str, new_primary: str, *,
                  rewind: Literal["auto", "never"] = "auto") -> list[PlannedStep]:
    """The database steps of a failback: the old primary comes back as a standby of the new one
    (rewound when its timeline diverged) before traffic returns to it (pure)."""
    how = "pg_rewind when its timeline diverged" if rewind == "auto" else "no pg_rewind"
    return [
        PlannedStep("reattach", old_primary, f"re-attach {old_primary} as a standby of {new_primary}: stop it, {how}, "
                    f"standby.signal + primary_conninfo, start; until it streams"),
        PlannedStep("check_rpo", old_primary, f"replay lag of {old_primary} behind {new_primary}"),
        PlannedStep("fence_primary", new_primary, f"stop writes on {new_primary}; its final LSN"),
        PlannedStep("wait_replayed", old_primary, f"until {old_primary} has replayed {new_primary}'s final LSN"),
        PlannedStep("promote", old_primary, f"pg_promote(wait => true) on {old_primary}"),
        PlannedStep("prove_writable", old_primary, f"write and read back a row in {PROBE_TABLE} on {old_primary}"),
        PlannedStep("verify_integrity", old_primary, f"table checksums of {old_primary}"),
        PlannedStep("reattach", new_primary, f"re-attach {new_primary} as a standby of {old_primary} ({how})"),
    ]


__all__ = [
    "APPLICATION_NAME", "FenceResult", "NodeState", "PROBE_TABLE", "PgEndpoint", "PlannedStep", "PromoteResult",
    "ReattachConfig", "ReattachResult", "Replayed", "ReplicaStatus", "Runner", "WriteProof", "failback_plan",
    "failover_plan", "fence_primary", "format_lsn", "integrity_site", "lag_from", "local_runner", "observe",
    "observe_one", "on_host_argv", "parse_lsn", "promote", "prove_writable", "psql_argv", "reattach_as_standby",
    "reattach_commands", "replica_status", "rewind_source", "rpo_verdict", "run_sql", "ssh_runner",
    "standby_conninfo", "wait_replayed", "writable_primaries",
]
