"""One DNS UPDATE per zone: ``flip_dns`` steps of services running side by side are coalesced.

The first service to submit changes for a zone becomes the batch's leader: it waits until every
service *expected* to flip that zone has joined, or a short window has passed, then sends all the
changes in one signed UPDATE (its prerequisites still guard every record). A service is expected
only from the moment it can move (its dependencies are done: the runner says so with ``expect``)
until it has submitted or ended without submitting (``withdraw``): a batch never waits for a
service of a later dependency wave. Should that UPDATE
be refused for one record (changed by someone else, or invalid), each service's changes are sent
on their own, so only the service whose record is at fault fails; an unreachable server or a
rejected key fails them all at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from drctl.errors import DNSUnreachableError, TSIGError

Send = Callable[[str, list[Any]], list[str]]  # (zone, changes) -> names actually updated


@dataclass
class _Ticket:
    changes: list[Any]
    done: threading.Event = field(default_factory=threading.Event)
    updated: list[str] = field(default_factory=list)
    error: BaseException | None = None
    batch_size: int = 1


@dataclass
class _Batch:
    tickets: list[_Ticket] = field(default_factory=list)
    full: threading.Event = field(default_factory=threading.Event)


class ZoneBatcher:
    def __init__(self, send: Send, expected: dict[str, int] | None = None, *, window: float = 0.05) -> None:
        """``expected``: zone -> how many flip_dns submissions are expected now (more with ``expect``)."""
        self._send = send
        self._remaining = dict(expected or {})
        self._window = window
        self._open: dict[str, _Batch] = {}
        self._lock = threading.Lock()

    def expect(self, zones: Sequence[str]) -> None:
        """A service that can move now will submit changes for each of ``zones``."""
        with self._lock:
            for zone in zones:
                self._remaining[zone] = self._remaining.get(zone, 0) + 1

    def withdraw(self, zones: Sequence[str]) -> None:
        """A service expected for ``zones`` ended without submitting: batches stop waiting for it."""
        with self._lock:
            for zone in zones:
                self._remaining[zone] = max(0, self._remaining.get(zone, 0) - 1)
                batch = self._open.get(zone)
                if batch is not None and self._remaining[zone] == 0:
                    batch.full.set()

    def submit(self, zone: str, changes: Sequence[Any], timeout: float = 120.0) -> tuple[list[str], int]:
        """Send ``changes`` (in a batch when others join); returns (names updated, batch size).
        Raises what sending raised for these changes."""
        ticket = _Ticket(list(changes))
        with self._lock:
            self._remaining[zone] = max(0, self._remaining.get(zone, 0) - 1)
            batch = self._open.get(zone)
            leader = batch is None
            if batch is None:
                batch = self._open[zone] = _Batch()
            batch.tickets.append(ticket)
            if self._remaining[zone] == 0:
                batch.full.set()
        if leader:
            batch.full.wait(self._window)
            with self._lock:
                if self._open.get(zone) is batch:
                    del self._open[zone]
            self._flush(zone, batch.tickets)
        elif not ticket.done.wait(timeout):
            raise TimeoutError(f"DNS batch for {zone} did not complete within {timeout:.0f}s")
        if ticket.error is not None:
            raise ticket.error
        return ticket.updated, ticket.batch_size

    def _flush(self, zone: str, tickets: list[_Ticket]) -> None:
        try:
            if len(tickets) == 1:
                self._one(zone, tickets[0], 1)
                return
            every = [c for t in tickets for c in t.changes]
            try:
                updated = set(self._send(zone, every))
            except (DNSUnreachableError, TSIGError) as e:  # the server or our key: the same for everyone
                for t in tickets:
                    t.error = e
                return
            except Exception:  # noqa: BLE001 - e.g. one record conflicts or is invalid: isolate it
                for t in tickets:
                    self._one(zone, t, 1)
                return
            for t in tickets:
                t.updated = [c.name for c in t.changes if c.name in updated]
                t.batch_size = len(tickets)
        finally:
            for t in tickets:
                t.done.set()

    def _one(self, zone: str, ticket: _Ticket, size: int) -> None:
        try:
            ticket.updated = self._send(zone, ticket.changes)
            ticket.batch_size = size
        except BaseException as e:
            ticket.error = e
