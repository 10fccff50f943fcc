"""What drctl reads from ``psql``: its error text, whether that text means the server does not
answer, and the JSON values it printed one per line. Shared by the integrity driver and the
replication driver, which both run ``psql -X -q -A -t`` and print one JSON value per row."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from drctl.errors import DatabaseError

#: psql's messages for a server that cannot be reached (as opposed to one that refused us)
UNREACHABLE = re.compile(r"could not connect|connection refused|timeout expired|no route to host|"
                         r"could not translate host name|no such file or directory|server closed the connection|"
                         r"the database system is (starting up|shutting down)", re.I)


def error_text(err: bytes, rc: int, scrub: Callable[[str], str] = str) -> str:
    """psql's stderr without its ``psql:<stdin>:N:`` prefixes, its last 1,500 characters."""
    text = scrub(re.sub(r"psql:<stdin>:\d+: ", "", err.decode("utf-8", "replace").strip()))
    return text[-1500:] or f"exit status {rc}"


def json_rows(label: str, out: bytes, scrub: Callable[[str], str] = str) -> list[Any]:
    """Every non-empty line of psql's output, parsed as JSON; DatabaseError for anything else."""
    rows = []
    for line in out.decode("utf-8", "replace").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise DatabaseError(f"{label}: unexpected psql output: {scrub(line)[:200]!r}") from None
    return rows
