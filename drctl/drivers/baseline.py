"""Baselines: manifests of a primary's data kept in the state directory, to compare a backup
with when the primary is gone.

A driver, because it is storage on the control node's own disk and nothing more: the integrity
driver writes a baseline while it hashes the primary and reads the newest one when the primary
does not answer, and readiness checks ask a baseline's age. Drivers talk to the world and never
import the engine; the engine (its ``store`` hands this module the baselines' index, ``readiness``
asks ages) imports this module, never the other way round.

One file per recording, ``<state>/baselines/<service>/<target>/<UTC time>.baseline``:

    drctl-baseline 1
    {"service": ..., "target": ..., "kind": "files" | "postgres", "created": ..., "site": ..., ...}
    <records: manifest lines (F/E) for files, P lines (JSON per table) for PostgreSQL>
    #sha256 <hex digest of every byte above this line>

Written to a temporary file, fsynced, renamed into place, and the directory fsynced: a crash
leaves the old baselines and no partial one. The checksum is verified before a baseline is used;
a damaged one is skipped (and the report says so) in favour of the next newest. The newest
``KEEP`` baselines of a target are kept. The header is redacted (``drctl.core.redact``): a
location given as a connection string never stores its password.

With the state in etcd (``--state etcd://...``), every stored baseline is also recorded in the
baselines' index (``use_index``): its file name, checksum, time, and the control node and state
directory holding it. A control node then learns of a newer baseline that another one recorded
(and where to copy it from), and a local file whose checksum differs from the indexed one is
skipped as altered.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from drctl.core.integrity import BaselineRef, Entry, RecordError, parse_record
from drctl.core.redact import redact
from drctl.durable import fsync_dir
from drctl.errors import BaselineError, DrctlError

MAGIC = b"drctl-baseline 1\n"
SUM_PREFIX = b"#sha256 "
SUFFIX = ".baseline"
KEEP = 10


log = logging.getLogger("drctl.drivers.baseline")


class BaselineIndex(Protocol):
    """Where every control node records the baselines it stored (with etcd state, the engine's
    ``store_etcd`` keeps one); ``use_index`` puts one in use."""

    where: str

    def record(self, service: str, target: str, entry: dict[str, Any]) -> None: ...
    def entries(self, service: str, target: str) -> list[dict[str, Any]]: ...


def baseline_dir(state_dir: Path, service: str, target: str) -> Path:
    return state_dir / "baselines" / service / target


_INDEXES: dict[Path, BaselineIndex] = {}


def use_index(state_dir: Path, index: BaselineIndex | None) -> None:
    """Record the baselines stored under ``state_dir`` in ``index`` too, and consult it when
    reading them (``None``: stop). The engine's ``store.open_state`` calls this for etcd state."""
    key = Path(state_dir).resolve()
    if index is None:
        _INDEXES.pop(key, None)
    else:
        _INDEXES[key] = index


def _index_of(state_dir: Path) -> BaselineIndex | None:
    return _INDEXES.get(Path(state_dir).resolve()) if _INDEXES else None


def _stamp(t: float) -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


