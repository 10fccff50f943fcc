"""Baselines: manifests of a primary's data kept in the state directory, to compare a backup
with when the primary is gone.

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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from drctl.core.integrity import BaselineRef, Entry, RecordError, parse_record
from drctl.core.redact import redact
from drctl.engine.store import fsync_dir
from drctl.errors import StepFailedError

MAGIC = b"drctl-baseline 1\n"
SUM_PREFIX = b"#sha256 "
SUFFIX = ".baseline"
KEEP = 10


class BaselineError(StepFailedError):
    """A baseline could not be written or read."""


def baseline_dir(state_dir: Path, service: str, target: str) -> Path:
    return state_dir / "baselines" / service / target


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
        return self.path

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
    return Baseline(path, meta, size)


def newest_baseline(state_dir: Path, service: str, target: str) -> tuple[Baseline | None, list[str]]:
    """The newest intact baseline of a target, and a note for each newer one that was damaged."""
    notes: list[str] = []
    for path in list_baselines(baseline_dir(state_dir, service, target)):
        try:
            return open_baseline(path), notes
        except BaselineError as e:
            notes.append(f"skipped {e.message}")
    return None, notes


def baseline_age(state_dir: Path, service: str, target: str, *, now: float | None = None) -> float | None:
    """Seconds since the newest intact baseline of a target was recorded, or None if there is none."""
    base, _notes = newest_baseline(state_dir, service, target)
    if base is None:
        return None
    return max(0.0, (time.time() if now is None else now) - float(base.meta.get("created", 0)))
