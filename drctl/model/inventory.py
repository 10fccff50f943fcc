"""Inventory: sites and hosts, DNS zones and servers, load balancers, and services.

Pure pydantic models, frozen, no I/O. Unknown keys are errors everywhere. Cross references
(a service's site, a record's zone, a backup's host, ``depends_on``) are checked in
``Inventory.check_references`` and reported with the path of the offending field, which
``model.load`` turns into ``file:line``.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import reprlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict, model_validator

from drctl.model.integrity import IntegrityTargets, integrity_reference_problems
from drctl.units import MAX_DURATION, MAX_NET_TIMEOUT, MAX_TIMEOUT, parse_duration


def _duration(maximum: float, *, positive: bool = False) -> Any:
    return BeforeValidator(lambda v: parse_duration(v, maximum=maximum, positive=positive))


#: an age or an objective: 0 to 365 days
Duration = Annotated[float, _duration(MAX_DURATION)]
#: how long a step or a command may take: above 0, at most 30 days
Timeout = Annotated[float, _duration(MAX_TIMEOUT, positive=True)]
#: how long one network exchange may take: above 0, at most an hour
NetTimeout = Annotated[float, _duration(MAX_NET_TIMEOUT, positive=True)]
#: a pause between tries: 0 to an hour
Interval = Annotated[float, _duration(MAX_NET_TIMEOUT)]
#: an integer written as one: never a YAML boolean, a float or a quoted string
Int = Annotated[int, Strict()]
Port = Annotated[int, Strict(), Field(ge=1, le=65535)]


def _version(value: Any) -> Any:
    if type(value) is not int:  # a Literal takes True or 1.0 for 1
        raise ValueError(f"expected version: 1, got {_short(value)}")
    return value


#: the file format's version
Version = Annotated[Literal[1], BeforeValidator(_version)]


_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict, _REPR.maxlevel = 80, 80, 4, 4, 2


def _short(value: Any) -> str:
    """``repr`` cut to a readable length (cheap for huge values)."""
    return _REPR.repr(value)


def _argv(value: Any) -> Any:
    """Command arguments as YAML writes them: numbers become text (``[sleep, 5]``); a bare
    true/false/null is almost certainly a mistake, so it must be quoted."""
    if isinstance(value, list):
        out = []
        for v in value:
            if isinstance(v, bool) or v is None:
                raise ValueError(f"argument {v!r} is a YAML boolean/null: quote it, e.g. 'true'")
            out.append(str(v) if isinstance(v, int | float) else v)
        return out
    return value


def _check_argv(argv: list[str]) -> list[str]:
    if not argv:
        raise ValueError("give at least the program to run, e.g. [systemctl, restart, app]")
    if not argv[0].strip():
        raise ValueError("the first argument, the program to run, is empty")
    for a in argv:
        if "\0" in a:
            raise ValueError(f"argument {_short(a)} contains a NUL character")
    return argv


Argv = Annotated[list[str], BeforeValidator(_argv), AfterValidator(_check_argv)]
_HOSTNAME = re.compile(r"^(\*\.)?([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*"
                       r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?$")
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)]


def _is_dns_name(text: str, *, wildcard: bool = False) -> bool:
    """A syntactically valid DNS name (at most 253 characters; ``*.`` first only if ``wildcard``)."""
    return (len(text.rstrip(".")) <= 253 and bool(_HOSTNAME.match(text))
            and (wildcard or not text.startswith("*.")))


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _address(value: str) -> str:
    if not (_is_ip(value) or _is_dns_name(value)):
        raise ValueError(f"{_short(value)} is not a host name or an IP address")
    return value


def _zone_name(value: str) -> str:
    if not _is_dns_name(value) or value in ("", "."):
        raise ValueError(f"{_short(value)} is not a valid zone name (e.g. example.com)")
    return value


def _dns_name(value: str) -> str:
    if not _is_dns_name(value):
        raise ValueError(f"{_short(value)} is not a valid DNS name")
    return value


def _no_blank(value: str) -> str:
    """User names, socket paths: non-empty, no whitespace or control characters."""
    if not value or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{_short(value)}: expected a non-empty value without spaces or control characters")
    return value


def _path(value: Any) -> Any:
    """A local file path: not empty, no NUL (checked before pydantic makes it a Path)."""
    text = str(value) if isinstance(value, Path) else value
    if isinstance(text, str) and (not text.strip() or "\0" in text):
        raise ValueError(f"{_short(text)} is not a file path: expected a non-empty path without NUL characters")
    return value


def _remote_path(value: str) -> str:
    """A path or glob on a host: not empty, no NUL or newline (they go into a remote command)."""
    if not value.strip() or "\0" in value or "\n" in value:
        raise ValueError(f"{_short(value)}: expected a non-empty path or glob without NUL or newline characters")
    return value


def _host_port(value: str) -> str:
    """``HOST:PORT`` or ``[IPv6]:PORT`` with a port of 1-65535."""
    m = re.match(r"^\[([0-9a-fA-F:.]+)\]:([0-9]{1,5})$", value) or re.match(r"^([^:\[\]]+):([0-9]{1,5})$", value)
    if not m or not (_is_ip(m.group(1)) or _is_dns_name(m.group(1))) or (":" in m.group(1) and "[" not in value):
        raise ValueError(f"{_short(value)}: expected HOST:PORT (e.g. 10.0.0.5:5432 or [2001:db8::5]:5432)")
    if not 1 <= int(m.group(2)) <= 65535:
        raise ValueError(f"{_short(value)}: the port must be 1-65535")
    return value


@functools.lru_cache(maxsize=4096)
def _http_url(value: str) -> str:
    """An http:// or https:// URL with a valid host, a port of 1-65535 if any, no whitespace."""
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{_short(value)}: a URL cannot contain spaces or control characters")
    try:
        parts = urlsplit(value)
        port = parts.port
        host = parts.hostname
    except ValueError:
        raise ValueError(f"{_short(value)}: expected http(s)://HOST[:PORT]/PATH with a port of 1-65535") from None
    if parts.scheme not in ("http", "https") or not value.lower().startswith(("http://", "https://")):
        raise ValueError(f"{_short(value)}: expected an http:// or https:// URL")
    if not host or not (_is_ip(host) or _is_dns_name(host)):
        raise ValueError(f"{_short(value)}: expected a host name or IP address after {parts.scheme}://")
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"{_short(value)}: the port must be 1-65535")
    return value


