"""Active HTTP health checks: what to probe, and when an instance has failed enough to leave.

Many tasks define no container health check, so ECS reports ``UNKNOWN`` for ever. Cloud Map
offers Route 53 health checks only in public DNS namespaces; Service Connect uses HTTP
namespaces. For ECS services that opt in with a tag, the poller probes each registered instance
itself, the way a load balancer does, and counts consecutive failures across its passes.

Nothing here does I/O: the prober adapter sends the requests, the scanner decides.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeAlias

from cloudmap_reactor.core.model import HTTP_CHECK_CODES_TAG, HTTP_CHECK_TAG, EcsService

DEFAULT_CODES = "200-399"
# Cloud Map attributes Service Connect and ECS service discovery write on each instance.
IPV4_ATTRIBUTE = "AWS_INSTANCE_IPV4"
IPV6_ATTRIBUTE = "AWS_INSTANCE_IPV6"
PORT_ATTRIBUTE = "AWS_INSTANCE_PORT"

# ``/healthz`` or ``8081/healthz`` (a port, then the path). Tag values allow letters, digits,
# spaces and _ . : / = + - @ only, so no query string can appear here anyway.
_CHECK = re.compile(r"^(?:(?P<port>[0-9]{1,5}))?(?P<path>/[A-Za-z0-9._~:/=+@-]*)?$")
_CODE_RANGE = re.compile(r"^([1-5][0-9]{2})(?:-([1-5][0-9]{2}))?$")
# A port, in the tag or in AWS_INSTANCE_PORT: ASCII digits, no sign, no leading zero (then 1-65535).
_PORT_TEXT = re.compile(r"[1-9][0-9]{0,4}")


class InvalidHttpCheck(ValueError):
    """A service's http-check tags cannot be used; the service is not probed (and nothing removed)."""


@dataclass(frozen=True, slots=True)
class StatusCodes:
    """The HTTP status codes that count as healthy, as inclusive ranges."""

    ranges: tuple[tuple[int, int], ...]

    def __contains__(self, status: object) -> bool:
        return isinstance(status, int) and any(low <= status <= high for low, high in self.ranges)

    def __str__(self) -> str:
        return ",".join(str(low) if low == high else f"{low}-{high}" for low, high in self.ranges)


def parse_status_codes(text: str) -> StatusCodes:
    """``200-399``, ``200,204`` or ``200-299,301``: codes from 100 to 599."""
    ranges: list[tuple[int, int]] = []
    for part in text.replace(" ", "").split(","):
        match = _CODE_RANGE.fullmatch(part)
        if not match:
            raise InvalidHttpCheck(f"{HTTP_CHECK_CODES_TAG}={text!r}: {part!r} is not a status code or range")
        low = int(match.group(1))
        high = int(match.group(2) or low)
        if high < low:
            raise InvalidHttpCheck(f"{HTTP_CHECK_CODES_TAG}={text!r}: {part!r} is an empty range")
        ranges.append((low, high))
    return StatusCodes(tuple(ranges))


@dataclass(frozen=True, slots=True)
class HttpCheck:
    """How to probe the instances of one service: ``port`` None means the instance's own port."""

    path: str
    port: int | None
    codes: StatusCodes


def parse_http_check(check: str, codes: str | None = None) -> HttpCheck:
    """Read the ``cloudmap-reactor:http-check`` (and ``-codes``) tag values of a service."""
    match = _CHECK.fullmatch(check.strip())
    if not match or not (match.group("port") or match.group("path")):
        raise InvalidHttpCheck(
            f"{HTTP_CHECK_TAG}={check!r} must be a path (/healthz) or a port and a path (8081/healthz)"
        )
    port_text = match.group("port")
    if port_text is not None and (not _PORT_TEXT.fullmatch(port_text) or int(port_text) > 65535):
        raise InvalidHttpCheck(f"{HTTP_CHECK_TAG}={check!r}: port {port_text} is not from 1 to 65535")
    port = int(port_text) if port_text is not None else None
    return HttpCheck(
        path=match.group("path") or "/",
        port=port,
        codes=parse_status_codes(codes if codes and codes.strip() else DEFAULT_CODES),
    )


