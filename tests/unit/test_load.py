"""Inventory and playbook loading: every problem located as file:line: field: message."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from drctl.errors import ConfigError
from drctl.model.load import builtin_playbook, load_inventory, load_playbook

ROOT = Path(__file__).resolve().parents[2]

GOOD = textwrap.dedent("""\
    version: 1
    sites:
      dc1:
        hosts:
          app1: {address: 127.0.0.1, port: 2201}
      dc2:
        hosts:
          app2: {address: 127.0.0.1, port: 2202}
    dns_servers:
      ns1: {address: 127.0.0.1, port: 5301}
    zones:
      example.test:
        primary: ns1
        tsig: {file: tsig.key}
    load_balancers:
      lb1: {admin: "tcp://127.0.0.1:9999"}
    services:
      db:
        primary: dc1
        backup: dc2
      web:
        primary: dc1
        backup: dc2
        depends_on: [db]
        sites:
          dc2:
            backup: {host: app2, path: /srv/backups, max_age: 1h}
        dns:
          - {zone: example.test, name: www, values: {dc1: 192.0.2.1, dc2: 198.51.100.1}}
        traffic: {kind: haproxy, balancer: lb1, backend: web, servers: {dc1: a, dc2: b}}
    """)


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "inv.yaml"
    p.write_text(text)
    return p


def _problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        load_inventory(_write(tmp_path, text))
    return [p.render() for p in ei.value.problems]


def test_good_inventory_loads(tmp_path: Path) -> None:
    inv = load_inventory(_write(tmp_path, GOOD))
    assert inv.services["web"].depends_on == ["db"]
    assert inv.services["web"].dns[0].fqdn() == "www.example.test."
    assert inv.services["web"].sites["dc2"].backup.max_age == 3600  # type: ignore[union-attr]
    assert inv.base_dir == tmp_path


@pytest.mark.parametrize(
    ("old", "new", "line", "expect"),
    [
        # an unknown key, with the line of that key
        ("    primary: dc1\n    backup: dc2\n    depends_on",
         "    primary: dc1\n    backup: dc2\n    depend_on: [db]\n    depends_on", 24,
         "services.web.depend_on: unknown key"),
        # a reference to an unknown site
        ("  web:\n    primary: dc1", "  web:\n    primary: dc9", 22,
         "services.web.primary: unknown site 'dc9'"),
        # a reference to an unknown host
        ("host: app2, path", "host: app7, path", 27, "services.web.sites.dc2.backup.host: unknown host 'app7'"),
        # a reference to an unknown service
        ("depends_on: [db]", "depends_on: [dbx]", 24, "services.web.depends_on[0]: unknown service 'dbx'"),
        # a wrong type
        ("port: 2201", "port: twenty", 5, "sites.dc1.hosts.app1.port"),
        # a bad duration
        ("max_age: 1h", "max_age: soon", 27, "expected a duration"),
        # an unknown zone
        ("- {zone: example.test, name: www", "- {zone: nope.test, name: www", 29,
         "services.web.dns[0].zone: unknown zone 'nope.test'"),
        # a missing required field
        ("  db:\n    primary: dc1\n    backup: dc2\n", "  db:\n    primary: dc1\n", 18,
         "services.db.backup: required field is missing"),
        # an unknown load balancer
        ("balancer: lb1, backend", "balancer: lb9, backend", 30, "unknown load balancer 'lb9'"),
        # a bad traffic kind
        ("traffic: {kind: haproxy,", "traffic: {kind: f5,", 30, "unknown kind 'f5'"),
        # an inline secret is refused
        ("tsig: {file: tsig.key}", "tsig: {secret: abc}", 14, "zones.example.test.tsig.secret: unknown key"),
    ],
)
def test_broken_inventories_name_line_and_field(tmp_path: Path, old: str, new: str, line: int, expect: str) -> None:
    assert old in GOOD
    problems = _problems(tmp_path, GOOD.replace(old, new, 1))
    assert any(p.startswith(f"{tmp_path / 'inv.yaml'}:{line}: ") and expect in p for p in problems), problems


def test_dependency_cycle_is_an_error(tmp_path: Path) -> None:
    text = GOOD.replace("  db:\n    primary: dc1\n", "  db:\n    depends_on: [web]\n    primary: dc1\n")
    problems = _problems(tmp_path, text)
    assert any("dependency cycle: " in p and "db -> web -> db" in p for p in problems), problems


def test_duplicate_key_and_yaml_syntax(tmp_path: Path) -> None:
    problems = _problems(tmp_path, GOOD.replace("services:\n", "services:\n  web: {primary: dc1, backup: dc2}\n", 1))
    assert any(":20: services.web: duplicate key" in p or "duplicate key" in p for p in problems), problems
    problems = _problems(tmp_path, "sites: {dc1: [\n")
    assert any(":" in p and "not valid YAML" in p for p in problems), problems


def test_missing_file_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_inventory(tmp_path / "nope.yaml")
    assert any("empty" in p for p in _problems(tmp_path, ""))


def test_builtin_playbooks_load() -> None:
    for name in ("failover", "failback"):
        pb = load_playbook(builtin_playbook(name))
        assert pb.direction == name
        assert [s.kind for s in pb.steps][:2] == ["check_freshness", "health_check"]


def test_broken_playbook(tmp_path: Path) -> None:
    p = tmp_path / "pb.yaml"
    p.write_text("version: 1\nname: x\nsteps:\n  - kind: flip_dns\n  - kind: reboot_everything\n"
                 "  - kind: wait_dns\n    timeout: forever\n")
    with pytest.raises(ConfigError) as ei:
        load_playbook(p)
    text = str(ei.value)
    assert f"{p}:5: steps[1]: unknown kind 'reboot_everything'" in text
    assert f"{p}:7: steps[2].timeout: expected a duration" in text


def test_validate_command_exit_code_and_no_traceback(tmp_path: Path) -> None:
    bad = _write(tmp_path, GOOD.replace("primary: dc1\n    backup: dc2\n    depends_on",
                                        "primary: dc1\n    backup: dc1\n    depends_on"))
    r = subprocess.run([sys.executable, "-m", "drctl", "validate", "-i", str(bad)], capture_output=True, text=True)
    assert r.returncode == 3
    assert "Traceback" not in r.stderr
    assert f"{bad}:21: services.web" in r.stderr and "must be different sites" in r.stderr
    ok = subprocess.run([sys.executable, "-m", "drctl", "validate", "-i", str(ROOT / "inventory/example.yaml"),
                         str(ROOT / "playbooks/failover.yaml")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize(("record", "expect"), [
    ("{zone: example.test, name: www, values: {dc1: 192.0.2.1, dc2: 198.51.100.300}}",
     "'198.51.100.300' is not an IPv4"),
    ("{zone: example.test, name: www, type: AAAA, values: {dc1: '2001:db8::1', dc2: 192.0.2.1}}", "not an IPv6"),
    ("{zone: example.test, name: www, type: CNAME, values: {dc1: [a.test., b.test.], dc2: c.test.}}",
     "exactly one target"),
    ("{zone: example.test, name: 'w w', values: {dc1: 192.0.2.1, dc2: 198.51.100.1}}", "not a valid DNS name"),
])
def test_invalid_record_values_are_found_when_loading(tmp_path: Path, record: str, expect: str) -> None:
    text = GOOD.replace("- {zone: example.test, name: www, values: {dc1: 192.0.2.1, dc2: 198.51.100.1}}",
                        f"- {record}")
    problems = _problems(tmp_path, text)
    assert any(":29: services.web.dns[0]: " in p and expect in p for p in problems), problems


def test_playbook_references_are_checked_against_the_inventory(tmp_path: Path) -> None:
    inv = load_inventory(_write(tmp_path, GOOD))
    p = tmp_path / "pb.yaml"
    p.write_text("version: 1\nname: x\nsteps:\n  - kind: command\n    host: nohost\n    argv: ['true']\n"
                 "  - kind: flip_dns\n    services: [web, nosvc]\n")
    with pytest.raises(ConfigError) as ei:
        load_playbook(p, inv)
    text = str(ei.value)
    assert f"{p}:5: steps[0].host: unknown host 'nohost'" in text
    assert f"{p}:8: steps[1].services[1]: unknown service 'nosvc'" in text
