"""What every command shares: the terminal environment, common options, loading the inventory,
asking the operator, and progress lines on stderr.

Data goes to stdout, messages and progress to stderr. No colour when stdout/stderr is not a
terminal, with ``NO_COLOR`` set, or ``TERM=dumb`` (rich honours all three). Everything written
through ``ENV`` has its secrets masked (``drctl.core.redact``): passwords in URLs and connection
strings never reach a terminal, a log or cron mail. Output files named by options are checked
before any work starts (``check_output_path``). Nothing here decides anything about a failover:
it only connects the operator to the core and the engine.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO, cast

import typer
from rich.console import Console
from rich.markup import escape

from drctl.api import inventory_state as inventory_state  # the API's, by the names the commands use
from drctl.api import load as load_inventory  # noqa: F401
from drctl.api import open_state as open_state
from drctl.core.redact import redact_text
from drctl.errors import AbortedError, UsageError
from drctl.units import format_duration

if TYPE_CHECKING:  # the models cost ~120 ms to import: only the commands that load an inventory pay it
    from drctl.core.plan import Action
    from drctl.engine.steps import Outcome


class RedactingStream:
    """A text stream that masks secrets in everything written to it (the last net: text is also
    redacted where it is made, since a table may fold a long URL over two lines)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(redact_text(text))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, flush, encoding ...
        return getattr(self.stream, name)


def redacting(stream: TextIO) -> TextIO:
    return stream if isinstance(stream, RedactingStream) else cast(TextIO, RedactingStream(stream))


class _Console(Console):
    """A rich console that masks secrets in the strings it is given, before it wraps them."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        super().print(*(redact_text(o) if isinstance(o, str) else o for o in objects), **kwargs)


def _console(stream: TextIO) -> Console:
    no_color = bool(os.environ.get("NO_COLOR")) or os.environ.get("TERM") == "dumb"
    return _Console(file=stream, no_color=no_color, highlight=False, soft_wrap=False,
                    width=None if stream.isatty() else 160)


@dataclass
class Env:
    """The process's terminal facts in one object, so tests and callers can swap them."""

    stdin: TextIO = field(default_factory=lambda: sys.stdin)
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)

    def __post_init__(self) -> None:
        self.stdout = redacting(self.stdout)
        self.stderr = redacting(self.stderr)
        self.out = _console(self.stdout)
        self.err = _console(self.stderr)

    @property
    def interactive(self) -> bool:
        try:
            return self.stdin.isatty()
        except (ValueError, AttributeError):
            return False


ENV = Env()

InventoryOpt = Annotated[Path, typer.Option("--inventory", "-i", envvar="DRCTL_INVENTORY",
                                            help="inventory YAML [env: DRCTL_INVENTORY]",
                                            show_default=True)]
StateDirOpt = Annotated[Path | None, typer.Option("--state-dir", envvar="DRCTL_STATE_DIR",
                                                  help="where journals, locks and baselines live "
                                                       "[env: DRCTL_STATE_DIR; default: $XDG_STATE_HOME/drctl "
                                                       "or ~/.local/state/drctl]")]
