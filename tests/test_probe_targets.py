"""Probe targets are hostile input: Cloud Map attributes are written by whoever may call RegisterInstance.

Every refusal here comes from the validation functions, before any connection: a refused instance
is reported and left registered, never probed, never removed on its account. Nothing here sends
traffic anywhere but 127.0.0.1.
"""

from __future__ import annotations

import io
import ipaddress
import socket
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import urllib3
from hypothesis import given, settings
from hypothesis import strategies as st
from requests.adapters import BaseAdapter
from urllib3.util import parse_url

from cloudmap_reactor import wiring
from cloudmap_reactor.core.model import HTTP_CHECK_TAG, Reason
from cloudmap_reactor.core.probing import (
    IPV4_ATTRIBUTE,
    IPV6_ATTRIBUTE,
    PORT_ATTRIBUTE,
    HttpCheck,
    InvalidHttpCheck,
    InvalidProbeTarget,
    parse_http_check,
    probe_target,
    validate_probe_address,
    validate_probe_port,
)
from devtools.aws_emulator import FleetBuilder
from devtools.http_targets import Behaviour, local_http_targets

CHECK = parse_http_check("/healthz")

REFUSED_ADDRESSES = [
    pytest.param("fd12::1%x]@169.254.169.254:80#", id="scope-id-smuggling-another-host"),
    pytest.param("fe80::1%eth0", id="scope-id"),
    pytest.param("fd12::1%25eth0", id="scope-id-url-encoded"),
    pytest.param("fd00:ec2::254", id="ipv6-instance-metadata"),
    pytest.param("fd00:ec2::23", id="ipv6-ec2-service"),
    pytest.param("FD00:EC2::254", id="ipv6-instance-metadata-uppercase"),
    pytest.param("fd00:0ec2:0:0:0:0:0:254", id="ipv6-instance-metadata-uncompressed"),
    pytest.param("127.0.0.1", id="loopback"),
    pytest.param("127.1.2.3", id="loopback-net"),
    pytest.param("::1", id="ipv6-loopback"),
    pytest.param("0:0:0:0:0:0:0:1", id="ipv6-loopback-uncompressed"),
    pytest.param("::ffff:127.0.0.1", id="ipv4-mapped-loopback"),
    pytest.param("::ffff:169.254.169.254", id="ipv4-mapped-metadata"),
    pytest.param("::127.0.0.1", id="ipv4-compatible-loopback"),
    pytest.param("64:ff9b::169.254.169.254", id="nat64-metadata"),
    pytest.param("2002:a9fe:a9fe::1", id="6to4-metadata"),
    pytest.param("169.254.169.254", id="instance-metadata"),
    pytest.param("169.254.170.2", id="ecs-credentials"),
    pytest.param("fe80::1", id="ipv6-link-local"),
    pytest.param("0.0.0.0", id="unspecified"),  # noqa: S104 (nothing is bound)
    pytest.param("0.1.2.3", id="this-network"),
    pytest.param("::", id="ipv6-unspecified"),
    pytest.param("224.0.0.1", id="multicast"),
    pytest.param("239.255.255.250", id="multicast-ssdp"),
    pytest.param("ff02::1", id="ipv6-multicast"),
    pytest.param("255.255.255.255", id="broadcast"),
    pytest.param("240.0.0.1", id="reserved"),
    pytest.param("010.0.0.1", id="leading-zero-octet"),
    pytest.param("10.0.0.01", id="leading-zero-last-octet"),
    pytest.param("0x0a.0.0.1", id="hex-octet"),
    pytest.param("167772161", id="integer-address"),
    pytest.param("10.1", id="short-form"),
    pytest.param("10.0.0.1.", id="trailing-dot"),
    pytest.param("\uff110.0.0.1", id="fullwidth-digit"),
    pytest.param("1\u0660.0.0.1", id="arabic-indic-digit"),
    pytest.param("10.0.0.\u00b2", id="superscript-digit"),
    pytest.param(" 10.0.0.1", id="leading-space"),
    pytest.param("10.0.0.1\n", id="trailing-newline"),
    pytest.param("10.0.0.1\t", id="trailing-tab"),
    pytest.param("10.0.0.1\u00a0", id="no-break-space"),
    pytest.param("[fd12::1]", id="brackets"),
    pytest.param("fd12::1]", id="closing-bracket"),
    pytest.param("user@10.0.0.1", id="at-sign"),
    pytest.param("10.0.0.1@169.254.169.254", id="at-sign-after"),
    pytest.param("10.0.0.1#", id="hash"),
    pytest.param("10.0.0.1/", id="slash"),
    pytest.param("10.0.0.0/8", id="network"),
    pytest.param("10.0.0.1:80", id="with-port"),
    pytest.param("fd12::1 ", id="ipv6-trailing-space"),
    pytest.param("orders.internal", id="hostname"),
    pytest.param("localhost", id="localhost"),
    pytest.param("", id="empty"),
]


