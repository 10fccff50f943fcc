"""Inventory: sites and hosts, DNS zones and servers, load balancers, and services.

Pure pydantic models, frozen, no I/O. Unknown keys are errors everywhere. Cross references
(a service's site, a record's zone, a backup's host, ``depends_on``) are checked in
``Inventory.check_references`` and reported with the path of the offending field, which
``model.load`` turns into ``file:line``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from drctl.model.integrity import IntegrityTargets, integrity_reference_problems
from drctl.units import parse_duration

Duration = Annotated[float, BeforeValidator(parse_duration)]
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


Argv = Annotated[list[str], BeforeValidator(_argv)]
_HOSTNAME = re.compile(r"^(\*\.)?([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*"
                       r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?$")
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- sites and hosts ---------------------------------------------------------------------------


class Host(_Model):
    """A machine drctl reaches over SSH."""

    address: str
    port: int = Field(22, ge=1, le=65535)
    user: str | None = None
    key: Path | None = None
    known_hosts: Path | None = None
    connect_timeout: Duration = 5.0


class Site(_Model):
    description: str = ""
    hosts: dict[Name, Host] = Field(default_factory=dict)


# --- DNS -----------------------------------------------------------------------------------------


class TsigRef(_Model):
    """A TSIG key, never inline: a file as ``tsig-keygen`` writes it, or an env var holding the
    same text (or ``name:algorithm:secret``)."""

    file: Path | None = None
    env: str | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> TsigRef:
        if (self.file is None) == (self.env is None):
            raise ValueError("give exactly one of `file` or `env` (secrets are never written inline)")
        return self


class DnsServer(_Model):
    address: str
    port: int = Field(53, ge=1, le=65535)
    timeout: Duration = 3.0


class Zone(_Model):
    """An authoritative zone. ``primary`` receives the UPDATEs; ``servers`` (primary included
    implicitly) are all asked when waiting for a change to be served everywhere."""

    primary: Name
    servers: list[Name] = Field(default_factory=list)
    tsig: TsigRef


# --- load balancers ------------------------------------------------------------------------------


class LoadBalancer(_Model):
    kind: Literal["haproxy"] = "haproxy"
    admin: str = Field(description="tcp://HOST:PORT or unix:///path/to/admin.sock")
    timeout: Duration = 3.0

    @model_validator(mode="after")
    def _admin_url(self) -> LoadBalancer:
        if not re.match(r"^(tcp://[^/:]+:\d+|tcp://\[[0-9a-fA-F:]+\]:\d+|unix:///.+)$", self.admin):
            raise ValueError("admin must be tcp://HOST:PORT or unix:///path/to/socket")
        return self


# --- services ------------------------------------------------------------------------------------


class BackupCheck(_Model):
    """Where a site's copy of the service's backup lives and how old it may be."""

    host: Name
    path: str | None = None
    glob: str = "*"
    command: Argv | None = Field(None, description="argv printing a timestamp (epoch or ISO 8601)")
    max_age: Duration = Field(description="RPO: the newest backup may not be older than this")

    @model_validator(mode="after")
    def _path_or_command(self) -> BackupCheck:
        if (self.path is None) == (self.command is None):
            raise ValueError("give exactly one of `path` (with optional `glob`) or `command`")
        if self.command is not None and not self.command:
            raise ValueError("`command` must be a non-empty list of arguments")
        return self


class HealthCheck(_Model):
    http: str | None = None
    tcp: str | None = Field(None, description="HOST:PORT")
    expect_status: list[int] = Field(default_factory=lambda: list(range(200, 400)))
    expect_body: str | None = None
    timeout: Duration = 3.0
    retries: int = Field(3, ge=1, le=100)
    interval: Duration = 1.0

    @model_validator(mode="after")
    def _one(self) -> HealthCheck:
        if (self.http is None) == (self.tcp is None):
            raise ValueError("give exactly one of `http` (a URL) or `tcp` (HOST:PORT)")
        if self.http is not None and not re.match(r"^https?://", self.http):
            raise ValueError("`http` must be an http:// or https:// URL")
        if self.tcp is not None and not re.match(r"^(\[[0-9a-fA-F:]+\]|[^:\s]+):\d+$", self.tcp):
            raise ValueError("`tcp` must be HOST:PORT")
        return self


class ServiceSite(_Model):
    """What the service has at one site."""

    backup: BackupCheck | None = None
    health: HealthCheck | None = None


class DnsRecord(_Model):
    zone: str
    name: str = Field(description="relative to the zone, '@' for the apex, or a fully qualified name")
    type: Literal["A", "AAAA", "CNAME", "TXT"] = "A"
    ttl: int = Field(60, ge=0, le=604800)
    values: dict[Name, str | list[str]] = Field(description="site -> value(s) served when it is active")

    @model_validator(mode="after")
    def _valid_values(self) -> DnsRecord:
        import ipaddress

        for site, v in self.values.items():
            values = [v] if isinstance(v, str) else v
            if not values:
                raise ValueError(f"values.{site}: give at least one value")
            if self.type == "CNAME" and len(values) != 1:
                raise ValueError(f"values.{site}: a CNAME has exactly one target")
            for value in values:
                try:
                    if self.type == "A":
                        ipaddress.IPv4Address(value)
                    elif self.type == "AAAA":
                        ipaddress.IPv6Address(value)
                except ValueError:
                    raise ValueError(f"values.{site}: {value!r} is not an {'IPv4' if self.type == 'A' else 'IPv6'} "
                                     "address") from None
                if self.type == "CNAME" and not _HOSTNAME.match(value):
                    raise ValueError(f"values.{site}: {value!r} is not a host name")
        if not (self.name in ("@", "") or _HOSTNAME.match(self.name)):
            raise ValueError(f"name {self.name!r} is not a valid DNS name")
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


class HAProxyTraffic(_Model):
    kind: Literal["haproxy"] = "haproxy"
    balancer: Name
    backend: str
    servers: dict[Name, str] = Field(description="site -> HAProxy server name in the backend")
    mode: Literal["maint", "drain"] = Field("maint", description="what the site moved away from becomes")
    frontend: str | None = Field(
        None, pattern=r"^https?://",
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
    timeout: Duration = 60.0


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


class Inventory(_Model):
    version: Literal[1] = 1
    name: str = "inventory"
    sites: dict[Name, Site]
    dns_servers: dict[Name, DnsServer] = Field(default_factory=dict)
    zones: dict[str, Zone] = Field(default_factory=dict)
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
                if rec.zone.rstrip(".") not in {z.rstrip(".") for z in self.zones}:
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
            problems.append((("services", cycle[0], "depends_on"), "dependency cycle: " + " -> ".join(cycle)))
        return problems


def _known(d: Any) -> str:
    names = sorted(d)
    return ", ".join(names) if names else "(none defined)"


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """A cycle in a dependency graph as [a, b, ..., a], or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    color = dict.fromkeys(graph, WHITE)
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        color[n] = GREY
        stack.append(n)
        for d in graph.get(n, []):
            if color.get(d) == GREY:
                return stack[stack.index(d):] + [d]
            if color.get(d) == WHITE:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        color[n] = BLACK
        return None

    for n in sorted(graph):
        if color[n] == WHITE:
            found = visit(n)
            if found:
                return found
    return None


CommandTraffic.model_rebuild()
Service.model_rebuild()
