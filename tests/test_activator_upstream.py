"""The activator's upstream client (``activator/upstream.py``) against raw HTTP servers on
127.0.0.1 that answer exactly as each test scripts (asyncio streams, so framing, closing and
silence are under the test's control): keep-alive reuse, the request as sent, chunked,
length- and close-delimited bodies, a pooled connection the server closed, ``Connection:
close``, refused connections, the silence timeout before and after the first byte, an answer
left half-read, a cancelled request, and a large streamed body under back-pressure."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from procs import free_port

from activator.upstream import UpstreamError, UpstreamPool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]


class Server:
    """A raw HTTP server: ``handler`` gets each connection; requests and connections counted."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.port = free_port()
        self.connections = 0
        self.requests: list[bytes] = []
        self.disconnects = 0
        self.url = f"http://127.0.0.1:{self.port}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer, self)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """One request (head and Content-Length body), or None at the connection's end."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            self.disconnects += 1
            return None
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        request = head + await reader.readexactly(length)
        self.requests.append(request)
        return request


@contextlib.asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[Server]:
    srv = Server(handler)
    s = await asyncio.start_server(srv.serve, "127.0.0.1", srv.port)
    try:
        yield srv
    finally:
        s.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(s.wait_closed(), 2)


def answer(body: bytes, *extra: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    head += b"".join(h + b"\r\n" for h in extra)
    return head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body


async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, s: Server) -> None:
    while (request := await s.read_request(reader)) is not None:
        writer.write(answer(request.split(b"\r\n\r\n", 1)[1], b"X-Seen: yes"))
        await writer.drain()


async def test_one_connection_serves_requests_one_after_another() -> None:
    async with server(keep_alive) as srv:
        pool = UpstreamPool()
        for i in range(5):
            body = b'{"model": "m", "i": %d}' % i
            resp = await pool.post(
                srv.url + "/r1", "/v1/completions", body, connect_timeout_s=5,
                first_byte_timeout_s=5,
            )  # fmt: skip
            assert resp.status == 200 and resp.content_type == "application/json"
            assert (b"X-Seen", b"yes") in resp.raw_headers
            assert await resp.read() == body
            resp.release()
        await pool.close()
    assert srv.connections == 1
    head = srv.requests[0].split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[0] == b"POST /r1/v1/completions HTTP/1.1"
    assert f"Host: 127.0.0.1:{srv.port}".encode() in head
    assert b"Content-Type: application/json" in head


async def test_chunked_answer_streams_chunk_by_chunk() -> None:
    go = asyncio.Event()

    async def sse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, s: Server) -> None:
        await s.read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for i in range(3):
            event = b"data: %d\n\n" % i
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
            await go.wait()
            go.clear()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await s.read_request(reader)  # kept alive

    async with server(sse) as srv:
        pool = UpstreamPool()
        resp = await pool.post(srv.url, "/x", b"{}", connect_timeout_s=5, first_byte_timeout_s=5)
        assert resp.content_type == "text/event-stream"
        got = []
        for _ in range(3):
            got.append(await resp.chunk())
            go.set()
        assert got == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n"]
        assert await resp.chunk() is None
        resp.release()
        assert pool.idle_connections() == 1
        await pool.close()


async def test_a_body_delimited_by_the_connection_end() -> None:
    async def old(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, s: Server) -> None:
        await s.read_request(reader)
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{"a": 1}')
        await writer.drain()
        writer.close()

    async with server(old) as srv:
        pool = UpstreamPool()
        resp = await pool.post(srv.url, "/x", b"{}", connect_timeout_s=5, first_byte_timeout_s=5)
        assert await resp.read() == b'{"a": 1}'
        resp.release()
        assert pool.idle_connections() == 0
        await pool.close()


async def test_a_pooled_connection_the_server_closed_is_replaced_once() -> None:
    async def one_each(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, s: Server
    ) -> None:
        await s.read_request(reader)
        writer.write(answer(b"{}"))  # keep-alive promised...
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()  # ...then dropped while idle

    async with server(one_each) as srv:
        pool = UpstreamPool()
        for _ in range(3):
            resp = await pool.post(
                srv.url, "/x", b"{}", connect_timeout_s=5, first_byte_timeout_s=5
            )
            assert await resp.read() == b"{}"
            resp.release()
            await asyncio.sleep(0.2)  # the server has closed it by now
        await pool.close()
    assert srv.connections == 3 and len(srv.requests) == 3


async def test_connection_close_is_not_pooled() -> None:
    async def closing(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, s: Server
    ) -> None:
        await s.read_request(reader)
        writer.write(answer(b"{}", b"Connection: close"))
        await writer.drain()

    async with server(closing) as srv:
        pool = UpstreamPool()
        resp = await pool.post(srv.url, "/x", b"{}", connect_timeout_s=5, first_byte_timeout_s=5)
        await resp.read()
        resp.release()
        assert pool.idle_connections() == 0
        await pool.close()


async def test_a_refused_connection_is_an_error_not_a_timeout() -> None:
    pool = UpstreamPool()
    with pytest.raises(UpstreamError) as e:
        await pool.post(
            f"http://127.0.0.1:{free_port()}", "/x", b"{}", connect_timeout_s=5,
            first_byte_timeout_s=5,
        )  # fmt: skip
    assert e.value.timeout is None and not e.value.answered
    await pool.close()


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, s: Server) -> None:
    await s.read_request(reader)
    if await s.read_request(reader) is None:  # waits: the client's close ends it
        return


