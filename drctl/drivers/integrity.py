"""Integrity verification where the data lives: file trees hashed on each host over SSH, and
PostgreSQL tables checksummed inside the database; only digests and sums travel.

- **Files**: ``drctl/drivers/remote/hashtree.py`` is sent to ``python3 -`` on the host (hashlib,
  threads, a manifest cache on the host); a host without python3 gets a POSIX sh + GNU coreutils
  pipeline instead (``find | sort -z``, ``sha256sum -z`` in parallel chunks, no cache). Both
  print their manifest in path byte order, both sides are read at the same time, and
  ``drctl.core.integrity.compare_trees`` merges them in one pass (memory bounded).
- **PostgreSQL**: ``psql`` over SSH on the database host, or locally with a connection string.
  One REPEATABLE READ READ ONLY transaction per side with TimeZone, DateStyle and the other output
  settings pinned; per table ``count(*)`` and ``sum(hashtextextended(row::text, 0))``; a table
  that differs is narrowed down to the key ranges (or hash buckets) whose sums differ, then to
  the keys. Passwords come from a file or an environment variable: to a local psql through
  ``PGPASSWORD`` in its environment, to a remote one as the first line of its stdin; never in argv.
- **Baselines**: with ``record_baseline`` the primary's manifest is stored while it is compared
  (``drctl.drivers.baseline``); when the primary does not answer, the backup is compared with the
  newest intact baseline instead, and the report says so.

``verify_service`` is what the CLI and the ``verify_integrity`` step call. Differences are
returned in the report; failures to verify raise ``drctl.errors`` (``HostUnreachableError`` for
the backup, ``DatabaseError``, ``DriverError``...).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from drctl.core.integrity import (
    Entry,
    FilesReport,
    IntegrityReport,
    PostgresReport,
    RecordError,
    SideInfo,
    TableDiff,
    TableSums,
    TreeDiff,
    bucket_ranges,
    compare_table_sums,
    compare_trees,
    diff_rows,
    differing_buckets,
    mass_change,
    parse_record,
)
from drctl.drivers import baseline as bl
from drctl.drivers import psql
from drctl.errors import (
    ConfigError,
    DatabaseError,
    DatabaseUnreachableError,
    DrctlError,
    DriverError,
    HostKeyError,
    HostUnreachableError,
    SSHAuthError,
    SSHError,
    StepFailedError,
    UsageError,
)
from drctl.model.integrity import FilesTarget, PgTable, PostgresSite, PostgresTarget

if TYPE_CHECKING:
    from drctl.drivers.ssh import CommandResult
    from drctl.model.inventory import Inventory

SCRIPT = Path(__file__).resolve().parent / "remote" / "hashtree.py"
HASH_TOOLS = {"sha256": "sha256sum", "sha1": "sha1sum", "sha512": "sha512sum", "blake2b": "b2sum"}
HEX_LEN = {"sha256": 64, "sha1": 40, "sha512": 128, "blake2b": 128}
MAX_ROWS_FETCHED = 200_000  # rows per side fetched to name differing keys, at most
_READ = 1 << 16


class RemoteRunner(Protocol):
    """What is needed of ``drctl.drivers.ssh.SSHPool``."""

    def run(self, host: str, argv: Sequence[str], *, stdin: bytes | None = None,
            timeout: float = 60.0) -> CommandResult: ...

    def stream(self, host: str, argv: Sequence[str], *, stdin: bytes | None = None,
               timeout: float = 600.0) -> contextlib.AbstractContextManager[BinaryIO]: ...

    def reachable(self, host: str) -> None: ...


# === file trees =====================================================================================


_script_text: bytes | None = None


def remote_script(params: dict[str, Any]) -> bytes:
    """The program for ``python3 -`` with its parameters in front, as a Python literal (plain
    str / int / bool / None / list / dict values only; ``ascii()`` keeps it 7-bit)."""
    global _script_text
    if _script_text is None:
        _script_text = SCRIPT.read_bytes()
    _check_literal(params)
    return b"PARAMS = " + ascii(params).encode("ascii") + b"\n" + _script_text


def _check_literal(value: Any) -> None:
    if value is None or isinstance(value, bool | int | float | str):
        return
    if isinstance(value, list):
        for v in value:
            _check_literal(v)
        return
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        for v in value.values():
            _check_literal(v)
        return
    raise TypeError(f"not a plain literal: {type(value).__name__}")


# POSIX sh + GNU findutils/coreutils, for hosts without python3. Arguments: root, hash tool,
# then the find expression. Prints "SIZE ./PATH<TAB>DIGEST  ./PATH" records, NUL-terminated.
COREUTILS_SCRIPT = r"""
set -u
root=$1; tool=$2; shift 2
cd -- "$root" 2>/dev/null || { echo "cannot enter directory $root" >&2; exit 3; }
tmp=$(mktemp -d) || exit 3
trap 'rm -rf -- "$tmp"' EXIT
trap 'exit 130' HUP INT TERM
find . "$@" > "$tmp/found" 2> "$tmp/err" || { cat "$tmp/err" >&2; exit 3; }
LC_ALL=C sort -z < "$tmp/found" > "$tmp/list" || exit 3
xargs -0r stat --printf '%s %n\0' -- < "$tmp/list" > "$tmp/sizes" || exit 3
n=$(nproc 2>/dev/null || echo 1)
split -t '\0' -n "l/$n" "$tmp/list" "$tmp/part." || exit 3
pids=""
for p in "$tmp"/part.*; do
  xargs -0r "$tool" -z -- < "$p" > "$p.sum" 2>> "$tmp/err" &
  pids="$pids $!"
