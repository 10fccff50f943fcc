"""How old a site's newest backup is, measured on the backup host itself, in one SSH round trip.

Two kinds of check (``BackupCheck``):

* ``path`` + ``glob``: the newest regular file matching ``glob`` anywhere under ``path``. The
  search and the pick of the newest run remotely (GNU find/sort/head, NUL-separated so names with
  spaces or newlines are safe); only one name comes back, however many backups there are.
* ``command``: an argv run remotely that prints a timestamp (epoch seconds, or ISO 8601; a
  time without an offset is read in the remote host's zone). Its last non-empty output line is
  used.

Either way the remote clock is read in the same call (``date``), and the age is remote now minus
the backup's time, so clock skew between this machine and the host does not distort it. An age
can be negative when a file's time is in the future (a skewed writer); it is reported as it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

from drctl.drivers.ssh import SSHPool, command_text
from drctl.errors import DriverError, SSHError
from drctl.model.inventory import BackupCheck

# prints "EPOCH.NANOS +HHMM", then "missing" or "present" and the newest "MTIME PATH\0"
_NEWEST_FILE = r"""export LC_ALL=C
now=$(date +%s.%N) && tz=$(date +%z) || exit 97
printf '%s %s\n' "$now" "$tz"
if [ ! -e "$1" ]; then printf 'missing\n'; exit 0; fi
printf 'present\n'
find "$1" -type f -name "$2" -printf '%T@ %p\0' | sort -z -n -r | head -z -n 1
"""

# prints "EPOCH.NANOS +HHMM", then runs the check's argv (no shell parsing of it: "$@")
_COMMAND = r"""export LC_ALL=C
now=$(date +%s.%N) && tz=$(date +%z) || exit 97
printf '%s %s\n' "$now" "$tz"
exec "$@"
"""

_ISO_HINT = "epoch seconds (e.g. 1718000000) or ISO 8601 (e.g. 2024-06-10T08:30:00Z)"


@dataclass(frozen=True)
class BackupAge:
    """The newest backup found (None when there is none), its time and age by the remote clock."""

    host: str
    newest: str | None
    newest_ts: float | None
    age_s: float | None
    remote_now: float


def _clock(line: bytes, host: str) -> tuple[float, timezone]:
    parts = line.decode("ascii", errors="replace").split()
    if not parts:
        raise DriverError(f"{host}: the backup probe printed no remote time")
    try:
        now = float(parts[0])
    except ValueError:
        try:  # a `date` without %N prints "1718000000.N"
            now = float(parts[0].split(".")[0])
        except ValueError:
            raise DriverError(f"{host}: the backup probe printed {parts[0]!r} as the remote time") from None
    tz = UTC
    if len(parts) > 1:
        m = re.fullmatch(r"([+-])(\d\d)(\d\d)", parts[1])
        if m:
            sign = -1 if m.group(1) == "-" else 1
            tz = timezone(sign * timedelta(hours=int(m.group(2)), minutes=int(m.group(3))))
    return now, tz


def parse_timestamp(text: str, remote_tz: timezone = UTC) -> float:
    """Epoch seconds from ``text``: a number of seconds, or ISO 8601 (naive = ``remote_tz``).
    Raises ValueError with what was expected."""
    s = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        value = float(s)
        if value > 1e11:
            raise ValueError(f"{s} is not epoch seconds (milliseconds?); expected {_ISO_HINT}")
        return value
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(f"{s!r} is not a timestamp; expected {_ISO_HINT}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=remote_tz)
    return dt.timestamp()


def backup_age(pool: SSHPool, check: BackupCheck, *, timeout: float = 30) -> BackupAge:
    """Run ``check`` on its host and return the newest backup's age (see the module docstring).
    Raises SSHError (connection, or the probe failed there) or DriverError (unreadable output)."""
    if check.command is not None:
        return _by_command(pool, check.host, check.command, timeout)
    assert check.path is not None
    return _by_path(pool, check.host, check.path, check.glob, timeout)


def _by_path(pool: SSHPool, host: str, path: str, glob: str, timeout: float) -> BackupAge:
    remote_path = "./" + path if path.startswith("-") else path
    argv = ["sh", "-c", _NEWEST_FILE, "drctl-backup-age", remote_path, glob]
    res = pool.run(host, argv, timeout=timeout)
    err = res.stderr.decode("utf-8", errors="replace").strip()
    if res.rc != 0:
        raise SSHError(f"{host}: the backup probe of {path} failed (status {res.rc})"
                       + (f": {err}" if err else ""),
                       hint="the probe needs POSIX sh and GNU find/sort/head on the host")
    first, _, rest = res.stdout.partition(b"\n")
    now, _tz = _clock(first, host)
    status, _, found = rest.partition(b"\n")
    if status == b"missing":
        return BackupAge(host=host, newest=None, newest_ts=None, age_s=None, remote_now=now)
    if status != b"present":
        raise DriverError(f"{host}: unexpected output from the backup probe of {path}: {res.stdout[:200]!r}")
    record = found.split(b"\0", 1)[0]
    if not record:
        if err:  # nothing found, and find complained (permissions...): say so rather than "no backup"
            raise SSHError(f"{host}: no file matching {glob!r} found under {path}, and find reported: {err}")
        return BackupAge(host=host, newest=None, newest_ts=None, age_s=None, remote_now=now)
    ts_text, _, name = record.partition(b" ")
    try:
        ts = float(ts_text)
    except ValueError:
        raise DriverError(f"{host}: unexpected output from the backup probe of {path}: "
                          f"{record[:200]!r}") from None
    return BackupAge(host=host, newest=name.decode("utf-8", errors="surrogateescape"), newest_ts=ts,
                     age_s=now - ts, remote_now=now)


def _by_command(pool: SSHPool, host: str, command: list[str], timeout: float) -> BackupAge:
    argv = ["sh", "-c", _COMMAND, "drctl-backup-age", *command]
    shown = command_text(command)
    res = pool.run(host, argv, timeout=timeout)
    err = res.stderr.decode("utf-8", errors="replace").strip()
    if res.rc != 0:
        raise SSHError(f"{host}: backup check command `{shown}` exited with status {res.rc}"
                       + (f": {err[-2000:]}" if err else ""))
    first, _, rest = res.stdout.partition(b"\n")
    now, tz = _clock(first, host)
    lines = [ln.strip() for ln in rest.decode("utf-8", errors="replace").splitlines() if ln.strip()]
    if not lines:
        raise DriverError(f"{host}: backup check command `{shown}` printed nothing; expected {_ISO_HINT}")
    try:
        ts = parse_timestamp(lines[-1], tz)
    except ValueError as exc:
        raise DriverError(f"{host}: backup check command `{shown}`: {exc}") from None
    return BackupAge(host=host, newest=lines[-1], newest_ts=ts, age_s=now - ts, remote_now=now)
