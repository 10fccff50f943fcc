"""YAML files -> models. Every problem names ``file:line``, the field, and what is expected.

YAML is composed into nodes first so each mapping key and list item keeps its line; pydantic's
error locations and the inventory's reference checks are mapped back to those lines. Duplicate
keys, unknown keys, wrong types, dangling references and dependency cycles are all reported
together, never as a traceback.

Any input is read within bounds: only a regular file of at most ``MAX_FILE_BYTES`` is opened
(never blocking on a FIFO or a device), lists and mappings nest at most ``MAX_DEPTH`` deep, and a
document stands for at most ``MAX_NODES`` values once its aliases are expanded (a few hundred
bytes of nested aliases cannot grow into gigabytes). Nodes are composed from parser events
without recursion.
"""

from __future__ import annotations

import os
import reprlib
import stat
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from drctl.errors import ConfigError, ConfigProblem
from drctl.model.inventory import Inventory
from drctl.model.playbook import Playbook

PathKey = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)

#: the largest inventory or playbook file read
MAX_FILE_BYTES = 4 * 1024 * 1024
#: how deep lists and mappings may nest
MAX_DEPTH = 64
#: how many values (scalars, lists, mappings) a file may hold (about 1,700 fully described services)
MAX_NODES = 150_000
#: how many values aliases (``*name``) may add once expanded: a few hundred bytes must not stand
#: for gigabytes
MAX_ALIASED_NODES = 50_000
#: how many values one entry of a section (a service, a site...) may hold; entries are validated
#: one by one first, so the memory pydantic spends on reporting errors stays bounded
MAX_ENTRY_NODES = 20_000
#: the longest number written as digits
MAX_NUMBER_CHARS = 100
#: problems reported for one file, at most
MAX_PROBLEMS = 500
#: above this many problems found by pydantic, details come from a sample of the data
MAX_DETAILED_ERRORS = 2000

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: faster, same events
_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_TAG + t for t in ("str", "int", "float", "bool", "null")}
_TIMESTAMP = _TAG + "timestamp"
_SEQ, _MAP = _TAG + "seq", _TAG + "map"
#: pydantic error kinds that a list or mapping cut short may cause
_INCOMPLETE = {"too_short", "value_error", "assertion_error", "union_tag_not_found"}
#: pydantic error kinds whose message gains the value found
_SHOW_INPUT = {"string_pattern_mismatch", "literal_error", "string_too_long", "string_too_short", "enum"}
_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxlevel = 60, 60, 4, 4, 2


class _Node:
    """A composed YAML node: ``kind`` is ``scalar`` (``value`` a str), ``seq`` (a list of nodes)
    or ``map`` (a list of (key, value) node pairs); ``line`` is 1-based. Aliases share nodes."""

    __slots__ = ("kind", "tag", "value", "line", "_index")

    def __init__(self, kind: str, tag: str, value: Any, line: int) -> None:
        self.kind = kind
        self.tag = tag
        self.value = value
        self.line = line
        self._index: dict[str, tuple[int, _Node]] | None = None

    def entry(self, key: str) -> tuple[int, _Node] | None:
        """(line of the key, value node) of the first ``key`` of a mapping node."""
        if self._index is None:
            self._index = {}
            for k, v in self.value:
                if k.kind == "scalar":
                    self._index.setdefault(k.value, (k.line, v))
        return self._index.get(key)


def _fail(file: str, line: int | None, message: str) -> ConfigError:
    return ConfigError([ConfigProblem(file=file, line=line, field=None, message=message)])


# --- reading the file ----------------------------------------------------------------------------


