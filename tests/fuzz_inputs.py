"""Hostile inventories and playbooks, for the fuzz test and the fuzz benchmark.

``cases()`` is a hypothesis strategy of files made from the example inventory and the shipped
playbooks by structured mutations (a value replaced by NaN, infinities, huge numbers, booleans,
empty or spaced strings, control characters, deep nesting, aliases, wrong types; keys dropped or
added) and by raw text mutations (a value rewritten in place, snippets such as ``&a [*a]`` or a
billion-laughs block inserted, lines duplicated, swapped or cut, bytes that are not UTF-8).

``check(case, dir, inventory)`` loads one case the way ``drctl validate`` does and says what
came of it. The only allowed outcomes are a valid model, or a ConfigError whose every problem
names the file (and a line, unless the file could not be read or parsed as YAML); anything else
is reported as ``other`` with its traceback.
"""

from __future__ import annotations

import copy
import math
import time
import traceback
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from hypothesis import strategies as st

from drctl.core.plan import build_plan, inventory_digest, select_services
from drctl.drivers.dns_rfc2136 import normalize_values
from drctl.errors import ConfigError, DrctlError
from drctl.model.inventory import Inventory
from drctl.model.load import builtin_playbook, load_inventory, load_playbook
from drctl.model.playbook import Playbook
from drctl.units import MAX_DURATION

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "inventory" / "example.yaml"
BASES: dict[str, str] = {"inventory": EXAMPLE.read_text()}
BASES.update({f"playbook:{p.stem}": p.read_text() for p in sorted((ROOT / "playbooks").glob("*.yaml"))})

