"""A probe has a total deadline (connect + headers + body), not only a timeout per read.

The servers are real HTTP servers on 127.0.0.1; the probes' timeouts are small (0.2 s connect,
0.3 s read), and nothing here waits longer than those timeouts and the pass bound.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cloudmap_reactor.adapters.http_probe import RequestsProber
from cloudmap_reactor.core.probing import ProbeTarget, ProbeVerdict, parse_status_codes
from devtools.http_targets import Behaviour, LocalHttpTargets, TargetServer, local_http_targets

CONNECT_TIMEOUT = 0.2
READ_TIMEOUT = 0.3
PROBE_DEADLINE_MS = (CONNECT_TIMEOUT + READ_TIMEOUT) * 1000
GRACE_MS = 250  # scheduling slack (the prober's own grace); a probe cut off only at the pass bound shows 1250 ms
CODES = parse_status_codes("200-399")


@pytest.fixture
def http() -> Iterator[LocalHttpTargets]:
    with local_http_targets() as targets:
        yield targets


@pytest.fixture
def prober() -> Iterator[RequestsProber]:
    """One probe thread: a probe that never ended would hold the only slot."""
    prober = RequestsProber(connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT, concurrency=1)
    yield prober
    prober.close()


def target_of(server: TargetServer, name: str = "task-1") -> ProbeTarget:
    return ProbeTarget("srv-a", name, "http://{}:{}/healthz".format(*server.address), CODES)


def test_headers_trickling_in_byte_by_byte_fail_the_probe_by_its_deadline(
    http: LocalHttpTargets, prober: RequestsProber
) -> None:
    """One byte every 50 ms: no read ever waits 0.3 s, yet the probe is over at connect + read timeout."""
    trickle = http.add(Behaviour.HEADER_TRICKLE, interval=0.05)

    (result,) = prober.probe([target_of(trickle)])

    assert (result.verdict, result.error, result.status) == (ProbeVerdict.FAILED, "timeout", None)
    assert result.duration_ms <= PROBE_DEADLINE_MS + GRACE_MS
    assert len(trickle.requests) == 1


def test_the_probe_thread_is_free_again_after_the_deadline(http: LocalHttpTargets, prober: RequestsProber) -> None:
    """The next pass's probe runs on the same (only) thread at once: the trickle did not keep it."""
    trickle = http.add(Behaviour.HEADER_TRICKLE, interval=0.05)
    healthy = http.add(Behaviour.HEALTHY)

    (first,) = prober.probe([target_of(trickle)])
    (second,) = prober.probe([target_of(healthy, "task-2")])

    assert (first.verdict, first.error) == (ProbeVerdict.FAILED, "timeout")
    assert (second.verdict, second.status) == (ProbeVerdict.HEALTHY, 200)
    assert len(healthy.requests) == 1


def test_a_body_trickling_in_fails_by_the_deadline_and_keep_alive_connections_still_work(
    http: LocalHttpTargets, prober: RequestsProber
) -> None:
    """The deadline covers the body too; a healthy server probed again reuses its pooled connection."""
    trickle = http.add(Behaviour.TRICKLE)
    healthy = http.add(Behaviour.HEALTHY)

    (slow_body,) = prober.probe([target_of(trickle)])
    answers = [prober.probe([target_of(healthy, "task-2")])[0] for _ in range(3)]

    assert (slow_body.verdict, slow_body.error) == (ProbeVerdict.FAILED, "timeout")
    assert slow_body.duration_ms <= PROBE_DEADLINE_MS + GRACE_MS
    assert [(a.verdict, a.status) for a in answers] == [(ProbeVerdict.HEALTHY, 200)] * 3