done
fail=0
for pid in $pids; do wait "$pid" || fail=1; done
if [ "$fail" != 0 ]; then cat "$tmp/err" >&2; exit 3; fi
cat "$tmp"/part.*.sum > "$tmp/sums" || exit 3
paste -z -d '\t' "$tmp/sizes" "$tmp/sums"
"""


# With ``hasher: auto`` the host decides in the same command: python3 when it has one (reading
# the program from stdin), else the coreutils pipeline, announced by a leading "C\0".
AUTO_PREFIX = 'if command -v python3 >/dev/null 2>&1; then exec python3 -I -; fi\nprintf \'C\\0\'\n'
PYTHON_ARGV = ["python3", "-I", "-"]


def find_expression(include: Sequence[str], exclude: Sequence[str]) -> list[str]:
    """The ``find`` arguments selecting what the Python walker selects (see drctl.model.integrity)."""

    def test(glob: str) -> list[str]:
        g = glob.rstrip("/")
        anchored = g.startswith("/")
        g = g.lstrip("/")
        return ["-path", "./" + g] if anchored or "/" in g else ["-name", g]

    def any_of(globs: Sequence[str]) -> list[str]:
        out: list[str] = ["("]
        for i, g in enumerate(globs):
            if i:
                out.append("-o")
            out += test(g)
        return [*out, ")"]

    expr: list[str] = []
    dir_excl = list(exclude)
    if dir_excl:
        expr += ["(", "-type", "d", *any_of(dir_excl), "-prune", ")", "-o"]
    expr += ["(", "-type", "f"]
    if include:
        expr += any_of(include)
    file_excl = [g for g in exclude if not g.endswith("/")]
    if file_excl:
        expr += ["!", *any_of(file_excl)]
    return [*expr, "-print0", ")"]


@dataclass
class ManifestStream:
    """One side's manifest as it arrives: ``entries()`` once, then ``header`` / ``stats``."""

    label: str
    stream: BinaryIO
    hasher: str
    hex_len: int = 64
    tee: Callable[[bytes], None] | None = None
    header: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    elapsed_s: float = 0.0
    truncated: bool = False

    def entries(self) -> Iterator[Entry]:
        lines: Iterable[bytes] = self.stream
        if self.hasher == "auto":
            head = self.stream.read(2)
            if head == b"C\0":
                self.hasher = "coreutils"
            else:
                self.hasher = "python"
                lines = itertools.chain([head + self.stream.readline()] if head else [], self.stream)
        if self.hasher == "python":
            yield from self._python_entries(lines)
        else:
            yield from self._coreutils_entries()
        self.elapsed_s = time.monotonic() - self.started

    def _python_entries(self, lines: Iterable[bytes]) -> Iterator[Entry]:
        tee = self.tee
        done = False
        for line in lines:
            kind = line[:1]
            if kind in (b"F", b"E"):
                try:
                    entry = parse_record(line)
                except RecordError as e:
                    raise DriverError(f"{self.label}: {e}") from None
                assert entry is not None
                if tee is not None:
                    tee(line)
                yield entry
            elif kind == b"H":
                self.header = json.loads(line[2:])
            elif kind == b"T":
                self.stats = json.loads(line[2:])
                done = True
                break
            elif kind == b"X":
                raise DriverError(f"{self.label}: {json.loads(line[2:]).get('error')}")
            else:
                raise DriverError(f"{self.label}: unexpected output from the hashing program: {line[:200]!r}")
        # no trailer: the program died; leaving the stream raises with its exit status and stderr,
        # or FileHasher.open reports the cut (the comparison made so far is never returned)
        self.truncated = not done

    def _coreutils_entries(self) -> Iterator[Entry]:
        from drctl.core.integrity import format_record

        files = total = 0
        buf = b""
        while True:
            chunk = self.stream.read(_READ)
            if not chunk:
                break
            buf += chunk
            *records, buf = buf.split(b"\0")
            for rec in records:
                entry = self._coreutils_record(rec)
                files += 1
                total += entry.size
                if self.tee is not None:
                    self.tee(format_record(entry))
                yield entry
        self.truncated = bool(buf)
        self.stats = {"files": files, "bytes": total, "hashed": files, "hashed_bytes": total, "cached": 0}
        self.header = {"cache": "not available with coreutils"}

    def _coreutils_record(self, rec: bytes) -> Entry:
        try:
            size_text, rest = rec.split(b" ", 1)
            n = len(rest) - 3 - self.hex_len
            if n <= 0 or n % 2:
                raise ValueError
            plen = n // 2
            path, digest, path2 = rest[:plen], rest[plen + 1: plen + 1 + self.hex_len], rest[-plen:]
            if (rest[plen:plen + 1] != b"\t" or rest[plen + 1 + self.hex_len: plen + 3 + self.hex_len] != b"  "
                    or path != path2 or not path.startswith(b"./")):
                raise ValueError
            return Entry(path[2:], int(size_text), digest.decode("ascii"))
        except ValueError:
            raise DriverError(f"{self.label}: sizes and digests do not line up (files changed while they were "
                              f"hashed?): {rec[:200]!r}") from None


