"""Where runs keep their lock and journal: the state spec, parsed.

``None`` (or an empty string) means the state directory on this control node. Otherwise an etcd v3
cluster::

    etcd://HOST:PORT[,HOST:PORT...]/PREFIX[?ttl=SECONDS&timeout=SECONDS]
    etcds://...                      the same over TLS

``PREFIX`` is the key prefix every drctl key lives under (default ``/drctl``); ``ttl`` the lease
that keeps a run's lock alive (default 10 s, 2..300); ``timeout`` how long one request to one
member may take (default 2 s, 0.2..30). Credentials never go into the spec (it is printed, and
kept in inventories): user, password and TLS files come from the environment
(``drctl.engine.store_etcd``). Pure: standard library only, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

DEFAULT_PREFIX = "/drctl"
DEFAULT_TTL_S = 10
DEFAULT_TIMEOUT_S = 2.0
SCHEMES = {"etcd": "http", "etcds": "https"}

_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)$")
_PREFIX = re.compile(r"^(/[A-Za-z0-9_.-]+)+$")


class StateSpecError(ValueError):
    """A state spec that cannot be used; the message never repeats a credential."""


@dataclass(frozen=True)
class EtcdSpec:
    protocol: str  # http | https
    endpoints: tuple[tuple[str, int], ...]
    prefix: str
    ttl_s: int = DEFAULT_TTL_S
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __str__(self) -> str:
        scheme = next(s for s, p in SCHEMES.items() if p == self.protocol)
        hosts = ",".join(f"{h}:{p}" for h, p in self.endpoints)
        return f"{scheme}://{hosts}{self.prefix}"


def parse_state_spec(spec: str) -> EtcdSpec:
    """``etcd://h1:2379,h2:2379/drctl`` -> EtcdSpec; raises StateSpecError saying what is wrong."""
    scheme, sep, rest = spec.strip().partition("://")
    if not sep or scheme not in SCHEMES:
        raise StateSpecError("a state spec is etcd://HOST:PORT[,HOST:PORT...]/PREFIX (or etcds:// for TLS)")
    rest, _, query = rest.partition("?")
    hosts, slash, prefix = rest.partition("/")
    if "@" in hosts:
        raise StateSpecError("credentials do not belong in the state spec: set DRCTL_ETCD_USER and "
                             "DRCTL_ETCD_PASSWORD_FILE (or DRCTL_ETCD_PASSWORD) instead")
    endpoints: list[tuple[str, int]] = []
    for item in hosts.split(","):
        item = item.strip()
        m = re.match(r"^(\[[^\]]*\]|[^:]*)(?::([0-9]{1,5}))?$", item)
        if not item or m is None or not _HOST.match(m.group(1)):
            raise StateSpecError(f"{item!r} is not HOST:PORT")
        port = int(m.group(2) or 2379)
        if not 1 <= port <= 65535:
            raise StateSpecError(f"port {port} is out of range")
        endpoints.append((m.group(1).strip("[]"), port))
    if len(set(endpoints)) != len(endpoints):
        raise StateSpecError("an etcd member is listed twice")
    prefix = ("/" + prefix.strip("/")) if slash and prefix.strip("/") else DEFAULT_PREFIX
    if not _PREFIX.match(prefix) or any(part in (".", "..") for part in prefix.split("/")):
        raise StateSpecError(f"prefix {prefix!r}: use letters, digits and _.- between slashes")
    ttl, timeout = DEFAULT_TTL_S, DEFAULT_TIMEOUT_S
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        try:
            if key == "ttl":
                ttl = int(value)
                if not 2 <= ttl <= 300:
                    raise StateSpecError("ttl must be 2..300 seconds")
            elif key == "timeout":
                timeout = float(value)
                if not 0.2 <= timeout <= 30:
                    raise StateSpecError("timeout must be 0.2..30 seconds")
            else:
                raise StateSpecError(f"unknown option {key!r} (known: ttl, timeout)")
        except ValueError as e:
            if isinstance(e, StateSpecError):
                raise
            raise StateSpecError(f"{key} must be a number") from None
    return EtcdSpec(protocol=SCHEMES[scheme], endpoints=tuple(endpoints), prefix=prefix, ttl_s=ttl,
                    timeout_s=timeout)
