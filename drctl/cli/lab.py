"""``drctl lab up | down | status``: a local lab of real servers (sshd, BIND, HAProxy, HTTP
origins) on free loopback ports, with an inventory describing it, to try drctl safely."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from drctl.cli.common import ENV, JsonOpt
from drctl.core import render

app = typer.Typer(help="Start, inspect and stop a local lab of real servers on 127.0.0.1.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)

DirOpt = Annotated[Path | None, typer.Option("--dir", "-d", envvar="DRCTL_LAB_DIR",
                                             help="lab directory [env: DRCTL_LAB_DIR; default: <state dir>/lab]")]


def _dir(d: Path | None) -> Path:
    from drctl.engine.store import default_state_dir

    return (d or default_state_dir() / "lab").resolve()


@app.command("up")
def up(directory: DirOpt = None, json_out: JsonOpt = False,
       etcd: Annotated[bool, typer.Option("--etcd", help="also start a 3-member etcd cluster (one member per site "
                                                         "and a witness) and keep the lab's locks and journals "
                                                         "there (the inventory's state:)")] = False) -> int:
    """Start the lab and write its inventory; prints the inventory path."""
    from drctl.lab.lab import lab_up

    d = _dir(directory)
    ENV.err.print(f"starting the lab in {d} ...", markup=False)
    info = lab_up(d, etcd=etcd)
    if json_out:
        ENV.stdout.write(render.to_json({"dir": str(d), "inventory": str(info.inventory),
                                         **({"state": info.state_spec()} if etcd else {})}) + "\n")
    else:
        ENV.stdout.write(f"{info.inventory}\n")
        ENV.err.print(f"lab is up. Try:\n  export DRCTL_INVENTORY={info.inventory}\n"
                      f"  drctl plan failover --site dc1\n  drctl failover --site dc1 --yes\n"
                      f"  drctl lab down --dir {d}", markup=False)
        if etcd:
            ENV.err.print(f"locks and journals are kept in etcd: {info.state_spec()} (the inventory's state:)",
                          markup=False)
    return 0


@app.command("down")
def down(directory: DirOpt = None) -> int:
    """Stop every process the lab started, and wait until they are gone."""
    from drctl.lab.lab import lab_down

    d = _dir(directory)
    stopped = lab_down(d)
    ENV.err.print(f"stopped {len(stopped)} process(es): {', '.join(stopped) or '-'}", markup=False)
    return 0


@app.command("status")
def status(directory: DirOpt = None, json_out: JsonOpt = False) -> int:
    """Show the lab's processes and whether each is alive (exit 7 if any is not)."""
    from rich.table import Table

    from drctl.lab.lab import lab_status

    d = _dir(directory)
    procs = lab_status(d)
    if json_out:
        ENV.stdout.write(render.to_json([{"name": p.name, "pid": p.pid, "port": p.port, "alive": p.alive}
                                         for p in procs]) + "\n")
    else:
        t = Table(title=f"lab {d}", title_justify="left")
        for col in ("process", "pid", "port", "alive"):
            t.add_column(col)
        for p in procs:
            t.add_row(p.name, str(p.pid), str(p.port or ""), "yes" if p.alive else "[red]no[/]")
        ENV.out.print(t)
    return 0 if procs and all(p.alive for p in procs) else 7
