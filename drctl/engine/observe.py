"""Observing the world before planning: current DNS answers and load-balancer server states.

Read-only and best effort: whatever does not answer within its timeout is simply not in the
Facts, and the plan shows it as expected rather than observed. Everything is asked in parallel.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from drctl.core.plan import Facts, zone_of
from drctl.errors import DrctlError
from drctl.model.inventory import DnsRecord, HAProxyTraffic, Inventory


def observe(inv: Inventory, services: list[str], *, timeout: float = 2.0) -> Facts:
    records = {(r.fqdn(), r.type): r for s in services for r in inv.services[s].dns}
    backends = {(t.balancer, t.backend) for s in services
                if isinstance(t := inv.services[s].traffic, HAProxyTraffic)}
    dns: dict[tuple[str, str], tuple[str, ...]] = {}
    lb: dict[tuple[str, str, str], str] = {}

    def ask_dns(rec: DnsRecord) -> None:
        from drctl.drivers.dns_rfc2136 import normalize_values, query

        srv = inv.dns_servers[zone_of(inv, rec.zone).primary]
        try:
            got = sorted(query((srv.address, srv.port), rec.fqdn(), rec.type, timeout=min(timeout, srv.timeout)))
            # a site's values as the inventory writes them when the server serves exactly those
            # (2001:db8::1 vs 2001:0db8::1, a CNAME target without its dot), so the plan compares
            # like with like
            for site in rec.values:
                if normalize_values(rec.type, rec.values_for(site)) == got:
                    got = rec.values_for(site)
                    break
            dns[(rec.fqdn(), rec.type)] = tuple(got)
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

    jobs: list[Any] = [(ask_dns, records[k]) for k in sorted(records)] + [(ask_lb, b) for b in sorted(backends)]
    if jobs:
        with ThreadPoolExecutor(max_workers=min(16, len(jobs)), thread_name_prefix="observe") as pool:
            list(pool.map(lambda j: j[0](j[1]), jobs))
    return Facts(dns=dns, lb=lb)