class BaselineWriter:
    """Collects record lines (``add``) and stores them atomically (``commit``); ``discard``
    removes the temporary file if ``commit`` was not reached (safe to call after it)."""

    def __init__(self, state_dir: Path, service: str, target: str, *, kind: str, meta: dict[str, Any],
                 keep: int = KEEP) -> None:
        self.dir = baseline_dir(state_dir, service, target)
        self.state_dir, self.service, self.target = state_dir, service, target
        self.keep = keep
        self.created = time.time()
        self.header: dict[str, Any] = redact({"service": service, "target": target, "kind": kind,
                                              "created": self.created, **meta})
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.path = self.dir / (_stamp(self.created) + SUFFIX)
            self.tmp = self.dir / f".{self.path.name}.tmp-{os.getpid()}"
            self._f: IO[bytes] | None = open(self.tmp, "wb")  # noqa: SIM115 (closed in commit/discard)
        except OSError as e:
            raise BaselineError(f"cannot write a baseline in {self.dir}: {e.strerror}") from None
        self._sum = hashlib.sha256()
        self.records = 0
        self._write(MAGIC)
        self._write(json.dumps(self.header, sort_keys=True).encode() + b"\n")

    def _write(self, data: bytes) -> None:
        assert self._f is not None
        self._sum.update(data)
        self._f.write(data)

    def add(self, line: bytes) -> None:
        if not line.endswith(b"\n") or line.startswith(b"#"):
            raise BaselineError(f"not a baseline record: {line[:80]!r}")
        self.records += 1
        self._write(line)

    def commit(self) -> Path:
        f = self._f
        if f is None:
            raise BaselineError("baseline already committed or discarded")
        try:
            f.write(SUM_PREFIX + self._sum.hexdigest().encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
            f.close()
            self._f = None
            os.replace(self.tmp, self.path)
            fsync_dir(self.dir)
        except OSError as e:
            raise BaselineError(f"cannot store the baseline {self.path}: {e.strerror}") from None
        prune(self.dir, self.keep)
        self._index()
        return self.path

    def _index(self) -> None:
        """Record the stored baseline in the baselines' index, if there is one. The file is stored
        either way: an index out of reach is logged, not an error."""
        index = _index_of(self.state_dir)
        if index is None:
            return
        entry = {"file": self.path.name, "sha256": self._sum.hexdigest(), "created": self.created,
                 "kind": self.header.get("kind"), "site": self.header.get("site"),
                 "location": self.header.get("location"), "control_node": socket.gethostname(),
                 "path": str(self.path.resolve()), "size": self.path.stat().st_size}
        try:
            index.record(self.service, self.target, entry)
        except DrctlError as e:
            log.warning("baseline %s stored, but not recorded in the baselines' index %s: %s",
                        self.path, index.where, e.message)

    def discard(self) -> None:
        if self._f is not None:
            with contextlib.suppress(OSError):
                self._f.close()
            self._f = None
            with contextlib.suppress(OSError):
                self.tmp.unlink()


def prune(directory: Path, keep: int) -> list[Path]:
    """Remove all but the newest ``keep`` baselines; returns what was removed."""
    found = list_baselines(directory)
    removed = []
    for p in found[keep:]:
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    return removed


def list_baselines(directory: Path) -> list[Path]:
    """Baseline files in a target's directory, newest first (names sort by time)."""
    try:
        return sorted((p for p in directory.iterdir() if p.name.endswith(SUFFIX) and not p.name.startswith(".")),
                      reverse=True)
    except FileNotFoundError:
        return []


@dataclass(frozen=True)
class Baseline:
    """An intact baseline: its header (``meta``) and its records, read again from the file."""

    path: Path
    meta: dict[str, Any]
    size: int
    digest: str = ""  # the checksum line's sha256

    @property
    def created(self) -> float:
        return float(self.meta.get("created", 0))

    @property
    def ref(self) -> BaselineRef:
        created = float(self.meta.get("created", 0))
        return BaselineRef(path=str(self.path), created=created, created_iso=_iso(created),
                           site=str(self.meta.get("site")), host=self.meta.get("host"),
                           location=str(self.meta.get("location")))

    def lines(self) -> Iterator[bytes]:
        """The record lines, checked again against the checksum as they are read (a file changed
        since it was opened raises BaselineError at the end)."""
        digest = hashlib.sha256()
        with open(self.path, "rb") as f:
            if os.fstat(f.fileno()).st_size != self.size:
                raise BaselineError(f"baseline {self.path} changed while in use")
            magic, header = f.readline(), f.readline()
            digest.update(magic)
            digest.update(header)
            last: list[bytes] = []
            yield from _records(f, digest, last)
            if not last or not _sum_matches(last[0], digest):
                raise BaselineError(f"baseline {self.path} changed while in use")

    def entries(self) -> Iterator[Entry]:
        """The file manifest's entries (files baselines)."""
        for line in self.lines():
            try:
                entry = parse_record(line)
            except RecordError as e:
                raise BaselineError(f"baseline {self.path}: {e}") from None
            if entry is not None:
                yield entry


def _records(f: IO[bytes], digest: Any, last: list[bytes]) -> Iterator[bytes]:
    """The record lines after the header, each fed to ``digest``; the final line (the checksum
    line, when the file is whole) is not a record: it is left in ``last``."""
    prev: bytes | None = None
    for line in f:
        if prev is not None:
            digest.update(prev)
            yield prev
        prev = line
    if prev is not None:
        last.append(prev)


def _sum_matches(line: bytes, digest: Any) -> bool:
    return line.startswith(SUM_PREFIX) and \
        line[len(SUM_PREFIX):].strip().decode("ascii", "replace") == digest.hexdigest()


def open_baseline(path: Path) -> Baseline:
    """Read and check a baseline; raises BaselineError if it is damaged."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            magic = f.readline()
            if magic != MAGIC:
                raise BaselineError(f"{path} is not a drctl baseline (or an unknown version)")
            header = f.readline()
            digest.update(magic)
            digest.update(header)
            last: list[bytes] = []
            for _ in _records(f, digest, last):
                pass
    except OSError as e:
        raise BaselineError(f"cannot read baseline {path}: {e.strerror}") from None
    if not last or not last[0].startswith(SUM_PREFIX) or not last[0].endswith(b"\n"):
        raise BaselineError(f"baseline {path} is truncated (no checksum line)")
    if not _sum_matches(last[0], digest):
        raise BaselineError(f"baseline {path} is damaged: its checksum does not match its content")
    try:
        meta = json.loads(header)
    except json.JSONDecodeError:
        raise BaselineError(f"baseline {path} has an unreadable header") from None
    return Baseline(path, meta, size, digest.hexdigest())


def newest_baseline(state_dir: Path, service: str, target: str) -> tuple[Baseline | None, list[str]]:
    """The newest intact baseline of a target, and a note for each newer one that was damaged
    (or, with a baselines' index, that another control node holds, or whose file was altered)."""
    notes: list[str] = []
    indexed = _indexed(state_dir, service, target, notes)
    for path in list_baselines(baseline_dir(state_dir, service, target)):
        try:
            base = open_baseline(path)
        except BaselineError as e:
            notes.append(f"skipped {e.message}")
            continue
        entry = indexed.get(path.name) if indexed else None
        if entry is not None and entry.get("sha256") != base.digest:
            notes.append(f"skipped baseline {path}: its checksum differs from the one the baselines' index "
                         f"recorded when {entry.get('control_node')} stored it (altered since)")
            continue
        notes += _elsewhere(indexed, base.created, service, target)
        return base, notes
    notes += _elsewhere(indexed, 0.0, service, target)
    return None, notes


def _indexed(state_dir: Path, service: str, target: str, notes: list[str]) -> dict[str, dict[str, Any]] | None:
    """File name -> index entry (newest first), or None without an index (or when it cannot be read)."""
    index = _index_of(state_dir)
    if index is None:
        return None
    try:
        return {str(e.get("file")): e for e in index.entries(service, target)}
    except DrctlError as e:
        notes.append(f"the baselines' index could not be read ({e.message}); only this control node's "
                     "baselines were considered")
        return None


def _elsewhere(indexed: dict[str, dict[str, Any]] | None, after: float, service: str, target: str) -> list[str]:
    """A note on the newest indexed baseline newer than ``after`` that is not here."""
    newer = [e for e in (indexed or {}).values() if float(e.get("created") or 0) > after + 1e-6]
    if not newer:
        return []
    e = max(newer, key=lambda e: float(e.get("created") or 0))
    return [f"a newer baseline of {service}/{target} ({_iso(float(e.get('created') or 0))}) is on control node "
            f"{e.get('control_node')} at {e.get('path')}, not here: copy it into this state directory's "
            f"baselines/{service}/{target}/ to compare against it"]


def baseline_age(state_dir: Path, service: str, target: str, *, now: float | None = None) -> float | None:
    """Seconds since the newest intact baseline of a target was recorded, or None if there is none."""
    base, _notes = newest_baseline(state_dir, service, target)
    if base is None:
        return None
    return max(0.0, (time.time() if now is None else now) - float(base.meta.get("created", 0)))
