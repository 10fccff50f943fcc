"""Drill verdicts: what a rehearsal measured, against the service's targets. Pure: no I/O.

A drill fails a service over to its backup, checks it through the real path, and fails it back.
Per service it measures the RTO achieved (from the drill's start until the backup answered
through the real path) and the RPO exposure (age of the newest backup at failover time), and
compares them with the inventory's ``rto`` / ``rpo``. The service's result is:

- ``refused``: the failover's gate refused (e.g. a stale backup); nothing was changed;
- ``failed``: a step failed, or it did not come back to its primary (production was returned
  to the primary when a step failed);
- ``missed``: every step worked but a target was missed;
- ``passed``: every step worked and every target was met.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from drctl.errors import AbortedError, NotReadyError, RefusedError, StepFailedError
from drctl.model.inventory import HAProxyTraffic, HealthCheck, Inventory
from drctl.units import format_duration

#: drill (and service) result -> exit code
EXIT_BY_RESULT = {"passed": 0, "missed": NotReadyError.exit_code, "failed": StepFailedError.exit_code,
                  "refused": RefusedError.exit_code, "aborted": AbortedError.exit_code}
_SEVERITY = ("passed", "missed", "refused", "failed", "aborted")


def frontend_check(inv: Inventory, name: str, site: str) -> HealthCheck | None:
    """The HTTP check through the load balancer: its ``frontend`` URL with what ``site``'s own
    health check expects (so an answer from the other site does not pass). None without one."""
    svc = inv.services[name]
    tr = svc.traffic
    if not isinstance(tr, HAProxyTraffic) or tr.frontend is None:
        return None
    own = svc.sites[site].health if site in svc.sites else None
    if own is None:
        return HealthCheck.model_validate({"http": tr.frontend})
    if own.http is None:  # a TCP check says nothing about the body: keep only its timing
        return HealthCheck.model_validate({"http": tr.frontend, "timeout": own.timeout, "retries": own.retries,
                                           "interval": own.interval})
    return own.model_copy(update={"http": tr.frontend})


def target_met(measured: float | None, target: float | None) -> bool | None:
    """True / False against the target; None when there is no target or nothing was measured."""
    if target is None or measured is None:
        return None
    return measured <= target


def assess_service(name: str, *, failover: str, probe_ok: bool | None, probe_detail: str,
                   returned: bool | None, final: str, rto_s: float | None, rto_target_s: float | None,
                   rpo_s: float | None, rpo_target_s: float | None, failed_steps: list[str],
                   gate_findings: list[str]) -> dict[str, Any]:
    """One service's drill result.

    ``failover``: the service's status in the failover run (succeeded, failed, blocked, refused,
    aborted); ``probe_ok``: the real-path check on the backup (None: not run); ``returned``:
    whether it serves from its primary again at the end (None: it never left)."""
    findings: list[str] = []
    rto_met = target_met(rto_s, rto_target_s)
    rpo_met = target_met(rpo_s, rpo_target_s)
    if failover == "refused":
        status = "refused"
        findings += gate_findings or ["the failover was refused before anything changed"]
    elif failover in ("failed", "blocked", "aborted") or probe_ok is False or failed_steps:
        status = "aborted" if failover == "aborted" else "failed"
        findings += failed_steps
        if probe_ok is False:
            findings.append(f"real-path check on the backup failed: {probe_detail}")
        if failover == "blocked":
            findings.append("blocked: a service it depends on did not fail over")
    else:
        status = "passed"
    if returned is False:
        status = "failed" if status != "aborted" else status
        findings.append(f"NOT back on its primary: {final}")
    if status == "passed":
        if rto_met is False:
            status = "missed"
            findings.append(f"RTO {format_duration(rto_s or 0)} missed its target {format_duration(rto_target_s or 0)}")
        if rpo_met is False:
            status = "missed"
            findings.append(f"RPO exposure {format_duration(rpo_s or 0)} missed its target "
                            f"{format_duration(rpo_target_s or 0)}")
    elif rpo_met is False:
        findings.append(f"RPO exposure {format_duration(rpo_s or 0)} is past its target "
                        f"{format_duration(rpo_target_s or 0)}")
    return {"service": name, "status": status, "rto_s": _r(rto_s), "rto_target_s": rto_target_s,
            "rto_met": rto_met, "rpo_exposure_s": _r(rpo_s), "rpo_target_s": rpo_target_s, "rpo_met": rpo_met,
            "returned": returned, "final": final, "findings": findings}


def overall(results: Mapping[str, Mapping[str, Any]]) -> tuple[str, int]:
    """The drill's result (the worst of its services') and its exit code."""
    worst = "passed"
    for r in results.values():
        st = r["status"] if r["status"] in _SEVERITY else "failed"
        if _SEVERITY.index(st) > _SEVERITY.index(worst):
            worst = st
    return worst, EXIT_BY_RESULT[worst]


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)
