"""HTTP probes of registered instances: one pooled ``requests`` session, a bounded thread pool.

A probe is ``GET <path>`` with connect and read timeouts, no redirects followed, no proxy, no
cookies kept, ``Accept-Encoding: identity`` and at most ``max_body_bytes`` of body read. The
whole probing of a pass is bounded too: a probe starts only while it can still finish within
``pass_bound_seconds`` (twice connect + read timeout) of the pass's first probe; the others are
skipped this pass, and a probe that has not answered by then counts as a timeout. Probes start in
the order given (the scanner puts failing and least recently probed instances first).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from http.cookiejar import DefaultCookiePolicy

import requests
from requests.adapters import HTTPAdapter

from cloudmap_reactor import __version__
from cloudmap_reactor.core.probing import ProbeResult, ProbeTarget, ProbeVerdict

USER_AGENT = f"cloudmap-reactor-health-check/{__version__}"
_CHUNK = 1024
_GRACE_SECONDS = 0.25  # for the last probes to hand their result back


class RequestsProber:
    """Probes instances the way a load balancer health check does."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        concurrency: int = 32,
        max_body_bytes: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._timeouts = (connect_timeout, read_timeout)
        self._probe_seconds = connect_timeout + read_timeout
        self._max_body = max_body_bytes
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="http-probe")
        self._session = _session(max(1, concurrency))

    @property
    def pass_bound_seconds(self) -> float:
        """The longest the probing of one pass takes, however many instances and however they answer."""
        return 2 * self._probe_seconds + _GRACE_SECONDS

    def probe(self, targets: Sequence[ProbeTarget]) -> list[ProbeResult]:
        if not targets:
            return []
        begun = self._clock()
        deadline = begun + 2 * self._probe_seconds
        futures: dict[Future[ProbeResult], ProbeTarget] = {
            self._pool.submit(self._probe_one, target, deadline): target for target in targets
        }
        done, _ = wait(futures, timeout=max(0.0, deadline - self._clock()) + _GRACE_SECONDS)
        results: list[ProbeResult] = []
        for future, target in futures.items():
            if future in done:
                results.append(future.result())
            elif future.cancel():
                results.append(ProbeResult(target, ProbeVerdict.SKIPPED, error="not started within the pass bound"))
            else:  # started, still waiting for an answer: the thread finishes on its own
                stuck = ProbeResult(target, ProbeVerdict.FAILED, error="timeout", duration_ms=self._since(begun))
                results.append(stuck)
        return results

    def _probe_one(self, target: ProbeTarget, deadline: float) -> ProbeResult:
        started = self._clock()
        if started + self._probe_seconds > deadline:
            return ProbeResult(target, ProbeVerdict.SKIPPED, error="not started within the pass bound")
        try:
            with self._session.get(target.url, timeout=self._timeouts, allow_redirects=False, stream=True) as response:
                self._read_some_of_body(response, until=started + self._probe_seconds)
                status = response.status_code
        except requests.Timeout:
            return self._failed(target, started, "timeout")
        except requests.ConnectionError as exc:
            return self._failed(target, started, f"connection failed: {_root_cause(exc)}")
        except requests.RequestException as exc:
            return self._failed(target, started, f"request failed: {_root_cause(exc)}")
        duration = self._since(started)
        if status in target.codes:
            return ProbeResult(target, ProbeVerdict.HEALTHY, status=status, duration_ms=duration)
        return ProbeResult(target, ProbeVerdict.FAILED, status=status, error=f"status {status}", duration_ms=duration)

    def _read_some_of_body(self, response: requests.Response, *, until: float) -> None:
        """Read at most ``max_body_bytes`` of the answer; a body still trickling in at ``until`` is a timeout."""
        read = 0
        while read < self._max_body:
            chunk = response.raw.read1(min(_CHUNK, self._max_body - read), decode_content=False)
            if not chunk:
                return
            read += len(chunk)
            if self._clock() > until:
                raise requests.Timeout("body still arriving after the probe timeout")

    def _failed(self, target: ProbeTarget, started: float, error: str) -> ProbeResult:
        return ProbeResult(target, ProbeVerdict.FAILED, error=error, duration_ms=self._since(started))

    def _since(self, started: float) -> float:
        return (self._clock() - started) * 1000

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._session.close()


def _session(concurrency: int) -> requests.Session:
    """One session per container: pooled keep-alive connections, no retries, no proxies, no cookies."""
    session = requests.Session()
    session.trust_env = False  # never route probes through an HTTP(S)_PROXY, never read .netrc
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    session.headers.update({"User-Agent": USER_AGENT, "Accept": "*/*", "Accept-Encoding": "identity"})
    adapter = HTTPAdapter(pool_connections=256, pool_maxsize=concurrency, max_retries=0, pool_block=False)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _root_cause(exc: BaseException) -> str:
    """The innermost error (``connection refused``) rather than urllib3's wrappers around it."""
    seen: list[BaseException] = [exc]
    while len(seen) < 10:
        inner = seen[-1].__cause__ or seen[-1].__context__ or getattr(seen[-1], "reason", None)
        if not isinstance(inner, BaseException) or inner in seen:
            break
        seen.append(inner)
    if any(isinstance(e, ConnectionRefusedError) for e in seen):
        return "connection refused"
    return str(seen[-1])[:200]
