"""Real HTTP servers on 127.0.0.1 that play the tasks the health poller probes (tests and demo).

Each server is one task's endpoint and answers every request the same way (``healthy``,
``failing``, ``slow``, ``header-trickle``, ...), except ``flapping``, which alternates failure and
success. A ``refused`` address is a port bound but never listened on: connecting to it is refused
at once.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Behaviour(StrEnum):
    HEALTHY = "healthy"  # 200
    FAILING = "failing"  # 500
    SLOW = "slow"  # answers only after ``delay`` seconds (beyond any probe timeout)
    TRICKLE = "trickle"  # sends the headers at once, then one byte of body every 0.1 s
    HEADER_TRICKLE = "header-trickle"  # sends its status line and headers one byte every ``interval`` s
    FLAPPING = "flapping"  # 500, 200, 500, 200, ...
    REDIRECT = "redirect"  # 302 to ``location``
    STATUS = "status"  # answers ``status``


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class TargetServer:
    """One endpoint: its behaviour and every request it received."""

    behaviour: Behaviour
    status: int = 200
    delay: float = 30.0
    interval: float = 0.05
    location: str = ""
    requests: list[Request] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)
    _answers: Iterator[int] = field(default_factory=lambda: itertools.cycle([500, 200]))
    _server: ThreadingHTTPServer | None = None

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise RuntimeError("the server is not started: use LocalHttpTargets.add")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        self.requests.append(Request(handler.command, handler.path, dict(handler.headers.items())))
        if self.behaviour is Behaviour.HEADER_TRICKLE:
            self._trickle_headers(handler)
            return
        if self.behaviour is Behaviour.SLOW:
            self.released.wait(self.delay)
        status = {
            Behaviour.FAILING: 500,
            Behaviour.FLAPPING: next(self._answers) if self.behaviour is Behaviour.FLAPPING else 0,
            Behaviour.REDIRECT: 302,
            Behaviour.STATUS: self.status,
        }.get(self.behaviour, 200)
        body = b"x" * 1000 if self.behaviour is Behaviour.TRICKLE else f"{status}\n".encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "text/plain")
        handler.send_header("Content-Length", str(len(body)))
        if self.location:
            handler.send_header("Location", self.location)
        handler.end_headers()
        if self.behaviour is Behaviour.TRICKLE:
            for byte in body:
                if self.released.wait(0.1):
                    return
                handler.wfile.write(bytes([byte]))
                handler.wfile.flush()
            return
        handler.wfile.write(body)

    def _trickle_headers(self, handler: BaseHTTPRequestHandler) -> None:
        """A valid answer whose head arrives one byte at a time: never a pause long enough for a read timeout.

        About 200 bytes of head, so 10 s at the default ``interval``, longer than any probe's timeouts.
        """
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
            + "".join(f"X-Padding-{n}: {'x' * 24}\r\n" for n in range(4))
            + "Content-Length: 3\r\n\r\n"
        ).encode()
        for byte in head:
            if self.released.wait(self.interval):
                return
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
        handler.wfile.write(b"ok\n")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real services answer
    server: Any

    def do_GET(self) -> None:
        # The prober may give up (timeout, or enough body read) and close the connection first.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.server.target.answer(self)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read the recorded requests instead."""


@dataclass
class LocalHttpTargets:
    """Start servers with ``add``; every server and reserved port is closed on ``close``."""

    servers: list[TargetServer] = field(default_factory=list)
    _reserved: list[socket.socket] = field(default_factory=list)

    def add(self, behaviour: Behaviour, **options: Any) -> TargetServer:
        target = TargetServer(behaviour, **options)
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.target = target  # type: ignore[attr-defined]
        target._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.servers.append(target)
        return target

    def refused_address(self) -> tuple[str, int]:
        """An address where nothing listens: the port stays bound (so no one else takes it), never listened on."""
        reserved = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        reserved.bind(("127.0.0.1", 0))
        self._reserved.append(reserved)
        host, port = reserved.getsockname()[:2]
        return str(host), int(port)

    def close(self) -> None:
        for target in self.servers:
            target.released.set()
            if target._server is not None:
                target._server.shutdown()
                target._server.server_close()
        for reserved in self._reserved:
            reserved.close()


@contextmanager
def local_http_targets() -> Iterator[LocalHttpTargets]:
    targets = LocalHttpTargets()
    try:
        yield targets
    finally:
        targets.close()