@pytest.mark.parametrize("text", REFUSED_ADDRESSES)
def test_an_address_a_probe_must_not_go_to_is_refused(text: str) -> None:
    with pytest.raises(InvalidProbeTarget):
        validate_probe_address(text)


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("10.0.1.5", "10.0.1.5"),
        ("172.31.255.254", "172.31.255.254"),
        ("100.64.0.7", "100.64.0.7"),  # shared address space: VPCs use it
        ("192.168.0.1", "192.168.0.1"),
        ("2600:1f18:abcd:1200::5", "2600:1f18:abcd:1200::5"),  # an Amazon-provided VPC IPv6 address
        ("2600:1F18:ABCD:1200:0:0:0:5", "2600:1f18:abcd:1200::5"),  # written out: same address
        ("fd12:3456::7", "fd12:3456::7"),  # a unique local (private) IPv6 VPC address
        ("fd01:ec2::1", "fd01:ec2::1"),  # next to, not in, fd00:ec2::/32
    ],
)
def test_a_task_address_is_accepted_as_parsed(text: str, address: str) -> None:
    assert str(validate_probe_address(text)) == address


@pytest.mark.parametrize(("text", "address"), [("127.0.0.1", "127.0.0.1"), ("127.9.9.9", "127.9.9.9"), ("::1", "::1")])
def test_loopback_is_let_through_only_with_the_local_run_switch(text: str, address: str) -> None:
    with pytest.raises(InvalidProbeTarget, match="loopback"):
        validate_probe_address(text)
    assert str(validate_probe_address(text, allow_loopback=True)) == address


@pytest.mark.parametrize(
    "text",
    ["::ffff:127.0.0.1", "::127.0.0.1", "169.254.169.254", "fd00:ec2::254", "0.0.0.0", "fe80::1%lo"],  # noqa: S104
)
def test_the_local_run_switch_lets_nothing_else_through(text: str) -> None:
    with pytest.raises(InvalidProbeTarget):
        validate_probe_address(text, allow_loopback=True)


@pytest.mark.parametrize(
    "text",
    [
        "\u00b2",
        "0",
        "65536",
        "99999",
        "123456",
        " 80",
        "80 ",
        "80\n",
        "+80",
        "-80",
        "080",
        "\uff18\uff10",
        "\u0668\u0660",
        "1e3",
        "0x50",
        "",
    ],
)
def test_a_port_that_is_not_ascii_digits_from_1_to_65535_is_refused(text: str) -> None:
    with pytest.raises(InvalidProbeTarget):
        validate_probe_port(text)


@pytest.mark.parametrize("text", ["1", "80", "8080", "65535"])
def test_a_port_is_accepted(text: str) -> None:
    assert validate_probe_port(text) == int(text)