async def test_silence_before_the_first_byte_times_out_and_drops_the_connection() -> None:
    async with server(silent) as srv:
        pool = UpstreamPool()
        with pytest.raises(UpstreamError) as e:
            await pool.post(srv.url, "/x", b"{}", connect_timeout_s=5, first_byte_timeout_s=0.3)
        assert e.value.timeout == "silence" and not e.value.answered
        for _ in range(100):
            if srv.disconnects:
                break
            await asyncio.sleep(0.02)
        assert srv.disconnects == 1  # the replica sees the request abandoned
        await pool.close()


async def test_silence_mid_stream_times_out_after_the_idle_timeout() -> None:
    async def stalls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, s: Server) -> None:
        await s.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")
        writer.write(b"Transfer-Encoding: chunked\r\n\r\n6\r\ndata:1\r\n")
        await writer.drain()
        await reader.read()  # then nothing, until the client leaves

    async with server(stalls) as srv:
        pool = UpstreamPool()
        resp = await pool.post(srv.url, "/x", b"{}", connect_timeout_s=5, first_byte_timeout_s=30)
        assert await resp.chunk() == b"data:1"
        resp.set_timeout(0.3)
        with pytest.raises(UpstreamError) as e:
            await resp.chunk()
        assert e.value.timeout == "silence" and e.value.answered
        resp.release()
        await pool.close()


async def test_an_answer_left_half_read_closes_its_connection() -> None:
    async def long(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, s: Server) -> None:
        await s.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")
        writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            for _ in range(1000):
                writer.write(b"6\r\ndata:1\r\n")
                await writer.drain()
                await asyncio.sleep(0.01)
        s.disconnects += 1

    async with server(long) as srv:
        pool = UpstreamPool()
        resp = await pool.post(srv.url, "/x", b"{}", connect_timeout_s=5, first_byte_timeout_s=5)
        await resp.chunk()
        resp.release()
        for _ in range(200):
            if srv.disconnects:
                break
            await asyncio.sleep(0.02)
        assert srv.disconnects == 1 and pool.idle_connections() == 0
        await pool.close()


async def test_a_cancelled_request_drops_its_connection() -> None:
    async with server(silent) as srv:
        pool = UpstreamPool()
        task = asyncio.create_task(
            pool.post(srv.url, "/x", b"{}", connect_timeout_s=5, first_byte_timeout_s=30)
        )
        for _ in range(100):
            if srv.requests:
                break
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(100):
            if srv.disconnects:
                break
            await asyncio.sleep(0.02)
        assert srv.disconnects == 1
        await pool.close()


async def test_a_large_stream_arrives_whole_under_back_pressure() -> None:
    piece = bytes(range(256)) * 256  # 64 KiB
    n = 80  # 5 MiB: past the high-water mark, so reading pauses and resumes

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, s: Server) -> None:
        await s.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")
        writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
        for _ in range(n):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await s.read_request(reader)

    async with server(big) as srv:
        pool = UpstreamPool()
        resp = await pool.post(srv.url, "/x", b"{}", connect_timeout_s=5, first_byte_timeout_s=5)
        await asyncio.sleep(0.3)  # let it pile up unread
        got = bytearray()
        while (chunk := await resp.chunk()) is not None:
            got += chunk
        assert bytes(got) == piece * n
        resp.release()
        assert pool.idle_connections() == 1
        await pool.close()


async def test_a_reused_connection_closed_as_the_request_arrives_is_retried_once() -> None:
    """The keep-alive race: the replica closes an idle connection just as a request is sent on
    it. Nothing was answered, so the request goes once more, on a new connection."""

    async def first_only(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, s: Server
    ) -> None:
        await s.read_request(reader)
        writer.write(answer(b"{}"))
        await writer.drain()
        await s.read_request(reader)  # the second request on this connection: dropped
        writer.transport.abort()

    async with server(first_only) as srv:
        pool = UpstreamPool()
        for _ in range(2):
            resp = await pool.post(
                srv.url, "/x", b"{}", connect_timeout_s=5, first_byte_timeout_s=5
            )
            assert await resp.read() == b"{}"
            resp.release()
        await pool.close()
    assert srv.connections == 2 and len(srv.requests) == 3


async def test_a_large_answer_read_whole_is_not_held_back() -> None:
    """read() takes the whole body: reading never pauses for it (it would wait for ever)."""
    big = b"x" * (5 * 2**20)

    async def whole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, s: Server) -> None:
        await s.read_request(reader)
        writer.write(answer(big))
        await writer.drain()
        await s.read_request(reader)

    async with server(whole) as srv:
        pool = UpstreamPool()
        resp = await pool.post(srv.url, "/x", b"{}", connect_timeout_s=5, first_byte_timeout_s=5)
        assert await resp.read() == big
        resp.release()
        assert pool.idle_connections() == 1
        await pool.close()


async def test_an_idle_connection_the_server_closes_leaves_the_pool() -> None:
    async def then_close(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, s: Server
    ) -> None:
        await s.read_request(reader)
        writer.write(answer(b"{}"))
        await writer.drain()
        await asyncio.sleep(0.05)

    async with server(then_close) as srv:
        pool = UpstreamPool()
        resp = await pool.post(srv.url, "/x", b"{}", connect_timeout_s=5, first_byte_timeout_s=5)
        await resp.read()
        resp.release()
        assert pool.idle_connections() == 1
        for _ in range(100):
            if pool.idle_connections() == 0:
                break
            await asyncio.sleep(0.02)
        assert pool.idle_connections() == 0
        await pool.close()
