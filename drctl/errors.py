"""The one exception family of drctl, and the exit code each member maps to.

Drivers translate library exceptions (paramiko, dnspython, sockets, subprocess) into these at
their own edge; the CLI catches ``DrctlError`` once and exits with ``exc.exit_code``. A traceback
is printed only with ``--debug``. Every error class drctl raises to an operator is defined here.

    DrctlError                      1  something failed that has no more specific class
    ├── LabError                       the local lab could not be started or stopped
    ├── UsageError                  2  bad command line, or a prompt needed where none is possible
    ├── ConfigError                 3  inventory / playbook invalid (file:line: field: what is wrong)
    ├── RefusedError                4  unsafe, nothing changed (unless --force)
    │   ├── StaleBackupError           backup older than its RPO, or missing
    │   ├── UnhealthyError             the target site fails its health check
    │   ├── LockHeldError              another run holds the service's lock
    │   └── LockWriteError             the lock cannot be written (full disk, I/O error)
    ├── StepFailedError             5  a step of a run failed; the run is journaled and resumable
    │   ├── JournalError               the journal cannot be written: the run stops before it changes
    │   │                              what it could not record
    │   ├── BaselineError              a baseline cannot be written or read (or is damaged)
    │   └── DriverError                an outside system answered badly or not at all
    │       ├── SSHError
    │       │   ├── HostUnreachableError   connect refused / timed out
    │       │   ├── HostKeyError           unknown or changed host key
    │       │   └── SSHAuthError
    │       ├── DNSError
    │       │   ├── DNSUnreachableError
    │       │   ├── DNSConflictError       a record someone else changed (prerequisite failed)
    │       │   └── TSIGError              the server does not accept our key
    │       ├── HAProxyError
    │       └── DatabaseError
    │           └── DatabaseUnreachableError   the database server does not answer
    ├── IntegrityError              6  primary and backup data differ
    ├── NotReadyError               7  readiness check / drill target missed
    ├── RunNotFoundError            8  no such run in the state directory
    ├── StateStoreError             9  the state store (etcd) is out of reach or without quorum, or a
    │   │                              journal append lost a race: the run stops at a safe point
    │   ├── StateStoreUnreachableError no listed etcd member answered (or none had a quorum)
    │   └── LockLostError              this run's lock lease could not be kept alive (or expired)
    └── AbortedError              130  the operator declined or interrupted

``ExitStatus`` is the one list of exit codes and their meanings: each class's ``exit_code`` is a
member, and the CLI's ``--help`` epilog and ``EXIT_CODES`` are made from it. The README's table is
checked against it (``tests/unit/test_exit_codes_table.py``).
"""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """Every exit code of drctl. ``summary`` is a few words (the ``--help`` epilog),
    ``description`` a sentence (``EXIT_CODES``); both, and the README's row for the code, contain
    every one of its ``keywords``."""

    OK = 0
    INTERNAL = 1
    USAGE = 2
    CONFIG = 3
    REFUSED = 4
    FAILED = 5
    INTEGRITY = 6
    NOT_READY = 7
    NOT_FOUND = 8
    STATE_STORE = 9
    ABORTED = 130

    @property
    def summary(self) -> str:
        return _MEANINGS[self][0]

    @property
    def description(self) -> str:
        return _MEANINGS[self][1]

    @property
    def keywords(self) -> tuple[str, ...]:
        return _MEANINGS[self][2]


_MEANINGS: dict[ExitStatus, tuple[str, str, tuple[str, ...]]] = {
    ExitStatus.OK: (
        "success", "success: everything asked for was done (or, for plan/validate/check, all is well)",
        ("success",)),
    ExitStatus.INTERNAL: (
        "internal error", "unexpected internal error (run with --debug for a traceback)", ("internal error",)),
    ExitStatus.USAGE: (
        "usage error", "usage error: bad arguments, an output file that cannot be written, or a prompt was "
                       "needed but stdin is not a terminal (use --yes)", ("usage",)),
    ExitStatus.CONFIG: (
        "invalid inventory or playbook",
        "invalid inventory or playbook (every problem printed as file:line: field: message)",
        ("invalid", "inventory", "playbook")),
    ExitStatus.REFUSED: (
        "refused (nothing changed)",
        "refused as unsafe, nothing changed: stale backup, unhealthy target (see --force), unknown or changed "
        "host key, a backup flagged as mass-changed, pre-flight (TSIG key, HAProxy servers), lock held or not "
        "writable (full disk), changes since the run being resumed", ("refused", "nothing changed")),
    ExitStatus.FAILED: (
        "step failed (resumable)",
        "a step failed during a run; the journal records where, `drctl resume RUN_ID` continues",
        ("step failed",)),
    ExitStatus.INTEGRITY: (
        "integrity mismatch (data differ)", "integrity verification found differences between primary and backup",
        ("integrity", "differ")),
    ExitStatus.NOT_READY: (
        "not ready / target missed", "not ready: a readiness check failed, or a drill missed its RTO/RPO target",
        ("not ready", "missed")),
    ExitStatus.NOT_FOUND: ("run not found", "run not found in the state directory", ("run not found",)),
    ExitStatus.STATE_STORE: (
        "state store unavailable or lock lost (resumable)",
        "the state store (etcd, --state) is out of reach or lost quorum, or the run lost its lock: it stopped at "
        "a safe point; `drctl resume RUN_ID` once the store answers", ("state store", "lock")),
    ExitStatus.ABORTED: (
        "aborted", "aborted by the operator (declined the confirmation or a pause, or Ctrl-C)", ("aborted",)),
}


