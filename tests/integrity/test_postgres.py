"""PostgreSQL tables verified against two real clusters: the primary read with psql over SSH,
the backup with a local psql over TCP and a password (from a file or an environment variable)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from drctl.core.integrity import PostgresReport
from drctl.drivers.integrity import verify_service
from drctl.drivers.ssh import SSHPool
from drctl.errors import ConfigError, DatabaseError, DatabaseUnreachableError
from drctl.lab.postgres import PostgresCluster
from drctl.lab.servers import SshServer, free_port
from drctl.model.integrity import PostgresSite
from drctl.model.inventory import Inventory
from tests.integrity.conftest import make_inventory

pytestmark = pytest.mark.servers

MakePool = Callable[[Inventory], SSHPool]
_schemas = itertools.count()

SCHEMA_SQL = """
CREATE SCHEMA {s};
CREATE TABLE {s}.orders (id bigint PRIMARY KEY, customer text, amount numeric(12,2), placed timestamptz,
                         due date, tags jsonb, ratio float8, span interval);
INSERT INTO {s}.orders SELECT g, 'customer ' || (g % 97), g * 1.25,
       timestamptz '2024-03-01 12:00:00+00' + g * interval '1 minute', date '2024-01-01' + (g % 400),
       jsonb_build_object('g', g, 'even', g % 2 = 0), g / 3.0, make_interval(secs => g)
  FROM generate_series(1, 5000) g;
CREATE TABLE {s}.users (email text PRIMARY KEY, name text);
INSERT INTO {s}.users SELECT 'user' || g || '@example.test', 'User ' || g FROM generate_series(1, 300) g;
CREATE TABLE {s}.events (at timestamptz, what text);
INSERT INTO {s}.events SELECT timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour', 'e' || g
  FROM generate_series(1, 200) g;
