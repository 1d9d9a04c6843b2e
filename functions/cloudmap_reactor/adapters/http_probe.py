"""HTTP probes of registered instances: one pooled ``requests`` session, a bounded thread pool.

A probe is ``GET <path>`` with connect and read timeouts, no redirects followed, no proxy, no
cookies kept, ``Accept-Encoding: identity`` and at most ``max_body_bytes`` of body read. Each
probe also has a total deadline, connect + read timeout from its start, for everything (connect,
headers, body): a server that sends its answer one byte at a time fails it as a timeout (see
``_DeadlineSocket``). The whole probing of a pass is bounded too: a probe starts only while it can
still finish within ``pass_bound_seconds`` (twice connect + read timeout) of the pass's first probe;
the others are skipped this pass, and a probe that has not answered by then counts as a timeout.
Probes start in the order given (the scanner puts failing and least recently probed instances first).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from http.cookiejar import DefaultCookiePolicy
from typing import TYPE_CHECKING, Any

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool

from cloudmap_reactor import __version__
from cloudmap_reactor.core.probing import ProbeResult, ProbeTarget, ProbeVerdict

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

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
        self._deadline = _ProbeDeadline(clock)
        self._session = _session(max(1, concurrency), self._deadline)

    @property
    def session(self) -> requests.Session:
        """The pooled session the probes go through (a test mounts a recording transport on it)."""
        return self._session

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
            else:  # started, not answered yet: its own deadline ends it (and frees the thread) soon after
                stuck = ProbeResult(target, ProbeVerdict.FAILED, error="timeout", duration_ms=self._since(begun))
                results.append(stuck)
        return results

    def _probe_one(self, target: ProbeTarget, deadline: float) -> ProbeResult:
        started = self._clock()
        if started + self._probe_seconds > deadline:
            return ProbeResult(target, ProbeVerdict.SKIPPED, error="not started within the pass bound")
        probe_deadline = started + self._probe_seconds
        self._deadline.at = probe_deadline  # what this thread's sockets wait for at most
        try:
            with self._session.get(target.url, timeout=self._timeouts, allow_redirects=False, stream=True) as response:
                self._read_some_of_body(response, until=probe_deadline)
                status = response.status_code
        # The body is read through urllib3 (``raw``), whose errors requests does not translate.
        except (requests.Timeout, urllib3.exceptions.TimeoutError):
            return self._failed(target, started, "timeout")
        except (requests.ConnectionError, urllib3.exceptions.ProtocolError) as exc:
            return self._failed(target, started, f"connection failed: {_root_cause(exc)}")
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            return self._failed(target, started, f"request failed: {_root_cause(exc)}")
        finally:
            self._deadline.at = None
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


class _ProbeDeadline(threading.local):
    """When the probe running in this thread must be over (on ``clock``); None between probes."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.at: float | None = None

    def remaining(self) -> float | None:
        return None if self.at is None else self.at - self.clock()


class _DeadlineSocket(socket.socket):
    """A probe's connection: every receive and send ends by the probe's deadline, not only each on its own.

    urllib3's timeouts, ``Timeout(total=...)`` included, bound each socket operation ("the read and
    total timeouts only measure the time between read operations", urllib3's ``Timeout`` docs): a
    server that sends its headers one byte at a time never trips them. Here each operation waits at
    most the lesser of the timeout urllib3 set and the time left before the deadline of the probe
    running in this thread, and none starts once it has passed (``TimeoutError``, which urllib3 and
    requests report as a read timeout).
    """

    _deadline: _ProbeDeadline | None = None
    _configured: float | None = None

    @classmethod
    def adopt(cls, sock: socket.socket, deadline: _ProbeDeadline) -> _DeadlineSocket:
        """The connected socket urllib3 made, as a deadline-aware one (same file descriptor)."""
        timeout = sock.gettimeout()
        adopted = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        adopted._deadline = deadline
        adopted.settimeout(timeout)
        return adopted

    def settimeout(self, value: float | None) -> None:
        self._configured = value
        super().settimeout(value)

    def _arm(self) -> None:
        remaining = None if self._deadline is None else self._deadline.remaining()
        if remaining is None:
            super().settimeout(self._configured)
        elif remaining <= 0:
            raise TimeoutError("the probe's deadline has passed")
        else:
            super().settimeout(remaining if self._configured is None else min(self._configured, remaining))

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        self._arm()
        return super().recv(bufsize, flags)

    def recv_into(self, buffer: WriteableBuffer, nbytes: int = 0, flags: int = 0) -> int:
        self._arm()
        return super().recv_into(buffer, nbytes, flags)

    def send(self, data: ReadableBuffer, flags: int = 0) -> int:
        self._arm()
        return super().send(data, flags)

    def sendall(self, data: ReadableBuffer, flags: int = 0) -> None:
        self._arm()
        super().sendall(data, flags)


def _deadline_pool(deadline: _ProbeDeadline) -> type[HTTPConnectionPool]:
    """urllib3's plain-HTTP pool, with connections over ``_DeadlineSocket``s."""

    class _DeadlineConnection(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return _DeadlineSocket.adopt(super()._new_conn(), deadline)

    class _DeadlinePool(HTTPConnectionPool):
        ConnectionCls = _DeadlineConnection

    return _DeadlinePool


class _DeadlineAdapter(HTTPAdapter):
    """``HTTPAdapter`` whose ``http://`` connections keep the deadline of the probe using them."""

    def __init__(self, deadline: _ProbeDeadline, **options: Any) -> None:
        self._pool_class = _deadline_pool(deadline)
        super().__init__(**options)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = {**self.poolmanager.pool_classes_by_scheme, "http": self._pool_class}


def _session(concurrency: int, deadline: _ProbeDeadline) -> requests.Session:
    """One session per container: pooled keep-alive connections, no retries, no proxies, no cookies."""
    session = requests.Session()
    session.trust_env = False  # never route probes through an HTTP(S)_PROXY, never read .netrc
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    session.headers.update({"User-Agent": USER_AGENT, "Accept": "*/*", "Accept-Encoding": "identity"})
    adapter = _DeadlineAdapter(
        deadline, pool_connections=256, pool_maxsize=concurrency, max_retries=0, pool_block=False
    )
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
