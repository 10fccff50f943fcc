"""Observing the world before planning: current DNS answers and load-balancer server states.

Read-only and best effort: whatever does not answer within its timeout is simply not in the
Facts, and the plan shows it as expected rather than observed. Everything is asked in parallel.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from drctl.core.plan import Facts, zone_of
from drctl.errors import DrctlError
from drctl.model.inventory import HAProxyTraffic, Inventory


def observe(inv: Inventory, services: list[str], *, timeout: float = 2.0) -> Facts:
    records = {(r.fqdn(), r.type, r.zone) for s in services for r in inv.services[s].dns}
    backends = {(t.balancer, t.backend) for s in services
                if isinstance(t := inv.services[s].traffic, HAProxyTraffic)}
    dns: dict[tuple[str, str], tuple[str, ...]] = {}
    lb: dict[tuple[str, str, str], str] = {}

    def ask_dns(rec: tuple[str, str, str]) -> None:
        from drctl.drivers.dns_rfc2136 import query

        name, rdtype, zone = rec
        srv = inv.dns_servers[zone_of(inv, zone).primary]
        try:
            dns[(name, rdtype)] = tuple(sorted(query((srv.address, srv.port), name, rdtype,
                                                     timeout=min(timeout, srv.timeout))))
        except DrctlError:
            pass

    def ask_lb(key: tuple[str, str]) -> None:
        from drctl.drivers.haproxy import HAProxyAdmin

        balancer, backend = key
        conf = inv.load_balancers[balancer]
        try:
            for name, st in HAProxyAdmin(conf.admin, timeout=min(timeout, conf.timeout)).servers(backend).items():
                lb[(balancer, backend, name)] = st.state_text
        except DrctlError:
            pass

    jobs: list[Any] = [(ask_dns, r) for r in sorted(records)] + [(ask_lb, b) for b in sorted(backends)]
    if jobs:
        with ThreadPoolExecutor(max_workers=min(16, len(jobs)), thread_name_prefix="observe") as pool:
            list(pool.map(lambda j: j[0](j[1]), jobs))
    return Facts(dns=dns, lb=lb)
