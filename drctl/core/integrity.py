"""What two copies of a service's data hold, compared as values: file-tree manifests, table
checksums, mass-change detection, and the report ``drctl verify`` and the ``verify_integrity`` step
give. Pure: no I/O; the drivers produce the manifests and sums, this module judges them.

Manifests are streams of ``Entry`` in byte order of the path (as the hashing program on each host
emits them), so comparing two trees of a million files is one merge pass that holds no path twice:
only the differing paths are kept, for the report.
"""

from __future__ import annotations

import builtins
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from drctl.model.integrity import MassChange

# --- manifest records (the wire format of drctl/drivers/remote/hashtree.py) -------------------------

_UNESC = re.compile(rb"\\(.)")
_UNESC_MAP = {b"\\": b"\\", b"n": b"\n", b"t": b"\t"}


class Entry(NamedTuple):
    """A file of a manifest: its path relative to the tree's root (bytes, as on disk), size and
    hex digest; or, when it could not be read, ``digest`` None and the ``error``. A path ending in
    ``/`` with an error is a directory that could not be listed."""

    path: bytes
    size: int
    digest: str | None
    error: str | None = None


def escape_path(path: bytes) -> bytes:
    return path.replace(b"\\", b"\\\\").replace(b"\n", b"\\n").replace(b"\t", b"\\t")


def unescape_path(text: bytes) -> bytes:
    return _UNESC.sub(lambda m: _UNESC_MAP.get(m.group(1), m.group(0)), text)


class RecordError(ValueError):
    pass


def parse_record(line: bytes) -> Entry | None:
    """An ``F`` or ``E`` line -> Entry; other record kinds -> None. Raises RecordError."""
    if line.endswith(b"\n"):
        line = line[:-1]
    kind = line[:2]
    try:
        if kind == b"F\t":
            _, digest, size, path = line.split(b"\t", 3)
            return Entry(unescape_path(path), int(size), digest.decode("ascii"))
        if kind == b"E\t":
            _, path, message = line.split(b"\t", 2)
            return Entry(unescape_path(path), 0, None, message.decode("utf-8", "replace"))
    except ValueError:
        raise RecordError(f"malformed manifest record {line[:120]!r}") from None
    return None


def format_record(entry: Entry) -> bytes:
    if entry.digest is None:
        return b"E\t" + escape_path(entry.path) + b"\t" + (entry.error or "").encode() + b"\n"
    return b"F\t%s\t%d\t%s\n" % (entry.digest.encode("ascii"), entry.size, escape_path(entry.path))


def display_path(path: bytes) -> str:
    """A path for people and JSON: UTF-8, other bytes as \\xNN."""
    return path.decode("utf-8", "backslashreplace")


# --- comparing two trees -------------------------------------------------------------------------


@dataclass
class PathSet:
    """A category of the comparison: how many files, how many bytes, and which paths."""

    count: int = 0
    bytes: int = 0
    paths: list[builtins.bytes] = field(default_factory=list)

    def add(self, path: builtins.bytes, size: int) -> None:
        self.count += 1
        self.bytes += size
        self.paths.append(path)

    def as_dict(self, max_paths: int | None) -> dict[str, Any]:
        shown = self.paths if max_paths is None else self.paths[:max_paths]
        out: dict[str, Any] = {"count": self.count, "bytes": self.bytes, "paths": [display_path(p) for p in shown]}
        if len(shown) < len(self.paths):
            out["paths_truncated"] = True
        return out


@dataclass(frozen=True)
class Unreadable:
    side: Literal["reference", "backup"]
    path: bytes
    message: str


@dataclass
class TreeDiff:
    """The comparison of a reference tree (the primary, or a baseline of it) with the backup."""

    reference_files: int = 0
    reference_bytes: int = 0
    backup_files: int = 0
    backup_bytes: int = 0
    same: int = 0
    same_bytes: int = 0
    missing: PathSet = field(default_factory=PathSet)  # on the reference, not on the backup
    extra: PathSet = field(default_factory=PathSet)  # on the backup only
    differ: PathSet = field(default_factory=PathSet)  # on both, content differs (bytes: the backup's)
    differ_same_size: int = 0  # of those, how many kept their size
    unreadable: list[Unreadable] = field(default_factory=list)
    not_compared: int = 0  # files under a directory the other side could not list

    @property
    def compared(self) -> int:
        return self.same + self.differ.count

    @property
    def identical(self) -> bool:
        return not (self.missing.count or self.extra.count or self.differ.count or self.unreadable)


