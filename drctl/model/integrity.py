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

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from drctl.units import parse_duration

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)]
_IDENT = r"[A-Za-z_][A-Za-z0-9_$]*"
_PASSWORD_IN_CONNINFO = re.compile(r"(^|\s)password\s*=|^postgres(ql)?://[^/@]*:[^/@]*@|[?&]password=", re.I)


def _duration(value: Any) -> float:
    return parse_duration(value)


Duration = Annotated[float, BeforeValidator(_duration)]


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

    share: float = Field(0.25, gt=0, le=1)
    min_files: int = Field(10, ge=1)


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
    workers: int | None = Field(None, ge=1, le=64, description="hashing threads per host (default: its CPUs)")
    cache: bool = Field(True, description="keep a manifest cache on each host so unchanged files are not re-hashed")
    cache_dir: str | None = Field(None, description="where on the hosts (default ~/.cache/drctl/manifests)")
    cache_settle: Duration = Field(
        2.0, description="a file changed less than this before it was read is read again next time "
                         "(filesystem timestamps are coarse; raise it for FAT or some NFS servers)")
    mass_change: MassChange = Field(default_factory=lambda: MassChange.model_validate({}))
    timeout: Duration = Field(3600.0, description="for hashing one side")
    baseline_max_age: Duration | None = Field(
        None, description="`drctl check` warns when the newest baseline is older than this")


# --- PostgreSQL ----------------------------------------------------------------------------------


class PostgresSite(_Model):
    """How to reach a site's copy of the database."""

    host: Name | None = Field(None, description="run psql over SSH on this host; none: psql from drctl's machine")
    conninfo: str = Field("", description="libpq connection string (key=value or URI), never with a password")
    password_file: Path | None = Field(None, description="file on drctl's machine holding the password")
    password_env: str | None = Field(None, description="environment variable (on drctl's machine) holding it")
    psql: list[str] = Field(default_factory=lambda: ["psql"], min_length=1,
                            description="how to run psql there, e.g. [sudo, -u, postgres, psql]")
    connect_timeout: int = Field(5, ge=1, le=300)

    @model_validator(mode="after")
    def _no_inline_password(self) -> PostgresSite:
        if _PASSWORD_IN_CONNINFO.search(self.conninfo.strip()):
            raise ValueError("`conninfo` must not hold a password: use `password_file` or `password_env`")
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("give at most one of `password_file` or `password_env`")
        if "\0" in self.conninfo or "\n" in self.conninfo:
            raise ValueError("`conninfo` cannot contain NUL or newline characters")
        return self


class PgTable(_Model):
    """A table to compare. ``key``: the column to narrow differences down by (default: the
    table's single-column primary key); integer keys give key ranges of ``bucket_size``."""

    name: str = Field(pattern=rf"^{_IDENT}$|^{_IDENT}\.{_IDENT}$|^\"[^\"]+\"(\.\"[^\"]+\")?$")
    key: str | None = Field(None, max_length=63)
    bucket_size: int | None = Field(None, ge=1)


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
    bucket_size: int = Field(1000, ge=1, description="rows per key range when narrowing down an integer key")
    hash_buckets: int = Field(256, ge=2, le=65536, description="buckets for keys that are not integers")
    max_rows_listed: int = Field(1000, ge=0, description="differing keys named per table, at most")
    timeout: Duration = 600.0
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