class FileHasher:
    """Starts the hashing of one tree on one host: python3, coreutils, or (``auto``) whichever
    the host has, decided there in the same command."""

    def __init__(self, pool: RemoteRunner) -> None:
        self.pool = pool

    @contextlib.contextmanager
    def open(self, host: str, root: str, target: FilesTarget, *, full: bool, algorithm: str,
             include: Sequence[str], exclude: Sequence[str],
             tee: Callable[[bytes], None] | None = None) -> Iterator[ManifestStream]:
        hasher: str = target.hasher
        label = f"{host}:{root}"
        params = {"root": root, "include": list(include), "exclude": list(exclude), "algorithm": algorithm,
                  "workers": target.workers, "cache": target.cache, "full": full,
                  "racy_ns": int(target.cache_settle * 1e9)}
        if target.cache_dir:
            params["cache_dir"] = target.cache_dir
        fallback = [root, HASH_TOOLS[algorithm], *find_expression(include, exclude)]
        stdin: bytes | None = remote_script(params)
        if hasher == "python":
            argv = list(PYTHON_ARGV)
        elif hasher == "coreutils":
            argv = ["sh", "-c", COREUTILS_SCRIPT, "drctl-hash", *fallback]
            stdin = None
        else:
            argv = ["sh", "-c", AUTO_PREFIX + COREUTILS_SCRIPT, "drctl-hash", *fallback]
        started = time.monotonic()
        ms: ManifestStream | None = None
        try:
            with self.pool.stream(host, argv, stdin=stdin, timeout=target.timeout) as f:
                ms = ManifestStream(label, f, hasher, HEX_LEN[algorithm], tee, started=started)
                yield ms
        except SSHError as e:
            if ms is not None:
                hasher = ms.hasher
            if isinstance(e, HostUnreachableError | HostKeyError | SSHAuthError):
                raise
            m = re.search(r"exited with status (\d+)(?:: (.*))?$", e.message, re.S)
            if m is None:
                raise
            status, tail = m.group(1), (m.group(2) or "").strip()
            if hasher == "python" and status == "127":
                raise DriverError(f"{label}: python3 is not available there ({tail}); set `hasher: coreutils` "
                                  "or `hasher: auto`") from None
            raise DriverError(f"{label}: hashing with {hasher} failed (exit status {status})"
                              + (f": {tail}" if tail else "")) from None
        if ms is not None and ms.truncated:
            raise DriverError(f"{label}: the manifest was cut short; the hashing program did not finish")


def _side_info(site: str, host: str, root: str, ms: ManifestStream) -> SideInfo:
    s = ms.stats
    detail = {"hasher": ms.hasher, "files": s.get("files"), "bytes": s.get("bytes"), "hashed": s.get("hashed"),
              "hashed_bytes": s.get("hashed_bytes"), "cached": s.get("cached"), "elapsed_s": round(ms.elapsed_s, 3),
              "cache": ms.header.get("cache"), "workers": ms.header.get("workers"),
              "symlinks_skipped": s.get("symlinks", 0), "special_skipped": s.get("special", 0),
              "remote_elapsed_s": s.get("elapsed_s"), "remote_peak_rss_kb": s.get("peak_rss_kb")}
    return SideInfo(site, host, root, detail)


def _side_notes(info: SideInfo) -> list[str]:
    notes = []
    d = info.detail
    if d.get("symlinks_skipped"):
        notes.append(f"{info.site}: {d['symlinks_skipped']} symbolic link(s) not followed and not compared")
    if d.get("special_skipped"):
        notes.append(f"{info.site}: {d['special_skipped']} special file(s) (sockets, fifos, devices) not compared")
    cache = str(d.get("cache") or "")
    if "not writable" in cache:
        notes.append(f"{info.site}: manifest cache {cache.split('; ', 1)[1]}")
    return notes