def _admin(value: str) -> str:
    """A HAProxy runtime API address: ``tcp://HOST:PORT`` or ``unix:///path/to/socket``."""
    expected = "expected tcp://HOST:PORT or unix:///path/to/socket"
    if value.startswith("tcp://"):
        try:
            _host_port(value[len("tcp://"):])
        except ValueError as e:
            raise ValueError(f"{expected}: {e}") from None
    elif value.startswith("unix:///"):
        try:
            _no_blank(value[len("unix://"):])
        except ValueError as e:
            raise ValueError(f"{expected}: {e}") from None
    else:
        raise ValueError(f"{expected}, got {_short(value)}")
    return value


Address = Annotated[str, AfterValidator(_address)]
ZoneName = Annotated[str, AfterValidator(_zone_name)]
LocalPath = Annotated[Path, BeforeValidator(_path)]
RemotePath = Annotated[str, AfterValidator(_remote_path)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
#: a HAProxy backend or server name (letters, digits, ``-_.:``): it goes into runtime API commands
HAProxyName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]+$", max_length=128)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- sites and hosts ---------------------------------------------------------------------------


class Host(_Model):
    """A machine drctl reaches over SSH."""

    address: Address
    port: Port = 22
    user: Annotated[str, AfterValidator(_no_blank)] | None = None
    key: LocalPath | None = None
    known_hosts: LocalPath | None = None
    connect_timeout: NetTimeout = 5.0


class Site(_Model):
    description: str = ""
    hosts: dict[Name, Host] = Field(default_factory=dict)


# --- DNS -----------------------------------------------------------------------------------------


class TsigRef(_Model):
    """A TSIG key, never inline: a file as ``tsig-keygen`` writes it, or an env var holding the
    same text (or ``name:algorithm:secret``)."""

    file: LocalPath | None = None
    env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=255)
    name: Annotated[str, AfterValidator(_dns_name)] | None = Field(
        None, description="the key's name (a DNS name), when the source holds several")

    @model_validator(mode="after")
    def _one_source(self) -> TsigRef:
        if (self.file is None) == (self.env is None):
            raise ValueError("give exactly one of `file` or `env` (secrets are never written inline)")
        return self


class DnsServer(_Model):
    address: Address
    port: Port = 53
    timeout: NetTimeout = 3.0


class Zone(_Model):
    """An authoritative zone. ``primary`` receives the UPDATEs; ``servers`` (primary included
    implicitly) are all asked when waiting for a change to be served everywhere."""

    primary: Name
    servers: list[Name] = Field(default_factory=list)
    tsig: TsigRef


# --- load balancers ------------------------------------------------------------------------------


class LoadBalancer(_Model):
    kind: Literal["haproxy"] = "haproxy"
    admin: Annotated[str, AfterValidator(_admin)] = Field(description="tcp://HOST:PORT or unix:///path/to/admin.sock")
    timeout: NetTimeout = 3.0


