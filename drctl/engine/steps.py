"""Carrying out one planned Action through the drivers. The only engine module that imports them.

Each handler returns an Outcome and is idempotent: run again after a crash it finds the world
already as it should be and says so. Handlers never decide whether to run (the runner does); a
step aimed at the site being left (``from``) that cannot reach it is *skipped* with the reason,
because in a real disaster that site is gone.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from drctl.core.plan import Action, zone_of
from drctl.engine.dnsbatch import ZoneBatcher
from drctl.errors import (
    AbortedError,
    DrctlError,
    HostKeyError,
    HostUnreachableError,
    StepFailedError,
)
from drctl.model.inventory import CommandSpec, CommandTraffic, HAProxyTraffic, Inventory
from drctl.units import format_duration

if TYPE_CHECKING:
    from drctl.drivers.dns_rfc2136 import TsigKey
    from drctl.drivers.ssh import SSHPool

#: how long a DNS server that does not answer at all may hold wait_dns once the others are in sync
SILENT_SERVER_GRACE_S = 3.0
#: how long reroute_traffic waits for the load balancer to see the new site's server UP
SERVER_UP_WAIT_S = 15.0

Status = Literal["ok", "skipped", "failed", "warn", "planned", "blocked"]


@dataclass
class Outcome:
    status: Status
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "detail": self.detail, "data": self.data}


Approver = Callable[[Action, str, threading.Event], bool]  # (action, message, cancelled) -> approved


class Context:
    """What handlers need: the inventory, shared connections, and how to ask the operator."""

    def __init__(self, inventory: Inventory, *, state_dir: Path, approve: Approver | None = None,
                 full_verify: bool = False, accept_mass_change: frozenset[str] = frozenset(),
                 site_down: frozenset[str] = frozenset()) -> None:
        """``accept_mass_change``: services whose backup the operator knowingly moves users onto
        although integrity verification flagged it as mass-changed (``--accept-mass-change``).
        ``site_down``: sites the operator declared lost (``--site-down``): nothing is sent to
        their hosts; their fences are reported as not attempted."""
        self.inventory = inventory
        self.state_dir = state_dir
        self.approve = approve
        self.full_verify = full_verify
        self.accept_mass_change = accept_mass_change
        self.site_down = site_down
        self._pool: SSHPool | None = None
        self._keys: dict[str, TsigKey] = {}
        self._lock = threading.Lock()
        self._dns_batcher = ZoneBatcher(self._send_zone)
        self._expected_flips: dict[str, list[str]] = {}  # flip_dns action id -> its zones
        self.cancel = threading.Event()  # set when the operator interrupts the run

    def _zones(self, service: str) -> list[str]:
        return sorted({r.zone.rstrip(".") for r in self.inventory.services[service].dns})

    def expect_flip(self, action: Action) -> None:
        """``action`` (a flip_dns) can run now: the zone batches it would join wait for it (up to
        their short window), so services moving at the same moment share one UPDATE per zone."""
        with self._lock:
            if action.id in self._expected_flips:
                return
            zones = self._expected_flips[action.id] = self._zones(action.service)
        self._dns_batcher.expect(zones)

    def withdraw_flip(self, action: Action) -> None:
        """``action`` will not run (its service failed or stopped first): batches stop waiting for it."""
        with self._lock:
            zones = self._expected_flips.pop(action.id, None)
        if zones:
            self._dns_batcher.withdraw(zones)

    def _submitted(self, action: Action) -> None:
        with self._lock:
            self._expected_flips.pop(action.id, None)

    def host_site(self, host: str) -> str:
        return self.inventory.host(host)[0]

    def _send_zone(self, zone: str, changes: list[Any]) -> list[str]:
        from drctl.drivers.dns_rfc2136 import update_zone

        addr, port, timeout = self.dns_server(zone_of(self.inventory, zone).primary)
        return update_zone((addr, port), zone, self.tsig_key(zone), changes, timeout=timeout)

    def flip_zone(self, zone: str, changes: list[Any]) -> tuple[list[str], int]:
        """(names updated, services sharing the UPDATE)."""
        return self._dns_batcher.submit(zone, changes)

    @property
    def pool(self) -> SSHPool:
        with self._lock:
            if self._pool is None:
                from drctl.drivers.ssh import SSHPool

                self._pool = SSHPool(self.inventory.all_hosts(), base_dir=self.inventory.base_dir)
                for site in sorted(self.site_down):
                    for host in self.inventory.sites[site].hosts if site in self.inventory.sites else ():
                        self._pool.declare_down(host, f"site {site} was declared down by the operator "
                                                      f"(--site-down {site}); nothing is sent there")
            return self._pool

    def tsig_key(self, zone: str) -> TsigKey:
        from drctl.drivers.dns_rfc2136 import load_tsig_key

        with self._lock:
            if zone not in self._keys:
                ref = zone_of(self.inventory, zone).tsig
                key = load_tsig_key(file=self.inventory.resolve_path(ref.file), env=ref.env, name=ref.name)
                self._keys[zone] = key
            return self._keys[zone]

    def dns_server(self, name: str) -> tuple[str, int, float]:
        s = self.inventory.dns_servers[name]
        return s.address, s.port, s.timeout

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()


def execute(action: Action, ctx: Context) -> Outcome:
    handler = _HANDLERS[action.kind]
    try:
        return handler(action, ctx)
    except AbortedError:
        raise
    except DrctlError as e:
        return Outcome("failed", e.message + (f" ({e.hint})" if e.hint else ""), {"error": type(e).__name__})


# --- handlers -----------------------------------------------------------------------------------


def _check_freshness(action: Action, ctx: Context) -> Outcome:
    from drctl.drivers.freshness import backup_age

    site = action.params["site"]
    svc = ctx.inventory.services[action.service]
    bc = svc.sites[site].backup
    assert bc is not None
    try:
        age = backup_age(ctx.pool, bc)
    except HostUnreachableError as e:
        if site == action.from_site:
            return Outcome("skipped", f"site {site} does not answer: {e.message}")
        raise
    where = f"{bc.host}:{bc.path}/{bc.glob}" if bc.path else f"{bc.host}: {' '.join(bc.command or [])}"
    data = {"site": site, "host": bc.host, "newest": age.newest, "age_s": age.age_s, "max_age_s": bc.max_age}
    if age.age_s is None:
        return Outcome("failed", f"no backup found at {where}", data)
    if age.age_s > bc.max_age:
        return Outcome("failed", f"backup at {where} is {format_duration(age.age_s)} old, older than its RPO "
                                 f"{format_duration(bc.max_age)} (newest: {age.newest})", data)
    return Outcome("ok", f"newest backup {format_duration(max(age.age_s, 0))} old "
                         f"(RPO {format_duration(bc.max_age)}): {age.newest}", data)


def _health_check(action: Action, ctx: Context) -> Outcome:
    from drctl.drivers.health import check_health

    site = action.params["site"]
    hc = ctx.inventory.services[action.service].sites[site].health
    assert hc is not None
    if site in ctx.site_down:
        return Outcome("skipped", f"not attempted: site {site} was declared down (--site-down)", {"site": site})
    result = check_health(hc, cancel=ctx.cancel)
    data = {"site": site, "elapsed_s": round(result.elapsed_s, 3)}
    if result.ok:
        return Outcome("ok", result.detail, data)
    if site == action.from_site:
        return Outcome("warn", f"site {site} is not healthy (expected when it is down): {result.detail}", data)
    return Outcome("failed", f"site {site} fails its health check: {result.detail}", data)


def _flip_dns(action: Action, ctx: Context) -> Outcome:
    from drctl.drivers.dns_rfc2136 import RecordChange

    svc = ctx.inventory.services[action.service]
    by_zone: dict[str, list[RecordChange]] = defaultdict(list)
    for rec in svc.dns:
        by_zone[rec.zone.rstrip(".")].append(RecordChange(
            name=rec.fqdn(), rdtype=rec.type, ttl=rec.ttl,
            old=rec.values_for(action.from_site), new=rec.values_for(action.to_site)))
    updated: list[str] = []
    already: list[str] = []
    shared = 1
    ctx._submitted(action)
    for zone, changes in sorted(by_zone.items()):
        done, size = ctx.flip_zone(zone, changes)
        shared = max(shared, size)
        updated += done
        already += [c.name for c in changes if c.name not in done]
    detail = f"updated {len(updated)} record(s)" + (f"; {len(already)} already at {action.to_site}" if already else "")
    if shared > 1:
        detail += f" (one UPDATE shared by {shared} services)"
    return Outcome("ok", detail, {"updated": updated, "already": already, "batch": shared})


def _wait_dns(action: Action, ctx: Context) -> Outcome:
    """Poll every authoritative server (in parallel) until each serves the new values. A server
    that does not answer at all is given a short grace once all the others serve the change, then
    reported as a warning: a dead secondary must not hold a failover for the whole timeout."""
    from drctl.drivers.dns_rfc2136 import normalize_values, query

    svc = ctx.inventory.services[action.service]
    timeout = float(action.params.get("timeout", 60.0))
    interval = float(action.params.get("interval", 0.2))
    grace = min(timeout, SILENT_SERVER_GRACE_S)
    pending: dict[tuple[str, str, str], list[str]] = {}
    for rec in svc.dns:
        zone = zone_of(ctx.inventory, rec.zone)
        for server in dict.fromkeys([zone.primary, *zone.servers]):
            pending[(server, rec.fqdn(), rec.type)] = normalize_values(rec.type, rec.values_for(action.to_site))
    last: dict[tuple[str, str, str], str] = {}
    silent: set[tuple[str, str, str]] = set()
    start = time.monotonic()
    deadline = start + timeout
    others_synced_at: float | None = None

    def ask(key: tuple[str, str, str]) -> tuple[tuple[str, str, str], list[str] | None, str]:
        server, name, rdtype = key
        addr, port, t = ctx.dns_server(server)
        try:
            return key, query((addr, port), name, rdtype, timeout=min(t, 1.0)), ""
        except DrctlError as e:
            return key, None, e.message

    while pending:
        for key, got, error in _gather(ask, list(pending), ctx.cancel):
            if got is None:
                silent.add(key)
                last[key] = f"no answer ({error})"
                continue
            silent.discard(key)
            if sorted(got) == pending[key]:
                del pending[key]
                last.pop(key, None)
            else:
                last[key] = "answers " + (",".join(got) or "nothing")
        now = time.monotonic()
        if not pending or now >= deadline:
            break
        if set(pending) <= silent:
            others_synced_at = others_synced_at or now
            if now - others_synced_at >= grace:
                break
        else:
            others_synced_at = None
        if ctx.cancel.wait(min(interval, max(0.0, deadline - now))):
            raise AbortedError("interrupted while waiting for DNS to be served everywhere",
                               hint="`drctl resume RUN_ID` waits again")
    elapsed = round(time.monotonic() - start, 3)
    if not pending:
        return Outcome("ok", f"all authoritative servers answer the {action.to_site} values after {elapsed}s",
                       {"elapsed_s": elapsed})
    problems = "; ".join(f"{s} {n} {t}: {last.get((s, n, t), '?')}" for s, n, t in sorted(pending))
    if set(pending) <= silent:
        return Outcome("warn", f"the servers that answer serve the new values; these do not answer: {problems}",
                       {"elapsed_s": elapsed, "unreachable": sorted({k[0] for k in pending}),
                        "gave_up": "timeout" if time.monotonic() >= deadline else "grace"})
    return Outcome("failed", f"after {timeout:.0f}s not every server serves the {action.to_site} values: {problems}",
                   {"elapsed_s": elapsed})


def prewarm_balancers(ctx: Context, actions: list[Action]) -> list[dict[str, Any]]:
    """Take the ``to`` server of every balancer-steered ``reroute_traffic`` in ``actions`` from
    maintenance to *drain*: it receives no traffic yet, but the balancer health-checks it, so by
    the time its wave switches it is already proven UP and the switch does not wait for a check.
    Returns what was changed (with the state to restore), for ``restore_balancers``."""
    from drctl.drivers.haproxy import HAProxyAdmin

    changed: list[dict[str, Any]] = []
    seen: set[tuple[str, str, str]] = set()
    for a in actions:
        tr = ctx.inventory.services[a.service].traffic if a.service in ctx.inventory.services else None
        if a.kind != "reroute_traffic" or not isinstance(tr, HAProxyTraffic):
            continue
        key = (tr.balancer, tr.backend, tr.servers[a.to_site])
        if key in seen:
            continue
        seen.add(key)
        lb = ctx.inventory.load_balancers[tr.balancer]
        admin = HAProxyAdmin(lb.admin, timeout=lb.timeout)
        try:
            before = admin.servers(tr.backend).get(key[2])
            if before is None or before.state_text != "maint":
                continue
            admin.set_state(tr.backend, key[2], "drain")
        except DrctlError:
            continue  # best effort: the switch itself still waits for the server to be seen UP
        changed.append({"service": a.service, "balancer": tr.balancer, "backend": tr.backend,
                        "server": key[2], "before": "maint"})
    return changed


def restore_balancers(ctx: Context, entries: list[dict[str, Any]]) -> list[str]:
    """Put back the servers ``prewarm_balancers`` drained whose switch did not happen (still in
    drain). Returns what could not be restored."""
    from drctl.drivers.haproxy import HAProxyAdmin

    problems = []
    for e in entries:
        lb = ctx.inventory.load_balancers.get(e["balancer"])
        if lb is None:
            continue
        admin = HAProxyAdmin(lb.admin, timeout=lb.timeout)
        try:
            now = admin.servers(e["backend"]).get(e["server"])
            if now is not None and now.state_text == "drain":
                admin.set_state(e["backend"], e["server"], e["before"])
        except DrctlError as err:
            problems.append(f"{e['balancer']} {e['backend']}/{e['server']}: {err.message}")
    return problems


def _gather(fn: Callable[[Any], Any], items: list[Any], cancel: threading.Event) -> list[Any]:
    """``[fn(item) for item in items]``, each in its own daemon thread, in order; an interrupt
    (``cancel``) is honoured within 0.1 s even while a server takes its whole timeout to answer:
    the threads left behind end with their own timeouts and hold nothing."""
    results: dict[int, Any] = {}
    cond = threading.Condition()

    def one(i: int, item: Any) -> None:
        try:
            value = fn(item)
        except BaseException as e:  # noqa: BLE001 - handed back to the caller
            value = e
        with cond:
            results[i] = value
            cond.notify()

    for i, item in enumerate(items):
        threading.Thread(target=one, args=(i, item), daemon=True, name="gather").start()
    with cond:
        while len(results) < len(items):
            if cancel.is_set():
                raise AbortedError("interrupted while waiting for servers to answer",
                                   hint="`drctl resume RUN_ID` continues")
            cond.wait(0.1)
    out = []
    for i in range(len(items)):
        if isinstance(results[i], BaseException):
            raise results[i]
        out.append(results[i])
    return out


def _reroute_traffic(action: Action, ctx: Context) -> Outcome:
    tr = ctx.inventory.services[action.service].traffic
    if isinstance(tr, HAProxyTraffic):
        from drctl.drivers.haproxy import HAProxyAdmin

        lb = ctx.inventory.load_balancers[tr.balancer]
        admin = HAProxyAdmin(lb.admin, timeout=lb.timeout)
        to_server, from_server = tr.servers[action.to_site], tr.servers[action.from_site]
        # enable the new side first, and take the old one out only once HAProxy itself sees the new
        # one UP: otherwise a balancer that cannot reach the new site would serve nothing at all
        admin.set_state(tr.backend, to_server, "ready")
        began = time.monotonic()
        deadline = began + SERVER_UP_WAIT_S
        while True:
            state = admin.servers(tr.backend).get(to_server)
            if state is not None and state.proven_up:
                break
            if time.monotonic() >= deadline or ctx.cancel.is_set():
                seen = state.status or "unknown" if state is not None else "missing"
                return Outcome("failed", f"{tr.balancer} does not see {tr.backend}/{to_server} UP ({seen}) after "
                               f"{SERVER_UP_WAIT_S:.0f}s; {from_server} left serving, traffic not moved",
                               {"to_status": seen})
            ctx.cancel.wait(0.2)
        up_at = time.monotonic()
        admin.set_state(tr.backend, from_server, tr.mode)
        states = admin.servers(tr.backend)
        got = {s: states[s].state_text for s in (to_server, from_server) if s in states}
        if got.get(to_server) != "ready" or got.get(from_server) != tr.mode:
            return Outcome("failed", f"{tr.balancer} reports {got} after the change", {"states": got})
        fence = {"site": action.from_site, "status": "fenced",
                 "detail": f"{tr.balancer} sends it no traffic ({tr.backend}/{from_server} {tr.mode})"}
        return Outcome("ok", f"{tr.balancer} {tr.backend}: {to_server} ready, {from_server} {tr.mode}",
                       {"states": got, "fence": fence, "waited_for_up_s": round(up_at - began, 3)})
    assert isinstance(tr, CommandTraffic)
    notes = []
    status: Status = "ok"
    data: dict[str, Any] = {}
    spec: CommandSpec | None = tr.deactivate.get(action.from_site)
    if spec is None:
        data["fence"] = {"site": action.from_site, "status": "not_fenced",
                         "detail": "no `deactivate` command is configured for it"}
    else:
        try:
            _run_checked(ctx, spec.host, spec.argv, spec.timeout)
            notes.append(f"deactivated on {spec.host}")
            data["fence"] = {"site": action.from_site, "status": "fenced", "detail": f"deactivated on {spec.host}"}
        except (HostUnreachableError, HostKeyError) as e:
            # the site being left may vanish at any moment: its fence is attempted within the host's
            # connect budget, and its failure never keeps the service from its backup. The old site
            # may come back still active: the operator must know it was not fenced.
            status = "warn"
            declared = action.from_site in ctx.site_down
            notes.append(f"NOT fenced: not deactivated on {spec.host} ({action.from_site}): {e.message}")
            data["fence"] = {"site": action.from_site, "status": "not_attempted" if declared else "not_fenced",
                             "host": spec.host,
                             "detail": (f"not attempted: {action.from_site} was declared down" if declared else
                                        f"{spec.host} did not take the deactivate command: {e.message}")}
            if not declared:
                data["unanswered"] = {"site": action.from_site, "host": spec.host, "error": e.message,
                                      "kind": type(e).__name__}
    spec = tr.activate.get(action.to_site)
    if spec is not None:
        _run_checked(ctx, spec.host, spec.argv, spec.timeout)
        notes.append(f"activated on {spec.host}")
    return Outcome(status, "; ".join(notes), data)


def _run_checked(ctx: Context, host: str, argv: list[str], timeout: float) -> str:
    """Run an operator's command on a host. The host itself enforces the timeout (coreutils
    ``timeout``, KILL 5 s after TERM): a signal sent over SSH is not delivered for every login, and
    a timed-out promotion must not complete later behind the operator's back."""
    limit = max(1, int(timeout))
    res = ctx.pool.run(host, ["timeout", "-k", "5", str(limit), *argv], timeout=limit + 15)
    shown = " ".join(argv)
    if res.rc in (124, 137):
        raise StepFailedError(f"on {host}: `{shown}` did not finish within {limit}s and was killed on the host",
                              hint="raise the step's timeout if the command is legitimately slow")
    if res.rc != 0:
        tail = res.stderr.decode(errors="replace").strip()[-400:]
        raise StepFailedError(f"on {host}: `{shown}` exited {res.rc}: {tail}")
    return res.stdout.decode(errors="replace")