def http_check_of(service: EcsService) -> HttpCheck | None:
    """The service's check, None when it has not opted in; ``InvalidHttpCheck`` when its tags are wrong."""
    check = service.tag(HTTP_CHECK_TAG)
    if check is None or not check.strip():
        return None
    return parse_http_check(check, service.tag(HTTP_CHECK_CODES_TAG))


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """One registered instance to probe: the key the failure count is kept under, and the URL."""

    cloudmap_service_id: str
    instance_id: str
    url: str
    codes: StatusCodes

    @property
    def key(self) -> tuple[str, str]:
        return (self.cloudmap_service_id, self.instance_id)


class InvalidProbeTarget(InvalidHttpCheck):
    """An instance's registered address or port cannot be probed; the instance is left alone (and reported).

    Cloud Map attributes are written by whoever may call ``RegisterInstance``: they are untrusted input.
    """


ProbeAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

# The only texts taken as an address (ASCII only, and ``re.ASCII`` is implied by the explicit classes):
# IPv4 as four decimal octets, IPv6 as hex digits and colons (and dots for an embedded IPv4 tail).
# Anything else, a scope id (``%eth0``), brackets, ``@``, ``#``, ``/``, whitespace or a Unicode digit,
# is refused before it is parsed. The URL is built from the parsed address, never from this text.
_IPV4_TEXT = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
_IPV6_TEXT = re.compile(r"[0-9A-Fa-f:.]{2,45}")

_LOOPBACK = "loopback (inside Lambda: the function's own sandbox and its runtime API)"
# Addresses a probe never goes to, whatever Cloud Map says, and why. Checked in order; only the
# two loopback networks can be let through (``allow_loopback``, for local runs). Explicit networks
# rather than the ``is_*`` properties alone, whose answers for IPv4-mapped addresses changed in 3.13.
_REFUSED: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.ip_network(network), why)
    for network, why in (
        ("0.0.0.0/8", "unspecified ('this network': connecting to it reaches the local host)"),
        ("127.0.0.0/8", _LOOPBACK),
        ("169.254.0.0/16", "link-local (instance metadata, the ECS agent and credentials endpoints)"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved (and broadcast)"),
        ("::/128", "unspecified"),
        ("::1/128", _LOOPBACK),
        ("::ffff:0:0/96", "IPv4-mapped (an IPv4 address in IPv6 form)"),
        ("::/8", "reserved (IPv4-compatible, IPv4-translated and NAT64 forms of IPv4 addresses)"),
        ("fd00:ec2::/32", "the EC2 instance services (instance metadata fd00:ec2::254, DNS, time)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local (deprecated)"),
        ("ff00::/8", "multicast"),
        ("2002::/16", "6to4 (an IPv4 address in IPv6 form)"),
        ("2001::/32", "Teredo (an IPv4 address in IPv6 form)"),
    )
)
_LOOPBACK_NETWORKS = tuple(network for network, why in _REFUSED if why == _LOOPBACK)


def validate_probe_address(text: object, *, allow_loopback: bool = False) -> ProbeAddress:
    """The address in one Cloud Map attribute, if a probe may go there; ``InvalidProbeTarget`` otherwise.

    Accepted: IPv4 as four ASCII decimal octets exactly as Python writes them back (so no leading
    zeros, no whitespace), or IPv6 written with hex digits, colons and dots only (no scope id, no
    brackets). Refused even then: every address in ``_REFUSED`` (loopback, link-local, multicast,
    unspecified, reserved, the EC2 instance services ``fd00:ec2::/32``, IPv6 forms that carry an IPv4
    address) and whatever else Python deems link-local, multicast, unspecified or reserved.
    ``allow_loopback`` lets 127.0.0.0/8 and ::1 through (local runs against servers on 127.0.0.1).
    """
    address = _parse_address(text)
    why = _refusal(address, allow_loopback=allow_loopback)
    if why is not None:
        raise InvalidProbeTarget(f"{address} is {why}")
    return address


def _parse_address(text: object) -> ProbeAddress:
    if not isinstance(text, str) or not text:
        raise InvalidProbeTarget(f"{_shown(text)} is not an address")
    if ":" in text:
        if not _IPV6_TEXT.fullmatch(text):
            raise InvalidProbeTarget(f"{_shown(text)} is not an IPv6 address (hex digits, ':' and '.' only)")
        try:
            return ipaddress.IPv6Address(text)
        except ValueError:
            raise InvalidProbeTarget(f"{_shown(text)} is not an IPv6 address") from None
    if not _IPV4_TEXT.fullmatch(text):
        raise InvalidProbeTarget(f"{_shown(text)} is not an IPv4 address (four decimal octets)")
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        raise InvalidProbeTarget(f"{_shown(text)} is not an IPv4 address") from None
    if str(address) != text:  # leading zeros: octal to some parsers, decimal to others
        raise InvalidProbeTarget(f"{_shown(text)} is not an IPv4 address as Python writes it ({address})")
    return address


