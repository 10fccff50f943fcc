"""Pure logic: manifest records, the merge comparison, mass change, table sums and key ranges."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from drctl.core.integrity import (
    Entry,
    FilesReport,
    IntegrityReport,
    RecordError,
    SideInfo,
    TableSums,
    bucket_ranges,
    compare_table_sums,
    compare_trees,
    diff_rows,
    differing_buckets,
    format_record,
    mass_change,
    parse_record,
)
from drctl.model.integrity import MassChange


def E(path: str, digest: str = "aa", size: int = 1) -> Entry:  # noqa: N802
    return Entry(path.encode(), size, digest)


def test_records_round_trip_any_bytes() -> None:
    for path in (b"plain", b"new\nline", b"tab\there", b"back\\slash\\n", b"\xff\xfe not utf-8", b"a/b/c"):
        e = Entry(path, 12, "ab" * 32)
        line = format_record(e)
        assert line.count(b"\n") == 1 and line.endswith(b"\n")
        assert parse_record(line) == e
    err = Entry(b"dir/", 0, None, "cannot list directory: Permission denied")
    assert parse_record(format_record(err)) == err
    assert parse_record(b"T\t{}\n") is None
    with pytest.raises(RecordError):
        parse_record(b"F\tnot enough fields\n")


def test_identical_trees() -> None:
    a = [E("a"), E("b/c"), E("d")]
    diff = compare_trees(a, list(a))
    assert diff.identical and diff.same == 3 and diff.compared == 3


def test_missing_extra_and_differing_are_named_with_bytes() -> None:
    ref = [E("a", size=5), E("b", "11", 7), E("c", size=9)]
    bak = [E("b", "22", 7), E("c", size=9), E("z", size=3)]
    diff = compare_trees(ref, bak)
    assert diff.missing.paths == [b"a"] and diff.missing.bytes == 5
    assert diff.extra.paths == [b"z"] and diff.extra.bytes == 3
    assert diff.differ.paths == [b"b"] and diff.differ_same_size == 1
    assert diff.same == 1 and not diff.identical
    assert (diff.reference_files, diff.reference_bytes, diff.backup_files, diff.backup_bytes) == (3, 21, 3, 19)


def test_size_change_with_same_digest_still_differs() -> None:
    diff = compare_trees([E("a", "x", 1)], [E("a", "x", 2)])
    assert diff.differ.paths == [b"a"] and diff.differ_same_size == 0


def test_unreadable_directory_blocks_what_is_under_it() -> None:
    ref = [E("a"), E("d/x"), E("d/y"), E("e")]
    bak = [E("a"), Entry(b"d/", 0, None, "cannot list directory: Permission denied"), E("e")]
    diff = compare_trees(ref, bak)
    assert [(u.side, u.path) for u in diff.unreadable] == [("backup", b"d/")]
    assert diff.not_compared == 2 and diff.missing.count == 0 and diff.same == 2


def test_unreadable_file_is_reported_not_missing() -> None:
    diff = compare_trees([E("a"), E("b")], [E("a"), Entry(b"b", 0, None, "cannot open: Permission denied")])
    assert diff.missing.count == 0 and [u.path for u in diff.unreadable] == [b"b"]


def test_out_of_order_manifest_is_an_error() -> None:
    with pytest.raises(RecordError):
        compare_trees([E("b"), E("a")], [E("a"), E("b")])


def test_order_is_bytewise_with_directories_interleaved() -> None:
    # "a-c" < "a/b" < "a0" in byte order: what the walker emits and what the merge expects
    ref = [E("a-c"), E("a/b"), E("a0")]
    assert compare_trees(ref, list(ref)).same == 3


def test_mass_change_flags_in_place_encryption_only_above_threshold() -> None:
    names = [f"f{i:03d}" for i in range(100)]
    ref = [E(n, "old", 10) for n in names]
    encrypted = [E(n, "new", 10) for n in names]
    policy = MassChange(share=0.25, min_files=10)
    verdict = mass_change(compare_trees(ref, encrypted), policy)
    assert verdict.flagged and verdict.changed_in_place == 100 and verdict.share == 1.0
    one_changed = [E(n, "new" if n == "f000" else "old", 10) for n in names]
    assert not mass_change(compare_trees(ref, one_changed), policy).flagged
    # appended to, not encrypted in place: a third of the files is a plain difference ...
    some_grown = [E(n, "new", 11) if i < 33 else E(n, "old", 10) for i, n in enumerate(names)]
    verdict = mass_change(compare_trees(ref, some_grown), policy)
    assert not verdict.flagged and verdict.changed_in_place == 0 and verdict.differing == 33
    # ... but a copy where most of the primary's files differ is not trusted as it is
    grown = [E(n, "new", 11) for n in names]
    verdict = mass_change(compare_trees(ref, grown), policy)
    assert verdict.flagged and verdict.changed_in_place == 0 and verdict.differing_share == 1.0
    assert "differ or are missing" in verdict.describe()


def test_mass_change_flags_encrypted_copies_renamed_with_an_extension() -> None:
    names = [f"docs/report{i:03d}.pdf" for i in range(40)]
    ref = sorted([E(n, "old", 10) for n in names] + [E("z-keep.txt", "k", 1)], key=lambda e: e.path)
    locked = sorted([E(n + ".locked", "enc", 26) for n in names] + [E("z-keep.txt", "k", 1)],
                    key=lambda e: e.path)
    verdict = mass_change(compare_trees(ref, locked), MassChange(share=0.25, min_files=10))
    assert verdict.flagged and verdict.renamed == 40 and verdict.changed_in_place == 0
    assert "extension added" in verdict.describe()
    # a lagging backup (new files missing, nothing renamed) is a difference, not a mass change
    lagging = [e for e in ref if not e.path.startswith(b"docs/report01")]
    assert not mass_change(compare_trees(ref, lagging), MassChange(share=0.25, min_files=10)).flagged


def test_mass_change_needs_min_files() -> None:
    ref = [E(f"f{i}", "old", 10) for i in range(4)]
    bak = [E(f"f{i}", "new", 10) for i in range(4)]
    assert not mass_change(compare_trees(ref, bak), MassChange(share=0.25, min_files=10)).flagged
    assert mass_change(compare_trees(ref, bak), MassChange(share=0.25, min_files=4)).flagged


def test_table_sums_and_ranges() -> None:
    ref = {"public.a": TableSums(3, "10"), "public.b": TableSums(2, "5"), "public.gone": TableSums(1, "1")}
    bak = {"public.a": TableSums(3, "10"), "public.b": TableSums(2, "6"), "public.new": TableSums(1, "1")}
    status = {d.name: d.status for d in compare_table_sums(ref, bak)}
    assert status == {"public.a": "same", "public.b": "differs", "public.gone": "missing_on_backup",
                      "public.new": "extra_on_backup"}
    assert differing_buckets({0: (10, "a"), 1: (10, "b"), 3: (1, "x")}, {0: (10, "a"), 1: (10, "c"), 2: (1, "y")}) \
        == [1, 2, 3]
    assert bucket_ranges([1, 2, 5, -1], 100) == [(-100, 0), (100, 300), (500, 600)]


def test_diff_rows_names_keys() -> None:
    ref = [("1", "h1"), ("2", "h2"), ("3", "h3"), ("10", "h10")]
    bak = [("1", "h1"), ("2", "XX"), ("10", "h10"), ("11", "h11")]
    missing, extra, changed, cut = diff_rows(ref, bak, limit=100)
    assert (missing, extra, changed, cut) == (["3"], ["11"], ["2"], False)
    missing, extra, changed, cut = diff_rows(ref, [], limit=2)
    assert missing == ["1", "2"] and cut


def test_report_values() -> None:
    diff = compare_trees([E("a", size=4), E("b")], [E("b"), E("c")])
    side = SideInfo("dc2", "app2", "/data")
    files = FilesReport("data", "primary", side, diff, mass_change(diff, MassChange()), primary=side)
    report = IntegrityReport("svc", "dc1", "dc2", [files])
    assert not report.ok
    assert "1 missing on backup (4 B)" in report.summary() and "1 extra on backup" in report.summary()
    d = report.as_dict(max_paths=None)
    assert d["targets"][0]["missing_on_backup"] == {"count": 1, "bytes": 4, "paths": ["a"]}
    assert d["targets"][0]["extra_on_backup"]["paths"] == ["c"]
    assert report.as_dict(max_paths=0)["targets"][0]["missing_on_backup"]["paths_truncated"] is True
    assert any("missing on backup: 'a'" in line for line in report.lines())


def test_comparison_memory_does_not_grow_with_the_tree() -> None:
    import tracemalloc

    def manifest(n: int) -> Iterator[Entry]:
        for i in range(n):
            yield Entry(b"dir%03d/file%07d" % (i // 1000, i), 4096, "ab" * 32)

    tracemalloc.start()
    try:
        diff = compare_trees(manifest(50_000), manifest(50_000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert diff.same == 50_000 and diff.identical
    assert peak < 1_000_000, f"peak {peak} bytes: paths are being kept"