#: values put in place of a scalar (and of lists and mappings)
HOSTILE_VALUES: list[Any] = [
    math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, 0, -1, 1, 65535, 65536, 99999, 10**20, -(10**20), 10**200,
    True, False, None, "", " ", "a b", "a\nb", "a\0b", "\t", "\u200b", "é", "x" * 300, "-", "*", ".", "..",
    "1e400", "1e400s", "1.0e+400", ".nan", "nan", "inf", "-5s", "0s", "0", "99999999999d", "366d", "31d", "1ms",
    "0.0001ms", "2h", "tcp://h:0", "tcp://h:99999", "tcp://h:", "tcp://[::1]:53", "tcp://:1", "unix://", "unix:///",
    "unix:///a b", "http://", "http:///x", "http://h:99999/", "http://h:0/", "http://[::1]:8080/", "http://[::1/",
    "https://a b/", "ftp://h/", "h:99999", "h:0", ":80", "[::1]:53", "::1:53", "10.0.0.1", "::1", "256.1.1.1",
    "*.example.test", "a..b", "-a", "a" * 64, "a." * 130, "@", "/", "/etc/passwd", "../x", "~", "$HOME",
    "%s%n", "{service}", "'", '"', "\\", "-1h", "1:30", "0x1F", "1_000", "2001-01-01", "!!binary", "*a",
    [], {}, [None], [""], [" "], ["", "x"], [True], [1, 2], [math.nan], [[[]]], {"": 1}, {"a b": 1}, {"kind": "x"},
]
#: text put in place of a value in the YAML itself
HOSTILE_LITERALS: list[str] = [
    ".nan", ".NaN", ".inf", "-.inf", "+.inf", "1.0e+400", "-1.0e+400", "1e400", "99999", "65536", "0", "-1",
    "true", "false", "yes", "no", "on", "off", "~", "null", "''", '""', "' '", "'a b'", '"a\\0b"', '"\\x01"',
    "[]", "{}", "[[[[[[[[[[]]]]]]]]]]", "!!binary aGk=", "!!python/object:os.system x", "!foo x", "!!int x",
    "!!float x", "!!bool x", "!!set {a}", "!!omap [a: 1]", "*nope", "&a [*a]", "&b {x: *b}", "1" * 150,
    "1:" * 60 + "1", "0x" + "f" * 40, "0b", "2001-01-01", "2001-01-01 00:00:00", "|\n  text", ">\n  text",
    "? [a]\n  : b", "<<: {a: 1}", "1e400s", "1.5", "1_0", "0o17", "1:30", "tcp://x:99999", "http://x:99999/",
]
#: text inserted anywhere
SNIPPETS: list[str] = [
    "\n", " ", "\t", ":", ": ", "- ", "[", "]", "{", "}", ",", "#", "&a ", "*a", "!!str ", "? ", "|", ">", "'", '"',
    "%TAG ! tag:x,2000:\n", "---\n", "...\n", "\nx: 1\n", "\nsteps: []\n", "\n<<: *a\n", "\0", "\x01", "\ufeff",
    "\nk: &a [*a]\n", "\nk: " + "[" * 70 + "]" * 70 + "\n", "\nk: " + "[" * 2000 + "\n",
]
_PLAYBOOK = load_playbook(builtin_playbook("failover"))
BILLION_LAUGHS = "\n".join(
    ["bomb:", "  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"  {chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(8)]) + "\n"


@dataclass(frozen=True)
class Case:
    base: str  # "inventory" or "playbook:NAME"
    data: bytes


@dataclass
class Outcome:
    kind: str  # "valid", "config_error" or "other"
    ms: float
    peak_mb: float
    detail: str = ""


# --- structured mutations ------------------------------------------------------------------------


def _paths(data: Any) -> list[tuple[Any, ...]]:
    """Paths to the values of ``data``, each shared list or mapping walked once, at most 2,000."""
    out: list[tuple[Any, ...]] = []
    seen: set[int] = set()
    todo: list[tuple[Any, tuple[Any, ...]]] = [(data, ())]
    while todo and len(out) < 2000:
        value, path = todo.pop()
        out.append(path)
        if isinstance(value, dict | list) and id(value) not in seen:
            seen.add(id(value))
            items = value.items() if isinstance(value, dict) else enumerate(value)
            todo += [(v, (*path, k)) for k, v in items]
    return sorted(out, key=repr)


def _set(data: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    parent = data
    for p in path[:-1]:
        parent = parent[p]
    parent[path[-1]] = value
    return data


def _get(data: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        data = data[p]
    return data


def _nested(depth: int) -> Any:
    value: Any = "x"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


def _laughs(levels: int) -> Any:
    value: Any = ["lol"] * 9
    for _ in range(levels):
        value = [value] * 9  # the same list 9 times: dumped as an anchor and aliases
    return value


hostile_values = st.one_of(
    st.sampled_from(HOSTILE_VALUES).map(copy.deepcopy),  # a copy: mutations must not change the constants
    st.text(max_size=20),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.one_of(st.integers(-5, 70000), st.text(max_size=5), st.booleans()), max_size=4),
    st.dictionaries(st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=5)), max_size=3),
)


def _mutate(draw: st.DrawFn, data: Any) -> Any:
    path = draw(st.sampled_from(_paths(data)))
    op = draw(st.sampled_from(["replace", "replace", "replace", "drop", "add", "wrap", "alias", "nest", "laughs"]))
    if op == "replace":
        return _set(data, path, draw(hostile_values))
    if op == "drop" and path:
        parent = _get(data, path[:-1])
        del parent[path[-1]]
        return data
    target = _get(data, path)
    if op == "add" and isinstance(target, dict):
        target[draw(st.sampled_from(["x", "", "a b", "port", "timeout", "kind", "<<", "1", "services"]))] = draw(
            hostile_values)
        return data
    if op == "add" and isinstance(target, list):
        target.append(draw(hostile_values))
        return data
    if op == "wrap":
        return _set(data, path, draw(st.sampled_from([[target], {"x": target}, str(target)[:50]])))
    if op == "alias":  # the same object in two places: the dump writes &anchor and *alias
        other = _get(data, draw(st.sampled_from(_paths(data))))
        if isinstance(other, dict | list) and not any(p is other for p in _chain(data, path)):
            return _set(data, path, other)
        return data
    if op == "nest":
        return _set(data, path, _nested(draw(st.integers(min_value=1, max_value=120))))
    if op == "laughs":
        return _set(data, path, _laughs(draw(st.integers(min_value=1, max_value=7))))
    return data


