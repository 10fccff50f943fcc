"""The journal, the service locks and the baselines' index in an etcd v3 cluster (``--state etcd://...``).

The same seam as the state directory (``drctl.engine.store``: ``Journal``, ``Leases``,
``BaselineIndex``), kept in a consistent store outside the control node, so that the record of a
failover and the lock that stops a conflicting one survive the site the control node was in.
etcd is spoken to through its JSON gateway (``/v3/``, etcd >= 3.4) with ``etcd3gw``, one client per
member: a request goes to the member that answered last, and to the next one when that member
refuses the connection, times out, or has no quorum (etcd answers linearizable requests only with
a quorum). When no listed member answers, ``StateStoreError`` (exit 9).

Keys, under the spec's prefix ``P``:

- ``P/locks/<service>``: the holder record (run, operation, user, host, pid, since, ttl), attached
  to an etcd lease of ``ttl`` seconds (Patroni's leader key). One transaction creates every key of
  a run or none (``create_revision == 0`` for each): of two control nodes asking at the same
  moment, exactly one gets them. A thread renews the lease every ``ttl/4``; if it cannot for
  ``ttl/2`` (connection lost, quorum lost), or etcd says the lease is gone, it calls the run's
  ``on_lost`` (the run stops at the next safe point), well before the lease could expire and
  another control node take the lock. A killed run's lock frees itself ``ttl`` seconds later.
- ``P/journal/<run_id>/<seq>``: one record each, and ``P/journal-head/<run_id>``: the last seq.
  An append is one transaction that compares the head's ``mod_revision`` with the one this
  writer saw last, and that every lock this process holds is still attached to its lease: two
  writers cannot interleave, and a run whose lock expired writes nothing more. A request retried
  after a timeout that had in fact been applied is recognised (the record is there, byte for byte).
- ``P/baselines/<service>/<target>/<file>``: where each baseline was stored, by which control
  node, and its checksum (``drctl.drivers.baseline``).

Credentials come from the environment, never from the spec, and are never printed:
``DRCTL_ETCD_USER`` with ``DRCTL_ETCD_PASSWORD_FILE`` (or ``DRCTL_ETCD_PASSWORD``): etcd's
user/password authentication, a token per member; ``DRCTL_ETCD_CACERT`` (the CA that signed the
members' certificates; else the system's), ``DRCTL_ETCD_CERT`` and ``DRCTL_ETCD_KEY`` (a client
certificate) for ``etcds://``.

``etcd3gw`` (and ``requests``) are imported here only: ``drctl --help`` and the state directory
never load them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import requests
from etcd3gw import exceptions as gwerr
from etcd3gw.client import Etcd3Client

from drctl.core.redact import redact
from drctl.core.statespec import EtcdSpec
from drctl.engine.store import _RUN_ID, LostCallback, State
from drctl.errors import (
    LockHeldError,
    LockLostError,
    RunNotFoundError,
    StateStoreError,
    StateStoreUnreachableError,
    UsageError,
)

log = logging.getLogger("drctl.engine.store_etcd")

T = TypeVar("T")
API_PATH = "/v3/"  # etcd >= 3.4 (3.3 answered only /v3beta/)
#: what etcd answers when a member cannot serve a request now: another member may
_UNAVAILABLE = ("request timed out", "no leader", "context deadline exceeded", "leader changed",
                "not capable", "too many requests", "stopped", "timed out", "unavailable")


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode("ascii")


def _unb64(data: str | None) -> bytes:
    return base64.b64decode(data or "")


def _after(prefix: str) -> str:
    """The end of the key range of everything starting with ``prefix`` (ASCII keys)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


