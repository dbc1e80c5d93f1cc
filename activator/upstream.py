"""The activator's upstream client: one POST at a time per keep-alive HTTP/1.1 connection to a
replica, on a bare asyncio protocol with httptools' C parser.

Why not aiohttp's client (which the activator used): per request it built a request object, a
header multidict, a payload, a response, a stream reader and a writer task, and rescheduled a
read timer on every chunk — about 125 us of CPU per request on the machine the bench ran on,
against about 25 us here, and the hot path of ``thaw up`` is mostly this. What it does, and all
it does:

- a pool of idle connections per origin (``http://HOST:PORT``), reused last-in first-out; a new
  one is opened within ``connect_timeout_s``. A reused connection that the replica had closed
  meanwhile (it fails before any byte of an answer) is replaced once by a fresh one;
- the request leaves in one write: ``POST PREFIX+PATH``, ``Host``, ``Content-Type:
  application/json``, ``Content-Length``, the body;
- the answer's status and raw headers, then its body whole (:meth:`UpstreamResponse.read`) or
  chunk by chunk as it arrives (:meth:`UpstreamResponse.chunk`, for SSE), with reading paused
  while more than :data:`HIGH_WATER_BYTES` wait to be consumed; framing by ``Content-Length``,
  chunked encoding or the connection's end; a connection the replica closes while idle leaves
  the pool at once, and origins without idle connections are forgotten past
  :data:`MAX_ORIGINS`;
- one silence timeout per exchange, changeable mid-way (:meth:`UpstreamResponse.set_timeout`):
  the activator gives ``upstream_first_byte_timeout_s`` up to the first byte it can forward, then
  ``upstream_idle_timeout_s``. It is one loop timer per exchange, re-armed only when it fires
  early (data came meanwhile), never per chunk;
- an exchange not read to its end (the client left, a timeout, an error) closes its connection,
  so the replica sees the disconnect (vLLM then aborts the generation); one read to its end goes
  back to the pool unless the replica said ``Connection: close``.

Plain HTTP only: the replicas are pods or local processes; TLS ends at the gateway in front.
Times are the event loop's (``loop.time()``), the clock its timers run on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

import httptools

#: Read from a replica is paused while this much of its answer waits to be consumed.
HIGH_WATER_BYTES = 1 << 20
#: Origins remembered before those without idle connections are forgotten (replicas churn).
MAX_ORIGINS = 256


class UpstreamError(Exception):
    """An exchange with a replica failed. ``timeout``: ``connect`` or ``silence`` when it timed
    out, else None. ``answered``: whether any byte of an answer had arrived."""

    def __init__(self, reason: str, *, timeout: str | None = None, answered: bool = False) -> None:
        super().__init__(reason)
        self.timeout = timeout
        self.answered = answered


class _Origin:
    """Where a replica's base URL points: host, port, the Host header, a path prefix."""

    __slots__ = ("host", "host_header", "idle", "port", "prefix")

    def __init__(self, base_url: str) -> None:
        if not base_url.startswith("http://"):
            raise UpstreamError(f"replica URL {base_url!r}: only http:// is spoken to replicas")
        rest = base_url[len("http://") :]
        authority, slash, path = rest.partition("/")
        self.prefix = (slash + path).rstrip("/")
        host, _, port = authority.rpartition(":")
        if not host or not port.isdigit():
            host, port = authority, "80"
        self.host = host.strip("[]")
        self.port = int(port)
        self.host_header = authority.encode("latin-1")
        self.idle: list[_Connection] = []


