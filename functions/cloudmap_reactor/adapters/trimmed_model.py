"""ECS answers parsed for the fields this application reads, not for every field ECS sends.

botocore parses a JSON answer by walking the operation's output shape: every member of every
``Task`` (containers, attachments and their details, network interfaces, overrides, timestamps
turned into ``datetime`` objects …) costs CPU, although a pass reads seven fields of a task. The
members a shape does not name are skipped by the parser. So the ECS client is built from the
installed botocore's own ECS model in which the output shapes of ``DescribeTasks`` and
``DescribeServices`` (only those: other operations and every input shape are untouched) name
just the members listed in ``KEPT``. Nothing is copied into this repository: the shapes are cut
from the model botocore loads, at load time.

How: botocore clients load their model through the session's ``data_loader`` component
(``botocore.loaders.Loader``); ``trimmed_session`` registers a ``Loader`` whose
``load_service_model`` cuts the ECS model after loading it the usual way (same search paths, same
``AWS_DATA_PATH``). If a botocore upgrade renames or removes a member listed here, the cut is
not made (the full model is used, with a warning: slower, never wrong) and
``tests/test_trimmed_model.py`` fails loudly; the same test checks that the snapshots built from
a trimmed parse equal those built from a full one, so a field read but not kept is caught too.
"""

from __future__ import annotations

import logging
from typing import Any

import boto3
import botocore.session
from botocore.loaders import Loader

LOG = logging.getLogger(__name__)

WHOLE: None = None  # keep the member with its whole shape

# Operation -> output members kept (nested: a dict cuts that member's shape too; lists cut their members).
# Read by adapters/ecs.py (_to_task_snapshot, _to_ecs_service and the failures checks); the tasks' and
# services' task definition ARNs are kept too. DescribeTaskDefinition is parsed in full (rare, cached).
KEPT: dict[str, dict[str, Any]] = {
    "DescribeTasks": {
        "tasks": {
            "taskArn": WHOLE,
            "clusterArn": WHOLE,
            "taskDefinitionArn": WHOLE,
            "group": WHOLE,
            "lastStatus": WHOLE,
            "desiredStatus": WHOLE,
            "healthStatus": WHOLE,
            "startedAt": WHOLE,
        },
        "failures": WHOLE,
    },
    "DescribeServices": {
        "services": {
            "serviceArn": WHOLE,
            "serviceName": WHOLE,
            "clusterArn": WHOLE,
            "status": WHOLE,
            "runningCount": WHOLE,
            "taskDefinition": WHOLE,
            "serviceRegistries": WHOLE,
            "tags": WHOLE,
            "deployments": {
                "id": WHOLE,
                "status": WHOLE,
                "taskDefinition": WHOLE,
                "rolloutState": WHOLE,
                "createdAt": WHOLE,
                "serviceConnectConfiguration": WHOLE,
                "serviceConnectResources": WHOLE,
            },
        },
        "failures": WHOLE,
    },
}
SERVICE = "ecs"


class TrimmedModelMismatch(ValueError):
    """A member listed in ``KEPT`` is not in the installed botocore's model (renamed or removed)."""


def trim_ecs_model(model: dict[str, Any]) -> dict[str, Any]:
    """A copy of the ECS service model whose ``KEPT`` output shapes name only the kept members.

    The cut shapes get new names (``Trimmed…``): shapes shared with other operations (``Task`` is
    also ``RunTask``'s and ``StopTask``'s) keep their full form there. Raises ``TrimmedModelMismatch``.
    """
    shapes = dict(model["shapes"])
    operations = dict(model["operations"])
    for operation, kept in KEPT.items():
        if operation not in operations or "output" not in operations[operation]:
            raise TrimmedModelMismatch(f"{operation} has no output shape in this botocore")
        output = operations[operation]["output"]
        cut = _cut(shapes, output["shape"], kept, f"Trimmed{operation}")
        operations[operation] = {**operations[operation], "output": {**output, "shape": cut}}
    return {**model, "shapes": shapes, "operations": operations}


def _cut(shapes: dict[str, Any], name: str, kept: dict[str, Any] | None, new_name: str) -> str:
    if kept is None:
        return name
    shape = shapes.get(name)
    if shape is None:
        raise TrimmedModelMismatch(f"shape {name} is not in this botocore's ECS model")
    if shape["type"] == "list":
        member = _cut(shapes, shape["member"]["shape"], kept, f"{new_name}Member")
        shapes[new_name] = {**shape, "member": {**shape["member"], "shape": member}}
        return new_name
    if shape["type"] != "structure":
        raise TrimmedModelMismatch(f"shape {name} is a {shape['type']}, not a structure to cut")
    missing = sorted(set(kept) - set(shape["members"]))
    if missing:
        raise TrimmedModelMismatch(f"{name} has no member(s) {', '.join(missing)} in this botocore")
    members = {
        member: {
            **ref,
            "shape": _cut(shapes, ref["shape"], kept[member], f"{new_name}{member[:1].upper()}{member[1:]}"),
        }
        for member, ref in shape["members"].items()
        if member in kept
    }
    cut = {**shape, "members": members}
    if "required" in shape:
        cut["required"] = [m for m in shape["required"] if m in kept]
    shapes[new_name] = cut
    return new_name


class TrimmedLoader(Loader):
    """botocore's loader, with the ECS model cut as above (the full one if the cut does not fit)."""

    def load_service_model(self, service_name: str, type_name: str, api_version: str | None = None) -> Any:
        model = super().load_service_model(service_name, type_name, api_version)
        if service_name != SERVICE or type_name != "service-2":
            return model
        try:
            return trim_ecs_model(model)
        except TrimmedModelMismatch as exc:
            LOG.warning("ECS answers parsed in full: the trimmed model does not fit this botocore (%s)", exc)
            return model


def trimmed_session() -> boto3.session.Session:
    """A boto3 session whose ECS clients parse only ``KEPT`` (other services as usual)."""
    core = botocore.session.get_session()
    plain = core.get_component("data_loader")
    loader = TrimmedLoader(extra_search_paths=list(plain.search_paths), include_default_search_paths=False)
    core.register_component("data_loader", loader)
    return boto3.session.Session(botocore_session=core)
