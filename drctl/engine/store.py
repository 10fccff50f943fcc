"""Where runs are kept: the state directory, the append-only journal, and service leases.

This is the one narrow seam between the engine and storage, two protocols with two
implementations each, opened together by ``open_state(spec, state_dir)``:

- ``Journal``: ``append(run_id, record)`` is durable once it returns, with every secret masked
  (``drctl.core.redact``) whatever the caller put in the record; a journal that cannot be written
  raises ``JournalError`` (or ``StateStoreError`` when the state store is out of reach);
  ``read(run_id)``; ``list_runs()`` (newest first); ``close()`` never raises;
- ``Leases``: ``acquire_all(names, owner, on_lost=None)`` -> one ``HeldLease`` per name
  (``renew()``, ``release()``), all or none, or ``LockHeldError`` naming the holder (user, host,
  pid, run), or ``LockWriteError`` when the lock cannot be written: nothing was changed;
  ``held_by(name)`` (the run id holding it now), ``holder(name)`` (its holder record).
  ``on_lost(name, why)`` is called, once, when a lease can no longer be kept.

The local implementation (``RunStore``, ``LeaseStore``) keeps a JSONL file per run and an
``flock``-ed file per lease in the state directory: the kernel drops the lock when the holding
process dies, so a crash never leaves a service locked, and a lock is never lost while its process
lives. The etcd implementation (``drctl.engine.store_etcd``, ``--state etcd://...``) keeps both in
an etcd v3 cluster, so they survive the control node.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from drctl.core.redact import redact, redact_text
from drctl.durable import fsync_dir
from drctl.errors import JournalError, LockHeldError, LockWriteError, RunNotFoundError, UsageError

if TYPE_CHECKING:  # baselines import the integrity models (~350 ms): only when an etcd state needs them
    from drctl.drivers.baseline import BaselineIndex

log = logging.getLogger("drctl.engine.store")

#: errors of a full or failing disk (not of a wrong path or missing permission)
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG})

_RUN_ID = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[a-z]+-[0-9a-f]{6}$")


#: ``on_lost(name, why)``: a held lease could not be kept (called from a background thread, once)
LostCallback = Callable[[str, str], None]


class Journal(Protocol):
    """The append-only journal of runs (see the module docstring)."""

    where: str  # for messages: the directory, or the etcd cluster and prefix

    def append(self, run_id: str, record: dict[str, Any]) -> dict[str, Any]: ...
    def read(self, run_id: str) -> list[dict[str, Any]]: ...
    def list_runs(self) -> list[str]: ...
    def close(self) -> None: ...


class HeldLease(Protocol):
    name: str
    owner: dict[str, Any]

    def renew(self) -> None: ...
    def release(self) -> None: ...


class Leases(Protocol):
    """One lease per service (see the module docstring)."""

    where: str

    def acquire_all(self, names: list[str], owner: dict[str, Any],
                    on_lost: LostCallback | None = None) -> Sequence[HeldLease]: ...
    def held_by(self, name: str) -> str | None: ...
    def holder(self, name: str) -> dict[str, Any] | None: ...


@dataclass
class State:
    """What ``open_state`` gives: the journal, the leases, the local state directory (drill records
    and baseline files always live there) and, with etcd, the index of every control node's
    baselines."""

    runs: Journal
    leases: Leases
    dir: Path
    where: str
    baselines: BaselineIndex | None = None
    _close: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def close(self) -> None:
        """Close the journal and the connection to the state store; never raises."""
        self.runs.close()
        for fn in self._close:
            with contextlib.suppress(Exception):
                fn()
        if self.baselines is not None:
            from drctl.drivers.baseline import use_index

            use_index(self.dir, None)


def open_state(spec: str | None, state_dir: Path) -> State:
    """The state named by ``spec`` (``etcd://...``, see ``drctl.core.statespec``), or the state
    directory ``state_dir`` when ``spec`` is empty or ``dir``. ``state_dir`` is used either way for
    what stays local (drill records, baseline files). A spec that cannot be parsed is a UsageError."""
    if not spec or spec.strip() == "dir":
        return State(runs=RunStore(state_dir), leases=LeaseStore(state_dir), dir=state_dir,
                     where=str(state_dir))
    from drctl.core.statespec import StateSpecError, parse_state_spec

    try:
        parsed = parse_state_spec(spec)
    except StateSpecError as e:
        raise UsageError(f"state {redact_text(spec)!r}: {e}",
                         hint="--state, DRCTL_STATE or the inventory's state: key") from None
    from drctl.drivers.baseline import use_index
    from drctl.engine.store_etcd import open_etcd_state

    state = open_etcd_state(parsed, state_dir)
    if state.baselines is not None:
        use_index(state_dir, state.baselines)
    return state


def default_state_dir() -> Path:
    env = os.environ.get("DRCTL_STATE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "drctl"


def new_run_id(operation: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return f"{stamp}-{re.sub('[^a-z]', '', operation.lower()) or 'run'}-{secrets.token_hex(3)}"


def _cut_torn_tail(path: Path) -> None:
    """A crash in the middle of a write leaves a last line without its newline: cut it off before
    appending, so the next record starts on a line of its own."""
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        f.seek(max(0, size - (1 << 20)))
        tail = f.read()
        keep = size - len(tail) + tail.rfind(b"\n") + 1 if b"\n" in tail else 0
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())


class RunStore:
    """Append-only JSONL journals under ``<state>/runs/<run_id>.jsonl``."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "runs"
        self.where = str(self.dir)
        self._lock = threading.Lock()
        self._files: dict[str, Any] = {}
        self._seq: dict[str, int] = {}

    def path(self, run_id: str) -> Path:
        if not _RUN_ID.match(run_id):
            raise RunNotFoundError(f"{run_id!r} is not a run id (see `drctl history`)")
        return self.dir / f"{run_id}.jsonl"

    def append(self, run_id: str, record: dict[str, Any]) -> dict[str, Any]:
        """Write one record and fsync it before returning. A journal that cannot be written stops
        the run (``JournalError``) before the side effect it was to record."""
        try:
            return self._append(run_id, record)
        except OSError as e:
            self._drop(run_id)
            raise JournalError(f"cannot write the journal {self.path(run_id)}: {e.strerror or e}; "
                               "stopped before the next change", hint="free space or fix permissions, "
                               f"then `drctl resume {run_id}`") from None

    def _append(self, run_id: str, record: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            f = self._files.get(run_id)
            if f is None:
                new = not self.path(run_id).exists()
                self.dir.mkdir(parents=True, exist_ok=True)
                if not new:
                    _cut_torn_tail(self.path(run_id))
                f = open(self.path(run_id), "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run
                self._files[run_id] = f
                if new:
                    fsync_dir(self.dir)
                    self._seq[run_id] = 0
                else:
                    self._seq[run_id] = len(self.read(run_id))
            self._seq[run_id] += 1
            rec = redact({"seq": self._seq[run_id], "ts": round(time.time(), 6), "run_id": run_id, **record})
            f.write(json.dumps(rec, sort_keys=True, default=lambda o: redact(str(o))) + "\n")
            f.flush()
            os.fsync(f.fileno())
            return rec

    def _drop(self, run_id: str) -> None:
        """Forget the open file of a journal that failed to be written. What it still buffers is
        thrown away with it (its close fails the way the write did, and is not reported twice);
        the next append reopens the file, cuts a torn last line off and counts the records again."""
        with self._lock:
            f = self._files.pop(run_id, None)
            self._seq.pop(run_id, None)
        if f is not None:
            _close_quietly(f, run_id)

    def read(self, run_id: str) -> list[dict[str, Any]]:
        path = self.path(run_id)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise RunNotFoundError(f"no run {run_id} in {self.dir}") from None
        out = []
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a crash: every other record is intact
        return out

    def list_runs(self) -> list[str]:
        if not self.dir.exists():
            return []
        return sorted((p.stem for p in self.dir.glob("*.jsonl") if _RUN_ID.match(p.stem)), reverse=True)

    def close(self) -> None:
        """Close every journal file. Never raises: each record was fsynced by its ``append``, so a
        failing close loses nothing, and must not hide the error that stopped the run."""
        with self._lock:
            files = list(self._files.items())
            self._files.clear()
        for run_id, f in files:
            _close_quietly(f, run_id)


def _close_quietly(f: Any, run_id: str) -> None:
    """Close a journal file; a failure (flushing what a failed write left in the buffer) is
    logged, not raised. The descriptor is released either way (io closes it in a ``finally``)."""
    try:
        f.close()
    except (OSError, ValueError) as e:
        log.debug("closing the journal of %s failed: %s", run_id, getattr(e, "strerror", None) or e)


@dataclass
class Lease:
    name: str
    owner: dict[str, Any]
    _fd: int | None
    _path: Path

    def renew(self) -> None:
        """Local leases live as long as the process; nothing to renew."""

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None


class LeaseStore:
    """One lease per service: ``<state>/locks/<name>.lock`` held with flock."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "locks"
        self.where = str(self.dir)

    def acquire(self, name: str, owner: dict[str, Any]) -> Lease:
        path = self.dir / f"{name}.lock"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            if e.errno in _DISK_ERRNOS:
                raise LockWriteError(f"cannot create the lock {path}: {e.strerror or e}; nothing was changed",
                                     hint="free space in the state directory (--state-dir, DRCTL_STATE_DIR) "
                                          "or fix the disk, then run again") from None
            raise UsageError(f"cannot create the lock {path}: {e.strerror or e}",
                             hint="check the state directory (--state-dir, DRCTL_STATE_DIR)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self.holder(name)
            for _ in range(20):  # the holder writes its record just after it took the flock
                if holder:
                    break
                time.sleep(0.005)
                holder = self.holder(name)
            raise LockHeldError(f"service {name} is locked by {describe_holder(holder) if holder else 'another run'}",
                                hint="wait for it to finish, or `drctl history` to see it") from None
        info = {**owner, "pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        data = json.dumps(redact(info)).encode()
        try:
            os.ftruncate(fd, 0)
            view = memoryview(data)
            while view:  # a short write (a nearly full disk) is followed by the write that says why
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # no half-written holder record for `drctl history` to misread
            os.close(fd)  # drops the flock too
            raise LockWriteError(f"cannot write the lock {path}: {e.strerror or e}; nothing was changed",
                                 hint="free space in the state directory (--state-dir, DRCTL_STATE_DIR) or fix "
                                      "the disk, then run again") from None
        return Lease(name=name, owner=info, _fd=fd, _path=path)

    def acquire_all(self, names: list[str], owner: dict[str, Any],
                    on_lost: LostCallback | None = None) -> list[Lease]:
        """Every lease, in a fixed order (no deadlock between two runs), or none of them. An flock
        is held as long as the process lives: ``on_lost`` is never called."""
        got: list[Lease] = []
        try:
            for name in sorted(names):
                got.append(self.acquire(name, owner))
        except BaseException:
            for lease in got:
                lease.release()
            raise
        return got

    def held_by(self, name: str) -> str | None:
        """The run id holding ``name``'s lease right now (a live process), else None."""
        path = self.dir / f"{name}.lock"
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        except BlockingIOError:
            holder = self.holder(name)
            return str(holder.get("run_id")) if holder else "?"
        finally:
            os.close(fd)

    def holder(self, name: str) -> dict[str, Any] | None:
        try:
            text = (self.dir / f"{name}.lock").read_text()
            return json.loads(text) if text.strip() else None
        except (OSError, json.JSONDecodeError):
            return None


def describe_holder(holder: dict[str, Any]) -> str:
    """``run R by user@host (pid N, operation, since HH:MM:SS)``: who holds a lock, for messages."""
    extra = [f"pid {holder.get('pid', '?')}"]
    if holder.get("operation"):
        extra.append(str(holder["operation"]))
    since = holder.get("since")
    if isinstance(since, int | float):
        extra.append(f"since {time.strftime('%H:%M:%S', time.localtime(since))}")
    if holder.get("ttl"):
        extra.append(f"etcd lease of {holder['ttl']} s")
    who = f"{holder.get('user', '?')}@{holder.get('host', '?')}"
    return f"run {holder.get('run_id', '?')} by {who} ({', '.join(extra)})"


def ensure_state_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create state directory {path}: {e.strerror}",
                         hint="pass --state-dir or set DRCTL_STATE_DIR") from None
    return path
