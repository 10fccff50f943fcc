"""``drctl verify``: compare services' data between their primary and backup copies (file trees
and PostgreSQL tables), or between the backup and a recorded baseline when the primary is gone.

Parse -> ``drctl.api.verify`` (one service after the other) -> print -> exit code: 0 when every
copy matches, 6 (``IntegrityError``) when data differ, the error's own code when a service could
not be verified (the other services are still verified and reported).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from drctl import api
from drctl.cli.common import DEFAULT_INVENTORY, ENV, InventoryOpt, JsonOpt, StateDirOpt, StateOpt
from drctl.core import render
from drctl.errors import ExitStatus


def verify_cmd(
    services: Annotated[list[str] | None, typer.Argument(help="services to verify (or use --site)",
                                                         show_default=False)] = None,
    site: Annotated[str | None, typer.Option("--site", "-s", help="every service whose primary is SITE")] = None,
    target: Annotated[list[str] | None, typer.Option("--target", "-t",
                                                     help="only this integrity target (repeatable)")] = None,
    full: Annotated[bool, typer.Option("--full", help="re-hash every file, ignoring the hosts' manifest "
                                                      "caches")] = False,
    record_baseline: Annotated[bool, typer.Option(
        "--record-baseline", help="also store the primary's manifest in the state directory, to compare the "
                                  "backup with when the primary is gone")] = False,
    limit: Annotated[int, typer.Option("--limit", min=0, help="paths listed per category in the text report "
                                                               "(--json lists all)")] = 20,
    json_out: JsonOpt = False,
    inventory: InventoryOpt = DEFAULT_INVENTORY,
    state: StateDirOpt = None,
    state_spec: StateOpt = None,
) -> int:
    """Prove that each backup holds the same data as its primary.

    File trees are hashed on each host at the same time (only digests travel) and compared:
    files missing on the backup, extra on it, and differing, with counts and bytes. An unchanged
    tree is not re-hashed (a manifest cache on each host) unless --full. PostgreSQL tables are
    compared by row count and checksum, and a differing table is narrowed down to key ranges and
    keys. When the primary does not answer, the backup is compared with the newest baseline
    (--record-baseline), and a mass change in place (encryption) is flagged.

    Exit status 0: all copies match; 6: data differ; other codes: verification failed.
    """
    results: list[dict[str, Any]] = []

    def started(name: str) -> None:
        if not json_out:
            ENV.err.print(f"[dim]{name}: verifying ...[/]")

    def show(v: api.Verified) -> None:
        if v.skipped:
            if not json_out:
                ENV.err.print(f"{v.service}: no integrity targets defined; skipped")
            results.append({"service": v.service, "ok": True, "targets": [], "skipped": v.skipped})
        elif v.error is not None:
            e = v.error
            results.append({"service": v.service, "ok": False, "error": {
                "type": type(e).__name__, "message": e.message, "hint": e.hint, "exit_code": e.exit_code}})
            if not json_out:
                ENV.err.print(f"{v.service}: {e.label}: {e.message}", markup=False)
                if e.hint:
                    ENV.err.print(f"hint: {e.hint}", markup=False)
        elif v.report is not None:
            results.append(v.report.as_dict(max_paths=None if json_out else limit))
            if not json_out:
                ENV.stdout.write("\n".join(v.report.lines(limit)) + "\n")

    verified = api.verify(inventory, services, site, targets=target, full=full, record_baseline=record_baseline,
                          state_dir=state, state=state_spec, on_start=started, on_result=show)
    failures = [v.error for v in verified if v.error is not None]
    differ = any(v.differ for v in verified)
    if json_out:
        ENV.stdout.write(render.to_json({"ok": not differ and not failures, "services": results}) + "\n")
    if differ:  # a difference (possibly ransomware) wins over a failure to verify another service
        return ExitStatus.INTEGRITY
    return failures[0].exit_code if failures else ExitStatus.OK
