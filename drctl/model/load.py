"""YAML files -> models. Every problem names ``file:line``, the field, and what is expected.

YAML is composed into nodes first so each mapping key and list item keeps its line; pydantic's
error locations and the inventory's reference checks are mapped back to those lines. Duplicate
keys, unknown keys, wrong types, dangling references and dependency cycles are all reported
together, never as a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from drctl.errors import ConfigError, ConfigProblem
from drctl.model.inventory import Inventory
from drctl.model.playbook import Playbook

PathKey = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)

_scalars = yaml.SafeLoader("")  # a constructor for plain scalars (dates stay strings below)


def _construct(node: yaml.Node, path: PathKey, lines: dict[PathKey, int], problems: list[ConfigProblem],
               file: str) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                problems.append(ConfigProblem(file=file, line=key_node.start_mark.line + 1,
                                              field=_dotted(path), message="mapping keys must be plain scalars"))
                continue
            key = key_node.value
            if key == "<<":
                problems.append(ConfigProblem(file=file, line=key_node.start_mark.line + 1, field=_dotted(path),
                                              message="YAML merge keys (<<) are not supported; write keys out"))
                continue
            if key in out:
                problems.append(ConfigProblem(file=file, line=key_node.start_mark.line + 1,
                                              field=_dotted((*path, key)),
                                              message=f"duplicate key (first at line {lines[(*path, key)]})"))
                continue
            lines[(*path, key)] = key_node.start_mark.line + 1
            out[key] = _construct(value_node, (*path, key), lines, problems, file)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, (*path, i), lines, problems, file) for i, item in enumerate(node.value)]
    assert isinstance(node, yaml.ScalarNode)
    if node.tag == "tag:yaml.org,2002:timestamp":  # keep dates as text; no field takes a date
        return node.value
    return _scalars.construct_object(node, deep=True)


def _dotted(path: Iterable[str | int]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def read_yaml(path: Path) -> tuple[Any, dict[PathKey, int]]:
    """Parse a YAML file into plain data plus a map from field path to line number."""
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(file=file, line=None, field=None, message="file not found")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([ConfigProblem(file=file, line=None, field=None, message=f"cannot read: {e}")]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        msg = " ".join(x for x in (e.context, e.problem) if x)
        raise ConfigError([ConfigProblem(file=file, line=line, field=None, message=f"not valid YAML: {msg}")]) from None
    except yaml.YAMLError as e:
        raise ConfigError([ConfigProblem(file=file, line=None, field=None, message=f"not valid YAML: {e}")]) from None
    if node is None:
        raise ConfigError([ConfigProblem(file=file, line=1, field=None, message="the file is empty")])
    lines: dict[PathKey, int] = {}
    problems: list[ConfigProblem] = []
    data = _construct(node, (), lines, problems, file)
    if problems:
        raise ConfigError(problems)
    if not isinstance(data, dict):
        raise ConfigError([ConfigProblem(file=file, line=1, field=None, message="expected a mapping at the top level")])
    return data, lines


def _line_for(path: PathKey, lines: dict[PathKey, int]) -> int | None:
    """Line of the deepest prefix of ``path`` that exists in the file."""
    for n in range(len(path), -1, -1):
        if path[:n] in lines:
            return lines[path[:n]]
    return None


def _data_path(loc: tuple[str | int, ...], data: Any) -> PathKey:
    """Drop pydantic's union tags and validator names from an error location, keeping the
    elements that walk the actual data."""
    out: list[str | int] = []
    cur = data
    for part in loc:
        if isinstance(cur, dict) and part in cur:
            out.append(part)
            cur = cur[part]
        elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
            out.append(part)
            cur = cur[part]
        elif isinstance(cur, dict | list):
            # a missing key or a union tag; keep a missing key name for the message, not for lines
            if isinstance(cur, dict) and isinstance(part, str) and not part.startswith(("function-", "union[")):
                tag = cur.get("kind")
                if part != tag:
                    out.append(part)
                    cur = None
        else:
            break
    return tuple(out)


def _message(err: dict[str, Any]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; see the README for the fields this section takes)"
    if kind == "missing":
        return "required field is missing"
    if kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        return f"unknown kind {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags', '')}"
    if kind == "union_tag_not_found":
        return "missing `kind`"
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    if kind.endswith("_type") or kind.endswith("_parsing"):
        msg += f" (got {err.get('input')!r})"
    return msg


def _validate(model: type[M], data: dict[str, Any], lines: dict[PathKey, int], file: str,
              **extra: Any) -> M:
    try:
        return model.model_validate({**data, **extra})
    except ValidationError as e:
        problems = []
        for err in e.errors():
            path = _data_path(tuple(err["loc"]), data)
            problems.append(ConfigProblem(file=file, line=_line_for(path, lines), field=_dotted(path),
                                          message=_message(dict(err))))
        raise ConfigError(_dedupe(problems)) from None


def _dedupe(problems: list[ConfigProblem]) -> list[ConfigProblem]:
    seen: set[tuple[Any, ...]] = set()
    out = []
    for p in problems:
        key = (p.line, p.field, p.message)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return sorted(out, key=lambda p: (p.line or 0, p.field or ""))


def load_inventory(path: Path | str) -> Inventory:
    path = Path(path)
    data, lines = read_yaml(path)
    file = str(path)
    inv = _validate(Inventory, data, lines, file, base_dir=path.resolve().parent)
    refs = inv.check_references()
    if refs:
        raise ConfigError(_dedupe([ConfigProblem(file=file, line=_line_for(p, lines), field=_dotted(p), message=m)
                                   for p, m in refs]))
    return inv


def load_playbook(path: Path | str, inventory: Inventory | None = None) -> Playbook:
    path = Path(path)
    data, lines = read_yaml(path)
    pb = _validate(Playbook, data, lines, str(path))
    if inventory is not None:
        problems = []
        hosts = inventory.all_hosts()
        for i, step in enumerate(pb.steps):
            for j, svc in enumerate(step.services or []):
                if svc not in inventory.services:
                    p: PathKey = ("steps", i, "services", j)
                    problems.append(ConfigProblem(file=str(path), line=_line_for(p, lines), field=_dotted(p),
                                                  message=f"unknown service {svc!r}"))
            host = getattr(step, "host", None)
            if host is not None and host not in hosts:
                p = ("steps", i, "host")
                problems.append(ConfigProblem(file=str(path), line=_line_for(p, lines), field=_dotted(p),
                                              message=f"unknown host {host!r}; known: {', '.join(sorted(hosts))}"))
        if problems:
            raise ConfigError(problems)
    return pb


def default_inventory_path() -> Path:
    env = os.environ.get("DRCTL_INVENTORY")
    return Path(env) if env else Path("inventory/inventory.yaml")


def builtin_playbook(name: str) -> Path:
    """The default playbook shipped with drctl (``failover``, ``failback``, ``drill``)."""
    here = Path(__file__).resolve().parent.parent / "playbooks" / f"{name}.yaml"
    return here
