"""Integrity targets in the inventory: what loads, and what is refused with file:line."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from drctl.errors import ConfigError
from drctl.model.integrity import FilesTarget, PostgresTarget
from drctl.model.load import load_inventory

HEAD = """\
sites:
  dc1: {hosts: {app1: {address: 10.0.0.1}}}
  dc2: {hosts: {app2: {address: 10.0.0.2}}}
services:
  web:
    primary: dc1
    backup: dc2
    integrity:
"""


def load(tmp_path: Path, integrity: str) -> object:
    p = tmp_path / "inventory.yaml"
    p.write_text(HEAD + textwrap.indent(textwrap.dedent(integrity), " " * 6))
    return load_inventory(p)


def problems(tmp_path: Path, integrity: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, integrity)
    return [p.render() for p in exc.value.problems]


def test_both_kinds_load(tmp_path: Path) -> None:
    inv = load(tmp_path, """\
        - kind: files
          name: uploads
          sites: {dc1: {host: app1, path: /srv/up}, dc2: {host: app2, path: /backup/up}}
          exclude: ["*.tmp", cache/]
          mass_change: {share: 0.5, min_files: 100}
        - kind: postgres
          name: db
          sites:
            dc1: {host: app1, conninfo: "dbname=app"}
            dc2: {conninfo: "host=db2 dbname=app user=verify", password_env: DB2_PASSWORD}
          tables: [public.orders, {name: public.events, key: event_id, bucket_size: 5000}]
    """)
    files, pg = inv.services["web"].integrity  # type: ignore[attr-defined]
    assert isinstance(files, FilesTarget) and files.mass_change.share == 0.5
    assert isinstance(pg, PostgresTarget) and pg.tables[1].key == "event_id" and pg.tables[0].key is None


def test_references_are_checked_with_lines(tmp_path: Path) -> None:
    found = problems(tmp_path, """\
        - kind: files
          name: data
          sites: {dc1: {host: app2, path: /a}, dc3: {host: nope, path: /b}}
    """)
    text = "\n".join(found)
    assert "no location for site 'dc2'" in text
    assert "host 'app2' belongs to site 'dc2', not 'dc1'" in text
    assert "unknown host 'nope'" in text
    assert "site 'dc3' is neither" in text
    assert all(re.match(r".*inventory\.yaml:11: services\.web\.integrity\[0\]\.sites", line) for line in found)


@pytest.mark.parametrize(("target", "message"), [
    ("{kind: files, name: a, sites: {}, include: [data/]}", "includes select files"),
    ("{kind: files, name: a, sites: {}, exclude: ['a\\\\b']}", "backslash"),
    ("{kind: files, name: a, sites: {dc1: {host: app1, path: relative}}}", "must be absolute"),
    ("{kind: postgres, name: a, sites: {dc1: {conninfo: 'password=x'}}}", "must not hold a password"),
    ("{kind: postgres, name: a, sites: {}, tables: ['bad name;']}", "should match pattern"),
    ("{kind: rsync, name: a, sites: {}}", "unknown kind"),
])
def test_bad_targets(tmp_path: Path, target: str, message: str) -> None:
    assert any(message in p for p in problems(tmp_path, f"- {target}\n"))


def test_target_names_are_unique(tmp_path: Path) -> None:
    found = problems(tmp_path, """\
        - {kind: files, name: same, sites: {dc1: {host: app1, path: /a}, dc2: {host: app2, path: /a}}}
        - {kind: files, name: same, sites: {dc1: {host: app1, path: /b}, dc2: {host: app2, path: /b}}}
    """)
    assert any("used twice" in p for p in found)