# --- services ------------------------------------------------------------------------------------


class BackupCheck(_Model):
    """Where a site's copy of the service's backup lives and how old it may be."""

    host: Name
    path: RemotePath | None = None
    glob: RemotePath = "*"
    command: Argv | None = Field(None, description="argv printing a timestamp (epoch or ISO 8601)")
    max_age: Duration = Field(description="RPO: the newest backup may not be older than this (at most 365d)")

    @model_validator(mode="after")
    def _path_or_command(self) -> BackupCheck:
        if (self.path is None) == (self.command is None):
            raise ValueError("give exactly one of `path` (with optional `glob`) or `command`")
        if self.command is not None and not self.command:
            raise ValueError("`command` must be a non-empty list of arguments")
        return self


class HealthCheck(_Model):
    http: HttpUrl | None = None
    tcp: Annotated[str, AfterValidator(_host_port)] | None = Field(None, description="HOST:PORT")
    expect_status: list[Annotated[int, Strict(), Field(ge=100, le=599)]] = Field(
        default_factory=lambda: list(range(200, 400)), min_length=1, description="HTTP status codes (100-599)")
    expect_body: str | None = None
    timeout: NetTimeout = 3.0
    retries: Int = Field(3, ge=1, le=100)
    interval: Interval = 1.0

    @model_validator(mode="after")
    def _one(self) -> HealthCheck:
        if (self.http is None) == (self.tcp is None):
            raise ValueError("give exactly one of `http` (a URL) or `tcp` (HOST:PORT)")
        return self


class ServiceSite(_Model):
    """What the service has at one site."""

    backup: BackupCheck | None = None
    health: HealthCheck | None = None


class DnsRecord(_Model):
    zone: ZoneName
    name: str = Field(description="relative to the zone, '@' for the apex, or a fully qualified name")
    type: Literal["A", "AAAA", "CNAME", "TXT"] = "A"
    ttl: Int = Field(60, ge=0, le=604800)
    values: dict[Name, str | list[str]] = Field(description="site -> value(s) served when it is active")

    @model_validator(mode="after")
    def _valid_values(self) -> DnsRecord:
        for site, v in self.values.items():
            values = [v] if isinstance(v, str) else v
            if not values:
                raise ValueError(f"values.{site}: give at least one value")
            if self.type == "CNAME" and len(values) != 1:
                raise ValueError(f"values.{site}: a CNAME has exactly one target")
            for value in values:
                problem = _record_value_problem(self.type, value)
                if problem:
                    raise ValueError(f"values.{site}: {_short(value)} {problem}")
        if not (self.name in ("@", "") or _is_dns_name(self.name, wildcard=True)):
            raise ValueError(f"name {_short(self.name)} is not a valid DNS name")
        if len(self.fqdn()) > 254:
            raise ValueError(f"{_short(self.fqdn())} is longer than a DNS name may be (253 characters)")
        return self

    def values_for(self, site: str) -> list[str]:
        v = self.values[site]
        return sorted([v] if isinstance(v, str) else v)

    def fqdn(self) -> str:
        zone = self.zone.rstrip(".")
        if self.name in ("@", ""):
            return zone + "."
        if self.name.endswith("."):
            return self.name
        return f"{self.name}.{zone}."


def _record_value_problem(rtype: str, value: str) -> str | None:
    """What is wrong with one value of a record of type ``rtype``, or None."""
    if rtype == "A":
        return None if _is_ipv(value, ipaddress.IPv4Address) else "is not an IPv4 address"
    if rtype == "AAAA":
        return None if _is_ipv(value, ipaddress.IPv6Address) else "is not an IPv6 address"
    if rtype == "CNAME":
        if _is_ip(value):
            return "is an IP address: a CNAME target is a host name (use an A or AAAA record for an address)"
        return None if _is_dns_name(value) else "is not a host name"
    return _txt_problem(value)


def _is_ipv(value: str, kind: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address]) -> bool:
    try:
        kind(value)
    except ValueError:
        return False
    return True


def _txt_problem(value: str) -> str | None:
    """A TXT value as the DNS driver sends it: quoted unless it already is, each string <= 255 bytes."""
    import dns.exception
    import dns.rdata
    import dns.rdataclass
    import dns.rdatatype

    text = value.strip()
    if not text.startswith('"'):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    try:
        dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, text)
    except (dns.exception.DNSException, ValueError) as e:
        return f"is not a valid TXT value ({e}); each string is at most 255 bytes"
    return None


