"""Read deadlines against slow clients, at the connection: uvicorn HTTP/1.1 protocols that time the request head.

What uvicorn (0.29 to 0.54, h11 and httptools alike) does by itself: ``timeout_keep_alive`` (default 5 s)
closes a connection left idle after a response, and is cancelled by the first byte of the next request.
Nothing times a connection that never sends a byte, a request head that trickles in, or a body nobody
reads any more; h11 caps the bytes of an incomplete head (``h11_max_incomplete_event_size``, 16 KiB by
default), httptools caps nothing (uvicorn issue #157 lists these timeouts as not done). An ASGI
middleware cannot time the head: the app is called only once the head is complete.

So :data:`DeadlineProtocol` (uvicorn's httptools protocol when httptools is installed, as uvicorn's
``auto``, else h11; give it as ``uvicorn.run(..., http="defectlite.deploy.deadlines:DeadlineProtocol")``)
adds, per connection:

* **head deadline**: from the connection (or the first byte of the next request on a keep-alive
  connection) the head must be complete within ``header_timeout_s``, else 408 JSON and close;
* **head size**: at most ``h11_max_incomplete_event_size`` bytes (default 16 KiB) of an incomplete
  head with httptools too, else 431 JSON and close;
* **unread body deadline**: a body still arriving after its response was sent (an early 413) must end
  within ``body_timeout_s`` of its head, else the connection is closed.

The body the app reads is timed by the app itself (:func:`defectlite.deploy.uploads.read_body`: a
total deadline and a longest silence, 408 JSON). The timeouts come from the app through the ASGI
lifespan state (key :data:`STATE_KEY`, set by :func:`defectlite.deploy.service.create_app`), so each worker
process reads its own app's settings; without it the defaults below apply.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE, H11Protocol

from defectlite.deploy.uploads import ApiError

log = logging.getLogger(__name__)

STATE_KEY = "defectlite_deadlines"  # lifespan state: {"header_timeout_s": float, "body_timeout_s": float}
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 60.0


class _Deadlines:
    """Mixin over a uvicorn HTTP/1.1 protocol; the subclass calls :meth:`_head_done` when a request head
    is parsed and :meth:`_body_done` when its body has fully arrived."""

    transport: asyncio.Transport
    config: Any
    app_state: dict[str, Any]
    loop: asyncio.AbstractEventLoop

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[misc]
        settings = self.app_state.get(STATE_KEY, {})
        self._header_timeout_s = float(settings.get("header_timeout_s", DEFAULT_HEADER_TIMEOUT_S))
        self._body_timeout_s = float(settings.get("body_timeout_s", DEFAULT_BODY_TIMEOUT_S))
        self._max_head_bytes = self.config.h11_max_incomplete_event_size or DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
        self._heads = self._bodies = self._responses = self._head_bytes = 0
        self._head_at = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._arm(self._header_timeout_s, self._head_timed_out)

    def data_received(self, data: bytes) -> None:
        awaiting = self._bodies == self._heads  # these bytes start (or continue) a request head
        if awaiting and self._timer is None:
            self._arm(self._header_timeout_s, self._head_timed_out)
        heads = self._heads
        super().data_received(data)  # type: ignore[misc]
        if awaiting and self._heads == heads and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self._max_head_bytes:
                detail = f"request head above {self._max_head_bytes:,} bytes"
                self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "header_too_large", detail)

    def on_response_complete(self) -> None:
        self._responses += 1
        if self._bodies < self._responses:  # answered before its body arrived: nobody reads the rest
            remaining_s = self._head_at + self._body_timeout_s - self.loop.time()
            self._arm(max(0.0, remaining_s), self._body_timed_out)
        super().on_response_complete()  # type: ignore[misc]

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)  # type: ignore[misc]

    def handle_websocket_upgrade(self, *args: Any) -> None:
        self._cancel()  # the connection now belongs to the WebSocket protocol
        super().handle_websocket_upgrade(*args)  # type: ignore[misc]

    def _head_done(self) -> None:
        self._heads += 1
        self._head_bytes = 0
        self._head_at = self.loop.time()
        self._cancel()

    def _body_done(self) -> None:
        self._bodies += 1
        if self._bodies >= self._responses:
            self._cancel()  # an unread body that has now ended

    def _arm(self, delay_s: float, callback: Any) -> None:
        self._cancel()
        self._timer = self.loop.call_later(delay_s, callback)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        detail = f"the request head did not arrive within {self._header_timeout_s:g} s (header_timeout_s)"
        self._refuse(HTTPStatus.REQUEST_TIMEOUT, "header_timeout", detail)

    def _body_timed_out(self) -> None:
        self._timer = None
        log.info("closing a connection whose unread body did not end within %g s", self._body_timeout_s)
        self.transport.close()

    def _refuse(self, status: HTTPStatus, code: str, detail: str) -> None:
        """Answer ``status`` with the service's JSON error shape and close the connection."""
        if self.transport.is_closing():
            return
        log.info("%s: %s", code, detail)
        body = ApiError(int(status), code, detail).response().body
        head = (
            f"HTTP/1.1 {int(status)} {status.phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode("latin-1") + body)
        self.transport.close()


class H11DeadlineProtocol(_Deadlines, H11Protocol):
    """uvicorn's h11 protocol with the deadlines of this module."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._seen_cycle = None
        super().connection_made(transport)

    def handle_events(self) -> None:
        super().handle_events()
        # h11 parses one request at a time (later pipelined ones wait, PAUSED), so one new cycle at most
        if self.cycle is not None and self.cycle is not self._seen_cycle:
            self._seen_cycle = self.cycle
            self._head_done()
        if self._bodies < self._heads and self.conn.their_state is not h11.SEND_BODY:
            self._body_done()


DeadlineProtocol: type[asyncio.Protocol] = H11DeadlineProtocol
try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools not installed
    pass
else:

    class HttpToolsDeadlineProtocol(_Deadlines, HttpToolsProtocol):
        """uvicorn's httptools protocol with the deadlines of this module."""

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            self._head_done()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._body_done()

    DeadlineProtocol = HttpToolsDeadlineProtocol
