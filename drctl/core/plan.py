"""Planning: (inventory, playbook, selection, observed facts) -> Plan. Pure: no I/O, no drivers.

A Plan is a value: per service, the ordered Actions the playbook yields for it, each saying what
it changes from -> to. Services are ordered by ``depends_on`` (a service runs after the services
it depends on that are part of the same run). The same Plan is printed by ``plan``/``--dry-run``,
journaled by a real run, and re-read by ``resume``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from drctl.core.redact import redact_text
from drctl.errors import UsageError
from drctl.model.inventory import CommandTraffic, HAProxyTraffic, Inventory, Service
from drctl.model.playbook import MUTATING_KINDS, CommandStep, Playbook, WaitDns

Operation = Literal["failover", "failback"]
#: read-only kinds that may form the gate: run for every service before anything changes
GATE_KINDS = frozenset({"check_freshness", "health_check", "verify_integrity"})


@dataclass(frozen=True)
class Change:
    """One thing an action changes: ``what`` goes from ``before`` to ``after``."""

    what: str
    before: str
    after: str

    def render(self) -> str:
        return f"{self.what} {self.before} -> {self.after}"


@dataclass(frozen=True)
class Action:
    id: str
    service: str
    index: int
    kind: str
    title: str
    from_site: str
    to_site: str
    mutating: bool
    gate: bool
    changes: tuple[Change, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    expected_s: float = 0.0
    noop: bool = False  # observed facts say the world is already as this action would make it

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["changes"] = [asdict(c) for c in self.changes]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Action:
        d = dict(d)
        d["changes"] = tuple(Change(**c) for c in d.get("changes", ()))
        return cls(**d)


@dataclass(frozen=True)
class ServicePlan:
    service: str
    from_site: str
    to_site: str
    depends_on: tuple[str, ...]
    actions: tuple[Action, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"service": self.service, "from_site": self.from_site, "to_site": self.to_site,
                "depends_on": list(self.depends_on), "actions": [a.to_dict() for a in self.actions]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ServicePlan:
        return cls(service=d["service"], from_site=d["from_site"], to_site=d["to_site"],
                   depends_on=tuple(d["depends_on"]), actions=tuple(Action.from_dict(a) for a in d["actions"]))


@dataclass(frozen=True)
class Plan:
    operation: str
    playbook: str
    services: tuple[ServicePlan, ...]
    levels: tuple[tuple[str, ...], ...]
    notes: tuple[str, ...] = ()
    inventory_digest: str = ""
    preflight_s: float = 0.0  # the gate's floor: pre-flight checks and balancer pre-checks alongside it
    converge_s: float = 0.0  # expected read-back of the world at the end
    timings_from: str = ""  # the run whose measured step times the expectations come from, if any

    def actions(self) -> list[Action]:
        return [a for sp in self.services for a in sp.actions]

    def in_order(self) -> list[tuple[int, ServicePlan, Action]]:
        """(wave, service plan, action) in the order plans are shown: dependency wave, service, step."""
        return [(wave, sp, a) for wave, level in enumerate(self.levels, 1) for sp in map(self.service, level)
                for a in sp.actions]

    def service(self, name: str) -> ServicePlan:
        for sp in self.services:
            if sp.service == name:
                return sp
        raise KeyError(name)

    def schedule(self, t0: float = 0.0) -> list[tuple[Action, float, float]]:
        """When each action would run if it took its expected time, the way the runner runs them:
        every gate check at once; then each service's steps in order, starting when the gate is
        over and the services it depends on have finished."""
        out: list[tuple[Action, float, float]] = []
        gate_end = t0 + self.preflight_s
        for a in self.actions():
            if a.gate:
                out.append((a, t0, t0 + a.expected_s))
                gate_end = max(gate_end, t0 + a.expected_s)
        finish: dict[str, float] = {}
        for level in self.levels:
            for name in level:
                sp = self.service(name)
                t = max([gate_end, *(finish[d] for d in sp.depends_on if d in finish)])
                for a in sp.actions:
                    if not a.gate:
                        out.append((a, t, t + a.expected_s))
                        t += a.expected_s
                finish[name] = t
        return out

    def expected_duration_s(self) -> float:
        """The run's expected wall time, from the same model as the runner: the gate and the
        pre-flight at once, then the dependency waves, then the read-back."""
        if not self.services:
            return 0.0
        return max((end for _, _, end in self.schedule()), default=self.preflight_s) + self.converge_s

    def to_dict(self) -> dict[str, Any]:
        return {"operation": self.operation, "playbook": self.playbook, "notes": list(self.notes),
                "inventory_digest": self.inventory_digest, "levels": [list(lv) for lv in self.levels],
                "expected_duration_s": round(self.expected_duration_s(), 3),
                "preflight_s": self.preflight_s, "converge_s": self.converge_s, "timings_from": self.timings_from,
                "services": [sp.to_dict() for sp in self.services]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        return cls(operation=d["operation"], playbook=d["playbook"], notes=tuple(d.get("notes", ())),
                   inventory_digest=d.get("inventory_digest", ""),
                   preflight_s=float(d.get("preflight_s", 0.0)), converge_s=float(d.get("converge_s", 0.0)),
                   timings_from=str(d.get("timings_from", "")),
                   levels=tuple(tuple(lv) for lv in d["levels"]),
                   services=tuple(ServicePlan.from_dict(s) for s in d["services"]))


@dataclass(frozen=True)
class Facts:
    """What was observed before planning. Missing keys mean "not known" (e.g. server down)."""

    dns: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)  # (fqdn, type) -> values
    lb: dict[tuple[str, str, str], str] = field(default_factory=dict)  # (balancer, backend, server) -> state
    timings: dict[str, float] = field(default_factory=dict)  # step kind (or phase) -> measured seconds
    timings_from: str = ""  # the run they were measured in


#: what a step takes when nothing was measured yet (seconds; a healthy site on a near network):
#: an SSH connect and one command; an HTTP request; one UPDATE; servers answering at once; a few
#: balancer commands on a server already checked during the gate
DEFAULT_EXPECTED_S = {"check_freshness": 0.3, "health_check": 0.05, "flip_dns": 0.02, "wait_dns": 0.05,
                      "reroute_traffic": 0.05, "command": 0.5, "pause": 0.0, "verify_integrity": 1.0,
                      "preflight": 0.3, "converge": 0.05}


def inventory_digest(inv: Inventory) -> str:
    blob = json.dumps(inv.model_dump(mode="json"), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def select_services(inv: Inventory, names: list[str], site: str | None, all_services: bool = False) -> list[str]:
    """Services named, or all whose primary is ``site``, or all. Unknown names are a usage error."""
    if sum(bool(x) for x in (names, site, all_services)) != 1:
        raise UsageError("name the services, or give --site SITE (one or the other)")
    if site:
        if site not in inv.sites:
            raise UsageError(f"unknown site {site!r}; known: {', '.join(sorted(inv.sites))}")
        chosen = [s for s, svc in inv.services.items() if svc.primary == site]
        if not chosen:
            raise UsageError(f"no service has site {site!r} as its primary")
        return sorted(chosen)
    if all_services:
        return sorted(inv.services)
    unknown = [n for n in names if n not in inv.services]
    if unknown:
        raise UsageError(f"unknown service(s): {', '.join(unknown)}; known: {', '.join(sorted(inv.services))}")
    return list(dict.fromkeys(names))


def dependency_levels(inv: Inventory, selected: list[str]) -> tuple[tuple[str, ...], ...]:
    """Selected services grouped so each level depends only on earlier levels (Kahn's algorithm,
    level by level: linear in services and dependencies, however long a chain)."""
    sel = set(selected)
    waiting = {s: set(inv.services[s].depends_on) & sel for s in sel}
    users: dict[str, list[str]] = {s: [] for s in sel}
    for s, deps in waiting.items():
        for d in deps:
            users[d].append(s)
    ready = sorted(s for s, deps in waiting.items() if not deps)
    levels: list[tuple[str, ...]] = []
    while ready:
        levels.append(tuple(ready))
        nxt = []
        for d in ready:
            for s in users[d]:
                waiting[s].discard(d)
                if not waiting[s]:
                    nxt.append(s)
        ready = sorted(nxt)
    left = sorted(s for s, deps in waiting.items() if deps)
    if left:  # cycles are rejected when the inventory loads; be defensive anyway
        raise UsageError("dependency cycle among: " + ", ".join(left))
    return tuple(levels)


def _sites(svc: Service, operation: str) -> tuple[str, str]:
    return (svc.primary, svc.backup) if operation == "failover" else (svc.backup, svc.primary)


def _fmt(values: list[str] | tuple[str, ...] | None) -> str:
    if values is None:
        return "?"
    return ",".join(values) if values else "(none)"


def build_plan(inv: Inventory, playbook: Playbook, selected: list[str], operation: str,
               facts: Facts | None = None) -> Plan:
    facts = facts or Facts()
    notes: list[str] = []
    sel = set(selected)
    service_plans = []
    # the gate: leading read-only steps, run for every service before anything changes
    gate_len = 0
    for step in playbook.steps:
        if step.kind not in GATE_KINDS:
            break
        gate_len += 1
    for name in selected:
        svc = inv.services[name]
        frm, to = _sites(svc, operation)
        for dep in svc.depends_on:
            if dep not in sel:
                notes.append(f"{name} depends on {dep}, which is not part of this run")
        actions: list[Action] = []
        for index, step in enumerate(playbook.steps):
            if step.services is not None and name not in step.services:
                continue
            action = _action_for(inv, svc, name, index, step, frm, to, facts, notes, gate=index < gate_len)
            if action is not None:
                actions.append(action)
        if not any(a.mutating for a in actions):
            notes.append(f"{name}: this playbook changes nothing for it (no DNS records, traffic or commands)")
        deps = tuple(d for d in svc.depends_on if d in sel)
        service_plans.append(ServicePlan(service=name, from_site=frm, to_site=to, depends_on=deps,
                                         actions=tuple(actions)))
    return Plan(operation=operation, playbook=playbook.name, services=tuple(service_plans),
                levels=dependency_levels(inv, selected), notes=tuple(dict.fromkeys(notes)),
                inventory_digest=inventory_digest(inv),
                preflight_s=round(facts.timings.get("gate", DEFAULT_EXPECTED_S["preflight"]), 4),
                converge_s=_expected(facts, "converge"), timings_from=facts.timings_from)


def _expected(facts: Facts, kind: str) -> float:
    """A step's expected time: as measured in the last run when known, else the default model;
    a service's steps also carry the pause between two steps (journal writes)."""
    value = facts.timings.get(kind, DEFAULT_EXPECTED_S.get(kind, 0.1))
    if kind in DEFAULT_EXPECTED_S and kind not in ("preflight", "converge", "gate"):
        value += facts.timings.get("step_overhead", 0.005)
    return round(value, 4)


