"""The PostgreSQL failover driver against real streaming replication: a PostgreSQL 15 primary and
a hot standby made from it with ``pg_basebackup -R``, both on 127.0.0.1, TCP logins with a
password (scram-sha-256). The old primary is re-attached through a command runner that runs
commands as the ``postgres`` user: on this machine through ``runuser``, and once over SSH (a lab
sshd on 127.0.0.1), the way drctl reaches a database host."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from drctl.drivers import pg_replication as pgr
from drctl.drivers.integrity import verify_postgres
from drctl.drivers.pg_replication import (
    PgEndpoint,
    ReattachConfig,
    failback_plan,
    failover_plan,
    fence_primary,
    integrity_site,
    lag_from,
    local_runner,
    observe,
    promote,
    prove_writable,
    psql_argv,
    reattach_as_standby,
    reattach_commands,
    replica_status,
    rpo_verdict,
    run_sql,
    ssh_runner,
    wait_replayed,
    writable_primaries,
)
from drctl.drivers.ssh import SSHPool
from drctl.errors import AbortedError, ConfigError, DatabaseError, DatabaseUnreachableError
from drctl.lab.postgres import REPLICATION_SETTINGS, PostgresCluster, cluster_base_dir, missing_postgres, postgres_env
from drctl.lab.servers import SshServer, free_port
from drctl.model.integrity import PostgresTarget
from tests.drivers.conftest import host_for

pytestmark = pytest.mark.servers

PASSWORD = "s3cr3t-Repl:1ca'tion"  # a ':' and a quote: escaped in pgpass, never quoted into SQL
PW_ENV = "DRCTL_TEST_PG_PASSWORD"
CONNECT_TIMEOUT = 2


class Pair:
    """A primary and its streaming hot standby, with endpoints for the driver."""

    def __init__(self, base: Path, template: PostgresCluster, tag: str) -> None:
        self.primary = _from_template(base / f"{tag}-p", template, f"{tag}-p")
        self.standby = PostgresCluster(base / f"{tag}-s", name=f"{tag}-s", password=PASSWORD,
                                       settings=REPLICATION_SETTINGS)
        try:
            self.standby.clone_from(self.primary)
            self.standby.start()
        except BaseException:
            self.stop()
            raise
        self.p = endpoint(self.primary)
        self.s = endpoint(self.standby)

    def stop(self) -> list[str]:
        for c in (self.standby, self.primary):
            c.stop()
        return [c.name for c in (self.standby, self.primary) if c.postmaster_pid() is not None]


def endpoint(c: PostgresCluster, **kw: Any) -> PgEndpoint:
    fields: dict[str, Any] = {"password_env": PW_ENV, "connect_timeout": CONNECT_TIMEOUT, "name": c.name, **kw}
    return PgEndpoint("127.0.0.1", c.port, **fields)


def _from_template(dir: Path, template: PostgresCluster, name: str) -> PostgresCluster:
    dir.mkdir(parents=True)
    subprocess.run(["cp", "-a", str(template.data), str(dir / "data")], check=True)
    c = PostgresCluster(dir, name=name, password=PASSWORD, settings=REPLICATION_SETTINGS)
    c.start()
    return c


@pytest.fixture(scope="module")
def pg_base() -> Iterator[tuple[Path, PostgresCluster]]:
    """A directory for the module's clusters and one initdb'd (never started) template."""
    missing = missing_postgres()
    if missing:
        pytest.fail(f"missing for PostgreSQL tests: {', '.join(missing)}; run `make deps`", pytrace=False)
    base = cluster_base_dir("drctl-pgrepl-")
    template = PostgresCluster(base / "template", name="template", password=PASSWORD, settings=REPLICATION_SETTINGS)
    template.init()
    try:
        yield base, template
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(autouse=True)
def _password_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PW_ENV, PASSWORD)
    monkeypatch.delenv("PGPASSWORD", raising=False)


@pytest.fixture(scope="module")
def pair(pg_base: tuple[Path, PostgresCluster]) -> Iterator[Pair]:
    """A pair shared by the tests that leave the roles as they found them."""
    pr = Pair(pg_base[0], pg_base[1], "shared")
    try:
        yield pr
    finally:
        left = pr.stop()
        assert not left, f"still running after stop: {left}"


@pytest.fixture
def fresh_pair(pg_base: tuple[Path, PostgresCluster], request: pytest.FixtureRequest) -> Iterator[Pair]:
    """A pair of its own, for a test that promotes, fences and re-attaches."""
    pr = Pair(pg_base[0], pg_base[1], request.node.name[5:20].strip("_"))
    try:
        yield pr
    finally:
        left = pr.stop()
        assert not left, f"still running after stop: {left}"


class Recorder:
    """A command runner that keeps every argv: by default as the postgres user on this machine
    (``runuser``), or any other (over SSH)."""

    def __init__(self, inner: pgr.Runner | None = None) -> None:
        self.inner = inner or local_runner(["runuser", "-u", "postgres", "--"], env=postgres_env())
        self.argvs: list[list[str]] = []

    def __call__(self, argv: Sequence[str], timeout: float) -> tuple[int, str, str]:
        self.argvs.append(list(argv))
        return self.inner(argv, timeout)


def reattach_config(c: PostgresCluster, **kw: Any) -> ReattachConfig:
    assert c.passfile is not None
    return ReattachConfig(datadir=str(c.data), bindir=str(c.bindir), port=c.port, name=c.name,
                          passfile=str(c.passfile), **kw)


def ids(ep: PgEndpoint, table: str = "public.orders") -> set[int]:
    rows = run_sql(ep, f"SELECT json_agg(id)::text FROM {table};", timeout=10)
    return set(rows[0] or [])


SYNC = "SET synchronous_commit = on; "  # the lab runs with it off: these commits are flushed when acknowledged


def current_lsn(ep: PgEndpoint) -> str:
    return str(run_sql(ep, "SELECT to_json(pg_current_wal_lsn()::text)::text;", timeout=10)[0])


def until(check: Callable[[], bool], timeout: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# --- lag and the RPO gate -----------------------------------------------------------------------


def test_lag_in_bytes_and_seconds_is_measured_and_gated_by_the_rpo(pair: Pair) -> None:
    pair.primary.sql(SYNC + "CREATE TABLE lag_t (id int PRIMARY KEY, at timestamptz DEFAULT now()); "
                     "INSERT INTO lag_t (id) VALUES (1);")
    wait_replayed(pair.s, current_lsn(pair.p), timeout=10)
    caught_up = replica_status(pair.s, pair.p)
    assert caught_up.in_recovery and caught_up.receiver_status == "streaming"
    assert (caught_up.replay_lag_bytes, caught_up.replay_lag_s) == (0, 0.0)
    assert caught_up.upstream == f"127.0.0.1:{pair.primary.port}" and caught_up.timeline == 1
    assert rpo_verdict(caught_up, 5)[0]

    pair.standby.sql("SELECT pg_wal_replay_pause();")
    try:
        time.sleep(1.2)  # the last transaction the standby replays is now >= 1.2 s old
        pair.primary.sql(SYNC + "INSERT INTO lag_t (id) SELECT g FROM generate_series(2, 2000) g;")
        target = pgr.parse_lsn(current_lsn(pair.p))
        until(lambda: pgr.parse_lsn(replica_status(pair.s).receive_lsn or "0/0") >= target, what="WAL received")
        behind = replica_status(pair.s, pair.p)
        assert behind.replay_paused and behind.primary_lsn is not None
        assert behind.replay_lag_bytes is not None and behind.replay_lag_bytes >= 2000 * 30
        assert behind.replay_lag_s is not None and 1.2 <= behind.replay_lag_s < 30
        ok, detail = rpo_verdict(behind, 0.5)
        assert not ok and "over the rpo of 0.5s" in detail and "replay is paused" in detail
        ok, detail = rpo_verdict(behind, 60)
        assert ok and "bytes behind the primary" in detail
        # without the primary, the standby measures against the WAL it received
        alone = replica_status(pair.s)
        assert alone.primary_lsn is None and alone.replay_lag_bytes and alone.replay_lag_bytes > 0
        assert "the WAL it received" in rpo_verdict(alone, 60)[1]
    finally:
        pair.standby.sql("SELECT pg_wal_replay_resume();")
    wait_replayed(pair.s, current_lsn(pair.p), timeout=10)
    assert replica_status(pair.s, pair.p).replay_lag_bytes == 0
    assert pair.standby.sql("SELECT count(*) FROM lag_t").strip() == "2000"


def test_rpo_verdict_refuses_what_it_cannot_tell() -> None:
    row = {"in_recovery": True, "receive_lsn": "0/3000100", "replay_lsn": "0/3000000", "now": 1000.0,
           "replay_ts": None, "receiver": {"status": "streaming", "tli": 1, "host": "10.0.0.1", "port": 5432,
                                           "last_msg": 999.5}}
    unknown = lag_from("s", row, None)
    assert unknown.replay_lag_bytes == 0x100 and unknown.replay_lag_s is None
    assert rpo_verdict(unknown, 60) == (False, "s: replay lag unknown (nothing replayed yet; 256 bytes behind the "
                                               "WAL it received)")
    fine = lag_from("s", {**row, "replay_ts": 990.0}, "0/3000200")
    assert (fine.replay_lag_bytes, fine.replay_lag_s, fine.upstream) == (0x200, 10.0, "10.0.0.1:5432")
    assert rpo_verdict(fine, None)[0] and rpo_verdict(fine, 10)[0] and not rpo_verdict(fine, 9.9)[0]
    promoted = lag_from("s", {**row, "in_recovery": False, "walfile": "000000020000000000000003"}, None)
    assert promoted.timeline == 2 and not rpo_verdict(promoted, 60)[0]
    assert "not a standby" in rpo_verdict(promoted, 60)[1]


# --- waiting: bounded and cancellable -------------------------------------------------------------


def test_wait_replayed_times_out_and_stops_on_cancel_within_a_second(pair: Pair) -> None:
    pair.primary.sql(SYNC + "CREATE TABLE IF NOT EXISTS wait_t (id int); INSERT INTO wait_t VALUES (1);")
    wait_replayed(pair.s, current_lsn(pair.p), timeout=10)
    pair.standby.sql("SELECT pg_wal_replay_pause();")
    try:
        pair.primary.sql(SYNC + "INSERT INTO wait_t VALUES (2);")
        target = current_lsn(pair.p)
        until(lambda: replica_status(pair.s).replay_paused, what="replay paused")
        t0 = time.monotonic()
        with pytest.raises(DatabaseError, match="did not replay up to .* within 1s .*replay is paused"):
            wait_replayed(pair.s, target, timeout=1)
        assert time.monotonic() - t0 < 2.5

        cancel = threading.Event()
        threading.Timer(0.3, cancel.set).start()
        t0 = time.monotonic()
        with pytest.raises(AbortedError):
            wait_replayed(pair.s, target, timeout=60, cancel=cancel)
        assert time.monotonic() - t0 < 1.3

        # a standby that hangs (SIGSTOP: connections are accepted, nothing answers) mid-call
        slow = endpoint(pair.standby, connect_timeout=10)
        pair.standby.pause()
        try:
            cancel = threading.Event()
            threading.Timer(0.3, cancel.set).start()
            t0 = time.monotonic()
            with pytest.raises(AbortedError):
                wait_replayed(slow, target, timeout=60, cancel=cancel)
            assert time.monotonic() - t0 < 1.3
        finally:
            pair.standby.resume()
    finally:
        pair.standby.sql("SELECT pg_wal_replay_resume();")
    assert wait_replayed(pair.s, target, timeout=10).replay_lsn


# --- credentials ---------------------------------------------------------------------------------


def test_credentials_from_env_file_or_pgpass_never_in_argv_or_errors(pair: Pair, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    launched: list[tuple[list[str], dict[str, str]]] = []
    real_popen = subprocess.Popen

    def recording_popen(argv: list[str], **kw: Any) -> Any:
        launched.append((list(argv), dict(kw.get("env") or {})))
        return real_popen(argv, **kw)

    monkeypatch.setattr(pgr.subprocess, "Popen", recording_popen)
    who = "SELECT to_json(current_user)::text;"

    # from the environment
    assert run_sql(pair.p, who, timeout=10) == ["postgres"]
    # from a file (its first line)
    pw_file = tmp_path / "pg.pw"
    pw_file.write_text(PASSWORD + "\nnot this line\n")
    pw_file.chmod(0o600)
    by_file = PgEndpoint("127.0.0.1", pair.primary.port, password_file=pw_file, connect_timeout=CONNECT_TIMEOUT)
    assert run_sql(by_file, who, timeout=10) == ["postgres"]
    # from a pgpass file (libpq reads it; drctl never sees the password)
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{pair.primary.port}:*:postgres:{PASSWORD.replace(':', chr(92) + ':')}\n")
    passfile.chmod(0o600)
    by_pgpass = PgEndpoint("127.0.0.1", pair.primary.port, passfile=passfile, connect_timeout=CONNECT_TIMEOUT)
    assert run_sql(by_pgpass, who, timeout=10) == ["postgres"]
    assert observe({"p": by_pgpass, "s": endpoint(pair.standby)})["p"].role == "primary"

    assert len(launched) >= 4
    for argv, _env in launched:
        assert not any(PASSWORD in a for a in argv), argv
        assert "password" not in " ".join(argv).lower()
    assert [env.get("PGPASSWORD") for _argv, env in launched[:3]] == [PASSWORD, PASSWORD, None]

    # a wrong password: refused, and the message does not repeat it
    monkeypatch.setenv(PW_ENV, "Wr0ng-Pa55word")
    with pytest.raises(DatabaseError) as e:
        run_sql(pair.p, who, timeout=10)
    assert not isinstance(e.value, DatabaseUnreachableError)
    assert "password authentication failed" in e.value.message and "Wr0ng-Pa55word" not in str(e.value)
    state = observe({"p": pair.p})["p"]
    assert state.role == "unknown" and state.error and "Wr0ng" not in state.error
    with pytest.raises(DatabaseError) as e:  # fencing raises for this (it is no "does not answer")
        fence_primary(pair.p)
    assert "Wr0ng" not in str(e.value)
    monkeypatch.delenv(PW_ENV)
    with pytest.raises(ConfigError, match=f"{PW_ENV} .* is not set"):
        run_sql(pair.p, who, timeout=10)
    with pytest.raises(ConfigError, match="at most one"):
        PgEndpoint("h", password_env="X", password_file=pw_file)

    # what else is built from an endpoint holds no password either
    site = integrity_site(by_file)
    cfg = reattach_config(pair.primary)
    built = [repr(by_file), repr(site), " ".join(psql_argv(by_file)),
             *(" ".join(a) for a in reattach_commands(cfg, by_file, 30).values())]
    assert all(PASSWORD not in b for b in built)


# --- planned switchover, failback, and back --------------------------------------------------------


class Writer(threading.Thread):
    """Inserts rows one by one (each its own session and commit) until stopped; remembers which
    commits the server acknowledged."""

    def __init__(self, ep: PgEndpoint) -> None:
        super().__init__(daemon=True)
        self.ep = ep
        self.stop_event = threading.Event()
        self.committed: list[int] = []
        self.refused: list[str] = []

    def run(self) -> None:
        n = 0
        while not self.stop_event.is_set():
            n += 1
            try:
                run_sql(self.ep, f"INSERT INTO public.orders (id, note) VALUES ({n}, 'order {n}');", timeout=10)
                self.committed.append(n)
            except DatabaseError as e:
                self.refused.append(e.message)
                time.sleep(0.02)


def sums_match(tmp_path: Path, reference: PgEndpoint, backup: PgEndpoint) -> bool:
    target = PostgresTarget.model_validate({"kind": "postgres", "name": "db", "schemas": ["public"],
                                            "sites": {"a": integrity_site(reference), "b": integrity_site(backup)}})
    report, _ = verify_postgres(target, service="db", pool=None, base_dir=tmp_path, state_dir=tmp_path / "state",
                                primary_site="a", backup_site="b")
    assert [d.name for d in report.tables] == ["public.orders"]
    return report.ok


def test_planned_switchover_loses_nothing_then_fails_back(fresh_pair: Pair, tmp_path: Path) -> None:
    pr = fresh_pair
    p, s = pr.p, pr.s
    pr.primary.sql("CREATE TABLE public.orders (id int PRIMARY KEY, note text);")
    writer = Writer(p)
    # an open read-write transaction: the fence must end it, and its row must never appear
    open_tx = subprocess.Popen(
        ["psql", "-X", "-q", "-d", pr.primary.conninfo(), "-c",
         "BEGIN; INSERT INTO public.orders VALUES (-1, 'never committed'); SELECT pg_sleep(60); COMMIT;"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    writer.start()
    try:
        until(lambda: pr.primary.sql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%never committed%' "
                                     "AND pid <> pg_backend_pid()").strip() == "1", what="the open transaction")
        until(lambda: len(writer.committed) >= 5, what="rows written")
        t0 = time.monotonic()
        fence = fence_primary(p)
        fence_s = time.monotonic() - t0
        assert fence.fenced and fence.reachable and fence.final_lsn and fence.timeline == 1, fence
        assert fence.sessions_terminated >= 1 and fence.sessions_left == 0
        assert open_tx.wait(10) != 0
        with pytest.raises(DatabaseError, match="read-only transaction"):
            run_sql(p, "INSERT INTO public.orders VALUES (0, 'after the fence');", timeout=10)
        until(lambda: len(writer.refused) >= 2, what="the writer to be refused")
    finally:
        writer.stop_event.set()
        writer.join(15)
        if open_tx.poll() is None:
            open_tx.kill()
    assert fence_primary(p).fenced  # idempotent

    replayed = wait_replayed(s, fence.final_lsn, timeout=30)
    t0 = time.monotonic()
    promoted = promote(s)
    promote_s = time.monotonic() - t0
    assert promoted.promoted and not promoted.already_primary and promoted.timeline == 2
    assert promote(s).already_primary
    proof = prove_writable(s)
    assert proof.table == "drctl.failover_probe" and proof.row_id >= 1

    # nothing committed was lost, and nothing uncommitted appeared
    on_new, on_old = ids(s), ids(p)
    assert set(writer.committed) <= on_new and on_new == on_old and -1 not in on_new
    assert len(writer.committed) >= 5
    assert sums_match(tmp_path, p, s)  # the integrity driver's table checksums, old against promoted

    states = observe({"p": p, "s": s})
    assert (states["p"].role, states["p"].read_only, states["s"].role) == ("primary", True, "primary")
    assert writable_primaries(states) == ["s"]

    # failback: the old primary first becomes a standby of the new one
    assert [st.kind for st in failback_plan("p", "s")][:1] == ["reattach"]
    run = Recorder()
    t0 = time.monotonic()
    back = reattach_as_standby(reattach_config(pr.primary), s, run, old_endpoint=p, timeout=120)
    reattach_s = time.monotonic() - t0
    assert back.streaming and back.timeline == 2 and back.was_running, back
    assert back.rewound == (back.diverged_at is not None)
    assert any("pg_rewind" in " ".join(a) for a in run.argvs)
    run_sql(s, SYNC + "INSERT INTO public.orders VALUES (100000, 'written on the new primary');", timeout=10)
    wait_replayed(p, current_lsn(s), timeout=30)
    assert 100000 in ids(p)
    again = reattach_as_standby(reattach_config(pr.primary), s, run, old_endpoint=p, timeout=60)
    assert again.already_attached

    # and back: fence the new primary, promote the old one (its read-only fence is reset)
    fence2 = fence_primary(s)
    assert fence2.fenced
    wait_replayed(p, fence2.final_lsn, timeout=30)
    home = promote(p)
    assert home.promoted and home.fence_cleared and home.timeline == 3, home
    prove_writable(p)
    run_sql(p, SYNC + "INSERT INTO public.orders VALUES (100001, 'home again');", timeout=10)
    away = reattach_as_standby(reattach_config(pr.standby), p, run, old_endpoint=s, timeout=120)
    assert away.streaming
    wait_replayed(s, current_lsn(p), timeout=30)
    states = observe({"p": p, "s": s})
    assert (states["p"].role, states["s"].role, states["s"].upstream) == (
        "primary", "standby", f"127.0.0.1:{pr.primary.port}")
    assert writable_primaries(states) == ["p"]
    assert ids(p) == ids(s) and {100000, 100001} <= ids(p)
    assert fence_s < 5 and promote_s < 10 and reattach_s < 30, (fence_s, promote_s, reattach_s)
    assert replayed.waited_s < 10


# --- disaster: the primary hangs; promote anyway, then rewind it ----------------------------------


def test_disaster_hung_primary_is_not_fenced_promotion_goes_on_and_it_is_rewound(
        fresh_pair: Pair, tmp_path: Path, sshd: SshServer, make_pool: Callable[..., SSHPool]) -> None:
    pr = fresh_pair
    p, s = pr.p, pr.s
    pr.primary.sql(SYNC + "CREATE TABLE public.orders (id int PRIMARY KEY, note text); "
                   "INSERT INTO public.orders SELECT g, 'order ' || g FROM generate_series(1, 50) g;")
    wait_replayed(s, current_lsn(p), timeout=10)

    pr.primary.pause()  # SIGSTOP: its port takes connections, nothing answers
    try:
        t0 = time.monotonic()
        status = replica_status(s, p)
        assert time.monotonic() - t0 < CONNECT_TIMEOUT + 2
        assert status.primary_lsn is None and status.primary_error and "timeout" in status.primary_error
        ok, detail = rpo_verdict(status, 60)
        assert ok and "the primary's LSN unknown" in detail

        t0 = time.monotonic()
        fence = fence_primary(p, timeout=30)
        fence_s = time.monotonic() - t0
        assert not fence.fenced and not fence.reachable and fence.detail.startswith("NOT fenced"), fence
        assert fence_s < CONNECT_TIMEOUT + 2

        promoted = promote(s)
        assert promoted.promoted and promoted.timeline == 2
        prove_writable(s)
        states = observe({"p": p, "s": s}, timeout=10)
        assert (states["p"].role, states["s"].role) == ("down", "primary")
    finally:
        pr.primary.resume()

    # the old primary comes back unfenced and takes a write: a split brain, timelines diverge
    run_sql(p, SYNC + "INSERT INTO public.orders VALUES (-7, 'written on the old primary after the failover');",
            timeout=10)
    run_sql(s, SYNC + "INSERT INTO public.orders VALUES (51, 'written on the new primary');", timeout=10)
    assert writable_primaries(observe({"p": p, "s": s})) == ["p", "s"]
    assert fence_primary(p).fenced

    # this time over SSH, as the SSH user would on the database host: commands via runuser
    run = Recorder(ssh_runner(make_pool({"db1": host_for(sshd)}), "db1"))
    cfg = reattach_config(pr.primary, command_prefix=("runuser", "-u", "postgres", "--"))
    back = reattach_as_standby(cfg, s, run, old_endpoint=p, timeout=120)
    assert back.rewound and back.diverged_at is not None and back.streaming, back
    assert "servers diverged at WAL location" in back.rewind_output
    assert any(a[-2:] == ["-o", f"-p {pr.primary.port}"] for a in run.argvs)  # pg_ctl start -o "-p PORT"
    wait_replayed(p, current_lsn(s), timeout=30)
    assert ids(p) == ids(s) == set(range(1, 52))  # the split-brain row is gone with the rewind
    assert sums_match(tmp_path, s, p)
    states = observe({"p": p, "s": s})
    assert (states["p"].role, states["p"].upstream, states["p"].timeline) == (
        "standby", f"127.0.0.1:{pr.standby.port}", 2)


def test_refused_port_is_down_and_not_fenced_at_once() -> None:
    nobody = PgEndpoint("127.0.0.1", free_port(), password_env=PW_ENV, connect_timeout=CONNECT_TIMEOUT, name="gone")
    t0 = time.monotonic()
    fence = fence_primary(nobody)
    assert not fence.fenced and not fence.reachable and "does not answer" in fence.detail
    assert observe({"gone": nobody})["gone"].role == "down"
    with pytest.raises(DatabaseUnreachableError):
        replica_status(nobody)
    assert time.monotonic() - t0 < 2


def test_plans_say_what_happens() -> None:
    planned = [(st.kind, st.target) for st in failover_plan("dc1-db", "dc2-db", rpo_s=30)]
    assert planned == [("check_rpo", "dc2-db"), ("fence_primary", "dc1-db"), ("wait_replayed", "dc2-db"),
                       ("promote", "dc2-db"), ("prove_writable", "dc2-db"), ("verify_integrity", "dc2-db")]
    disaster = failover_plan("dc1-db", "dc2-db", rpo_s=None, disaster=True)
    assert "NOT fenced" in disaster[1].what and "wait_replayed" not in [st.kind for st in disaster]
    back = failback_plan("dc1-db", "dc2-db")
    assert back[0].kind == "reattach" and back[0].target == "dc1-db" and "pg_rewind" in back[0].what
    assert [st.kind for st in back].index("promote") > [st.kind for st in back].index("wait_replayed")
