"""Where each service is served now, from observed facts. Pure: no I/O.

DNS tells which site's values the records hold; HAProxy tells which site's server takes traffic.
Traffic moved by commands cannot be observed, so the journal's last completed run stands in for
it. A service is *served* from a site when every indicator that answered names that site;
indicators that disagree make it ``mixed``, none at all ``unknown``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from drctl.core.plan import Facts
from drctl.model.inventory import CommandTraffic, HAProxyTraffic, Inventory

MIXED = "mixed"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Location:
    service: str
    primary: str
    backup: str
    dns: str | None  # a site, "mixed", "other" (values of neither site), or None (no DNS / no answer)
    dns_detail: str
    traffic: str | None  # a site, "both", "none", or None (no traffic config / no answer)
    traffic_detail: str
    serving: str  # a site, "mixed" or "unknown"

    @property
    def on_primary(self) -> bool:
        return self.serving == self.primary

    @property
    def on_backup(self) -> bool:
        return self.serving == self.backup

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """``dc1 (primary)`` or ``mixed: DNS at dc2, traffic at dc1``."""
        if self.serving == self.primary:
            return f"{self.serving} (primary)"
        if self.serving == self.backup:
            return f"{self.serving} (backup)"
        parts = []
        if self.dns is not None:
            parts.append(f"DNS at {self.dns}")
        if self.traffic is not None:
            parts.append(f"traffic at {self.traffic}")
        return self.serving + (": " + ", ".join(parts) if parts else "")


def _dns_site(inv: Inventory, name: str, facts: Facts) -> tuple[str | None, str]:
    svc = inv.services[name]
    if not svc.dns:
        return None, "no DNS records"
    sites: list[str | None] = []
    details = []
    for rec in svc.dns:
        got = facts.dns.get((rec.fqdn(), rec.type))
        if got is None:
            sites.append(None)
            details.append(f"{rec.fqdn()} {rec.type}: no answer")
            continue
        values = sorted(got)
        site = next((s for s in (svc.primary, svc.backup) if rec.values_for(s) == values), "other")
        sites.append(site)
        details.append(f"{rec.fqdn()} {rec.type} {','.join(values) or '(none)'}")
    known = {s for s in sites if s is not None}
    if not known:
        return None, "; ".join(details)
    return (known.pop() if len(known) == 1 else MIXED), "; ".join(details)


def _traffic_site(inv: Inventory, name: str, facts: Facts, journal_site: str | None) -> tuple[str | None, str]:
    svc = inv.services[name]
    tr = svc.traffic
    if isinstance(tr, HAProxyTraffic):
        states = {site: facts.lb.get((tr.balancer, tr.backend, server)) for site, server in tr.servers.items()
                  if site in (svc.primary, svc.backup)}
        detail = ", ".join(f"{tr.servers[s]} {st or '?'}" for s, st in sorted(states.items()))
        detail = f"{tr.balancer} {tr.backend}: {detail}"
        if any(st is None for st in states.values()):
            return None, detail
        ready = sorted(s for s, st in states.items() if st == "ready")
        if len(ready) == 1:
            return ready[0], detail
        return ("both" if ready else "none"), detail
    if isinstance(tr, CommandTraffic):
        if journal_site is None:
            return None, "moved by commands; no completed run in the journal"
        return journal_site, "moved by commands; per the journal's last completed run"
    return None, "no traffic configuration"


def locate(inv: Inventory, name: str, facts: Facts, journal_site: str | None = None) -> Location:
    """Where ``name`` is served, from DNS and load-balancer ``facts`` (and, for traffic moved by
    commands, ``journal_site``: the site the last completed run moved it to)."""
    svc = inv.services[name]
    dns, dns_detail = _dns_site(inv, name, facts)
    traffic, traffic_detail = _traffic_site(inv, name, facts, journal_site)
    known = [x for x in (dns, traffic) if x is not None]
    if not known:
        serving = UNKNOWN
    elif all(x == known[0] for x in known) and known[0] in (svc.primary, svc.backup):
        serving = known[0]
    else:
        serving = MIXED
    return Location(service=name, primary=svc.primary, backup=svc.backup, dns=dns, dns_detail=dns_detail,
                    traffic=traffic, traffic_detail=traffic_detail, serving=serving)


Journal = tuple[str, list[dict[str, Any]]]  # (run_id, records)


def newest_first(runs: list[Journal]) -> list[Journal]:
    """Runs by the time they started, newest first (run ids of the same second do not sort so)."""
    def started(run: Journal) -> float:
        return next((float(r.get("ts") or 0) for r in run[1] if r.get("event") == "run_started"), 0.0)

    return sorted(runs, key=started, reverse=True)


def journal_sites(runs: list[Journal]) -> dict[str, str]:
    """Service -> the site the newest completed run moved it to, from (run_id, records) journals.
    A run counts for a service when that service succeeded in it."""
    out: dict[str, str] = {}
    for _run_id, records in newest_first(runs):
        start = next((r for r in records if r.get("event") == "run_started"), None)
        end = next((r for r in reversed(records) if r.get("event") == "run_finished"), None)
        if start is None or end is None:
            continue
        for sp in start.get("plan", {}).get("services", []):
            name = sp.get("service")
            if name in out or (end.get("services") or {}).get(name) != "succeeded":
                continue
            out[name] = sp.get("to_site")
    return out


def last_runs(runs: list[Journal]) -> dict[str, dict[str, Any]]:
    """Service -> its newest run (id, operation, its result in that run, when), from (run_id,
    records) journals."""
    out: dict[str, dict[str, Any]] = {}
    for run_id, records in newest_first(runs):
        start = next((r for r in records if r.get("event") == "run_started"), None)
        if start is None:
            continue
        end = next((r for r in reversed(records) if r.get("event") == "run_finished"), None)
        for sp in start.get("plan", {}).get("services", []):
            name = sp.get("service")
            if name in out:
                continue
            result = (end.get("services") or {}).get(name, end.get("status")) if end else "interrupted"
            out[name] = {"run_id": run_id, "operation": start.get("operation"), "result": result,
                         "started": start.get("ts"), "drill_id": start.get("drill_id")}
    return out


def status_row(loc: Location, backups: list[dict[str, Any]], drill: dict[str, Any] | None,
               run: dict[str, Any] | None) -> dict[str, Any]:
    """One service's line of ``drctl status`` as data: where it is served, its backups' ages (the
    backup site's first), its last drill and its last run."""
    order = {loc.backup: 0, loc.primary: 1}
    return {"service": loc.service, "serving": loc.serving, "on_primary": loc.on_primary,
            "where": loc.describe(), "dns": loc.dns, "dns_detail": loc.dns_detail, "traffic": loc.traffic,
            "traffic_detail": loc.traffic_detail,
            "backups": sorted(backups, key=lambda b: order.get(b.get("site", ""), 2)),
            "last_drill": drill, "last_run": run}
