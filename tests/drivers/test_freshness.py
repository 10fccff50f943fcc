"""Backup age probes over a real SSH connection (the backup "host" is this machine via sshd)."""

from __future__ import annotations

import os
import time
from datetime import timedelta, timezone
from pathlib import Path

import pytest

from drctl.drivers.freshness import backup_age, parse_timestamp
from drctl.drivers.ssh import SSHPool
from drctl.errors import DriverError, SSHError
from drctl.model.inventory import BackupCheck

pytestmark = pytest.mark.servers

HOUR = 3600.0


def make_file(path: Path, age_s: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"backup")
    t = time.time() - age_s
    os.utime(path, (t, t))
    return path


def check(**fields: object) -> BackupCheck:
    return BackupCheck.model_validate({"host": "app", "max_age": "1h", **fields})


def test_newest_file_under_path_recursively_with_awkward_names(pool: SSHPool, tmp_path: Path) -> None:
    root = tmp_path / "backups dir"
    make_file(root / "2024" / "old.dump", 3 * HOUR)
    make_file(root / "2024" / "newer.dump", 2 * HOUR)
    newest = make_file(root / "2025" / "new\nest 'one' $(x).dump", 0.5 * HOUR)
    make_file(root / "2025" / "newest-but-wrong-kind.log", 60)
    age = backup_age(pool, check(path=str(root), glob="*.dump"))
    assert age.host == "app"
    assert age.newest == str(newest)
    assert age.newest_ts == pytest.approx(newest.stat().st_mtime, abs=0.01)
    assert age.age_s is not None and 0.5 * HOUR - 60 < age.age_s < 0.5 * HOUR + 600
    assert age.remote_now == pytest.approx(time.time(), abs=600)


def test_stale_backup_shows_its_age(pool: SSHPool, tmp_path: Path) -> None:
    make_file(tmp_path / "b" / "only.tar", 3 * 86400)
    age = backup_age(pool, check(path=str(tmp_path / "b")))
    assert age.age_s is not None and age.age_s > 2.9 * 86400


def test_missing_path_and_empty_dir_have_no_newest(pool: SSHPool, tmp_path: Path) -> None:
    missing = backup_age(pool, check(path=str(tmp_path / "nope")))
    assert (missing.newest, missing.newest_ts, missing.age_s) == (None, None, None)
    assert missing.remote_now > 0
    (tmp_path / "empty").mkdir()
    empty = backup_age(pool, check(path=str(tmp_path / "empty")))
    assert (empty.newest, empty.age_s) == (None, None)


def test_glob_matching_nothing(pool: SSHPool, tmp_path: Path) -> None:
    make_file(tmp_path / "b" / "x.log", 10)
    assert backup_age(pool, check(path=str(tmp_path / "b"), glob="*.dump")).newest is None


def test_command_printing_epoch_seconds(pool: SSHPool) -> None:
    ts = time.time() - 2 * HOUR
    age = backup_age(pool, check(command=["sh", "-c", f"echo starting; echo {ts:.3f}"]))
    assert age.newest_ts == pytest.approx(ts, abs=0.01)
    assert age.age_s is not None and 2 * HOUR - 60 < age.age_s < 2 * HOUR + 600


def test_command_printing_iso8601(pool: SSHPool) -> None:
    age = backup_age(pool, check(command=["echo", "2024-01-01T00:00:00Z"]))
    assert age.newest_ts == 1704067200.0
    assert age.newest == "2024-01-01T00:00:00Z"


def test_command_arguments_are_not_shell_parsed(pool: SSHPool, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    with pytest.raises(DriverError, match="not a timestamp"):
        backup_age(pool, check(command=["echo", f"$(touch {canary})"]))
    assert not canary.exists()


def test_command_failure_and_garbage(pool: SSHPool) -> None:
    with pytest.raises(SSHError, match="exited with status 3: no repo"):
        backup_age(pool, check(command=["sh", "-c", "echo no repo >&2; exit 3"]))
    with pytest.raises(DriverError, match="printed nothing"):
        backup_age(pool, check(command=["true"]))
    with pytest.raises(DriverError, match="milliseconds"):
        backup_age(pool, check(command=["echo", "1718000000000"]))


def test_parse_timestamp_forms() -> None:
    assert parse_timestamp("1718000000") == 1718000000.0
    assert parse_timestamp(" 1718000000.5\n") == 1718000000.5
    assert parse_timestamp("2024-01-01T02:00:00+02:00") == 1704067200.0
    assert parse_timestamp("2024-01-01 00:00:00") == 1704067200.0  # naive: the remote zone, UTC here
    plus2 = timezone(timedelta(hours=2))
    assert parse_timestamp("2024-01-01T02:00:00", plus2) == 1704067200.0
    with pytest.raises(ValueError, match="not a timestamp"):
        parse_timestamp("last tuesday")
