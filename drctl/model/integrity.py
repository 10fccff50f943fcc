"""Integrity targets of a service: what ``drctl verify`` and the ``verify_integrity`` step compare
between the primary's copy and the backup's copy. Pure pydantic models, frozen, no I/O.

A service's ``integrity`` is a list of targets, a discriminated union on ``kind``:

- ``files``: a directory tree per site (``sites: {SITE: {host, path}}``), with ``include`` /
  ``exclude`` globs. A glob without ``/`` matches a name at any depth; with ``/`` it matches the
  path relative to the tree's root (a leading ``/`` anchors it there); ``*`` and ``?`` also match
  ``/``; a trailing ``/`` applies it to directories only. Excluded directories are not descended.
- ``postgres``: tables of a PostgreSQL database per site, reached with ``psql`` over SSH on a host
  (``host``) or directly from drctl's machine (no ``host``), with a libpq ``conninfo`` that never
  holds a password: it comes from ``password_file`` or ``password_env``.

This module imports nothing from ``drctl.model.inventory`` at import time (that module imports
this one); the reference checks against sites and hosts are ``integrity_reference_problems``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from drctl.units import MAX_TIMEOUT, parse_duration

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)]
_IDENT = r"[A-Za-z_][A-Za-z0-9_$]*"
_URI_PREFIX = re.compile(r"^postgres(?:ql)?://", re.I)  # libpq: lower case only; refused either way
#: a URI whose userinfo holds a "/" (libpq would misread it, but it is a password all the same)
_URI_SLASHED_PASSWORD = re.compile(r"^postgres(?:ql)?://[^@/?]*:[^?]*@", re.I)
#: the password of a URI's userinfo, told apart from a ?password= key
_USERINFO_KEY = "\0uri-userinfo"
#: libpq keywords that carry a secret inline (libpq's keywords are case-sensitive; these are
#: compared case-insensitively, after percent-decoding, to refuse every spelling of them)
_SECRET_KEYS = frozenset({"password", "passwd", "pwd", "pass", "sslpassword"})
_INLINE_REFUSAL = ("`conninfo` must not hold a password ({where}): give it through the environment "
                   "(`password_env`, passed to psql as PGPASSWORD), a pgpass file (libpq's `passfile` "
                   "or ~/.pgpass), or a file reference (`password_file`)")


def _duration(value: Any) -> float:
    return parse_duration(value)


def _timeout(value: Any) -> float:
    return parse_duration(value, maximum=MAX_TIMEOUT, positive=True)


def _remote_path(value: str) -> str:
    if not value.strip() or "\0" in value or "\n" in value:
        raise ValueError(f"{value[:60]!r}: expected a non-empty path without NUL or newline characters")
    return value


def _program(argv: list[str]) -> list[str]:
    if argv and not argv[0].strip():
        raise ValueError("the first argument, the program to run, is empty")
    if any("\0" in a for a in argv):
        raise ValueError("an argument contains a NUL character")
    return argv


Duration = Annotated[float, BeforeValidator(_duration)]
Timeout = Annotated[float, BeforeValidator(_timeout)]
#: an integer written as one: never a YAML boolean, a float or a quoted string
Int = Annotated[int, Field(strict=True)]
#: the largest count or size any integer field takes
_MAX_COUNT = 10**9


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- file trees ----------------------------------------------------------------------------------


class FileTreeSite(_Model):
    """Where a site keeps its copy of the tree."""

    host: Name
    path: str = Field(min_length=1, description="absolute path of the tree's root on the host")

    @model_validator(mode="after")
    def _absolute(self) -> FileTreeSite:
        if not self.path.startswith("/"):
            raise ValueError("`path` must be absolute (start with /)")
        if "\0" in self.path:
            raise ValueError("`path` cannot contain a NUL character")
        return self


class MassChange(_Model):
    """When to call a difference a mass change (the mark of encryption in place): at least
    ``share`` of the compared files, and at least ``min_files`` files, changed content while
    keeping their names and sizes."""

    share: float = Field(0.25, gt=0, le=1, strict=True, allow_inf_nan=False)
    min_files: Int = Field(10, ge=1, le=_MAX_COUNT)


def _check_globs(globs: list[str]) -> list[str]:
    for g in globs:
        if not g.strip("/"):
            raise ValueError(f"empty glob {g!r}")
        if "\0" in g or "\n" in g:
            raise ValueError(f"glob {g!r} contains a NUL or newline character")
        if "\\" in g or "[^" in g:
            raise ValueError(f"glob {g!r}: backslash escapes and [^...] are not supported "
                             "(write [*] for a literal *, [!...] to negate a set)")
    return globs


def _check_includes(globs: list[str]) -> list[str]:
    for g in globs:
        if g.endswith("/"):
            raise ValueError(f"include glob {g!r} ends with /: includes select files; write {g + '*'!r}")
    return globs


Globs = Annotated[list[str], AfterValidator(_check_globs)]
Includes = Annotated[list[str], AfterValidator(_check_globs), AfterValidator(_check_includes)]


class FilesTarget(_Model):
    """A directory tree hashed on each site's host; only digests travel."""

    kind: Literal["files"]
    name: Name
    sites: dict[Name, FileTreeSite]
    include: Includes = Field(default_factory=list, description="only files matching one of these (default: all)")
    exclude: Globs = Field(default_factory=list, description="files and directories to leave out")
    algorithm: Literal["sha256", "sha1", "sha512", "blake2b"] = "sha256"
    hasher: Literal["auto", "python", "coreutils"] = Field(
        "auto", description="auto: the host's python3 when it has one, else coreutils")
    workers: Int | None = Field(None, ge=1, le=64, description="hashing threads per host (default: its CPUs)")
    cache: bool = Field(True, description="keep a manifest cache on each host so unchanged files are not re-hashed")
    cache_dir: Annotated[str, AfterValidator(_remote_path)] | None = Field(
        None, description="where on the hosts (default ~/.cache/drctl/manifests)")
    cache_settle: Duration = Field(
        2.0, description="a file changed less than this before it was read is read again next time "
                         "(filesystem timestamps are coarse; raise it for FAT or some NFS servers)")
    mass_change: MassChange = Field(default_factory=lambda: MassChange.model_validate({}))
    timeout: Timeout = Field(3600.0, description="for hashing one side")
    baseline_max_age: Duration | None = Field(
        None, description="`drctl check` warns when the newest baseline is older than this")