def verify_files(target: FilesTarget, *, service: str, pool: RemoteRunner, hasher: FileHasher, state_dir: Path,
                 primary_site: str, backup_site: str, full: bool = False,
                 record_baseline: bool = False) -> tuple[FilesReport, str | None]:
    """Compare a file tree between the primary and the backup (or the newest baseline when the
    primary does not answer). Returns the report and the path of the baseline recorded, if any."""
    p_loc, b_loc = target.sites[primary_site], target.sites[backup_site]
    primary_error = _connect_both(pool, p_loc.host, b_loc.host)
    if primary_error is None:
        writer = None
        if record_baseline:
            writer = bl.BaselineWriter(state_dir, service, target.name, kind="files", meta={
                "site": primary_site, "host": p_loc.host, "location": p_loc.path, "algorithm": target.algorithm,
                "include": target.include, "exclude": target.exclude})
        try:
            with contextlib.ExitStack() as stack:
                ps = stack.enter_context(hasher.open(
                    p_loc.host, p_loc.path, target, full=full, algorithm=target.algorithm, include=target.include,
                    exclude=target.exclude, tee=writer.add if writer else None))
                bs = stack.enter_context(hasher.open(
                    b_loc.host, b_loc.path, target, full=full, algorithm=target.algorithm, include=target.include,
                    exclude=target.exclude))
                diff = _compare(ps.entries(), bs.entries())
            recorded = str(writer.commit()) if writer else None
        finally:
            if writer is not None:
                writer.discard()
        primary = _side_info(primary_site, p_loc.host, p_loc.path, ps)
        backup = _side_info(backup_site, b_loc.host, b_loc.path, bs)
        report = FilesReport(target.name, "primary", backup, diff, mass_change(diff, target.mass_change),
                             primary=primary, notes=_side_notes(primary) + _side_notes(backup))
        return report, recorded

    if record_baseline:
        raise HostUnreachableError(f"cannot record a baseline of {target.name}: {primary_error.message}")
    base, skipped = bl.newest_baseline(state_dir, service, target.name)
    if base is None:
        raise HostUnreachableError(
            f"{service}/{target.name}: the primary does not answer ({primary_error.message}) and no intact "
            "baseline is recorded to compare the backup with" + (f" ({'; '.join(skipped)})" if skipped else ""),
            hint="record one while the primary is up: drctl verify --record-baseline SERVICE")
    meta = base.meta
    algorithm = str(meta.get("algorithm", target.algorithm))
    include, exclude = list(meta.get("include", [])), list(meta.get("exclude", []))
    notes = [f"the primary ({p_loc.host}) does not answer: {primary_error.message}; compared the backup with the "
             f"baseline recorded {base.ref.created_iso}"] + skipped
    if (algorithm, include, exclude) != (target.algorithm, target.include, target.exclude):
        notes.append("the baseline was recorded with other settings (algorithm or globs); the backup was hashed "
                     "with the baseline's")
    with hasher.open(b_loc.host, b_loc.path, target, full=full, algorithm=algorithm, include=include,
                     exclude=exclude) as bs:
        diff = _compare(base.entries(), bs.entries())
    backup = _side_info(backup_site, b_loc.host, b_loc.path, bs)
    report = FilesReport(target.name, "baseline", backup, diff, mass_change(diff, target.mass_change),
                         baseline=base.ref, notes=notes + _side_notes(backup))
    return report, None


def _compare(reference: Iterator[Entry], backup: Iterator[Entry]) -> TreeDiff:
    try:
        return compare_trees(reference, backup)
    except RecordError as e:
        raise DriverError(str(e)) from None