"""


@pytest.fixture(scope="module")
def clusters(pg_pair: tuple[PostgresCluster, PostgresCluster]) -> tuple[PostgresCluster, PostgresCluster]:
    primary, backup = pg_pair
    # the backup's sessions default to another time zone and date style: checksums must not care
    backup.sql("ALTER DATABASE postgres SET timezone TO 'Asia/Tokyo'; "
               "ALTER DATABASE postgres SET datestyle TO 'SQL, DMY';")
    return primary, backup


@pytest.fixture
def schema(clusters: tuple[PostgresCluster, PostgresCluster]) -> Iterator[str]:
    """A schema with the same three tables and rows on both clusters."""
    name = f"verify_{next(_schemas)}"
    for c in clusters:
        c.sql(SCHEMA_SQL.format(s=name))
    yield name
    for c in clusters:
        c.sql(f"DROP SCHEMA {name} CASCADE")


def pg_target(clusters: tuple[PostgresCluster, PostgresCluster], schema: str, secret: Path, *,
              primary_port: int | None = None, **extra: Any) -> dict[str, Any]:
    primary, backup = clusters
    if primary_port is None:
        p_site: dict[str, Any] = {"host": "app1", "conninfo": primary.conninfo()}
    else:  # a database nobody answers for, reached directly
        p_site = {"conninfo": f"host=127.0.0.1 port={primary_port} user=postgres dbname=postgres",
                  "connect_timeout": 2}
    return {"kind": "postgres", "name": "db", "schemas": [schema],
            "sites": {"dc1": p_site,
                      "dc2": {"conninfo": backup.conninfo(tcp=True), "password_file": str(secret)}},
            **extra}


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    p = tmp_path / "backup.pw"
    p.write_text("backup-secret\n")
    p.chmod(0o600)
    return p


def pg_report(inv: Inventory, pool: SSHPool, state: Path, **kw: Any) -> PostgresReport:
    report = verify_service(inv, "svc", pool, state, **kw)
    (t,) = report.targets
    assert isinstance(t, PostgresReport)
    return t


def setup(tmp_path: Path, sshd: SshServer, clusters: tuple[PostgresCluster, PostgresCluster], schema: str,
          secret: Path, **extra: Any) -> Inventory:
    return make_inventory(tmp_path, sshd, [pg_target(clusters, schema, secret, **extra)])


def test_identical_tables_pass(tmp_path: Path, sshd: SshServer, clusters: tuple[PostgresCluster, PostgresCluster],
                               schema: str, secret: Path, make_pool: MakePool) -> None:
    inv = setup(tmp_path, sshd, clusters, schema, secret)
    t = pg_report(inv, make_pool(inv), tmp_path / "state")
    assert t.ok, t.lines(None)
    assert [(d.name, d.reference.rows if d.reference else None) for d in t.tables] == [
        (f"{schema}.events", 200), (f"{schema}.orders", 5000), (f"{schema}.users", 300)]


def test_changed_row_is_narrowed_to_its_key(tmp_path: Path, sshd: SshServer,
                                            clusters: tuple[PostgresCluster, PostgresCluster], schema: str,
                                            secret: Path, make_pool: MakePool) -> None:
    clusters[1].sql(f"UPDATE {schema}.orders SET amount = amount + 0.01 WHERE id = 4242")
    inv = setup(tmp_path, sshd, clusters, schema, secret, bucket_size=500)
    t = pg_report(inv, make_pool(inv), tmp_path / "state")
    bad = [d for d in t.tables if not d.ok]
    assert [d.name for d in bad] == [f"{schema}.orders"]
    d = bad[0]
    assert d.status == "differs" and d.ranges == [(4000, 4500)]
    assert (d.changed_keys, d.missing_keys, d.extra_keys) == (["4242"], [], [])
    assert "id=4242" in d.describe() and "4000..4499" in d.describe()


def test_missing_row_is_named(tmp_path: Path, sshd: SshServer, clusters: tuple[PostgresCluster, PostgresCluster],
                              schema: str, secret: Path, make_pool: MakePool) -> None:
    clusters[1].sql(f"DELETE FROM {schema}.orders WHERE id = 17")
    inv = setup(tmp_path, sshd, clusters, schema, secret)
    t = pg_report(inv, make_pool(inv), tmp_path / "state")
    (d,) = [d for d in t.tables if not d.ok]
    assert d.reference is not None and d.backup is not None
    assert (d.reference.rows, d.backup.rows) == (5000, 4999)
    assert (d.missing_keys, d.extra_keys, d.changed_keys) == (["17"], [], [])
    assert d.ranges == [(0, 1000)]


def test_text_key_uses_hash_buckets(tmp_path: Path, sshd: SshServer,
                                    clusters: tuple[PostgresCluster, PostgresCluster], schema: str, secret: Path,
                                    make_pool: MakePool) -> None:
    clusters[1].sql(f"INSERT INTO {schema}.users VALUES ('mallory@example.test', 'Mallory');"
                    f"UPDATE {schema}.users SET name = 'Changed' WHERE email = 'user7@example.test'")
    inv = setup(tmp_path, sshd, clusters, schema, secret)
    t = pg_report(inv, make_pool(inv), tmp_path / "state")
    (d,) = [d for d in t.tables if not d.ok]
    assert d.name == f"{schema}.users" and d.hash_buckets and not d.ranges
    assert d.extra_keys == ["mallory@example.test"] and d.changed_keys == ["user7@example.test"]


def test_table_without_key_is_reported_not_narrowed(tmp_path: Path, sshd: SshServer,
                                                    clusters: tuple[PostgresCluster, PostgresCluster], schema: str,
                                                    secret: Path, make_pool: MakePool) -> None:
    clusters[1].sql(f"DELETE FROM {schema}.events WHERE what = 'e5'")
    inv = setup(tmp_path, sshd, clusters, schema, secret)
    (d,) = [d for d in pg_report(inv, make_pool(inv), tmp_path / "state").tables if not d.ok]
    assert d.name == f"{schema}.events" and "no single-column primary key" in d.note


def test_explicit_key_and_missing_table(tmp_path: Path, sshd: SshServer,
                                        clusters: tuple[PostgresCluster, PostgresCluster], schema: str,
                                        secret: Path, make_pool: MakePool) -> None:
    clusters[1].sql(f"DROP TABLE {schema}.users; DELETE FROM {schema}.events WHERE what = 'e9'")
    inv = setup(tmp_path, sshd, clusters, schema, secret,
                tables=[f"{schema}.users", {"name": f"{schema}.events", "key": "what"}])
    t = pg_report(inv, make_pool(inv), tmp_path / "state")
    status = {d.name: d for d in t.tables}
    assert status[f"{schema}.users"].status == "missing_on_backup"
    assert status[f"{schema}.events"].missing_keys == ["e9"]


def test_a_listed_table_found_on_neither_side_is_reported(tmp_path: Path, sshd: SshServer,
                                                          clusters: tuple[PostgresCluster, PostgresCluster],
                                                          schema: str, secret: Path, make_pool: MakePool) -> None:
    inv = setup(tmp_path, sshd, clusters, schema, secret, tables=[f"{schema}.users", f"{schema}.ordres"])
    report = verify_service(inv, "svc", make_pool(inv), tmp_path / "state")
    assert not report.ok
    (typo,) = [d for t in report.targets for d in getattr(t, "tables", []) if not d.ok]
    assert typo.name == f"{schema}.ordres" and typo.status == "missing_on_both"
    assert "exists on neither side" in typo.describe()


def test_primary_down_compares_with_baseline(tmp_path: Path, sshd: SshServer,
                                             clusters: tuple[PostgresCluster, PostgresCluster], schema: str,
                                             secret: Path, make_pool: MakePool) -> None:
    state = tmp_path / "state"
    inv = setup(tmp_path, sshd, clusters, schema, secret)
    recorded = verify_service(inv, "svc", make_pool(inv), state, record_baseline=True)
    assert recorded.ok and recorded.baselines_recorded
    clusters[1].sql(f"DELETE FROM {schema}.orders WHERE id = 99")
    down = make_inventory(tmp_path, sshd, [pg_target(clusters, schema, secret, primary_port=free_port())])
    t = pg_report(down, make_pool(down), state)
    assert t.reference == "baseline" and t.baseline is not None
    assert [d.name for d in t.tables if not d.ok] == [f"{schema}.orders"]
    assert any("does not answer" in n for n in t.notes)


def test_primary_down_without_baseline(tmp_path: Path, sshd: SshServer,
                                       clusters: tuple[PostgresCluster, PostgresCluster], schema: str, secret: Path,
                                       make_pool: MakePool) -> None:
    down = make_inventory(tmp_path, sshd, [pg_target(clusters, schema, secret, primary_port=free_port())])
    with pytest.raises(DatabaseUnreachableError, match="no intact baseline"):
        verify_service(down, "svc", make_pool(down), tmp_path / "state")


def test_password_from_env_over_ssh(tmp_path: Path, sshd: SshServer,
                                    clusters: tuple[PostgresCluster, PostgresCluster], schema: str,
                                    make_pool: MakePool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The backup reached with psql over SSH on TCP: the password goes as stdin's first line."""
    monkeypatch.setenv("DRCTL_TEST_PG_PASSWORD", "backup-secret")
    target = pg_target(clusters, schema, tmp_path / "unused")
    target["sites"]["dc2"] = {"host": "app2", "conninfo": clusters[1].conninfo(tcp=True),
                              "password_env": "DRCTL_TEST_PG_PASSWORD"}
    inv = make_inventory(tmp_path, sshd, [target])
    assert pg_report(inv, make_pool(inv), tmp_path / "state").ok
    monkeypatch.setenv("DRCTL_TEST_PG_PASSWORD", "wrong")
    with pytest.raises(DatabaseError, match="password authentication failed") as exc:
        verify_service(inv, "svc", make_pool(inv), tmp_path / "state")
    assert not isinstance(exc.value, DatabaseUnreachableError)
    assert "wrong" not in exc.value.message
    monkeypatch.delenv("DRCTL_TEST_PG_PASSWORD")
    with pytest.raises(ConfigError, match="DRCTL_TEST_PG_PASSWORD"):
        verify_service(inv, "svc", make_pool(inv), tmp_path / "state")


def test_inline_passwords_are_refused() -> None:
    for conninfo in ("host=db password=hunter2", "postgresql://app:hunter2@db/app",
                     "postgresql://db/app?password=hunter2"):
        with pytest.raises(ValidationError, match="must not hold a password"):
            PostgresSite.model_validate({"conninfo": conninfo})
    PostgresSite.model_validate({"conninfo": "postgresql://app@db/app", "password_env": "PGPW"})