StateOpt = Annotated[str | None, typer.Option(
    "--state", envvar="DRCTL_STATE", metavar="SPEC",
    help="keep locks, journals and the baselines' index in an etcd cluster: etcd://HOST:PORT[,HOST:PORT...]/PREFIX "
         "(etcds:// for TLS); `dir`: the state directory, whatever the inventory says "
         "[env: DRCTL_STATE; default: the inventory's state:, else the state directory]")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable JSON on stdout")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="do not ask: approve confirmations and pauses")]
DEFAULT_INVENTORY = Path("inventory/inventory.yaml")
#: commands that do not plan (history, resume, report) read only the inventory's ``state:`` key
StateInventoryOpt = Annotated[Path | None, typer.Option(
    "--inventory", "-i", envvar="DRCTL_INVENTORY", show_default=False,
    help="an inventory whose state: key says where the runs are (default: inventory/inventory.yaml if it "
         "exists) [env: DRCTL_INVENTORY]")]


def check_output_path(option: str, path: Path | None) -> None:
    """Refuse (exit 2, naming ``option`` and ``path``) an output file that could not be written,
    before the command does any work: its directory must exist and take a new file (checked by
    creating and removing one, which also catches read-only filesystems and root's permissions),
    and ``path`` must not be a directory. Files are written with ``write_output``."""
    if path is None:
        return
    parent = path.parent
    problem = None
    if path.is_dir():
        problem = "is a directory"
    elif not parent.exists():
        problem = f"its directory {parent} does not exist"
    elif not parent.is_dir():
        problem = f"{parent} is not a directory"
    else:
        probe = parent / f".{path.name}.{os.getpid()}.probe"
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            os.unlink(probe)
        except OSError as e:
            problem = f"cannot write in {parent}: {e.strerror or e}"
    if problem is not None:
        raise UsageError(f"{option} {path}: {problem}; nothing was done",
                         hint=f"create the directory or pass another path to {option}")


def write_output(option: str, path: Path, text: str) -> None:
    """Write an output file atomically (readers see the old or the new content); a failure is a
    UsageError naming ``option`` (``check_output_path`` caught what could be caught up front)."""
    from drctl.engine.drill import write_atomic

    try:
        write_atomic(path, text)
    except OSError as e:
        with contextlib.suppress(OSError):  # write_atomic's temporary file, if it was left behind
            path.with_name(f".{path.name}.{os.getpid()}.tmp").unlink()
        raise UsageError(f"{option} {path}: cannot write it: {e.strerror or e}",
                         hint="free space or fix permissions, or pass another path") from None


def confirm_typed(expected: str, what: str, *, yes: bool, env: Env = ENV) -> None:
    """Ask the operator to type ``expected``; ``--yes`` skips; no terminal and no --yes refuses."""
    if yes:
        return
    if not env.interactive:
        raise UsageError(f"{what} It needs confirmation, but stdin is not a terminal.",
                         hint="pass --yes to run without prompting")
    env.err.print(f"[bold]{what}[/]")
    env.err.print(f"Type [bold]{expected}[/] to confirm: ", end="")
    env.stderr.flush()
    answer = env.stdin.readline()
    if answer.strip() != expected:
        raise AbortedError("confirmation did not match; nothing was changed")


class Approver:
    """Answers ``pause`` steps: --yes approves; otherwise the operator answers y/N at a terminal."""

    def __init__(self, yes: bool, env: Env = ENV) -> None:
        self.yes = yes
        self.env = env
        self._lock = threading.Lock()

    def __call__(self, action: Action, message: str, cancelled: threading.Event) -> bool:
        if self.yes:
            self.env.err.print(escape(f"[{action.service}] pause approved by --yes: {message}"))
            return True
        if not self.env.interactive:
            return False
        with self._lock:
            self.env.err.print(f"[bold]{escape(f'[{action.service}] {message}')}[/] \\[y/N] ", end="")
            self.env.stderr.flush()
            answer = _readline_unless(self.env.stdin, cancelled)
            return answer is not None and answer.strip().lower() in ("y", "yes")


def _readline_unless(stream: TextIO, cancelled: threading.Event) -> str | None:
    """A line from ``stream``, or None once ``cancelled`` is set (Ctrl-C while a prompt waits)."""
    import select

    while not cancelled.is_set():
        try:
            ready, _, _ = select.select([stream], [], [], 0.2)
        except (ValueError, OSError):  # not a selectable stream
            return stream.readline()
        if ready:
            return stream.readline()
    return None


_MARK = {"ok": "[green]ok[/]", "skipped": "[yellow]skipped[/]", "warn": "[yellow]warn[/]",
         "failed": "[red]FAILED[/]", "planned": "[cyan]planned[/]", "blocked": "[red]blocked[/]"}


class ProgressReporter:
    """One line per step start and end on stderr: readable in a terminal, a log, or cron mail."""

    def __init__(self, env: Env = ENV, quiet: bool = False) -> None:
        self.env = env
        self.quiet = quiet

    def action_started(self, action: Action) -> None:
        if not self.quiet:
            title = redact_text(action.title)
            self.env.err.print(f"[dim]{escape(f'[{action.service}] {action.kind}: {title} ...')}[/]")

    def action_finished(self, action: Action, outcome: Outcome, elapsed_s: float) -> None:
        if not self.quiet or outcome.status == "failed":
            self.env.err.print(f"{escape(f'[{action.service}] {action.kind}:')} "
                               f"{_MARK.get(outcome.status, outcome.status)} "
                               f"({format_duration(elapsed_s)}) {escape(redact_text(outcome.detail))}")

    def message(self, text: str) -> None:
        self.env.err.print(redact_text(text), markup=False)
