"""The store seam, against both backends: the state directory and a real 3-member etcd cluster.

The same tests run against ``open_state(None, dir)`` (JSONL + flock) and ``open_state("etcd://...")``
(each test under a prefix of its own): journals append, read back and count on across writers,
never hold a secret; locks are all-or-nothing, name their holder, free themselves when the
holding process is killed, and of two control nodes asking at the same moment exactly one gets
them. Then what only etcd does: two writers of one journal cannot interleave, a lost lease stops
appends and tells the run, a member that stops answering is noticed before the lease expires,
the baselines' index, and user/password authentication whose password is never printed.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from drctl.engine.store import State, new_run_id, open_state
from drctl.errors import LockHeldError, LockLostError, RunNotFoundError, StateStoreError, UsageError
from drctl.lab.servers import EtcdCluster

TTL = 2  # seconds: the shortest lease the spec allows, so that expiry tests stay quick


@dataclass
class Backend:
    kind: str  # dir | etcd
    dir: Path
    spec: str | None

    def open(self, state_dir: Path | None = None) -> State:
        """Another control node's view of the same state (its own connections, its own directory)."""
        return open_state(self.spec, state_dir or self.dir)


@pytest.fixture(params=["dir", "etcd"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "dir":
        yield Backend("dir", tmp_path / "state", None)
        return
    cluster: EtcdCluster = request.getfixturevalue("etcd_cluster")
    yield Backend("etcd", tmp_path / "state", cluster.spec(prefix=f"/t{secrets.token_hex(4)}", ttl=TTL))


@pytest.fixture
def etcd_backend(etcd_cluster: EtcdCluster, tmp_path: Path) -> Backend:
    return Backend("etcd", tmp_path / "state", etcd_cluster.spec(prefix=f"/t{secrets.token_hex(4)}", ttl=TTL))


# --- the journal -----------------------------------------------------------------------------------


def test_journal_appends_reads_back_and_counts_on_after_a_reopen(backend: Backend) -> None:
    st = backend.open()
    run_id = new_run_id("failover")
    st.runs.append(run_id, {"event": "run_started", "x": 1})
    st.runs.append(run_id, {"event": "action_started", "action": "a", "detail": "naïve → ünïcode"})
    st.close()
    again = backend.open()
    rec = again.runs.append(run_id, {"event": "action_finished", "action": "a", "status": "ok"})
    assert rec["seq"] == 3 and rec["run_id"] == run_id
    recs = again.runs.read(run_id)
    assert [r["event"] for r in recs] == ["run_started", "action_started", "action_finished"]
    assert [r["seq"] for r in recs] == [1, 2, 3] and recs[1]["detail"] == "naïve → ünïcode"
    older = "20200101T000000Z-failback-abcdef"
    again.runs.append(older, {"event": "run_started"})
    assert again.runs.list_runs() == [run_id, older]  # newest first
    again.close()


def test_unknown_runs_and_bad_ids(backend: Backend) -> None:
    st = backend.open()
    with pytest.raises(RunNotFoundError, match="no run"):
        st.runs.read("20260101T000000Z-failover-abcdef")
    for bad in ("../../etc/passwd", "20260101T000000Z-failover-abcdef/../x"):
        with pytest.raises(RunNotFoundError, match="not a run id"):
            st.runs.read(bad)
        with pytest.raises(RunNotFoundError, match="not a run id"):
            st.runs.append(bad, {"event": "run_started"})
    assert st.runs.list_runs() == []


def test_the_journal_never_holds_a_secret(backend: Backend) -> None:
    st = backend.open()
    run_id = new_run_id("failover")
    rec = st.runs.append(run_id, {"event": "action_finished", "detail": "GET http://mon:S3cr3tPW1@db/health: ok",
                                  "data": {"password": "S3cr3tPW1"}, "argv": ["psql", "postgresql://a:S3cr3tPW1@db/a"]})
    assert "S3cr3tPW1" not in json.dumps(rec)
    (back,) = backend.open().runs.read(run_id)
    assert "S3cr3tPW1" not in json.dumps(back) and back["data"]["password"] == "***"


# --- the locks -------------------------------------------------------------------------------------


def test_locks_are_all_or_nothing_name_their_holder_and_free_on_release(backend: Backend) -> None:
    a, b = backend.open(), backend.open()
    got = a.leases.acquire_all(["web", "db"], {"run_id": "20260101T000000Z-failover-aaaaaa", "user": "alice",
                                               "operation": "failover"})
    assert sorted(lease.name for lease in got) == ["db", "web"]
    with pytest.raises(LockHeldError) as err:
        b.leases.acquire_all(["api", "web"], {"run_id": "20260101T000000Z-failover-bbbbbb", "user": "bob"})
    msg = err.value.message
    assert "service web is locked by run 20260101T000000Z-failover-aaaaaa by alice@" in msg, msg
    assert f"pid {os.getpid()}" in msg and "failover" in msg, msg
    assert err.value.exit_code == 4
    # all or nothing: api was free, and is still free
    assert b.leases.held_by("api") is None
    assert b.leases.held_by("web") == "20260101T000000Z-failover-aaaaaa"
    holder = b.leases.holder("web")
    assert holder is not None and holder["user"] == "alice" and holder["pid"] == os.getpid()
    for lease in got:
        lease.release()
    assert b.leases.held_by("web") is None and b.leases.held_by("db") is None
    again = b.leases.acquire_all(["api", "web"], {"run_id": "20260101T000000Z-failover-bbbbbb", "user": "bob"})
    for lease in again:
        lease.renew()
        lease.release()
    a.close()
    b.close()


HOLD = """
import sys, time
from pathlib import Path
from drctl.engine.store import open_state
spec, state_dir = sys.argv[1] or None, Path(sys.argv[2])
st = open_state(spec, state_dir)
st.leases.acquire_all(["web"], {"run_id": "20260101T000000Z-failover-cccccc", "user": "carol"})
print("held", flush=True)
time.sleep(120)
"""


def test_a_killed_holder_frees_the_lock_within_its_lease(backend: Backend) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, backend.spec or "", str(backend.dir)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        st = backend.open()
        with pytest.raises(LockHeldError, match=f"run 20260101T000000Z-failover-cccccc by carol@.*pid {holder.pid}"):
            st.leases.acquire_all(["web"], {"run_id": "R2"})
    finally:
        holder.kill()
        holder.wait(timeout=10)
    killed = time.monotonic()
    while True:
        try:
            got = st.leases.acquire_all(["web"], {"run_id": "R3"})
            break
        except LockHeldError:
            assert time.monotonic() - killed < TTL + 3, "the killed holder's lock did not free itself"
            time.sleep(0.05)
    freed_after = time.monotonic() - killed
    for lease in got:
        lease.release()
    if backend.kind == "dir":
        assert freed_after < 1.0  # the kernel drops the flock with the process
    else:
        assert freed_after > TTL / 4  # the lease, not the release, freed it: etcd knew nothing of the kill
    print(f"{backend.kind}: lock of a killed holder free after {freed_after:.2f}s (ttl {TTL}s)")


RACE = """
import sys, time
from pathlib import Path
from drctl.engine.store import open_state
from drctl.errors import LockHeldError
spec, state_dir, me = sys.argv[1] or None, Path(sys.argv[2]), sys.argv[3]
start, rounds = float(sys.argv[4]), int(sys.argv[5])
st = open_state(spec, state_dir)
st.runs.list_runs()  # connections are open before the race
for i in range(rounds):
    while time.time() < start + i * 0.5:
        pass
    try:
        got = st.leases.acquire_all(["db", "web"], {"run_id": f"20260101T00000{i}Z-failover-{me}", "user": me})
    except LockHeldError as e:
        print(f"lost {i} {e.message}", flush=True)
        continue
    print(f"won {i}", flush=True)
    time.sleep(0.2)
    for lease in got:
        lease.release()
"""


def test_of_two_control_nodes_asking_at_the_same_moment_exactly_one_proceeds(backend: Backend) -> None:
    rounds = 5
    start = time.time() + 2.0
    # (the state directory is shared by both control nodes, as the README asks; etcd ignores it)
    procs = [subprocess.Popen([sys.executable, "-c", RACE, backend.spec or "", str(backend.dir), me, str(start),
                               str(rounds)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for me in ("aaaaaa", "bbbbbb")]
    outs = [p.communicate(timeout=60) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    lines = [line for out, _err in outs for line in out.splitlines()]
    for i in range(rounds):
        won = [line for line in lines if line == f"won {i}"]
        lost = [line for line in lines if line.startswith(f"lost {i} ")]
        assert len(won) == 1 and len(lost) == 1, lines
        assert "is locked by run 20260101T00000" in lost[0] and "pid " in lost[0], lost[0]


# --- etcd only -------------------------------------------------------------------------------------


def test_two_writers_of_one_journal_cannot_interleave(etcd_backend: Backend) -> None:
    a, b = etcd_backend.open(), etcd_backend.open()
    run_id = new_run_id("failover")
    a.runs.append(run_id, {"event": "run_started"})
    b.runs.append(run_id, {"event": "run_resumed"})  # B read the head: it appends after A's record
    with pytest.raises(StateStoreError, match="another writer appended to the journal") as err:
        a.runs.append(run_id, {"event": "action_started"})  # A's view is stale: refused, not interleaved
    assert err.value.exit_code == 9
    b.runs.append(run_id, {"event": "run_finished"})
    assert [(r["seq"], r["event"]) for r in a.runs.read(run_id)] == [(1, "run_started"), (2, "run_resumed"),
                                                                    (3, "run_finished")]
    # concurrent appends from many threads of one writer keep their order and count
    run2 = new_run_id("failover")
    threads = [threading.Thread(target=lambda i=i: a.runs.append(run2, {"event": "x", "i": i})) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r["seq"] for r in a.runs.read(run2)] == list(range(1, 21))
    assert sorted(r["i"] for r in a.runs.read(run2)) == list(range(20))


def test_a_record_larger_than_an_etcd_request_is_stored_in_parts(etcd_backend: Backend) -> None:
    st = etcd_backend.open()
    run_id = new_run_id("failover")
    plan = {"services": [{"service": f"svc{i:04d}", "actions": ["x" * 300] * 8} for i in range(800)]}
    assert len(json.dumps(plan)) > 1.5 * 1024 * 1024  # above etcd's default request limit
    st.runs.append(run_id, {"event": "run_started", "plan": plan})
    st.runs.append(run_id, {"event": "run_finished"})
    back = etcd_backend.open().runs.read(run_id)
    assert [r["event"] for r in back] == ["run_started", "run_finished"] and back[0]["plan"] == plan


def _revoke(cluster: EtcdCluster, lease_id: int) -> None:
    port = cluster.members[0].port
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v3/kv/lease/revoke", method="POST",
                                 data=json.dumps({"ID": str(lease_id)}).encode())
    with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
        resp.read()


def test_a_lease_that_expires_stops_the_journal_and_tells_the_run(etcd_cluster: EtcdCluster,
                                                                   etcd_backend: Backend) -> None:
    st = etcd_backend.open()
    lost: list[tuple[str, str]] = []
    run_id = new_run_id("failover")
    (lease,) = st.leases.acquire_all(["web"], {"run_id": run_id, "user": "alice"},
                                     on_lost=lambda name, why: lost.append((name, why)))
    st.runs.append(run_id, {"event": "run_started"})
    _revoke(etcd_cluster, lease._keeper.lease_id)  # as if it had expired
    deadline = time.monotonic() + TTL
    while not lost:
        assert time.monotonic() < deadline, "on_lost was not called"
        time.sleep(0.02)
    assert lost[0][0] == "web" and "expired" in lost[0][1]
    # another control node takes the lock; the old run may not write another record
    other = etcd_backend.open()
    other.leases.acquire_all(["web"], {"run_id": "20260101T000000Z-failover-dddddd", "user": "dave"})
    with pytest.raises(LockLostError, match="no longer held by this run.*held by run 20260101T000000Z-failover-dddddd"):
        st.runs.append(run_id, {"event": "action_started"})
    assert [r["event"] for r in other.runs.read(run_id)] == ["run_started"]
    lease.release()  # quiet: the lease is gone


def test_a_member_that_stops_answering_is_noticed_before_the_lease_expires(etcd_cluster: EtcdCluster,
                                                                          tmp_path: Path) -> None:
    """A control node whose only etcd member freezes: its run is told within ttl/2 (+ a renewal
    interval), while the lock is still there for everyone else: it stops before the lease expires."""
    member = etcd_cluster.members[2]
    prefix = f"/t{secrets.token_hex(4)}"
    lonely = open_state(etcd_cluster.spec([member.name], prefix=prefix, ttl=4), tmp_path / "a")
    others = open_state(etcd_cluster.spec([m.name for m in etcd_cluster.members[:2]], prefix=prefix), tmp_path / "b")
    lost = threading.Event()
    lonely.leases.acquire_all(["web"], {"run_id": "20260101T000000Z-failover-eeeeee", "user": "erin"},
                              on_lost=lambda name, why: lost.set())
    member.pause()
    paused = time.monotonic()
    try:
        assert lost.wait(4), "the lost connection was not noticed"
        noticed = time.monotonic() - paused
        assert others.leases.held_by("web") == "20260101T000000Z-failover-eeeeee"  # not expired yet
        with pytest.raises(StateStoreError, match="does not answer or has no quorum"):
            lonely.runs.append("20260101T000000Z-failover-eeeeee", {"event": "action_started"})
    finally:
        member.resume()
    assert noticed < 4 * 3 / 4, noticed  # ttl/2, plus at most one renewal interval
    print(f"frozen member noticed after {noticed:.2f}s (ttl 4s)")
    lonely.close()
    others.close()


def test_the_baselines_index_tells_of_newer_and_altered_baselines(etcd_backend: Backend, tmp_path: Path) -> None:
    from drctl.drivers.baseline import BaselineWriter, newest_baseline

    a = etcd_backend.open(tmp_path / "node-a")
    b = etcd_backend.open(tmp_path / "node-b")
    try:
        w = BaselineWriter(a.dir, "web", "site", kind="files", meta={"site": "dc1", "location": "app1:/srv"})
        w.add(b"F 1 x\n")
        path = w.commit()
        assert b.baselines is not None
        (entry,) = b.baselines.entries("web", "site")
        assert entry["file"] == path.name and entry["path"] == str(path.resolve()) and len(entry["sha256"]) == 64
        base, notes = newest_baseline(a.dir, "web", "site")
        assert base is not None and base.path == path and notes == []
        # control node B has none of its own: it learns where the newest is
        base, notes = newest_baseline(b.dir, "web", "site")
        assert base is None and any("on control node" in n and str(path.resolve()) in n for n in notes), notes
        # a copy altered since (its own checksum recomputed) does not match the index: skipped
        text = path.read_bytes().replace(b"F 1 x\n", b"F 1 y\n")
        import hashlib

        body = text[:text.rindex(b"#sha256 ")]
        path.write_bytes(body + b"#sha256 " + hashlib.sha256(body).hexdigest().encode() + b"\n")
        base, notes = newest_baseline(a.dir, "web", "site")
        assert base is None and any("differs from the one the baselines' index recorded" in n for n in notes), notes
    finally:
        a.close()
        b.close()


def test_user_and_password_auth_from_the_environment_never_printed(tmp_path: Path) -> None:
    from drctl.core.statespec import parse_state_spec
    from drctl.engine.store_etcd import open_etcd_state

    cluster = EtcdCluster(tmp_path / "auth", size=1)
    cluster.start()
    try:
        member = cluster.members[0]
        ctl = ["etcdctl", f"--endpoints=http://{member.endpoint}"]
        for cmd in (["user", "add", "root:Sup3rS3cret!"], ["user", "grant-role", "root", "root"], ["auth", "enable"]):
            subprocess.run([*ctl, *cmd], check=True, capture_output=True, timeout=20)
        spec = parse_state_spec(cluster.spec(prefix="/auth"))
        pw = tmp_path / "pw"
        pw.write_text("Sup3rS3cret!\n")
        st = open_etcd_state(spec, tmp_path / "s", {"DRCTL_ETCD_USER": "root", "DRCTL_ETCD_PASSWORD_FILE": str(pw)})
        run_id = new_run_id("failover")
        st.runs.append(run_id, {"event": "run_started"})
        assert [r["event"] for r in st.runs.read(run_id)] == ["run_started"]
        assert "Sup3rS3cret" not in repr(st.runs.cluster.creds)
        bad = open_etcd_state(spec, tmp_path / "s", {"DRCTL_ETCD_USER": "root", "DRCTL_ETCD_PASSWORD": "Wr0ngPassw0rd"})
        with pytest.raises(StateStoreError) as err:
            bad.runs.list_runs()
        assert "refused the user root" in err.value.message and "Wr0ngPassw0rd" not in str(err.value)
        anonymous = open_etcd_state(spec, tmp_path / "s", {})
        with pytest.raises(StateStoreError, match="refused"):
            anonymous.runs.read(run_id)
        with pytest.raises(UsageError, match="DRCTL_ETCD_USER is set without"):
            open_etcd_state(spec, tmp_path / "s", {"DRCTL_ETCD_USER": "root"})
        # through the CLI: the password reaches etcd, never the output
        env = {k: v for k, v in os.environ.items() if not k.startswith("DRCTL_")}
        env.update(DRCTL_STATE=str(spec), DRCTL_STATE_DIR=str(tmp_path / "s"), DRCTL_ETCD_USER="root",
                   DRCTL_ETCD_PASSWORD="Wr0ngPassw0rd", NO_COLOR="1")
        done = subprocess.run([sys.executable, "-m", "drctl", "--debug", "history"], capture_output=True, text=True,
                              env=env, timeout=60, check=False)
        assert done.returncode != 0 and "Wr0ngPassw0rd" not in done.stdout + done.stderr
        env["DRCTL_ETCD_PASSWORD"] = "Sup3rS3cret!"
        done = subprocess.run([sys.executable, "-m", "drctl", "history", "--json"], capture_output=True, text=True,
                              env=env, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert [r["run_id"] for r in json.loads(done.stdout)] == [run_id]
        assert "Sup3rS3cret" not in done.stdout + done.stderr
    finally:
        cluster.stop()


def _certificates(d: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl."""
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=30)

    ssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=drctl test CA")
    # (etcd's JSON gateway connects to its own gRPC port with the server certificate: clientAuth too)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth"),
                      ("client", "extendedKeyUsage=clientAuth")):
        (d / f"{name}.ext").write_text(ext + "\n")
        ssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=drctl {name}")
        ssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "1", "-extfile", f"{name}.ext")
    return {n: d / n for n in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")}


def test_tls_with_a_client_certificate_from_the_environment(tmp_path: Path) -> None:
    from drctl.core.statespec import parse_state_spec
    from drctl.engine.store_etcd import open_etcd_state
    from drctl.lab.servers import EtcdTls

    c = _certificates(tmp_path / "pki")
    tls = EtcdTls(cert=c["server.crt"], key=c["server.key"], ca=c["ca.crt"], client_cert=c["client.crt"],
                  client_key=c["client.key"])
    cluster = EtcdCluster(tmp_path / "tls", size=1, tls=tls)
    cluster.start()
    try:
        spec = parse_state_spec(cluster.spec(prefix="/tls"))
        assert spec.protocol == "https"
        env = {"DRCTL_ETCD_CACERT": str(c["ca.crt"]), "DRCTL_ETCD_CERT": str(c["client.crt"]),
               "DRCTL_ETCD_KEY": str(c["client.key"])}
        st = open_etcd_state(spec, tmp_path / "s", env)
        run_id = new_run_id("failover")
        st.runs.append(run_id, {"event": "run_started"})
        (lease,) = st.leases.acquire_all(["web"], {"run_id": run_id, "user": "tls"})
        lease.renew()
        lease.release()
        assert [r["event"] for r in st.runs.read(run_id)] == ["run_started"]
        for missing in ("DRCTL_ETCD_CACERT", "DRCTL_ETCD_CERT"):  # an unknown CA; no client certificate
            partial = {k: v for k, v in env.items() if k != missing and not (missing == "DRCTL_ETCD_CERT"
                                                                              and k == "DRCTL_ETCD_KEY")}
            with pytest.raises(StateStoreError):
                open_etcd_state(spec, tmp_path / "s", partial).runs.list_runs()
        with pytest.raises(UsageError, match="DRCTL_ETCD_CACERT: .* is not a readable file"):
            open_etcd_state(spec, tmp_path / "s", {**env, "DRCTL_ETCD_CACERT": str(tmp_path / "nope.crt")})
    finally:
        cluster.stop()


def test_state_specs_are_checked_and_never_echo_credentials(tmp_path: Path) -> None:
    for bad, why in (("etcd://u:Pw123456@127.0.0.1:2379/x", "credentials do not belong"),
                     ("etcd://127.0.0.1:70000/x", "out of range"), ("http://127.0.0.1:2379", "etcd://"),
                     ("etcd://127.0.0.1:2379/x?ttl=1", "ttl must be"), ("etcd://127.0.0.1:2379/../x", "prefix"),
                     ("etcd://127.0.0.1:2379/x?foo=1", "unknown option")):
        with pytest.raises(UsageError, match=why) as err:
            open_state(bad, tmp_path)
        assert "Pw123456" not in str(err.value)


def test_an_unreachable_cluster_is_exit_9_with_a_clear_message(tmp_path: Path) -> None:
    from drctl.lab.servers import free_port

    st = open_state(f"etcd://127.0.0.1:{free_port()},127.0.0.1:{free_port()}/x", tmp_path)
    t0 = time.monotonic()
    with pytest.raises(StateStoreError, match="does not answer or has no quorum") as err:
        st.runs.list_runs()
    assert err.value.exit_code == 9 and "drctl resume" in (err.value.hint or "")
    assert time.monotonic() - t0 < 2


def test_the_cli_loads_the_etcd_client_only_for_etcd_state() -> None:
    code = ("import sys; from drctl.cli.app import app; from drctl.engine.store import open_state; "
            "import tempfile, pathlib; open_state(None, pathlib.Path(tempfile.mkdtemp())); "
            "print(sorted(m for m in ('etcd3gw', 'requests') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]", done.stdout