def _connect_both(pool: RemoteRunner, primary: str | None, backup: str | None) -> DrctlError | None:
    """Connect to both hosts at once. The backup must answer (raises); for the primary, returns
    the HostUnreachableError when it does not answer (other errors, e.g. host keys, raise)."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="verify-connect") as ex:
        fp: Future[None] | None = ex.submit(pool.reachable, primary) if primary else None
        fb: Future[None] | None = ex.submit(pool.reachable, backup) if backup else None
        primary_error: DrctlError | None = None
        if fp is not None:
            try:
                fp.result()
            except HostUnreachableError as e:
                primary_error = e
        if fb is not None:
            fb.result()
    return primary_error


# === PostgreSQL =====================================================================================


def _lit(value: str) -> str:
    if "\0" in value:
        raise UsageError("SQL text cannot contain a NUL character")
    return "'" + value.replace("'", "''") + "'"


def _ident(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def split_table_name(name: str, default_schema: str) -> tuple[str, str]:
    """``schema.table``, ``table`` or ``"Schema"."Table"`` -> (schema, table)."""
    m = re.fullmatch(r'"((?:[^"]|"")+)"(?:\."((?:[^"]|"")+)")?', name)
    if m:
        parts = [p.replace('""', '"') for p in m.groups() if p is not None]
    else:
        parts = name.split(".", 1)
    return (default_schema, parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def display_table(schema: str, table: str) -> str:
    def one(s: str) -> str:
        return s if re.fullmatch(r"[a-z_][a-z0-9_$]*", s) else _ident(s)

    return f"{one(schema)}.{one(table)}"


INT_TYPES = {"smallint", "integer", "bigint"}
ROW_HASH = "hashtextextended(ROW(r.*)::text, 0)"


def _preamble(timeout_s: float) -> str:
    return "\n".join([
        "SET standard_conforming_strings = on;",
        "SET search_path = pg_catalog;",
        "SET TimeZone = 'UTC';",
        "SET DateStyle = 'ISO, YMD';",
        "SET IntervalStyle = 'postgres';",
        "SET extra_float_digits = 1;",
        "SET bytea_output = 'hex';",
        "SET lc_monetary = 'C';",
        "SET xmloption = content;",
        f"SET statement_timeout = {max(1, int(timeout_s * 1000))};",
        "SET work_mem = '64MB';",
        # JIT compiles for ~50 ms per query and buys little for one scan; the setting is PG 11+
        "SELECT current_setting('server_version_num')::int >= 110000 AS drctl_has_jit \\gset",
        "\\if :drctl_has_jit",
        "SET jit = off;",
        "\\endif",
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;",
        "",
    ])


def sums_sql(target: PostgresTarget, timeout_s: float) -> str:
    """Catalog rows ``["C", schema, table, key, key type]`` then sums rows ``["S", schema, table,
    rows, checksum]``, all in one snapshot (the sums are generated and run with ``\\gexec``)."""
    if target.tables:
        values = []
        for t in target.tables:
            schema, table = split_table_name(t.name, target.schemas[0])
            values.append(f"({_lit(schema)}, {_lit(table)}, {_lit(t.key) if t.key else 'NULL::text'})")
        wanted = "SELECT * FROM (VALUES " + ", ".join(values) + ") AS v(nsp, rel, keycol)"  # noqa: S608 (names and values quoted by _ident / _lit)
    else:
        wanted = ("SELECT n.nspname AS nsp, c.relname AS rel, NULL::text AS keycol FROM pg_class c "  # noqa: S608 (names and values quoted by _ident / _lit)
                  "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') "
                  "AND NOT c.relispartition AND n.nspname = ANY (ARRAY[" + ", ".join(_lit(s) for s in target.schemas)
                  + "]::text[])")
    catalog = (
        f"WITH wanted AS ({wanted}) "  # noqa: S608 (names and values quoted by _ident / _lit)
        "SELECT n.nspname AS nsp, c.relname AS rel, k.attname AS keycol, k.typ AS keytype "
        "FROM wanted w JOIN pg_namespace n ON n.nspname = w.nsp "
        "JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.rel AND c.relkind IN ('r', 'p', 'm', 'v', 'f') "
        "LEFT JOIN LATERAL (SELECT a.attname::text AS attname, format_type(a.atttypid, NULL) AS typ "
        "FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND "
        "CASE WHEN w.keycol IS NOT NULL THEN a.attname = w.keycol ELSE a.attnum = (SELECT i.indkey[0] FROM "
        "pg_index i WHERE i.indrelid = c.oid AND i.indisprimary AND i.indnkeyatts = 1) END) k ON true"
    )
    return (
        _preamble(timeout_s)  # noqa: S608 (names and values quoted by _ident / _lit)
        + f"WITH cat AS ({catalog}) SELECT json_build_array('C', nsp, rel, keycol, keytype)::text FROM cat "  # noqa: S608 (names and values quoted by _ident / _lit)
          "ORDER BY nsp, rel;\n"
        + f"WITH cat AS ({catalog}) SELECT format('SELECT json_build_array(''S'', %L, %L, count(*), "  # noqa: S608 (names and values quoted by _ident / _lit)
          f"coalesce(sum({ROW_HASH}), 0)::text)::text FROM %I.%I AS r', nsp, rel, nsp, rel) FROM cat "
          "ORDER BY nsp, rel \\gexec\n"
        + "COMMIT;\n"
    )


def _bucket_expr(key: str, kind: str, size: int, nbuckets: int) -> str:
    k = f"r.{_ident(key)}"
    if kind == "int":
        return f"(CASE WHEN {k} >= 0 THEN {k}::bigint / {size} ELSE -((-({k}::bigint + 1)) / {size}) - 1 END)"
    return f"abs(hashtextextended({k}::text, 7) % {nbuckets})"


def buckets_sql(schema: str, table: str, key: str, kind: str, size: int, nbuckets: int, timeout_s: float) -> str:
    b = _bucket_expr(key, kind, size, nbuckets)
    return (_preamble(timeout_s)  # noqa: S608 (names and values quoted by _ident / _lit)
            + f"SELECT json_build_array(b, count(*), sum(h)::text)::text FROM (SELECT {b} AS b, {ROW_HASH} AS h "  # noqa: S608 (names and values quoted by _ident / _lit)
              f"FROM {_ident(schema)}.{_ident(table)} AS r) s GROUP BY b ORDER BY b;\nCOMMIT;\n")


def rows_sql(schema: str, table: str, key: str, kind: str, size: int, nbuckets: int, buckets: Sequence[int],
             timeout_s: float) -> str:
    k = f"r.{_ident(key)}"
    if kind == "int":
        ranges = bucket_ranges(buckets, size)
        where = " OR ".join(f"({k} >= {lo} AND {k} < {hi})" for lo, hi in ranges)
    else:
        where = f"{_bucket_expr(key, kind, size, nbuckets)} IN ({', '.join(str(int(b)) for b in buckets)})"
    return (_preamble(timeout_s)  # noqa: S608 (names and values quoted by _ident / _lit)
            + f"SELECT json_build_array({k}::text, {ROW_HASH}::text)::text FROM {_ident(schema)}.{_ident(table)} "  # noqa: S608 (names and values quoted by _ident / _lit)
              f"AS r WHERE {where};\nCOMMIT;\n")



class Psql:
    """Runs SQL through psql for one site's copy: over SSH on its host, or locally."""

    def __init__(self, site_name: str, site: PostgresSite, pool: RemoteRunner | None, base_dir: Path,
                 timeout: float) -> None:
        self.site_name = site_name
        self.site = site
        self.pool = pool
        self.base_dir = base_dir
        self.timeout = timeout
        self.label = f"{site_name} ({site.host})" if site.host else f"{site_name} (local psql)"

    def _password(self) -> str | None:
        s = self.site
        if s.password_file is not None:
            path = s.password_file.expanduser()
            path = path if path.is_absolute() else self.base_dir / path
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as e:
                raise ConfigError(f"cannot read the password file {path}: {e.strerror}") from None
            pw = text.splitlines()[0] if text else ""
        elif s.password_env is not None:
            if s.password_env not in os.environ:
                raise ConfigError(f"environment variable {s.password_env} (password_env of {self.label}) is not set")
            pw = os.environ[s.password_env]
        else:
            return None
        if "\n" in pw or "\r" in pw or "\0" in pw:
            raise ConfigError(f"the password of {self.label} contains a line break or NUL")
        return pw

    def conninfo(self) -> str:
        c = self.site.conninfo.strip()
        extra = {"connect_timeout": str(self.site.connect_timeout), "application_name": "drctl-verify"}
        if re.match(r"^postgres(ql)?://", c):
            sep = "&" if "?" in c else "?"
            return c + sep + "&".join(f"{k}={v}" for k, v in extra.items())
        return " ".join([c, *(f"{k}={v}" for k, v in extra.items())]).strip()

    def argv(self) -> list[str]:
        return [*self.site.psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", self.conninfo()]

    def query(self, sql: str) -> list[Any]:
        """Run ``sql``; every non-empty output line is one JSON value."""
        password = self._password()
        argv = self.argv()
        data = sql.encode("utf-8")
        if self.site.host is not None:
            if self.pool is None:
                raise UsageError(f"{self.label}: psql over SSH needs an SSH pool")
            if password is not None:
                argv = ["sh", "-c", 'IFS= read -r PGPASSWORD || exit 90; export PGPASSWORD; exec "$@"', "drctl-psql",
                        *argv]
                data = password.encode("utf-8") + b"\n" + data
            res = self.pool.run(self.site.host, argv, stdin=data, timeout=self.timeout)
            rc, out, err = res.rc, res.stdout, res.stderr
        else:
            env = dict(os.environ)
            env.pop("PGPASSWORD", None)
            if password is not None:
                env["PGPASSWORD"] = password
            try:
                done = subprocess.run(argv, input=data, capture_output=True, timeout=self.timeout, env=env,
                                      check=False)
            except FileNotFoundError:
                raise DatabaseError(f"{self.label}: {argv[0]} is not installed on this machine") from None
            except subprocess.TimeoutExpired:
                raise DatabaseError(f"{self.label}: psql did not finish within {self.timeout:g}s") from None
            rc, out, err = done.returncode, done.stdout, done.stderr
        if rc != 0:
            text = psql.error_text(err, rc)
            if rc == 127 or "not found" in text and self.site.psql[0] in text:
                raise DatabaseError(f"{self.label}: {self.site.psql[0]} is not available: {text}")
            if rc == 2 and psql.UNREACHABLE.search(text):
                raise DatabaseUnreachableError(f"{self.label}: the database does not answer: {text}")
            raise DatabaseError(f"{self.label}: psql failed (exit {rc}): {text}")
        return psql.json_rows(self.label, out)


@dataclass
class TableInfo:
    schema: str
    table: str
    key: str | None
    key_type: str | None
    sums: TableSums | None = None

    @property
    def name(self) -> str:
        return display_table(self.schema, self.table)

    @property
    def key_kind(self) -> str | None:
        if self.key is None:
            return None
        return "int" if self.key_type in INT_TYPES else "hash"


def table_sums(psql: Psql, target: PostgresTarget) -> tuple[dict[str, TableInfo], float]:
    """Row counts and checksums of the target's tables at one site (missing tables are absent),
    and the seconds it took."""
    started = time.monotonic()
    rows = psql.query(sums_sql(target, psql.timeout))
    tables: dict[tuple[str, str], TableInfo] = {}
    for row in rows:
        if row[0] == "C":
            tables[(row[1], row[2])] = TableInfo(row[1], row[2], row[3], row[4])
        elif row[0] == "S":
            info = tables[(row[1], row[2])]
            info.sums = TableSums(int(row[3]), str(row[4]), info.key, info.key_kind)  # type: ignore[arg-type]
    return {t.name: t for t in tables.values()}, time.monotonic() - started


def _listed_tables(target: PostgresTarget) -> list[str]:
    """The tables the inventory names, as the comparison names them (schema.table)."""
    return [display_table(*split_table_name(t.name, target.schemas[0])) for t in target.tables]


def _table_settings(target: PostgresTarget, name: str) -> PgTable | None:
    for t in target.tables:
        schema, table = split_table_name(t.name, target.schemas[0])
        if display_table(schema, table) == name:
            return t
    return None


def _narrow(diff: TableDiff, ref_info: TableInfo, bak_info: TableInfo, target: PostgresTarget, ref: Psql,
            bak: Psql, ex: ThreadPoolExecutor) -> None:
    """Fill in the key ranges (or hash buckets) and the keys where a table differs."""
    if ref_info.key is None or ref_info.key_kind is None:
        diff.note = "no single-column primary key (or `key`) to narrow the difference down by"
        return
    if bak_info.key != ref_info.key or bak_info.key_kind != ref_info.key_kind:
        diff.note = (f"the key differs between the sides ({ref_info.key} {ref_info.key_type} / "
                     f"{bak_info.key} {bak_info.key_type}); not narrowed down")
        return
    settings = _table_settings(target, ref_info.name)
    size = (settings.bucket_size if settings and settings.bucket_size else None) or target.bucket_size
    kind, key = ref_info.key_kind, ref_info.key
    sql = buckets_sql(ref_info.schema, ref_info.table, key, kind, size, target.hash_buckets, ref.timeout)
    fr, fb = ex.submit(ref.query, sql), ex.submit(bak.query, sql)
    rb = {int(b): (int(n), str(s)) for b, n, s in fr.result() if b is not None}
    bb = {int(b): (int(n), str(s)) for b, n, s in fb.result() if b is not None}
    buckets = differing_buckets(rb, bb)
    if kind == "int":
        diff.ranges = bucket_ranges(buckets, size)
    else:
        diff.hash_buckets = buckets
    # fetch rows of as many differing buckets as fit in the budget
    chosen: list[int] = []
    budget = MAX_ROWS_FETCHED
    for b in buckets:
        n = max(rb.get(b, (0, ""))[0], bb.get(b, (0, ""))[0])
        if chosen and n > budget:
            break
        chosen.append(b)
        budget -= n
    if not chosen:
        return
    sql = rows_sql(ref_info.schema, ref_info.table, key, kind, size, target.hash_buckets, chosen, ref.timeout)
    fr, fb = ex.submit(ref.query, sql), ex.submit(bak.query, sql)
    missing, extra, changed, cut = diff_rows(
        ((str(k), str(h)) for k, h in fr.result()), ((str(k), str(h)) for k, h in fb.result()), target.max_rows_listed)
    diff.missing_keys, diff.extra_keys, diff.changed_keys = missing, extra, changed
    diff.keys_truncated = cut or len(chosen) < len(buckets)


def verify_postgres(target: PostgresTarget, *, service: str, pool: RemoteRunner | None, base_dir: Path,
                    state_dir: Path, primary_site: str, backup_site: str,
                    record_baseline: bool = False) -> tuple[PostgresReport, str | None]:
    """Compare tables between the primary and the backup database (or the newest baseline)."""
    p_site, b_site = target.sites[primary_site], target.sites[backup_site]
    ref = Psql(primary_site, p_site, pool, base_dir, target.timeout)
    bak = Psql(backup_site, b_site, pool, base_dir, target.timeout)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="verify-pg") as ex:
        fr, fb = ex.submit(table_sums, ref, target), ex.submit(table_sums, bak, target)
        primary_error: DrctlError | None = None
        ref_tables: dict[str, TableInfo] | None = None
        try:
            ref_tables, ref_elapsed = fr.result()
        except (HostUnreachableError, DatabaseUnreachableError) as e:
            primary_error = e
        bak_tables, bak_elapsed = fb.result()
        backup_info = SideInfo(backup_site, b_site.host, _where(b_site),
                               {"tables": len(bak_tables), "rows": _rows(bak_tables),
                                "elapsed_s": round(bak_elapsed, 3)})
        bak_sums = {n: t.sums for n, t in bak_tables.items() if t.sums is not None}
        if ref_tables is not None:
            ref_sums = {n: t.sums for n, t in ref_tables.items() if t.sums is not None}
            diffs = compare_table_sums(ref_sums, bak_sums, _listed_tables(target))
            for d in diffs:
                if d.status == "differs":
                    _narrow(d, ref_tables[d.name], bak_tables[d.name], target, ref, bak, ex)
            recorded = None
            if record_baseline:
                writer = bl.BaselineWriter(state_dir, service, target.name, kind="postgres", meta={
                    "site": primary_site, "host": p_site.host, "location": _where(p_site)})
                try:
                    for name, sums in sorted(ref_sums.items()):
                        writer.add(b"P\t" + json.dumps({"table": name, **sums.as_dict()}).encode() + b"\n")
                    recorded = str(writer.commit())
                finally:
                    writer.discard()
            primary_info = SideInfo(primary_site, p_site.host, _where(p_site),
                                    {"tables": len(ref_tables), "rows": _rows(ref_tables),
                                     "elapsed_s": round(ref_elapsed, 3)})
            return PostgresReport(target.name, "primary", backup_info, diffs, primary=primary_info), recorded
    assert primary_error is not None
    if record_baseline:
        raise primary_error
    base, skipped = bl.newest_baseline(state_dir, service, target.name)
    if base is None:
        raise type(primary_error)(
            f"{service}/{target.name}: the primary database does not answer ({primary_error.message}) and no "
            "intact baseline is recorded" + (f" ({'; '.join(skipped)})" if skipped else ""),
            hint="record one while the primary is up: drctl verify --record-baseline SERVICE")
    ref_sums = {}
    for line in base.lines():
        if line.startswith(b"P\t"):
            d = json.loads(line[2:])
            ref_sums[d["table"]] = TableSums.from_dict(d)
    diffs = compare_table_sums(ref_sums, bak_sums, _listed_tables(target))
    notes = [f"the primary does not answer: {primary_error.message}; compared the backup with the baseline "
             f"recorded {base.ref.created_iso} (table checksums only: differences are not narrowed down)"] + skipped
    return PostgresReport(target.name, "baseline", backup_info, diffs, baseline=base.ref, notes=notes), None