# --- credentials -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    user: str | None = None
    password: str | None = None
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None

    def __repr__(self) -> str:  # never a password in a traceback or a log
        return f"Credentials(user={self.user!r}, tls={bool(self.cacert or self.cert)})"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Credentials:
        """From ``DRCTL_ETCD_*``; a file that cannot be read is a UsageError naming the variable."""
        e = dict(os.environ if env is None else env)

        def path(var: str) -> str | None:
            value = e.get(var) or None
            if value is not None and not os.path.isfile(value):
                raise UsageError(f"{var}: {value} is not a readable file")
            return value

        user = e.get("DRCTL_ETCD_USER") or None
        password = e.get("DRCTL_ETCD_PASSWORD") or None
        pw_file = path("DRCTL_ETCD_PASSWORD_FILE")
        if pw_file is not None:
            try:
                with open(pw_file, encoding="utf-8") as f:
                    password = f.read().rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as err:
                raise UsageError(f"DRCTL_ETCD_PASSWORD_FILE: cannot read {pw_file}: "
                                 f"{getattr(err, 'strerror', None) or type(err).__name__}") from None
        if password and not user:
            raise UsageError("an etcd password is set but DRCTL_ETCD_USER is not")
        if user and not password:
            raise UsageError("DRCTL_ETCD_USER is set without DRCTL_ETCD_PASSWORD_FILE or DRCTL_ETCD_PASSWORD")
        cert, key = path("DRCTL_ETCD_CERT"), path("DRCTL_ETCD_KEY")
        if bool(cert) != bool(key):
            raise UsageError("a client certificate needs both DRCTL_ETCD_CERT and DRCTL_ETCD_KEY")
        return cls(user=user, password=password, cacert=path("DRCTL_ETCD_CACERT"), cert=cert, key=key)


# --- the cluster -----------------------------------------------------------------------------------


class Cluster:
    """Requests to the members of one etcd cluster, tried in turn (see the module docstring)."""

    def __init__(self, spec: EtcdSpec, creds: Credentials, *, timeout: float | None = None) -> None:
        self.spec = spec
        self.creds = creds
        self.timeout = timeout if timeout is not None else spec.timeout_s
        self.where = str(spec)
        self._clients = [self._client(host, port) for host, port in spec.endpoints]
        self._tokens: dict[int, str] = {}
        self._current = 0
        self._lock = threading.Lock()

    def _client(self, host: str, port: int) -> Etcd3Client:
        session = requests.Session()
        session.trust_env = False  # no proxy from the environment between us and etcd
        if self.spec.protocol == "https":
            session.verify = self.creds.cacert or True
            if self.creds.cert and self.creds.key:
                session.cert = (self.creds.cert, self.creds.key)
        return Etcd3Client(host=host, port=port, protocol=self.spec.protocol, timeout=self.timeout,
                           api_path=API_PATH, session=session)

    def close(self) -> None:
        for c in self._clients:
            with contextlib.suppress(Exception):
                c.session.close()

    def _authenticate(self, i: int, client: Etcd3Client) -> None:
        if not self.creds.user:
            return
        client.session.headers.pop("Authorization", None)
        try:
            reply = client.post(client.get_url("/auth/authenticate"),
                                json={"name": self.creds.user, "password": self.creds.password})
        except gwerr.Etcd3Exception as e:
            if _is_unavailable(e):
                raise
            raise StateStoreError(f"etcd at {self._member(i)} refused the user {self.creds.user}: "
                                  f"{_detail(e)}", hint="check DRCTL_ETCD_USER and its password") from None
        client.session.headers["Authorization"] = str(reply.get("token", ""))
        self._tokens[i] = str(reply.get("token", ""))

    def _member(self, i: int) -> str:
        host, port = self.spec.endpoints[i]
        return f"{host}:{port}"

    def call(self, fn: Callable[[Etcd3Client], T], *, deadline: float | None = None, what: str = "request") -> T:
        """``fn(client)`` on the member that answered last, then on each other one; a member that
        does not answer, or cannot serve (no quorum), is skipped. ``deadline`` (monotonic) stops
        trying further members. Raises StateStoreError when none answered."""
        n = len(self._clients)
        with self._lock:
            start = self._current
        errors: list[str] = []
        for k in range(n):
            i = (start + k) % n
            if deadline is not None and time.monotonic() >= deadline:
                break
            client = self._clients[i]
            try:
                for attempt in (1, 2):
                    try:
                        if self.creds.user and i not in self._tokens:
                            self._authenticate(i, client)
                        result = fn(client)
                        break
                    except gwerr.Etcd3Exception as e:
                        if attempt == 1 and self.creds.user and _is_auth_expired(e):
                            self._tokens.pop(i, None)  # a simple token expires after 5 idle minutes
                            continue
                        raise
                with self._lock:
                    self._current = i
                return result
            except gwerr.Etcd3Exception as e:
                if not _is_unavailable(e):
                    raise StateStoreError(f"etcd at {self._member(i)} refused the {what}: {_detail(e)}",
                                          hint="check the prefix, and the etcd user's permissions on it") from None
                errors.append(f"{self._member(i)}: {_detail(e)}")
            except requests.RequestException as e:  # TLS errors and the like
                errors.append(f"{self._member(i)}: {type(e).__name__}: {_short(str(e))}")
        raise StateStoreUnreachableError(
            f"the state store {self.where} does not answer or has no quorum ({what}): " + "; ".join(errors or
                                                                                               ["no time left"]),
            hint="nothing more was changed; once a majority of etcd members is back, `drctl resume RUN_ID` "
                 "continues (`drctl history` lists the runs)")

    # --- key-value helpers (each one request) ---------------------------------------------------

    def txn(self, txn: dict[str, Any], *, deadline: float | None = None, what: str = "transaction") -> dict[str, Any]:
        return dict(self.call(lambda c: c.transaction(txn), deadline=deadline, what=what))

    def range(self, key: str, *, prefix: bool = False, keys_only: bool = False, limit: int | None = None,
              what: str = "read") -> list[dict[str, Any]]:
        payload: dict[str, Any] = {"key": _b64(key), "sort_order": 1, "sort_target": 0}  # ascending by key
        if prefix:
            payload["range_end"] = _b64(_after(key))
        if keys_only:
            payload["keys_only"] = True
        if limit is not None:
            payload["limit"] = limit
        reply = self.call(lambda c: c.post(c.get_url("/kv/range"), json=payload), what=what)
        return list(reply.get("kvs") or [])


