"""Clusters named by a tag (``ClusterTag``): which clusters of the account and region carry it.

For fleets larger than ``ClusterArns`` can name (its list is limited by the parameter, the functions'
4 KB environment and the role's policy size): the poller lists every cluster and reads their tags
(``DescribeClusters`` with ``include=TAGS``, 100 clusters a call, the API's maximum) whenever it
lists clusters again; the reactor asks about the one cluster of an event, cached for a while.
A cluster ECS reports ``MISSING`` (deleted since it was listed) carries no tag.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from cloudmap_reactor.adapters.ecs import _chunks
from cloudmap_reactor.adapters.errors import aws_call
from cloudmap_reactor.core.ports import AwsCallFailed

if TYPE_CHECKING:
    from mypy_boto3_ecs import ECSClient

DESCRIBE_CLUSTERS_BATCH = 100
LIST_PAGE_SIZE = 100
MISSING = "MISSING"


class ClusterDirectory:
    """The clusters carrying ``key=value``, for the poller (all of them) and the reactor (one, cached)."""

    def __init__(
        self,
        client: ECSClient,
        key: str,
        value: str,
        *,
        ttl_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._key = key
        self._value = value
        self._ttl = ttl_seconds
        self._clock = clock
        self._known: dict[str, tuple[bool, float]] = {}  # cluster ARN -> (carries the tag, read at)

    def tagged(self) -> list[str]:
        """Every cluster of the account and region that carries the tag, in ListClusters order."""
        with aws_call("ListClusters"):
            pages = self._client.get_paginator("list_clusters").paginate(PaginationConfig={"PageSize": LIST_PAGE_SIZE})
            arns = [arn for page in pages for arn in page.get("clusterArns", [])]
        carrying = self._read(arns)
        return [arn for arn in arns if carrying.get(arn)]

    def carries(self, cluster_arn: str) -> bool:
        """Whether one cluster carries the tag (a stopping task's, for the reactor); cached ``ttl_seconds``."""
        now = self._clock()
        known = self._known.get(cluster_arn)
        if known is not None and now - known[1] < self._ttl:
            return known[0]
        result = self._read([cluster_arn]).get(cluster_arn, False)
        self._known[cluster_arn] = (result, now)
        return result

    def _read(self, arns: Sequence[str]) -> dict[str, bool]:
        found: dict[str, bool] = {}
        for batch in _chunks(arns, DESCRIBE_CLUSTERS_BATCH):
            with aws_call("DescribeClusters", f"{len(batch)} cluster(s)"):
                response: Any = self._client.describe_clusters(clusters=batch, include=["TAGS"])
            failures = [f for f in response.get("failures", []) if f.get("reason") != MISSING]
            if failures:
                reasons = sorted({f"{f.get('arn', '?')}: {f.get('reason', '?')}" for f in failures})
                raise AwsCallFailed(f"DescribeClusters could not read {len(failures)} cluster(s): {reasons}")
            for cluster in response.get("clusters", []):
                tags = {t.get("key"): t.get("value") for t in cluster.get("tags", [])}
                found[cluster["clusterArn"]] = self._key in tags and tags[self._key] == self._value
        return found