class DrctlError(Exception):
    """Base of every error drctl reports to the operator."""

    exit_code: int = ExitStatus.INTERNAL
    label = "error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(DrctlError):
    exit_code = ExitStatus.USAGE
    label = "usage error"


class ConfigError(DrctlError):
    """One or more problems in an inventory or playbook file."""

    exit_code = ExitStatus.CONFIG
    label = "invalid configuration"

    def __init__(self, problems: list[ConfigProblem] | str, *, hint: str | None = None) -> None:
        if isinstance(problems, str):
            problems = [ConfigProblem(file=None, line=None, field=None, message=problems)]
        self.problems = problems
        super().__init__("\n".join(p.render() for p in problems), hint=hint)


class ConfigProblem:
    """One located problem: ``file:line: field: message``."""

    __slots__ = ("file", "line", "field", "message")

    def __init__(self, *, file: str | None, line: int | None, field: str | None, message: str) -> None:
        self.file = file
        self.line = line
        self.field = field
        self.message = message

    def render(self) -> str:
        where = self.file or "<input>"
        if self.line is not None:
            where += f":{self.line}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        return {"file": self.file, "line": self.line, "field": self.field, "message": self.message}


class RefusedError(DrctlError):
    exit_code = ExitStatus.REFUSED
    label = "refused"


class StaleBackupError(RefusedError):
    pass


class UnhealthyError(RefusedError):
    pass


class LockHeldError(RefusedError):
    pass


class LockWriteError(RefusedError):
    """A service's lock could not be written in the state directory (full disk, I/O error): the
    run stops before it changes anything."""


class StepFailedError(DrctlError):
    exit_code = ExitStatus.FAILED
    label = "failed"


class JournalError(StepFailedError):
    """The journal could not be written: the run stops rather than change what it cannot record."""


class BaselineError(StepFailedError):
    """A baseline could not be written or read."""


class DriverError(StepFailedError):
    """An outside system answered badly or not at all."""


class SSHError(DriverError):
    pass


class HostUnreachableError(SSHError):
    pass


class HostKeyError(SSHError):
    pass


class SSHAuthError(SSHError):
    pass


class DNSError(DriverError):
    pass


class DNSUnreachableError(DNSError):
    pass


class DNSConflictError(DNSError):
    pass


class TSIGError(DNSError):
    pass


class HAProxyError(DriverError):
    pass


class DatabaseError(DriverError):
    pass


class DatabaseUnreachableError(DatabaseError):
    """The database server did not answer (refused, timed out, no such socket)."""


class IntegrityError(DrctlError):
    exit_code = ExitStatus.INTEGRITY
    label = "integrity mismatch"


class NotReadyError(DrctlError):
    exit_code = ExitStatus.NOT_READY
    label = "not ready"


class RunNotFoundError(DrctlError):
    exit_code = ExitStatus.NOT_FOUND
    label = "no such run"


class StateStoreError(DrctlError):
    """The state store (an etcd cluster, ``--state``) does not answer, has lost quorum, or refused a
    journal append written by another control node at the same time: nothing more is changed,
    the run is resumable once the store answers again."""

    exit_code = ExitStatus.STATE_STORE
    label = "state store unavailable"


class StateStoreUnreachableError(StateStoreError):
    """No listed etcd member answered (or none had a quorum)."""


class LockLostError(StateStoreError):
    """The lease that keeps this run's lock could not be renewed in time (or expired): the run
    stops before another control node could take the lock over."""

    label = "lock lost"


class AbortedError(DrctlError):
    exit_code = ExitStatus.ABORTED
    label = "aborted"


class LabError(DrctlError):
    """The lab could not be started or stopped."""


EXIT_CODES: dict[int, str] = {int(status): status.description for status in ExitStatus}
"""Exit code -> what it means, made from ``ExitStatus``."""