def compare_trees(reference: Iterable[Entry], backup: Iterable[Entry]) -> TreeDiff:
    """Merge two manifests sorted by path (byte order) into a TreeDiff, in one pass."""
    diff = TreeDiff()
    ref_it: Iterator[Entry] = iter(reference)
    bak_it: Iterator[Entry] = iter(backup)
    a = next(ref_it, None)
    b = next(bak_it, None)
    last_a = last_b = b""

    def order(prev: bytes, e: Entry, side: str) -> bytes:
        if e.path <= prev and prev:
            raise RecordError(f"{side} manifest is not in path order at {display_path(e.path)!r}")
        return e.path

    while a is not None or b is not None:
        # a directory one side could not list: what the other side has under it is not compared
        blocked = _blocking_dir(a, b)
        if blocked is not None:
            side, entry = blocked
            diff.unreadable.append(Unreadable(side, entry.path, entry.error or ""))
            prefix = entry.path
            if side == "reference":
                assert a is not None
                last_a = order(last_a, a, "reference")
                a = next(ref_it, None)
                if b is not None and b.path == prefix and b.digest is None:  # both sides failed there
                    diff.unreadable.append(Unreadable("backup", b.path, b.error or ""))
                    last_b = order(last_b, b, "backup")
                    b = next(bak_it, None)
                while b is not None and b.path.startswith(prefix):
                    diff.not_compared += 1
                    _count(diff, b, backup=True)
                    last_b = order(last_b, b, "backup")
                    b = next(bak_it, None)
            else:
                assert b is not None
                last_b = order(last_b, b, "backup")
                b = next(bak_it, None)
                while a is not None and a.path.startswith(prefix):
                    diff.not_compared += 1
                    _count(diff, a, backup=False)
                    last_a = order(last_a, a, "reference")
                    a = next(ref_it, None)
            continue
        if b is None or (a is not None and a.path < b.path):
            assert a is not None
            last_a = order(last_a, a, "reference")
            if a.digest is None:
                diff.unreadable.append(Unreadable("reference", a.path, a.error or ""))
            else:
                _count(diff, a, backup=False)
                diff.missing.add(a.path, a.size)
            a = next(ref_it, None)
        elif a is None or b.path < a.path:
            last_b = order(last_b, b, "backup")
            if b.digest is None:
                diff.unreadable.append(Unreadable("backup", b.path, b.error or ""))
            else:
                _count(diff, b, backup=True)
                diff.extra.add(b.path, b.size)
            b = next(bak_it, None)
        else:
            last_a = order(last_a, a, "reference")
            last_b = order(last_b, b, "backup")
            if a.digest is None or b.digest is None:
                if a.digest is None:
                    diff.unreadable.append(Unreadable("reference", a.path, a.error or ""))
                if b.digest is None:
                    diff.unreadable.append(Unreadable("backup", b.path, b.error or ""))
            else:
                _count(diff, a, backup=False)
                _count(diff, b, backup=True)
                if a.digest == b.digest and a.size == b.size:
                    diff.same += 1
                    diff.same_bytes += a.size
                else:
                    diff.differ.add(a.path, b.size)
                    if a.size == b.size:
                        diff.differ_same_size += 1
            a = next(ref_it, None)
            b = next(bak_it, None)
    return diff


def _blocking_dir(a: Entry | None, b: Entry | None) -> tuple[Literal["reference", "backup"], Entry] | None:
    """The directory error that comes first in path order, if the next entry is one."""
    candidates: list[tuple[bytes, Literal["reference", "backup"], Entry]] = []
    if a is not None and a.digest is None and a.path.endswith(b"/"):
        candidates.append((a.path, "reference", a))
    if b is not None and b.digest is None and b.path.endswith(b"/"):
        candidates.append((b.path, "backup", b))
    for path, side, entry in sorted(candidates, key=lambda c: c[0]):
        other = b if side == "reference" else a
        if other is None or other.path >= path:
            return side, entry
    return None