def _action_for(inv: Inventory, svc: Service, name: str, index: int, step: Any, frm: str, to: str,
                facts: Facts, notes: list[str], *, gate: bool) -> Action | None:
    kind = step.kind
    base = {"id": f"{name}/{index + 1:02d}-{kind}", "service": name, "index": index, "kind": kind,
            "from_site": frm, "to_site": to, "mutating": kind in MUTATING_KINDS, "gate": gate}
    label = step.name
    if kind == "check_freshness":
        site = to if step.site == "to" else frm
        bc = svc.sites[site].backup if site in svc.sites else None
        if bc is None:
            notes.append(f"{name}: no backup check configured for site {site}; freshness not checked there")
            return None
        where = f"{bc.path}/{bc.glob}" if bc.path else redact_text(" ".join(bc.command or []))
        return Action(**base, title=label or f"backup at {site} ({bc.host}:{where}) newer than "
                      f"{_dur(bc.max_age)}", params={"site": site}, expected_s=_expected(facts, kind))
    if kind == "health_check":
        site = to if step.site == "to" else frm
        hc = svc.sites[site].health if site in svc.sites else None
        if hc is None:
            notes.append(f"{name}: no health check configured for site {site}")
            return None
        target = redact_text(hc.http) if hc.http else f"tcp {hc.tcp}"  # titles never show a password
        return Action(**base, title=label or f"{site} healthy: {target}", params={"site": site},
                      expected_s=_expected(facts, kind))
    if kind == "flip_dns":
        if not svc.dns:
            return None
        changes = []
        for rec in svc.dns:
            observed = facts.dns.get((rec.fqdn(), rec.type))
            before = _fmt(observed) if observed is not None else _fmt(rec.values_for(frm)) + " (expected)"
            changes.append(Change(what=f"{rec.fqdn()} {rec.type}", before=before, after=_fmt(rec.values_for(to))))
        noop = all(facts.dns.get((r.fqdn(), r.type)) == tuple(r.values_for(to)) for r in svc.dns)
        zones = sorted({r.zone.rstrip(".") for r in svc.dns})
        return Action(**base, title=label or f"DNS to {to}: one signed UPDATE per zone ({', '.join(zones)})",
                      changes=tuple(changes), expected_s=_expected(facts, kind), noop=noop)
    if kind == "wait_dns":
        if not svc.dns:
            return None
        assert isinstance(step, WaitDns)
        servers = sorted({s for r in svc.dns for s in _zone_servers(inv, r.zone)})
        ttl = max(r.ttl for r in svc.dns)
        return Action(**base, title=label or f"every authoritative server ({', '.join(servers)}) answers "
                      f"the {to} values (clients follow within TTL {ttl}s)",
                      params={"timeout": step.timeout, "interval": step.interval, "ttl": ttl},
                      expected_s=_expected(facts, kind))
    if kind == "reroute_traffic":
        tr = svc.traffic
        if tr is None:
            return None
        if isinstance(tr, HAProxyTraffic):
            changes = []
            for site, target_state in ((to, "ready"), (frm, tr.mode)):
                server = tr.servers[site]
                state = facts.lb.get((tr.balancer, tr.backend, server), "?")
                changes.append(Change(what=f"{tr.balancer} {tr.backend}/{server}", before=state, after=target_state))
            noop = all(facts.lb.get((tr.balancer, tr.backend, tr.servers[s])) == st
                       for s, st in ((to, "ready"), (frm, tr.mode)))
            return Action(**base, title=label or f"traffic to {to} via {tr.balancer} backend {tr.backend}",
                          changes=tuple(changes), expected_s=_expected(facts, kind), noop=noop)
        assert isinstance(tr, CommandTraffic)
        changes = []
        if frm in tr.deactivate:
            spec = tr.deactivate[frm]
            changes.append(Change(what=f"{frm} ({spec.host})", before="active", after="inactive"))
        if to in tr.activate:
            spec = tr.activate[to]
            changes.append(Change(what=f"{to} ({spec.host})", before="inactive", after="active"))
        if not changes:
            return None
        return Action(**base, title=label or f"traffic to {to} by command", changes=tuple(changes),
                      expected_s=_expected(facts, kind))
    if kind == "command":
        assert isinstance(step, CommandStep)
        site = to if step.site == "to" else frm
        host = step.host or _default_host(inv, svc, site)
        if host is None:
            notes.append(f"{name}: step {index + 1} has no host at site {site}; give `host`")
            return None
        subst = {"service": name, "from": frm, "to": to}
        argv = [_substitute(a, subst) for a in step.argv]
        on_unreachable = step.on_unreachable or ("skip" if step.site == "from" else "fail")
        return Action(**base, title=label or f"on {host} ({site}): {redact_text(' '.join(argv))}",
                      params={"host": host, "argv": argv, "timeout": step.timeout, "on_unreachable": on_unreachable},
                      expected_s=_expected(facts, kind))
    if kind == "pause":
        return Action(**base, title=label or f"operator approval: {step.message}",
                      params={"message": step.message}, expected_s=0.0)
    if kind == "verify_integrity":
        if not svc.integrity:
            return None
        return Action(**base, title=label or f"data of {svc.primary} and {svc.backup} match (policy {step.policy})",
                      params={"policy": step.policy, "timeout": step.timeout}, expected_s=_expected(facts, kind))
    raise AssertionError(f"unhandled step kind {kind}")


def _substitute(arg: str, subst: dict[str, str]) -> str:
    for k, v in subst.items():
        arg = arg.replace("{" + k + "}", v)
    return arg


def _default_host(inv: Inventory, svc: Service, site: str) -> str | None:
    ss = svc.sites.get(site)
    if ss is not None and ss.backup is not None:
        return ss.backup.host
    hosts = list(inv.sites[site].hosts)
    return hosts[0] if hosts else None


def _zone_servers(inv: Inventory, zone: str) -> list[str]:
    z = zone_of(inv, zone)
    return list(dict.fromkeys([z.primary, *z.servers]))


def zone_of(inv: Inventory, zone: str) -> Any:
    for zname, z in inv.zones.items():
        if zname.rstrip(".") == zone.rstrip("."):
            return z
    raise KeyError(zone)


def _dur(seconds: float) -> str:
    from drctl.units import format_duration

    return format_duration(seconds)