# --- PostgreSQL ----------------------------------------------------------------------------------


class PostgresSite(_Model):
    """How to reach a site's copy of the database."""

    # a refused conninfo holds a password: never repeat the input in an error
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    host: Name | None = Field(None, description="run psql over SSH on this host; none: psql from drctl's machine")
    conninfo: str = Field("", description="libpq connection string (key=value or URI), never with a password")
    password_file: Path | None = Field(None, description="file on drctl's machine holding the password")
    password_env: str | None = Field(None, description="environment variable (on drctl's machine) holding it")
    psql: Annotated[list[str], AfterValidator(_program)] = Field(default_factory=lambda: ["psql"], min_length=1,
                            description="how to run psql there, e.g. [sudo, -u, postgres, psql]")
    connect_timeout: Int = Field(5, ge=1, le=300)

    @field_validator("conninfo")
    @classmethod
    def _no_inline_password(cls, conninfo: str) -> str:
        if "\0" in conninfo or "\n" in conninfo or "\r" in conninfo:
            raise ValueError("`conninfo` cannot contain NUL or newline characters")
        where = inline_password(conninfo)
        if where is not None:
            raise ValueError(_INLINE_REFUSAL.format(where=where))
        return conninfo

    @model_validator(mode="after")
    def _one_password_source(self) -> PostgresSite:
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("give at most one of `password_file` or `password_env`")
        return self