def _count(diff: TreeDiff, e: Entry, *, backup: bool) -> None:
    if backup:
        diff.backup_files += 1
        diff.backup_bytes += e.size
    else:
        diff.reference_files += 1
        diff.reference_bytes += e.size


# --- mass change -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MassChangeVerdict:
    """Whether the backup changed wholesale, the way ransomware leaves a tree: many files kept
    their names and sizes but not their content (encrypted in place), or many files were replaced
    by the same name with an extension added (``report.pdf`` -> ``report.pdf.locked``)."""

    flagged: bool
    changed_in_place: int
    compared: int
    share: float
    threshold: float
    min_files: int
    renamed: int = 0  # files missing on the backup that reappear there with an added extension
    renamed_share: float = 0.0
    differing: int = 0  # reference files that differ on the backup or are missing there
    differing_share: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"flagged": self.flagged, "changed_in_place": self.changed_in_place, "compared": self.compared,
                "share": round(self.share, 4), "threshold": self.threshold, "min_files": self.min_files,
                "renamed_with_extension": self.renamed, "renamed_share": round(self.renamed_share, 4),
                "differing": self.differing, "differing_share": round(self.differing_share, 4)}

    def describe(self) -> str:
        parts = []
        if self.changed_in_place >= self.min_files and self.share >= self.threshold:
            parts.append(f"{self.changed_in_place} of {self.compared} files ({self.share:.0%}) changed content "
                         "while keeping their names and sizes: the mark of encryption in place")
        if self.renamed >= self.min_files and self.renamed_share >= self.threshold:
            parts.append(f"{self.renamed} files ({self.renamed_share:.0%}) replaced by the same name with an "
                         "extension added: the mark of encrypted copies renamed")
        if self.differing >= self.min_files and self.differing_share > MOST:
            parts.append(f"{self.differing} of the primary's files ({self.differing_share:.0%}) differ or are "
                         "missing on the backup")
        return f"MASS CHANGE (threshold {self.threshold:.0%}): " + "; ".join(parts) + "; do not trust this copy"


#: beyond this share of the reference's files differing or missing, a copy is not trusted as it is
MOST = 0.5


def mass_change(diff: TreeDiff, policy: MassChange) -> MassChangeVerdict:
    """Whether the backup looks poisoned: content rewritten in place, files replaced by renamed
    copies, or most of the reference's files differing or missing (each above ``policy``'s
    ``min_files``)."""
    compared = diff.compared
    changed = diff.differ_same_size
    share = changed / compared if compared else 0.0
    missing = set(diff.missing.paths)
    renamed = sum(1 for p in diff.extra.paths if b"." in p and p.rsplit(b".", 1)[0] in missing)
    renamed_share = renamed / diff.reference_files if diff.reference_files else 0.0
    differing = diff.differ.count + diff.missing.count
    differing_share = differing / diff.reference_files if diff.reference_files else 0.0
    flagged = ((changed >= policy.min_files and share >= policy.share)
               or (renamed >= policy.min_files and renamed_share >= policy.share)
               or (differing >= policy.min_files and differing_share > MOST))
    return MassChangeVerdict(flagged, changed, compared, share, policy.share, policy.min_files, renamed,
                             renamed_share, differing, differing_share)


# --- tables ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableSums:
    """Row count and order-independent checksum of a table, as computed in the database."""

    rows: int
    checksum: str
    key: str | None = None  # the column differences are narrowed down by
    key_kind: Literal["int", "hash"] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "checksum": self.checksum, "key": self.key, "key_kind": self.key_kind}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TableSums:
        return cls(rows=int(d["rows"]), checksum=str(d["checksum"]), key=d.get("key"), key_kind=d.get("key_kind"))


Bucket = tuple[int, str]  # (rows, checksum) of a key range or hash bucket


