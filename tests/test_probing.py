"""The HTTP-check decisions without any network: tags, targets, thresholds, the fail-open guard."""

from __future__ import annotations

import pytest

from cloudmap_reactor.core.http_checks import ProbeHistory
from cloudmap_reactor.core.model import HTTP_CHECK_CODES_TAG, HTTP_CHECK_TAG, EcsService
from cloudmap_reactor.core.probing import (
    HttpCheck,
    InvalidHttpCheck,
    ProbeResult,
    ProbeTarget,
    ProbeVerdict,
    StatusCodes,
    http_check_of,
    parse_http_check,
    parse_status_codes,
    probe_target,
)

CLUSTER = "arn:aws:ecs:us-east-1:123456789012:cluster/prod"
DEFAULT = StatusCodes(((200, 399),))


@pytest.mark.parametrize(
    ("tag", "path", "port"),
    [
        ("/healthz", "/healthz", None),
        ("8081/healthz", "/healthz", 8081),
        ("8081", "/", 8081),
        ("/", "/", None),
        (" /actuator/health ", "/actuator/health", None),
        ("9000/api/v1/ping=1", "/api/v1/ping=1", 9000),
    ],
)
def test_http_check_tag(tag: str, path: str, port: int | None) -> None:
    assert parse_http_check(tag) == HttpCheck(path=path, port=port, codes=DEFAULT)


@pytest.mark.parametrize("tag", ["healthz", "", "http://x/healthz", "70000/healthz", "0/x", "/a b", "/a?b", ":80/x"])
def test_a_wrong_http_check_tag_is_refused(tag: str) -> None:
    with pytest.raises(InvalidHttpCheck, match=HTTP_CHECK_TAG):
        parse_http_check(tag)


@pytest.mark.parametrize(
    ("text", "inside", "outside"),
    [
        ("200-399", [200, 302, 399], [199, 400, 500]),
        ("200", [200], [201, 204, 302]),
        ("200,204", [200, 204], [201, 203]),
        ("200-299, 301", [250, 301], [300, 302]),
    ],
)
def test_status_codes(text: str, inside: list[int], outside: list[int]) -> None:
    codes = parse_status_codes(text)
    assert all(c in codes for c in inside)
    assert not any(c in codes for c in outside)


@pytest.mark.parametrize("text", ["2xx", "399-200", "600", "99", "200-", ""])
def test_wrong_status_codes_are_refused(text: str) -> None:
    with pytest.raises(InvalidHttpCheck, match=HTTP_CHECK_CODES_TAG):
        parse_status_codes(text)


def test_a_service_opts_in_with_its_tags() -> None:
    plain = EcsService(CLUSTER, "orders", f"{CLUSTER}/orders", frozenset({"srv-a"}))
    tagged = EcsService(
        CLUSTER, "orders", f"{CLUSTER}/orders", frozenset({"srv-a"}),
        tags=((HTTP_CHECK_TAG, "/ready"), (HTTP_CHECK_CODES_TAG, "200")),
    )  # fmt: skip
    assert http_check_of(plain) is None
    assert http_check_of(tagged) == HttpCheck("/ready", None, StatusCodes(((200, 200),)))


@pytest.mark.parametrize(
    ("attributes", "check", "url"),
    [
        ({"AWS_INSTANCE_IPV4": "10.0.1.5", "AWS_INSTANCE_PORT": "8080"}, "/healthz", "http://10.0.1.5:8080/healthz"),
        ({"AWS_INSTANCE_IPV4": "10.0.1.5", "AWS_INSTANCE_PORT": "8080"}, "8081/ready", "http://10.0.1.5:8081/ready"),
        ({"AWS_INSTANCE_IPV4": "10.0.1.5"}, "8081/ready", "http://10.0.1.5:8081/ready"),
        ({"AWS_INSTANCE_IPV6": "2001:db8::5", "AWS_INSTANCE_PORT": "80"}, "/", "http://[2001:db8::5]:80/"),
    ],
)
def test_probe_target_is_the_registered_address(attributes: dict[str, str], check: str, url: str) -> None:
    target = probe_target("srv-a", "task1", attributes, parse_http_check(check))
    assert (target.url, target.key) == (url, ("srv-a", "task1"))