def _detail(e: gwerr.Etcd3Exception) -> str:
    text = e.detail_text or (str(e.args[0]) if e.args else type(e).__name__)
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        text = json.loads(text).get("error") or text
    return _short(str(text))


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 200 else text[:200] + "..."


def _is_unavailable(e: gwerr.Etcd3Exception) -> bool:
    if isinstance(e, gwerr.ConnectionFailedError | gwerr.ConnectionTimeoutError):
        return True
    detail = _detail(e).lower()
    return any(s in detail for s in _UNAVAILABLE)


def _is_auth_expired(e: gwerr.Etcd3Exception) -> bool:
    return "invalid auth token" in _detail(e).lower()


# --- values ----------------------------------------------------------------------------------------


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, default=lambda o: redact(str(o))).encode()


def _load(kv: dict[str, Any]) -> Any:
    try:
        return json.loads(_unb64(kv.get("value")))
    except (ValueError, UnicodeDecodeError):
        return None


def _key_of(kv: dict[str, Any]) -> str:
    return _unb64(kv.get("key")).decode("utf-8", "replace")


def _put(key: str, value: bytes, lease: int | None = None) -> dict[str, Any]:
    req: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
    if lease:
        req["lease"] = str(lease)
    return {"request_put": req}


def _get(key: str) -> dict[str, Any]:
    return {"request_range": {"key": _b64(key)}}