@dataclass
class TableDiff:
    name: str
    status: Literal["same", "differs", "missing_on_backup", "extra_on_backup", "missing_on_both"]
    reference: TableSums | None
    backup: TableSums | None
    ranges: list[tuple[int, int]] = field(default_factory=list)  # int keys: [lo, hi) ranges that differ
    hash_buckets: list[int] = field(default_factory=list)  # other keys: hash buckets that differ
    missing_keys: list[str] = field(default_factory=list)
    extra_keys: list[str] = field(default_factory=list)
    changed_keys: list[str] = field(default_factory=list)
    keys_truncated: bool = False
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "same"

    def describe(self) -> str:
        if self.status == "missing_on_both":
            return f"table {self.name} is listed in the inventory but exists on neither side (a typo?)"
        if self.status == "missing_on_backup":
            return f"table {self.name} is missing on the backup"
        if self.status == "extra_on_backup":
            return f"table {self.name} exists only on the backup"
        if self.status == "same":
            rows = self.reference.rows if self.reference else 0
            return f"table {self.name}: {rows} rows, same"
        assert self.reference is not None and self.backup is not None
        parts = [f"table {self.name} differs: {self.reference.rows} rows on the reference, {self.backup.rows} on "
                 "the backup"]
        key = self.reference.key or self.backup.key
        if self.ranges:
            shown = ", ".join(f"{lo}..{hi - 1}" for lo, hi in self.ranges[:10])
            more = f" and {len(self.ranges) - 10} more" if len(self.ranges) > 10 else ""
            parts.append(f"{key} ranges {shown}{more}")
        elif self.hash_buckets:
            parts.append(f"{len(self.hash_buckets)} hash bucket(s) of {key}")
        for label, keys in (("missing on backup", self.missing_keys), ("extra on backup", self.extra_keys),
                            ("changed", self.changed_keys)):
            if keys:
                shown = ", ".join(keys[:10]) + (f" (+{len(keys) - 10})" if len(keys) > 10 else "")
                parts.append(f"{label}: {key}={shown}")
        if self.keys_truncated:
            parts.append("(key lists truncated)")
        if self.note:
            parts.append(self.note)
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "status": self.status,
            "reference": self.reference.as_dict() if self.reference else None,
            "backup": self.backup.as_dict() if self.backup else None,
            "ranges": [[lo, hi - 1] for lo, hi in self.ranges], "hash_buckets": self.hash_buckets,
            "missing_on_backup": self.missing_keys, "extra_on_backup": self.extra_keys,
            "changed": self.changed_keys, "keys_truncated": self.keys_truncated, "note": self.note,
        }


def compare_table_sums(reference: Mapping[str, TableSums], backup: Mapping[str, TableSums],
                       listed: Iterable[str] = ()) -> list[TableDiff]:
    """Table-level verdicts, in name order; a ``listed`` table found on neither side is one too."""
    out = []
    for name in sorted(set(reference) | set(backup) | set(listed)):
        if name not in reference and name not in backup:
            out.append(TableDiff(name, "missing_on_both", None, None))
            continue
        r, b = reference.get(name), backup.get(name)
        if b is None:
            out.append(TableDiff(name, "missing_on_backup", r, None))
        elif r is None:
            out.append(TableDiff(name, "extra_on_backup", None, b))
        elif (r.rows, r.checksum) == (b.rows, b.checksum):
            out.append(TableDiff(name, "same", r, b))
        else:
            out.append(TableDiff(name, "differs", r, b))
    return out


def differing_buckets(reference: Mapping[int, Bucket], backup: Mapping[int, Bucket]) -> list[int]:
    return sorted(k for k in set(reference) | set(backup) if reference.get(k) != backup.get(k))