@pytest.mark.parametrize(
    ("attributes", "error"),
    [
        ({"AWS_INSTANCE_PORT": "8080"}, "no AWS_INSTANCE_IPV4"),
        ({"AWS_INSTANCE_IPV4": "10.0.1.5"}, "no valid AWS_INSTANCE_PORT"),
        ({"AWS_INSTANCE_IPV4": "10.0.1.5", "AWS_INSTANCE_PORT": "99999"}, "no valid AWS_INSTANCE_PORT"),
        ({"AWS_INSTANCE_IPV4": "orders.internal", "AWS_INSTANCE_PORT": "80"}, "invalid address"),
        ({"AWS_INSTANCE_IPV4": "169.254.169.254", "AWS_INSTANCE_PORT": "80"}, "never probed"),  # metadata
        ({"AWS_INSTANCE_IPV4": "169.254.170.2", "AWS_INSTANCE_PORT": "80"}, "never probed"),  # ECS credentials
        ({"AWS_INSTANCE_IPV4": "0.0.0.0", "AWS_INSTANCE_PORT": "80"}, "never probed"),  # noqa: S104 (not bound)
        ({"AWS_INSTANCE_IPV4": "224.0.0.1", "AWS_INSTANCE_PORT": "80"}, "never probed"),
    ],
)
def test_an_instance_without_a_usable_address_is_not_probed(attributes: dict[str, str], error: str) -> None:
    with pytest.raises(InvalidHttpCheck, match=error):
        probe_target("srv-a", "task1", attributes, parse_http_check("/healthz"))


def result(instance: str, verdict: ProbeVerdict, sid: str = "srv-a") -> ProbeResult:
    return ProbeResult(ProbeTarget(sid, instance, f"http://10.0.0.1/{instance}", DEFAULT), verdict)


def over(counter: ProbeHistory, threshold: int) -> set[tuple[str, str]]:
    return {key for key, s in counter.streaks().items() if s.failures >= threshold}


def test_failures_count_in_a_row_and_one_success_resets() -> None:
    counter = ProbeHistory()
    failed, healthy, skipped = ProbeVerdict.FAILED, ProbeVerdict.HEALTHY, ProbeVerdict.SKIPPED
    keys = [("srv-a", "a"), ("srv-a", "b")]
    passes = [
        [result("a", failed), result("b", failed)],
        [result("a", failed), result("b", healthy)],
        [result("a", skipped), result("b", failed)],  # a skipped probe leaves the count alone
        [result("a", failed), result("b", failed)],
    ]
    seen = []
    for results in passes:
        counter.record(results, still_probed=keys)
        seen.append((counter.failures(keys[0]), counter.failures(keys[1]), over(counter, 3)))
    assert seen == [(1, 1, set()), (2, 0, set()), (2, 1, set()), (3, 2, {("srv-a", "a")})]


def test_failing_and_least_recently_probed_instances_are_probed_first() -> None:
    """When a pass cannot probe everything, the instances closest to the threshold go first, then the oldest."""
    counter = ProbeHistory()
    keys = [("srv-a", name) for name in "abcd"]
    counter.record(
        [
            result("a", ProbeVerdict.FAILED),
            result("b", ProbeVerdict.HEALTHY),
            result("c", ProbeVerdict.SKIPPED),
            result("d", ProbeVerdict.HEALTHY),
        ],
        still_probed=keys,
    )
    counter.record([result("b", ProbeVerdict.HEALTHY)], still_probed=keys)
    targets = [result(name, ProbeVerdict.HEALTHY).target for name in "dcba"]
    assert [t.instance_id for t in counter.in_probing_order(targets)] == ["a", "c", "d", "b"]


def test_an_instance_no_longer_probed_is_forgotten() -> None:
    counter = ProbeHistory()
    counter.record([result("a", ProbeVerdict.FAILED)], still_probed=[("srv-a", "a")])
    counter.record([], still_probed=[("srv-a", "b")])  # its task left; the service is still probed
    counter.record([result("a", ProbeVerdict.FAILED)], still_probed=[("srv-a", "a")])
    assert over(counter, 2) == set()


def test_a_cloudmap_service_not_probed_in_a_round_keeps_its_streaks() -> None:
    """A cluster skipped for a pass must not make its long-ready instances look never ready."""
    history = ProbeHistory()
    history.record([result("a", ProbeVerdict.HEALTHY)], still_probed=[("srv-a", "a")])
    history.record([], still_probed=[])  # srv-a's cluster could not be read this pass
    assert history.streaks()[("srv-a", "a")].passed


def test_after_a_failed_load_instances_first_seen_are_taken_as_ready() -> None:
    history = ProbeHistory(assume_ready=True)
    history.record([result("a", ProbeVerdict.FAILED)], still_probed=[("srv-a", "a")])
    history.record([result("b", ProbeVerdict.FAILED)], still_probed=[("srv-a", "a"), ("srv-a", "b")])
    assert history.streaks()[("srv-a", "a")].passed  # threshold, not readiness, for what already ran
    assert not history.streaks()[("srv-a", "b")].passed  # a task started since: readiness applies
