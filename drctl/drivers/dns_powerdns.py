"""DNS records on a PowerDNS Authoritative server, through its HTTP API
(``/api/v1/servers/<id>/zones/<zone>``): read them, and change them with the same compare-and-set
semantics as the RFC 2136 driver (``dns_rfc2136.update_zone``).

* ``PowerDnsApi.read`` returns the values of one RRset as the API has them (disabled records,
  which the server does not serve, are left out), canonical as ``dns_rfc2136.normalize_values``
  writes them, with names in values (CNAME, NS, MX, PTR, SRV, DNAME targets) in lower case.
* ``PowerDnsApi.apply`` reads every RRset to change first. An RRset already at its new value (and
  TTL) is left out, so running it again is a no-op that returns ``[]``. An RRset that holds
  neither the expected old value nor the new one is a ``DNSConflictError`` naming the record,
  what it has and what was expected. As the RFC 2136 driver's UPDATE is all or nothing, so is
  this: if any change of the call conflicts, nothing at all is written. Otherwise the remaining
  changes go out in one PATCH of the zone (``changetype`` REPLACE with the TTL, or DELETE for a
  record that must become absent), which PowerDNS applies in one backend transaction. The
  records are then read back; one that no longer holds its new value is reported as a conflict.
* ``PowerDnsApi.probe_key`` proves, without changing anything, that the API accepts the key and
  has the zone as one it may change (GET of the zone, no records transferred). PowerDNS 4 has a
  single API key with full rights, so a key that may read a zone may also change it.

The residual race, said plainly: unlike an RFC 2136 UPDATE, whose prerequisites the server checks
atomically with the change, PowerDNS' API has no conditional write (no prerequisite, no ETag).
Between our read and our PATCH (one HTTP round trip, normally milliseconds) a change made by
someone else to the same RRset would be overwritten without either side noticing. The read-back
after the PATCH narrows this: a concurrent writer whose change lands after ours is reported as a
``DNSConflictError`` instead of being claimed as our success. What the read-back cannot see is a
foreign write that landed inside the window and was then replaced by ours.

Transport: ``http.client`` only (imported on first use), a new connection per request, every
request bounded by ``timeout`` (connect, send and the whole answer). Connection errors (refused,
reset, a connect that times out) are retried through ``drctl.drivers.retry``; a request that
reached the server and got no answer in time is not retried (a hung server is reported after one
timeout). A PATCH whose answer is lost is not sent again: the records are read once more and the
change is either confirmed or reported as possibly applied.

The API key comes from a file or an environment variable (``load_api_key``), never from the
inventory itself; it is sent only in the ``X-API-Key`` header and never appears in a repr, a log
line or an error message (errors name where the key came from).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

from drctl.drivers.dns_rfc2136 import RecordChange, normalize_values
from drctl.drivers.retry import ATTEMPTS, call_with_retry
from drctl.errors import ConfigError, DNSConflictError, DNSError, DNSUnreachableError, TSIGError

if TYPE_CHECKING:
    import http.client

__all__ = ["ApiKey", "PowerDnsApi", "RecordChange", "load_api_key"]

log = logging.getLogger("drctl.drivers.dns_powerdns")

# record types whose values are (or contain) domain names, compared case-insensitively
_NAME_TYPES = {"CNAME", "DNAME", "NS", "PTR", "MX", "SRV"}
# zone kinds that are copies of another server's zone: a change there is lost at the next transfer
_SECONDARY_KINDS = {"slave", "secondary", "consumer"}
_MAX_BODY = 256 * 1024 * 1024
_MAX_ERROR_TEXT = 300


# --- the API key -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiKey:
    """A PowerDNS API key and where it came from (``source``: ``file PATH`` or ``environment
    variable NAME``, for messages). The key itself is left out of repr and str."""

    secret: str = field(repr=False)
    source: str = "the calling program"

    def __str__(self) -> str:
        return f"API key from {self.source}"


def _check_key(secret: str, where: str, source: str) -> ApiKey:
    secret = secret.strip()
    if not secret:
        raise ConfigError(f"{where}: the PowerDNS API key is empty")
    if any(not (0x20 <= ord(c) < 0x7F) for c in secret):
        # http.client would refuse it, quoting the value in its message
        raise ConfigError(f"{where}: the PowerDNS API key has characters an HTTP header cannot carry "
                          "(line breaks, control or non-ASCII characters)")
    return ApiKey(secret=secret, source=source)


def load_api_key(file: Path | None = None, env: str | None = None) -> ApiKey:
    """The API key from a file (its first line; the rest of the file must be empty) or from an
    environment variable. Raises ConfigError when missing or malformed, never quoting the key."""
    if (file is None) == (env is None):
        raise ConfigError("a PowerDNS API key needs exactly one of a file or an environment variable")
    if file is not None:
        where = f"PowerDNS API key file {file}"
        try:
            text = Path(file).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "unreadable"
            raise ConfigError(f"{where}: {why}") from None
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) > 1:
            raise ConfigError(f"{where}: expected the key alone on one line, found {len(lines)} lines")
        return _check_key(lines[0] if lines else "", where, f"file {file}")
    assert env is not None
    where = f"environment variable {env}"
    value = os.environ.get(env)
    if value is None or not value.strip():
        raise ConfigError(f"{where} is not set (it should hold the PowerDNS API key)")
    return _check_key(value, where, where)


# --- names and values ------------------------------------------------------------------------------


def _fqdn(name: str) -> str:
    """``name`` fully qualified, lower case, with its trailing dot. ConfigError if invalid."""
    import dns.name

    text = name.strip()
    try:
        return dns.name.from_text(text if text.endswith(".") else text + ".").to_text().lower()
    except Exception as exc:  # noqa: BLE001 (dnspython raises several kinds)
        raise ConfigError(f"invalid DNS name {name!r}: {exc}") from None


def _rdtype(name: str, rdtype: str) -> str:
    """The record type's mnemonic in upper case. ConfigError for an unknown or meta type."""
    import dns.rdatatype

    try:
        rt = dns.rdatatype.from_text(rdtype.strip())
    except Exception:  # noqa: BLE001
        raise ConfigError(f"{name}: unknown record type {rdtype!r}") from None
    if dns.rdatatype.is_metatype(rt):
        raise ConfigError(f"{name}: {rdtype} is not a record type a zone holds")
    return dns.rdatatype.to_text(rt)