def bucket_ranges(buckets: Sequence[int], size: int) -> list[tuple[int, int]]:
    """Integer-key buckets (key // size) -> merged [lo, hi) key ranges."""
    out: list[tuple[int, int]] = []
    for b in sorted(buckets):
        lo, hi = b * size, (b + 1) * size
        if out and out[-1][1] == lo:
            out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def diff_rows(reference: Iterable[tuple[str, str]], backup: Iterable[tuple[str, str]],
              limit: int) -> tuple[list[str], list[str], list[str], bool]:
    """(key, row hash) pairs of the differing buckets -> keys missing on the backup, extra on the
    backup, and changed; at most ``limit`` of each (True when cut)."""
    ref: defaultdict[str, Counter[str]] = defaultdict(Counter)
    bak: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for k, h in reference:
        ref[k][h] += 1
    for k, h in backup:
        bak[k][h] += 1
    missing, extra, changed = [], [], []
    for k in sorted(set(ref) | set(bak), key=_key_order):
        if k not in bak:
            missing.append(k)
        elif k not in ref:
            extra.append(k)
        elif ref[k] != bak[k]:
            changed.append(k)
    cut = any(len(x) > limit for x in (missing, extra, changed))
    return missing[:limit], extra[:limit], changed[:limit], cut


def _key_order(k: str) -> tuple[int, int, str]:
    try:
        return (0, int(k), "")
    except ValueError:
        return (1, 0, k)


# --- reports ------------------------------------------------------------------------------------------


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


@dataclass(frozen=True)
class SideInfo:
    """One copy that was read: where, and what reading it took."""

    site: str
    host: str | None
    location: str
    detail: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"site": self.site, "host": self.host, "location": self.location, **self.detail}


@dataclass(frozen=True)
class BaselineRef:
    """The recorded baseline a comparison used instead of the primary."""

    path: str
    created: float
    created_iso: str
    site: str
    host: str | None
    location: str

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "created": self.created, "created_iso": self.created_iso, "site": self.site,
                "host": self.host, "location": self.location}


Reference = Literal["primary", "baseline"]


@dataclass
class FilesReport:
    name: str
    reference: Reference
    backup: SideInfo
    diff: TreeDiff
    mass: MassChangeVerdict
    primary: SideInfo | None = None
    baseline: BaselineRef | None = None
    notes: list[str] = field(default_factory=list)
    kind: Literal["files"] = "files"

    @property
    def ok(self) -> bool:
        return self.diff.identical and not self.mass.flagged

    def headline(self) -> str:
        d = self.diff
        against = "the primary" if self.reference == "primary" else "the baseline"
        if self.ok:
            return f"{self.name}: {d.same} files ({human_bytes(d.same_bytes)}) identical to {against}"
        parts = []
        if d.missing.count:
            parts.append(f"{d.missing.count} missing on backup ({human_bytes(d.missing.bytes)})")
        if d.extra.count:
            parts.append(f"{d.extra.count} extra on backup ({human_bytes(d.extra.bytes)})")
        if d.differ.count:
            parts.append(f"{d.differ.count} differ ({human_bytes(d.differ.bytes)})")
        if d.unreadable:
            parts.append(f"{len(d.unreadable)} unreadable")
        text = f"{self.name}: " + ", ".join(parts) + f" against {against}; {d.same} of {d.reference_files} same"
        if self.mass.flagged:
            text += "; " + self.mass.describe()
        return text

    def lines(self, limit: int | None) -> list[str]:
        d = self.diff
        out = [self.headline()]
        if self.baseline is not None:
            out.append(f"  compared with the baseline of {self.baseline.site} ({self.baseline.host}:"
                       f"{self.baseline.location}) recorded {self.baseline.created_iso}")
        for label, ps in (("missing on backup", d.missing), ("extra on backup", d.extra), ("differs", d.differ)):
            shown = ps.paths if limit is None else ps.paths[:limit]
            for p in shown:
                out.append(f"  {label}: {display_path(p)!r}")
            if len(shown) < len(ps.paths):
                out.append(f"  ... and {len(ps.paths) - len(shown)} more {label} (--json lists every path)")
        for u in d.unreadable[: limit if limit is not None else len(d.unreadable)]:
            out.append(f"  unreadable on {u.side}: {display_path(u.path)!r}: {u.message}")
        if d.not_compared:
            out.append(f"  {d.not_compared} files not compared (their directory could not be listed on the other side)")
        out += [f"  note: {n}" for n in self.notes]
        return out

    def as_dict(self, max_paths: int | None = 1000) -> dict[str, Any]:
        d = self.diff
        return {
            "name": self.name, "kind": self.kind, "ok": self.ok, "reference": self.reference,
            "primary": self.primary.as_dict() if self.primary else None, "backup": self.backup.as_dict(),
            "baseline": self.baseline.as_dict() if self.baseline else None,
            "files": {"reference": d.reference_files, "backup": d.backup_files, "same": d.same},
            "bytes": {"reference": d.reference_bytes, "backup": d.backup_bytes, "same": d.same_bytes},
            "missing_on_backup": d.missing.as_dict(max_paths), "extra_on_backup": d.extra.as_dict(max_paths),
            "differ": {**d.differ.as_dict(max_paths), "same_size": d.differ_same_size},
            "unreadable": [{"side": u.side, "path": display_path(u.path), "message": u.message}
                           for u in (d.unreadable if max_paths is None else d.unreadable[:max_paths])],
            "not_compared": d.not_compared, "mass_change": self.mass.as_dict(), "notes": self.notes,
        }


