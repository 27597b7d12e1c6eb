"""A proxy between the operator and the real API server that forwards everything, and
makes on demand the faults a busy or restarted API server makes, which the real one will
not make when asked: a continue token refused as too old, an ERROR event in a watch, a
watch that goes quiet while objects are deleted, a server that does not stream lists.

The operator talks plain HTTP to it, with its ServiceAccount token; it talks TLS to the API
server, verifying the cluster's CA, and passes the token on: what the operator may do is
still exactly what the chart's RBAC lets it.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

PASSED_HEADERS = ("Authorization", "Accept", "Content-Type", "User-Agent")


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def resource_of(path: str) -> str:
    """The plural a list or watch asks for (the last segment of a collection's path)."""
    return path.rstrip("/").rsplit("/", 1)[-1]


class _Watch:
    def __init__(self, resource: str, loop: asyncio.AbstractEventLoop) -> None:
        self.resource = resource
        self.loop = loop
        self.lines: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()

    def fail(self, event: dict[str, Any]) -> None:
        """From any thread: this ERROR next, then the stream ends."""
        line = json.dumps(event).encode() + b"\n"
        self.loop.call_soon_threadsafe(self.lines.put_nowait, ("fault", line))


class FaultyApiServer:
    """Forwards to the API server at ``upstream``; the attributes and methods arm faults."""

    def __init__(self, upstream: str, ca: Path) -> None:
        self.upstream = upstream.rstrip("/")
        self.tls = ssl.create_default_context(cafile=str(ca))
        self.page_limit: int | None = None  # every paged list asks for this many at a time
        self.watchlist = True  # False: streamed lists refused, as a server without WatchList
        self.expire: set[str] = set()  # the next continued page of these kinds: 410
        self.deaf = False  # watches forward nothing (the operator no longer hears)
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # method, path, query
        self.watches: set[_Watch] = set()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True, name="faulty-api")
        self.thread.start()
        self.ready.wait(10)
        self.url = f"http://127.0.0.1:{self.port}"

    # -- faults ----------------------------------------------------------------------------

    def fail_watches(self, resource: str, code: int, message: str) -> int:
        """Each open watch of ``resource`` gets an ERROR event of ``code``, and ends."""
        event = {"type": "ERROR", "object": status(code, "InternalError", message)}
        found = [w for w in list(self.watches) if w.resource == resource]
        for watch in found:
            watch.fail(event)
        return len(found)

    def hear_again(self) -> int:
        """End the deafness: every watch held quiet is told its version is too old (410),
        as an API server that compacted meanwhile says, and ends."""
        self.deaf = False
        event = {"type": "ERROR", "object": status(410, "Expired", "too old resource version")}
        held = list(self.watches)
        for watch in held:
            watch.fail(event)
        return len(held)

    def asked(self, resource: str, watch: bool | None = None) -> int:
        """Requests for ``resource`` (watches only, lists only, or both)."""
        return sum(
            1
            for method, path, query in list(self.requests)
            if method == "GET"
            and resource_of(path) == resource
            and (watch is None or (query.get("watch") == "true") == watch)
        )

    def stop(self) -> None:
        self._call(self._shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    # -- serving ---------------------------------------------------------------------------

    def _call(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self.ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port: int = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _shutdown(self) -> None:
        for watch in list(self.watches):
            watch.lines.put_nowait(None)
        await self.runner.cleanup()
        await self.session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        self.requests.append((request.method, request.path, query))
        resource = resource_of(request.path)
        watching = query.get("watch") in ("true", "1")
        if watching and query.get("sendInitialEvents") == "true" and not self.watchlist:
            refused = "sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch"
            return web.json_response(status(422, "Invalid", refused), status=422)
        if not watching and request.method == "GET":
            if "continue" in query and resource in self.expire:
                self.expire.discard(resource)
                gone = (
                    "The provided continue parameter is too old to display a consistent list "
                    "result. You can start a new list without the continue parameter."
                )
                return web.json_response(status(410, "Expired", gone), status=410)
            if self.page_limit is not None and "limit" in query:
                query["limit"] = str(self.page_limit)
        headers = {h: request.headers[h] for h in PASSED_HEADERS if h in request.headers}
        upstream = await self.session.request(
            request.method,
            self.upstream + request.path,
            params=query,
            headers=headers,
            data=await request.read() if request.can_read_body else None,
            ssl=self.tls,
            # Kubernetes' Python client sends its JSON with no Content-Type, which the API
            # server takes; aiohttp would add application/octet-stream, which it refuses.
            skip_auto_headers=() if "Content-Type" in headers else ("Content-Type",),
        )
        if not watching or upstream.status != 200:
            async with upstream:
                body = await upstream.read()
            kind = upstream.headers.get("Content-Type", "application/json")
            return web.Response(body=body, status=upstream.status, headers={"Content-Type": kind})
        return await self._stream(request, upstream, resource)

    async def _stream(
        self, request: web.Request, upstream: aiohttp.ClientResponse, resource: str
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        watch = _Watch(resource, self.loop)
        self.watches.add(watch)

        async def read() -> None:
            try:
                async for line in upstream.content:
                    watch.lines.put_nowait(("line", line))
            except (TimeoutError, aiohttp.ClientError):
                pass
            watch.lines.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await watch.lines.get()) is not None:
                what, line = item
                if what == "line" and self.deaf:
                    continue
                await response.write(line)
                if what == "fault":
                    break
        except (ConnectionResetError, aiohttp.ClientError):
            pass
        finally:
            self.watches.discard(watch)
            reader.cancel()
            upstream.close()
        return response


def proxied_kubeconfig(kubeconfig: Path, proxy: FaultyApiServer, path: Path) -> Path:
    """The same identity, through the proxy (plain HTTP on loopback)."""
    config = yaml.safe_load(kubeconfig.read_text())
    for cluster in config["clusters"]:
        cluster["cluster"] = {"server": proxy.url}
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path