def _in_zone(fqdn: str, zone_fqdn: str) -> bool:
    return zone_fqdn == "." or fqdn == zone_fqdn or fqdn.endswith("." + zone_fqdn)


def _canonical(rdtype: str, values: list[str]) -> list[str]:
    """Sorted canonical texts (``normalize_values``), names in values in lower case."""
    out = normalize_values(rdtype, values)
    if rdtype in _NAME_TYPES:
        out = sorted({v.lower() for v in out})
    return out


def _show(values: list[str]) -> str:
    return ", ".join(values) if values else "(absent)"


@dataclass(frozen=True)
class _Prepared:
    change: RecordChange
    name: str  # fqdn, lower case
    rdtype: str
    old: list[str]
    new: list[str]

    @property
    def label(self) -> str:
        return f"{self.name} {self.rdtype}"


# --- transport -------------------------------------------------------------------------------------


class _Unanswered(Exception):
    """No answer: the connection failed (``sent`` False: nothing reached the server), or the
    request went out and its answer did not come (``sent`` True)."""

    def __init__(self, reason: str, *, sent: bool, refused: bool = False, timed_out: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sent = sent
        self.refused = refused
        self.timed_out = timed_out


def _error_text(data: bytes) -> str:
    """The ``error`` of a PowerDNS JSON error answer, or the start of a plain-text one."""
    text = data.decode("utf-8", "replace").strip()
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        text = doc["error"]
    text = " ".join(text.split())
    return text[:_MAX_ERROR_TEXT] + ("..." if len(text) > _MAX_ERROR_TEXT else "")


class PowerDnsApi:
    """The HTTP API of one PowerDNS Authoritative server (``base_url`` like
    ``http://127.0.0.1:8081``; https is verified against the system's CA store). ``timeout``
    bounds each request, connect to last byte."""

    def __init__(self, base_url: str, api_key: ApiKey, server_id: str = "localhost", *,
                 timeout: float = 5.0) -> None:
        if not isinstance(api_key, ApiKey):
            raise ConfigError("the PowerDNS API key must be loaded from a file or an environment variable "
                              "(load_api_key)")
        parts = urlsplit(base_url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"PowerDNS API URL {base_url!r}: expected http://HOST:PORT or https://HOST:PORT")
        if parts.username is not None or parts.password is not None:
            raise ConfigError("PowerDNS API URL: must not carry credentials (the API key is given separately)")
        if parts.query or parts.fragment:
            raise ConfigError(f"PowerDNS API URL {base_url!r}: must not have a query or a fragment")
        try:
            port = parts.port
        except ValueError:
            raise ConfigError(f"PowerDNS API URL {base_url!r}: invalid port") from None
        if not server_id or "/" in server_id:
            raise ConfigError(f"PowerDNS server id {server_id!r} is not valid")
        if timeout <= 0:
            raise ConfigError("the PowerDNS API timeout must be positive")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self.server_id = server_id
        self.timeout = float(timeout)
        self._key = api_key
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.where = f"{self.scheme}://{host}:{self.port}{self.prefix}"

    def __repr__(self) -> str:
        return f"PowerDnsApi({self.where!r}, server_id={self.server_id!r}, timeout={self.timeout:g})"

    # --- HTTP ---------------------------------------------------------------------------------

    def _zone_path(self, zone: str, query: dict[str, str] | None = None) -> str:
        zone_id = _fqdn(zone).replace("=", "=3D").replace("/", "=2F")
        path = (f"{self.prefix}/api/v1/servers/{quote(self.server_id, safe='')}"
                f"/zones/{quote(zone_id, safe='=.')}")
        return path + ("?" + urlencode(query) if query else "")

    def _connection(self) -> http.client.HTTPConnection:
        import http.client

        if self.scheme == "https":
            import ssl

            return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                               context=ssl.create_default_context())
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def _once(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        """One request on a new connection: (status, body). Raises _Unanswered or DNSError."""
        import http.client

        deadline = time.monotonic() + self.timeout

        def remaining() -> float:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            return left

        conn = self._connection()
        try:
            try:
                conn.connect()
            except ConnectionRefusedError:
                raise _Unanswered("connection refused", sent=False, refused=True) from None
            except TimeoutError:
                raise _Unanswered(f"no connection within {self.timeout:g}s", sent=False, timed_out=True) from None
            except OSError as exc:
                self._tls_error(exc)
                raise _Unanswered(exc.strerror or str(exc) or type(exc).__name__, sent=False) from None
            headers = {"X-API-Key": self._key.secret, "Accept": "application/json"}
            if body is not None:
                headers["Content-Type"] = "application/json"
            try:
                sock = conn.sock  # http.client drops its reference once the answer says "close"
                assert sock is not None
                sock.settimeout(remaining())
                conn.request(method, path, body=body, headers=headers)
                sock.settimeout(remaining())
                resp = conn.getresponse()
                chunks: list[bytes] = []
                size = 0
                while not resp.isclosed():  # closed (with its socket) once the body is read
                    sock.settimeout(remaining())
                    chunk = resp.read(65536)
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > _MAX_BODY:
                        raise DNSError(f"PowerDNS API at {self.where}: answer larger than "
                                       f"{_MAX_BODY // (1024 * 1024)} MiB")
                    chunks.append(chunk)
                return resp.status, b"".join(chunks)
            except TimeoutError:
                raise _Unanswered(f"no answer within {self.timeout:g}s", sent=True, timed_out=True) from None
            except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
                raise _Unanswered("connection closed without an answer", sent=True) from None
            except http.client.HTTPException as exc:
                raise DNSError(f"PowerDNS API at {self.where}: bad HTTP answer ({type(exc).__name__})") from None
            except OSError as exc:
                raise _Unanswered(exc.strerror or str(exc) or type(exc).__name__, sent=True) from None
        finally:
            conn.close()

    def _tls_error(self, exc: OSError) -> None:
        ssl = sys.modules.get("ssl")
        if ssl is not None and isinstance(exc, ssl.SSLError):
            raise DNSError(f"PowerDNS API at {self.where}: TLS failed ({type(exc).__name__}: "
                           f"{getattr(exc, 'reason', None) or exc})",
                           hint="check the server's certificate and the URL's host name") from None

    def _request(self, method: str, path: str, what: str, body: Any = None) -> tuple[int, bytes]:
        """``_once`` with bounded retries of connection errors (for a GET also a connection closed
        before the answer). Raises _Unanswered after the last try."""
        data = json.dumps(body).encode() if body is not None else None
        idempotent = method == "GET"

        def should_retry(exc: BaseException) -> bool:
            assert isinstance(exc, _Unanswered)
            return not exc.sent or (idempotent and not exc.timed_out)

        return call_with_retry(lambda: self._once(method, path, data), retry_on=(_Unanswered,),
                               should_retry=should_retry, what=f"PowerDNS API {what} at {self.where}")

    def _unreachable(self, exc: _Unanswered, what: str) -> DNSUnreachableError:
        if exc.refused:
            return DNSUnreachableError(
                f"PowerDNS API at {self.where} refused the connection for {what} ({ATTEMPTS} tries)",
                hint="is pdns_server running with api=yes and webserver=yes on that address and port?")
        tries = "" if exc.sent and exc.timed_out else f" ({ATTEMPTS} tries)"
        return DNSUnreachableError(f"PowerDNS API at {self.where} did not answer {what}: {exc.reason}{tries}",
                                   hint="is the server up (not hung) and reachable through firewalls?")

    def _check_status(self, status: int, data: bytes, zone: str, what: str) -> None:
        if 200 <= status < 300:
            return
        if status in (401, 403):
            extra = " (or its webserver-allow-from does not include this address)" if status == 403 else ""
            raise TSIGError(f"PowerDNS API at {self.where} rejected our {self._key} for {what}: "
                            f"HTTP {status}{extra}",
                            hint="check that the key matches the server's api-key setting")
        if status == 404:
            raise DNSError(f"PowerDNS server {self.server_id!r} at {self.where} has no zone {_fqdn(zone)} "
                           "(HTTP 404)", hint="check the zone name and the server id (usually localhost)")
        if status in (400, 422):
            raise DNSError(f"PowerDNS API at {self.where} refused {what} (HTTP {status}): {_error_text(data)}")
        raise DNSError(f"PowerDNS API at {self.where} answered HTTP {status} to {what}: {_error_text(data)}")

    def _get_zone(self, zone: str, query: dict[str, str]) -> dict[str, Any]:
        what = f"the read of zone {_fqdn(zone)}"
        try:
            status, data = self._request("GET", self._zone_path(zone, query), what)
        except _Unanswered as exc:
            raise self._unreachable(exc, what) from None
        self._check_status(status, data, zone, what)
        try:
            doc = json.loads(data)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise DNSError(f"PowerDNS API at {self.where}: the answer to {what} is not a JSON object")
        kind = str(doc.get("kind", "")).lower()
        if kind in _SECONDARY_KINDS:
            raise DNSError(f"PowerDNS server at {self.where} holds zone {_fqdn(zone)} as a {kind} zone (a copy)",
                           hint="send changes to the zone's primary server")
        return doc

    def _rrsets(self, zone: str, name: str) -> dict[str, tuple[int | None, list[str]]]:
        """RR type -> (TTL, served values) of every RRset at ``name`` (lower-case fqdn)."""
        doc = self._get_zone(zone, {"rrset_name": name})
        rrsets = doc.get("rrsets")
        if not isinstance(rrsets, list):
            raise DNSError(f"PowerDNS API at {self.where}: no rrsets in the answer for zone {_fqdn(zone)}")
        out: dict[str, tuple[int | None, list[str]]] = {}
        for rrset in rrsets:  # filtered by the server (4.7+), and again here for older ones
            if not isinstance(rrset, dict) or str(rrset.get("name", "")).lower() != name:
                continue
            rdtype = str(rrset.get("type", "")).upper()
            values = [str(r.get("content", "")) for r in rrset.get("records") or []
                      if isinstance(r, dict) and not r.get("disabled")]
            try:
                canonical = _canonical(rdtype, values) if values else []
            except ConfigError as exc:
                raise DNSError(f"PowerDNS API at {self.where}: {name} {rdtype} holds a value drctl cannot "
                               f"read: {exc}") from None
            ttl = rrset.get("ttl")
            out[rdtype] = (int(ttl) if isinstance(ttl, int) else None, canonical)
        return out

    def _snapshot(self, zone: str, prepared: list[_Prepared]) -> dict[tuple[str, str], tuple[int | None, list[str]]]:
        """(name, type) -> (TTL, values) for every prepared change, one GET per distinct name."""
        by_name: dict[str, dict[str, tuple[int | None, list[str]]]] = {}
        for p in prepared:
            if p.name not in by_name:
                by_name[p.name] = self._rrsets(zone, p.name)
        return {(p.name, p.rdtype): by_name[p.name].get(p.rdtype, (None, [])) for p in prepared}

    # --- the driver's operations ------------------------------------------------------------------

    def read(self, zone: str, name: str, rdtype: str) -> list[str]:
        """The values of ``name``/``rdtype`` in ``zone`` as the API has them (sorted canonical texts,
        disabled records left out); [] when absent. Raises TSIGError (key rejected), DNSError,
        DNSUnreachableError, ConfigError (bad name or type)."""
        fqdn, rt = _fqdn(name), _rdtype(name, rdtype)
        if not _in_zone(fqdn, _fqdn(zone)):
            raise ConfigError(f"{name} is not inside zone {zone}")
        return self._rrsets(zone, fqdn).get(rt, (None, []))[1]

    def probe_key(self, zone: str) -> None:
        """Prove that the API accepts our key and has ``zone`` as a zone it may change, changing
        nothing. Raises TSIGError (key rejected), DNSError (no such zone, a secondary zone),
        DNSUnreachableError."""
        self._get_zone(zone, {"rrsets": "false"})

    def apply(self, zone: str, changes: list[RecordChange]) -> list[str]:
        """Compare-and-set ``changes`` (all in ``zone``) with one PATCH; return the names changed,
        as given in ``changes`` ([] when every record already had its new value and TTL). All or
        nothing: if any record holds neither its old nor its new value, nothing is written. See
        the module docstring for the guarantees and the residual race.

        Raises DNSConflictError (a record changed by someone else, before or right after our
        PATCH), TSIGError (key rejected), DNSError (the API refused the change), ConfigError (bad
        names or values), DNSUnreachableError."""
        prepared = self._prepare(zone, changes)
        if not prepared:
            return []
        current = self._snapshot(zone, prepared)
        pending: list[_Prepared] = []
        conflicts: list[str] = []
        for p in prepared:
            ttl, values = current[(p.name, p.rdtype)]
            if values == p.new and (not p.new or ttl == p.change.ttl):
                continue
            if values in (p.new, p.old):
                pending.append(p)
            else:
                conflicts.append(f"{p.label}: expected {_show(p.old)} (or already {_show(p.new)}) but "
                                 f"PowerDNS at {self.where} has {_show(values)}")
        if conflicts:
            raise DNSConflictError("; ".join(conflicts) + ": someone else changed it; not overwriting, "
                                   "nothing was sent", hint="check who changed the record, then plan again")
        if not pending:
            return []

        zone_fqdn = _fqdn(zone)
        what = f"the PATCH of zone {zone_fqdn}"
        body = {"rrsets": [self._rrset_change(p) for p in pending]}
        log.info("PATCH of zone %s at %s: %s", zone_fqdn, self.where, ", ".join(p.label for p in pending))
        try:
            status, data = self._request("PATCH", self._zone_path(zone), what, body)
        except _Unanswered as exc:
            if not exc.sent:
                raise self._unreachable(exc, what) from None
            # it may have been applied: look, do not send it again
            log.info("%s at %s: %s; reading the records again", what, self.where, exc.reason)
            try:
                after = self._snapshot(zone, pending)
            except DNSUnreachableError:
                after = {}
            if not after or any(after[(p.name, p.rdtype)][1] != p.new for p in pending):
                raise DNSUnreachableError(
                    f"PowerDNS API at {self.where} did not acknowledge {what}: {exc.reason}; "
                    "the change may or may not have been applied",
                    hint="read the records, or run again: the change is idempotent") from None
        else:
            self._check_status(status, data, zone, what)

        # read back: a writer whose change landed after ours is a conflict, not our success
        after = self._snapshot(zone, pending)
        lost = [f"{p.label} = {_show(after[(p.name, p.rdtype)][1])}, expected {_show(p.new)}"
                for p in pending if after[(p.name, p.rdtype)][1] != p.new]
        if lost:
            raise DNSConflictError(f"right after our PATCH of zone {zone_fqdn}, PowerDNS at {self.where} has "
                                   + "; ".join(lost) + ": someone else changed it meanwhile; not retrying",
                                   hint="check who changed the record, then plan again")
        return [p.change.name for p in pending]

    # --- helpers -----------------------------------------------------------------------------------

    def _prepare(self, zone: str, changes: list[RecordChange]) -> list[_Prepared]:
        zone_fqdn = _fqdn(zone)
        seen: set[tuple[str, str]] = set()
        out: list[_Prepared] = []
        for ch in changes:
            name = _fqdn(ch.name)
            rdtype = _rdtype(ch.name, ch.rdtype)
            if not _in_zone(name, zone_fqdn):
                raise ConfigError(f"{ch.name} is not inside zone {zone}")
            if rdtype == "SOA":
                raise ConfigError(f"{ch.name}: the SOA record is PowerDNS' own to change")
            if (name, rdtype) in seen:
                raise ConfigError(f"{ch.name} {rdtype} appears twice in one change of zone {zone}")
            seen.add((name, rdtype))
            old = _canonical(rdtype, ch.old) if ch.old else []
            new = _canonical(rdtype, ch.new) if ch.new else []
            if new and not 0 <= ch.ttl <= 2**31 - 1:
                raise ConfigError(f"{ch.name} {rdtype}: TTL {ch.ttl} out of range")
            out.append(_Prepared(ch, name, rdtype, old, new))
        return out

    @staticmethod
    def _rrset_change(p: _Prepared) -> dict[str, Any]:
        if not p.new:
            return {"name": p.name, "type": p.rdtype, "changetype": "DELETE"}
        return {"name": p.name, "type": p.rdtype, "ttl": p.change.ttl, "changetype": "REPLACE",
                "records": [{"content": v, "disabled": False} for v in p.new]}