def _rows(tables: dict[str, TableInfo]) -> int:
    return sum(t.sums.rows for t in tables.values() if t.sums is not None)


def _where(site: PostgresSite) -> str:
    return site.conninfo or "(default connection)"


# === a service ======================================================================================


def verify_service(inventory: Inventory, service_name: str, pool: RemoteRunner, state_dir: Path, *,
                   full: bool = False, primary_site: str | None = None, backup_site: str | None = None,
                   record_baseline: bool = False, targets: Sequence[str] | None = None) -> IntegrityReport:
    """Compare every integrity target of a service between its primary and backup copies.

    Differences are in the report (``.ok``, ``.summary()``, ``.as_dict()``); failures to verify
    raise ``drctl.errors`` (e.g. ``HostUnreachableError`` when the backup does not answer, or the
    primary does not and no baseline exists). Blocking; safe to run in parallel threads."""
    try:
        svc = inventory.services[service_name]
    except KeyError:
        raise UsageError(f"unknown service {service_name!r}") from None
    primary_site = primary_site or svc.primary
    backup_site = backup_site or svc.backup
    started = time.monotonic()
    report = IntegrityReport(service_name, primary_site, backup_site)
    hasher = FileHasher(pool)
    chosen = list(svc.integrity)
    if targets:
        unknown = sorted(set(targets) - {t.name for t in chosen})
        if unknown:
            raise UsageError(f"{service_name} has no integrity target {', '.join(unknown)}; "
                             f"known: {', '.join(t.name for t in chosen) or '(none)'}")
        chosen = [t for t in chosen if t.name in targets]
    for target in chosen:
        for site in (primary_site, backup_site):
            if site not in target.sites:
                raise ConfigError(f"{service_name}/{target.name}: no location for site {site!r}")
        try:
            if isinstance(target, FilesTarget):
                files_report, recorded = verify_files(
                    target, service=service_name, pool=pool, hasher=hasher, state_dir=state_dir,
                    primary_site=primary_site, backup_site=backup_site, full=full, record_baseline=record_baseline)
                report.targets.append(files_report)
            else:
                pg_report, recorded = verify_postgres(
                    target, service=service_name, pool=pool, base_dir=inventory.base_dir, state_dir=state_dir,
                    primary_site=primary_site, backup_site=backup_site, record_baseline=record_baseline)
                report.targets.append(pg_report)
        except DrctlError as e:
            if isinstance(e, StepFailedError | ConfigError | UsageError) and not e.message.startswith(service_name):
                e.message = f"{service_name}/{target.name}: {e.message}"
                e.args = (e.message,)
            raise
        if recorded:
            report.baselines_recorded.append(recorded)
    report.elapsed_s = time.monotonic() - started
    return report

