"""``doctor``'s attribute-key check, as the pure function in ``core.diagnosis`` computes it."""

from __future__ import annotations

from cloudmap_reactor.core.diagnosis import KeyMismatch, attribute_key_mismatches

ECS_KEYS = {"AWS_INSTANCE_IPV4": "10.0.0.1", "AWS_INSTANCE_PORT": "8080", "ECS_SERVICE_NAME": "orders"}


def without(key: str) -> dict[str, str]:
    return {k: v for k, v in ECS_KEYS.items() if k != key}


def test_instances_with_the_keys_ecs_writes_agree() -> None:
    instances = {"a": ECS_KEYS, "b": {**ECS_KEYS, "AWS_INSTANCE_IPV4": "10.0.0.2"}, "c": ECS_KEYS}
    assert attribute_key_mismatches("srv-1", instances, siblings=instances, checked=instances) == []


def test_an_instance_with_a_key_missing_or_added_is_reported_against_the_majority() -> None:
    instances = {"a": ECS_KEYS, "b": ECS_KEYS, "c": without("ECS_SERVICE_NAME"), "d": {**ECS_KEYS, "HAND": "1"}}

    found = attribute_key_mismatches("srv-1", instances, siblings=instances, checked=instances)

    assert found == [
        KeyMismatch("srv-1", "c", missing=("ECS_SERVICE_NAME",), extra=()),
        KeyMismatch("srv-1", "d", missing=(), extra=("HAND",)),
    ]


def test_without_a_majority_both_sides_of_the_disagreement_are_reported() -> None:
    instances = {"a": ECS_KEYS, "b": {**ECS_KEYS, "HAND": "1"}}

    found = attribute_key_mismatches("srv-1", instances, siblings=instances, checked=instances)

    assert found == [
        KeyMismatch("srv-1", "a", missing=("HAND",), extra=()),
        KeyMismatch("srv-1", "b", missing=(), extra=("HAND",)),
    ]


def test_only_checked_instances_are_reported_and_only_siblings_vote() -> None:
    """A restored instance (not yet a sibling's equal) is checked against the instances of running tasks."""
    instances = {"a": ECS_KEYS, "restored": without("AWS_INSTANCE_PORT"), "leftover": {"AWS_INSTANCE_IPV4": "1"}}

    found = attribute_key_mismatches("srv-1", instances, siblings={"a"}, checked={"a", "restored"})

    assert found == [KeyMismatch("srv-1", "restored", missing=("AWS_INSTANCE_PORT",), extra=())]


def test_one_instance_or_none_has_nothing_to_disagree_with() -> None:
    assert attribute_key_mismatches("srv-1", {"a": ECS_KEYS}, siblings={"a"}, checked={"a"}) == []
    assert attribute_key_mismatches("srv-1", {}, siblings={"a"}, checked={"a"}) == []
    assert attribute_key_mismatches("srv-1", {"a": ECS_KEYS}, siblings=set(), checked={"a"}) == []