def _command(action: Action, ctx: Context) -> Outcome:
    host, argv = action.params["host"], list(action.params["argv"])
    try:
        out = _run_checked(ctx, host, argv, float(action.params.get("timeout", 60)))
    except (HostUnreachableError, HostKeyError) as e:
        if action.params.get("on_unreachable") == "skip":
            data: dict[str, Any] = {"error": type(e).__name__}
            if ctx.inventory.host(host)[0] == action.from_site:
                data["unanswered"] = {"site": action.from_site, "host": host, "error": e.message,
                                      "kind": type(e).__name__}
            return Outcome("skipped", f"not run: {e.message}", data)
        raise
    return Outcome("ok", out.strip()[-200:] or "exit 0")


def _pause(action: Action, ctx: Context) -> Outcome:
    message = action.params.get("message", "Continue?")
    if ctx.approve is None or not ctx.approve(action, message, ctx.cancel):
        raise AbortedError(f"the operator did not approve: {message}",
                           hint="the run is journaled; `drctl resume RUN_ID` continues from here")
    return Outcome("ok", "approved")


def _verify_integrity(action: Action, ctx: Context) -> Outcome:
    from drctl.drivers.integrity import verify_service

    svc = ctx.inventory.services[action.service]
    warn_only = action.params.get("policy") == "warn"
    limit = float(action.params.get("timeout", 600.0))
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["report"] = verify_service(ctx.inventory, action.service, ctx.pool, ctx.state_dir,
                                           full=ctx.full_verify, primary_site=svc.primary, backup_site=svc.backup)
        except BaseException as e:  # noqa: BLE001 - handed to the step below
            box["error"] = e

    # the drivers bound each side by the target's own timeout; the step bounds the whole, so a host
    # that accepts the connection and then stalls cannot hold a failover for an hour
    worker = threading.Thread(target=work, daemon=True, name=f"verify-{action.service}")
    worker.start()
    worker.join(limit)
    try:
        if worker.is_alive():
            raise StepFailedError(f"integrity verification did not finish within {format_duration(limit)}",
                                  hint="a host may be stalled; raise the step's timeout for very large data")
        if "error" in box:
            raise box["error"]
        report = box["report"]
    except DrctlError as e:
        if warn_only:  # e.g. the primary is gone and no baseline was recorded
            return Outcome("warn", f"could not verify: {e.message}", {"error": type(e).__name__})
        raise
    data = report.as_dict()
    if report.ok:
        return Outcome("ok", report.summary(), data)
    if report.mass_change:
        # a poisoned copy (encrypted in place, renamed, mostly different) is never served by default,
        # whatever the policy and --force: only the operator's explicit acknowledgement passes it
        data["poisoned"] = True
        if action.service in ctx.accept_mass_change:
            data["acknowledged"] = True
            return Outcome("warn", f"ACKNOWLEDGED by the operator (--accept-mass-change {action.service}): "
                                   + report.summary(), data)
        return Outcome("failed", report.summary() + "; users are not moved onto this copy "
                       f"(only --accept-mass-change {action.service} passes it)", data)
    return Outcome("warn" if warn_only else "failed", report.summary(), data)


_HANDLERS: dict[str, Callable[[Action, Context], Outcome]] = {
    "check_freshness": _check_freshness,
    "health_check": _health_check,
    "flip_dns": _flip_dns,
    "wait_dns": _wait_dns,
    "reroute_traffic": _reroute_traffic,
    "command": _command,
    "pause": _pause,
    "verify_integrity": _verify_integrity,
}
