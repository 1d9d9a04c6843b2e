"""The trimmed ECS model (adapters/trimmed_model.py) fits the installed botocore and loses nothing we read.

Fails loudly after a botocore upgrade that renames or removes a kept member, and whenever the
adapters read a field the trimmed model does not keep: the snapshots built from a trimmed parse
must equal those built from a full parse of the same realistic answers (devtools/ecs_answers.py).
"""

from __future__ import annotations

import logging
from typing import Any

import boto3
import botocore.session
import pytest

from cloudmap_reactor.adapters.clients import ecs_client
from cloudmap_reactor.adapters.ecs import EcsReader
from cloudmap_reactor.adapters.trimmed_model import (
    KEPT,
    TrimmedLoader,
    TrimmedModelMismatch,
    trim_ecs_model,
    trimmed_session,
)
from cloudmap_reactor.core.ports import AwsCallFailed
from devtools import ecs_answers


def full_model() -> dict[str, Any]:
    loader = botocore.session.get_session().get_component("data_loader")
    model: dict[str, Any] = loader.load_service_model("ecs", "service-2")
    return model


def readers(bodies: dict[str, bytes]) -> tuple[EcsReader, EcsReader]:
    full = EcsReader(ecs_answers.canned_client(boto3.session.Session(), bodies))
    trimmed = EcsReader(ecs_answers.canned_client(trimmed_session(), bodies))
    return full, trimmed


def test_the_installed_botocore_model_can_be_trimmed_and_the_clients_use_it() -> None:
    trim_ecs_model(full_model())  # raises TrimmedModelMismatch if a kept member was renamed or removed
    for client in (ecs_client(), ecs_answers.canned_client(trimmed_session(), {})):
        for operation, kept in KEPT.items():
            output: Any = client.meta.service_model.operation_model(operation).output_shape
            assert set(output.members) == set(kept)
    described: Any = ecs_client().meta.service_model.operation_model("DescribeTasks").output_shape
    assert set(described.members["tasks"].member.members) == set(KEPT["DescribeTasks"]["tasks"])


def test_only_the_kept_outputs_are_cut() -> None:
    full, cut = full_model(), trim_ecs_model(full_model())
    for name, operation in full["operations"].items():
        if name not in KEPT:
            assert cut["operations"][name] == operation
        assert cut["operations"][name].get("input") == operation.get("input")
    assert {name: shape for name, shape in cut["shapes"].items() if name in full["shapes"]} == full["shapes"]


def test_described_tasks_are_the_same_whether_parsed_trimmed_or_in_full() -> None:
    body = ecs_answers.describe_tasks_body(3, 98, missing=2)
    full, trimmed = readers({"DescribeTasks": body})
    arns = [ecs_answers.task_arn(3, n) for n in range(100)]
    expected = full.describe_tasks(ecs_answers.CLUSTER_ARN, arns)
    assert len(expected) == 98
    assert expected[0].started_at is not None
    assert expected[0].health_status == "HEALTHY"
    assert trimmed.describe_tasks(ecs_answers.CLUSTER_ARN, arns) == expected


def test_failures_other_than_missing_still_fail_the_read_when_trimmed() -> None:
    body = ecs_answers.describe_tasks_body(3, 1, missing=1).replace(b'"MISSING"', b'"INTERNAL_ERROR"')
    _, trimmed = readers({"DescribeTasks": body})
    with pytest.raises(AwsCallFailed, match="INTERNAL_ERROR"):
        trimmed.describe_tasks(ecs_answers.CLUSTER_ARN, [ecs_answers.task_arn(3, 0), ecs_answers.task_arn(3, 1)])


def test_described_services_are_the_same_whether_parsed_trimmed_or_in_full() -> None:
    full, trimmed = readers({"DescribeServices": ecs_answers.describe_services_body(20, 10)})
    names = [f"svc-{n:04d}" for n in range(20, 30)]
    expected = full.describe_services(ecs_answers.CLUSTER_ARN, names)
    assert len(expected) == 10
    assert expected[0].service_connect
    assert expected[0].cloudmap_service_ids
    assert trimmed.describe_services(ecs_answers.CLUSTER_ARN, names) == expected


def test_a_member_botocore_no_longer_has_falls_back_to_the_full_model(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    renamed = {**KEPT, "DescribeTasks": {"tasks": {"taskArn": None, "healthState": None}}}
    monkeypatch.setattr("cloudmap_reactor.adapters.trimmed_model.KEPT", renamed)
    with pytest.raises(TrimmedModelMismatch, match="healthState"):
        trim_ecs_model(full_model())
    with caplog.at_level(logging.WARNING):
        model = TrimmedLoader().load_service_model("ecs", "service-2")
    assert model["operations"]["DescribeTasks"]["output"]["shape"] == "DescribeTasksResponse"
    assert "parsed in full" in caplog.text
