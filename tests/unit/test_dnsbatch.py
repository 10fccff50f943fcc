"""The DNS batcher's coordination logic (pure; the UPDATE itself is tested against BIND)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest

from drctl.engine.dnsbatch import ZoneBatcher
from drctl.errors import DNSConflictError, TSIGError


@dataclass(frozen=True)
class Change:
    name: str


class Recorder:
    """Stands in for the UPDATE sender: records each message, refuses names listed as conflicting."""

    def __init__(self, conflicting: set[str] = frozenset(), fail: BaseException | None = None) -> None:  # type: ignore[assignment]
        self.sent: list[tuple[str, list[str]]] = []
        self.conflicting = conflicting
        self.fail = fail
        self.lock = threading.Lock()

    def __call__(self, zone: str, changes: list[Change]) -> list[str]:
        with self.lock:
            self.sent.append((zone, [c.name for c in changes]))
        if self.fail is not None:
            raise self.fail
        if any(c.name in self.conflicting for c in changes):
            raise DNSConflictError("conflict")
        return [c.name for c in changes]


def _submit_all(batcher: ZoneBatcher, jobs: list[tuple[str, str]]) -> dict[str, object]:
    results: dict[str, object] = {}
    barrier = threading.Barrier(len(jobs))

    def go(zone: str, name: str) -> None:
        barrier.wait()
        try:
            results[name] = batcher.submit(zone, [Change(name)])
        except Exception as e:
            results[name] = e

    threads = [threading.Thread(target=go, args=j) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return results


def test_concurrent_flips_of_a_zone_share_one_update() -> None:
    send = Recorder()
    batcher = ZoneBatcher(send, {"a.test": 5, "b.test": 2}, window=5.0)
    jobs = [("a.test", f"n{i}.a.test.") for i in range(5)] + [("b.test", f"m{i}.b.test.") for i in range(2)]
    results = _submit_all(batcher, jobs)
    # everyone expected joined, so nobody waited for the (long) window
    assert sorted(z for z, _ in send.sent) == ["a.test", "b.test"]
    assert results["n3.a.test."] == (["n3.a.test."], 5)
    assert results["m1.b.test."] == (["m1.b.test."], 2)


def test_a_conflict_fails_only_its_own_service() -> None:
    send = Recorder(conflicting={"n2.a.test."})
    batcher = ZoneBatcher(send, {"a.test": 3}, window=5.0)
    results = _submit_all(batcher, [("a.test", f"n{i}.a.test.") for i in range(3)])
    assert isinstance(results["n2.a.test."], DNSConflictError)
    assert results["n0.a.test."] == (["n0.a.test."], 1)
    assert results["n1.a.test."] == (["n1.a.test."], 1)
    assert len(send.sent) == 1 + 3  # the shared attempt, then one per service


def test_an_invalid_value_fails_only_its_own_service() -> None:
    from drctl.errors import ConfigError

    class Invalid(Recorder):
        def __call__(self, zone: str, changes: list[Change]) -> list[str]:
            if any(c.name == "bad.a.test." for c in changes):
                raise ConfigError("bad.a.test. A: invalid value '198.51.100.300'")
            return super().__call__(zone, changes)

    batcher = ZoneBatcher(Invalid(), {"a.test": 2}, window=5.0)
    results = _submit_all(batcher, [("a.test", "bad.a.test."), ("a.test", "ok.a.test.")])
    assert isinstance(results["bad.a.test."], ConfigError)
    assert results["ok.a.test."] == (["ok.a.test."], 1)


def test_server_and_key_errors_reach_every_member_and_a_lone_flip_does_not_wait() -> None:
    batcher = ZoneBatcher(Recorder(fail=TSIGError("bad key")), {"a.test": 2}, window=5.0)
    results = _submit_all(batcher, [("a.test", "x.a.test."), ("a.test", "y.a.test.")])
    assert all(isinstance(r, TSIGError) for r in results.values())
    send = Recorder()
    lone = ZoneBatcher(send, {"a.test": 1}, window=30.0)
    assert lone.submit("a.test", [Change("z.a.test.")]) == (["z.a.test."], 1)  # would hang 30s if it waited


def test_window_bounds_the_wait_for_services_that_never_come() -> None:
    send = Recorder()
    batcher = ZoneBatcher(send, {"a.test": 3}, window=0.05)
    assert batcher.submit("a.test", [Change("x.a.test.")]) == (["x.a.test."], 1)
    with pytest.raises(DNSConflictError):
        ZoneBatcher(Recorder(conflicting={"q.a.test."}), {}, window=0.01).submit("a.test", [Change("q.a.test.")])


def test_a_batch_never_waits_for_a_service_that_cannot_move_yet() -> None:
    """Only services that can move now are expected: a later wave's flip is not waited for."""
    send = Recorder()
    batcher = ZoneBatcher(send, window=5.0)
    batcher.expect(["a.test"])  # the one service of this wave
    t0 = time.monotonic()
    batcher.submit("a.test", [Change("x.a.test.")])
    assert time.monotonic() - t0 < 1.0  # not the 5 s window
    assert send.sent == [("a.test", ["x.a.test."])]


def test_a_withdrawn_service_releases_the_batch_waiting_for_it() -> None:
    send = Recorder()
    batcher = ZoneBatcher(send, window=5.0)
    batcher.expect(["a.test"])
    batcher.expect(["a.test"])  # two services can move; one of them fails before its flip
    threading.Timer(0.2, batcher.withdraw, args=(["a.test"],)).start()
    t0 = time.monotonic()
    batcher.submit("a.test", [Change("x.a.test.")])
    assert 0.1 < time.monotonic() - t0 < 2.0
    assert send.sent == [("a.test", ["x.a.test."])]


def test_services_of_one_wave_share_one_update() -> None:
    send = Recorder()
    batcher = ZoneBatcher(send, window=5.0)
    batcher.expect(["a.test"])
    batcher.expect(["a.test"])
    batcher.expect(["a.test"])
    results = _submit_all(batcher, [("a.test", "x.a.test."), ("a.test", "y.a.test."), ("a.test", "z.a.test.")])
    assert len(send.sent) == 1 and sorted(send.sent[0][1]) == ["x.a.test.", "y.a.test.", "z.a.test."]
    assert all(not isinstance(r, BaseException) for r in results.values())