@pytest.mark.parametrize(
    "tag", ["\u00b2/healthz", "08081/healthz", "0/healthz", "65536/healthz", "\u0668\u0660/healthz"]
)
def test_the_tag_port_follows_the_same_rule(tag: str) -> None:
    with pytest.raises(InvalidHttpCheck, match=HTTP_CHECK_TAG):
        parse_http_check(tag)


@pytest.mark.parametrize(
    ("attributes", "error"),
    [
        ({"AWS_INSTANCE_IPV6": "fd12::1%x]@169.254.169.254:80#", "AWS_INSTANCE_PORT": "80"}, "invalid address"),
        ({"AWS_INSTANCE_IPV6": "fd00:ec2::254", "AWS_INSTANCE_PORT": "80"}, "never probed: the EC2 instance"),
        ({"AWS_INSTANCE_IPV6": "::1", "AWS_INSTANCE_PORT": "80"}, "never probed: loopback"),
        ({"AWS_INSTANCE_IPV4": "127.0.0.1", "AWS_INSTANCE_PORT": "80"}, "never probed: loopback"),
        ({"AWS_INSTANCE_IPV4": "10.0.1.5", "AWS_INSTANCE_PORT": "\u00b2"}, r"no valid AWS_INSTANCE_PORT \('\\xb2'\)"),
        ({"AWS_INSTANCE_IPV4": "10.0.1.5", "AWS_INSTANCE_PORT": " 80"}, "no valid AWS_INSTANCE_PORT"),
        ({"AWS_INSTANCE_IPV4": "10.0.1.5", "AWS_INSTANCE_PORT": "0"}, "no valid AWS_INSTANCE_PORT"),
        ({"AWS_INSTANCE_IPV4": "10.0.1.5", "AWS_INSTANCE_PORT": "65536"}, "no valid AWS_INSTANCE_PORT"),
        ({"AWS_INSTANCE_IPV4": "fd12::1", "AWS_INSTANCE_PORT": "80"}, "never probed: not an IPv4 address"),
        ({"AWS_INSTANCE_IPV6": "10.0.1.5", "AWS_INSTANCE_PORT": "80"}, "never probed: not an IPv6 address"),
        # The IPv4 attribute, when set, is the one probed: a bad one is not passed over for the IPv6 one.
        ({"AWS_INSTANCE_IPV4": "010.0.1.5", "AWS_INSTANCE_IPV6": "fd12::1", "AWS_INSTANCE_PORT": "80"}, "invalid"),
    ],
)
def test_an_instance_with_a_hostile_address_or_port_is_refused_not_crashed_on(
    attributes: dict[str, str], error: str
) -> None:
    with pytest.raises(InvalidProbeTarget, match=error) as refused:
        probe_target("srv-a", "task1", attributes, CHECK)
    assert str(refused.value).startswith("instance task1 ")
    assert str(refused.value).isascii()  # what is logged of the attribute is escaped


def test_the_url_is_written_from_the_parsed_address() -> None:
    attributes = {"AWS_INSTANCE_IPV6": "2600:1F18:ABCD:1200:0:0:0:5", "AWS_INSTANCE_PORT": "8080"}
    target = probe_target("srv-a", "task1", attributes, CHECK)
    assert target.url == "http://[2600:1f18:abcd:1200::5]:8080/healthz"
    assert ipaddress.ip_address("2600:1f18:abcd:1200::5") == ipaddress.ip_address(attributes["AWS_INSTANCE_IPV6"])


def test_an_untrusted_value_in_a_message_is_escaped_and_cut_short() -> None:
    attributes = {"AWS_INSTANCE_IPV4": "\x1b[31m" + "9" * 2000, "AWS_INSTANCE_PORT": "80"}
    with pytest.raises(InvalidProbeTarget) as refused:
        probe_target("srv-a", "task1", attributes, CHECK)
    assert "\x1b" not in str(refused.value)
    assert len(str(refused.value)) < 200


# -- the scanner: refused instances are reported, never sent a request, and hold nobody up ------------

