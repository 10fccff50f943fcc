"""DNS records on authoritative servers (dnspython): read them, and change them with one
TSIG-signed RFC 2136 UPDATE per zone whose prerequisites make it a compare-and-set.

* ``query`` / ``soa_serial`` ask one server directly (UDP on a connected socket, so a stopped
  server is seen as "refused" at once; TCP when the answer is truncated) and expect an
  authoritative answer. Timeouts and refused connections are retried (3 tries, backoff capped
  at 1 s); ``timeout`` is per try.
* ``update_zone`` reads every record first: a record already at its new value is left out (so
  running it again is a no-op), a record that is neither the expected old value nor the new one
  is a ``DNSConflictError`` and nothing is sent. The UPDATE then requires each record to still
  hold what was read (``present`` with those values, or ``absent``), so a change made by someone
  else in between makes the server refuse the whole message (it is applied atomically). If the
  UPDATE times out, the records are read again and the UPDATE is re-sent only for what is still
  to do: the prerequisites guarantee it cannot apply twice. The result is read back to confirm.
* TSIG keys are loaded from a file as ``tsig-keygen`` writes it or from an environment variable;
  the secret never appears in a repr, a log line or an error message.

Record values are read as in a zone file, except that names in them (a CNAME target) are taken
as fully qualified even without the trailing dot, and a TXT value not already in double quotes is
one string. dnspython is imported inside the functions that use it.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import os
import re
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from drctl.drivers.retry import ATTEMPTS, call_with_retry
from drctl.errors import ConfigError, DNSConflictError, DNSError, DNSUnreachableError, TSIGError

if TYPE_CHECKING:
    import dns.message
    import dns.name
    import dns.rdata
    import dns.tsig

log = logging.getLogger("drctl.drivers.dns")

Server = tuple[str, int]
T = TypeVar("T")

# BIND's names for the TSIG algorithms -> dnspython's
_ALGORITHMS = {
    "hmac-md5": "hmac-md5.sig-alg.reg.int",
    "hmac-md5.sig-alg.reg.int": "hmac-md5.sig-alg.reg.int",
    "hmac-sha1": "hmac-sha1",
    "hmac-sha224": "hmac-sha224",
    "hmac-sha256": "hmac-sha256",
    "hmac-sha384": "hmac-sha384",
    "hmac-sha512": "hmac-sha512",
}

_CONFLICT_RCODES = {"NXRRSET", "YXRRSET", "NXDOMAIN", "YXDOMAIN"}


# --- TSIG keys -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TsigKey:
    """A TSIG key. The secret (base64) is left out of repr and str."""

    name: str
    algorithm: str
    secret: str = field(repr=False)

    def _dns_key(self) -> dns.tsig.Key:
        import dns.tsig

        return dns.tsig.Key(self.name, self.secret, _ALGORITHMS[self.algorithm])


_KEY_BLOCK = re.compile(r'\bkey\s+("([^"]+)"|([^\s{;"]+))\s*\{(.*?)\}\s*;', re.S)
_KEY_ALG = re.compile(r'\balgorithm\s+"?([A-Za-z0-9.-]+)"?\s*;')
_KEY_SECRET = re.compile(r'\bsecret\s+"([^"]*)"\s*;')
# comments outside quoted strings (a base64 secret may well contain "//")
_COMMENT = re.compile(r'("(?:[^"\\]|\\.)*")|(?:#|//)[^\n]*|/\*.*?\*/', re.S)


def _check_key(name: str, algorithm: str, secret: str, where: str) -> TsigKey:
    name = name.strip().rstrip(".")
    algorithm = algorithm.strip().lower()
    secret = secret.strip()
    if not name:
        raise ConfigError(f"{where}: the TSIG key has no name")
    if algorithm not in _ALGORITHMS:
        raise ConfigError(f"{where}: TSIG key {name!r}: unsupported algorithm {algorithm!r} "
                          f"(supported: {', '.join(sorted(a for a in _ALGORITHMS if '.' not in a))})")
    try:
        raw = base64.b64decode(secret, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if not raw:
        raise ConfigError(f"{where}: TSIG key {name!r}: the secret is not valid base64")
    return TsigKey(name=name, algorithm=algorithm, secret=secret)


def _parse_key_text(text: str, where: str, name: str | None) -> TsigKey:
    text = _COMMENT.sub(lambda m: m.group(1) or "", text)
    keys: dict[str, TsigKey] = {}
    for m in _KEY_BLOCK.finditer(text):
        kname = m.group(2) or m.group(3)
        body = m.group(4)
        alg = _KEY_ALG.search(body)
        sec = _KEY_SECRET.search(body)
        if not alg or not sec:
            missing = "algorithm" if not alg else "secret"
            raise ConfigError(f"{where}: TSIG key {kname!r} has no `{missing} ...;` line")
        keys[kname.rstrip(".")] = _check_key(kname, alg.group(1), sec.group(1), where)
    if not keys:
        raise ConfigError(f'{where}: no `key "NAME" {{ algorithm ...; secret "..."; }};` block found '
                          "(expected the output of tsig-keygen)")
    if name is not None:
        try:
            return keys[name.rstrip(".")]
        except KeyError:
            found = ", ".join(sorted(keys))
            raise ConfigError(f"{where}: no TSIG key named {name!r}; found: {found}") from None
    if len(keys) > 1:
        found = ", ".join(sorted(keys))
        raise ConfigError(f"{where}: several TSIG keys ({found}); say which one with `name`")
    return next(iter(keys.values()))


def load_tsig_key(file: Path | None = None, env: str | None = None, *, name: str | None = None) -> TsigKey:
    """A TSIG key from a file (``tsig-keygen`` output) or an environment variable holding that
    same text or ``name:algorithm:secret``. ``name`` picks one key when the file holds several.
    Raises ConfigError when missing or malformed (never quoting the secret)."""
    if (file is None) == (env is None):
        raise ConfigError("a TSIG key needs exactly one of a file or an environment variable")
    if file is not None:
        try:
            text = Path(file).read_text()
        except OSError as exc:
            raise ConfigError(f"TSIG key file {file}: {exc.strerror or exc}") from None
        return _parse_key_text(text, f"TSIG key file {file}", name)
    assert env is not None
    value = os.environ.get(env)
    where = f"environment variable {env}"
    if value is None or not value.strip():
        raise ConfigError(f"{where} is not set (it should hold the TSIG key)")
    if re.search(r"\bkey\b", value) and "{" in value:
        return _parse_key_text(value, where, name)
    parts = value.strip().split(":", 2)
    if len(parts) != 3:
        raise ConfigError(f"{where}: expected `name:algorithm:secret` or a tsig-keygen `key` block")
    key = _check_key(parts[0], parts[1], parts[2], where)
    if name is not None and key.name != name.rstrip("."):
        raise ConfigError(f"{where}: holds TSIG key {key.name!r}, not {name!r}")
    return key


# --- transport -------------------------------------------------------------------------------------


class _Transient(Exception):
    """No answer (timeout) or connection refused: worth another try."""

    def __init__(self, reason: str, refused: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.refused = refused


def _where(server: Server) -> str:
    host, port = server
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _address(server: Server) -> str:
    host = server[0]
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, server[1], type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise DNSUnreachableError(f"DNS server {_where(server)}: cannot resolve its address: {exc}") from None
    return str(infos[0][4][0])


def _exchange(msg: dns.message.Message, server: Server, timeout: float, *, tcp: bool) -> dns.message.Message:
    """Send one message, return the answer. Raises _Transient, TSIGError or DNSError."""
    import dns.exception
    import dns.message
    import dns.query
    import dns.tsig

    addr = _address(server)
    port = server[1]
    try:
        if tcp:
            return dns.query.tcp(msg, addr, timeout=timeout, port=port)
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.connect((addr, port))  # connected: an ICMP port unreachable surfaces as "refused"
            answer, _tcp_used = dns.query.udp_with_fallback(msg, addr, timeout=timeout, port=port,
                                                            udp_sock=sock)
            return answer
    except dns.exception.Timeout:
        raise _Transient(f"no answer within {timeout:g}s", refused=False) from None
    except ConnectionRefusedError:
        raise _Transient("connection refused", refused=True) from None
    except (ConnectionResetError, EOFError, BrokenPipeError):
        raise _Transient("connection closed without an answer", refused=False) from None
    except dns.tsig.PeerBadKey:
        raise TSIGError(_tsig_text(msg, server, "BADKEY", "the server has no key of this name and algorithm"),
                        hint="check the key name and algorithm against the server's configuration") from None
    except dns.tsig.PeerBadSignature:
        raise TSIGError(_tsig_text(msg, server, "BADSIG", "the secret does not match the server's"),
                        hint="check the key's secret against the server's configuration") from None
    except dns.tsig.PeerBadTime:
        raise TSIGError(_tsig_text(msg, server, "BADTIME", "our clock and the server's differ too much"),
                        hint="check NTP on this machine and on the DNS server") from None
    except dns.tsig.PeerError as exc:
        raise TSIGError(_tsig_text(msg, server, type(exc).__name__, str(exc))) from None
    except (dns.tsig.BadSignature, dns.message.UnknownTSIGKey, dns.tsig.BadKey) as exc:
        raise TSIGError(f"DNS server {_where(server)}: its answer failed TSIG verification "
                        f"({type(exc).__name__}); not trusting it") from None
    except OSError as exc:
        raise _Transient(exc.strerror or str(exc), refused=False) from None
    except dns.exception.DNSException as exc:
        raise DNSError(f"DNS server {_where(server)}: bad answer: {exc}") from None


def _tsig_text(msg: dns.message.Message, server: Server, code: str, why: str) -> str:
    name = msg.keyname.to_text(omit_final_dot=True) if msg.keyname is not None else "?"
    return f"DNS server {_where(server)} rejected our TSIG key {name}: {code} ({why})"


def _with_retry(fn: Callable[[], T], server: Server, what: str, timeout: float) -> T:
    try:
        return call_with_retry(fn, retry_on=(_Transient,), what=f"DNS {what} at {_where(server)}")
    except _Transient as exc:
        if exc.refused:
            raise DNSUnreachableError(
                f"DNS server {_where(server)} refused {what} ({ATTEMPTS} tries)",
                hint="is the DNS server running and listening on that address and port?") from None
        raise DNSUnreachableError(
            f"DNS server {_where(server)} did not answer {what}: {exc.reason} ({ATTEMPTS} tries)",
            hint="is the server up (not hung) and reachable through firewalls?") from None


# --- names and values ------------------------------------------------------------------------------


def _name(text: str) -> dns.name.Name:
    import dns.name

    try:
        return dns.name.from_text(text if text.endswith(".") else text + ".")
    except Exception as exc:  # noqa: BLE001 (dnspython raises several kinds)
        raise ConfigError(f"invalid DNS name {text!r}: {exc}") from None


def _rdatas(name: str, rdtype: str, values: list[str]) -> list[dns.rdata.Rdata]:
    import dns.name
    import dns.rdata
    import dns.rdataclass
    import dns.rdatatype

    try:
        rt = dns.rdatatype.from_text(rdtype)
    except Exception:  # noqa: BLE001
        raise ConfigError(f"{name}: unknown record type {rdtype!r}") from None
    out = []
    for v in values:
        text = v.strip()
        if rt == dns.rdatatype.TXT and not text.startswith('"'):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        try:
            out.append(dns.rdata.from_text(dns.rdataclass.IN, rt, text, origin=dns.name.root,
                                           relativize=False))
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"{name} {rdtype}: invalid value {v!r}: {exc}") from None
    return out


def _canonical(name: str, rdtype: str, values: list[str]) -> list[str]:
    return sorted({r.to_text() for r in _rdatas(name, rdtype, values)})


def normalize_values(rdtype: str, values: list[str]) -> list[str]:
    """Inventory values as ``query`` returns them (sorted, canonical text: a CNAME target with
    its trailing dot, a TXT value in double quotes), to compare the two. ConfigError if invalid."""
    return _canonical("(value)", rdtype, values)


def _show(values: list[str]) -> str:
    return ", ".join(values) if values else "(absent)"


# --- reading ---------------------------------------------------------------------------------------


def _lookup(server: Server, name: str, rdtype: str, timeout: float) -> tuple[int | None, list[str]]:
    """(TTL or None, sorted value texts) of one RRset, asked of ``server`` with retries."""
    import dns.flags
    import dns.message
    import dns.rcode
    import dns.rdataclass
    import dns.rdatatype

    qname = _name(name)
    try:
        rt = dns.rdatatype.from_text(rdtype)
    except Exception:  # noqa: BLE001
        raise ConfigError(f"{name}: unknown record type {rdtype!r}") from None
    q = dns.message.make_query(qname, rt)
    q.flags &= ~dns.flags.RD
    what = f"the query {qname} {rdtype}"
    answer = _with_retry(lambda: _exchange(q, server, timeout, tcp=False), server, what, timeout)
    rcode = answer.rcode()
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        raise DNSError(f"DNS server {_where(server)} answered {dns.rcode.to_text(rcode)} to {qname} {rdtype}",
                       hint="is this server authoritative for the zone (and is the zone loaded)?")
    if not answer.flags & dns.flags.AA:
        raise DNSError(f"DNS server {_where(server)} is not authoritative for {qname} "
                       "(answer without the AA flag)", hint="point drctl at the zone's authoritative servers")
    if rcode == dns.rcode.NXDOMAIN:
        return None, []
    rrset = answer.get_rrset(answer.answer, qname, dns.rdataclass.IN, rt)
    if rrset is None:
        return None, []
    return rrset.ttl, sorted({r.to_text() for r in rrset})


def query(server: Server, name: str, rdtype: str, *, timeout: float = 3.0) -> list[str]:
    """The values of ``name``/``rdtype`` on ``server``, sorted texts; [] for NXDOMAIN / NODATA.
    Raises DNSUnreachableError (no answer, refused) or DNSError (not authoritative, REFUSED...)."""
    return _lookup(server, name, rdtype, timeout)[1]


def soa_serial(server: Server, zone: str, *, timeout: float = 3.0) -> int:
    """The SOA serial of ``zone`` as ``server`` serves it."""
    _ttl, values = _lookup(server, zone, "SOA", timeout)
    if not values:
        raise DNSError(f"DNS server {_where(server)} has no SOA for zone {zone}",
                       hint="is the zone name right, and is it loaded on this server?")
    return int(values[0].split()[2])


# --- changing --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordChange:
    """Move one RRset from ``old`` to ``new`` values (``[]`` means absent)."""

    name: str
    rdtype: str
    ttl: int
    old: list[str]
    new: list[str]


def _update_message(zone: str, key: TsigKey) -> Any:
    import dns.update

    if key.algorithm not in _ALGORITHMS:
        raise ConfigError(f"TSIG key {key.name!r}: unsupported algorithm {key.algorithm!r}")
    dkey = key._dns_key()
    return dns.update.UpdateMessage(_name(zone), keyring=dkey, keyname=dkey.name, keyalgorithm=dkey.algorithm)


def _check_update_answer(answer: dns.message.Message, server: Server, zone: str, key: TsigKey,
                         conflict: str) -> None:
    import dns.rcode

    rcode = answer.rcode()
    text = dns.rcode.to_text(rcode)
    if rcode == dns.rcode.NOERROR:
        return
    if text in _CONFLICT_RCODES:
        raise DNSConflictError(f"DNS server {_where(server)} refused the UPDATE of zone {zone} ({text}): "
                               f"{conflict}; nothing was changed",
                               hint="see who changed the record, then plan again")
    if rcode == dns.rcode.NOTAUTH and answer.tsig_error:
        code = dns.rcode.to_text(dns.rcode.Rcode(answer.tsig_error))
        raise TSIGError(f"DNS server {_where(server)} rejected our TSIG key {key.name}: {code}")
    if rcode == dns.rcode.REFUSED:
        raise DNSError(f"DNS server {_where(server)} REFUSED the UPDATE of zone {zone}",
                       hint=f"is it the zone's primary, and does its allow-update / update-policy allow key "
                            f"{key.name}?")
    if rcode == dns.rcode.NOTAUTH:
        raise DNSError(f"DNS server {_where(server)} is not authoritative for zone {zone} (NOTAUTH)",
                       hint="send UPDATEs to the zone's primary server")
    raise DNSError(f"DNS server {_where(server)} answered {text} to the UPDATE of zone {zone}")


def update_zone(server: Server, zone: str, key: TsigKey, changes: list[RecordChange], *,
                timeout: float = 5.0) -> list[str]:
    """Apply ``changes`` (all in ``zone``) with one signed UPDATE; return the names changed, as given
    in ``changes`` ([] when every record was already at its new value). See the module docstring
    for the guarantees.

    Raises DNSConflictError (a record is neither old nor new, or changed meanwhile), TSIGError
    (key rejected), DNSError (REFUSED, NOTAUTH, wrong read-back), DNSUnreachableError."""
    zone_name = _name(zone)
    seen: set[tuple[str, str]] = set()
    prepared: list[tuple[RecordChange, dns.name.Name, list[str], list[str]]] = []
    for ch in changes:
        qname = _name(ch.name)
        if not qname.is_subdomain(zone_name):
            raise ConfigError(f"{ch.name} is not inside zone {zone}")
        ident = (qname.to_text().lower(), ch.rdtype.upper())
        if ident in seen:
            raise ConfigError(f"{ch.name} {ch.rdtype} appears twice in one update of zone {zone}")
        seen.add(ident)
        old, new = _canonical(ch.name, ch.rdtype, ch.old), _canonical(ch.name, ch.rdtype, ch.new)
        prepared.append((ch, qname, old, new))

    first_pending: list[str] | None = None
    for attempt in range(1, ATTEMPTS + 1):
        msg = _update_message(zone, key)
        pending: list[str] = []
        for ch, qname, old, new in prepared:
            ttl, current = _lookup(server, qname.to_text(), ch.rdtype, timeout)
            if current == new and (not new or ttl == ch.ttl):
                continue
            if current == new:  # values right, TTL not
                prereq = new
            elif current == old:
                prereq = old
            else:
                raise DNSConflictError(
                    f"{qname} {ch.rdtype}: expected {_show(old)} (or already {_show(new)}) but "
                    f"DNS server {_where(server)} serves {_show(current)}: someone else changed it; "
                    "not overwriting, nothing was sent",
                    hint="check who changed the record, then plan again")
            if prereq:
                msg.present(qname, *_rdatas(ch.name, ch.rdtype, prereq))
            else:
                msg.absent(qname, ch.rdtype)
            if new:
                msg.replace(qname, ch.ttl, *_rdatas(ch.name, ch.rdtype, new))
            else:
                msg.delete(qname, ch.rdtype)
            pending.append(ch.name)
        if first_pending is None:
            first_pending = pending
        if not pending:
            break
        try:
            answer = _exchange(msg, server, timeout, tcp=True)
        except _Transient as exc:
            if attempt == ATTEMPTS:
                raise DNSUnreachableError(
                    f"DNS server {_where(server)} did not acknowledge the UPDATE of zone {zone}: "
                    f"{exc.reason} ({ATTEMPTS} tries); the change may or may not have been applied",
                    hint="query the records, or run again: the update is idempotent") from None
            log.info("UPDATE of zone %s at %s: %s; reading the records again before re-sending",
                     zone, _where(server), exc.reason)
            continue
        _check_update_answer(answer, server, zone, key,
                             "a record no longer holds the value read just before (changed meanwhile)")
        break

    # read back: every record must now serve its new value
    for ch, qname, _old, new in prepared:
        ttl, current = _lookup(server, qname.to_text(), ch.rdtype, timeout)
        if current != new:
            raise DNSError(f"after the UPDATE, DNS server {_where(server)} serves {qname} {ch.rdtype} "
                           f"= {_show(current)}, expected {_show(new)}")
    return list(first_pending or [])


def probe_update_key(server: Server, zone: str, key: TsigKey, *, timeout: float = 5.0) -> None:
    """Prove ``server`` accepts ``key`` for UPDATEs of ``zone`` without changing it: a signed UPDATE
    whose only content is a prerequisite that fails on purpose (a random name must exist).
    NXDOMAIN means the key was accepted. Raises TSIGError, DNSError, DNSUnreachableError."""
    import dns.rcode

    probe = f"drctl-probe-{secrets.token_hex(6)}.{zone.rstrip('.')}."

    def once() -> dns.message.Message:
        msg = _update_message(zone, key)
        msg.present(_name(probe))
        return _exchange(msg, server, timeout, tcp=True)

    answer = _with_retry(once, server, f"the UPDATE probe for zone {zone}", timeout)
    if answer.rcode() == dns.rcode.NOERROR or dns.rcode.to_text(answer.rcode()) in _CONFLICT_RCODES:
        return  # the prerequisite was evaluated: the key was accepted and may update the zone
    _check_update_answer(answer, server, zone, key, "unexpected prerequisite answer")
