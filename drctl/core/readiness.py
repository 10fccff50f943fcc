"""Readiness: findings about each service and the verdict they add up to. Pure: no I/O.

``drctl check`` (and the planning report) gather observations through the drivers
(``drctl.engine.readiness``) and turn each into a ``Finding`` with the helpers here: a host
answered or not, a backup is so old against its limit, HAProxy knows the servers or not. A
service is *ready* when none of its findings failed; warnings are shown but do not block.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from drctl.units import format_duration

Level = Literal["ok", "warn", "fail"]
#: the checks, in the order their findings are listed for a service
CHECKS = ("host", "backup", "health", "tsig", "haproxy", "baseline")


@dataclass(frozen=True)
class Finding:
    """One thing checked about one service: ``check`` (one of CHECKS) on ``subject``."""

    service: str
    check: str
    subject: str
    level: Level
    detail: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Finding:
        return cls(service=d["service"], check=d["check"], subject=d["subject"], level=d["level"],
                   detail=d["detail"], data=dict(d.get("data") or {}))

    def line(self) -> str:
        """``web  FAIL  backup  dc2: ...`` (columns aligned for a fixed-width screen)."""
        mark = {"ok": "ok", "warn": "warn", "fail": "FAIL"}[self.level]
        return f"{self.service:<12} {mark:<4}  {self.check:<8} {self.subject}: {self.detail}"


@dataclass(frozen=True)
class Verdict:
    service: str
    ready: bool
    problems: tuple[str, ...]
    warnings: tuple[str, ...]

    def line(self) -> str:
        if self.ready:
            extra = f" ({len(self.warnings)} warning{'s' if len(self.warnings) != 1 else ''})" if self.warnings else ""
            return f"{self.service}: READY{extra}"
        n = len(self.problems)
        return f"{self.service}: NOT READY ({n} problem{'s' if n != 1 else ''}): " + "; ".join(self.problems)

    def to_dict(self) -> dict[str, Any]:
        return {"service": self.service, "ready": self.ready, "problems": list(self.problems),
                "warnings": list(self.warnings)}


def sort_findings(findings: Iterable[Finding], services: list[str]) -> list[Finding]:
    """Grouped by service (in ``services`` order), then by check, then by subject."""
    order = {s: i for i, s in enumerate(services)}
    return sorted(findings, key=lambda f: (order.get(f.service, len(order)), f.service,
                                           CHECKS.index(f.check) if f.check in CHECKS else len(CHECKS),
                                           f.subject))


def verdicts(findings: Iterable[Finding], services: list[str]) -> dict[str, Verdict]:
    """One verdict per service in ``services``: ready unless one of its findings failed."""
    by: dict[str, list[Finding]] = {s: [] for s in services}
    for f in findings:
        by.setdefault(f.service, []).append(f)
    out = {}
    for s in services:
        fs = sort_findings(by[s], services)
        problems = tuple(f"{f.subject}: {f.detail}" for f in fs if f.level == "fail")
        warnings = tuple(f"{f.subject}: {f.detail}" for f in fs if f.level == "warn")
        out[s] = Verdict(service=s, ready=not problems, problems=problems, warnings=warnings)
    return out


def all_ready(vs: Mapping[str, Verdict]) -> bool:
    return all(v.ready for v in vs.values())


# --- observations -> findings ---------------------------------------------------------------------


def host_finding(service: str, host: str, site: str, error: str | None, *, target: bool = True,
                 key_problem: bool = False) -> Finding:
    """A host of the site a failover would move to must answer; one of the other site (the one a
    failover leaves, perhaps because it is gone) not answering is a warning. A host whose key is
    unknown or CHANGED fails at either site: drctl never talks to it, a failover would refuse
    (``--force`` does not pass it), and one that went ahead could only end split."""
    data = {"host": host, "site": site, "target": target}
    if error is None:
        return Finding(service, "host", f"{host} ({site})", "ok", "reachable, host key verified", data)
    if key_problem:
        return Finding(service, "host", f"{host} ({site})", "fail", error, {**data, "host_key": True})
    if not target:
        return Finding(service, "host", f"{host} ({site})", "warn", f"{error} (not needed to fail over)",
                       {**data, "unanswered": True})
    return Finding(service, "host", f"{host} ({site})", "fail", error, {**data, "unanswered": True})


def backup_finding(service: str, site: str, where: str, *, age_s: float | None, max_age_s: float,
                   rpo_s: float | None, newest: str | None, target: bool, error: str | None = None) -> Finding:
    """The newest backup at ``site`` against its ``max_age`` (and the service's RPO target).

    ``target``: the site a failover would move to. A problem there fails the check; at the other
    site (needed to fail back) it is a warning."""
    bad: Level = "fail" if target else "warn"
    subject = site
    role = "" if target else " (needed to fail back)"
    data = {"site": site, "age_s": age_s, "max_age_s": max_age_s, "rpo_s": rpo_s, "newest": newest}
    if error is not None:
        return Finding(service, "backup", subject, bad, f"cannot read {where}: {error}{role}", data)
    if age_s is None:
        return Finding(service, "backup", subject, bad, f"no backup found at {where}{role}", data)
    age = format_duration(max(age_s, 0.0))
    if age_s > max_age_s:
        return Finding(service, "backup", subject, bad,
                       f"newest backup is {age} old, older than its limit {format_duration(max_age_s)}{role} "
                       f"({newest})", data)
    if rpo_s is not None and age_s > rpo_s:
        return Finding(service, "backup", subject, "warn",
                       f"newest backup is {age} old: within its limit {format_duration(max_age_s)} but past the "
                       f"service's RPO target {format_duration(rpo_s)} (a drill would miss it)", data)
    return Finding(service, "backup", subject, "ok",
                   f"newest backup {age} old (limit {format_duration(max_age_s)}): {newest}", data)


def health_finding(service: str, site: str, target: str, *, ok: bool, detail: str) -> Finding:
    data = {"site": site, "target": target}
    if ok:
        return Finding(service, "health", site, "ok", detail or "healthy", data)
    return Finding(service, "health", site, "fail", f"unhealthy: {detail or target}", data)


def tsig_finding(service: str, zone: str, server: str, key_name: str | None, error: str | None) -> Finding:
    subject = f"zone {zone} at {server}"
    key = f"key {key_name}" if key_name else "our TSIG key"
    if error is None:
        return Finding(service, "tsig", subject, "ok", f"accepts {key} for UPDATEs (probe changed nothing)")
    return Finding(service, "tsig", subject, "fail", error)


def haproxy_finding(service: str, balancer: str, backend: str, wanted: Mapping[str, str],
                    present: Mapping[str, str] | None, error: str | None = None) -> Finding:
    """``wanted``: site -> server name the inventory expects; ``present``: server -> state text
    as HAProxy reports it (None when HAProxy could not be asked)."""
    subject = f"{balancer} backend {backend}"
    if present is None:
        return Finding(service, "haproxy", subject, "fail", error or "HAProxy did not answer")
    missing = [f"{srv} (for {site})" for site, srv in sorted(wanted.items()) if srv not in present]
    states = ", ".join(f"{srv} {present[srv]}" for _site, srv in sorted(wanted.items()) if srv in present)
    if missing:
        return Finding(service, "haproxy", subject, "fail",
                       f"no server {', '.join(missing)}; it has: {', '.join(sorted(present)) or '(none)'}",
                       {"present": dict(present)})
    return Finding(service, "haproxy", subject, "ok", f"knows every server: {states}",
                   {"present": dict(present)})


def baseline_finding(service: str, target: str, *, age_s: float | None, limit_s: float,
                     error: str | None = None) -> Finding:
    """The newest integrity baseline of one target against its ``baseline_max_age``. An old or
    missing baseline is a warning: a failover does not need it, a verification after losing
    the primary does."""
    subject = f"integrity baseline {target}"
    data = {"age_s": age_s, "limit_s": limit_s}
    if error is not None:
        return Finding(service, "baseline", subject, "warn", error, data)
    if age_s is None:
        return Finding(service, "baseline", subject, "warn",
                       "no baseline recorded (`drctl verify --record-baseline` records one)", data)
    if age_s > limit_s:
        return Finding(service, "baseline", subject, "warn",
                       f"{format_duration(age_s)} old, older than its limit {format_duration(limit_s)}", data)
    return Finding(service, "baseline", subject, "ok",
                   f"{format_duration(max(age_s, 0.0))} old (limit {format_duration(limit_s)})", data)
