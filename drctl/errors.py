"""The one exception family of drctl, and the exit code each member maps to.

Drivers translate library exceptions (paramiko, dnspython, sockets, subprocess) into these at
their own edge; the CLI catches ``DrctlError`` once and exits with ``exc.exit_code``. A traceback
is printed only with ``--debug``.

    DrctlError                      1  something failed that has no more specific class
    ├── UsageError                  2  bad command line, or a prompt needed where none is possible
    ├── ConfigError                 3  inventory / playbook invalid (file:line: field: what is wrong)
    ├── RefusedError                4  unsafe, nothing changed (unless --force)
    │   ├── StaleBackupError           backup older than its RPO, or missing
    │   ├── UnhealthyError             the target site fails its health check
    │   ├── LockHeldError              another run holds the service's lock
    │   └── LockWriteError             the lock cannot be written (full disk, I/O error)
    ├── StepFailedError             5  a step of a run failed; the run is journaled and resumable
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
    ├── IntegrityError              6  primary and backup data differ
    ├── NotReadyError               7  readiness check / drill target missed
    ├── RunNotFoundError            8  no such run in the state directory
    └── AbortedError              130  the operator declined or interrupted

Exit codes are also listed in the README; ``EXIT_CODES`` below is the single source.
"""

from __future__ import annotations


class DrctlError(Exception):
    """Base of every error drctl reports to the operator."""

    exit_code = 1
    label = "error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(DrctlError):
    exit_code = 2
    label = "usage error"


class ConfigError(DrctlError):
    """One or more problems in an inventory or playbook file."""

    exit_code = 3
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
    exit_code = 4
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
    exit_code = 5
    label = "failed"


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


class IntegrityError(DrctlError):
    exit_code = 6
    label = "integrity mismatch"


class NotReadyError(DrctlError):
    exit_code = 7
    label = "not ready"


class RunNotFoundError(DrctlError):
    exit_code = 8
    label = "no such run"


class AbortedError(DrctlError):
    exit_code = 130
    label = "aborted"


EXIT_CODES: dict[int, str] = {
    0: "success: everything asked for was done (or, for plan/validate/check, all is well)",
    1: "unexpected internal error (run with --debug for a traceback)",
    2: "usage error: bad arguments, or a prompt was needed but stdin is not a terminal (use --yes)",
    3: "invalid inventory or playbook (every problem printed as file:line: field: message)",
    4: "refused as unsafe, nothing changed: stale backup, unhealthy target (see --force), lock held or "
       "not writable (full disk)",
    5: "a step failed during a run; the journal records where, `drctl resume RUN_ID` continues",
    6: "integrity verification found differences between primary and backup",
    7: "not ready: a readiness check failed, or a drill missed its RTO/RPO target",
    8: "run not found in the state directory",
    130: "aborted by the operator (declined the confirmation, or Ctrl-C)",
}
