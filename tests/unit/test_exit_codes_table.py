"""One list of exit codes: ``drctl.errors.ExitStatus``. The README's "Exit codes" table, the CLI's
``--help`` epilog, ``EXIT_CODES`` and every error class's ``exit_code`` agree with it exactly."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from drctl import errors
from drctl.errors import EXIT_CODES, DrctlError, ExitStatus

ROOT = Path(__file__).resolve().parents[2]


def readme_table() -> dict[int, str]:
    """code -> meaning, from the table under the README's "## Exit codes" heading."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Exit codes\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[int, str] = {}
    for line in section.splitlines():
        m = re.match(r"^\|\s*(\d+)\s*\|(.*)\|\s*$", line)
        if m:
            code = int(m.group(1))
            assert code not in rows, f"README: exit code {code} listed twice"
            rows[code] = m.group(2).strip()
    return rows


def help_epilog() -> dict[int, str]:
    """code -> summary, from the epilog of ``drctl --help`` (as printed, line wrapping undone)."""
    done = subprocess.run([sys.executable, "-m", "drctl", "--help"], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1", "COLUMNS": "120", "TERM": "dumb"},
                          check=False)
    assert done.returncode == 0, done.stderr
    flat = " ".join(re.sub(r"[│╭╮╰╯─]", " ", done.stdout).split())
    m = re.search(r"Exit codes: (.*?)\. See README\.md\.", flat)
    assert m, flat
    found = re.findall(r"(\d+) (.+?)(?=, \d+ |$)", m.group(1))
    return {int(code): summary for code, summary in found}


def test_the_readme_table_lists_exactly_the_exit_statuses() -> None:
    rows = readme_table()
    assert sorted(rows) == sorted(int(s) for s in ExitStatus)
    for status in ExitStatus:
        for word in status.keywords:
            assert word.lower() in rows[status].lower(), f"README, exit code {int(status)}: {word!r} missing"


def test_the_help_epilog_lists_exactly_the_exit_statuses() -> None:
    epilog = help_epilog()
    assert list(epilog) == [int(s) for s in ExitStatus]
    for status in ExitStatus:
        assert epilog[status] == status.summary
        for word in status.keywords:
            assert word.lower() in epilog[status].lower(), f"--help, exit code {int(status)}: {word!r} missing"


def test_exit_codes_are_made_from_the_enum() -> None:
    assert EXIT_CODES == {int(s): s.description for s in ExitStatus}
    for status in ExitStatus:
        assert status.summary and status.description and status.keywords
        for word in status.keywords:
            assert word.lower() in status.description.lower(), (status, word)


def _error_classes() -> list[type[DrctlError]]:
    found, todo = [], [DrctlError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


@pytest.mark.parametrize("cls", [c for c in vars(errors).values()
                                 if isinstance(c, type) and issubclass(c, DrctlError)], ids=lambda c: c.__name__)
def test_every_error_class_is_defined_in_errors_and_exits_with_a_member(cls: type[DrctlError]) -> None:
    assert isinstance(cls.exit_code, ExitStatus)
    assert cls.__name__ in (errors.__doc__ or ""), f"{cls.__name__} is missing from the tree in errors.py"


def test_no_error_class_is_defined_outside_errors() -> None:
    import drctl.cli.app  # noqa: F401  (imports every command module)
    import drctl.drivers.baseline  # noqa: F401
    import drctl.drivers.integrity  # noqa: F401
    import drctl.engine.store  # noqa: F401
    import drctl.lab.lab  # noqa: F401

    outside = sorted(f"{c.__module__}.{c.__name__}" for c in _error_classes() if c.__module__ != "drctl.errors")
    assert outside == []


def test_the_exit_codes_did_not_change() -> None:
    codes = {c.__name__: int(c.exit_code) for c in _error_classes()}
    assert codes.items() >= {
        "DrctlError": 1, "UsageError": 2, "ConfigError": 3, "RefusedError": 4, "LockHeldError": 4,
        "LockWriteError": 4, "StepFailedError": 5, "JournalError": 5, "BaselineError": 5, "DriverError": 5,
        "DatabaseUnreachableError": 5, "IntegrityError": 6, "NotReadyError": 7, "RunNotFoundError": 8,
        "StateStoreError": 9, "LockLostError": 9, "AbortedError": 130, "LabError": 1}.items()