def _chain(data: Any, path: tuple[Any, ...]) -> list[Any]:
    """The containers from the root down to (and including) the value at ``path``."""
    out = [data]
    for p in path:
        data = data[p]
        out.append(data)
    return out


def _dump(draw: st.DrawFn, data: Any) -> str:
    try:
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=draw(st.sampled_from([False, None, True])),
                              allow_unicode=draw(st.booleans()), width=draw(st.sampled_from([80, 10**6])))
    except (yaml.YAMLError, ValueError, RecursionError):  # a structure the dumper cannot write: keep the base
        return "dump: failed\n"


# --- raw text mutations --------------------------------------------------------------------------


def _raw(draw: st.DrawFn, text: str) -> str:
    op = draw(st.sampled_from(["value", "value", "value", "insert", "delete", "dup", "swap", "cut", "bomb", "deep"]))
    lines = text.split("\n")
    if op == "value":
        candidates = [i for i, line in enumerate(lines) if ": " in line or line.lstrip().startswith("- ")]
        if candidates:
            i = draw(st.sampled_from(candidates))
            head = lines[i].split(": ", 1)[0] + ": " if ": " in lines[i] else lines[i][:lines[i].index("- ") + 2]
            lines[i] = head + draw(st.one_of(st.sampled_from(HOSTILE_LITERALS), st.text(max_size=12)))
        return "\n".join(lines)
    pos = draw(st.integers(min_value=0, max_value=len(text)))
    if op == "insert":
        return text[:pos] + draw(st.one_of(st.sampled_from(SNIPPETS), st.text(max_size=8))) + text[pos:]
    if op == "delete":
        return text[:pos] + text[pos + draw(st.integers(min_value=1, max_value=40)):]
    if op == "dup":
        i = draw(st.integers(min_value=0, max_value=len(lines) - 1))
        return "\n".join(lines[:i + 1] + [lines[i]] + lines[i + 1:])
    if op == "swap":
        i = draw(st.integers(min_value=0, max_value=len(lines) - 1))
        j = draw(st.integers(min_value=0, max_value=len(lines) - 1))
        lines[i], lines[j] = lines[j], lines[i]
        return "\n".join(lines)
    if op == "cut":
        return text[:pos]
    if op == "bomb":
        return text.rstrip("\n") + "\n" + BILLION_LAUGHS
    depth = draw(st.integers(min_value=10, max_value=1500))
    return text.rstrip("\n") + "\nx: " + "[" * depth + "]" * depth + "\n"


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """One hostile file, made from the example inventory or a shipped playbook."""
    base = draw(st.sampled_from(sorted(BASES)))
    text = BASES[base]
    mode = draw(st.sampled_from(["structured", "raw", "both"]))
    if mode != "raw":
        data = yaml.safe_load(text)
        for _ in range(draw(st.integers(min_value=1, max_value=4))):
            data = _mutate(draw, data)
        text = _dump(draw, data)
    if mode != "structured":
        for _ in range(draw(st.integers(min_value=1, max_value=3))):
            text = _raw(draw, text)
    raw = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(min_value=0, max_value=30)) == 0:  # now and then, bytes that are not UTF-8
        pos = draw(st.integers(min_value=0, max_value=len(raw)))
        raw = raw[:pos] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00"])) + raw[pos:]
    return Case(base, raw)


# --- running one case ----------------------------------------------------------------------------

_FILE_LEVEL = ("file not found", "cannot read", "too large", "is a ", "not UTF-8", "not valid YAML")


