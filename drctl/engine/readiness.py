"""Gathering readiness findings through the drivers: read-only, in parallel, bounded in time.

For each selected service, relative to the site a failover (or failback) would move it to:

- every host it uses (backup hosts, traffic commands, integrity targets) answers SSH with a
  verified host key; each host is asked once however many services use it;
- the newest backup at each of its sites against its limit (``max_age``) and the service's RPO;
- the target site's health check;
- each zone's primary DNS server accepts our TSIG key: a signed UPDATE whose prerequisite fails
  on purpose proves the key without changing the zone (once per zone);
- HAProxy knows the backend's servers for both sites (once per backend);
- the integrity baselines of its targets are not older than their limit.

Nothing here changes anything. Every driver call has its own timeout; on top of that the whole
check has a deadline after which whatever has not answered is reported as a failed finding.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from functools import partial
from typing import Any

from drctl.core.plan import zone_of
from drctl.core.readiness import (
    CHECKS,
    Finding,
    backup_finding,
    baseline_finding,
    haproxy_finding,
    health_finding,
    host_finding,
    sort_findings,
    tsig_finding,
)
from drctl.engine.steps import Context
from drctl.errors import DrctlError, HostKeyError
from drctl.model.inventory import CommandTraffic, HAProxyTraffic, Inventory

DEFAULT_DEADLINE_S = 60.0


def service_hosts(inv: Inventory, name: str) -> dict[str, str]:
    """Host -> site for every host the service uses at its two sites."""
    svc = inv.services[name]
    pair = (svc.primary, svc.backup)
    hosts: dict[str, str] = {}
    for site, ss in svc.sites.items():
        if site in pair and ss.backup is not None:
            hosts[ss.backup.host] = site
    tr = svc.traffic
    if isinstance(tr, CommandTraffic):
        for part in (tr.activate, tr.deactivate):
            for site, spec in part.items():
                if site in pair:
                    hosts[spec.host] = site
    for target in svc.integrity:
        for site, loc in target.sites.items():
            if site in pair and loc.host is not None:
                hosts[loc.host] = site
    return hosts


def _error(e: BaseException) -> str:
    if isinstance(e, DrctlError):
        return e.message + (f" ({e.hint})" if e.hint else "")
    return f"{type(e).__name__}: {e}"


class _Jobs:
    """Probes keyed by what they ask, so that a host, zone or backend shared by several services
    is asked once; each probe turns its answer (or exception) into findings for its services."""

    def __init__(self, checks: frozenset[str]) -> None:
        self.checks = checks
        self.probes: dict[Any, Callable[[], Any]] = {}
        self.judges: dict[Any, list[Callable[[Any, str | None], Finding]]] = defaultdict(list)
        self.labels: dict[Any, tuple[str, str, list[str]]] = {}

    def add(self, key: Any, probe: Callable[[], Any], judge: Callable[[Any, str | None], Finding],
            service: str, check: str, subject: str) -> None:
        if check not in self.checks:
            return
        self.probes.setdefault(key, probe)
        self.judges[key].append(judge)
        label = self.labels.setdefault(key, (check, subject, []))
        label[2].append(service)


def check_readiness(ctx: Context, services: list[str], *, operation: str = "failover",
                    deadline_s: float = DEFAULT_DEADLINE_S, max_workers: int = 16,
                    checks: frozenset[str] | None = None) -> list[Finding]:
    """Findings for ``services``, sorted by service and check. ``operation`` says which site is the
    target (failover: the backup; failback: the primary); ``checks`` limits what is checked (a
    subset of ``CHECKS``; default: everything)."""
    from drctl.drivers.freshness import backup_age
    from drctl.drivers.health import check_health

    inv = ctx.inventory
    jobs = _Jobs(frozenset(CHECKS) if checks is None else checks)
    for name in services:
        svc = inv.services[name]
        target = svc.backup if operation == "failover" else svc.primary

        for host, site in sorted(service_hosts(inv, name).items()):
            jobs.add(("host", host), partial(_probe_host, ctx, host),
                     partial(_judge_host, name, host, site, site == target), name, "host", f"{host} ({site})")

        for site in (svc.primary, svc.backup):
            ss = svc.sites.get(site)
            if ss is None or ss.backup is None:
                continue
            bc = ss.backup
            where = f"{bc.host}:{bc.path}/{bc.glob}" if bc.path else f"{bc.host}: {' '.join(bc.command or [])}"
            jobs.add(("backup", name, site), partial(backup_age, ctx.pool, bc),
                     partial(_judge_backup, name, site, where, bc.max_age, svc.rpo, site == target),
                     name, "backup", site)

        hc = svc.sites[target].health if target in svc.sites else None
        if hc is not None:
            from drctl.drivers.health import shown_url

            shown = shown_url(hc.http) if hc.http else f"tcp {hc.tcp}"
            jobs.add(("health", name, target), partial(check_health, hc), partial(_judge_health, name, target, shown),
                     name, "health", target)

        for zone in sorted({r.zone.rstrip(".") for r in svc.dns}):
            server = zone_of(inv, zone).primary
            jobs.add(("tsig", zone), partial(_probe_key, ctx, zone, server), partial(tsig_finding, name, zone, server),
                     name, "tsig", f"zone {zone} at {server}")

        tr = svc.traffic
        if isinstance(tr, HAProxyTraffic) and tr.balancer in inv.load_balancers:
            lb = inv.load_balancers[tr.balancer]
            wanted = {s: srv for s, srv in tr.servers.items() if s in (svc.primary, svc.backup)}
            jobs.add(("haproxy", tr.balancer, tr.backend), partial(_server_states, lb.admin, lb.timeout, tr.backend),
                     partial(haproxy_finding, name, tr.balancer, tr.backend, wanted),
                     name, "haproxy", f"{tr.balancer} backend {tr.backend}")

        for target_name, limit in _baseline_limits(inv, name):
            jobs.add(("baseline", name, target_name), partial(_baseline_age, ctx, name, target_name),
                     partial(_judge_baseline, name, target_name, limit),
                     name, "baseline", f"integrity baseline {target_name}")

    return sort_findings(_run(jobs, deadline_s, max_workers), services)


# --- probes and how their answers are judged (answer, error) -> Finding ---------------------------


def _probe_key(ctx: Context, zone: str, server: str) -> str:
    from drctl.drivers.dns_rfc2136 import probe_update_key

    addr, port, timeout = ctx.dns_server(server)
    key = ctx.tsig_key(zone)
    probe_update_key((addr, port), zone, key, timeout=max(timeout, 2.0))
    return key.name


def _server_states(admin: str, timeout: float, backend: str) -> dict[str, str]:
    from drctl.drivers.haproxy import HAProxyAdmin

    return {n: st.state_text for n, st in HAProxyAdmin(admin, timeout=timeout).servers(backend).items()}


def _probe_host(ctx: Context, host: str) -> str | None:
    """None when the host answers with a verified key; the error text of a host key problem (a
    finding of its own kind: it fails at either site). Other errors raise."""
    try:
        ctx.pool.reachable(host)
    except HostKeyError as e:
        return _error(e)
    return None


def _judge_host(name: str, host: str, site: str, target: bool, answer: Any, err: str | None) -> Finding:
    if answer is not None:
        return host_finding(name, host, site, answer, target=target, key_problem=True)
    return host_finding(name, host, site, err, target=target)


def _judge_backup(name: str, site: str, where: str, max_age: float, rpo: float | None, target: bool,
                  answer: Any, err: str | None) -> Finding:
    return backup_finding(name, site, where, age_s=None if answer is None else answer.age_s, max_age_s=max_age,
                          rpo_s=rpo, newest=None if answer is None else answer.newest, target=target, error=err)


def _judge_health(name: str, site: str, shown: str, answer: Any, err: str | None) -> Finding:
    if err is not None:
        return health_finding(name, site, shown, ok=False, detail=err)
    return health_finding(name, site, shown, ok=answer.ok, detail=answer.detail)


def _judge_baseline(name: str, target: str, limit: float, answer: Any, err: str | None) -> Finding:
    return baseline_finding(name, target, age_s=answer, limit_s=limit, error=err)


def _run(jobs: _Jobs, deadline_s: float, max_workers: int) -> list[Finding]:
    findings: list[Finding] = []
    if not jobs.probes:
        return findings
    pool = ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(jobs.probes))), thread_name_prefix="ready")
    futures: dict[Future[Any], Any] = {pool.submit(probe): key for key, probe in jobs.probes.items()}
    end = time.monotonic() + deadline_s
    pending = set(futures)
    try:
        while pending:
            remaining = end - time.monotonic()
            if remaining <= 0:
                break
            done, pending = wait(pending, timeout=remaining, return_when=FIRST_COMPLETED)
            for fut in done:
                key = futures[fut]
                exc = fut.exception()
                result, err = (None, _error(exc)) if exc is not None else (fut.result(), None)
                findings += [judge(result, err) for judge in jobs.judges[key]]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    for fut in pending:  # past the deadline: say what did not answer
        check, subject, names = jobs.labels[futures[fut]]
        findings += [Finding(n, check, subject, "fail", f"no answer within the check's deadline of {deadline_s:g}s")
                     for n in names]
    return findings


# --- integrity baselines -------------------------------------------------------------------------


def _baseline_limits(inv: Inventory, name: str) -> list[tuple[str, float]]:
    """(target name, ``baseline_max_age``) for the service's integrity targets that set one."""
    out = []
    for target in inv.services[name].integrity:
        limit = getattr(target, "baseline_max_age", None)
        if limit is not None:
            out.append((target.name, float(limit)))
    return out


def _baseline_age(ctx: Context, service: str, target: str) -> float | None:
    """Age of the target's newest *intact* baseline (its checksum verified), None if there is none:
    a damaged baseline is no help on the day the primary is gone."""
    from drctl.drivers.baseline import baseline_age

    return baseline_age(ctx.state_dir, service, target)