class HAProxyTraffic(_Model):
    kind: Literal["haproxy"] = "haproxy"
    balancer: Name
    backend: HAProxyName
    servers: dict[Name, HAProxyName] = Field(description="site -> HAProxy server name in the backend")
    mode: Literal["maint", "drain"] = Field("maint", description="what the site moved away from becomes")
    frontend: HttpUrl | None = Field(
        None,
        description="URL of the service through this balancer; drills fetch it after each switch and expect "
                    "what the active site's health check expects")


class CommandTraffic(_Model):
    """Traffic steered by commands: ``activate`` runs on the target site's host (e.g. to claim a
    VIP); ``deactivate`` on the site being left, skipped when that site does not answer."""

    kind: Literal["command"]
    activate: dict[Name, CommandSpec]
    deactivate: dict[Name, CommandSpec] = Field(default_factory=dict)


class CommandSpec(_Model):
    host: Name
    argv: Argv = Field(min_length=1)
    timeout: Timeout = 60.0


Traffic = Annotated[HAProxyTraffic | CommandTraffic, Field(discriminator="kind")]


class Service(_Model):
    description: str = ""
    primary: Name
    backup: Name
    sites: dict[Name, ServiceSite] = Field(default_factory=dict)
    dns: list[DnsRecord] = Field(default_factory=list)
    traffic: Traffic | None = None
    depends_on: list[Name] = Field(default_factory=list)
    rto: Duration | None = Field(None, description="recovery time objective, checked by drills")
    rpo: Duration | None = Field(None, description="recovery point objective, checked by drills")
    integrity: IntegrityTargets = Field(default_factory=list, description="see `drctl verify`")

    @model_validator(mode="after")
    def _two_sites(self) -> Service:
        if self.primary == self.backup:
            raise ValueError("`primary` and `backup` must be different sites")
        return self

    def other_site(self, site: str) -> str:
        return self.backup if site == self.primary else self.primary


def _state_spec(value: str) -> str:
    """``etcd://HOST:PORT[,HOST:PORT...]/PREFIX`` (``drctl.core.statespec``); the reason otherwise."""
    from drctl.core.statespec import parse_state_spec

    parse_state_spec(value)
    return value


#: where runs keep their lock and journal, when not in the state directory
StateSpec = Annotated[str, Field(max_length=2048), AfterValidator(_state_spec)]