def problems_ok(error: ConfigError, file: str) -> str | None:
    """What is wrong with a ConfigError's problems (each names ``file`` and, unless the file could
    not be read or parsed, a line; each has a message), or None."""
    if not error.problems:
        return "a ConfigError without problems"
    for p in error.problems:
        if p.file != file:
            return f"problem names file {p.file!r}, not {file!r}: {p.render()}"
        if not p.message:
            return f"problem without a message: {p.render()}"
        if p.line is None and not p.message.startswith(_FILE_LEVEL):
            return f"problem without a line: {p.render()}"
    return None


def check(case: Case, dir: Path, inventory: Inventory, *, trace_memory: bool = True) -> Outcome:
    """Load one case as ``drctl validate`` would; never raises. The time is that of a plain run;
    with ``trace_memory`` the case is loaded once more under tracemalloc for its peak memory."""
    path = dir / ("inventory.yaml" if case.base == "inventory" else "playbook.yaml")
    path.write_bytes(case.data)
    start = time.perf_counter()
    kind, detail = _load(case, path, inventory)
    ms = (time.perf_counter() - start) * 1000
    peak = 0.0
    if trace_memory:
        tracemalloc.start()
        try:
            _load(case, path, inventory)
            peak = tracemalloc.get_traced_memory()[1] / (1024 * 1024)
        finally:
            tracemalloc.stop()
    return Outcome(kind, ms, peak, detail)


def _load(case: Case, path: Path, inventory: Inventory) -> tuple[str, str]:
    try:
        if case.base == "inventory":
            inv, pb = load_inventory(path), _PLAYBOOK
        else:
            inv, pb = inventory, load_playbook(path, inventory)
    except ConfigError as e:
        wrong = problems_ok(e, str(path))
        return ("other", wrong) if wrong else ("config_error", "")
    except Exception:  # that is the point: anything else is a defect
        return "other", traceback.format_exc()
    try:
        wrong = model_problem(inv, pb)
    except Exception:
        return "other", "a valid model breaks what uses it:\n" + traceback.format_exc()
    return ("other", wrong) if wrong else ("valid", "")


def model_problem(inv: Inventory, pb: Playbook) -> str | None:
    """What is wrong with models that loaded: a value no field should hold, or a crash (a
    non-drctl exception, or a DNS value the driver refuses) where the plan and the drivers use
    them. None if all is well."""
    for number in _numbers(inv.model_dump()) + _numbers(pb.model_dump()):
        if isinstance(number, float) and not (math.isfinite(number) and 0 <= number <= MAX_DURATION):
            return f"a loaded model holds the number {number!r}"
    for host in inv.all_hosts().values():
        if isinstance(host.port, bool) or not 1 <= host.port <= 65535:
            return f"a loaded host has port {host.port!r}"
    for svc in inv.services.values():
        for rec in svc.dns:
            rec.fqdn()
            for site in rec.values:
                normalize_values(rec.type, rec.values_for(site))  # ConfigError here: the model let it through
        for ss in svc.sites.values():
            if ss.health is not None and ss.health.http is not None:
                parts = urlsplit(ss.health.http)
                if parts.hostname is None or parts.port == 0:
                    return f"a loaded health check has the URL {ss.health.http!r}"
    inventory_digest(inv)
    try:
        build_plan(inv, pb, select_services(inv, [], None, all_services=True), pb.direction)
    except DrctlError as e:
        if isinstance(e, ConfigError):
            raise
    return None


def _numbers(value: Any) -> list[Any]:
    out: list[Any] = []
    todo = [value]
    while todo:
        v = todo.pop()
        if isinstance(v, dict):
            todo += v.values()
        elif isinstance(v, list | tuple):
            todo += v
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out.append(v)
    return out


def example_inventory() -> Inventory:
    return load_inventory(EXAMPLE)
