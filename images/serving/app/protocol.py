"""uvicorn's httptools protocol with the limits it lacks: header size and count, read timeouts, connections.

httptools (llhttp) accumulates a header of any size in memory and uvicorn sets no deadline for
reading a request: a client could hold memory with one endless header, or a connection forever by
sending a byte now and then. This subclass (``python -m app.serve`` runs it as uvicorn's ``http``)
keeps httptools' speed and bounds, per connection:

- header bytes: at most ``MAX_HEADER_BYTES`` (request line plus header fields) are fed to the
  parser while a request's headers are incomplete; one byte more gets ``431`` and the connection
  is closed. Bytes are counted *before* they reach the parser, so memory stays bounded however
  the client splits them;
- header fields: at most ``MAX_HEADERS`` (``431``);
- time to send headers: ``HEADER_TIMEOUT_SECONDS`` from the connection's opening (or from the
  first byte of a later request on it) to the end of the headers, else ``408`` and closed;
- time to send the body: ``BODY_TIMEOUT_SECONDS`` from the end of the headers to the end of the
  body, else ``408`` (or, once a response has started, just closed);
- connections: a worker keeps at most ``MAX_CONNECTIONS`` open; one more gets ``503`` with
  ``Retry-After`` and is closed at once, while the open ones keep being served.

Idle keep-alive connections are closed by uvicorn's own ``timeout_keep_alive``.

Graceful shutdown (SIGTERM, or SIGHUP's rolling restart): uvicorn closes at once every connection
without a request in progress, including one it accepted a moment ago whose client is sending its
first request, which then fails (seen under load during a SIGHUP restart). Here a connection whose
next request has not fully arrived (a fresh one, or a request partly received) is served that
request, answered with ``connection: close``; a fresh one that sends nothing within
``SHUTDOWN_FIRST_BYTE_SECONDS`` is closed without an answer, and connections idle between
requests close at once.
Timers are armed only while a request is actually incomplete after a read, so a request that
arrives in one piece (nearly all of them) costs no timer at all.

It also sends each response in one system call where uvicorn makes two (``_Corked``): the same
bytes, in the same order, only not split between the head and the body.
"""

from __future__ import annotations

import asyncio
import functools
import logging

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

log = logging.getLogger("app.protocol")

_IDLE, _HEADERS, _BODY = 0, 1, 2
SHUTDOWN_FIRST_BYTE_SECONDS = 1.0
"""Shutting down, a connection without a byte of its next request yet waits this long for one, then is closed."""


class _TooManyHeaders(Exception):
    pass


@functools.cache
def _limits() -> tuple[int, int, float, float, int]:
    from .config import Settings  # read once per worker process, from the same environment as the app

    s = Settings()
    return (
        s.max_header_bytes,
        s.max_headers,
        s.header_timeout_seconds,
        s.body_timeout_seconds,
        s.max_connections,
    )


def _raw_response(status: int, message: str, extra: bytes = b"") -> bytes:
    body = message.encode()
    return b"".join(
        [
            STATUS_LINE[status],
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: ",
            str(len(body)).encode(),
            b"\r\nconnection: close\r\n",
            extra,
            b"\r\n",
            body,
        ]
    )


