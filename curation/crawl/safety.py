"""Refusing requests to private, loopback, link-local, multicast and other non-public addresses (SSRF).

Checked twice: IP literals in the URL before any request, and every address a host name resolves to inside the
connector's resolver, so the address that is checked is the address that is connected to (no DNS rebinding).
"""
from __future__ import annotations

import ipaddress
import socket
from typing import Iterable

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class PrivateAddressError(OSError):
    """A host resolved only to addresses the policy refuses."""


def parse_ip(host: str) -> IPAddress | None:
    """The address of an IP-literal host (brackets and IPv6 zone stripped), or None for a host name."""
    host = host.strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


class AddressPolicy:
    """Public addresses are allowed; others only when a configured CIDR contains them or the host is listed."""

    def __init__(self, allowed: Iterable[str] = ()):
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self.hosts: set[str] = set()
        self._literal_verdicts: dict[str, bool] = {}
        for entry in allowed:
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.hosts.add(entry.lower().rstrip("."))

    def allows(self, host: str, address: IPAddress) -> bool:
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address.is_global and not address.is_multicast:
            return True
        if host.lower().rstrip(".") in self.hosts:
            return True
        return any(address in net for net in self.networks if net.version == address.version)

    def refuses_literal(self, host: str) -> bool:
        """True when `host` is an IP literal the policy refuses (host names are checked when resolved)."""
        refused = self._literal_verdicts.get(host)
        if refused is None:  # parsing an address costs more than the rest of the check: once per host
            address = parse_ip(host)
            refused = self._literal_verdicts[host] = address is not None and not self.allows(host, address)
        return refused


class SafeResolver(AbstractResolver):
    """aiohttp resolver that drops refused addresses; raises PrivateAddressError when none is left."""

    def __init__(self, policy: AddressPolicy):
        self.policy = policy
        self.inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        allowed = [r for r in results if self.policy.allows(host, ipaddress.ip_address(r["host"].split("%", 1)[0]))]
        if not allowed:
            refused = ", ".join(sorted({r["host"] for r in results}))
            raise PrivateAddressError(f"{host} resolves to non-public address {refused}")
        return allowed

    async def close(self) -> None:
        await self.inner.close()