def _read_text(path: Path, file: str) -> str:
    """The file's text; ConfigError unless it is a readable regular UTF-8 file of bounded size."""
    try:
        _check_regular(os.stat(path), file)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _fail(file, None, "file not found") from None
    except (OSError, ValueError) as e:
        raise _fail(file, None, f"cannot read: {getattr(e, 'strerror', None) or e}") from None
    try:
        _check_regular(os.fstat(fd), file)  # the path may have changed since the stat
        data = _read_at_most(fd, MAX_FILE_BYTES + 1)
    except OSError as e:
        raise _fail(file, None, f"cannot read: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise _fail(file, None, f"too large: more than {MAX_FILE_BYTES // (1024 * 1024)} MiB "
                                "(an inventory or playbook is a small YAML file)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise _fail(file, line, f"not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                                "save the file as UTF-8") from None


def _read_at_most(fd: int, limit: int) -> bytes:
    """Up to ``limit`` bytes, in chunks (no buffer of ``limit`` bytes for a small file)."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = os.read(fd, min(1 << 20, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _check_regular(st: os.stat_result, file: str) -> None:
    mode = st.st_mode
    if stat.S_ISREG(mode):
        if st.st_size > MAX_FILE_BYTES:
            raise _fail(file, None, f"too large: {st.st_size} bytes, at most {MAX_FILE_BYTES // (1024 * 1024)} MiB "
                                    "(an inventory or playbook is a small YAML file)")
        return
    what = ("a directory" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "not a regular file")
    raise _fail(file, None, f"is {what}; expected a regular YAML file")


# --- composing nodes, bounded --------------------------------------------------------------------


class _Composer:
    """Nodes from parser events, like ``yaml.compose`` but iterative and bounded: nesting depth,
    and the number of values the document stands for once aliases are expanded."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.resolver = yaml.resolver.Resolver()
        self.anchors: dict[str, _Node] = {}
        self.sizes: dict[int, int] = {}  # id(node) -> values it stands for, once complete
        self.total = 0
        self.aliased = 0

    def compose(self, events: Iterator[yaml.Event]) -> _Node | None:
        root: _Node | None = None
        documents = 0
        stack: list[tuple[_Node, list[Any], list[int]]] = []  # open collection, its children, [size]
        for event in events:
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise _fail(self.file, _line(event), "expected a single YAML document (found a second `---`)")
                continue
            if isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
                if len(stack) >= MAX_DEPTH:
                    raise _fail(self.file, _line(event), f"nested too deeply: more than {MAX_DEPTH} levels of "
                                                         "lists and mappings")
                stack.append((self._collection(event), [], [1]))
                self._count(1, event)
                continue
            if isinstance(event, yaml.SequenceEndEvent | yaml.MappingEndEvent):
                node, children, size = stack.pop()
                node.value = children if node.kind == "seq" else list(zip(children[::2], children[1::2], strict=True))
                self.sizes[id(node)] = size[0]
                done, n = node, size[0]
            elif isinstance(event, yaml.AliasEvent):
                done, n = self._alias(event)
                self._count(n, event)
                self.aliased += n
                if self.aliased > MAX_ALIASED_NODES:
                    raise _fail(self.file, _line(event), f"too many values through aliases: they stand for more "
                                                         f"than {MAX_ALIASED_NODES} values once expanded; write "
                                                         "them out plainly")
            elif isinstance(event, yaml.ScalarEvent):
                done, n = self._scalar(event), 1
                self._count(1, event)
            else:  # stream start/end, document end
                continue
            if stack:
                stack[-1][1].append(done)
                stack[-1][2][0] += n
            else:
                root = done
        return root

    def _count(self, n: int, event: yaml.Event) -> None:
        self.total += n
        if self.total > MAX_NODES:
            raise _fail(self.file, _line(event), f"too many values: the file stands for more than {MAX_NODES} "
                                                 "values (aliases expanded); split the inventory")

    def _anchor(self, event: yaml.NodeEvent, node: _Node) -> None:
        if event.anchor is None:
            return
        if event.anchor in self.anchors:
            raise _fail(self.file, _line(event), f"duplicate anchor &{_SHORT.repr(event.anchor)[1:-1]} "
                                                 f"(first at line {self.anchors[event.anchor].line})")
        self.anchors[event.anchor] = node

    def _scalar(self, event: yaml.ScalarEvent) -> _Node:
        tag = event.tag
        if tag is None or tag == "!":
            tag = self.resolver.resolve(yaml.ScalarNode, event.value, event.implicit)
        node = _Node("scalar", tag, event.value, _line(event))
        self._anchor(event, node)
        return node

    def _collection(self, event: yaml.CollectionStartEvent) -> _Node:
        kind, node_type = ("seq", yaml.SequenceNode) if isinstance(event, yaml.SequenceStartEvent) else (
            "map", yaml.MappingNode)
        tag = event.tag
        if tag is None or tag == "!":
            tag = self.resolver.resolve(node_type, None, event.implicit)
        node = _Node(kind, tag, [], _line(event))
        self._anchor(event, node)
        return node

    def _alias(self, event: yaml.AliasEvent) -> tuple[_Node, int]:
        name = _SHORT.repr(event.anchor)[1:-1]
        node = self.anchors.get(event.anchor)  # type: ignore[arg-type]
        if node is None:
            raise _fail(self.file, _line(event), f"alias *{name} refers to no anchor &{name} above it")
        if node.kind == "scalar":
            return node, 1
        size = self.sizes.get(id(node))
        if size is None:
            raise _fail(self.file, _line(event), f"alias *{name} is inside the list or mapping it refers to; "
                                                 "recursive structures are not supported")
        return node, size


def _line(event: yaml.Event) -> int:
    mark = event.start_mark
    return mark.line + 1 if mark is not None else 1


def _compose(text: str, file: str) -> _Node | None:
    try:
        return _Composer(file).compose(yaml.parse(text, Loader=_LOADER))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        msg = " ".join(x for x in (e.context, e.problem) if x)
        raise _fail(file, line, f"not valid YAML: {msg}") from None
    except yaml.reader.ReaderError as e:  # a character YAML does not allow
        line = text[:e.position].count("\n") + 1 if isinstance(e.position, int) else None
        char = f"U+{e.character:04X}" if isinstance(e.character, int) else _SHORT.repr(e.character)
        raise _fail(file, line, f"not valid YAML: character {char} is not allowed "
                                "(control characters other than tab and newline cannot appear)") from None
    except yaml.YAMLError as e:
        raise _fail(file, None, f"not valid YAML: {e}") from None


# --- constructing plain data ---------------------------------------------------------------------


class _Builder:
    """Plain data from nodes, aliases expanded (within the bounds the composer checked)."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[ConfigProblem] = []
        self.count = 0
        self.more = 0  # problems beyond MAX_PROBLEMS, not kept
        self.scalars = yaml.constructor.SafeConstructor()

    def problem(self, line: int, path: PathKey, message: str) -> None:
        if len(self.problems) >= MAX_PROBLEMS:
            self.more += 1
            return
        self.problems.append(ConfigProblem(file=self.file, line=line, field=_dotted(path), message=message))

    def construct(self, node: _Node, path: PathKey) -> Any:
        self.count += 1
        if self.count > MAX_NODES or len(path) > MAX_DEPTH:
            raise _fail(self.file, node.line, f"too many or too deeply nested values (at most {MAX_NODES}, "
                                              f"{MAX_DEPTH} levels)")
        if node.kind == "map":
            return self._mapping(node, path)
        if node.kind == "seq":
            if node.tag != _SEQ:
                self.problem(node.line, path, f"unsupported YAML tag {_tag(node.tag)}: write a plain list")
            return [self.construct(item, (*path, i)) for i, item in enumerate(node.value)]
        return self._scalar(node, path)

    def _mapping(self, node: _Node, path: PathKey) -> dict[str, Any]:
        if node.tag != _MAP:
            self.problem(node.line, path, f"unsupported YAML tag {_tag(node.tag)}: write a plain mapping")
        out: dict[str, Any] = {}
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.kind != "scalar":
                self.problem(key_node.line, path, "mapping keys must be plain scalars")
                continue
            key = key_node.value
            if key == "<<":
                self.problem(key_node.line, path, "YAML merge keys (<<) are not supported; write keys out")
                continue
            if key in out:
                self.problem(key_node.line, (*path, key), f"duplicate key (first at line {first[key]})")
                continue
            first[key] = key_node.line
            out[key] = self.construct(value_node, (*path, key))
        return out

    def _scalar(self, node: _Node, path: PathKey) -> Any:
        if node.tag == _TIMESTAMP:  # keep dates as text; no field takes a date
            return node.value
        if node.tag not in _SCALAR_TAGS:
            self.problem(node.line, path, f"unsupported YAML tag {_tag(node.tag)}: write a plain value")
            return None
        if node.tag in (_TAG + "int", _TAG + "float") and len(node.value) > MAX_NUMBER_CHARS:
            self.problem(node.line, path, f"a number of more than {MAX_NUMBER_CHARS} characters; "
                                          "quote it if it is meant as text")
            return None
        try:
            return self.scalars.yaml_constructors[node.tag](self.scalars, yaml.ScalarNode(node.tag, node.value))
        except (ValueError, KeyError, ArithmeticError, yaml.YAMLError):
            self.problem(node.line, path, f"{_SHORT.repr(node.value)} is not a valid {_tag(node.tag)}")
            return None


def _tag(tag: str) -> str:
    return "!!" + tag.removeprefix(_TAG) if tag.startswith(_TAG) else _SHORT.repr(tag)[1:-1]


class Lines:
    """The line of each field path, found by walking the composed nodes."""

    def __init__(self, root: _Node) -> None:
        self.root = root

    def line_for(self, path: PathKey) -> int | None:
        """Line of the deepest prefix of ``path`` that exists in the file."""
        node, line = self.root, self.root.line
        for part in path:
            if node.kind == "map" and isinstance(part, str):
                entry = node.entry(part)
                if entry is None:
                    break
                line, node = entry
            elif node.kind == "seq" and isinstance(part, int) and 0 <= part < len(node.value):
                node = node.value[part]
                line = node.line
            else:
                break
        return line


def _dotted(path: Iterable[str | int]) -> str:
    out = ""
    for p in path:
        if isinstance(p, str) and len(p) > 60:
            p = p[:57] + "..."
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def read_yaml(path: Path) -> tuple[Any, Lines]:
    """Parse a YAML file into plain data plus the line of each field path."""
    file = str(path)
    text = _read_text(path, file)
    node = _compose(text, file)
    if node is None:
        raise _fail(file, 1, "the file is empty")
    builder = _Builder(file)
    data = builder.construct(node, ())
    if builder.problems:
        problems = _dedupe(builder.problems)
        if builder.more:
            problems.append(ConfigProblem(file=file, line=problems[-1].line, field=None,
                                          message=f"... and {builder.more} more problem(s), not shown"))
        raise ConfigError(problems)
    if not isinstance(data, dict):
        raise _fail(file, 1, "expected a mapping at the top level")
    return data, Lines(node)


def _data_path(loc: tuple[str | int, ...], data: Any) -> PathKey:
    """Drop pydantic's union tags and validator names from an error location, keeping the
    elements that walk the actual data."""
    out: list[str | int] = []
    cur = data
    for part in loc:
        if part == "[key]":  # the key of a mapping itself: its line is the key's line
            continue
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
        return f"unknown kind {_SHORT.repr(ctx.get('tag'))}; expected one of {ctx.get('expected_tags', '')}"
    if kind == "union_tag_not_found":
        return "missing `kind`"
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    if kind.endswith(("_type", "_parsing", "_than", "_than_equal")) or kind in _SHOW_INPUT:
        msg += f" (got {_SHORT.repr(err.get('input'))})"
    return msg


def _entry_models(model: type[BaseModel]) -> dict[str, Any]:
    """Sections of ``model`` that map names to models (``services``, ``sites``...): name -> adapter
    of one entry."""
    from typing import get_args, get_origin

    from pydantic import TypeAdapter

    out: dict[str, Any] = {}
    for name, f in model.model_fields.items():
        ann = f.annotation
        if get_origin(ann) is dict:
            args = get_args(ann)
            if len(args) == 2 and isinstance(args[1], type) and issubclass(args[1], BaseModel):
                out[name] = TypeAdapter(args[1])
    return out


def _size(value: Any, limit: int) -> int:
    """Values in ``value`` (lists, mappings and scalars), counted up to ``limit`` + 1."""
    n, todo = 0, [value]
    while todo and n <= limit:
        v = todo.pop()
        n += 1
        if isinstance(v, dict):
            todo += v.values()
        elif isinstance(v, list):
            todo += v
    return n


def _check_entries(model: type[M], data: dict[str, Any], lines: Lines, file: str) -> dict[str, Any]:
    """Validate each entry of the name -> model sections on its own, and refuse an entry larger
    than ``MAX_ENTRY_NODES``: a file full of wrong values costs pydantic memory per error, so the
    errors are gathered entry by entry and the search stops at ``MAX_PROBLEMS``."""
    problems: list[ConfigProblem] = []
    more = total = 0
    validated: dict[str, Any] = {}
    for section, adapter in _entry_models(model).items():
        entries = data.get(section)
        if not isinstance(entries, dict):
            continue
        done = validated[section] = {}
        for name, entry in entries.items():
            if len(problems) >= MAX_PROBLEMS:
                more += 1
                continue
            path: PathKey = (section, name)
            if _size(entry, MAX_ENTRY_NODES) > MAX_ENTRY_NODES:
                problems.append(ConfigProblem(file=file, line=lines.line_for(path), field=_dotted(path),
                                              message=f"too large: more than {MAX_ENTRY_NODES} values in one entry"))
                continue
            try:
                done[name] = adapter.validate_python(entry)
            except ValidationError as e:
                total += e.error_count()
                for err in e.errors(include_url=False)[:MAX_PROBLEMS]:
                    loc = (section, name, *err["loc"])
                    p = _data_path(loc, data)
                    problems.append(ConfigProblem(file=file, line=lines.line_for(p), field=_dotted(p),
                                                  message=_message(dict(err))))
    if problems:
        out = _dedupe(problems)[:MAX_PROBLEMS]
        if total > len(out):
            out.append(ConfigProblem(file=file, line=out[-1].line, field=None,
                                     message=f"{total} problems in all; the first {len(out)} shown"))
        if more:
            out.append(ConfigProblem(file=file, line=out[-1].line, field=None,
                                     message=f"... and problems in {more} more entries, not shown"))
        raise ConfigError(out)
    return validated


def _validate(model: type[M], data: dict[str, Any], lines: Lines, file: str,
              **extra: Any) -> M:
    """The model, or ConfigError with every problem located. When pydantic finds very many
    problems (a huge list of bad values), only a breadth-first sample of the data is validated
    again for details: listing them all would cost more memory than the file is worth."""
    errors: list[dict[str, Any]] | None = None
    entries = _check_entries(model, data, lines, file)
    try:  # the entries are models already: pydantic takes them as they are
        return model.model_validate({**data, **entries, **extra})
    except ValidationError as e:
        count = e.error_count()
        if count <= MAX_DETAILED_ERRORS:
            errors = [dict(err) for err in e.errors(include_url=False)]
    shown = data
    if errors is None:  # outside the except block, so the first ValidationError is freed by now
        shown, cut = _sample(data, MAX_DETAILED_ERRORS)
        try:
            model.model_validate({**shown, **extra})
            errors = []
        except ValidationError as e:
            errors = [err for err in map(dict, e.errors(include_url=False))
                      if not _cut_artifact(err, shown, data, cut)]
    problems = []
    for err in errors:
        path = _data_path(tuple(err["loc"]), shown)
        problems.append(ConfigProblem(file=file, line=lines.line_for(path), field=_dotted(path),
                                      message=_message(err)))
    out = _dedupe(problems)
    if len(problems) < count:
        out.append(ConfigProblem(file=file, line=out[-1].line if out else lines.line_for(()), field=None,
                                 message=f"{count} problems in all; those shown are in the first "
                                         f"{MAX_DETAILED_ERRORS} values of the file (outermost first)"))
    raise ConfigError(out)


def _sample(data: dict[str, Any], budget: int) -> tuple[dict[str, Any], set[PathKey]]:
    """A copy of ``data`` keeping its first ``budget`` values breadth-first (each list and mapping
    keeps a prefix of its items), and the set of every path at or above a container cut short."""
    root: dict[str, Any] = {}
    queue: deque[tuple[Any, Any, PathKey]] = deque([(data, root, ())])
    kept, cut = 0, set[PathKey]()
    while queue:
        src, dst, path = queue.popleft()
        for key, value in (src.items() if isinstance(src, dict) else enumerate(src)):
            if kept >= budget:
                cut.update(path[:n] for n in range(len(path) + 1))
                break
            kept += 1
            copy: Any = value
            if isinstance(value, dict | list):
                copy = {} if isinstance(value, dict) else []
                queue.append((value, copy, (*path, key)))
            if isinstance(dst, dict):
                dst[key] = copy
            else:
                dst.append(copy)
    return root, cut


def _cut_artifact(err: dict[str, Any], shown: dict[str, Any], data: dict[str, Any], cut: set[PathKey]) -> bool:
    """Whether an error of the sample may come only from cutting it short: a required key, an
    item, or a value a model validator looked for, left out of the sample."""
    loc = tuple(err["loc"])
    if loc and loc[-1] == "[key]":  # about a mapping key itself
        return False
    path = _data_path(loc, shown)
    if err["type"] == "missing":
        return _has_path(data, path)
    return err["type"] in _INCOMPLETE and path in cut


def _has_path(data: Any, path: PathKey) -> bool:
    for part in path:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return False
    return True


def _dedupe(problems: list[ConfigProblem]) -> list[ConfigProblem]:
    """Each problem once, in file order, at most ``MAX_PROBLEMS`` of them."""
    seen: set[tuple[Any, ...]] = set()
    out = []
    for p in problems:
        key = (p.line, p.field, p.message)
        if key not in seen:
            seen.add(key)
            out.append(p)
    out.sort(key=lambda p: (p.line or 0, p.field or ""))
    if len(out) > MAX_PROBLEMS:
        rest = len(out) - MAX_PROBLEMS
        out = out[:MAX_PROBLEMS]
        out.append(ConfigProblem(file=out[-1].file, line=out[-1].line, field=None,
                                 message=f"... and {rest} more problem(s) below this line, not shown"))
    return out


def _names(names: Iterable[str], limit: int = 12) -> str:
    shown = sorted(names)
    more = len(shown) - limit
    return ", ".join(shown[:limit]) + (f", ... ({more} more)" if more > 0 else "")


def load_inventory(path: Path | str) -> Inventory:
    path = Path(path)
    data, lines = read_yaml(path)
    file = str(path)
    inv = _validate(Inventory, data, lines, file, base_dir=path.resolve().parent)
    refs = inv.check_references()
    if refs:
        raise ConfigError(_dedupe([ConfigProblem(file=file, line=lines.line_for(p), field=_dotted(p), message=m)
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
                    problems.append(ConfigProblem(file=str(path), line=lines.line_for(p), field=_dotted(p),
                                                  message=f"unknown service {svc!r}"))
            host = getattr(step, "host", None)
            if host is not None and host not in hosts:
                p = ("steps", i, "host")
                problems.append(ConfigProblem(file=str(path), line=lines.line_for(p), field=_dotted(p),
                                              message=f"unknown host {host!r}; known: {_names(hosts)}"))
        if problems:
            raise ConfigError(_dedupe(problems))
    return pb


def default_inventory_path() -> Path:
    env = os.environ.get("DRCTL_INVENTORY")
    return Path(env) if env else Path("inventory/inventory.yaml")


def builtin_playbook(name: str) -> Path:
    """The default playbook shipped with drctl (``failover``, ``failback``, ``drill``).

    The top-level ``playbooks/`` directory, the one users read and copy, is the only copy: an
    installed wheel carries it as the data package ``drctl.playbooks`` (found through
    ``importlib.resources``); a source tree run without such an install reads it from beside the
    ``drctl`` package. The path is returned whether or not the file exists (``load_playbook``
    reports a missing one)."""
    return _packaged_playbook(f"{name}.yaml") or \
        Path(__file__).resolve().parent.parent.parent / "playbooks" / f"{name}.yaml"


def _packaged_playbook(filename: str) -> Path | None:
    """``filename`` in the installed ``drctl.playbooks`` data package, if there is one on disk."""
    from importlib.resources import files

    try:
        found = files("drctl.playbooks").joinpath(filename)
    except (ImportError, ValueError, TypeError, OSError):  # not installed from a wheel: the source tree
        return None
    return found if isinstance(found, Path) and found.is_file() else None