@dataclass
class PostgresReport:
    name: str
    reference: Reference
    backup: SideInfo
    tables: list[TableDiff]
    primary: SideInfo | None = None
    baseline: BaselineRef | None = None
    notes: list[str] = field(default_factory=list)
    kind: Literal["postgres"] = "postgres"

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tables)

    def headline(self) -> str:
        against = "the primary" if self.reference == "primary" else "the baseline"
        bad = [t for t in self.tables if not t.ok]
        if not bad:
            return f"{self.name}: {len(self.tables)} table(s) identical to {against}"
        return f"{self.name}: {len(bad)} of {len(self.tables)} table(s) differ from {against}"

    def lines(self, limit: int | None) -> list[str]:
        out = [self.headline()]
        if self.baseline is not None:
            out.append(f"  compared with the baseline of {self.baseline.site} recorded {self.baseline.created_iso}")
        out += [f"  {t.describe()}" for t in self.tables if not t.ok]
        out += [f"  note: {n}" for n in self.notes]
        return out

    def as_dict(self, max_paths: int | None = 1000) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "ok": self.ok, "reference": self.reference,
                "primary": self.primary.as_dict() if self.primary else None, "backup": self.backup.as_dict(),
                "baseline": self.baseline.as_dict() if self.baseline else None,
                "tables": [t.as_dict() for t in self.tables], "notes": self.notes}


TargetReport = FilesReport | PostgresReport


@dataclass
class IntegrityReport:
    """Everything ``verify`` found for one service. Differences are values here, never errors:
    the caller decides by its policy (``block`` / ``warn``) or exit code."""

    service: str
    primary_site: str
    backup_site: str
    targets: list[TargetReport] = field(default_factory=list)
    elapsed_s: float = 0.0
    baselines_recorded: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.targets)

    @property
    def mass_change(self) -> bool:
        return any(isinstance(t, FilesReport) and t.mass.flagged for t in self.targets)

    def summary(self) -> str:
        if not self.targets:
            return f"{self.service}: no integrity targets"
        return "; ".join(t.headline() for t in self.targets)

    def lines(self, limit: int | None = 20) -> list[str]:
        state = "OK" if self.ok else ("MASS CHANGE" if self.mass_change else "DIFFERS")
        out = [f"{self.service} ({self.primary_site} -> {self.backup_site}): {state} in {self.elapsed_s:.2f}s"]
        for t in self.targets:
            out += ["  " + line for line in t.lines(limit)]
        out += [f"  baseline recorded: {p}" for p in self.baselines_recorded]
        return out

    def as_dict(self, max_paths: int | None = 1000) -> dict[str, Any]:
        return {"service": self.service, "ok": self.ok, "mass_change": self.mass_change,
                "primary_site": self.primary_site, "backup_site": self.backup_site,
                "elapsed_s": round(self.elapsed_s, 3), "baselines_recorded": self.baselines_recorded,
                "targets": [t.as_dict(max_paths) for t in self.targets]}

    def to_json(self, max_paths: int | None = None) -> str:
        return json.dumps(self.as_dict(max_paths), indent=2)
