"""The programs that hash a tree on a host, run here directly (the SSH path is in test_files.py):
the Python one (order, escaping, globs, manifest cache) and the coreutils fallback, which must
produce the very same manifest."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from drctl.core.integrity import Entry
from drctl.drivers.integrity import COREUTILS_SCRIPT, SCRIPT, ManifestStream, find_expression, remote_script
from tests.integrity.conftest import NASTY_NAMES, write_tree

TREE = {
    "a-c": b"1", "a/b": b"22", "a0": b"333", "sub/deep/x.log": b"log", "sub/deep/keep.txt": b"keep",
    "cache/big.bin": b"c" * 5000, "tmp/t.txt": b"t", "sub/tmp/t2.txt": b"t2", "empty": b"",
    **{f"nasty/{n}": n.encode() for n in NASTY_NAMES},
}


def python_manifest(root: Path, tmp: Path, **params: Any) -> tuple[list[Entry], dict[str, Any], dict[str, Any]]:
    p = {"root": str(root), "cache_dir": str(tmp / "cache"), **params}
    done = subprocess.run([sys.executable, "-"], input=remote_script(p), capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout[-500:] + done.stderr[-2000:]
    ms = ManifestStream("local", io.BufferedReader(io.BytesIO(done.stdout)), "python")  # type: ignore[arg-type]
    entries = list(ms.entries())
    return entries, ms.header, ms.stats


def coreutils_manifest(root: Path, include: list[str] = [], exclude: list[str] = [],  # noqa: B006
                       tool: str = "sha256sum", hex_len: int = 64) -> list[Entry]:
    argv = ["sh", "-c", COREUTILS_SCRIPT, "drctl-hash", str(root), tool, *find_expression(include, exclude)]
    done = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    ms = ManifestStream("local", io.BytesIO(done.stdout), "coreutils", hex_len)  # type: ignore[arg-type]
    return list(ms.entries())


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = write_tree(tmp_path / "tree", TREE)
    (root / b"raw-\xff\xfe".decode("utf-8", "surrogateescape")).write_bytes(b"not utf-8 name")
    os.symlink("a0", root / "link-to-a0")
    os.mkfifo(root / "fifo")
    return root


def test_manifest_is_in_byte_order_with_every_name_intact(tree: Path, tmp_path: Path) -> None:
    entries, header, stats = python_manifest(tree, tmp_path)
    paths = [e.path for e in entries]
    assert paths == sorted(paths)
    expected = sorted([k.encode() for k in TREE] + [b"raw-\xff\xfe"])
    assert paths == expected
    for e in entries:
        data = (tree / os.fsdecode(e.path)).read_bytes()
        assert (e.size, e.digest) == (len(data), hashlib.sha256(data).hexdigest())
    assert stats["symlinks"] == 1 and stats["special"] == 1 and stats["errors"] == 0
    assert header["algorithm"] == "sha256" and header["protocol"] == 1


@pytest.mark.parametrize(("include", "exclude", "expected"), [
    ([], ["*.log"], {"sub/deep/x.log"}),  # a name at any depth
    ([], ["tmp"], {"tmp/t.txt", "sub/tmp/t2.txt"}),  # a directory name at any depth: not descended
    ([], ["/tmp"], {"tmp/t.txt"}),  # anchored at the root
    ([], ["sub/*"], {"sub/deep/x.log", "sub/deep/keep.txt", "sub/tmp/t2.txt"}),  # * spans /
    ([], ["cache/"], {"cache/big.bin"}),  # directories only
])
def test_excludes(tree: Path, tmp_path: Path, include: list[str], exclude: list[str], expected: set[str]) -> None:
    entries, _, _ = python_manifest(tree, tmp_path, exclude=exclude)
    everything = {k for k in TREE} | {"raw-\udcff\udcfe"}
    assert {os.fsdecode(e.path) for e in entries} == everything - expected


def test_includes(tree: Path, tmp_path: Path) -> None:
    entries, _, _ = python_manifest(tree, tmp_path, include=["*.txt"], exclude=["nasty"])
    assert {e.path for e in entries} == {b"sub/deep/keep.txt", b"tmp/t.txt", b"sub/tmp/t2.txt"}


@pytest.mark.parametrize(("include", "exclude"), [
    ([], []), ([], ["*.log", "/tmp", "cache/"]), (["*.txt", "a/*"], ["sub/tmp"]), (["nasty/*"], ["*.txt"]),
])
def test_coreutils_fallback_gives_the_same_manifest(tree: Path, tmp_path: Path, include: list[str],
                                                    exclude: list[str]) -> None:
    py, _, _ = python_manifest(tree, tmp_path, include=include, exclude=exclude)
    assert coreutils_manifest(tree, include, exclude) == py
    assert not list(tree.glob("**/CANARY")), "a file name was run as a command"


def test_coreutils_fallback_other_algorithm(tree: Path, tmp_path: Path) -> None:
    py, _, _ = python_manifest(tree, tmp_path, algorithm="blake2b")
    assert coreutils_manifest(tree, tool="b2sum", hex_len=128) == py


def test_cache_skips_unchanged_files_and_sees_changes(tree: Path, tmp_path: Path) -> None:
    first, _, s1 = python_manifest(tree, tmp_path, racy_ns=0)
    assert s1["hashed"] == len(first) and s1["cached"] == 0
    again, header, s2 = python_manifest(tree, tmp_path, racy_ns=0)
    assert again == first and s2["hashed"] == 0 and s2["cached"] == len(first) and header["cache"] == "used"
    # same size, mtime put back: ctime still moves, so the change is seen
    target = tree / "a0"
    st = target.stat()
    target.write_bytes(b"XYZ")
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    changed, _, s3 = python_manifest(tree, tmp_path, racy_ns=0)
    assert s3["hashed"] == 1
    assert {e.path: e.digest for e in changed}[b"a0"] == hashlib.sha256(b"XYZ").hexdigest()
    _, header, s4 = python_manifest(tree, tmp_path, racy_ns=0, full=True)
    assert s4["hashed"] == len(first) and header["cache"] == "ignored (--full)"


def test_files_changed_just_now_are_not_trusted_from_the_cache(tree: Path, tmp_path: Path) -> None:
    python_manifest(tree, tmp_path)  # default settle time: everything here was written just now
    _, _, stats = python_manifest(tree, tmp_path)
    assert stats["cached"] == 0 and stats["racy"] == stats["files"]


def test_a_different_glob_set_has_its_own_cache(tree: Path, tmp_path: Path) -> None:
    python_manifest(tree, tmp_path, racy_ns=0)
    _, _, stats = python_manifest(tree, tmp_path, racy_ns=0, exclude=["*.log"])
    assert stats["cached"] == 0
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_missing_root_is_a_fatal_record(tmp_path: Path) -> None:
    p = {"root": str(tmp_path / "nope")}
    done = subprocess.run([sys.executable, str(SCRIPT), json.dumps(p)], capture_output=True, timeout=30, check=False)
    assert done.returncode == 3
    kind, payload = done.stdout.split(b"\t", 1)
    assert kind == b"X" and "No such file" in json.loads(payload)["error"]


def test_script_runs_on_the_system_python(tree: Path, tmp_path: Path) -> None:
    """The program runs on whatever python3 a host has; here, the system's."""
    done = subprocess.run(["/usr/bin/python3", "-"], input=remote_script({"root": str(tree), "cache": False}),
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith(b"T\t")


def test_the_programs_own_json_writer() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("hashtree", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for value in ["plain", 'q"uote\\back', "new\nline\ttab\x00\x1f", "ünï ✓", "\udcff", 0, -3, 1.5, True, None,
                  [1, "a"], {"k": ["v", {"n": None}]}]:
        assert json.loads(mod.to_json(value)) == value


def test_program_is_python_3_6_syntax() -> None:
    """Hosts run their own python3, often older than drctl's."""
    import ast

    ast.parse(SCRIPT.read_text(), feature_version=(3, 6))
