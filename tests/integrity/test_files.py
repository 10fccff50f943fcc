"""File trees verified through a real sshd: both copies hashed where they live, compared here."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from drctl.core.integrity import FilesReport
from drctl.drivers.integrity import verify_service
from drctl.drivers.ssh import SSHPool
from drctl.errors import DriverError, HostUnreachableError
from drctl.lab.servers import SshServer
from drctl.model.inventory import Inventory
from tests.integrity.conftest import NASTY_NAMES, copy_tree, files_target, make_inventory, write_tree

pytestmark = pytest.mark.servers

FILES = {f"dir{i % 3}/file{i:02d}.dat": bytes([i]) * (100 + i) for i in range(30)}
FILES.update({f"nasty/{n}": f"content of {n}".encode() for n in NASTY_NAMES})

MakePool = Callable[[Inventory], SSHPool]


def setup(tmp_path: Path, sshd: SshServer, **target: object) -> tuple[Path, Path, Inventory]:
    primary = write_tree(tmp_path / "primary", FILES)
    backup = copy_tree(primary, tmp_path / "backup")
    inv = make_inventory(tmp_path, sshd, [files_target(primary, backup, tmp_path / "cache", **target)])
    return primary, backup, inv


def files_report(inv: Inventory, pool: SSHPool, state: Path, **kw: object) -> FilesReport:
    report = verify_service(inv, "svc", pool, state, **kw)  # type: ignore[arg-type]
    (target,) = report.targets
    assert isinstance(target, FilesReport)
    return target


def test_identical_copies_pass(tmp_path: Path, sshd: SshServer, make_pool: MakePool) -> None:
    _, _, inv = setup(tmp_path, sshd)
    report = verify_service(inv, "svc", make_pool(inv), tmp_path / "state")
    assert report.ok, report.lines()
    (t,) = report.targets
    assert isinstance(t, FilesReport)
    assert t.diff.same == len(FILES) and t.diff.reference_bytes == sum(len(v) for v in FILES.values())
    assert t.primary is not None and t.primary.detail["hasher"] == "python"
    assert "identical" in report.summary()


def _change_byte(backup: Path) -> str:
    p = backup / "dir1/file04.dat"
    data = bytearray(p.read_bytes())
    data[50] ^= 0x01
    p.write_bytes(bytes(data))
    return "dir1/file04.dat"


def _remove(backup: Path) -> str:
    (backup / "dir2/file05.dat").unlink()
    return "dir2/file05.dat"


def _add(backup: Path) -> str:
    (backup / "dir0/intruder.bin").write_bytes(b"x" * 77)
    return "dir0/intruder.bin"


def _change_nasty(backup: Path) -> str:
    name = "nasty/" + NASTY_NAMES[3]  # a newline in the name
    (backup / name).write_bytes(b"other")
    return name


@pytest.mark.parametrize(("mutate", "category"), [
    (_change_byte, "differ"), (_remove, "missing"), (_add, "extra"), (_change_nasty, "differ"),
])
def test_each_difference_is_found_and_named(tmp_path: Path, sshd: SshServer, make_pool: MakePool,
                                            mutate: Callable[[Path], str], category: str) -> None:
    _, backup, inv = setup(tmp_path, sshd)
    name = mutate(backup)
    t = files_report(inv, make_pool(inv), tmp_path / "state")
    assert not t.ok
    found = {"differ": t.diff.differ, "missing": t.diff.missing, "extra": t.diff.extra}
    for cat, ps in found.items():
        assert ps.paths == ([name.encode()] if cat == category else []), (cat, t.lines(None))
    assert not t.mass.flagged
    d = t.as_dict(max_paths=None)
    key = {"differ": "differ", "missing": "missing_on_backup", "extra": "extra_on_backup"}[category]
    assert d[key]["paths"] == [name] and d[key]["count"] == 1


def test_paths_with_shell_metacharacters_are_not_run(tmp_path: Path, sshd: SshServer, make_pool: MakePool) -> None:
    weird = tmp_path / "it's a \"dir\" $(touch CANARY) `touch CANARY`; touch CANARY"
    primary = write_tree(weird / "primary", FILES)
    backup = copy_tree(primary, weird / "backup; touch CANARY")
    inv = make_inventory(tmp_path, sshd, [files_target(primary, backup, tmp_path / "cache",
                                                       exclude=["$(touch CANARY)*", "*'*"])])
    t = files_report(inv, make_pool(inv), tmp_path / "state")
    assert t.ok and t.diff.same == len(FILES) - 2  # the two excluded names
    assert not list(tmp_path.rglob("CANARY")) and not Path.home().joinpath("CANARY").exists()


def test_unchanged_tree_is_not_hashed_again_unless_full(tmp_path: Path, sshd: SshServer, make_pool: MakePool) -> None:
    _, backup, inv = setup(tmp_path, sshd)
    pool = make_pool(inv)
    first = files_report(inv, pool, tmp_path / "state")
    assert first.primary is not None and first.primary.detail["hashed"] == len(FILES)
    again = files_report(inv, pool, tmp_path / "state")
    assert again.ok
    assert again.primary is not None and again.primary.detail["hashed"] == 0
    assert again.backup.detail["hashed"] == 0 and again.backup.detail["cached"] == len(FILES)
    name = _change_byte(backup)
    changed = files_report(inv, pool, tmp_path / "state")
    assert changed.backup.detail["hashed"] == 1 and changed.diff.differ.paths == [name.encode()]
    full = files_report(inv, pool, tmp_path / "state", full=True)
    assert full.backup.detail["hashed"] == len(FILES) and full.diff.differ.paths == [name.encode()]


def test_primary_down_compares_with_the_newest_baseline(tmp_path: Path, sshd: SshServer,
                                                        make_pool: MakePool) -> None:
    primary, backup, inv = setup(tmp_path, sshd)
    state = tmp_path / "state"
    recorded = verify_service(inv, "svc", make_pool(inv), state, record_baseline=True)
    assert recorded.ok and len(recorded.baselines_recorded) == 1
    shutil.rmtree(primary)  # the primary site is gone
    name = _remove(backup)
    down = make_inventory(tmp_path, sshd, [files_target(primary, backup, tmp_path / "cache")], primary_down=True)
    t = files_report(down, make_pool(down), state)
    assert t.reference == "baseline" and t.baseline is not None
    assert t.baseline.path == recorded.baselines_recorded[0]
    assert t.diff.missing.paths == [name.encode()] and t.diff.same == len(FILES) - 1
    assert any("does not answer" in n for n in t.notes)
    assert "against the baseline" in t.headline()


def test_primary_down_without_baseline_is_an_error(tmp_path: Path, sshd: SshServer, make_pool: MakePool) -> None:
    primary = write_tree(tmp_path / "primary", FILES)
    inv = make_inventory(tmp_path, sshd, [files_target(primary, primary, tmp_path / "cache")], primary_down=True)
    with pytest.raises(HostUnreachableError) as exc:
        verify_service(inv, "svc", make_pool(inv), tmp_path / "state")
    assert "no intact baseline" in exc.value.message and exc.value.hint and "--record-baseline" in exc.value.hint


def test_encrypted_backup_is_flagged_as_mass_change(tmp_path: Path, sshd: SshServer, make_pool: MakePool) -> None:
    _, backup, inv = setup(tmp_path, sshd)
    for dirpath, _dirs, names in os.walk(backup):
        for n in names:
            p = Path(dirpath) / n
            p.write_bytes(os.urandom(p.stat().st_size))  # same name, same size, new content
    t = files_report(inv, make_pool(inv), tmp_path / "state")
    assert t.mass.flagged and t.mass.changed_in_place == len(FILES)
    assert "MASS CHANGE" in t.headline()
    assert not t.diff.missing.count and not t.diff.extra.count


def test_encrypted_backup_against_baseline(tmp_path: Path, sshd: SshServer, make_pool: MakePool) -> None:
    primary, backup, inv = setup(tmp_path, sshd)
    state = tmp_path / "state"
    verify_service(inv, "svc", make_pool(inv), state, record_baseline=True)
    for p in backup.rglob("*.dat"):
        p.write_bytes(os.urandom(p.stat().st_size))
    down = make_inventory(tmp_path, sshd, [files_target(primary, backup, tmp_path / "cache")], primary_down=True)
    t = files_report(down, make_pool(down), state)
    assert t.reference == "baseline" and t.mass.flagged and t.mass.changed_in_place == 30


def test_coreutils_hasher_over_ssh(tmp_path: Path, sshd: SshServer, make_pool: MakePool) -> None:
    _, backup, inv = setup(tmp_path, sshd, hasher="coreutils")
    name = _change_nasty(backup)
    t = files_report(inv, make_pool(inv), tmp_path / "state")
    assert t.backup.detail["hasher"] == "coreutils"
    assert t.diff.differ.paths == [name.encode()] and t.diff.same == len(FILES) - 1


def test_backup_down_is_an_error(tmp_path: Path, sshd: SshServer, make_pool: MakePool) -> None:
    primary = write_tree(tmp_path / "primary", FILES)
    inv = make_inventory(tmp_path, sshd, [files_target(primary, primary, tmp_path / "cache")])
    hosts = inv.model_dump()
    hosts["sites"]["dc2"]["hosts"]["app2"].update(port=1, connect_timeout=0.5)
    broken = Inventory.model_validate({**hosts, "base_dir": tmp_path})
    with pytest.raises(HostUnreachableError):
        verify_service(broken, "svc", make_pool(broken), tmp_path / "state")


def test_missing_root_on_backup_is_an_error(tmp_path: Path, sshd: SshServer, make_pool: MakePool) -> None:
    primary = write_tree(tmp_path / "primary", FILES)
    inv = make_inventory(tmp_path, sshd, [files_target(primary, tmp_path / "nowhere", tmp_path / "cache")])
    with pytest.raises(DriverError, match="nowhere"):
        verify_service(inv, "svc", make_pool(inv), tmp_path / "state")


class NoPythonSshServer(SshServer):
    """An sshd whose sessions find only POSIX tools and coreutils on PATH: no python3."""

    TOOLS = ("sh", "find", "sort", "xargs", "stat", "split", "paste", "nproc", "mktemp", "cat", "rm", "printf",
             "sha256sum", "sha1sum", "b2sum", "sha512sum")

    def _prepare(self) -> None:
        super()._prepare()
        bin_dir = self.dir / "bin"
        bin_dir.mkdir(exist_ok=True)
        for tool in self.TOOLS:
            found = shutil.which(tool)
            if found and not (bin_dir / tool).exists():
                (bin_dir / tool).symlink_to(found)
        wrapper = self.dir / "no-python-session"
        wrapper.write_text(f'#!/bin/sh\nPATH={bin_dir}\nexport PATH\nexec sh -c "$SSH_ORIGINAL_COMMAND"\n')
        wrapper.chmod(0o755)
        with open(self.config, "a") as f:
            f.write(f"ForceCommand {wrapper}\n")


def test_auto_hasher_falls_back_to_coreutils_without_python3(
        tmp_path: Path, module_daemons: Callable[[SshServer], SshServer], make_pool: MakePool) -> None:
    server = module_daemons(NoPythonSshServer(tmp_path / "sshd-nopy"))
    assert server.alive()
    primary = write_tree(tmp_path / "primary", FILES)
    backup = copy_tree(primary, tmp_path / "backup")
    name = _remove(backup)
    inv = make_inventory(tmp_path, server, [files_target(primary, backup, tmp_path / "cache")])
    t = files_report(inv, make_pool(inv), tmp_path / "state")
    assert t.primary is not None and t.primary.detail["hasher"] == "coreutils"
    assert t.diff.missing.paths == [name.encode()] and t.diff.same == len(FILES) - 1
    forced = make_inventory(tmp_path, server, [files_target(primary, backup, tmp_path / "cache", hasher="python")])
    with pytest.raises(DriverError, match="python3 is not available"):
        verify_service(forced, "svc", make_pool(forced), tmp_path / "state")


def test_auto_hasher_uses_python3_when_there(tmp_path: Path, sshd: SshServer, make_pool: MakePool) -> None:
    _, _, inv = setup(tmp_path, sshd)
    t = files_report(inv, make_pool(inv), tmp_path / "state")
    assert t.primary is not None and t.primary.detail["hasher"] == "python" and t.ok
