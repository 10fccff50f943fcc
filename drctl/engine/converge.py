"""Converging: at the end of a run, and of every resume, read the world back and compare it with the
run's target. A run claims success only when the world says so.

For each service the run moved, relative to its plan:

- ``flip_dns`` in the plan: every authoritative server of each of its zones answers the target
  site's values (a server that does not answer at all is a warning, as in ``wait_dns``; none
  answering is a difference);
- ``reroute_traffic`` through a balancer: the balancer reports the target site's server ``ready``
  and the other in the traffic's ``mode`` (a balancer that does not answer is a difference: its
  state cannot be proven).

A difference is repaired once by repeating the plan's own idempotent actions (``flip_dns`` then
``wait_dns`` for DNS; ``reroute_traffic`` for the balancer), then read again. What still differs
fails the service, naming what differs; ``drctl resume`` tries again.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from drctl.core.plan import Action, ServicePlan, zone_of
from drctl.engine.steps import Context, Outcome
from drctl.errors import DrctlError
from drctl.model.inventory import HAProxyTraffic

#: how long a read-back query may take per server (the run is over; this only confirms it)
READ_TIMEOUT_S = 2.0
#: how long a DNS repair waits for every server when the plan has no wait_dns step of its own
REPAIR_WAIT_S = 30.0


@dataclass
class ReadBack:
    """What reading one service's part of the world found."""

    dns: list[str] = field(default_factory=list)  # differences
    traffic: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def differences(self) -> list[str]:
        return self.dns + self.traffic


def read_back(ctx: Context, sp: ServicePlan) -> ReadBack:
    """Compare the world with ``sp``'s target (the ``to`` site), for the parts its plan changes."""
    kinds = {a.kind for a in sp.actions}
    out = ReadBack()
    svc = ctx.inventory.services[sp.service]
    if "flip_dns" in kinds and svc.dns:
        _read_dns(ctx, sp, out)
    tr = svc.traffic
    if "reroute_traffic" in kinds and isinstance(tr, HAProxyTraffic):
        _read_balancer(ctx, sp, tr, out)
    return out


def _read_dns(ctx: Context, sp: ServicePlan, out: ReadBack) -> None:
    from drctl.drivers.dns_rfc2136 import normalize_values, query

    svc = ctx.inventory.services[sp.service]
    asks: list[tuple[str, str, str, list[str]]] = []
    for rec in svc.dns:
        zone = zone_of(ctx.inventory, rec.zone)
        for server in dict.fromkeys([zone.primary, *zone.servers]):
            asks.append((server, rec.fqdn(), rec.type, normalize_values(rec.type, rec.values_for(sp.to_site))))

    def ask(item: tuple[str, str, str, list[str]]) -> tuple[list[str] | None, str]:
        server, name, rdtype, _ = item
        addr, port, timeout = ctx.dns_server(server)
        try:
            return sorted(query((addr, port), name, rdtype, timeout=min(timeout, READ_TIMEOUT_S))), ""
        except DrctlError as e:
            return None, e.message

    with ThreadPoolExecutor(max_workers=min(16, max(1, len(asks))), thread_name_prefix="converge-dns") as pool:
        answers = list(pool.map(ask, asks))
    by_name: dict[tuple[str, str], list[bool]] = {}
    for (server, name, rdtype, want), (got, error) in zip(asks, answers, strict=True):
        answered = by_name.setdefault((name, rdtype), [])
        if got is None:
            out.warnings.append(f"DNS server {server} does not answer for {name} {rdtype} ({error}); "
                                "it could not be confirmed")
            answered.append(False)
            continue
        answered.append(True)
        if got != want:
            out.dns.append(f"{server} answers {name} {rdtype} {','.join(got) or 'nothing'}, "
                           f"expected {','.join(want)} ({sp.to_site})")
    for (name, rdtype), answered in by_name.items():
        if not any(answered):
            out.dns.append(f"no authoritative server answers for {name} {rdtype}: the change cannot be confirmed")


def _read_balancer(ctx: Context, sp: ServicePlan, tr: HAProxyTraffic, out: ReadBack) -> None:
    from drctl.drivers.haproxy import HAProxyAdmin

    lb = ctx.inventory.load_balancers[tr.balancer]
    to_server, from_server = tr.servers[sp.to_site], tr.servers[sp.from_site]
    try:
        states = HAProxyAdmin(lb.admin, timeout=min(lb.timeout, READ_TIMEOUT_S)).servers(tr.backend)
    except DrctlError as e:
        out.traffic.append(f"{tr.balancer} cannot be read ({e.message}): where {tr.backend} traffic goes is unproven")
        return
    want = {to_server: "ready", from_server: tr.mode}
    for server, state in want.items():
        got = states[server].state_text if server in states else "missing"
        if got != state:
            out.traffic.append(f"{tr.balancer} {tr.backend}/{server} is {got}, expected {state}")


@dataclass
class Convergence:
    """The outcome for one service: what differed, what was repaired, what still differs."""

    service: str
    found: list[str]
    remaining: list[str]
    warnings: list[str]
    repairs: list[str]

    @property
    def ok(self) -> bool:
        return not self.remaining

    def to_dict(self) -> dict[str, Any]:
        return {"service": self.service, "found": self.found, "remaining": self.remaining,
                "warnings": self.warnings, "repairs": self.repairs}


def converge(ctx: Context, sp: ServicePlan, run_action: Callable[[Action], Outcome]) -> Convergence:
    """Read ``sp``'s part of the world; repair a difference once through ``run_action`` (the
    runner's journaled executor) with the plan's own actions, then read again."""
    first = read_back(ctx, sp)
    if not first.differences:
        return Convergence(sp.service, [], [], first.warnings, [])
    repairs: list[str] = []
    by_kind = {a.kind: a for a in sp.actions if not a.gate}
    steps: list[Action] = []
    if first.dns and "flip_dns" in by_kind:
        steps.append(by_kind["flip_dns"])
        wait = by_kind.get("wait_dns") or replace(
            by_kind["flip_dns"], id=f"{sp.service}/converge-wait_dns", kind="wait_dns", mutating=False,
            title="every authoritative server answers the new values", changes=(),
            params={"timeout": REPAIR_WAIT_S, "interval": 0.2})
        steps.append(wait)
    if first.traffic and "reroute_traffic" in by_kind:
        steps.append(by_kind["reroute_traffic"])
    for action in steps:
        repair = replace(action, id=f"{action.id}#converge")
        outcome = run_action(repair)
        repairs.append(f"{action.kind}: {outcome.status}: {outcome.detail}")
    second = read_back(ctx, sp)
    return Convergence(sp.service, first.differences, second.differences, second.warnings, repairs)