def parse_conninfo(conninfo: str) -> list[tuple[str, str]]:
    """The (keyword, value) pairs of a libpq connection string, read the way libpq reads it.

    key=value form: keywords end at ``=`` or white space, white space may surround ``=``, a value
    is single-quoted (backslash escapes any character, ``\\'`` a quote) or runs to the next white
    space (backslash escapes there too); nothing is percent-decoded. URI form
    (``postgresql://[user[:password]@][host][:port][,...][/dbname][?key=value&...]``): the
    userinfo ends at the first ``@`` before any ``/``, and user, password, database and query
    keys and values are percent-decoded. The URI's user and password come back as ``user`` and
    ``password``, its database as ``dbname``. Raises ValueError for what libpq would refuse to parse.
    """
    return [("password" if k == _USERINFO_KEY else k, v) for k, v in _pairs(conninfo)]


def _pairs(conninfo: str) -> list[tuple[str, str]]:
    s = conninfo.strip()
    if _URI_PREFIX.match(s):
        return _parse_conninfo_uri(s)
    pairs: list[tuple[str, str]] = []
    i, n = 0, len(s)
    while True:
        while i < n and s[i].isspace():
            i += 1
        if i >= n:
            return pairs
        start = i
        while i < n and s[i] != "=" and not s[i].isspace():
            i += 1
        key = s[start:i]
        while i < n and s[i].isspace():
            i += 1
        if i >= n or s[i] != "=":
            raise ValueError(f'missing "=" after {_shown(key)} in the connection string')
        i += 1
        while i < n and s[i].isspace():
            i += 1
        value: list[str] = []
        if i < n and s[i] == "'":
            i += 1
            while True:
                if i >= n:
                    raise ValueError(f"unterminated quoted value of {_shown(key)} in the connection string")
                if s[i] == "\\":
                    i += 1
                    if i < n:
                        value.append(s[i])
                        i += 1
                elif s[i] == "'":
                    i += 1
                    break
                else:
                    value.append(s[i])
                    i += 1
        else:
            while i < n and not s[i].isspace():
                if s[i] == "\\":
                    i += 1
                    if i < n:
                        value.append(s[i])
                        i += 1
                else:
                    value.append(s[i])
                    i += 1
        pairs.append((key, "".join(value)))


def _shown(key: str) -> str:
    """A keyword as it may appear in a message: quoted if it looks like one, else not at all (what
    was taken for a keyword may be a piece of a password)."""
    return repr(key) if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_%]{0,39}", key) else "a keyword"


def _uri_decode(text: str) -> str:
    """libpq's percent-decoding of URI parts: every ``%`` starts two hex digits, ``%00`` is refused."""
    if re.search(r"%(?![0-9A-Fa-f]{2})", text):
        raise ValueError("invalid percent-encoded token in the connection URI")
    if "%00" in text:
        raise ValueError("forbidden value %00 in the connection URI")
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise ValueError("a percent-encoded token of the connection URI is not UTF-8") from None


def _parse_conninfo_uri(uri: str) -> list[tuple[str, str]]:
    rest = _URI_PREFIX.sub("", uri, count=1)
    pairs: list[tuple[str, str]] = []
    at, slash = rest.find("@"), rest.find("/")
    if at >= 0 and (slash < 0 or at < slash):  # libpq: the first "@" before any "/" ends the user part
        userinfo, rest = rest[:at], rest[at + 1:]
        user, colon, password = userinfo.partition(":")
        if user:
            pairs.append(("user", _uri_decode(user)))
        if colon:
            pairs.append((_USERINFO_KEY, _uri_decode(password)))
    rest, _, query = rest.partition("?")
    hostspec, _, dbname = rest.partition("/")
    if hostspec:
        pairs.append(("host", _uri_decode(hostspec)))
    if dbname:
        pairs.append(("dbname", _uri_decode(dbname)))
    for param in filter(None, query.split("&")):
        key, eq, value = param.partition("=")
        if not eq or "=" in value:
            raise ValueError(f"malformed parameter {_shown(key)} in the connection URI's query "
                             "(expected KEY=VALUE, with = in a value written %3D)")
        pairs.append((_uri_decode(key), _uri_decode(value)))
    return pairs


