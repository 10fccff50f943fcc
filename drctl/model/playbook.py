"""Playbooks: the ordered steps run for every selected service, as a discriminated union on
``kind``. Pure models, no I/O.

Steps speak of two sites relative to the run: ``from`` (the site being left) and ``to`` (the site
taking over). A failover goes primary -> backup, a failback backup -> primary; the same step kinds
serve both.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from drctl.model.inventory import Argv, Interval, Name, Timeout, Version

SiteRole = Literal["from", "to"]


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(None, description="label shown in plans and reports")
    services: list[Name] | None = Field(None, description="run only for these services (default: all)")


class CheckFreshness(_Step):
    """The site's backup copy is not older than its ``max_age`` (RPO)."""

    kind: Literal["check_freshness"]
    site: SiteRole = "to"


class HealthCheckStep(_Step):
    """The site's health check answers (HTTP status / TCP connect)."""

    kind: Literal["health_check"]
    site: SiteRole = "to"


class FlipDns(_Step):
    """Point the service's DNS records at the ``to`` site: one signed UPDATE per zone, with
    prerequisites so that a record changed by someone else is reported, not overwritten."""

    kind: Literal["flip_dns"]


class WaitDns(_Step):
    """Every authoritative server of each zone answers the new values."""

    kind: Literal["wait_dns"]
    timeout: Timeout = 60.0
    interval: Interval = Field(0.2, description="between rounds of queries")


class RerouteTraffic(_Step):
    """Move the service's traffic to the ``to`` site (HAProxy server states, or commands)."""

    kind: Literal["reroute_traffic"]


class CommandStep(_Step):
    """Run a command over SSH on a host of a site. ``argv`` items may use ``{service}``,
    ``{from}`` and ``{to}``; every argument is quoted, nothing goes through a shell unquoted."""

    kind: Literal["command"]
    site: SiteRole = "to"
    host: Name | None = Field(None, description="default: the host holding the site's backup")
    argv: Argv = Field(min_length=1)
    timeout: Timeout = 60.0
    on_unreachable: Literal["skip", "fail"] | None = Field(
        None, description="default: skip when the site is `from` (it may be gone), fail when `to`")


class Pause(_Step):
    """Wait for the operator's approval (``--yes`` approves)."""

    kind: Literal["pause"]
    message: str = "Continue?"


class VerifyIntegrity(_Step):
    """Compare the service's integrity targets between its primary and backup copies."""

    kind: Literal["verify_integrity"]
    policy: Literal["block", "warn"] = "block"
    timeout: Timeout = Field(600.0, description="the step gives up after this (a half-dead host must not "
                                                 "hold a failover): a failure with `block`, a warning with `warn`")


Step = Annotated[
    CheckFreshness | HealthCheckStep | FlipDns | WaitDns | RerouteTraffic | CommandStep | Pause | VerifyIntegrity,
    Field(discriminator="kind"),
]

STEP_KINDS = ("check_freshness", "health_check", "flip_dns", "wait_dns", "reroute_traffic", "command",
              "pause", "verify_integrity")
#: kinds that change the world; everything else only looks
MUTATING_KINDS = frozenset({"flip_dns", "reroute_traffic", "command"})


class Playbook(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Version = 1
    name: str
    description: str = ""
    direction: Literal["failover", "failback"] = "failover"
    steps: list[Step] = Field(min_length=1)
