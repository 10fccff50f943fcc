"""Bad input is bounded and total: every fault found from outside is a ConfigError naming
``file:line`` and what is wrong, never a traceback, a hang, a RecursionError or gigabytes of memory.

Each inventory case edits one line of ``inventory/example.yaml`` and expects the problem on that
line; playbook cases edit ``playbooks/failover.yaml`` the same way.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import yaml

from drctl.core.plan import dependency_levels
from drctl.errors import ConfigError
from drctl.model.inventory import find_cycle
from drctl.model.load import (
    MAX_ALIASED_NODES,
    MAX_DEPTH,
    MAX_ENTRY_NODES,
    MAX_FILE_BYTES,
    MAX_NODES,
    load_inventory,
    load_playbook,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = (ROOT / "inventory" / "example.yaml").read_text()
FAILOVER = (ROOT / "playbooks" / "failover.yaml").read_text()
WEB_INTEGRITY = (
    "    traffic: {kind: haproxy, balancer: lb1, backend: web, servers: {dc1: web_dc1, dc2: web_dc2}, mode: drain}\n"
    "    integrity:\n"
    "      - {kind: files, name: t, timeout: 1h,\n"
    "         sites: {dc1: {host: app1, path: /a}, dc2: {host: app2, path: /b}}}\n"
    "      - {kind: postgres, name: p, hash_buckets: 16, sites: {dc1: {host: db1}, dc2: {host: db2}}}\n")
# some 500 bytes that would stand for 10**9 values (gigabytes once expanded)
BILLION_LAUGHS = "\n".join(
    ["version: 1", "sites: {}", "services: {}", "lol:", "  a: &a [" + ", ".join(["lol"] * 10) + "]"]
    + [f"  {chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]" for i in range(8)]) + "\n"


def _edit(base: str, old: str, new: str) -> tuple[str, int]:
    """``base`` with the first ``old`` replaced, and the line ``old`` started on."""
    assert old in base, old
    return base.replace(old, new, 1), base[:base.index(old)].count("\n") + 1


def _problems(path: Path, load: str = "inventory") -> list[str]:
    with pytest.raises(ConfigError) as ei:
        if load == "inventory":
            load_inventory(path)
        else:
            load_playbook(path, load_inventory(ROOT / "inventory" / "example.yaml"))
    for p in ei.value.problems:
        assert p.file == str(path), p.render()
    return [p.render() for p in ei.value.problems]


def _assert_problem(problems: list[str], path: Path, line: int, fragment: str) -> None:
    assert any(p.startswith(f"{path}:{line}: ") and fragment in p for p in problems), problems


INVENTORY_FAULTS = [
    # durations: NaN, infinities, overflow, out of range
    ("max_age: 1h}", "max_age: .nan}", "not a finite number"),
    ("max_age: 15m}", "max_age: .inf}", "not a finite number"),
    ("connect_timeout: 3s", "connect_timeout: -.inf", "not a finite number"),
    ("connect_timeout: 3s", "connect_timeout: 1.0e+400", "not a finite number"),
    ("connect_timeout: 3s", "connect_timeout: 1e400s", "expected a duration"),
    ("connect_timeout: 3s", "connect_timeout: 99999999999999999999999999999999d", "expected a duration"),
    ("connect_timeout: 3s", "connect_timeout: 2h", "too long: at most 60m"),
    ("connect_timeout: 3s", "connect_timeout: 0s", "must be longer than 0"),
    ("max_age: 1h}", "max_age: 400d}", "too long: at most 365d"),
    ("rto: 10m", "rto: 123456789012345678901234567890", "too long"),
    ("timeout: 120s}", "timeout: .nan}", "not a finite number"),
    ("ns1: {address: 10.0.0.53, port: 53, timeout: 3s}", "ns1: {address: 10.0.0.53, port: 53, timeout: .nan}",
     "not a finite number"),
    ("    timeout: 3s\n\nservices", "    timeout: -.inf\n\nservices", "not a finite number"),
    # integers: range, and YAML booleans never become numbers
    ("port: 53, timeout: 3s}", "port: 99999, timeout: 3s}", "less than or equal to 65535"),
    ("port: 53, timeout: 3s}", "port: 0, timeout: 3s}", "greater than or equal to 1"),
    ("port: 53, timeout: 3s}", "port: true, timeout: 3s}", "valid integer (got True)"),
    ("port: 53, timeout: 3s}", "port: '53', timeout: 3s}", "valid integer (got '53')"),
    ("port: 53, timeout: 3s}", "port: 53.5, timeout: 3s}", "valid integer"),
    ("address: 10.1.0.10\n", "port: yes\n        address: 10.1.0.10\n", "valid integer (got True)"),
    ("ttl: 30,", "ttl: true,", "valid integer (got True)"),
    ("ttl: 30,", "ttl: 604801,", "less than or equal to 604800"),
    ('health: {http: "http://10.2.0.10:8080/health", expect_status: [200]}',
     'health: {http: "http://10.2.0.10:8080/health", retries: false}', "valid integer (got False)"),
    # ports inside addresses and URLs
    ("admin: tcp://10.0.0.80:9999", "admin: tcp://10.0.0.80:99999", "the port must be 1-65535"),
    ("admin: tcp://10.0.0.80:9999", "admin: tcp://10.0.0.80:0", "the port must be 1-65535"),
    ("admin: tcp://10.0.0.80:9999", "admin: 'tcp://a b:9999'", "expected HOST:PORT"),
    ("admin: tcp://10.0.0.80:9999", "admin: 'unix://'", "expected tcp://HOST:PORT or unix:///path/to/socket"),
    ('health: {tcp: "10.1.0.20:5432"}', 'health: {tcp: "10.1.0.20:99999"}', "the port must be 1-65535"),
    ('health: {tcp: "10.1.0.20:5432"}', 'health: {tcp: "10.1.0.20"}', "expected HOST:PORT"),
    ('health: {tcp: "10.1.0.20:5432"}', 'health: {tcp: "a b:5432"}', "expected HOST:PORT"),
    ('health: {http: "http://10.1.0.10:8080/health"}', 'health: {http: "http://10.1.0.10:99999/health"}',
     "port of 1-65535"),
    ('health: {http: "http://10.1.0.10:8080/health"}', 'health: {http: "http://10.1.0.10:0/health"}',
     "the port must be 1-65535"),
    ('health: {http: "http://10.1.0.10:8080/health"}', 'health: {http: "http://10.1.0.10/he alth"}',
     "cannot contain spaces"),
    ('health: {http: "http://10.1.0.10:8080/health"}', 'health: {http: "http:///health"}', "expected a host name"),
    ('health: {http: "http://10.1.0.10:8080/health"}', 'health: {http: "ftp://10.1.0.10/health"}',
     "expected an http:// or https:// URL"),
    ('health: {http: "http://10.1.0.10:8080/health"}', 'health: {http: "http://a_b c/"}', "cannot contain spaces"),
    ("servers: {dc1: web_dc1, dc2: web_dc2}, mode: drain}",
     'servers: {dc1: web_dc1, dc2: web_dc2}, mode: drain, frontend: "http://[::1/"}', "expected http(s)://"),
    # addresses, zone and record names
    ("address: 10.1.0.10", "address: ''", "'' is not a host name or an IP address"),
    ("address: 10.1.0.10", "address: 'a b'", "'a b' is not a host name or an IP address"),
    ("address: 10.1.0.10", "address: '10.1.0.10\\n'", "is not a host name or an IP address"),
    ("ns1: {address: 10.0.0.53,", "ns1: {address: '',", "'' is not a host name or an IP address"),
    ("ns1: {address: 10.0.0.53,", "ns1: {address: 'ns 1',", "is not a host name or an IP address"),
    ("  internal.test:\n", "  'internal test':\n", "is not a valid zone name"),
    ("- {zone: internal.test, name: db,", "- {zone: 'internal test', name: db,", "is not a valid zone name"),
    ("- {zone: internal.test, name: db,", "- {zone: internal.test, name: 'd b',", "is not a valid DNS name"),
    ("- {zone: internal.test, name: db,", "- {zone: internal.test, name: txt, type: TXT, values: {dc1: " + "x" * 256
     + ", dc2: y}}\n      - {zone: internal.test, name: db,", "is not a valid TXT value"),
    ("name: db, type: A,", "name: db, type: CNAME,", "is an IP address: a CNAME target is a host name"),
    ("name: api, type: A, ttl: 60, values: {dc1: 192.0.2.11,", "name: api, type: A, ttl: 60, values: {dc1: 'a b',",
     "is not an IPv4 address"),
    # commands: a program to run, never an empty one
    ('argv: ["sudo", "/usr/local/sbin/promote-replica"]', 'argv: [""]', "the program to run, is empty"),
    ('argv: ["sudo", "/usr/local/sbin/promote-replica"]', 'argv: [" ", "x"]', "the program to run, is empty"),
    ('argv: ["sudo", "/usr/local/sbin/promote-replica"]', 'argv: []', "at least 1 item"),
    ('argv: ["sudo", "/usr/local/sbin/promote-replica"]', 'argv: ["sudo", "a\\0b"]', "contains a NUL character"),
    ('argv: ["sudo", "/usr/local/sbin/promote-replica"]', 'argv: ["sudo", true]', "YAML boolean/null"),
    ('command: ["cat", "/var/lib/postgresql/last-replay-timestamp"]', 'command: ["", "x"]',
     "the program to run, is empty"),
    # HTTP status codes
    ("expect_status: [200]", "expect_status: []", "at least 1 item"),
    ("expect_status: [200]", "expect_status: [99]", "greater than or equal to 100"),
    ("expect_status: [200]", "expect_status: [600]", "less than or equal to 599"),
    ("expect_status: [200]", "expect_status: [true]", "valid integer (got True)"),
    # paths
    ('path: /var/backups/pg, glob: "*.tar.zst"', 'path: "", glob: "*.tar.zst"', "expected a non-empty path"),
    ('path: /var/backups/pg, glob: "*.tar.zst"', 'path: /var/backups/pg, glob: ""', "expected a non-empty path"),
    ("key: keys/id_ed25519", "key: ''", "is not a file path"),
    ("known_hosts: keys/known_hosts", 'known_hosts: "a\\0b"', "is not a file path"),
    ("tsig: {file: keys/tsig.key}", "tsig: {file: ''}", "is not a file path"),
    ("tsig: {env: DRCTL_TSIG_INTERNAL}", "tsig: {env: 'A B'}", "should match pattern"),
    ("user: drctl", "user: ''", "expected a non-empty value without spaces"),
    ("backend: web,", "backend: 'we b',", "should match pattern"),
]


@pytest.mark.parametrize(("old", "new", "fragment"), INVENTORY_FAULTS)
def test_inventory_fault_is_located(tmp_path: Path, old: str, new: str, fragment: str) -> None:
    text, line = _edit(EXAMPLE, old, new)
    path = tmp_path / "inv.yaml"
    path.write_text(text)
    _assert_problem(_problems(path), path, line, fragment)


INTEGRITY_FAULTS = [
    ("timeout: 1h,", "timeout: .nan,", "not a finite number"),
    ("timeout: 1h,", "timeout: 0,", "must be longer than 0"),
    ("timeout: 1h,", "timeout: 1h, workers: true,", "valid integer (got True)"),
    ("timeout: 1h,", "timeout: 1h, cache_dir: '',", "expected a non-empty path"),
    ("timeout: 1h,", "timeout: 1h, mass_change: {share: .nan},", "should be a finite number"),
    ("timeout: 1h,", "timeout: 1h, mass_change: {share: true},", "valid number"),
    ("hash_buckets: 16,", "hash_buckets: true,", "valid integer (got True)"),
    ("hash_buckets: 16,", "hash_buckets: 16, bucket_size: 1.0e+400,", "valid integer"),
    ("hash_buckets: 16,", "hash_buckets: 16, max_rows_listed: 99999999999,", "less than or equal to"),
    ("sites: {dc1: {host: db1}", "sites: {dc1: {host: db1, connect_timeout: true}", "valid integer (got True)"),
    ("sites: {dc1: {host: db1}", "sites: {dc1: {host: db1, psql: ['']}", "the program to run, is empty"),
]


@pytest.mark.parametrize(("old", "new", "fragment"), INTEGRITY_FAULTS)
def test_integrity_fault_is_located(tmp_path: Path, old: str, new: str, fragment: str) -> None:
    base, _ = _edit(EXAMPLE, WEB_INTEGRITY.splitlines(keepends=True)[0], WEB_INTEGRITY)
    text, line = _edit(base, old, new)
    path = tmp_path / "inv.yaml"
    path.write_text(text)
    _assert_problem(_problems(path), path, line, fragment)


PLAYBOOK_FAULTS = [
    ("    timeout: 60s", "    timeout: .nan", "not a finite number"),
    ("    timeout: 60s", "    timeout: .inf", "not a finite number"),
    ("    timeout: 60s", "    timeout: 0", "must be longer than 0"),
    ("    timeout: 60s", "    timeout: 31d", "too long: at most 30d"),
    ("    timeout: 60s", "    timeout: true", "expected a duration"),
    ("    timeout: 2m ", "    timeout: 1.0e+400 ", "not a finite number"),
    ("  - kind: flip_dns ", "  - kind: command\n    argv: ['']\n  - kind: flip_dns ", "the program to run, is empty"),
    ("  - kind: flip_dns ", "  - kind: command\n    argv: [echo]\n    timeout: -.inf\n  - kind: flip_dns ",
     "not a finite number"),
]


@pytest.mark.parametrize(("old", "new", "fragment"), PLAYBOOK_FAULTS)
def test_playbook_fault_is_located(tmp_path: Path, old: str, new: str, fragment: str) -> None:
    text, line = _edit(FAILOVER, old, new)
    extra = new.count("\n") if "kind: command" in new else 0  # the fault is on the command's last line
    path = tmp_path / "pb.yaml"
    path.write_text(text)
    _assert_problem(_problems(path, "playbook"), path, line + extra - (1 if extra else 0), fragment)


# --- the file itself ------------------------------------------------------------------------------


def _fifo(tmp: Path) -> Path:
    os.mkfifo(tmp / "fifo.yaml")
    return tmp / "fifo.yaml"


def _dir(tmp: Path) -> Path:
    (tmp / "dir.yaml").mkdir()
    return tmp / "dir.yaml"


def _big(tmp: Path) -> Path:
    (tmp / "big.yaml").write_text("# " + "x" * MAX_FILE_BYTES)
    return tmp / "big.yaml"


@pytest.mark.parametrize(("make", "fragment"), [
    (_fifo, "is a FIFO (named pipe); expected a regular YAML file"),
    (_dir, "is a directory; expected a regular YAML file"),
    (lambda tmp: Path("/dev/zero"), "is a device; expected a regular YAML file"),
    (lambda tmp: Path("/dev/null"), "is a device; expected a regular YAML file"),
    (_big, "too large"),
    (lambda tmp: tmp / "missing.yaml", "file not found"),
])
def test_only_regular_files_of_bounded_size_are_read(tmp_path: Path, make: object, fragment: str) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    start = time.monotonic()
    problems = _problems(path)
    assert time.monotonic() - start < 2
    assert any(p.startswith(f"{path}: ") and fragment in p for p in problems), problems


@pytest.mark.parametrize(("data", "line", "fragment"), [
    (b"version: 1\nname: \xff\n", 2, "not UTF-8 text"),
    (b"version: 1\nname: a\x00b\n", 2, "character U+0000 is not allowed"),
    (b"version: 1\n---\nname: x\n", 2, "expected a single YAML document"),
])
def test_bytes_that_are_not_yaml_text(tmp_path: Path, data: bytes, line: int, fragment: str) -> None:
    path = tmp_path / "inv.yaml"
    path.write_bytes(data)
    _assert_problem(_problems(path), path, line, fragment)


# --- YAML structure: aliases, nesting, tags, numbers --------------------------------------------


def _nested_mapping(depth: int) -> str:
    return "sites:\n" + "".join("  " * i + f"  k{i}:\n" for i in range(depth))


@pytest.mark.parametrize(("text", "line", "fragment"), [
    (BILLION_LAUGHS, BILLION_LAUGHS[:BILLION_LAUGHS.index("  e: ")].count("\n") + 1,
     f"more than {MAX_ALIASED_NODES} values once expanded"),
    ("sites: &a [*a]\n", 1, "recursive structures are not supported"),
    ("sites: &a {x: {y: *a}}\n", 1, "recursive structures are not supported"),
    ("sites: *nope\n", 1, "refers to no anchor"),
    ("sites: &a {}\nservices: &a {}\n", 2, "duplicate anchor &a (first at line 1)"),
    ("sites: " + "[" * 200 + "]" * 200 + "\n", 1, f"nested too deeply: more than {MAX_DEPTH} levels"),
    (_nested_mapping(1000), MAX_DEPTH + 1, f"nested too deeply: more than {MAX_DEPTH} levels"),
    ("sites: {}\nservices: {}\nname: " + "1" * 5000 + "\n", 3, "a number of more than 100 characters"),
    ("sites: {}\nservices: {}\nname: " + "1:" * 5000 + "1\n", 3, "a number of more than 100 characters"),
    ("sites: {}\nservices: {}\nname: !!python/object:os.system x\n", 3, "unsupported YAML tag"),
    ("sites: {}\nservices: {}\nname: !!binary aGk=\n", 3, "unsupported YAML tag !!binary"),
    ("sites: !!set {a, b}\nservices: {}\n", 1, "unsupported YAML tag !!set"),
    ("sites: {}\nservices: {}\nversion: !!bool maybe\n", 3, "is not a valid !!bool"),
    ("sites: {}\nservices: {}\nversion: !!int x\n", 3, "is not a valid !!int"),
    ("sites: {}\nservices: {}\nversion: true\n", 3, "expected version: 1, got True"),
    ("sites: {}\nservices: {}\nversion: 1.0\n", 3, "expected version: 1, got 1.0"),
    ("sites: {}\nservices: {}\n<<: {name: x}\n", 3, "merge keys (<<) are not supported"),
    ("sites: {}\nservices: {}\n? [a]\n: b\n", 3, "mapping keys must be plain scalars"),
])
def test_yaml_structure_is_bounded(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    path = tmp_path / "inv.yaml"
    path.write_text(text)
    tracemalloc.start()
    start = time.monotonic()
    try:
        problems = _problems(path)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.monotonic() - start < 5
    assert peak < 100 * 1024 * 1024
    _assert_problem(problems, path, line, fragment)


def test_the_alias_bomb_is_small_and_nesting_a_thousand_deep_is_no_recursion_error(tmp_path: Path) -> None:
    assert len(BILLION_LAUGHS) < 600
    path = tmp_path / "deep.yaml"
    path.write_text("sites: " + "[" * 1000 + "]" * 1000 + "\n")
    problems = _problems(path)  # libyaml or drctl refuses it first: either way a located problem
    assert any(p.startswith(f"{path}:1: ") and "nest" in p for p in problems), problems


@pytest.mark.parametrize("bad", ["expect_status: [{}]", "depends_on: [{}]"])
def test_many_problems_are_summed_up_within_bounds(tmp_path: Path, bad: str) -> None:
    """15,000 bad values: a bounded list of located problems, and a count of them all."""
    many = "[" + ", ".join(["0"] * 15_000) + "]"
    text = EXAMPLE.replace("expect_status: [200]", f"expect_status: {many}") if "expect" in bad else \
        EXAMPLE.replace("depends_on: [db]", "depends_on: " + many.replace("0", "'a b'"))
    path = tmp_path / "inv.yaml"
    path.write_text(text)
    tracemalloc.start()
    try:
        problems = _problems(path)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 100 * 1024 * 1024
    assert 100 < len(problems) <= 502
    assert any("15000 problems in all" in p or "more problem" in p for p in problems), problems[-3:]


def test_the_worst_error_dense_input_stays_under_100_mb_of_rss(tmp_path: Path) -> None:
    """tracemalloc does not see pydantic-core's or libyaml's memory: measure the process. Nearly
    MAX_NODES values, every one of them wrong, spread over entries that each hold nearly
    MAX_ENTRY_NODES (entries are validated one by one), is the most a file can make the
    validator hold."""
    path = tmp_path / "inv.yaml"
    per_entry = MAX_ENTRY_NODES - 100
    bad = ", ".join(["0"] * per_entry)
    entries = "".join(f"  bad{i}: {{primary: dc1, backup: dc2, depends_on: [{bad}]}}\n"
                      for i in range(MAX_NODES // per_entry - 1))
    path.write_text(EXAMPLE.replace("services:\n", "services:\n" + entries, 1))
    script = ("import resource, sys\n"
              "from drctl.errors import ConfigError\n"
              "from drctl.model.load import load_inventory\n"
              "load_inventory(sys.argv[1])\n"
              "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
              "try:\n    load_inventory(sys.argv[2])\nexcept ConfigError as e:\n    n = len(e.problems)\n"
              "print(n, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n")
    r = subprocess.run([sys.executable, "-c", script, str(ROOT / "inventory" / "example.yaml"), str(path)],
                       capture_output=True, text=True, timeout=60, check=True)
    problems, growth_mb = map(int, r.stdout.split())
    assert 100 < problems <= 502
    assert growth_mb < 100, f"peak RSS grew by {growth_mb} MB"


# --- dependencies: long chains, no recursion --------------------------------------------------------


def _chain(n: int, cycle: bool = False) -> str:
    lines = ["sites: {dc1: {}, dc2: {}}", "services:"]
    for i in range(n):
        dep = f", depends_on: [s{i - 1}]" if i else (f", depends_on: [s{n - 1}]" if cycle else "")
        lines.append(f"  s{i}: {{primary: dc1, backup: dc2{dep}}}")
    return "\n".join(lines) + "\n"


def test_a_1200_service_chain_loads_and_orders_without_recursion(tmp_path: Path) -> None:
    path = tmp_path / "chain.yaml"
    path.write_text(_chain(1200))
    inv = load_inventory(path)
    levels = dependency_levels(inv, list(inv.services))
    assert len(levels) == 1200 and levels[0] == ("s0",) and levels[-1] == ("s1199",)


def test_a_1200_service_cycle_is_found_and_named_briefly(tmp_path: Path) -> None:
    path = tmp_path / "cycle.yaml"
    path.write_text(_chain(1200, cycle=True))
    problems = _problems(path)
    _assert_problem(problems, path, 3, "dependency cycle: s0 -> s1199 -> s1198")
    assert all(len(p) < 500 for p in problems)


def test_find_cycle_is_iterative() -> None:
    n = 50_000
    graph = {f"s{i}": [f"s{i + 1}"] for i in range(n)} | {f"s{n}": []}
    assert find_cycle(graph) is None
    graph[f"s{n}"] = ["s0"]
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1] and len(cycle) == n + 2


# --- what is valid stays valid ---------------------------------------------------------------------


def test_the_example_inventory_and_every_shipped_playbook_still_load() -> None:
    inv = load_inventory(ROOT / "inventory" / "example.yaml")
    assert sorted(inv.services) == ["api", "db", "web"]
    assert inv.services["db"].sites["dc1"].backup.max_age == 3600  # type: ignore[union-attr]
    playbooks = sorted((ROOT / "playbooks").glob("*.yaml"))
    assert playbooks
    for p in playbooks:
        assert load_playbook(p, inv).steps


def test_edge_values_that_are_valid(tmp_path: Path) -> None:
    text = (EXAMPLE.replace("address: 10.1.0.10", "address: '::1'", 1)
            .replace("address: 10.2.0.10", "address: app2.dc2.example.test", 1)
            .replace("port: 53,", "port: 65535,", 1)
            .replace("tcp://10.0.0.80:9999", "'tcp://[2001:db8::80]:1'")
            .replace('"http://10.1.0.10:8080/health"', '"https://user:pw@[2001:db8::1]:65535/h?x=1"', 1)
            .replace("max_age: 1h}", "max_age: 365d}", 1)
            .replace("name: db, type: A,", "name: db, type: CNAME,", 1)
            .replace("values: {dc1: 10.1.0.20, dc2: 10.2.0.20}", "values: {dc1: db1.internal.test., dc2: db2}", 1))
    path = tmp_path / "inv.yaml"
    path.write_text(text)
    inv = load_inventory(path)
    assert inv.sites["dc1"].hosts["app1"].address == "::1"
    assert inv.services["db"].dns[0].type == "CNAME"


# --- the CLI: exit 3, no traceback, no hang --------------------------------------------------------


def _validate(inventory: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRCTL_")}
    env.update({"NO_COLOR": "1", "DRCTL_STATE_DIR": str(tmp / "state")})
    return subprocess.run([sys.executable, "-m", "drctl", "validate", "--inventory", str(inventory)],
                          capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL, check=False)


@pytest.mark.parametrize(("kind", "fragment"), [
    ("fifo", "is a FIFO"),
    ("bomb", "too many values"),
    ("nan", "max_age: expected a duration such as 30s, 5m, 1h or 2d, got nan (not a finite number)"),
])
def test_validate_command_on_hostile_input(tmp_path: Path, kind: str, fragment: str) -> None:
    path = tmp_path / f"{kind}.yaml"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "bomb":
        path.write_text(BILLION_LAUGHS)
    else:
        path.write_text(EXAMPLE.replace("max_age: 1h}", "max_age: .nan}", 1))
    r = _validate(path, tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 3, out
    assert "Traceback" not in out and "internal error" not in out, out
    err = " ".join(r.stderr.split())  # the console wraps long lines
    assert f"{path}:" in err and fragment in err, r.stderr


def test_a_large_real_inventory_is_not_refused_by_the_bounds(tmp_path: Path) -> None:
    """1,000 fully described services stay well inside the bounds (they are for hostile input)."""
    inv = yaml.safe_load(EXAMPLE)
    web = inv["services"]["web"]
    services = {}
    for i in range(1000):
        svc = copy.deepcopy(web)
        for rec in svc.get("dns", []):
            rec["name"] = f"w{i}"
        svc.pop("depends_on", None)
        services[f"s{i}"] = svc
    inv["services"] = services
    path = tmp_path / "large.yaml"
    path.write_text(yaml.safe_dump(inv))
    assert len(load_inventory(path).services) == 1000
