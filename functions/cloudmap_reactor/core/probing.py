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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

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
    port = int(match.group("port")) if match.group("port") else None
    if port is not None and not 1 <= port <= 65535:
        raise InvalidHttpCheck(f"{HTTP_CHECK_TAG}={check!r}: port {port} is out of range")
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


def probe_target(
    cloudmap_service_id: str, instance_id: str, attributes: Mapping[str, str], check: HttpCheck
) -> ProbeTarget:
    """Where to send the probe for one Cloud Map instance; ``InvalidHttpCheck`` if it has no usable address.

    Only the address Cloud Map holds for the instance is ever contacted. Link-local (instance
    metadata, the ECS agent), multicast and unspecified addresses are refused.
    """
    raw_ip = attributes.get(IPV4_ATTRIBUTE) or attributes.get(IPV6_ATTRIBUTE)
    if not raw_ip:
        raise InvalidHttpCheck(f"instance {instance_id} has no {IPV4_ATTRIBUTE} or {IPV6_ATTRIBUTE} attribute")
    try:
        ip = ipaddress.ip_address(raw_ip.strip())
    except ValueError:
        raise InvalidHttpCheck(f"instance {instance_id} has an invalid address {raw_ip!r}") from None
    if ip.is_link_local or ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        raise InvalidHttpCheck(f"instance {instance_id} has address {ip}, which is never probed")
    port = check.port
    if port is None:
        raw_port = attributes.get(PORT_ATTRIBUTE, "").strip()
        if not raw_port.isdigit() or not 1 <= int(raw_port) <= 65535:
            raise InvalidHttpCheck(f"instance {instance_id} has no valid {PORT_ATTRIBUTE} ({raw_port!r})")
        port = int(raw_port)
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    return ProbeTarget(cloudmap_service_id, instance_id, f"http://{host}:{port}{check.path}", check.codes)


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


class FailureCounter:
    """Consecutive failed probes per instance, like a load balancer's (``core.decide`` owns the threshold).

    One success resets the count. An instance that is no longer probed (its task left, or it was
    deregistered) is forgotten; a skipped probe leaves the count as it was. It also decides the
    order of the next pass's probes, which matters when a pass cannot probe everything in its time
    bound: instances on their way to the threshold first, then the longest unprobed.
    """

    def __init__(self) -> None:
        self._failures: dict[tuple[str, str], int] = {}
        self._probed_on: dict[tuple[str, str], int] = {}  # key -> the record() call it was last probed in
        self._records = 0

    def record(self, results: Iterable[ProbeResult], *, still_probed: Iterable[tuple[str, str]]) -> None:
        self._records += 1
        kept = set(still_probed)
        self._failures = {key: n for key, n in self._failures.items() if key in kept}
        self._probed_on = {key: n for key, n in self._probed_on.items() if key in kept}
        for result in results:
            key = result.target.key
            if result.verdict is ProbeVerdict.SKIPPED:
                continue
            self._probed_on[key] = self._records
            if result.verdict is ProbeVerdict.HEALTHY:
                self._failures.pop(key, None)
            else:
                self._failures[key] = self._failures.get(key, 0) + 1

    def in_probing_order(self, targets: Iterable[ProbeTarget]) -> list[ProbeTarget]:
        """Failing instances first (most failures first), then the least recently probed (never: first)."""
        return sorted(
            targets,
            key=lambda t: (-self._failures.get(t.key, 0), self._probed_on.get(t.key, 0), t.key),
        )

    def failures(self, key: tuple[str, str]) -> int:
        return self._failures.get(key, 0)

    def counts(self) -> dict[tuple[str, str], int]:
        """(Cloud Map service id, instance id) -> consecutive failed probes, of every failing instance."""
        return dict(self._failures)