def inline_password(conninfo: str) -> str | None:
    """Where ``conninfo`` holds a password (``"key password"``, ``"the URI's user:password@"``),
    or None. A ``dbname`` that is itself a connection string (libpq expands it) is looked into;
    a connection string libpq could not parse raises ValueError."""
    if _URI_SLASHED_PASSWORD.match(conninfo.strip()):
        head = _URI_PREFIX.sub("", conninfo.strip(), count=1).split("/", 1)[0]
        if "@" not in head and not re.fullmatch(r"[^:]*:\d*", head):  # not HOST:PORT/DBNAME@...
            return "the URI's user:password@"
    for key, value in _pairs(conninfo):
        if key == _USERINFO_KEY:
            if value:
                return "the URI's user:password@"
            continue
        norm = unquote(key).strip().lower()
        if norm in _SECRET_KEYS and value:
            return f"key {key!r}" if norm == key else f"key {key!r}, read as {norm!r}"
        if norm == "dbname" and ("=" in value or _URI_PREFIX.match(value.strip())):
            inner = inline_password(value)
            if inner is not None:
                return f"{inner} in the connection string given as dbname"
    return None


class PgTable(_Model):
    """A table to compare. ``key``: the column to narrow differences down by (default: the
    table's single-column primary key); integer keys give key ranges of ``bucket_size``."""

    name: str = Field(pattern=rf"^{_IDENT}$|^{_IDENT}\.{_IDENT}$|^\"[^\"]+\"(\.\"[^\"]+\")?$")
    key: str | None = Field(None, max_length=63)
    bucket_size: Int | None = Field(None, ge=1, le=_MAX_COUNT)


def _table(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


class PostgresTarget(_Model):
    """Tables compared by row count and an order-independent checksum computed in the database."""

    kind: Literal["postgres"]
    name: Name
    sites: dict[Name, PostgresSite]
    tables: list[Annotated[PgTable, BeforeValidator(_table)]] = Field(
        default_factory=list, description="SCHEMA.TABLE or {name, key, bucket_size}; empty: every table in `schemas`")
    schemas: list[Annotated[str, Field(pattern=rf"^{_IDENT}$")]] = Field(default_factory=lambda: ["public"])
    bucket_size: Int = Field(1000, ge=1, le=_MAX_COUNT,
                             description="rows per key range when narrowing down an integer key")
    hash_buckets: Int = Field(256, ge=2, le=65536, description="buckets for keys that are not integers")
    max_rows_listed: Int = Field(1000, ge=0, le=_MAX_COUNT, description="differing keys named per table, at most")
    timeout: Timeout = 600.0
    baseline_max_age: Duration | None = Field(
        None, description="`drctl check` warns when the newest baseline is older than this")


IntegrityTarget = Annotated[FilesTarget | PostgresTarget, Field(discriminator="kind")]


def _unique_names(targets: list[Any]) -> list[Any]:
    seen: set[str] = set()
    for t in targets:
        if t.name in seen:
            raise ValueError(f"integrity target name {t.name!r} is used twice")
        seen.add(t.name)
    return targets


IntegrityTargets = Annotated[list[IntegrityTarget], AfterValidator(_unique_names)]


def integrity_reference_problems(
    base: tuple[str | int, ...], targets: list[FilesTarget | PostgresTarget], sites: tuple[str, str],
    host_site: Mapping[str, str],
) -> list[tuple[tuple[str | int, ...], str]]:
    """Dangling references of a service's targets: each needs both of the service's sites
    (``sites`` = primary, backup), and each host must exist and belong to the site it serves."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    known = ", ".join(sorted(host_site)) or "(none defined)"
    for i, target in enumerate(targets):
        here = (*base, "integrity", i)
        for site in sites:
            if site not in target.sites:
                problems.append(((*here, "sites"), f"no location for site {site!r}"))
        for site, loc in target.sites.items():
            if site not in sites:
                problems.append(((*here, "sites", site),
                                 f"site {site!r} is neither this service's primary nor its backup"))
            if loc.host is None:
                continue
            if loc.host not in host_site:
                problems.append(((*here, "sites", site, "host"), f"unknown host {loc.host!r}; known: {known}"))
            elif host_site[loc.host] != site:
                problems.append(((*here, "sites", site, "host"),
                                 f"host {loc.host!r} belongs to site {host_site[loc.host]!r}, not {site!r}"))
    return problems
