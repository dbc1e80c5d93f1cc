"""What the proxy benches share (``activator_overhead.py``, ``gateway_overhead.py``): the bare
upstream they put behind each proxy, nginx's config as the compiled reference, percentiles."""

from __future__ import annotations

import asyncio
from pathlib import Path


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def nginx_conf(listen: int, upstream: int, root: Path) -> Path:
    conf = root / "nginx.conf"
    conf.write_text(
        f"""
daemon off; worker_processes 1; pid {root}/nginx.pid; error_log {root}/error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off; client_body_temp_path {root}; proxy_temp_path {root};
  upstream up {{ server 127.0.0.1:{upstream}; keepalive 128; }}
  server {{ listen 127.0.0.1:{listen};
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";
                 proxy_buffering off; }} }}
}}
"""
    )
    return conf


def serve_fixed(port: int, upstream_ms: float) -> None:
    """A bare upstream: answers every completion after ``upstream_ms`` with a canned body."""
    from aiohttp import web

    answer = (
        b'{"id":"cmpl-1","object":"text_completion","created":0,"model":"bench","choices":'
        b'[{"index":0,"text":" hi","finish_reason":"length"}],"usage":{"prompt_tokens":1,'
        b'"completion_tokens":1,"total_tokens":2}}'
    )
    event = (
        b'data: {"id":"cmpl-1","object":"text_completion","choices":[{"index":0,"text":" hi"}]}\n\n'
    )

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        await asyncio.sleep(upstream_ms / 1000)
        if not body.get("stream"):
            return web.Response(body=answer, content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for _ in range(3):
            await resp.write(event)
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/health", health)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)
