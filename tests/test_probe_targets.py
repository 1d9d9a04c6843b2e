"""Probe targets are hostile input: Cloud Map attributes are written by whoever may call RegisterInstance.

Every refusal here comes from the validation functions, before any connection: a refused instance
is reported and left registered, never probed, never removed on its account. Nothing here sends
traffic anywhere but 127.0.0.1.
"""

from __future__ import annotations

import ipaddress

import pytest

from cloudmap_reactor.core.model import HTTP_CHECK_TAG
from cloudmap_reactor.core.probing import (
    InvalidHttpCheck,
    InvalidProbeTarget,
    parse_http_check,
    probe_target,
    validate_probe_address,
    validate_probe_port,
)

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
