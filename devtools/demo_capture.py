"""What a handler wrote while the demo ran it: its JSON log records and its EMF metric lines."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

Metric = tuple[str, dict[str, str], float]


@contextlib.contextmanager
def captured() -> Iterator[tuple[list[dict[str, Any]], io.StringIO]]:
    """Collect the handler's JSON log records and its EMF metric lines instead of printing them."""
    logs_stream, stdout = io.StringIO(), io.StringIO()
    handlers = logging.getLogger("cloudmap-reactor").handlers
    streams = [h.setStream(logs_stream) for h in handlers if isinstance(h, logging.StreamHandler)]
    logs: list[dict[str, Any]] = []
    try:
        with contextlib.redirect_stdout(stdout):
            yield logs, stdout
    finally:
        for handler, stream in zip(handlers, streams, strict=False):
            if stream is not None and isinstance(handler, logging.StreamHandler):
                handler.setStream(stream)
        logs.extend(json.loads(line) for line in logs_stream.getvalue().splitlines() if line.startswith("{"))


def emf_metrics(printed: str) -> list[Metric]:
    """(name, dimensions other than ``service``, value) of every metric in the EMF lines, in order."""
    return [metric for record in emf_records(printed) for metric in record_metrics(record)]


def emf_records(printed: str) -> list[dict[str, Any]]:
    records = []
    for line in printed.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if "_aws" in record:
                records.append(record)
    return records


def record_metrics(record: dict[str, Any]) -> list[Metric]:
    meta = record.get("_aws", {}).get("CloudWatchMetrics", [{}])[0]
    dims = {d: record[d] for d in meta.get("Dimensions", [[]])[0] if d != "service"}
    found = []
    for metric in meta.get("Metrics", []):
        value = record[metric["Name"]]
        if isinstance(value, list) and metric.get("Unit") == "Milliseconds":
            value = max(value)  # one value per probe: show the slowest
        found.append((metric["Name"], dims, float(sum(value) if isinstance(value, list) else value)))
    return found