def _ranges(reply: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """The key-values read by the ``request_range`` operations of a transaction, in order (one
    list per operation: a key that does not exist is an empty list)."""
    out = []
    for r in reply.get("responses") or []:
        if "response_range" in r:
            out.append(list((r["response_range"] or {}).get("kvs") or []))
    return out


# --- the locks -------------------------------------------------------------------------------------


class _Keeper:
    """One etcd lease holding a run's lock keys, renewed by a thread until released or lost."""

    def __init__(self, owner: EtcdLeases, lease_id: int, keys: dict[str, str], granted_at: float,
                 on_lost: LostCallback | None) -> None:
        self.owner = owner
        self.lease_id = lease_id
        self.keys = dict(keys)  # name -> key
        self.ttl = owner.ttl
        self.on_lost = on_lost
        self.last_renewed = granted_at  # monotonic time before the request that granted / renewed it
        self.lost: str | None = None
        self._released: set[str] = set()
        self._stop = threading.Event()
        # renewals have their own connections, with timeouts that fit several tries in ttl/2
        per_try = max(0.2, min(owner.cluster.timeout, self.lost_after / (2 * len(owner.cluster.spec.endpoints))))
        self._cluster = Cluster(owner.cluster.spec, owner.cluster.creds, timeout=per_try)
        self._thread = threading.Thread(target=self._run, name=f"etcd-lease-{lease_id:x}", daemon=True)
        self._thread.start()

    @property
    def interval(self) -> float:
        return max(0.2, self.ttl / 4)

    @property
    def lost_after(self) -> float:
        return self.ttl / 2

    def renew(self) -> None:
        """Renew now; raises LockLostError when the lease is gone or cannot be renewed in time."""
        if self.lost:
            raise LockLostError(self.lost)
        sent = time.monotonic()
        left = self._keepalive(deadline=self.last_renewed + self.lost_after)
        if left <= 0:
            self._lose("its etcd lease expired")
            raise LockLostError(self.lost or "lost")
        self.last_renewed = sent

    def _keepalive(self, deadline: float) -> int:
        reply = self._cluster.call(lambda c: c.post(c.get_url("/lease/keepalive"), json={"ID": str(self.lease_id)}),
                                   deadline=deadline, what="lease renewal")
        return int((reply.get("result") or {}).get("TTL") or 0)

    def _run(self) -> None:
        error = ""
        while not self._stop.wait(self.interval):
            sent = time.monotonic()
            try:
                left = self._keepalive(deadline=self.last_renewed + self.lost_after)
            except StateStoreError as e:
                error = e.message
            else:
                if left <= 0:
                    self._lose(f"its etcd lease {self.lease_id:x} expired (etcd no longer has it)")
                    return
                self.last_renewed = sent
            if time.monotonic() - self.last_renewed >= self.lost_after and not self._stop.is_set():
                self._lose(f"it could not be renewed for {self.lost_after:g} s (its lease lasts {self.ttl} s): "
                           f"{error}")
                return

    def _lose(self, why: str) -> None:
        if self.lost is not None:
            return
        names = sorted(set(self.keys) - self._released)
        self.lost = f"the lock of {', '.join(names)} is lost: {why}"
        log.warning("%s", self.lost)
        if self.on_lost is not None:
            for name in names:
                try:
                    self.on_lost(name, self.lost)
                except Exception:  # a callback's bug must not keep the others from being told
                    log.exception("on_lost callback failed")

    def release(self, name: str) -> None:
        """Forget ``name``; once every name is released, revoke the lease (which deletes the keys
        still attached to it). A store out of reach is not an error: the lease then expires."""
        self._released.add(name)
        self.owner._forget(self.keys.get(name, ""), self.lease_id)
        if set(self.keys) - self._released:
            return
        self._stop.set()
        if self.lost is None or "expired" not in self.lost:
            try:
                self._cluster.call(
                    lambda c: c.post(c.get_url("/kv/lease/revoke"), json={"ID": str(self.lease_id)}),
                    deadline=time.monotonic() + max(1.0, self._cluster.timeout * 2), what="lease revocation")
            except StateStoreError as e:
                log.info("could not revoke lease %x (it expires by itself within %s s): %s", self.lease_id,
                         self.ttl, e.message)
        self._cluster.close()


@dataclass
class EtcdLease:
    name: str
    owner: dict[str, Any]
    _keeper: _Keeper

    def renew(self) -> None:
        self._keeper.renew()

    def release(self) -> None:
        self._keeper.release(self.name)


class EtcdLeases:
    """Service locks as keys attached to an etcd lease (see the module docstring)."""

    def __init__(self, cluster: Cluster, prefix: str, ttl: int) -> None:
        self.cluster = cluster
        self.prefix = f"{prefix}/locks/"
        self.ttl = ttl
        self.where = f"{cluster.where}{self.prefix}"
        self._held: dict[str, int] = {}  # lock key -> lease id, for the journal's fence
        self._held_lock = threading.Lock()

    def key(self, name: str) -> str:
        return self.prefix + name

    def held(self) -> dict[str, int]:
        with self._held_lock:
            return dict(self._held)

    def _forget(self, key: str, lease_id: int) -> None:
        with self._held_lock:
            if self._held.get(key) == lease_id:
                del self._held[key]

    def acquire_all(self, names: list[str], owner: dict[str, Any],
                    on_lost: LostCallback | None = None) -> list[EtcdLease]:
        """Every lock in one transaction, or none: ``LockHeldError`` naming the holder."""
        names = sorted(set(names))
        if not names:
            return []
        info = redact({**owner, "pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                       "ttl": self.ttl})
        granted_at = time.monotonic()
        grant = self.cluster.call(lambda c: c.post(c.get_url("/lease/grant"), json={"TTL": self.ttl, "ID": 0}),
                                  what="lease grant")
        lease_id = int(grant["ID"])
        keys = {n: self.key(n) for n in names}
        txn = {"compare": [{"key": _b64(k), "target": "CREATE", "result": "EQUAL", "create_revision": 0}
                           for k in keys.values()],
               "success": [_put(k, _dump({**info, "service": n}), lease_id) for n, k in keys.items()],
               "failure": [_get(k) for k in keys.values()]}
        try:
            reply = self.cluster.txn(txn, what="lock")
        except BaseException:
            self._revoke_quietly(lease_id)
            raise
        if not reply.get("succeeded"):
            found = dict(zip(keys, _ranges(reply), strict=False))
            mine = all(kvs and int(kvs[0].get("lease") or 0) == lease_id for kvs in found.values())
            if not mine:  # (mine: a retry of a transaction that had been applied after all)
                self._revoke_quietly(lease_id)
                held = {n: _load(kvs[0]) or {} for n, kvs in found.items() if kvs}
                raise LockHeldError("; ".join(f"service {n} is locked by {_who(h)}" for n, h in held.items()),
                                    hint=f"wait for it to finish (`drctl history` shows it running); a lock whose "
                                         f"control node is gone frees itself within its lease ({self.ttl} s)")
        keeper = _Keeper(self, lease_id, keys, granted_at, on_lost)
        with self._held_lock:
            for k in keys.values():
                self._held[k] = lease_id
        return [EtcdLease(n, {**info, "service": n}, keeper) for n in names]

    def _revoke_quietly(self, lease_id: int) -> None:
        with contextlib.suppress(StateStoreError):
            self.cluster.call(lambda c: c.post(c.get_url("/kv/lease/revoke"), json={"ID": str(lease_id)}),
                              deadline=time.monotonic() + self.cluster.timeout, what="lease revocation")

    def holder(self, name: str) -> dict[str, Any] | None:
        kvs = self.cluster.range(self.key(name), what="lock read")
        if not kvs:
            return None
        rec = _load(kvs[0])
        return rec if isinstance(rec, dict) else {}

    def held_by(self, name: str) -> str | None:
        holder = self.holder(name)
        if holder is None:
            return None
        return str(holder.get("run_id") or "?")


def _who(h: dict[str, Any]) -> str:
    from drctl.engine.store import describe_holder

    return describe_holder(h)


# --- the journal -----------------------------------------------------------------------------------


@dataclass(eq=False)
class _Pending:
    """One record waiting to be appended, and what became of it."""

    record: dict[str, Any]
    wake: threading.Event = field(default_factory=threading.Event)
    lead: bool = False  # this caller writes the next batch
    finished: bool = False
    result: dict[str, Any] | None = None
    error: BaseException | None = None


#: at most this many records, and about this many bytes, in one transaction (etcd's defaults allow
#: 128 operations and 1.5 MiB per request); a larger record is stored in parts first
BATCH_RECORDS = 48
BATCH_BYTES = 768 * 1024
PART_BYTES = 512 * 1024


class EtcdJournal:
    """Append-only journals in etcd (see the module docstring).

    The runner's threads append at the same time (a step's start and end, for every service):
    appends to one journal are committed in groups, each group one transaction (one round trip to
    a quorum), in the order they were made. Each caller returns once its record is committed."""

    def __init__(self, cluster: Cluster, prefix: str, leases: EtcdLeases) -> None:
        self.cluster = cluster
        self.prefix = prefix
        self.leases = leases
        self.where = f"{cluster.where}/journal"
        self._qlock = threading.Lock()
        self._queues: dict[str, list[_Pending]] = {}
        self._writing: set[str] = set()  # runs whose queue a caller is writing now
        self._heads: dict[str, tuple[int, int]] = {}  # run id -> (last seq, mod_revision of its head key)

    def _check(self, run_id: str) -> None:
        if not _RUN_ID.match(run_id):
            raise RunNotFoundError(f"{run_id!r} is not a run id (see `drctl history`)")

    def _head_key(self, run_id: str) -> str:
        return f"{self.prefix}/journal-head/{run_id}"

    def _rec_key(self, run_id: str, seq: int) -> str:
        return f"{self.prefix}/journal/{run_id}/{seq:08d}"

    def _part_key(self, run_id: str, seq: int, part: int) -> str:
        return f"{self.prefix}/journal-parts/{run_id}/{seq:08d}/{part:04d}"

    def _head(self, run_id: str) -> tuple[int, int]:
        kvs = self.cluster.range(self._head_key(run_id), what="journal read")
        if not kvs:
            return 0, 0
        return int(_unb64(kvs[0].get("value")) or 0), int(kvs[0]["mod_revision"])

    def append(self, run_id: str, record: dict[str, Any]) -> dict[str, Any]:
        """One record, appended if (and only if) nobody else appended since this writer's last one
        and every lock this process holds is still its own; durable (a quorum has it) once it
        returns."""
        self._check(run_id)
        me = _Pending(record)
        with self._qlock:
            self._queues.setdefault(run_id, []).append(me)
            if run_id not in self._writing:
                self._writing.add(run_id)
                me.lead = True
        while not me.lead and not me.finished:
            me.wake.wait()
            me.wake.clear()
        if not me.finished:
            self._write_next(run_id)
        if me.error is not None:
            raise me.error
        assert me.result is not None
        return me.result

    def _write_next(self, run_id: str) -> None:
        """(the leading caller) Write what is queued for ``run_id``, then hand the lead over."""
        with self._qlock:
            queue = self._queues[run_id]
            batch, queue[:] = queue[:BATCH_RECORDS], queue[BATCH_RECORDS:]
        try:
            results = self._write(run_id, [p.record for p in batch])
            for p, rec in zip(batch, results, strict=True):
                p.result = rec
        except BaseException as e:
            for p in batch:
                p.error = e
            if isinstance(e, StateStoreUnreachableError):
                e.hint = (f"nothing more was changed; `drctl resume {run_id}` continues once a majority of the "
                          "etcd members answers again")
        finally:
            with self._qlock:
                rest = self._queues[run_id]
                if rest:
                    rest[0].lead = True
                    rest[0].wake.set()
                else:
                    self._writing.discard(run_id)
                    del self._queues[run_id]
            for p in batch:
                p.finished = True
                p.wake.set()

    def _write(self, run_id: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        seq, rev = self._heads.get(run_id) or self._head(run_id)
        out: list[dict[str, Any]] = []
        chunk: list[tuple[int, bytes]] = []
        size = 0
        for record in records:
            seq += 1
            rec = redact({"seq": seq, "ts": round(time.time(), 6), "run_id": run_id, **record})
            value = _dump(rec)
            if len(value) > PART_BYTES:
                value = self._put_parts(run_id, seq, value)
            if chunk and size + len(value) > BATCH_BYTES:
                rev = self._commit(run_id, chunk, rev)
                chunk, size = [], 0
            chunk.append((seq, value))
            size += len(value)
            out.append(dict(rec))
        self._commit(run_id, chunk, rev)
        return out

    def _put_parts(self, run_id: str, seq: int, value: bytes) -> bytes:
        """Store a record too large for one request in parts (not yet part of the journal: only the
        record that names them is); the record's key gets ``{"_parts": n, "sha256": ...}``."""
        import hashlib

        parts = [value[i:i + PART_BYTES] for i in range(0, len(value), PART_BYTES)]
        for i, part in enumerate(parts):
            payload = {"key": _b64(self._part_key(run_id, seq, i)), "value": _b64(part)}

            def put(c: Etcd3Client, payload: dict[str, str] = payload) -> Any:
                return c.post(c.get_url("/kv/put"), json=payload)

            self.cluster.call(put, what=f"journal append to {run_id}")
        return _dump({"_parts": len(parts), "sha256": hashlib.sha256(value).hexdigest()})

    def _commit(self, run_id: str, records: list[tuple[int, bytes]], rev: int) -> int:
        """One transaction: the records and the new head, if the head is still at ``rev`` and every
        lock held is still ours. Returns the head's new mod_revision."""
        head = self._head_key(run_id)
        last = records[-1][0]
        fence = sorted(self.leases.held().items())
        keys = [self._rec_key(run_id, seq) for seq, _ in records]
        txn = {"compare": [{"key": _b64(head), "target": "MOD", "result": "EQUAL", "mod_revision": str(rev)}]
               + [{"key": _b64(k), "target": "LEASE", "result": "EQUAL", "lease": str(lease)} for k, lease in fence],
               "success": [_put(head, str(last).encode())] + [_put(k, v) for k, (_, v) in zip(keys, records,
                                                                                              strict=True)],
               "failure": [_get(head), *(_get(k) for k in keys), *(_get(k) for k, _ in fence)]}
        try:
            reply = self.cluster.txn(txn, what=f"journal append to {run_id}")
        except BaseException:
            self._heads.pop(run_id, None)  # applied or not: read the head again next time
            raise
        if reply.get("succeeded"):
            new_rev = int(reply["header"]["revision"])
            self._heads[run_id] = (last, new_rev)
            return new_rev
        self._heads.pop(run_id, None)
        found = _ranges(reply)
        now_head, now_recs, locks = found[0], found[1:1 + len(keys)], found[1 + len(keys):]
        if now_head and all(kvs and _unb64(kvs[0].get("value")) == v for kvs, (_, v) in zip(now_recs, records,
                                                                                             strict=True)):
            # a retry (after a timeout) of this very transaction, which had been applied
            self._heads[run_id] = (last, int(now_head[0]["mod_revision"]))
            return int(now_head[0]["mod_revision"])
        for (k, lease), kvs in zip(fence, locks, strict=False):
            if not kvs or int(kvs[0].get("lease") or 0) != lease:
                now = _load(kvs[0]) if kvs else None
                by = f"; it is now held by {_who(now)}" if isinstance(now, dict) else ""
                raise LockLostError(
                    f"the lock of service {k.rsplit('/', 1)[-1]} is no longer held by this run (its lease "
                    f"expired{by}); the journal of {run_id} was not written and nothing more is changed",
                    hint=f"`drctl history` shows who holds it; `drctl resume {run_id}` once it is free")
        at = int(_unb64(now_head[0].get("value")) or 0) if now_head else 0
        raise StateStoreError(
            f"another writer appended to the journal of {run_id} at the same time (it is at record {at}, this "
            f"run expected {records[0][0] - 1}); stopped rather than interleave",
            hint=f"`drctl history` and `drctl report {run_id}` show who; `drctl resume {run_id}` from one "
                 "control node only")

    def read(self, run_id: str) -> list[dict[str, Any]]:
        self._check(run_id)
        kvs = self.cluster.range(f"{self.prefix}/journal/{run_id}/", prefix=True, what="journal read")
        if not kvs:
            raise RunNotFoundError(f"no run {run_id} in {self.cluster.where}")
        out = []
        for kv in kvs:
            rec = _load(kv)
            if isinstance(rec, dict) and "_parts" in rec:
                rec = self._read_parts(run_id, _key_of(kv).rsplit("/", 1)[-1], rec)
            if isinstance(rec, dict):
                out.append(rec)
        return out

    def _read_parts(self, run_id: str, seq: str, stub: dict[str, Any]) -> dict[str, Any] | None:
        import hashlib

        kvs = self.cluster.range(f"{self.prefix}/journal-parts/{run_id}/{seq}/", prefix=True, what="journal read")
        value = b"".join(_unb64(kv.get("value")) for kv in kvs)
        if len(kvs) != stub.get("_parts") or hashlib.sha256(value).hexdigest() != stub.get("sha256"):
            log.warning("record %s of %s: its parts are missing or damaged; skipped", seq, run_id)
            return None
        try:
            rec = json.loads(value)
        except ValueError:
            return None
        return rec if isinstance(rec, dict) else None

    def list_runs(self) -> list[str]:
        prefix = f"{self.prefix}/journal-head/"
        kvs = self.cluster.range(prefix, prefix=True, keys_only=True, what="journal list")
        ids = (_key_of(kv)[len(prefix):] for kv in kvs)
        return sorted((i for i in ids if _RUN_ID.match(i)), reverse=True)

    def close(self) -> None:
        """Nothing to flush: every record was acknowledged by a quorum when its append returned."""


# --- the baselines' index --------------------------------------------------------------------------


class EtcdBaselineIndex:
    """Which control node stored which baseline, with its checksum (``drctl.drivers.baseline``)."""

    def __init__(self, cluster: Cluster, prefix: str) -> None:
        self.cluster = cluster
        self.prefix = f"{prefix}/baselines/"
        self.where = f"{cluster.where}/baselines"

    def record(self, service: str, target: str, entry: dict[str, Any]) -> None:
        key = f"{self.prefix}{service}/{target}/{entry['file']}"
        self.cluster.call(lambda c: c.post(c.get_url("/kv/put"), json={"key": _b64(key), "value": _b64(_dump(entry))}),
                          what="baseline index write")

    def entries(self, service: str, target: str) -> list[dict[str, Any]]:
        """Every indexed baseline of a target, newest first."""
        kvs = self.cluster.range(f"{self.prefix}{service}/{target}/", prefix=True, what="baseline index read")
        out = [e for e in (_load(kv) for kv in kvs) if isinstance(e, dict)]
        return sorted(out, key=lambda e: float(e.get("created") or 0), reverse=True)


# --- opening ---------------------------------------------------------------------------------------


def open_etcd_state(spec: EtcdSpec, state_dir: Path, env: dict[str, str] | None = None) -> State:
    """The etcd state of ``spec``; nothing is sent to etcd until a command needs it."""
    cluster = Cluster(spec, Credentials.from_env(env))
    leases = EtcdLeases(cluster, spec.prefix, spec.ttl_s)
    return State(runs=EtcdJournal(cluster, spec.prefix, leases), leases=leases, dir=state_dir,
                 where=cluster.where, baselines=EtcdBaselineIndex(cluster, spec.prefix), _close=[cluster.close])