HOSTILE_INSTANCES = [
    {IPV6_ATTRIBUTE: "fd12::1%x]@169.254.169.254:80#", PORT_ATTRIBUTE: "80"},
    {IPV6_ATTRIBUTE: "fd00:ec2::254", PORT_ATTRIBUTE: "80"},
    {IPV4_ATTRIBUTE: "127.0.0.1", PORT_ATTRIBUTE: "9001"},  # the Lambda runtime API, inside Lambda
    {IPV4_ATTRIBUTE: "10.0.2.1", PORT_ATTRIBUTE: "\u00b2"},
    {IPV4_ATTRIBUTE: "169.254.169.254", PORT_ATTRIBUTE: "80"},
    {IPV4_ATTRIBUTE: "010.0.2.2", PORT_ATTRIBUTE: "80"},
]


class RecordingTransport(BaseAdapter):
    """Mounted on the prober's session: records each request's URL and answers it itself, connecting nowhere."""

    def __init__(self, failing_hosts: set[str]) -> None:
        super().__init__()
        self.failing_hosts = failing_hosts
        self.urls: list[str] = []

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        url = str(request.url)
        self.urls.append(url)
        status = 500 if urlsplit(url).hostname in self.failing_hosts else 200
        response = requests.Response()
        response.status_code = status
        response.url = url
        response.request = request
        response.raw = urllib3.HTTPResponse(body=io.BytesIO(b"ok\n"), status=status, preload_content=False)
        return response

    def close(self) -> None:
        """Nothing to close."""


