"""The ``drctl`` command: registers the commands and turns every error into an exit code.

One place maps exceptions to exit codes (``drctl.errors``: ``ExitStatus``, from which the
``--help`` epilog is made too); a traceback is shown only with ``--debug``. Commands return their
exit code.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Annotated

import typer

from drctl import __version__
from drctl.cli import check, drill, lab, report, run, status, verify
from drctl.cli.common import DEFAULT_INVENTORY, ENV, InventoryOpt, JsonOpt
from drctl.core import render
from drctl.errors import ConfigError, DrctlError, ExitStatus

EPILOG = "Exit codes: " + ", ".join(f"{int(s)} {s.summary}" for s in ExitStatus) + ". See README.md."


app = typer.Typer(
    name="drctl",
    help="Disaster-recovery failover: check backups, flip DNS, reroute traffic, verify data, with a journal.",
    epilog=EPILOG,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        ENV.stdout.write(f"drctl {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks for errors")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    if debug:
        os.environ["DRCTL_DEBUG"] = "1"


@app.command("validate")
def validate_cmd(
    playbooks: Annotated[list[str] | None, typer.Argument(help="playbook files to check as well")] = None,
    json_out: JsonOpt = False,
    inventory: InventoryOpt = DEFAULT_INVENTORY,
) -> int:
    """Check an inventory (and playbooks) for errors: each one as file:line: field: what is wrong."""
    from drctl.model.load import load_inventory, load_playbook

    problems = []
    inv = None
    try:
        inv = load_inventory(inventory)
    except ConfigError as e:
        problems += e.problems
    for pb in playbooks or []:
        try:
            load_playbook(pb, inv)
        except ConfigError as e:
            problems += e.problems
    if json_out:
        ENV.stdout.write(render.to_json({"ok": not problems, "problems": [p.as_dict() for p in problems]}) + "\n")
    if problems:
        if not json_out:
            for p in problems:
                ENV.err.print(p.render(), markup=False)
            ENV.err.print(f"{len(problems)} problem(s)")
        return ConfigError.exit_code
    if not json_out and inv is not None:
        ENV.err.print(f"{inventory}: ok ({len(inv.sites)} sites, {len(inv.services)} services)"
                      + (f"; {len(playbooks or [])} playbook(s) ok" if playbooks else ""), markup=False)
    return 0


app.command("plan")(run.plan_cmd)
app.command("failover")(run.failover_cmd)
app.command("failback")(run.failback_cmd)
app.command("resume")(run.resume_cmd)
app.command("history")(run.history_cmd)
app.command("check")(check.check_cmd)
app.command("drill")(drill.drill_cmd)
app.command("status")(status.status_cmd)
app.command("report")(report.report_cmd)


app.command("verify")(verify.verify_cmd)
app.add_typer(lab.app, name="lab")


def _terminate(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _raise_open_files_limit(want: int = 65536) -> None:
    """A run holds a lock file per service and a connection per host: take the open-files limit
    up to what the system allows (the soft limit is often 1,024), so a large site is not refused
    for want of descriptors."""
    import resource

    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        pass


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, map errors to exit codes, never a traceback unless --debug."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:]) or os.environ.get("DRCTL_DEBUG") == "1"
    signal.signal(signal.SIGTERM, _terminate)  # `systemctl stop`, `timeout`: stop like Ctrl-C, cleanly
    _raise_open_files_limit()
    if debug:  # tracebacks and library logs go straight to sys.stderr: mask secrets there too
        from drctl.cli.common import redacting

        sys.stderr = redacting(sys.stderr)
    try:
        rv = app(args=argv, standalone_mode=False, prog_name="drctl")
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        ENV.err.print("aborted")
        sys.exit(ExitStatus.ABORTED)
    except typer.TyperException as e:  # bad arguments and options
        show = getattr(e, "show", None)
        if show is not None:
            show(file=ENV.stderr)
        else:
            ENV.err.print(f"Error: {e.format_message()}", markup=False)
        sys.exit(ExitStatus.USAGE)
    except KeyboardInterrupt:
        ENV.err.print("interrupted; the journal records how far the run got (`drctl history`)")
        sys.exit(ExitStatus.ABORTED)
    except DrctlError as e:
        if debug:
            raise
        if "--json" in (argv if argv is not None else sys.argv[1:]):  # machines get JSON on every outcome
            ENV.stdout.write(render.to_json({
                "status": "error", "error": type(e).__name__, "label": e.label, "message": e.message,
                "hint": e.hint, "exit_code": e.exit_code,
                "problems": [p.as_dict() for p in e.problems] if isinstance(e, ConfigError) else []}) + "\n")
        if not isinstance(e, ConfigError):
            ENV.err.print(f"drctl: {e.label}: {e.message}", markup=False)
        else:
            for p in e.problems:
                ENV.err.print(p.render(), markup=False)
        if e.hint:
            ENV.err.print(f"hint: {e.hint}", markup=False)
        sys.exit(e.exit_code)
    except Exception as e:  # a bug: say so plainly, without locals
        if debug:
            raise
        ENV.err.print(f"drctl: internal error: {type(e).__name__}: {e} (run with --debug for a traceback)",
                      markup=False)
        sys.exit(ExitStatus.INTERNAL)
    sys.exit(rv if isinstance(rv, int) else ExitStatus.OK)
