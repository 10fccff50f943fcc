"""Observing the world before planning: current DNS answers and load-balancer server states.

Read-only and best effort: whatever does not answer within its timeout is simply not in the
Facts, and the plan shows it as expected rather than observed. Everything is asked in parallel.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from drctl.core.plan import Facts, zone_of
from drctl.errors import DrctlError
from drctl.model.inventory import DnsRecord, HAProxyTraffic, Inventory


def observe(inv: Inventory, services: list[str], *, timeout: float = 2.0,
            timings: tuple[dict[str, float], str] = ({}, "")) -> Facts:
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
    return Facts(dns=dns, lb=lb, timings=timings[0], timings_from=timings[1])


def measured_timings(state_dir: Path, operation: str) -> tuple[dict[str, float], str]:
    """Times measured in the newest succeeded run of ``operation`` in the state directory, from
    its journal's timestamps: per step kind the median time of its actions (``check_freshness``,
    ``flip_dns``, ...), ``gate`` (the run's start to its first step after the gate: gate steps,
    pre-flight and balancer pre-checks together), ``step_overhead`` (the median pause between two
    steps of a service: journal writes, thread hand-over) and ``converge`` (the last step to the
    end: the read-back). The plan's expectations come from them. ({}, "") without such a run."""

    from drctl.engine.store import RunStore

    if not (state_dir / "runs").is_dir():
        return {}, ""
    store = RunStore(state_dir)
    try:
        for run_id in sorted(store.list_runs(), reverse=True)[:20]:  # ids start with a UTC timestamp
            records = store.read(run_id)
            start = next((r for r in records if r.get("event") == "run_started"), None)
            end = next((r for r in reversed(records) if r.get("event") == "run_finished"), None)
            if (start is None or end is None or start.get("operation") != operation
                    or end.get("status") != "succeeded" or any(r.get("event") == "run_resumed" for r in records)):
                continue
            return _timings(start, end, records), run_id
    except DrctlError:
        return {}, ""
    finally:
        store.close()
    return {}, ""


def _timings(start: dict[str, Any], end: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, float]:
    import statistics

    gate_ids = {a["id"] for sp in start.get("plan", {}).get("services", []) for a in sp["actions"] if a.get("gate")}
    began: dict[str, dict[str, Any]] = {}
    spans: dict[str, list[float]] = {}
    by_service: dict[str, list[tuple[float, float]]] = {}
    first_after_gate = None
    last_finished = start["ts"]
    for r in records:
        if r.get("event") == "action_started":
            began[r["action"]] = r
            if r["action"] not in gate_ids and "#" not in r["action"]:
                first_after_gate = first_after_gate if first_after_gate is not None else r["ts"]
        elif r.get("event") == "action_finished" and r["action"] in began and "#" not in r["action"]:
            b = began[r["action"]]
            spans.setdefault(str(b.get("kind")), []).append(r["ts"] - b["ts"])
            if r["action"] not in gate_ids:
                by_service.setdefault(str(b.get("service")), []).append((b["ts"], r["ts"]))
            last_finished = max(last_finished, r["ts"])
    out = {k: statistics.median(v) for k, v in spans.items()}
    if first_after_gate is not None:
        out["gate"] = first_after_gate - start["ts"]
    gaps = [nxt[0] - prev[1] for steps in by_service.values() for prev, nxt in zip(steps, steps[1:], strict=False)]
    if gaps:
        out["step_overhead"] = statistics.median(gaps)
    out["converge"] = max(0.0, end["ts"] - last_finished)
    return {k: round(max(0.0, v), 4) for k, v in out.items()}