class Inventory(_Model):
    version: Version = 1
    name: str = "inventory"
    state: StateSpec | None = None
    sites: dict[Name, Site]
    dns_servers: dict[Name, DnsServer] = Field(default_factory=dict)
    zones: dict[ZoneName, Zone] = Field(default_factory=dict)
    load_balancers: dict[Name, LoadBalancer] = Field(default_factory=dict)
    services: dict[Name, Service]

    # where it was read from: relative paths in the file resolve against this directory
    base_dir: Path = Field(Path("."), exclude=True)

    def host(self, name: str) -> tuple[str, Host]:
        """(site name, Host) for a host name, which is unique across sites."""
        for site_name, site in self.sites.items():
            if name in site.hosts:
                return site_name, site.hosts[name]
        raise KeyError(name)

    def all_hosts(self) -> dict[str, Host]:
        return {h: host for site in self.sites.values() for h, host in site.hosts.items()}

    def resolve_path(self, p: Path | None) -> Path | None:
        if p is None:
            return None
        p = p.expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    def check_references(self) -> list[tuple[tuple[str | int, ...], str]]:
        """Every dangling reference or cycle as (field path, message)."""
        problems: list[tuple[tuple[str | int, ...], str]] = []
        host_site: dict[str, str] = {}
        for site_name, site_conf in self.sites.items():
            for h in site_conf.hosts:
                if h in host_site:
                    problems.append(
                        (("sites", site_name, "hosts", h),
                         f"host name {h!r} is already used in site {host_site[h]!r}; host names are unique")
                    )
                host_site.setdefault(h, site_name)
        for zname, zone in self.zones.items():
            for i, srv in enumerate([zone.primary, *zone.servers]):
                if srv not in self.dns_servers:
                    path: tuple[str | int, ...] = ("zones", zname, "primary") if i == 0 else (
                        "zones", zname, "servers", i - 1)
                    problems.append((path, f"unknown DNS server {srv!r}; known: {_known(self.dns_servers)}"))
        zones = {z.rstrip(".") for z in self.zones}
        record_owner: dict[tuple[str, str], str] = {}
        for sname, svc in self.services.items():
            base: tuple[str | int, ...] = ("services", sname)
            for i, rec in enumerate(svc.dns):
                owner = record_owner.setdefault((rec.fqdn().lower(), rec.type), sname)
                if owner != sname:
                    problems.append(((*base, "dns", i, "name"),
                                     f"{rec.fqdn()} {rec.type} is already managed by service {owner!r}"))
            for key in ("primary", "backup"):
                ref = getattr(svc, key)
                if ref not in self.sites:
                    problems.append(((*base, key), f"unknown site {ref!r}; known: {_known(self.sites)}"))
            pair = {svc.primary, svc.backup}
            for site_name, ss in svc.sites.items():
                if site_name not in pair:
                    problems.append(((*base, "sites", site_name),
                                     f"site {site_name!r} is neither this service's primary nor its backup"))
                if ss.backup is not None and ss.backup.host not in host_site:
                    problems.append(((*base, "sites", site_name, "backup", "host"),
                                     f"unknown host {ss.backup.host!r}; known: {_known(host_site)}"))
            for i, rec in enumerate(svc.dns):
                if rec.zone.rstrip(".") not in zones:
                    problems.append(((*base, "dns", i, "zone"),
                                     f"unknown zone {rec.zone!r}; known: {_known(self.zones)}"))
                if rec.name.endswith(".") and not (rec.name.rstrip(".") + ".").endswith(rec.zone.rstrip(".") + "."):
                    problems.append(((*base, "dns", i, "name"), f"{rec.name!r} is not inside zone {rec.zone!r}"))
                for site in sorted(pair - set(rec.values)):
                    problems.append(((*base, "dns", i, "values"), f"no value for site {site!r}"))
                for site in sorted(set(rec.values) - pair):
                    problems.append(((*base, "dns", i, "values", site),
                                     f"site {site!r} is neither this service's primary nor its backup"))
            tr = svc.traffic
            if isinstance(tr, HAProxyTraffic):
                if tr.balancer not in self.load_balancers:
                    problems.append(((*base, "traffic", "balancer"),
                                     f"unknown load balancer {tr.balancer!r}; known: {_known(self.load_balancers)}"))
                for site in sorted(pair - set(tr.servers)):
                    problems.append(((*base, "traffic", "servers"), f"no server for site {site!r}"))
            elif isinstance(tr, CommandTraffic):
                for part in ("activate", "deactivate"):
                    for site, spec in getattr(tr, part).items():
                        if site not in pair:
                            problems.append(((*base, "traffic", part, site),
                                             f"site {site!r} is neither this service's primary nor its backup"))
                        if spec.host not in host_site:
                            problems.append(((*base, "traffic", part, site, "host"),
                                             f"unknown host {spec.host!r}; known: {_known(host_site)}"))
            problems += integrity_reference_problems(base, svc.integrity, (svc.primary, svc.backup), host_site)
            for i, dep in enumerate(svc.depends_on):
                if dep not in self.services:
                    problems.append(((*base, "depends_on", i),
                                     f"unknown service {dep!r}; known: {_known(self.services)}"))
                elif dep == sname:
                    problems.append(((*base, "depends_on", i), "a service cannot depend on itself"))
        cycle = find_cycle({s: [d for d in v.depends_on if d in self.services and d != s]
                            for s, v in self.services.items()})
        if cycle:
            shown = cycle if len(cycle) <= 12 else [*cycle[:6], f"... ({len(cycle) - 11} more)", *cycle[-5:]]
            problems.append((("services", cycle[0], "depends_on"), "dependency cycle: " + " -> ".join(shown)))
        return problems


def _known(d: Any, limit: int = 12) -> str:
    """The names defined, sorted, at most ``limit`` of them (messages stay short in big inventories)."""
    names = sorted(d)
    if not names:
        return "(none defined)"
    more = len(names) - limit
    return ", ".join(names[:limit]) + (f", ... ({more} more)" if more > 0 else "")


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """A cycle in a dependency graph as [a, b, ..., a], or None. Iterative: a chain of any length
    is walked without recursion."""
    WHITE, GREY, BLACK = 0, 1, 2
    color = dict.fromkeys(graph, WHITE)
    for start in sorted(graph):
        if color[start] != WHITE:
            continue
        path: list[str] = [start]  # the GREY nodes, in order
        todo: list[Iterator[str]] = [iter(graph.get(start, []))]
        color[start] = GREY
        while todo:
            d = next(todo[-1], None)
            if d is None:
                todo.pop()
                color[path.pop()] = BLACK
            elif color.get(d) == GREY:
                return path[path.index(d):] + [d]
            elif color.get(d) == WHITE:
                color[d] = GREY
                path.append(d)
                todo.append(iter(graph.get(d, [])))
    return None


CommandTraffic.model_rebuild()
Service.model_rebuild()
