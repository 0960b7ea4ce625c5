"""ASGI middleware bounding the size of request bodies (HTTP 413 beyond the limit).

A declared ``Content-Length`` above the limit is refused before any byte is read; a body
without one (chunked / streamed) is buffered only up to the limit and refused once it
grows past it, so a client can never make the server hold more than ``max_body_bytes``.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["BodySizeLimit"]

Scope = dict[str, Any]


class BodySizeLimit:
    """Wrap an ASGI ``app`` so that request bodies above ``max_body_bytes`` get a 413."""

    def __init__(self, app: Any, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = int(max_body_bytes)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _reply(send, 400, "The Content-Length header is not an integer.")
                return
            if size > self.max_body_bytes:
                await _reply(send, 413, self._too_large(size))
                return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            total += len(body)
            if total > self.max_body_bytes:
                await _reply(send, 413, self._too_large(total))
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        buffered = b"".join(chunks)
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": buffered, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _too_large(self, size: int) -> str:
        return (f"The request body ({size} bytes or more) exceeds this server's limit of "
                f"{self.max_body_bytes} bytes. Send fewer observations per request, or start "
                "the server with a larger max_body_bytes.")


async def _reply(send: Any, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