class _Connection(asyncio.Protocol):
    """One keep-alive connection; at most one exchange on it at a time."""

    __slots__ = (
        "closed",
        "exchange",
        "origin",
        "parser",
        "reused",
        "transport",
    )

    def __init__(self, origin: _Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: UpstreamResponse | None = None
        self.closed = False
        self.reused = False

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None or ex.complete:  # nothing asked: a stray byte makes it unusable
            self.close()
            return
        ex.last_data_s = ex.loop.time()
        ex.answered = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            ex.fail(UpstreamError(f"unreadable answer: {e}", answered=True))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        with contextlib.suppress(ValueError):  # closed by the replica while idle
            self.origin.idle.remove(self)
        ex = self.exchange
        if ex is not None and not ex.complete:
            if ex.headers_done and ex.until_close:
                ex.finish()  # a body delimited by the end of the connection
            else:
                why = f"{type(exc).__name__}: {exc}" if exc else "the replica closed the connection"
                ex.fail(UpstreamError(why, answered=ex.answered))

    # -- httptools callbacks ---------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        ex = self.exchange
        if ex is not None:
            ex.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        ex = self.exchange
        if ex is None:
            return
        ex.status = self.parser.get_status_code()
        ex.keep_alive = self.parser.should_keep_alive()
        framed = False
        for name, value in ex.raw_headers:
            lower = name.lower()
            if lower == b"content-length" or (
                lower == b"transfer-encoding" and b"chunked" in value.lower()
            ):
                framed = True
            elif lower == b"content-type":
                ex.content_type = value.split(b";", 1)[0].strip().lower().decode("latin-1")
        no_body = ex.status < 200 or ex.status in (204, 304)
        ex.until_close = not framed and not no_body
        ex.headers_done = True
        if not ex.head.done():
            ex.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        ex = self.exchange
        if ex is not None:
            ex.feed(body)

    def on_message_complete(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.finish()

    # -- use -------------------------------------------------------------------------------------

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class UpstreamResponse:
    """One exchange: the request sent, the answer as it arrives. Read it to the end, or
    :meth:`release` it (which closes the connection if the answer was not read to its end)."""

    __slots__ = (
        "answered",
        "body",
        "buffered",
        "complete",
        "conn",
        "content_type",
        "error",
        "head",
        "headers_done",
        "keep_alive",
        "last_data_s",
        "loop",
        "paused",
        "raw_headers",
        "released",
        "status",
        "streaming",
        "timeout_s",
        "timer",
        "until_close",
        "waiter",
    )

    def __init__(self, conn: _Connection, loop: asyncio.AbstractEventLoop, timeout_s: float):
        self.conn = conn
        self.loop = loop
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.content_type = ""
        self.head: asyncio.Future[None] = loop.create_future()
        self.headers_done = False
        self.keep_alive = False
        self.until_close = False
        self.body: deque[bytes] = deque()
        self.buffered = 0
        self.complete = False
        self.error: UpstreamError | None = None
        self.answered = False
        self.waiter: asyncio.Future[None] | None = None
        self.released = False
        self.streaming = False  # read chunk by chunk: reading may pause
        self.paused = False
        self.timeout_s = timeout_s
        self.last_data_s = loop.time()
        self.timer: asyncio.TimerHandle | None = loop.call_later(timeout_s, self._check_silence)

    # -- fed by the connection -----------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self.body.append(data)
        self.buffered += len(data)
        if self.streaming and not self.paused and self.buffered > HIGH_WATER_BYTES:
            self._pause(True)
        self._wake()

    def _pause(self, paused: bool) -> None:
        transport = self.conn.transport
        if transport is not None and not transport.is_closing():
            if paused:
                transport.pause_reading()
            else:
                transport.resume_reading()
        self.paused = paused

    def finish(self) -> None:
        self.complete = True
        self._stop_timer()
        self._wake()

    def fail(self, error: UpstreamError) -> None:
        if self.complete or self.error is not None:
            return
        self.error = error
        self._stop_timer()
        if not self.head.done():
            self.head.set_exception(error)
            self.head.exception()  # retrieved: a caller may never await it
        self._wake()

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    # -- the silence timer -----------------------------------------------------------------------

    def set_timeout(self, timeout_s: float) -> None:
        """From now on, fail after ``timeout_s`` without a byte from the replica."""
        if timeout_s == self.timeout_s:
            return
        self.timeout_s = timeout_s
        self.last_data_s = max(self.last_data_s, self.loop.time())
        if self.timer is not None:
            self.timer.cancel()
            self.timer = self.loop.call_at(self.last_data_s + timeout_s, self._check_silence)

    def _check_silence(self) -> None:
        self.timer = None
        if self.complete or self.error is not None:
            return
        due_s = self.last_data_s + self.timeout_s
        if self.loop.time() < due_s - 0.001:  # data came meanwhile: wait the rest
            self.timer = self.loop.call_at(due_s, self._check_silence)
            return
        self.fail(
            UpstreamError(
                f"the replica sent nothing for {self.timeout_s:g} s",
                timeout="silence",
                answered=self.answered,
            )
        )
        self.conn.close()

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    # -- the caller's side -------------------------------------------------------------------------

    async def read(self) -> bytes:
        """The whole body."""
        while not self.complete:
            await self._more()
        data = b"".join(self.body)
        self.body.clear()
        self.buffered = 0
        return data

    async def chunk(self) -> bytes | None:
        """The next piece of the body as it arrived, or None at its end. From the first call
        on, reading from the replica pauses while :data:`HIGH_WATER_BYTES` wait here."""
        self.streaming = True
        while not self.body:
            if self.complete:
                return None
            await self._more()
        data = self.body.popleft()
        self.buffered -= len(data)
        if self.paused and self.buffered <= HIGH_WATER_BYTES // 4:
            self._pause(False)
        return data

    async def _more(self) -> None:
        if self.error is not None:
            raise self.error
        self.waiter = self.loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None
        if self.error is not None:
            raise self.error

    def release(self) -> None:
        """Done with the exchange: the connection goes back to the pool if the answer was read
        to its end and the replica keeps it alive; else it is closed."""
        if self.released:
            return
        self.released = True
        self._stop_timer()
        conn = self.conn
        conn.exchange = None
        if self.complete and self.keep_alive and not conn.closed and not self.body:
            if self.paused:
                self._pause(False)
            conn.reused = True
            conn.origin.idle.append(conn)
        else:
            conn.close()


class UpstreamPool:
    """Keep-alive connections to replicas, by base URL; see the module docstring."""

    def __init__(self) -> None:
        self._origins: dict[str, _Origin] = {}
        self._closed = False

    async def post(
        self,
        base_url: str,
        path: str,
        body: bytes,
        *,
        connect_timeout_s: float,
        first_byte_timeout_s: float,
    ) -> UpstreamResponse:
        """Send ``body`` to ``base_url + path``; return once the answer's headers are in.
        Raises :class:`UpstreamError` (nothing of an answer is then forwardable)."""
        origin = self._origins.get(base_url)
        if origin is None:
            if len(self._origins) >= MAX_ORIGINS:  # replicas come and go: forget idle ones
                self._origins = {k: o for k, o in self._origins.items() if o.idle}
            origin = self._origins[base_url] = _Origin(base_url)
        head = (
            b"POST "
            + (origin.prefix + path).encode("latin-1")
            + b" HTTP/1.1\r\nHost: "
            + origin.host_header
            + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
        )
        loop = asyncio.get_running_loop()
        for attempt in range(2):
            conn = await self._connection(origin, loop, connect_timeout_s, fresh=attempt > 0)
            resp = UpstreamResponse(conn, loop, first_byte_timeout_s)
            conn.exchange = resp
            assert conn.transport is not None
            conn.transport.write(head + body)
            try:
                await resp.head
            except UpstreamError as e:
                resp.release()
                if conn.reused and not e.answered and e.timeout is None and attempt == 0:
                    continue  # the replica had closed it while idle: once more, on a new one
                raise
            except BaseException:  # cancelled (the client left): drop the connection
                resp.release()
                raise
            return resp
        raise AssertionError("unreachable")  # pragma: no cover

    async def _connection(
        self, origin: _Origin, loop: asyncio.AbstractEventLoop, timeout_s: float, *, fresh: bool
    ) -> _Connection:
        if self._closed:
            raise UpstreamError("the upstream pool is closed")
        while origin.idle and not fresh:
            conn = origin.idle.pop()
            if not conn.closed:
                return conn
        try:
            async with asyncio.timeout(timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(origin), origin.host, origin.port
                )
        except TimeoutError as e:
            raise UpstreamError(
                f"no connection to {origin.host}:{origin.port} within {timeout_s:g} s",
                timeout="connect",
            ) from e
        except OSError as e:
            raise UpstreamError(f"{type(e).__name__}: {e}") from e
        return conn

    def idle_connections(self) -> int:
        """Idle pooled connections now, all origins together."""
        return sum(len(o.idle) for o in self._origins.values())

    async def close(self) -> None:
        """Close every idle connection; exchanges under way end on their own."""
        self._closed = True
        for origin in self._origins.values():
            for conn in origin.idle:
                with contextlib.suppress(Exception):
                    conn.close()
            origin.idle.clear()
        await asyncio.sleep(0)


def header(raw_headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower-case) in ``raw_headers``, or None."""
    for k, v in raw_headers:
        if k.lower() == name:
            return v
    return None