@pytest.fixture
def no_connections(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Any socket connect in the test fails it (the AWS emulator runs in-process, without sockets)."""
    attempts: list[Any] = []

    def refuse(self: socket.socket, address: Any) -> None:
        attempts.append(address)
        raise AssertionError(f"a connection to {address} was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    yield attempts
    assert attempts == []


@pytest.fixture
def deployed_poller(env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The poller as deployed: probes on, and no local-run switch."""
    env.setenv("HTTP_PROBES", "true")
    env.setenv("RECONCILE_EVERY_PASSES", "0")
    env.delenv("PROBE_ALLOW_LOOPBACK", raising=False)
    return env


def task_id(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


def test_refused_targets_get_no_request_and_the_other_instances_are_still_judged(
    aws: FleetBuilder, deployed_poller: pytest.MonkeyPatch, no_connections: list[Any]
) -> None:
    """Four tasks at good addresses (one answers 500) and six whose attributes are hostile, in one service.

    Only the four good URLs are ever requested; each hostile instance is reported once, as an invalid
    target, and stays registered; the failing good one, never ready, leaves on the first pass
    (NotReady, quarantined) and is still probed, to come back when it answers.
    """
    aws.create_cluster("prod")
    service = aws.create_service("prod", "orders", discovery_names=["orders"], tags={HTTP_CHECK_TAG: "/healthz"})
    sid = service.cloudmap_service_ids[0]
    good = aws.start_tasks(service, 4, addresses=[(f"10.0.1.{n}", 8080) for n in range(1, 5)])
    hostile = aws.start_tasks(service, len(HOSTILE_INSTANCES))
    for arn, attributes in zip(hostile, HOSTILE_INSTANCES, strict=True):
        aws.cloudmap.register_instance(ServiceId=sid, InstanceId=task_id(arn), Attributes=attributes)
    deps = wiring.poller_deps()
    assert deps.prober is not None
    transport = RecordingTransport(failing_hosts={"10.0.1.4"})
    deps.prober.session.mount("http://", transport)
    deps.prober.session.mount("https://", transport)
    scan = deps.new_scanner(owner="test")

    results = [scan.run_pass(deadline=time.monotonic() + 60) for _ in range(4)]

    good_urls = {f"http://10.0.1.{n}:8080/healthz" for n in range(1, 5)}
    assert set(transport.urls) == good_urls
    assert len(transport.urls) == 4 * 4  # the quarantined one is probed too: it may recover
    first_problems = sorted((p.instance_id, p.kind, p.cloudmap_service_id) for p in results[0].probe_problems)
    assert first_problems == sorted((task_id(arn), "invalid_target", sid) for arn in hostile)
    assert [r.probe_problems for r in results[1:]] == [[], [], []]  # once per instance, not every pass
    assert [[(d.task_arn, d.reason) for d in r.deregistrations] for r in results] == [
        [(good[3], Reason.NOT_READY)],
        [],
        [],
        [],
    ]
    assert aws.instance_ids(sid) == {task_id(arn) for arn in good[:3] + hostile}


def test_without_the_local_run_switch_servers_on_loopback_are_never_contacted(
    aws: FleetBuilder, deployed_poller: pytest.MonkeyPatch
) -> None:
    """Real servers on 127.0.0.1, registered as the tasks: a deployed poller sends them nothing."""
    aws.create_cluster("prod")
    service = aws.create_service("prod", "orders", discovery_names=["orders"], tags={HTTP_CHECK_TAG: "/healthz"})
    with local_http_targets() as http:
        servers = [http.add(Behaviour.FAILING) for _ in range(3)]
        aws.start_tasks(service, 3, addresses=[s.address for s in servers])
        scan = wiring.poller_deps().new_scanner(owner="test")
        results = [scan.run_pass(deadline=time.monotonic() + 60) for _ in range(3)]

    assert [s.requests for s in servers] == [[], [], []]
    assert [len(r.probe_problems) for r in results] == [3, 0, 0]
    assert all("never probed: loopback" in p.error for p in results[0].probe_problems)
    assert aws.instance_ids(service.cloudmap_service_ids[0]) == {task_id(arn) for arn in service.task_arns}


# -- the property: whatever the attributes, either a refusal or a URL to exactly the validated address -----

_UNICODE_DIGITS = {"0": "\u0660", "1": "\uff11", "2": "\u00b2", "3": "\u0663", "8": "\uff18", "9": "\u2079"}
_HOSTILE_PIECES = ["%", "%25", "%eth0", "[", "]", "@", "#", "/", "?", " ", "\t", "\n", "\x00", "\u200b", ":", "."]


@st.composite
def near_miss(draw: st.DrawFn, base: st.SearchStrategy[str]) -> str:
    """A valid address or port, as text, then (half the time) changed the way an attacker or a bug would."""
    text = draw(base)
    at = draw(st.integers(0, len(text)))
    if draw(st.booleans()):
        return text
    mutations = [
        lambda: text[:at] + draw(st.sampled_from(_HOSTILE_PIECES)) + text[at:],
        lambda: text + "%" + draw(st.text(max_size=12)),
        lambda: f"[{text}]",
        lambda: text + draw(st.sampled_from(["@169.254.169.254:80#", "]@127.0.0.1:9001/", "#@fd00:ec2::254"])),
        lambda: "".join(_UNICODE_DIGITS.get(c, c) if draw(st.booleans()) else c for c in text),
        lambda: ".".join("0" + part if part.isdigit() and draw(st.booleans()) else part for part in text.split(".")),
        lambda: draw(st.sampled_from(["::ffff:", "::", "64:ff9b::", " ", "0"])) + text,
    ]
    return draw(st.sampled_from(mutations))()


ipv4_texts = st.ip_addresses(v=4).map(str)
ipv6_texts = st.ip_addresses(v=6).flatmap(
    lambda a: st.sampled_from([a.compressed, a.exploded, a.compressed.upper(), a.exploded.upper()])
)
address_texts = st.one_of(
    st.text(max_size=50),
    st.text(alphabet="0123456789abcdefABCDEF:.%[]@#/ \u00b2\u0660", max_size=45),
    near_miss(ipv4_texts),
    near_miss(ipv6_texts),
    ipv4_texts,
    ipv6_texts,
    st.sampled_from(["127.0.0.1", "::1", "fd00:ec2::254", "169.254.169.254", "fd12::1%x]@169.254.169.254:80#"]),
)
port_texts = st.one_of(st.text(max_size=8), near_miss(st.integers(-1, 70_000).map(str)), st.integers(1, 65535).map(str))
instance_attributes = st.one_of(
    st.fixed_dictionaries(
        {}, optional={IPV4_ATTRIBUTE: address_texts, IPV6_ATTRIBUTE: address_texts, PORT_ATTRIBUTE: port_texts}
    ),
    st.fixed_dictionaries({IPV4_ATTRIBUTE: near_miss(ipv4_texts), PORT_ATTRIBUTE: port_texts}),
    st.fixed_dictionaries({IPV6_ATTRIBUTE: near_miss(ipv6_texts), PORT_ATTRIBUTE: port_texts}),
)
checks = st.sampled_from(
    [parse_http_check(tag) for tag in ["/healthz", "8081/healthz", "/", "/@x", "//evil.example/x", "9000/a:b@c"]]
)


def test_a_probe_url_goes_to_exactly_the_validated_address_and_port_or_nowhere() -> None:
    outcomes: Counter[str] = Counter()

    @settings(max_examples=3000, deadline=None, derandomize=True)
    @given(attributes=instance_attributes, check=checks, allow_loopback=st.booleans())
    def check(attributes: dict[str, str], check: HttpCheck, allow_loopback: bool) -> None:
        try:
            target = probe_target("srv-a", "task1", attributes, check, allow_loopback=allow_loopback)
        except InvalidHttpCheck:
            outcomes["refused"] += 1
            return
        outcomes["accepted"] += 1
        name = IPV4_ATTRIBUTE if attributes.get(IPV4_ATTRIBUTE) else IPV6_ATTRIBUTE
        _assert_probe_target_is_sound(attributes[name], name, attributes.get(PORT_ATTRIBUTE), check, target.url)
        assert allow_loopback or not ipaddress.ip_address(attributes[name]).is_loopback

    check()

    assert outcomes["accepted"] >= 300
    assert outcomes["refused"] >= 1000


def _assert_probe_target_is_sound(raw: str, name: str, raw_port: str | None, check: HttpCheck, url: str) -> None:
    """What an accepted target must be, checked apart from the code under test."""
    assert raw.isascii()
    assert set(raw) <= set("0123456789.") or set(raw) <= set("0123456789abcdefABCDEF:.")
    address = ipaddress.ip_address(raw)
    assert address.version == (4 if name == IPV4_ATTRIBUTE else 6)
    if address.version == 4:
        assert str(address) == raw
    assert not address.is_link_local
    assert not address.is_multicast
    assert not address.is_unspecified
    if isinstance(address, ipaddress.IPv6Address):
        assert address.ipv4_mapped is None
        assert address.sixtofour is None
        assert address.teredo is None
        assert address not in ipaddress.ip_network("fd00:ec2::/32")
    if address.is_loopback:  # only with the local-run switch (asserted by the caller)
        assert address in ipaddress.ip_network("127.0.0.0/8") or address == ipaddress.ip_address("::1")
    else:
        assert not address.is_reserved  # ::1 is in ::/8, which Python deems reserved
    port = check.port
    if port is None:
        assert raw_port is not None
        assert raw_port.isascii()
        assert raw_port.isdigit()
        assert not raw_port.startswith("0")
        port = int(raw_port)
    assert 1 <= port <= 65535

    split = urlsplit(url)
    assert (split.scheme, split.hostname, split.port) == ("http", str(address), port)
    assert (split.username, split.password, split.query, split.fragment) == (None, None, "", "")
    assert split.path == check.path
    parsed = parse_url(url)
    assert parsed.host == (f"[{address}]" if address.version == 6 else str(address))
    assert (parsed.port, parsed.auth, parsed.path) == (port, None, check.path)