def _refusal(address: ProbeAddress, *, allow_loopback: bool) -> str | None:
    """Why a probe never goes to ``address``; None when it may."""
    for network, why in _REFUSED:
        if address.version == network.version and address in network:
            return None if allow_loopback and network in _LOOPBACK_NETWORKS else why
    if address.is_link_local or address.is_multicast or address.is_unspecified or address.is_reserved:
        return "link-local, multicast, unspecified or reserved"
    return None


def validate_probe_port(text: object) -> int:
    """A port written as ASCII digits from 1 to 65535 (no sign, no leading zero, no whitespace)."""
    if not isinstance(text, str) or not _PORT_TEXT.fullmatch(text) or int(text) > 65535:
        raise InvalidProbeTarget(f"{_shown(text)} is not a port from 1 to 65535")
    return int(text)


def probe_url(address: ProbeAddress, port: int, path: str) -> str:
    """``http://<address>:<port><path>``, written from the parsed address (IPv6 in brackets)."""
    host = f"[{address.compressed}]" if address.version == 6 else address.compressed
    return f"http://{host}:{port}{path}"


def _shown(value: object, limit: int = 60) -> str:
    """An untrusted value as it may appear in a log line: quoted, escaped, cut short."""
    text = ascii(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def probe_target(
    cloudmap_service_id: str,
    instance_id: str,
    attributes: Mapping[str, str],
    check: HttpCheck,
    *,
    allow_loopback: bool = False,
) -> ProbeTarget:
    """Where to send the probe for one Cloud Map instance; ``InvalidProbeTarget`` if it has no usable address.

    Only the address Cloud Map holds for the instance is ever contacted (``AWS_INSTANCE_IPV4``, else
    ``AWS_INSTANCE_IPV6``), and only if ``validate_probe_address`` accepts it: the attributes are
    untrusted input. The port is the tag's, else ``AWS_INSTANCE_PORT`` (``validate_probe_port``).
    """
    name = IPV4_ATTRIBUTE if attributes.get(IPV4_ATTRIBUTE) else IPV6_ATTRIBUTE
    raw_ip = attributes.get(name)
    if not raw_ip:
        raise InvalidProbeTarget(f"instance {instance_id} has no {IPV4_ATTRIBUTE} or {IPV6_ATTRIBUTE} attribute")
    try:
        address = _parse_address(raw_ip)
    except InvalidProbeTarget as exc:
        raise InvalidProbeTarget(f"instance {instance_id} has an invalid address in {name}: {exc}") from None
    why = _refusal(address, allow_loopback=allow_loopback)
    if why is None and address.version != (4 if name == IPV4_ATTRIBUTE else 6):
        why = f"not an IPv{4 if name == IPV4_ATTRIBUTE else 6} address"
    if why is not None:
        raise InvalidProbeTarget(
            f"instance {instance_id} has address {address} in {name}, which is never probed: {why}"
        )
    port = check.port
    if port is None:
        raw_port = attributes.get(PORT_ATTRIBUTE)
        try:
            port = validate_probe_port(raw_port)
        except InvalidProbeTarget:
            raise InvalidProbeTarget(
                f"instance {instance_id} has no valid {PORT_ATTRIBUTE} ({_shown(raw_port)})"
            ) from None
    return ProbeTarget(cloudmap_service_id, instance_id, probe_url(address, port, check.path), check.codes)


class ProbeVerdict(StrEnum):
    HEALTHY = "healthy"
    FAILED = "failed"
    SKIPPED = "skipped"  # not started: the pass's probing deadline would not have allowed a full probe


@dataclass(frozen=True, slots=True)
class ProbeResult:
    target: ProbeTarget
    verdict: ProbeVerdict
    status: int | None = None
    error: str | None = None  # why it failed: "timeout", "connection refused", "status 500", ...
    duration_ms: float = 0.0