class _Corked:
    """The connection's transport as the protocol and its responses see it: writes gathered, then sent at once.

    uvicorn writes a response's head (status line and headers) and its body with a ``write()``
    each, and uvloop sends each at once: two system calls, two TCP segments and two wake-ups of
    the client per response: ~20 us of the ~140 us of server CPU a one-row prediction took. Each write
    is kept until the response is complete (the protocol's ``on_response_complete``), the
    transport is closed, or the event loop's current step ends (``call_soon``: an interim
    ``100 Continue`` or a streamed response's parts are never held while the app waits), and
    then the parts go out together (``writelines``: one ``writev`` under uvloop, no copy).
    The bytes and their order are unchanged; every write of the connection goes through here,
    the protocol's own refusals included, so nothing can overtake what is held.
    """

    __slots__ = ("transport", "_loop", "_parts")

    def __init__(self, transport, loop) -> None:
        self.transport = transport
        self._loop = loop
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._parts:
            self._loop.call_soon(self.flush)
        self._parts.append(data)

    def flush(self) -> None:
        parts = self._parts
        if not parts:
            return
        self._parts = []
        if self.transport.is_closing():
            # Closed under us (the client went away; our own close() flushes first): nowhere to send them,
            # and uvicorn writes nothing to a lost connection either.
            return
        if len(parts) == 1:
            self.transport.write(parts[0])
        else:
            self.transport.writelines(parts)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def __getattr__(self, name: str):
        return getattr(self.transport, name)  # anything else (get_extra_info, ...): the transport itself


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with bounded header bytes and count, read deadlines and a connection cap."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        (
            self.max_header_bytes,
            self.max_headers,
            self.header_timeout,
            self.body_timeout,
            self.max_connections,
        ) = _limits()
        self._phase = _HEADERS
        self._header_bytes = 0
        self._header_count = 0
        self._phase_started = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_phase = _IDLE
        self._reject: tuple[int, str] | None = None
        self._last_request = False  # shutting down: answer the request being received, then close

    # -- connection ---------------------------------------------------------------------------------
    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = _Corked(transport, self.loop)  # flow control (self.flow) keeps the transport itself
        if len(self.connections) > self.max_connections:
            log.warning(
                "refused a connection: %d open, the limit is %d", len(self.connections) - 1, self.max_connections
            )
            self._close_with(
                503, f"too many connections (limit {self.max_connections} per worker)", b"retry-after: 1\r\n"
            )
            return
        self._phase_started = self.loop.time()
        self._sync_timer()

    def connection_lost(self, exc) -> None:
        self._cancel_timer()
        super().connection_lost(exc)

    def shutdown(self) -> None:  # type: ignore[override]
        if self._phase == _HEADERS and self._between_responses():
            self._last_request = True
            if self._header_bytes == 0:  # nothing of a request yet: a moment for it, then closed quietly
                self.loop.call_later(SHUTDOWN_FIRST_BYTE_SECONDS, self._close_if_silent)
            return
        super().shutdown()

    def _between_responses(self) -> bool:
        """No response in progress: none started yet on this connection, or the last one complete."""
        return self.cycle is None or self.cycle.response_complete

    def _close_if_silent(self) -> None:
        if self._header_bytes == 0 and self._between_responses():
            self._cancel_timer()
            self.transport.close()

    def on_response_complete(self) -> None:
        self.transport.flush()  # the whole response, in one system call
        super().on_response_complete()

    def handle_websocket_upgrade(self) -> None:
        # The WebSocket protocol gets the transport itself (nothing is held: no response was started).
        self.transport.flush()
        self.transport = self.transport.transport
        super().handle_websocket_upgrade()

    def _close_with(self, status: int, message: str, extra: bytes = b"") -> None:
        """Answer status (unless a response is being written) and close the connection."""
        self._cancel_timer()
        self._phase = _IDLE
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            if cycle is not None and not cycle.response_complete:
                # The app must not write after us; its receive() now reports a disconnect.
                cycle.disconnected = True
                cycle.message_event.set()
            self.transport.write(_raw_response(status, message, extra))
        self.transport.close()

    # -- reading ------------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        while data:
            if self._phase == _IDLE:
                # The first byte of the next request: its headers are due within the header timeout.
                self._phase = _HEADERS
                self._phase_started = self.loop.time()
            if self._phase != _HEADERS:
                super().data_received(data)
                break
            room = self.max_header_bytes - self._header_bytes
            if room <= 0:
                self._close_with(431, f"request headers exceed {self.max_header_bytes} bytes")
                return
            piece, data = data[:room], data[room:]
            self._header_bytes += len(piece)
            super().data_received(piece)
            if self.transport.is_closing():
                return
        self._sync_timer()

    def send_400_response(self, msg: str) -> None:
        if self._reject is not None:
            status, msg = self._reject
            self._close_with(status, msg)
            return
        self._cancel_timer()
        super().send_400_response(msg)

    # -- parser callbacks ---------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._phase != _HEADERS:
            self._phase = _HEADERS
            self._phase_started = self.loop.time()
        self._header_count = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.max_headers:
            self._reject = (431, f"more than {self.max_headers} request header fields")
            raise _TooManyHeaders  # httptools stops parsing; uvicorn answers through send_400_response
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._phase = _BODY
        self._phase_started = self.loop.time()
        super().on_headers_complete()
        if self._last_request and self.cycle is not None:
            self.cycle.keep_alive = False

    def on_message_complete(self) -> None:
        self._phase = _IDLE
        self._header_bytes = 0
        super().on_message_complete()

    # -- deadlines ----------------------------------------------------------------------------------
    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_phase = _IDLE

    def _sync_timer(self) -> None:
        """Arm the deadline of the phase a request is in; none between requests (keep-alive's)."""
        phase = self._phase
        if phase == self._timer_phase:
            return
        self._cancel_timer()
        if phase == _IDLE or self.transport.is_closing():
            return
        limit = self.header_timeout if phase == _HEADERS else self.body_timeout
        delay = max(0.0, self._phase_started + limit - self.loop.time())
        self._timer = self.loop.call_later(delay, self._timed_out, phase)
        self._timer_phase = phase

    def _timed_out(self, phase: int) -> None:
        self._timer = None
        self._timer_phase = _IDLE
        if self._phase != phase or self.transport.is_closing():
            return
        if phase == _HEADERS:
            self._close_with(408, f"request headers not received within {self.header_timeout:g} s")
        else:
            self._close_with(408, f"request body not received within {self.body_timeout:g} s")
